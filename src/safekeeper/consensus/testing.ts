/**
 * Helpers for consensus tests: timelines on an in-memory disk and a WAL
 * generator that writes valid records (so WalStorage's record tracking and
 * recovery run for real) and can fork — two computes continuing the same
 * WAL differently, which is what divergent safekeepers hold.
 */
import { parseTenantId, parseTimelineId } from "../../lib/id.js";
import { lsn as toLsn, type Lsn } from "../../lib/lsn.js";
import { WalWriter } from "../../formats/wal/wal_writer.js";
import { encodeRecord } from "../../formats/wal/xlog_record.js";
import type { TimelinePersistentState } from "../control_file.js";
import type { DurableFS } from "../durable_fs.js";
import { INVALID_TERM } from "../term_history.js";
import { TimelineStore } from "../timeline_dir.js";
import { StoreTimeline } from "./store_timeline.js";

export const TEST_SEG_BYTES = 1024 * 1024;
export const TEST_START = toLsn(TEST_SEG_BYTES);
export const TEST_SYSTEM_ID = 7_300_000_000_000_000_002n;
export const TEST_TENANT = parseTenantId("c0de0000000000000000000000000001");
export const TEST_TIMELINE = parseTimelineId("c0de0000000000000000000000000002");

export function initialState(): TimelinePersistentState {
  return {
    tenantId: TEST_TENANT,
    timelineId: TEST_TIMELINE,
    systemId: TEST_SYSTEM_ID,
    pgVersion: 150000,
    walSegSizeBytes: TEST_SEG_BYTES,
    timelineStartLsn: TEST_START,
    term: INVALID_TERM,
    termHistory: [],
    flushLsnHint: TEST_START,
    commitLsn: TEST_START,
    backupLsn: TEST_START,
    remoteConsistentLsn: TEST_START,
    peerHorizonLsn: TEST_START,
  };
}

export async function createTestTimeline(fs: DurableFS, root: string): Promise<StoreTimeline> {
  return new StoreTimeline(await TimelineStore.create(fs, root, initialState()));
}

/** Valid WAL records from a start LSN; `fork()` continues the same prefix differently. */
export class WalGen {
  private writer: WalWriter;
  private chunks: Uint8Array[] = [];
  private len = 0;
  private prev: Lsn;
  private lastEnd: Lsn;
  private seq = 0;

  constructor(
    public startLsn: Lsn = TEST_START,
    prevRecordLsn: Lsn = toLsn(0),
    private readonly fill = 1,
  ) {
    this.prev = prevRecordLsn;
    this.lastEnd = startLsn;
    const aligned = toLsn((startLsn + 7n) & ~7n);
    if (aligned > startLsn) this.push(new Uint8Array(Number(aligned - startLsn)));
    this.writer = new WalWriter({ startLsn: aligned, walSegSizeBytes: TEST_SEG_BYTES, systemId: TEST_SYSTEM_ID });
  }

  get endLsn(): Lsn {
    return toLsn(this.startLsn + BigInt(this.len));
  }

  /** The start of the last record written (for a fork's xl_prev). */
  get lastRecordLsn(): Lsn {
    return this.prev;
  }

  /** Appends `count` records of `bytes` payload each; returns the end of the last record. */
  records(count: number, bytes = 300): Lsn {
    let end = this.endLsn;
    for (let i = 0; i < count; i++) {
      const main = new Uint8Array(bytes).fill((this.fill * 31 + this.seq++) & 0xff);
      const placed = this.writer.appendRecord(encodeRecord({ rmid: 10, info: 0, xid: 500 + this.seq, prevLsn: this.prev, mainData: main }));
      this.push(this.writer.take());
      this.prev = placed.lsn;
      this.lastEnd = placed.endLsn;
      end = placed.endLsn;
    }
    return end;
  }

  /** Bytes [from, to) of this stream. */
  bytes(from: Lsn, to: Lsn): Uint8Array {
    const all = Buffer.concat(this.chunks);
    this.chunks = [all];
    return new Uint8Array(all.subarray(Number(from - this.startLsn), Number(to - this.startLsn)));
  }

  /** End of the last record (where a new term would start). */
  get lastRecordEnd(): Lsn {
    return this.lastEnd;
  }

  /** A new stream with this one's bytes up to its last record end, continuing with different records. */
  fork(fill: number): WalGen {
    const at = this.lastEnd;
    const g = new WalGen(at, this.prev, fill);
    const prefix = this.bytes(this.startLsn, at);
    g.chunks.unshift(prefix);
    g.len += prefix.length;
    g.startLsn = this.startLsn;
    return g;
  }

  private push(b: Uint8Array): void {
    this.chunks.push(b);
    this.len += b.length;
  }
}
