/**
 * Terms and term histories — the facts the endpoint-start protocol runs on.
 *
 * DESIGN.md §3: WAL of a timeline comes from one compute at a time. Each
 * endpoint start bumps the timeline's *term* on a quorum of safekeepers and
 * records the LSN where WAL of that term begins. The list of those
 * (term, start LSN) switches is the *term history*. Two safekeepers whose
 * histories agree up to some term hold the same WAL up to where that term's
 * WAL ends on both; past that point one of them holds WAL written by a
 * compute that lost its term, which must be truncated before it can reach a
 * pageserver.
 *
 * Conventions:
 * * A term is an unsigned 64-bit counter (`Term`, a branded bigint). 0 is
 *   "no term yet"; the first compute gets term 1.
 * * An entry `{ term, lsn }` says: WAL written under `term` starts at `lsn`
 *   and runs up to the next entry's `lsn` (half-open), or for the last entry
 *   up to the WAL's end — the safekeeper's flush LSN, or, for a proposer that
 *   is about to stream, without end.
 * * Terms strictly increase along a history; LSNs never decrease. Equal LSNs
 *   are allowed: a term that was elected but wrote nothing before the next
 *   election starts at the same LSN as its successor.
 * * "The term at an LSN" is the term of the last entry starting at or before
 *   it; with equal LSNs the later term wins, because the earlier one wrote
 *   no byte there. At a safekeeper's flush LSN this is its *last log term*,
 *   the first key by which the endpoint-start protocol picks the safekeeper
 *   with the most advanced WAL (the second is the flush LSN).
 *
 * All functions are pure. Histories that come from outside (a peer, a control
 * file) are checked with `termHistoryProblem` / `decodeTermHistory`, which
 * report problems as text or StrataError; histories violating the rules
 * inside the module's own computations are a caller's bug (invalid_argument).
 */
import { StrataError, type ErrorCode } from "../lib/errors.js";
import { formatLsn, lsn as toLsn, lsnMin, type Lsn } from "../lib/lsn.js";

export type Term = bigint & { readonly __brand: "Term" };

/** "No term": a timeline no compute has been elected for yet. */
export const INVALID_TERM = 0n as Term;
export const TERM_MAX = ((1n << 64n) - 1n) as Term;

/**
 * Cap on history length. One entry is added per endpoint start; a timeline
 * restarted every minute for a month is ~43 000 entries. The cap only guards
 * decoders against garbage counts (16 bytes per entry: 1 MiB at the cap).
 */
export const MAX_TERM_HISTORY_ENTRIES = 65_536;
/** Bytes of one encoded entry: u64 term, u64 LSN. */
export const TERM_SWITCH_BYTES = 16;

/** Makes a term from a bigint or a safe integer, checking the u64 range. */
export function term(value: bigint | number): Term {
  const v = typeof value === "number" ? BigInt(value) : value;
  if (typeof value === "number" && !Number.isSafeInteger(value)) {
    throw new StrataError("invalid_argument", `Cannot make a term from ${value}: not a safe integer`);
  }
  if (v < 0n || v > TERM_MAX) throw new StrataError("invalid_argument", `Cannot make a term from ${v}: outside [0, 2^64)`);
  return v as Term;
}

/** WAL written under `term` starts at `lsn`. */
export interface TermSwitch {
  readonly term: Term;
  readonly lsn: Lsn;
}

export type TermHistory = readonly TermSwitch[];

/** A history with the end of the WAL it describes; `endLsn` undefined = open-ended (a proposer). */
export interface HistoryWithEnd {
  readonly history: TermHistory;
  readonly endLsn: Lsn | undefined;
}

export function formatTermHistory(h: TermHistory): string {
  return "[" + h.map((e) => `${e.term}@${formatLsn(e.lsn)}`).join(", ") + "]";
}

/**
 * What is wrong with a history (and, if given, its WAL end), or undefined
 * when it follows the rules: terms above 0 strictly increasing, LSNs not
 * decreasing, length within the cap, no entry starting past `endLsn`.
 */
