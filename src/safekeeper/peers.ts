/**
 * Peer sync: how the safekeepers of a timeline learn each other's WAL
 * positions, and what they do with them.
 *
 * Choice (DESIGN.md §3, "learn each other's flush LSNs"): every safekeeper
 * *polls* each configured peer's consensus state over HTTP every
 * PEER_POLL_INTERVAL_MS, for every timeline it holds. Polling rather than
 * pushing or a broker: no extra process, a peer that restarts is picked up
 * on the next tick without any registration, and a slow or dead peer only
 * costs one bounded request per tick. At 100 ms the commit_lsn that
 * pageservers see trails the quorum's flush by at most ~100 ms plus one
 * round trip, which is far below their own batching.
 *
 * Each tick, per timeline:
 *   1. fetch every peer's snapshot (in parallel, each bounded by
 *      PEER_POLL_TIMEOUT_MS); keep the latest report per peer — an old
 *      report stays usable (commit_lsn.ts explains why stale reports are
 *      safe), it is just not refreshed;
 *   2. commit_lsn = quorumCommitLsn(self, reports) and raise the timeline's
 *      commit LSN (monotonic; the timeline persists it lazily);
 *   3. if this safekeeper promised a term (a vote, or a compute registered
 *      with that term) whose history it has not joined — it missed the
 *      endpoint start or restarted during it — catch up from the most
 *      advanced peer that has joined it (recovery.ts catchUpFromPeers):
 *      truncate divergent WAL, fetch the missing WAL, after which the WAL
 *      acceptor can stream from the compute. One catch-up per timeline at a
 *      time, in the background of the tick.
 *
 * Errors are logged once per peer state change (reachable -> unreachable),
 * not every 100 ms. Cancellation: `run(signal)` returns when the signal
 * aborts, after the in-flight tick and catch-ups settle.
 */
import type { Logger } from "pino";
import { errorFields, silentLogger } from "../lib/logging.js";
import { formatLsn, type Lsn } from "../lib/lsn.js";
import type { TenantId, TimelineId } from "../lib/id.js";
import { sleep } from "../lib/tasks.js";
import { effectiveHistory, formatSnapshot, type AcceptorSnapshot, type ConsensusTimeline } from "./consensus/acceptor_state.js";
import { quorumCommitLsn } from "./consensus/commit_lsn.js";
import { HttpConsensusClient, HttpWalSource } from "./consensus/http_client.js";
import { catchUpFromPeers, type PeerHandle, type WalSource } from "./consensus/recovery.js";
import { lastTerm, type Term } from "./term_history.js";

/** How often each peer is polled per timeline; bounds how far commit_lsn trails the quorum. */
export const PEER_POLL_INTERVAL_MS = 100;
/** Bound on one poll: a peer slower than this is treated as unreachable for the tick. */
export const PEER_POLL_TIMEOUT_MS = 1_000;

export interface PeerAddress {
  readonly id: number;
  readonly httpUrl: string;
}

/** What peer sync needs of a timeline beyond the consensus surface (all optional). */
export interface PeerSyncTimeline extends ConsensusTimeline {
  /** The term of the registered compute: a safekeeper must join it before streaming. */
  readonly compute?: { readonly term: Term } | undefined;
  /** Shown in the timeline's HTTP status. */
  setPeerFlushLsns?(peers: ReadonlyMap<string, Lsn>): void;
}

/** How peer sync reaches a peer (HTTP by default; tests may pass in-process peers). */
export interface PeerTransport {
  snapshot(peer: PeerAddress, tenantId: TenantId, timelineId: TimelineId, signal: AbortSignal): Promise<AcceptorSnapshot>;
  walSource(peer: PeerAddress, tenantId: TenantId, timelineId: TimelineId): WalSource;
}

export const httpPeerTransport: PeerTransport = {
  snapshot: (peer, tenantId, timelineId, signal) => new HttpConsensusClient({ id: peer.id, httpUrl: peer.httpUrl, tenantId, timelineId }).state(signal),
  walSource: (peer, tenantId, timelineId) => new HttpWalSource(peer, tenantId, timelineId),
};

export interface PeerReport {
  readonly snapshot: AcceptorSnapshot;
  readonly receivedAtMs: number;
}

export interface PeerSyncOptions {
  readonly selfId: number;
  readonly peers: readonly PeerAddress[];
  /** The timelines to keep in sync (read every tick: new timelines join, deleted ones leave). */
  readonly timelines: () => Iterable<PeerSyncTimeline>;
  readonly transport?: PeerTransport;
  readonly intervalMs?: number;
  readonly log?: Logger;
}

