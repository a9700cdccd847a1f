/**
 * WAL offload — a safekeeper's copy of each timeline's finished WAL segments
 * in remote storage (DESIGN.md §1, §7; issue 7 "Safekeeper WAL offload").
 *
 * Place in the data flow:
 *
 *   WalStorage (complete segments) --runWalBackup--> RemoteStorage
 *        wal/<tenant_id>/<timeline_id>/<segment name>   (relative to the storage's prefix)
 *   Timeline.backupLsn (control file)  <-- after each upload
 *   retention (Timeline.retentionHorizonLsn) keeps WAL at and above backup_lsn
 *   WAL service (START_REPLICATION below the oldest local segment) --fetchRemoteSegment--> RemoteStorage
 *
 * What is uploaded: whole segment files, byte for byte as they are on disk
 * (so as in the compute's pg_wal), under PostgreSQL's segment names, one
 * timeline's segments in order. Only *complete* segments (final name,
 * durable) that lie entirely below commit_lsn: WAL below commit_lsn is on a
 * quorum and never truncated, so a remote segment never holds WAL that a
 * later term replaces. The partial segment is never uploaded.
 *
 * backup_lsn: the end of the last uploaded segment (segments are uploaded in
 * order, so everything from the timeline's first segment up to it is in
 * remote storage). It advances only after the upload succeeded, and is
 * stored in the control file (atomic replace, fsynced) before the loop
 * moves on — after a crash the upload of the next segment is simply
 * repeated (uploads replace whole objects atomically, so a repeat is
 * harmless).
 *
 * Failures: each upload goes through the storage's own bounded retries
 * (RetryingRemoteStorage); when those give up, the loop logs the error
 * (segment, attempt, next try) and waits with exponential backoff
 * (BACKUP_RETRY_MIN_MS .. BACKUP_RETRY_MAX_MS) before trying the same
 * segment again — forever: while storage is down, backup_lsn stalls and so
 * does retention (nothing is removed that is not offloaded), and the
 * safekeeper keeps accepting and serving WAL. Cancellation: the loop ends
 * when its task's signal aborts (timeline deleted, safekeeper stopping); an
 * upload in flight is cancelled with it.
 *
 * Downloads: a consumer asking for WAL older than the oldest local segment
 * is served from remote storage: the segment is downloaded whole (its size
 * checked against the segment size) and kept in memory by the timeline for
 * the reads that follow (Timeline.readCommittedWal).
 */
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import type { TenantId, TimelineId } from "../lib/id.js";
import { errorFields } from "../lib/logging.js";
import { formatLsn, segmentNumber, segmentStart, walFileName, type Lsn } from "../lib/lsn.js";
import { sleep } from "../lib/tasks.js";
import { downloadBytes, type RemoteStorage } from "../remote_storage/remote_storage.js";
import { remotePath, type RemotePath } from "../remote_storage/remote_path.js";
import type { SafekeeperMetrics } from "./metrics.js";
import { WAL_FILE_TIMELINE } from "./wal_storage.js";

/** Top-level folder of offloaded WAL in remote storage (contract C: `wal/<tenant>/<timeline>/<segment>`). */
export const REMOTE_WAL_DIR = "wal";
/** First wait after an upload round failed (the storage already retried for a few seconds). */
export const BACKUP_RETRY_MIN_MS = 1_000;
/** Longest wait between failed rounds: an outage of minutes is noticed within this once it ends. */
export const BACKUP_RETRY_MAX_MS = 30_000;
/** How long an idle loop waits for a new finished segment before looking again (it also wakes on commit). */
export const BACKUP_IDLE_WAIT_MS = 1_000;

/** The remote name of one WAL segment. */
export function remoteSegmentPath(tenantId: TenantId, timelineId: TimelineId, segNo: bigint, walSegSizeBytes: number): RemotePath {
  return remotePath(REMOTE_WAL_DIR, tenantId, timelineId, walFileName(WAL_FILE_TIMELINE, segNo, walSegSizeBytes));
}

/** Backoff before the next try after `failures` failed rounds: doubling, capped. */
export function backupRetryDelayMs(failures: number): number {
  const exp = Math.min(failures - 1, 16);
  return Math.min(BACKUP_RETRY_MAX_MS, BACKUP_RETRY_MIN_MS * 2 ** Math.max(0, exp));
}

/** What the backup loop needs of a timeline (Timeline implements it). */
export interface BackupTimeline {
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  readonly walSegSizeBytes: number;
  readonly backupLsn: Lsn;
  readonly commitLsn: Lsn;
  readonly isClosed: boolean;
  /** One past the last complete local segment. */
  readonly completeSegmentsEnd: bigint;
  /** Oldest LSN still in local segments. */
  readonly oldestLsn: Lsn;
  readCompleteSegment(segNo: bigint): Promise<Uint8Array>;
  /** Persists a higher backup LSN (fsynced) before returning. */
  setBackupLsn(l: Lsn): Promise<void>;
  /** Resolves when commit_lsn passes `after`, after `timeoutMs`, or on abort. */
  waitForCommit(after: Lsn, timeoutMs: number, signal: AbortSignal): Promise<void>;
}

