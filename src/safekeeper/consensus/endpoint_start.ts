/**
 * The endpoint-start protocol: elect a new term for a timeline before a
 * compute starts writing WAL, and return where that compute must start.
 *
 * Run by the command line (or the control plane) when it starts a compute;
 * it talks to the safekeepers' HTTP APIs (http_client.ts) — or, in the
 * deterministic simulation, to in-process members through the same
 * `ConsensusClient` interface. Steps (DESIGN.md §3):
 *
 *   1. Read every reachable member's snapshot; at least q = N/2+1 must answer.
 *   2. T = the highest term seen + 1. Ask every member to vote for T. A
 *      member persists T before answering and refuses T if it has promised T
 *      or more; from then on it refuses WAL of older terms (fencing: the old
 *      compute can no longer gather q acknowledgements). At least q grants.
 *   3. The donor is the most advanced *voter*, by (last log term, flush
 *      record LSN), taken from the vote answers — the positions at the moment
 *      each voter stopped accepting older terms, not the possibly stale reads
 *      of step 1. startLsn = the donor's flush record LSN (a record
 *      boundary); the elected history is the donor's history up to startLsn
 *      plus (T, startLsn).
 *   4. Tell every member; each truncates WAL that diverges from the elected
 *      history, persists it, and fetches what it lacks up to startLsn from
 *      the donor (recovery.ts). At least q must finish.
 *   5. Return { term: T, startLsn }.
 *
 * Why nothing acknowledged is lost: an acknowledged commit (and anything a
 * safekeeper reported as commit_lsn) ends at or below the flush record LSN
 * of q members that joined its term; the q voters of step 2 include one of
 * them, whose vote answer carries that WAL; the donor is at least as
 * advanced, and (one compute per term) a member with the same last log term
 * and a later end holds a superset. By induction over terms, every elected
 * history contains all committed WAL, and truncation (step 4) only cuts
 * past the common point with it.
 *
 * Crash safety and retries: every step is idempotent or superseded. A crash
 * of the coordinator after step 2 leaves a higher term on some members; a
 * retry reads it in step 1 and elects T+1. A crash during step 4 leaves some
 * members with the elected history (and last log term T) — the next
 * election's donor is one of them or as advanced, so the retry converges to
 * the same WAL. `startEndpoint` itself retries the whole protocol a bounded
 * number of times when a step lacks a quorum.
 *
 * Cancellation: every remote call takes the signal; an aborted start leaves
 * the members in one of the crash states above.
 */
import { StrataError } from "../../lib/errors.js";
import type { TenantId, TimelineId } from "../../lib/id.js";
import { formatLsn, type Lsn } from "../../lib/lsn.js";
import { silentLogger, type Logger } from "../../lib/logging.js";
import { sleep } from "../../lib/tasks.js";
import { electedHistory, formatTermHistory, historyUpTo, term as toTerm, type Term, type TermHistory } from "../term_history.js";
import { comparePositions, formatSnapshot, positionLastLogTerm, type AcceptorSnapshot, type VoteResult } from "./acceptor_state.js";
import { quorumSize } from "./commit_lsn.js";

/** What the coordinator asks of one safekeeper. */
export interface ConsensusClient {
  readonly id: number;
  state(signal: AbortSignal): Promise<AcceptorSnapshot>;
  vote(term: Term, signal: AbortSignal): Promise<VoteResult>;
  /** Join the elected history, fetching WAL from `donorId`; resolves when the member holds WAL up to startLsn. */
  elected(req: ElectedRequest, signal: AbortSignal): Promise<AcceptorSnapshot>;
}

export interface ElectedRequest {
  readonly term: Term;
  readonly history: TermHistory;
  readonly startLsn: Lsn;
  readonly donorId: number;
}

export interface EndpointStartResult {
  readonly term: Term;
  /** Where the new compute's WAL starts: a record boundary; all committed WAL lies below it. */
  readonly startLsn: Lsn;
  readonly history: TermHistory;
  readonly donorId: number;
  /** Members that joined the history (at least q). */
  readonly joined: readonly number[];
}

/** Whole-protocol attempts before giving up: covers a race with a concurrent start or a member restarting. */
export const DEFAULT_START_ATTEMPTS = 3;
/** Pause between attempts: long enough for a restarting safekeeper to come back, short for an operator. */
export const START_RETRY_DELAY_MS = 500;

export interface RunEndpointStartOptions {
  readonly clients: readonly ConsensusClient[];
  readonly signal: AbortSignal;
  readonly log?: Logger;
}

