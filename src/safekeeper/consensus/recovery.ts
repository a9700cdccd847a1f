/**
 * The member side of an election: bring this safekeeper's WAL to an elected
 * history, fetching what it lacks from a peer; and the donor side: serve a
 * range of WAL only while it still belongs to the history the fetcher wants.
 *
 * Place in the protocol (endpoint_start.ts, step 4): the coordinator tells
 * every member "term T won with history H, whose WAL ends at startLsn; the
 * donor holds it". `joinElectedHistory` then runs on the member:
 *
 *   1. refuse if the member promised a term above T (a newer election won:
 *      this coordinator is stale — fencing);
 *   2. c = the highest common point of the member's effective history and H
 *      (without T's entry) up to startLsn — where their WAL provably agrees;
 *      the timeline start when they share no term;
 *   3. truncateAndSetHistory(T, H, c): WAL past c is divergent (or a torn
 *      record tail past startLsn) and goes, durably, *then* H is persisted;
 *   4. fetch [max(c, flush), startLsn) from the donor in chunks, append and
 *      fsync each.
 *
 * Crash safety: after a crash anywhere the member is in one of three states,
 * all of them truthful descriptions of its disk: the old history with its old
 * WAL (crash before 3), H with WAL ending at c (crash inside 3 after the
 * truncate would leave the old history with WAL cut at c — truthful, because
 * the cut is a record boundary and the remaining history's switches are all at
 * or before c or get ignored as past the end), or H with WAL somewhere in
 * [c, startLsn] (crash during 4). In each, running the step again — or a new
 * election — converges: the entry (T, startLsn) only counts (effective
 * history) once the WAL reaches startLsn.
 *
 * The same routine catches up a safekeeper that missed an election
 * (`catchUpFromPeers`): it adopts the history of a peer that has joined the
 * current term, up to that peer's flush record LSN.
 *
 * Donor side (`serveWal`): a fetch names the history the bytes must belong
 * to; the donor answers only if its own effective history agrees with it up
 * to the end of the range, checked before and after reading (see serveWal).
 */
import { StrataError } from "../../lib/errors.js";
import { formatLsn, lsnMax, type Lsn } from "../../lib/lsn.js";
import {
  checkTermHistory,
  formatTermHistory,
  highestCommonPoint,
  historyUpTo,
  lastTerm,
  type Term,
  type TermHistory,
} from "../term_history.js";
import { effectiveHistory, TermRefusedError, type AcceptorSnapshot, type ConsensusTimeline } from "./acceptor_state.js";

/**
 * WAL fetched per request from a donor. Big enough that tens of MiB of
 * catch-up take few round trips, small enough to hold in memory (and to
 * keep one HTTP response well under any proxy's limits).
 */
export const PEER_FETCH_CHUNK_BYTES = 1024 * 1024;

/** Where a member fetches WAL of a history from. */
export interface WalSource {
  /** Describes the donor in errors and logs. */
  readonly name: string;
  /**
   * Up to `maxBytes` of WAL from `startLsn`, not past `endLsn`, belonging to
   * `history` (whose WAL ends at or after `endLsn`). Fewer bytes than asked
   * are fine (the caller asks again); none means the donor lacks them.
   */
  fetch(startLsn: Lsn, maxBytes: number, endLsn: Lsn, history: TermHistory, signal: AbortSignal): Promise<Uint8Array>;
}

/** A history this member should hold, with the WAL end it describes. */
export interface TargetHistory {
  readonly term: Term;
  /** Ends with an entry of `term`; every switch at or before `endLsn`. */
  readonly history: TermHistory;
  /** Record boundary the member's WAL must reach. */
  readonly endLsn: Lsn;
}

/**
 * One join at a time per timeline: the coordinator's request and a
 * background catch-up may target the same member; run back to back, the
 * second finds the work done instead of truncating what the first fetched.
 */
const joinChains = new WeakMap<ConsensusTimeline, Promise<unknown>>();

/**
 * Brings `tl` to `target`: truncates divergent WAL, persists the history,
 * fetches the missing WAL from `source`. Returns the final snapshot.
 */