export class PeerSync {
  private readonly reports = new Map<string, Map<number, PeerReport>>();
  private readonly reachable = new Map<string, boolean>();
  private readonly catchingUp = new Map<string, Promise<void>>();
  private readonly transport: PeerTransport;
  private readonly log: Logger;
  private readonly members: number;

  constructor(private readonly opts: PeerSyncOptions) {
    this.transport = opts.transport ?? httpPeerTransport;
    this.log = opts.log ?? silentLogger();
    this.members = opts.peers.length + 1;
  }

  /** The latest report of each peer for a timeline (for status pages and tests). */
  peerReports(tenantId: TenantId, timelineId: TimelineId): ReadonlyMap<number, PeerReport> {
    return this.reports.get(`${tenantId}/${timelineId}`) ?? new Map();
  }

  /** Polls until `signal` aborts. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await this.tick(signal);
      await sleep(this.opts.intervalMs ?? PEER_POLL_INTERVAL_MS, signal).catch(() => undefined);
    }
    await Promise.allSettled([...this.catchingUp.values()]);
  }

  /** One round over every timeline. */
  async tick(signal: AbortSignal): Promise<void> {
    await Promise.all([...this.opts.timelines()].map((tl) => this.syncTimeline(tl, signal)));
  }

  private async syncTimeline(tl: PeerSyncTimeline, signal: AbortSignal): Promise<void> {
    const key = `${tl.tenantId}/${tl.timelineId}`;
    let reports = this.reports.get(key);
    if (reports === undefined) {
      reports = new Map();
      this.reports.set(key, reports);
    }
    await Promise.all(
      this.opts.peers.map(async (p) => {
        const pollSignal = AbortSignal.any([signal, AbortSignal.timeout(PEER_POLL_TIMEOUT_MS)]);
        const rkey = `${key}#${p.id}`;
        try {
          const s = await this.transport.snapshot(p, tl.tenantId, tl.timelineId, pollSignal);
          reports.set(p.id, { snapshot: s, receivedAtMs: Date.now() });
          if (this.reachable.get(rkey) === false) this.log.info({ tenant_id: tl.tenantId, timeline_id: tl.timelineId, peer: p.id }, "peer reachable again");
          this.reachable.set(rkey, true);
        } catch (e) {
          if (signal.aborted) return;
          if (this.reachable.get(rkey) !== false) {
            this.log.warn({ tenant_id: tl.tenantId, timeline_id: tl.timelineId, peer: p.id, ...errorFields(e) }, "peer unreachable; keeping its last report");
          }
          this.reachable.set(rkey, false);
        }
      }),
    );
    if (signal.aborted) return;
    let self: AcceptorSnapshot;
    try {
      self = await tl.snapshot();
    } catch (e) {
      this.log.debug({ tenant_id: tl.tenantId, timeline_id: tl.timelineId, ...errorFields(e) }, "timeline unavailable for peer sync");
      return;
    }
    tl.setPeerFlushLsns?.(new Map([...reports].map(([id, r]) => [String(id), r.snapshot.flushLsn])));
    const commit = quorumCommitLsn({ self, peers: [...reports.values()].map((r) => r.snapshot), members: this.members });
    if (commit !== undefined) tl.setCommitLsn(commit);
    this.maybeCatchUp(tl, key, self, signal);
  }

  private maybeCatchUp(tl: PeerSyncTimeline, key: string, self: AcceptorSnapshot, signal: AbortSignal): void {
    if (this.catchingUp.has(key)) return;
    const registered = tl.compute?.term;
    const target = registered !== undefined && registered > self.term ? registered : self.term;
    if (target === 0n || lastTerm(effectiveHistory(self)) === target) return;
    const peers: PeerHandle[] = this.opts.peers.map((p) => ({
      id: p.id,
      snapshot: (sig: AbortSignal) => this.transport.snapshot(p, tl.tenantId, tl.timelineId, AbortSignal.any([sig, AbortSignal.timeout(PEER_POLL_TIMEOUT_MS)])),
      source: this.transport.walSource(p, tl.tenantId, tl.timelineId),
    }));
    const run = catchUpFromPeers(tl, target, peers, signal)
      .then((s) => {
        if (s !== undefined && lastTerm(effectiveHistory(s)) === target) {
          this.log.info({ tenant_id: tl.tenantId, timeline_id: tl.timelineId, term: String(target), flush_lsn: formatLsn(s.flushLsn), state: formatSnapshot(s) }, "caught up with the term's history from a peer");
        }
      })
      .catch((e: unknown) => {
        if (!signal.aborted) this.log.warn({ tenant_id: tl.tenantId, timeline_id: tl.timelineId, term: String(target), ...errorFields(e) }, "catch-up from peers failed; retrying next tick");
      })
      .finally(() => this.catchingUp.delete(key));
    this.catchingUp.set(key, run);
  }
}
