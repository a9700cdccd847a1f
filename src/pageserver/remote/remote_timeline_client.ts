/**
 * The remote timeline client: one per timeline, it owns the ordered queue of
 * operations that make the timeline's remote copy (DESIGN §7).
 *
 *   flush / compaction / GC (timeline.ts)
 *        -> scheduleLayerUpload / scheduleIndexUpload / scheduleLayerDeletion
 *        -> queue:  [layer, layer, index, layer, index, delete, ...]
 *        -> RemoteStorage (retrying wrapper -> S3 | Azure | local directory)
 *
 * Consistency. The queue runs layer uploads in parallel (up to
 * `uploadConcurrency`); an index upload or a deletion is a *barrier*: it
 * starts only when everything queued before it has finished, and nothing
 * queued after it starts before it has finished. Hence
 *   - an index is uploaded only after every layer it references is durable;
 *   - a deletion runs only after an index that no longer references the
 *     deleted objects is durable (scheduleLayerDeletion queues that index
 *     first), so the durable index never points at a missing object;
 *   - remote_consistent_lsn is the disk_consistent_lsn of the last durable
 *     index: it advances only when that index is durable.
 * Consecutive index uploads collapse into the last one (it describes a
 * superset of the progress).
 *
 * Generations. Every object this client writes carries its generation
 * (index_part.ts). It never deletes an object of a higher generation, and
 * before each deletion it lists the timeline: if an index of a higher
 * generation exists, this attachment is stale — another pageserver owns the
 * tenant now and may reference the objects — and the deletion is skipped
 * (leaked objects are cheap, a missing one is data loss). There is a small
 * window between that check and the delete; the control plane closes it by
 * not handing out a new generation while the old attachment deletes, which
 * is documented in docs/remote-storage.md.
 *
 * Retries. The storage wrapper retries transient errors a few times (seconds).
 * On top of that, every queued operation is retried *forever* with capped
 * exponential backoff until it succeeds or the client is shut down: storage
 * that is down for minutes stalls remote_consistent_lsn (and with it the
 * safekeepers' WAL removal), it never drops work or crashes ingest. Each
 * failed attempt is logged and counted.
 *
 * Cancellation. The queue runs as a task of kind "remote_upload" owned by the
 * timeline; shutting the timeline down aborts in-flight operations (an
 * aborted upload leaves the old object, storage uploads are atomic) and the
 * unfinished queue is dropped — it is rebuilt from the local state at the
 * next start (below). `waitForQueueEmpty` is what detach uses to wait for
 * everything to be durable first.
 *
 * Crash safety. Nothing in the queue is persisted. At start-up the timeline
 * compares its local layer files with the durable index and re-schedules
 * uploads of local layers the index lacks (then an index); layers the index
 * has but local disk lacks stay remote-only (downloaded on demand). Local
 * layer files removed by compaction or GC while their upload is still queued
 * are unlinked only after the upload (`unlinkAfterUpload`), so a queued
 * upload never finds its file gone. Uploading the same layer twice is
 * harmless: same name, same bytes, atomic overwrite.
 */