export interface WalBackupOptions {
  storage: RemoteStorage;
  metrics: SafekeeperMetrics;
  log: Logger;
}

/** The next segment to upload, if one is complete and below commit_lsn. */
export function nextBackupSegment(tl: BackupTimeline): { segNo: bigint; endLsn: Lsn } | undefined {
  const segNo = segmentNumber(tl.backupLsn, tl.walSegSizeBytes);
  const endLsn = segmentStart(segNo + 1n, tl.walSegSizeBytes);
  if (segNo >= tl.completeSegmentsEnd || endLsn > tl.commitLsn) return undefined;
  return { segNo, endLsn };
}

/** Uploads the timeline's finished segments in order until `signal` aborts (one task per timeline). */
export async function runWalBackup(tl: BackupTimeline, opts: WalBackupOptions, signal: AbortSignal): Promise<void> {
  const labels = { tenant_id: tl.tenantId, timeline_id: tl.timelineId };
  const log = opts.log.child({ ...labels, component: "wal_backup" });
  let failures = 0;
  while (!signal.aborted && !tl.isClosed) {
    const next = nextBackupSegment(tl);
    if (next === undefined) {
      await tl.waitForCommit(tl.commitLsn, BACKUP_IDLE_WAIT_MS, signal);
      continue;
    }
    const oldestSeg = segmentNumber(tl.oldestLsn, tl.walSegSizeBytes);
    if (next.segNo < oldestSeg) {
      // Removed locally before remote storage was configured: it cannot be offloaded any more.
      const from = segmentStart(oldestSeg, tl.walSegSizeBytes);
      log.warn({ backup_lsn: formatLsn(tl.backupLsn), oldest_lsn: formatLsn(tl.oldestLsn) }, `WAL below ${formatLsn(from)} was removed before it was offloaded; the remote copy starts at ${formatLsn(from)}`);
      await tl.setBackupLsn(from);
      continue;
    }
    const path = remoteSegmentPath(tl.tenantId, tl.timelineId, next.segNo, tl.walSegSizeBytes);
    try {
      const t0 = performance.now();
      const bytes = await tl.readCompleteSegment(next.segNo);
      await opts.storage.upload(path, bytes, { signal, sizeBytes: bytes.length });
      await tl.setBackupLsn(next.endLsn);
      opts.metrics.walBackupSegments.inc(labels);
      opts.metrics.walBackupBytes.inc(labels, bytes.length);
      if (failures > 0) log.info({ segment: path, failed_rounds: failures }, "WAL offload resumed: remote storage reachable again");
      failures = 0;
      log.debug({ segment: path, backup_lsn: formatLsn(next.endLsn), ms: Math.round(performance.now() - t0) }, "WAL segment offloaded");
    } catch (e) {
      if (signal.aborted || tl.isClosed) break;
      failures++;
      opts.metrics.walBackupErrors.inc(labels);
      const waitMs = backupRetryDelayMs(failures);
      log.warn(
        { segment: path, backup_lsn: formatLsn(tl.backupLsn), failed_rounds: failures, retry_in_ms: waitMs, ...errorFields(e) },
        "WAL segment upload failed; WAL retention waits for it (nothing is removed that is not offloaded)",
      );
      await sleep(waitMs, signal).catch(() => undefined);
    }
  }
}

/**
 * Downloads one offloaded segment whole; its size must be the segment size
 * (a shorter object is corrupt, not WAL to serve).
 */
export async function fetchRemoteSegment(
  storage: RemoteStorage,
  tenantId: TenantId,
  timelineId: TimelineId,
  segNo: bigint,
  walSegSizeBytes: number,
  signal?: AbortSignal,
): Promise<Uint8Array> {
  const path = remoteSegmentPath(tenantId, timelineId, segNo, walSegSizeBytes);
  let bytes: Buffer;
  try {
    bytes = await downloadBytes(storage, path, signal === undefined ? {} : { signal });
  } catch (e) {
    if (e instanceof StrataError && e.code === "not_found") {
      throw new StrataError("not_found", `WAL segment ${path} is neither on this safekeeper nor in remote storage`, { cause: e });
    }
    throw new StrataError("unavailable", `Cannot download WAL segment ${path} from remote storage: ${(e as Error).message}`, { cause: e });
  }
  if (bytes.length !== walSegSizeBytes) {
    throw new StrataError("corrupt_data", `Remote WAL segment ${path} has ${bytes.length} bytes, expected ${walSegSizeBytes}`);
  }
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
}
