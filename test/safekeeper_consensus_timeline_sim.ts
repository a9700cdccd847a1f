/**
 * Adapts the safekeeper's per-timeline state (src/safekeeper/timeline.ts) to
 * the consensus simulation, so the same seeds that check StoreTimeline check
 * the Timeline the service runs.
 */
import type { Lsn } from "../src/lib/lsn.js";
import type { TenantId, TimelineId } from "../src/lib/id.js";
import { createRegistry } from "../src/lib/metrics.js";
import type { DurableFS } from "../src/safekeeper/durable_fs.js";
import { SafekeeperMetrics } from "../src/safekeeper/metrics.js";
import type { Term, TermHistory } from "../src/safekeeper/term_history.js";
import { Timeline, type TimelineOptions } from "../src/safekeeper/timeline.js";
import type { SimTimeline, SimTimelineKind } from "../src/safekeeper/consensus/simulation.js";
import { TermRefusedError } from "../src/safekeeper/consensus/acceptor_state.js";

class TimelineAdapter implements SimTimeline {
  constructor(private readonly tl: Timeline) {}
  get tenantId(): TenantId {
    return this.tl.tenantId;
  }
  get timelineId(): TimelineId {
    return this.tl.timelineId;
  }
  get commitLsn(): Lsn {
    return this.tl.commitLsn;
  }
  snapshot() {
    return this.tl.snapshot();
  }
  vote(t: Term) {
    return this.tl.vote(t);
  }
  truncateAndSetHistory(t: Term, history: TermHistory, at: Lsn) {
    return this.tl.truncateAndSetHistory(t, history, at);
  }
  appendWalFromPeer(t: Term, at: Lsn, bytes: Uint8Array) {
    return this.tl.appendWalFromPeer(t, at, bytes);
  }
  readWal(start: Lsn, max: number, end: Lsn) {
    return this.tl.readWal(start, max, end);
  }
  setCommitLsn(l: Lsn): void {
    this.tl.setCommitLsn(l);
  }
  writeWalFromCompute(t: Term, at: Lsn, bytes: Uint8Array): Promise<void> {
    return this.tl.appendWalFromCompute(t, at, bytes);
  }
  /** As the WAL acceptor reports: fsync, then the flush LSN unless the term moved on meanwhile. */
  async flushForCompute(t: Term): Promise<Lsn> {
    const flush = await this.tl.flush();
    if (this.tl.term !== t) throw new TermRefusedError(`term ${t} superseded by ${this.tl.term}`);
    return flush;
  }
  persistProgress() {
    return this.tl.persistProgressNow();
  }
  close() {
    return this.tl.close();
  }
}

function options(fs: DurableFS, root: string): TimelineOptions {
  return { fs, root, metrics: new SafekeeperMetrics(createRegistry()), soloCommit: false };
}

export const serviceTimelineKind: SimTimelineKind = {
  name: "Timeline",
  create: async (fs, root, s) =>
    new TimelineAdapter(
      await Timeline.create(
        { tenantId: s.tenantId, timelineId: s.timelineId, systemId: s.systemId, pgVersion: s.pgVersion, walSegSizeBytes: s.walSegSizeBytes, startLsn: s.timelineStartLsn },
        options(fs, root),
      ),
    ),
  open: async (fs, root, tenantId, timelineId) => new TimelineAdapter(await Timeline.open(tenantId, timelineId, options(fs, root))),
};