export function termHistoryProblem(h: TermHistory, endLsn?: Lsn): string | undefined {
  if (h.length > MAX_TERM_HISTORY_ENTRIES) return `term history has ${h.length} entries, more than the limit ${MAX_TERM_HISTORY_ENTRIES}`;
  for (let i = 0; i < h.length; i++) {
    const e = h[i]!;
    if (e.term === INVALID_TERM) return `term history entry ${i} has term 0`;
    if (i > 0) {
      const p = h[i - 1]!;
      if (e.term <= p.term) return `term history entry ${i} has term ${e.term}, not above the previous term ${p.term}`;
      if (e.lsn < p.lsn) return `term history entry ${i} (term ${e.term}) starts at ${formatLsn(e.lsn)}, before the previous term's start ${formatLsn(p.lsn)}`;
    }
  }
  const last = h[h.length - 1];
  if (endLsn !== undefined && last !== undefined && last.lsn > endLsn) {
    return `term ${last.term} starts at ${formatLsn(last.lsn)}, past the WAL end ${formatLsn(endLsn)}`;
  }
  return undefined;
}

/** Throws StrataError(code) when `termHistoryProblem` finds something. */
export function checkTermHistory(h: TermHistory, code: ErrorCode, context: string, endLsn?: Lsn): void {
  const problem = termHistoryProblem(h, endLsn);
  if (problem !== undefined) throw new StrataError(code, `${context}: ${problem}`);
}

/** The last term of the history, or INVALID_TERM when empty. */
export function lastTerm(h: TermHistory): Term {
  return h.length === 0 ? INVALID_TERM : h[h.length - 1]!.term;
}

/**
 * A new history with `t` starting at `at`. The term must be above every term
 * in the history and `at` not before the last switch (invalid_argument).
 */
export function appendTerm(h: TermHistory, t: Term, at: Lsn): TermHistory {
  const last = h[h.length - 1];
  if (t === INVALID_TERM) throw new StrataError("invalid_argument", `Cannot append term 0 to a term history`);
  if (last !== undefined) {
    if (t <= last.term) throw new StrataError("invalid_argument", `Cannot append term ${t} at ${formatLsn(at)}: not above the last term ${last.term}`);
    if (at < last.lsn) {
      throw new StrataError("invalid_argument", `Cannot append term ${t} at ${formatLsn(at)}: before the last term's start ${formatLsn(last.lsn)}`);
    }
  }
  return [...h, { term: t, lsn: at }];
}

