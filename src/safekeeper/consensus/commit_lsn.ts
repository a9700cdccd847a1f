/**
 * commit_lsn: the highest LSN durable on a quorum within the current term.
 *
 * DESIGN.md §2–3. Every safekeeper computes its own commit_lsn from what it
 * learns of its peers (peers.ts polls their snapshots); pageservers only
 * ever receive WAL below it. The rule, for a safekeeper `self` whose last
 * log term is its promised term T (it has joined T's history):
 *
 *   an LSN L counts on a member m (self included) when m's effective history
 *   and self's share term T as their last common term and both hold the
 *   common WAL up to at least L — i.e. highestCommonPoint(self, m) is
 *   (T, ≥ L) — measured at flush *record* LSNs;
 *   commit_lsn = the q-th highest such LSN over the N members (q = N/2+1).
 *
 * Why only term T ("within the current term's WAL"): a member that has T in
 * its history adopted T's elected history, so it holds every byte below
 * T's start exactly as the donor did, and the entry (T, start) on a quorum is
 * what makes any later election choose a donor with that WAL (the donor is
 * the most advanced by last log term). WAL of an older term replicated to a
 * quorum *without* the T marker could still be cut by a later election
 * (Raft's "figure 8"), so agreement in an older term is never counted.
 * Agreement with a member that has moved on to a later term T' still counts
 * up to where T' began: those bytes are in T''s elected history too.
 *
 * Stale reports are safe: a member reports only WAL it has fsynced, accepted
 * while its promised term was T; once it votes for a later term it refuses
 * T's WAL, and its vote carries its position, so the later election sees
 * everything it reported (endpoint_start.ts takes the donor from the votes).
 *
 * Record LSNs: an acknowledged COMMIT ends at a record boundary at or below
 * the flush LSN of q safekeepers, hence at or below their flush record LSN;
 * using record ends keeps commit_lsn at a record boundary, where a
 * pageserver can stop and a new term can start.
 *
 * Pure; the caller keeps the result monotonic (max with the previous value).
 */
import { StrataError } from "../../lib/errors.js";
import type { Lsn } from "../../lib/lsn.js";
import { highestCommonPoint, INVALID_TERM, type TermHistory } from "../term_history.js";
import { logPosition, type AcceptorSnapshot } from "./acceptor_state.js";

/** q = N/2 + 1: any two quorums of N members intersect. */
export function quorumSize(members: number): number {
  if (!Number.isInteger(members) || members < 1) throw new StrataError("invalid_argument", `A timeline needs at least one safekeeper, got ${members}`);
  return Math.floor(members / 2) + 1;
}

export type PositionReport = Pick<AcceptorSnapshot, "termHistory" | "flushRecordLsn">;

export interface CommitInput {
  /** This safekeeper. */
  readonly self: Pick<AcceptorSnapshot, "term" | "termHistory" | "flushRecordLsn">;
  /** The latest report of each other member (missing or unreachable members are left out). */
  readonly peers: readonly PositionReport[];
  /** Members of the timeline, self included. */
  readonly members: number;
}

/**
 * The LSN durable on a quorum within self's current term, or undefined
 * when self has not joined its promised term yet, or fewer than q members
 * agree with it in that term.
 */
export function quorumCommitLsn(input: CommitInput): Lsn | undefined {
  const q = quorumSize(input.members);
  if (input.peers.length + 1 > input.members) {
    throw new StrataError("invalid_argument", `${input.peers.length} peer reports for a timeline of ${input.members} members`);
  }
  const self = logPosition(input.self);
  const last = self.history[self.history.length - 1];
  // Self must hold its promised term's history: a voter that has not joined yet counts nothing.
  if (last === undefined || last.term === INVALID_TERM || last.term !== input.self.term) return undefined;
  const agreeing: Lsn[] = [self.endLsn];
  for (const p of input.peers) {
    const at = agreementInTerm(self.history, self.endLsn, logPosition(p).history, p.flushRecordLsn, last.term);
    if (at !== undefined) agreeing.push(at);
  }
  if (agreeing.length < q) return undefined;
  agreeing.sort((a, b) => (a > b ? -1 : a < b ? 1 : 0));
  return agreeing[q - 1];
}

/**
 * How far a peer's WAL provably equals self's within term `t`, or undefined
 * when their last common term is not `t`. Contradictory histories (one term
 * starting at two LSNs) come from a broken or malicious peer: not counted.
 */
function agreementInTerm(selfHistory: TermHistory, selfEnd: Lsn, peerHistory: TermHistory, peerEnd: Lsn, t: bigint): Lsn | undefined {
  let common;
  try {
    common = highestCommonPoint({ history: selfHistory, endLsn: selfEnd }, { history: peerHistory, endLsn: peerEnd });
  } catch (e) {
    if (e instanceof StrataError && e.code === "corrupt_data") return undefined;
    throw e;
  }
  if (common === undefined || common.term !== t) return undefined;
  return common.lsn;
}