import { createReadStream } from "node:fs";
import { stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { StrataError } from "../../lib/errors.js";
import type { TenantId, TimelineId } from "../../lib/id.js";
import { formatLsn, INVALID_LSN, type Lsn } from "../../lib/lsn.js";
import { errorFields } from "../../lib/logging.js";
import { sleep, type TaskManager } from "../../lib/tasks.js";
import type { RemoteStorage } from "../../remote_storage/remote_storage.js";
import { crc32c } from "../../formats/crc32c.js";
import type { TimelineMetadata } from "../metadata.js";
import { crcHex, listTimelineObjects } from "./download.js";
import { formatIndexPart, INDEX_PART_VERSION, parseRemoteObjectName, remoteIndexPath, remoteLayerPath, type IndexLayerMeta, type IndexPart } from "./index_part.js";
import type { RemoteMetrics } from "./metrics.js";

/** Layer uploads in flight per timeline: enough to keep a link busy, few enough not to starve other timelines. */
export const DEFAULT_UPLOAD_CONCURRENCY = 4;
/** First wait after a failed queued operation; doubles per failure... */
export const DEFAULT_RETRY_BASE_MS = 200;
/** ...up to this: storage back after an outage is noticed within ~10 s. */
export const DEFAULT_RETRY_MAX_MS = 10_000;

/** A layer as the remote side knows (or will know) it. */
interface LayerRecord {
  readonly name: string;
  sizeBytes: number;
  readonly generation: number;
  checksumCrc32c: string | undefined;
  uploaded: boolean;
  /** Set when the upload was dropped (file gone and layer no longer wanted). */
  abandoned: boolean;
}

type Op =
  | { kind: "layer"; rec: LayerRecord }
  | { kind: "index"; meta: TimelineMetadata; layers: Map<string, LayerRecord> }
  | { kind: "delete"; objects: Array<{ name: string; generation: number }> };

export interface RemoteTimelineClientOptions {
  readonly storage: RemoteStorage;
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  readonly generation: number;
  /** The timeline's local directory (layer files are read from here). */
  readonly localDir: string;
  readonly tasks: TaskManager;
  readonly log: Logger;
  readonly metrics?: RemoteMetrics;
  /** The durable index this client starts from (downloaded at load/attach), if any. */
  readonly index?: IndexPart;
  readonly uploadConcurrency?: number;
  readonly retryBaseMs?: number;
  readonly retryMaxMs?: number;
  /** For deterministic tests: jitter source (default Math.random). */
  readonly random?: () => number;
}

export class RemoteTimelineClient {
  readonly generation: number;
  private readonly log: Logger;
  /** What remote storage will hold once the queue has run: layer name -> record. */
  private readonly projected = new Map<string, LayerRecord>();
  /** Layers of the last durable index. */
  private durable = new Map<string, IndexLayerMeta>();
  private _remoteConsistentLsn: Lsn = INVALID_LSN;
  private readonly pending: Op[] = [];
  private readonly inflight = new Set<Op>();
  private readonly unlinkAfter = new Map<string, string>();
  private wake: (() => void) | undefined;
  private idleWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private task: { done: Promise<void>; cancel: () => void } | undefined;
  private stopped = false;
  private unregisterQueueGauge: (() => void) | undefined;
  /** True once an index of a higher generation was seen: deletions are skipped. */
  stale = false;
  /** Counters for tests and the HTTP detail. */
  readonly stats = { layersUploaded: 0, indexesUploaded: 0, deletions: 0, failedAttempts: 0, skippedDeletions: 0, uploadedBytes: 0 };

  constructor(private readonly opts: RemoteTimelineClientOptions) {
    this.generation = opts.generation;
    this.log = opts.log.child({ tenant_id: opts.tenantId, timeline_id: opts.timelineId, generation: opts.generation });
    if (opts.index !== undefined) {
      for (const [name, m] of opts.index.layers) {
        this.projected.set(name, { name, sizeBytes: m.fileSizeBytes, generation: m.generation, checksumCrc32c: m.checksumCrc32c, uploaded: true, abandoned: false });
      }
      this.durable = new Map(opts.index.layers);
      this._remoteConsistentLsn = opts.index.metadata.diskConsistentLsn;
    }
    this.unregisterQueueGauge = opts.metrics?.addQueueSource(() => this.queueDepth);
  }

  get remoteConsistentLsn(): Lsn {
    return this._remoteConsistentLsn;
  }

  get queueDepth(): number {
    return this.pending.length + this.inflight.size;
  }

  /** The durable index's entry for a layer (what a download needs), if the layer is durable remotely. */
  durableLayer(name: string): IndexLayerMeta | undefined {
    return this.durable.get(name);
  }

  /** Layer names remote storage will hold once the queue has run. */
  projectedLayerNames(): string[] {
    return [...this.projected.keys()];
  }

  /** Starts the queue task. */
  start(): void {
    if (this.task !== undefined || this.stopped) return;
    this.task = this.opts.tasks.spawn("remote_upload", { tenantId: this.opts.tenantId, timelineId: this.opts.timelineId, name: `remote upload ${this.opts.timelineId}` }, (signal) =>
      this.run(signal),
    );
  }

  // ------------------------------------------------------------ scheduling

  /** Queues the upload of a new local layer file (written by this attachment). */
  scheduleLayerUpload(name: string, sizeBytes: number, opts: { replace?: boolean } = {}): void {
    if (this.stopped) return;
    const known = this.projected.get(name);
    // Already remote or queued (same name = same bytes), unless the file was rewritten under the same name.
    if (known !== undefined && !known.abandoned && opts.replace !== true) return;
    const rec: LayerRecord = { name, sizeBytes, generation: this.generation, checksumCrc32c: undefined, uploaded: false, abandoned: false };
    this.projected.set(name, rec);
    this.push({ kind: "layer", rec });
  }

  /** Queues an index describing `meta` and every layer scheduled so far. */
  scheduleIndexUpload(meta: TimelineMetadata): void {
    if (this.stopped) return;
    this.push({ kind: "index", meta, layers: new Map(this.projected) });
  }

  /**
   * Removes layers from the remote copy: an index without them (with `meta`)
   * is queued first, their deletion after it.
   */
  scheduleLayerDeletion(names: readonly string[], meta: TimelineMetadata): void {
    if (this.stopped) return;
    const objects: Array<{ name: string; generation: number }> = [];
    for (const n of names) {
      const rec = this.projected.get(n);
      if (rec === undefined) continue;
      this.projected.delete(n);
      objects.push({ name: n, generation: rec.generation });
    }
    this.scheduleIndexUpload(meta);
    if (objects.length > 0) this.push({ kind: "delete", objects });
  }

  /**
   * The timeline wants to delete a local layer file. If an upload of it is
   * still queued, the client unlinks it after that upload and returns true;
   * false means the caller may unlink now.
   */
  unlinkAfterUpload(name: string, path: string): boolean {
    const queued = [...this.pending, ...this.inflight].some((op) => op.kind === "layer" && op.rec.name === name);
    if (!queued) return false;
    this.unlinkAfter.set(name, path);
    return true;
  }

  /** Resolves when nothing is queued or running (or rejects when `signal` fires first). */
  async waitForQueueEmpty(signal?: AbortSignal): Promise<void> {
    if (this.queueDepth === 0) return;
    if (this.stopped) throw new StrataError("cancelled", `The upload queue of timeline ${this.opts.timelineId} is stopped with ${this.queueDepth} operation(s) left`);
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(new StrataError("cancelled", `Waiting for the upload queue of timeline ${this.opts.timelineId} was cancelled`));
      signal?.addEventListener("abort", onAbort, { once: true });
      this.idleWaiters.push({
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        reject: (e) => {
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
      });
    });
  }

  /** Stops the queue: in-flight operations are aborted, the rest dropped (rebuilt at the next start). */
  async shutdown(): Promise<void> {
    this.stopped = true;
    this.task?.cancel();
    await this.task?.done;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w.reject(new StrataError("cancelled", `The upload queue of timeline ${this.opts.timelineId} was shut down with ${this.queueDepth} operation(s) left`));
    this.unregisterQueueGauge?.();
    this.unregisterQueueGauge = undefined;
  }

  private push(op: Op): void {
    this.pending.push(op);
    this.wake?.();
  }

  // ------------------------------------------------------------ execution

  private async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      this.launch(signal);
      if (this.queueDepth === 0) {
        const waiters = this.idleWaiters;
        this.idleWaiters = [];
        for (const w of waiters) w.resolve();
      }
      await new Promise<void>((resolve) => {
        const done = () => {
          signal.removeEventListener("abort", done);
          this.wake = undefined;
          resolve();
        };
        this.wake = done;
        signal.addEventListener("abort", done, { once: true });
      });
    }
    // Wait for aborted operations to settle so nothing outlives the task.
    while (this.inflight.size > 0) await new Promise<void>((r) => setTimeout(r, 10));
  }

  /** Starts whatever the ordering rules allow (see the header). */
  private launch(signal: AbortSignal): void {
    const limit = this.opts.uploadConcurrency ?? DEFAULT_UPLOAD_CONCURRENCY;
    for (;;) {
      const head = this.pending[0];
      if (head === undefined) return;
      const barrierRunning = [...this.inflight].some((o) => o.kind !== "layer");
      if (head.kind === "layer") {
        if (barrierRunning || this.inflight.size >= limit) return;
      } else {
        if (this.inflight.size > 0) return;
        // Collapse consecutive index uploads into the last one.
        if (head.kind === "index" && this.pending[1]?.kind === "index") {
          this.pending.shift();
          continue;
        }
      }
      this.pending.shift();
      this.inflight.add(head);
      void this.execute(head, signal).finally(() => {
        this.inflight.delete(head);
        this.wake?.();
      });
      if (head.kind !== "layer") return;
    }
  }

  private async execute(op: Op, signal: AbortSignal): Promise<void> {
    const base = this.opts.retryBaseMs ?? DEFAULT_RETRY_BASE_MS;
    const max = this.opts.retryMaxMs ?? DEFAULT_RETRY_MAX_MS;
    const random = this.opts.random ?? Math.random;
    for (let attempt = 1; !signal.aborted; attempt++) {
      try {
        await this.executeOnce(op, signal);
        this.opts.metrics?.operations.labels(op.kind).inc();
        return;
      } catch (e) {
        if (signal.aborted) return;
        this.stats.failedAttempts++;
        this.opts.metrics?.failures.labels(op.kind).inc();
        const c = Math.min(max, base * 2 ** Math.min(attempt - 1, 30));
        const waitMs = Math.round(c / 2 + (random() * c) / 2);
        this.log.warn({ op: describeOp(op), attempt, retry_in_ms: waitMs, ...errorFields(e) }, "remote operation failed; will retry");
        try {
          await sleep(waitMs, signal);
        } catch {
          return;
        }
      }
    }
  }

  private async executeOnce(op: Op, signal: AbortSignal): Promise<void> {
    const { storage, tenantId, timelineId } = this.opts;
    switch (op.kind) {
      case "layer": {
        const rec = op.rec;
        if (rec.abandoned) return;
        const path = join(this.opts.localDir, rec.name);
        let size: number;
        try {
          size = (await stat(path)).size;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === "ENOENT" && this.projected.get(rec.name) !== rec) {
            // Removed locally and remotely before it was uploaded: nothing to do; indexes that named it are superseded.
            rec.abandoned = true;
            return;
          }
          throw e;
        }
        const crc = await fileCrc32c(path, signal);
        await storage.upload(remoteLayerPath(tenantId, timelineId, rec.name, rec.generation), () => createReadStream(path), { sizeBytes: size, signal });
        rec.sizeBytes = size;
        rec.checksumCrc32c = crcHex(crc);
        rec.uploaded = true;
        this.stats.layersUploaded++;
        this.stats.uploadedBytes += size;
        this.opts.metrics?.uploadedBytes.inc(size);
        const doomed = this.unlinkAfter.get(rec.name);
        if (doomed !== undefined) {
          this.unlinkAfter.delete(rec.name);
          await unlink(doomed).catch(() => undefined);
        }
        return;
      }
      case "index": {
        const layers = new Map<string, IndexLayerMeta>();
        for (const [name, rec] of op.layers) {
          if (!rec.uploaded || rec.checksumCrc32c === undefined) {
            if (rec.abandoned && this.pending.some((o) => o.kind === "index")) return; // a later index supersedes this one
            throw new StrataError("internal", `index upload reached the head of the queue before layer ${name} was uploaded`);
          }
          layers.set(name, { fileSizeBytes: rec.sizeBytes, generation: rec.generation, checksumCrc32c: rec.checksumCrc32c });
        }
        const ix: IndexPart = { version: INDEX_PART_VERSION, generation: this.generation, metadata: op.meta, layers };
        const bytes = Buffer.from(formatIndexPart(ix), "utf8");
        await storage.upload(remoteIndexPath(tenantId, timelineId, this.generation), bytes, { signal });
        this.durable = layers;
        this.stats.indexesUploaded++;
        this.opts.metrics?.uploadedBytes.inc(bytes.length);
        if (op.meta.diskConsistentLsn > this._remoteConsistentLsn) this._remoteConsistentLsn = op.meta.diskConsistentLsn;
        this.log.debug({ remote_consistent_lsn: formatLsn(this._remoteConsistentLsn), layers: layers.size }, "index uploaded");
        return;
      }
      case "delete": {
        if (await this.newerGenerationExists(signal)) {
          this.stats.skippedDeletions += op.objects.length;
          return;
        }
        const paths = op.objects.filter((o) => o.generation <= this.generation).map((o) => remoteLayerPath(tenantId, timelineId, o.name, o.generation));
        await storage.deleteMany(paths, { signal });
        this.stats.deletions += paths.length;
        return;
      }
    }
  }

  private async newerGenerationExists(signal: AbortSignal): Promise<boolean> {
    if (this.stale) return true;
    const names = await listTimelineObjects(this.opts.storage, this.opts.tenantId, this.opts.timelineId, signal);
    const newer = names.map(parseRemoteObjectName).find((p) => p?.kind === "index" && p.generation > this.generation);
    if (newer !== undefined) {
      this.stale = true;
      this.log.warn({ newer_generation: newer.generation }, "an index of a newer generation exists: this attachment is stale, remote deletions are skipped");
    }
    return this.stale;
  }
}

function describeOp(op: Op): string {
  switch (op.kind) {
    case "layer":
      return `upload layer ${op.rec.name}`;
    case "index":
      return `upload index at ${formatLsn(op.meta.diskConsistentLsn)}`;
    case "delete":
      return `delete ${op.objects.length} layer(s)`;
  }
}

async function fileCrc32c(path: string, signal: AbortSignal): Promise<number> {
  let crc = 0;
  for await (const chunk of createReadStream(path, { signal })) crc = crc32c(chunk as Buffer, crc);
  return crc;
}