/** Index of the last entry starting at or before `at`, or -1. Binary search (LSNs are sorted). */
function lastIndexAtOrBefore(h: TermHistory, at: Lsn): number {
  let lo = 0;
  let hi = h.length; // first index with lsn > at lies in [lo, hi]
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (h[mid]!.lsn <= at) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

/**
 * The term in force at `at`: the term of the last switch at or before it
 * (with equal LSNs the later term). Undefined before the first switch.
 */
export function termAt(h: TermHistory, at: Lsn): Term | undefined {
  const i = lastIndexAtOrBefore(h, at);
  return i < 0 ? undefined : h[i]!.term;
}

/**
 * The last log term of WAL ending at `endLsn` (a flush LSN): the term in
 * force there, or INVALID_TERM for a history that starts after it or is empty.
 */
export function lastLogTerm(h: TermHistory, endLsn: Lsn): Term {
  return termAt(h, endLsn) ?? INVALID_TERM;
}

/** The switches at or before `at`: the history of WAL that ends at `at`. */
export function historyUpTo(h: TermHistory, at: Lsn): TermHistory {
  return h.slice(0, lastIndexAtOrBefore(h, at) + 1);
}

/**
 * Orders two safekeepers' WAL by how advanced it is: by last log term, then
 * by end LSN. Negative when `a` is behind `b`. The endpoint-start protocol
 * takes the most advanced member of a quorum as the donor.
 */
export function compareLogPositions(a: { history: TermHistory; endLsn: Lsn }, b: { history: TermHistory; endLsn: Lsn }): number {
  const ta = lastLogTerm(a.history, a.endLsn);
  const tb = lastLogTerm(b.history, b.endLsn);
  if (ta !== tb) return ta < tb ? -1 : 1;
  if (a.endLsn !== b.endLsn) return a.endLsn < b.endLsn ? -1 : 1;
  return 0;
}

/**
 * The history a newly elected proposer streams with: the donor's history of
 * its WAL up to `startLsn` (its flush LSN), plus `newTerm` starting there.
 */
export function electedHistory(donorHistory: TermHistory, startLsn: Lsn, newTerm: Term): TermHistory {
  return appendTerm(historyUpTo(donorHistory, startLsn), newTerm, startLsn);
}

/**
 * Where two WAL histories diverge: the last term both hold, and the LSN up
 * to which both hold WAL of it — the highest point at which their WAL is
 * provably the same. Everything before that LSN is common; a safekeeper
 * joining the proposer's stream keeps its WAL up to there and truncates the
 * rest. Undefined when the histories share no term (nothing provably in
 * common; the follower's WAL is discarded from the timeline start).
 *
 * Arguments are symmetric; `endLsn` undefined means open-ended (a proposer
 * streaming its own term), and at most one side may be open-ended. Two
 * entries with the same term but different start LSNs are impossible in a
 * correct cluster (one proposer per term fixes its start) and are reported as
 * corrupt_data; so is a history that breaks the ordering rules or starts a
 * term past its own WAL end.
 */
export function highestCommonPoint(a: HistoryWithEnd, b: HistoryWithEnd): TermSwitch | undefined {
  if (a.endLsn === undefined && b.endLsn === undefined) {
    throw new StrataError("invalid_argument", "highestCommonPoint: at most one history may be open-ended");
  }
  checkTermHistory(a.history, "corrupt_data", "first term history", a.endLsn);
  checkTermHistory(b.history, "corrupt_data", "second term history", b.endLsn);
  const n = Math.min(a.history.length, b.history.length);
  let common = -1;
  for (let i = 0; i < n; i++) {
    const ea = a.history[i]!;
    const eb = b.history[i]!;
    if (ea.term !== eb.term) break;
    if (ea.lsn !== eb.lsn) {
      throw new StrataError(
        "corrupt_data",
        `Term ${ea.term} starts at ${formatLsn(ea.lsn)} in one history and at ${formatLsn(eb.lsn)} in the other: ${formatTermHistory(a.history)} vs ${formatTermHistory(b.history)}`,
      );
    }
    common = i;
  }
  if (common < 0) return undefined;
  const endA = termEnd(a, common);
  const endB = termEnd(b, common);
  // At most one side is open-ended, so at least one end is defined.
  const end = endA === undefined ? endB! : endB === undefined ? endA : lsnMin(endA, endB);
  return { term: a.history[common]!.term, lsn: end };
}

/** Where WAL of entry `i` ends on this side: the next switch, or the WAL end. */
function termEnd(side: HistoryWithEnd, i: number): Lsn | undefined {
  const next = side.history[i + 1];
  return next !== undefined ? next.lsn : side.endLsn;
}

// ---------------------------------------------------------------------------
// Binary form: u32 count, then count × (u64 term, u64 start LSN), little-endian.
// Used by the control file; the same bytes can travel between peers.
// ---------------------------------------------------------------------------

/** Encoded size of a history. */
export function termHistoryEncodedBytes(h: TermHistory): number {
  return 4 + h.length * TERM_SWITCH_BYTES;
}

/** Writes `h` at `out[offset]`; returns the offset after it. */
export function encodeTermHistory(h: TermHistory, out: Uint8Array, offset: number): number {
  const need = termHistoryEncodedBytes(h);
  if (offset + need > out.length) throw new RangeError(`encodeTermHistory: ${need} bytes do not fit at offset ${offset} of ${out.length}`);
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  dv.setUint32(offset, h.length, true);
  let o = offset + 4;
  for (const e of h) {
    dv.setBigUint64(o, e.term, true);
    dv.setBigUint64(o + 8, e.lsn, true);
    o += TERM_SWITCH_BYTES;
  }
  return o;
}

/**
 * Reads a history from `bytes[offset]`, bounds-checked and validated.
 * Truncated input -> StrataError("truncated"); a garbage count or a history
 * breaking the rules -> StrataError("corrupt_data"). `context` names the
 * source (a file path, a peer) in messages.
 */
export function decodeTermHistory(bytes: Uint8Array, offset: number, context: string): { history: TermHistory; end: number } {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (offset + 4 > bytes.length) {
    throw new StrataError("truncated", `${context}: term history count at offset ${offset} is past the end (${bytes.length} bytes)`);
  }
  const count = dv.getUint32(offset, true);
  if (count > MAX_TERM_HISTORY_ENTRIES) {
    throw new StrataError("corrupt_data", `${context}: term history count ${count} at offset ${offset} exceeds the limit ${MAX_TERM_HISTORY_ENTRIES}`);
  }
  const end = offset + 4 + count * TERM_SWITCH_BYTES;
  if (end > bytes.length) {
    throw new StrataError("truncated", `${context}: term history of ${count} entries at offset ${offset} needs ${end - offset} bytes, only ${bytes.length - offset} left`);
  }
  const history: TermSwitch[] = [];
  for (let o = offset + 4; o < end; o += TERM_SWITCH_BYTES) {
    history.push({ term: dv.getBigUint64(o, true) as Term, lsn: toLsn(dv.getBigUint64(o + 8, true)) });
  }
  checkTermHistory(history, "corrupt_data", context);
  return { history, end };
}