export function joinHistory(tl: ConsensusTimeline, target: TargetHistory, source: WalSource, signal: AbortSignal): Promise<AcceptorSnapshot> {
  const run = (joinChains.get(tl) ?? Promise.resolve()).then(() => joinHistoryNow(tl, target, source, signal));
  joinChains.set(
    tl,
    run.catch(() => undefined),
  );
  return run;
}

async function joinHistoryNow(tl: ConsensusTimeline, target: TargetHistory, source: WalSource, signal: AbortSignal): Promise<AcceptorSnapshot> {
  checkTermHistory(target.history, "invalid_argument", `history for term ${target.term}`, target.endLsn);
  if (lastTerm(target.history) !== target.term) {
    throw new StrataError("invalid_argument", `history ${formatTermHistory(target.history)} does not end with term ${target.term}`);
  }
  const s = await tl.snapshot();
  if (s.term > target.term) {
    throw new TermRefusedError(`${tl.tenantId}/${tl.timelineId}: term ${target.term} refused, this safekeeper promised term ${s.term}`);
  }
  if (target.endLsn < s.timelineStartLsn) {
    throw new StrataError("invalid_argument", `history end ${formatLsn(target.endLsn)} is before the timeline start ${formatLsn(s.timelineStartLsn)}`);
  }
  const common = commonPoint(s, target);
  if (!(alreadyAdopted(s, target) && s.flushLsn <= target.endLsn)) {
    await tl.truncateAndSetHistory(target.term, target.history, common);
  }
  let at = (await tl.snapshot()).flushLsn;
  if (at < common) throw new Error(`assertion failed: WAL ends at ${formatLsn(at)} after truncating at ${formatLsn(common)}`);
  while (at < target.endLsn) {
    signal.throwIfAborted();
    const want = Number(target.endLsn - at < BigInt(PEER_FETCH_CHUNK_BYTES) ? target.endLsn - at : BigInt(PEER_FETCH_CHUNK_BYTES));
    const bytes = await source.fetch(at, want, target.endLsn, historyUpTo(target.history, target.endLsn), signal);
    if (bytes.length === 0) {
      throw new StrataError("unavailable", `${source.name} has no WAL at ${formatLsn(at)} of history ${formatTermHistory(target.history)} (needed up to ${formatLsn(target.endLsn)})`);
    }
    if (bytes.length > want) throw new StrataError("protocol_violation", `${source.name} sent ${bytes.length} bytes of WAL at ${formatLsn(at)}, asked for at most ${want}`);
    at = await tl.appendWalFromPeer(target.term, at, bytes);
  }
  return await tl.snapshot();
}

/** What is wrong with an elected history for `term` starting at `startLsn`, or undefined. */
export function electedHistoryProblem(history: TermHistory, term: Term, startLsn: Lsn): string | undefined {
  const last = history[history.length - 1];
  if (last === undefined || last.term !== term || last.lsn !== startLsn) {
    return `elected history ${formatTermHistory(history)} must end with term ${term} at ${formatLsn(startLsn)}`;
  }
  try {
    checkTermHistory(history, "invalid_argument", "elected history", startLsn);
  } catch (e) {
    return (e as Error).message;
  }
  return undefined;
}

/** True when the member already persisted exactly this history (a retry, or the donor itself). */
function alreadyAdopted(s: AcceptorSnapshot, target: TargetHistory): boolean {
  if (s.termHistory.length !== target.history.length) return false;
  return s.termHistory.every((e, i) => e.term === target.history[i]!.term && e.lsn === target.history[i]!.lsn);
}

/**
 * Where the member's WAL stops agreeing with the target: the highest common
 * point of its effective history (to its flush LSN) and the target's, capped
 * at the target's end; the timeline start when they share no term.
 */
function commonPoint(s: AcceptorSnapshot, target: TargetHistory): Lsn {
  const hcp = highestCommonPoint({ history: effectiveHistory(s), endLsn: s.flushLsn }, { history: historyUpTo(target.history, target.endLsn), endLsn: target.endLsn });
  const c = hcp === undefined ? s.timelineStartLsn : lsnMax(hcp.lsn, s.timelineStartLsn);
  return c;
}