/** One attempt of the protocol over the given members. Throws StrataError("unavailable") when a step lacks a quorum. */
export async function runEndpointStart(opts: RunEndpointStartOptions): Promise<EndpointStartResult> {
  const { clients, signal } = opts;
  const log = opts.log ?? silentLogger();
  const n = clients.length;
  const q = quorumSize(n);
  if (new Set(clients.map((c) => c.id)).size !== n) throw new StrataError("invalid_argument", `safekeeper ids must be distinct: ${clients.map((c) => c.id).join(", ")}`);

  // 1. Read.
  const reads = await settle(clients, (c) => c.state(signal));
  const read = reads.filter(isOk);
  if (read.length < q) throw noQuorum("read the state of", read.length, q, n, reads);
  let maxTerm = 0n;
  for (const r of read) if (r.value.term > maxTerm) maxTerm = r.value.term;
  const t = toTerm(maxTerm + 1n);

  // 2. Vote.
  const votes = await settle(clients, (c) => c.vote(t, signal));
  const granted = votes.filter(isOk).filter((v) => v.value.granted);
  if (granted.length < q) throw noQuorum(`get votes for term ${t} from`, granted.length, q, n, votes);

  // 3. Donor: the most advanced voter (ties: lowest id, for determinism).
  let donor = granted[0]!;
  for (const v of granted) {
    const c = comparePositions(v.value.snapshot, donor.value.snapshot);
    if (c > 0 || (c === 0 && v.id < donor.id)) donor = v;
  }
  const ds = donor.value.snapshot;
  const startLsn = ds.flushRecordLsn;
  const history = electedHistory(historyUpTo(ds.termHistory, startLsn), startLsn, t);
  log.info(
    { term: t.toString(), donor: donor.id, start_lsn: formatLsn(startLsn), history: formatTermHistory(history), donor_state: formatSnapshot(ds) },
    "term elected; bringing members to the donor's history",
  );

  // 4. Every member joins the history (fetching from the donor as needed).
  const req: ElectedRequest = { term: t, history, startLsn, donorId: donor.id };
  const joins = await settle(clients, (c) => c.elected(req, signal));
  const joined = joins.filter(isOk);
  if (joined.length < q) throw noQuorum(`bring to the history of term ${t}`, joined.length, q, n, joins);
  for (const j of joined) {
    if (j.value.flushLsn < startLsn) throw new Error(`assertion failed: member ${j.id} joined term ${t} with WAL ending at ${formatLsn(j.value.flushLsn)}`);
  }
  return { term: t, startLsn, history, donorId: donor.id, joined: joined.map((j) => j.id).sort((a, b) => a - b) };
}

type Settled<T> = { id: number; ok: true; value: T } | { id: number; ok: false; error: unknown };

function isOk<T>(s: Settled<T>): s is { id: number; ok: true; value: T } {
  return s.ok;
}

async function settle<T>(clients: readonly ConsensusClient[], fn: (c: ConsensusClient) => Promise<T>): Promise<Settled<T>[]> {
  return await Promise.all(
    clients.map(async (c): Promise<Settled<T>> => {
      try {
        return { id: c.id, ok: true, value: await fn(c) };
      } catch (error) {
        return { id: c.id, ok: false, error };
      }
    }),
  );
}

function noQuorum(what: string, got: number, q: number, n: number, results: Settled<unknown>[]): StrataError {
  const why = results
    .filter((r) => !r.ok || (typeof r.value === "object" && r.value !== null && (r.value as { granted?: boolean }).granted === false))
    .map((r) => (r.ok ? `safekeeper ${r.id}: refused (${formatSnapshot((r.value as VoteResult).snapshot)})` : `safekeeper ${r.id}: ${(r.error as Error).message ?? String(r.error)}`))
    .join("; ");
  return new StrataError("unavailable", `Could not ${what} a quorum of safekeepers: ${got} of ${n}, need ${q}${why ? ` (${why})` : ""}`);
}

export interface StartEndpointOptions {
  readonly safekeepers: readonly { readonly id: number; readonly httpUrl: string }[];
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  readonly signal: AbortSignal;
  readonly log?: Logger;
  /** Whole-protocol attempts (default DEFAULT_START_ATTEMPTS). */
  readonly attempts?: number;
  /** Builds the client for one member; default: HTTP (http_client.ts). Tests pass in-process clients. */
  readonly clientFor?: (sk: { id: number; httpUrl: string }) => ConsensusClient;
}

/**
 * Elects a new term for the timeline on its safekeepers and returns where
 * the new compute starts. Retries the protocol on a missing quorum.
 */
export async function startEndpoint(opts: StartEndpointOptions): Promise<{ term: Term; startLsn: Lsn; result: EndpointStartResult }> {
  const { HttpConsensusClient } = await import("./http_client.js");
  const clientFor = opts.clientFor ?? ((sk) => new HttpConsensusClient({ id: sk.id, httpUrl: sk.httpUrl, tenantId: opts.tenantId, timelineId: opts.timelineId, peers: opts.safekeepers }));
  const clients = opts.safekeepers.map(clientFor);
  const attempts = opts.attempts ?? DEFAULT_START_ATTEMPTS;
  const log = (opts.log ?? silentLogger()).child({ tenant_id: opts.tenantId, timeline_id: opts.timelineId });
  let last: unknown;
  for (let i = 1; i <= attempts; i++) {
    try {
      const result = await runEndpointStart({ clients, signal: opts.signal, log });
      return { term: result.term, startLsn: result.startLsn, result };
    } catch (e) {
      if (!(e instanceof StrataError) || e.code !== "unavailable" || i === attempts) throw e;
      last = e;
      log.warn({ attempt: i, err: e.message }, "endpoint start attempt failed; retrying");
      await sleep(START_RETRY_DELAY_MS, opts.signal);
    }
  }
  throw last;
}

/** Last log term of a snapshot (re-exported for callers printing results). */
export { positionLastLogTerm };
