/**
 * What the consensus layer knows about one safekeeper's timeline, and what it
 * needs the per-timeline state to do.
 *
 * Place in the system (DESIGN.md §3): the endpoint-start coordinator
 * (endpoint_start.ts), the member side of an election (recovery.ts) and the
 * commit_lsn computation (commit_lsn.ts, fed by peers.ts) all reason about
 * *acceptor snapshots*: a safekeeper's promised term, its term history and
 * where its durable WAL ends. They act on a timeline only through the
 * `ConsensusTimeline` interface below — the small surface the per-timeline
 * state (timeline.ts, and `StoreTimeline` here for tests) provides — so the
 * protocol can be run against real storage in-process (the deterministic
 * simulation) or over HTTP (http_client.ts) without changes.
 *
 * Positions. A safekeeper's *position* is (last log term, flush record LSN):
 * the term in force at the end of its last complete durable record, and that
 * end. Consensus always uses the record end, never the raw flush LSN (which
 * may lie inside a record a compute was still sending): a new term starts at
 * a record boundary, and an acknowledged commit ends at a record boundary at
 * or below the flush LSN of a quorum, so counting record ends loses nothing.
 *
 * Effective history. The control file may record term switches past the end
 * of the WAL on disk: a member persists the elected history *before* it
 * fetches the missing WAL from the donor (so the bytes it then writes are
 * labelled with the right terms even if it crashes half way). Entries past
 * the WAL end describe no byte this safekeeper holds, so every comparison
 * uses `historyUpTo(history, end)` — the switches at or before the end.
 * The opposite mismatch (WAL bytes the history labels wrongly) cannot occur:
 * divergent WAL is truncated, durably, before a new history is stored.
 */
import { StrataError } from "../../lib/errors.js";
import type { TenantId, TimelineId } from "../../lib/id.js";
import { formatLsn, parseLsn, type Lsn } from "../../lib/lsn.js";
import {
  checkTermHistory,
  compareLogPositions,
  historyUpTo,
  lastLogTerm,
  term as toTerm,
  type Term,
  type TermHistory,
  type TermSwitch,
} from "../term_history.js";

/**
 * A safekeeper refused a term (or WAL of a term) because it promised a
 * higher one: the caller is stale — an old coordinator or a fenced compute.
 */
export class TermRefusedError extends StrataError {
  override name = "TermRefusedError";
  constructor(message: string) {
    super("invalid_argument", message);
  }
}

/** One safekeeper's consensus-relevant state at one moment. */
export interface AcceptorSnapshot {
  /** The highest term this safekeeper has promised; it refuses WAL and elections of lower terms. */
  readonly term: Term;
  /** Term switches as persisted (may run past the WAL end; see the header). */
  readonly termHistory: TermHistory;
  /** End of the durable WAL bytes (may be inside a record). */
  readonly flushLsn: Lsn;
  /** End of the last complete durable record: the position used by consensus. */
  readonly flushRecordLsn: Lsn;
  /** This safekeeper's commit_lsn (monotonic while it runs). */
  readonly commitLsn: Lsn;
  /** First LSN of the timeline's WAL. */
  readonly timelineStartLsn: Lsn;
}

/** The answer to a vote request: the state at the moment of the vote, with no WAL appended in between. */
export interface VoteResult {
  readonly granted: boolean;
  readonly snapshot: AcceptorSnapshot;
}

/**
 * What consensus needs from a safekeeper's per-timeline state. Every
 * mutating call is serialized with WAL appends from the compute (one chain
 * per timeline), so a vote's snapshot is exactly the WAL the voter will
 * ever hold from older terms.
 */
export interface ConsensusTimeline {
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  snapshot(): Promise<AcceptorSnapshot>;
  /**
   * Promises `term` if it is above the current term: persists it (durable
   * before the answer) and from then on refuses WAL of lower terms. A term
   * not above the current one is refused (granted false), so a safekeeper
   * never votes twice in one term, even across restarts.
   */
  vote(term: Term): Promise<VoteResult>;
  /**
   * Joins `term` (not below the current term, else refused with
   * TermRefusedError): durably truncates WAL at
   * `truncateLsn` (a record boundary not above the WAL end; no-op when equal),
   * then persists `term` and `history`. Truncation is durable before the
   * history is stored (timeline_dir.ts ordering rules).
   */
  truncateAndSetHistory(term: Term, history: TermHistory, truncateLsn: Lsn): Promise<void>;
  /**
   * Appends WAL fetched from a peer at `startLsn` (the WAL end) while in
   * `term`, and makes it durable; returns the new flush LSN.
   */
  appendWalFromPeer(term: Term, startLsn: Lsn, bytes: Uint8Array): Promise<Lsn>;
  /**
   * Up to `maxBytes` of durable WAL from `startLsn`, not past `endLsn`.
   * Atomic with respect to truncation: the bytes come from one state of the
   * WAL, never partly from before and partly from after a truncate.
   */
  readWal(startLsn: Lsn, maxBytes: number, endLsn: Lsn): Promise<Uint8Array>;
  /** Raises the commit LSN (in memory; persisted lazily). Lower values are ignored. */
  setCommitLsn(commitLsn: Lsn): void;
}

/** The switches describing the WAL this safekeeper actually holds (up to its flush LSN). */
export function effectiveHistory(s: Pick<AcceptorSnapshot, "termHistory" | "flushLsn">): TermHistory {
  return historyUpTo(s.termHistory, s.flushLsn);
}