// ---------------------------------------------------------------------------
// Donor side
// ---------------------------------------------------------------------------

/**
 * Serves WAL [startLsn, endLsn) (at most `maxBytes`) if this safekeeper's
 * WAL there belongs to `history`. Refused (unavailable) when it does not or
 * when it changed during the read.
 */
export async function serveWal(tl: ConsensusTimeline, startLsn: Lsn, maxBytes: number, endLsn: Lsn, history: TermHistory): Promise<Uint8Array> {
  checkTermHistory(history, "invalid_argument", "requested history", endLsn);
  if (endLsn < startLsn) throw new StrataError("invalid_argument", `WAL range end ${formatLsn(endLsn)} is before its start ${formatLsn(startLsn)}`);
  const check = async (): Promise<AcceptorSnapshot> => {
    const s = await tl.snapshot();
    const hcp = highestCommonPoint({ history: effectiveHistory(s), endLsn: s.flushLsn }, { history, endLsn });
    const agreedTo = hcp?.lsn ?? s.timelineStartLsn;
    if (agreedTo < endLsn) {
      throw new StrataError(
        "unavailable",
        `${tl.tenantId}/${tl.timelineId}: WAL up to ${formatLsn(endLsn)} of history ${formatTermHistory(history)} is not here (agrees up to ${formatLsn(agreedTo)}; own history ${formatTermHistory(s.termHistory)}, flush ${formatLsn(s.flushLsn)})`,
      );
    }
    return s;
  };
  const before = await check();
  const bytes = await tl.readWal(startLsn, maxBytes, endLsn);
  const after = await check();
  // The read is atomic with respect to truncation (ConsensusTimeline.readWal), and bytes below
  // a truncation point are common to the old and the new history; a read that raced a
  // truncation past the point *and* a re-fetch under a disagreeing history fails the second
  // check. Two elections inside one read would change the term: refuse that too.
  if (after.term !== before.term) {
    throw new StrataError("unavailable", `${tl.tenantId}/${tl.timelineId}: history changed while reading WAL at ${formatLsn(startLsn)}; retry`);
  }
  return bytes;
}

// ---------------------------------------------------------------------------
// Catch-up of a member that missed an election
// ---------------------------------------------------------------------------

export interface PeerHandle {
  readonly id: number;
  snapshot(signal: AbortSignal): Promise<AcceptorSnapshot>;
  source: WalSource;
}

/**
 * Joins the term this safekeeper should stream in (`term`, registered with
 * the compute) by adopting the history of the most advanced reachable peer
 * that has joined it. Returns the snapshot, or undefined when no reachable
 * peer has joined `term` yet (try again later). Nothing to do when this
 * safekeeper already holds the term's history.
 */
export async function catchUpFromPeers(tl: ConsensusTimeline, term: Term, peers: readonly PeerHandle[], signal: AbortSignal): Promise<AcceptorSnapshot | undefined> {
  const own = await tl.snapshot();
  if (own.term > term) throw new TermRefusedError(`${tl.tenantId}/${tl.timelineId}: cannot catch up to term ${term}, promised term ${own.term}`);
  if (lastTerm(effectiveHistory(own)) === term) return own;
  const reports = await Promise.allSettled(peers.map((p) => p.snapshot(signal)));
  let best: { peer: PeerHandle; s: AcceptorSnapshot } | undefined;
  reports.forEach((r, i) => {
    if (r.status !== "fulfilled") return;
    const s = r.value;
    const h = historyUpTo(s.termHistory, s.flushRecordLsn);
    if (lastTerm(h) !== term) return;
    if (best === undefined || s.flushRecordLsn > best.s.flushRecordLsn) best = { peer: peers[i]!, s };
  });
  if (best === undefined) return undefined;
  const { peer, s } = best;
  return await joinHistory(tl, { term, history: historyUpTo(s.termHistory, s.flushRecordLsn), endLsn: s.flushRecordLsn }, peer.source, signal);
}
