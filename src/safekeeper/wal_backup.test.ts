/**
 * The WAL offload loop (wal_backup.ts) against a real local-directory
 * storage wrapped in FaultInjectingRemoteStorage, with a small in-memory
 * timeline: uploads go in order, only complete segments below commit_lsn,
 * backup_lsn advances only after a successful upload, failed rounds are
 * counted and retried with backoff, cancellation ends the loop promptly.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateTenantId, generateTimelineId } from "../lib/id.js";
import { lsn, segmentStart, walFileName, type Lsn } from "../lib/lsn.js";
import { silentLogger } from "../lib/logging.js";
import { createRegistry } from "../lib/metrics.js";
import { FaultInjectingRemoteStorage } from "../remote_storage/fault_injection.js";
import { LocalFsStorage } from "../remote_storage/local_fs.js";
import { SafekeeperMetrics } from "./metrics.js";
import { backupRetryDelayMs, BACKUP_RETRY_MAX_MS, BACKUP_RETRY_MIN_MS, fetchRemoteSegment, nextBackupSegment, runWalBackup, type BackupTimeline } from "./wal_backup.js";

const SEG = 1024 * 1024;

class FakeTimeline implements BackupTimeline {
  readonly tenantId = generateTenantId();
  readonly timelineId = generateTimelineId();
  readonly walSegSizeBytes = SEG;
  backupLsn: Lsn;
  commitLsn: Lsn;
  completeSegmentsEnd: bigint;
  oldestLsn: Lsn;
  isClosed = false;
  readonly stored: Lsn[] = [];
  private readonly events = new EventEmitter();
  constructor(start: Lsn) {
    this.backupLsn = start;
    this.commitLsn = start;
    this.oldestLsn = start;
    this.completeSegmentsEnd = start / BigInt(SEG);
  }
  segmentBytes(segNo: bigint): Uint8Array {
    const b = new Uint8Array(SEG);
    for (let i = 0; i < SEG; i += 4096) b[i] = Number((segNo * 7n + BigInt(i / 4096)) % 251n) + 1;
    return b;
  }
  async readCompleteSegment(segNo: bigint): Promise<Uint8Array> {
    assert.ok(segNo < this.completeSegmentsEnd, `read of incomplete segment ${segNo}`);
    return this.segmentBytes(segNo);
  }
  async setBackupLsn(l: Lsn): Promise<void> {
    assert.ok(l > this.backupLsn);
    this.backupLsn = l;
    this.stored.push(l);
    this.events.emit("backup");
  }
  /** Makes segments below `segEnd` complete and committed. */
  advance(segEnd: bigint): void {
    this.completeSegmentsEnd = segEnd;
    this.commitLsn = segmentStart(segEnd, SEG);
    this.events.emit("commit");
  }
  waitForCommit(after: Lsn, timeoutMs: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.events.off("commit", done);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const t = setTimeout(done, timeoutMs);
      this.events.on("commit", done);
      signal.addEventListener("abort", done, { once: true });
      if (this.commitLsn > after || signal.aborted) done();
    });
  }
  async until(cond: () => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out; backup at ${this.backupLsn}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

async function withStorage(fn: (storage: FaultInjectingRemoteStorage, root: string) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), "strata-walbackup-"));
  const storage = new FaultInjectingRemoteStorage(new LocalFsStorage({ root }));
  try {
    await fn(storage, root);
  } finally {
    await storage.close();
    await rm(root, { recursive: true, force: true });
  }
}

test("backoff doubles from the minimum and is capped", () => {
  assert.equal(backupRetryDelayMs(1), BACKUP_RETRY_MIN_MS);
  assert.equal(backupRetryDelayMs(2), 2 * BACKUP_RETRY_MIN_MS);
  assert.equal(backupRetryDelayMs(100), BACKUP_RETRY_MAX_MS);
});

test("only complete segments below commit_lsn are next; a timeline starting mid-segment uploads that segment whole", () => {
  const tl = new FakeTimeline(lsn(segmentStart(4n, SEG) + 0x28n));
  assert.equal(nextBackupSegment(tl), undefined);
  tl.completeSegmentsEnd = 5n; // complete, but not committed to its end
  tl.commitLsn = lsn(segmentStart(5n, SEG) - 8n);
  assert.equal(nextBackupSegment(tl), undefined);
  tl.commitLsn = segmentStart(5n, SEG);
  assert.deepEqual(nextBackupSegment(tl), { segNo: 4n, endLsn: segmentStart(5n, SEG) });
});

test("uploads in order, byte-identical; failed rounds are retried and backup_lsn waits; cancellation stops the loop", async () => {
  await withStorage(async (storage, root) => {
    const tl = new FakeTimeline(segmentStart(2n, SEG));
    const metrics = new SafekeeperMetrics(createRegistry({ defaultMetrics: false }));
    const ac = new AbortController();
    const loop = runWalBackup(tl, { storage, metrics, log: silentLogger() }, ac.signal);
    try {
      tl.advance(4n);
      await tl.until(() => tl.backupLsn === segmentStart(4n, SEG), 10_000);
      assert.deepEqual(tl.stored, [segmentStart(3n, SEG), segmentStart(4n, SEG)]);
      // Storage fails the next two uploads: backup_lsn stays, errors are counted, then it goes on.
      const rule = storage.addRule({ ops: ["upload"], error: "permanent", maxHits: 2 });
      tl.advance(5n);
      await tl.until(() => rule.hits === 1, 10_000);
      assert.equal(tl.backupLsn, segmentStart(4n, SEG), "no progress while uploads fail");
      await tl.until(() => tl.backupLsn === segmentStart(5n, SEG), 15_000);
      assert.equal(rule.hits, 2);
      const errors = (await metrics.walBackupErrors.get()).values.find((v) => v.labels.timeline_id === tl.timelineId)?.value;
      assert.equal(errors, 2);
      for (const segNo of [2n, 3n, 4n]) {
        const got = await fetchRemoteSegment(storage, tl.tenantId, tl.timelineId, segNo, SEG);
        assert.deepEqual(got, tl.segmentBytes(segNo));
      }
      assert.deepEqual((await readdir(join(root, "wal", tl.tenantId, tl.timelineId))).sort(), [2n, 3n, 4n].map((s) => walFileName(1, s, SEG)));
      await assert.rejects(fetchRemoteSegment(storage, tl.tenantId, tl.timelineId, 9n, SEG), /neither on this safekeeper nor in remote storage/);
    } finally {
      ac.abort();
      const t0 = Date.now();
      await loop;
      assert.ok(Date.now() - t0 < 2_000, "cancellation ends the loop promptly");
    }
  });
});