/** Position for the donor choice: (last log term at the flush record LSN, that LSN). */
export interface LogPosition {
  readonly history: TermHistory;
  readonly endLsn: Lsn;
}

export function logPosition(s: Pick<AcceptorSnapshot, "termHistory" | "flushRecordLsn">): LogPosition {
  return { history: historyUpTo(s.termHistory, s.flushRecordLsn), endLsn: s.flushRecordLsn };
}

export function positionLastLogTerm(s: Pick<AcceptorSnapshot, "termHistory" | "flushRecordLsn">): Term {
  return lastLogTerm(s.termHistory, s.flushRecordLsn);
}

/** Negative when `a` is less advanced than `b` (by last log term, then flush record LSN). */
export function comparePositions(a: Pick<AcceptorSnapshot, "termHistory" | "flushRecordLsn">, b: Pick<AcceptorSnapshot, "termHistory" | "flushRecordLsn">): number {
  return compareLogPositions(logPosition(a), logPosition(b));
}

export function formatSnapshot(s: AcceptorSnapshot): string {
  const h = s.termHistory.map((e) => `${e.term}@${formatLsn(e.lsn)}`).join(",");
  return `term ${s.term} history [${h}] flush ${formatLsn(s.flushLsn)} record ${formatLsn(s.flushRecordLsn)} commit ${formatLsn(s.commitLsn)}`;
}

// ---------------------------------------------------------------------------
// JSON form (HTTP API between safekeepers and from the coordinator).
// LSNs travel as "X/Y", terms as decimal strings (u64 does not fit a JSON number).
// ---------------------------------------------------------------------------

export interface TermSwitchJson {
  term: string;
  lsn: string;
}

export interface AcceptorSnapshotJson {
  term: string;
  term_history: TermSwitchJson[];
  flush_lsn: string;
  flush_record_lsn: string;
  commit_lsn: string;
  timeline_start_lsn: string;
}

export function termHistoryToJson(h: TermHistory): TermSwitchJson[] {
  return h.map((e) => ({ term: e.term.toString(), lsn: formatLsn(e.lsn) }));
}

export function snapshotToJson(s: AcceptorSnapshot): AcceptorSnapshotJson {
  return {
    term: s.term.toString(),
    term_history: termHistoryToJson(s.termHistory),
    flush_lsn: formatLsn(s.flushLsn),
    flush_record_lsn: formatLsn(s.flushRecordLsn),
    commit_lsn: formatLsn(s.commitLsn),
    timeline_start_lsn: formatLsn(s.timelineStartLsn),
  };
}

/** Bad JSON from a peer or a client is `protocol_violation` naming the field and the source. */
function bad(context: string, what: string): never {
  throw new StrataError("protocol_violation", `${context}: ${what}`);
}

function field(obj: unknown, name: string, context: string): unknown {
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) bad(context, `expected an object with "${name}"`);
  return (obj as Record<string, unknown>)[name];
}

export function parseLsnField(obj: unknown, name: string, context: string): Lsn {
  const v = field(obj, name, context);
  if (typeof v !== "string") bad(context, `"${name}" must be an LSN string "X/Y", got ${JSON.stringify(v)}`);
  try {
    return parseLsn(v);
  } catch (e) {
    throw new StrataError("protocol_violation", `${context}: "${name}": ${(e as Error).message}`);
  }
}

/** Largest decimal text of a u64 (20 digits); longer text is garbage, not parsed. */
const MAX_TERM_TEXT_CHARS = 20;

export function parseTermText(v: unknown, context: string): Term {
  if (typeof v !== "string" || v.length === 0 || v.length > MAX_TERM_TEXT_CHARS || !/^[0-9]+$/.test(v)) {
    bad(context, `a term must be a decimal string of at most ${MAX_TERM_TEXT_CHARS} digits, got ${JSON.stringify(v)}`);
  }
  try {
    return toTerm(BigInt(v));
  } catch (e) {
    throw new StrataError("protocol_violation", `${context}: ${(e as Error).message}`);
  }
}

/** Cap on a history received as JSON: the binary cap (term_history.ts) applies too, checked after parsing. */
export function parseTermHistoryJson(v: unknown, context: string): TermHistory {
  if (!Array.isArray(v)) bad(context, `term history must be an array`);
  const out: TermSwitch[] = [];
  for (let i = 0; i < v.length; i++) {
    const e: unknown = v[i];
    out.push({ term: parseTermText(field(e, "term", context), `${context}, term history entry ${i}`), lsn: parseLsnField(e, "lsn", `${context}, term history entry ${i}`) });
  }
  checkTermHistory(out, "protocol_violation", context);
  return out;
}

export function snapshotFromJson(v: unknown, context: string): AcceptorSnapshot {
  const s: AcceptorSnapshot = {
    term: parseTermText(field(v, "term", context), `${context}, "term"`),
    termHistory: parseTermHistoryJson(field(v, "term_history", context), context),
    flushLsn: parseLsnField(v, "flush_lsn", context),
    flushRecordLsn: parseLsnField(v, "flush_record_lsn", context),
    commitLsn: parseLsnField(v, "commit_lsn", context),
    timelineStartLsn: parseLsnField(v, "timeline_start_lsn", context),
  };
  if (s.flushRecordLsn > s.flushLsn) bad(context, `flush record LSN ${formatLsn(s.flushRecordLsn)} is past the flush LSN ${formatLsn(s.flushLsn)}`);
  return s;
}
