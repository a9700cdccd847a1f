/**
 * A timeline: one branch of WAL history of a tenant, stored as layers.
 *
 * Place in the data flow (DESIGN §1, §4):
 *
 *   WAL receiver -> WalIngest -> Timeline.put / finishRecord  (write path)
 *                                   |  open in-memory layer -> frozen -> flush task -> delta file
 *   page service -> Timeline.getPage / getValue               (read path, getpage.ts)
 *
 * On disk: `tenants/<tenant>/timelines/<timeline>/` holds the `metadata`
 * file (metadata.ts) and the layer files, named after their rectangles, so
 * the directory listing *is* the layer map. `*.tmp` files are leftovers of
 * interrupted writes and are removed at load, as are layer files above
 * disk_consistent_lsn (a flush that wrote its file but crashed before the
 * metadata said so: its WAL is ingested again and would collide).
 *
 * LSNs (DESIGN §2):
 *   - last_record_lsn: end of the last record ingested; readers wait for it
 *     (`waitForLsn`, bounded and cancellable);
 *   - disk_consistent_lsn: every version at or below it is in a local layer
 *     file. Advanced only after the delta file is durable (the layer writer
 *     fsyncs the file and the directory) *and* the metadata saying so is
 *     durable. After a crash, ingest resumes from it.
 *   Versions are stored at their record's end LSN; a layer frozen at
 *   last_record_lsn L covers [start, L + 1) and the next one starts at L + 1.
 *
 * Write path invariants: puts arrive in LSN order, every put of a record has
 * an LSN above last_record_lsn until `finishRecord(endLsn)` publishes it.
 * WAL ingest's fast path puts straight into the open in-memory layer
 * (`fastIngestTarget`), which the timeline hands out only when it could have
 * taken the same puts through `put` without waiting.
 * The open layer is frozen at the checkpoint distance (checked when a record
 * finishes) or after the checkpoint timeout (checked by the flush task, and
 * only between records). Frozen layers are flushed oldest first by one flush
 * task (TaskManager kind layer_flush), or synchronously by `checkpoint()`;
 * the file is written on the flush worker thread (layers/flush_worker.ts)
 * while ingest goes on here, and the timeline advances disk_consistent_lsn
 * once the worker reports the file durable. Flushing is pipelined: the next
 * layer's file is written while the metadata recording the previous one is
 * made durable; a layer replaces its frozen in-memory self in the layer map
 * only once that metadata is (flushFrozenNow).
 *
 * Bulk ingest: while WAL arrives faster than BULK_INGEST_BYTES_PER_SEC
 * (catch-up after a restart, a data load, a benchmark), layers are frozen
 * early, at BULK_LAYER_BYTES. The flush of each runs on the worker beside the
 * ingest of the next, so when the burst ends at most a small layer (~0.1 s
 * of flush) is left to write and disk_consistent_lsn follows the burst
 * closely, instead of a checkpoint distance of WAL waiting to be flushed.
 * The pace is measured over the last BULK_PROBE_BYTES put in the open layer
 * (a layer opened during a slow phase still qualifies once WAL speeds up).
 * The cost is more level-0 layers during bursts, each still tens of MiB:
 * layers are frozen early only while fewer than the tenant's
 * compactionThreshold level-0 layers exist (flushed or frozen), so reads
 * visit at most that many small ones before compaction merges them (it
 * merges bytes, not files: the same work for smaller layers), and a long
 * burst goes on with full-size layers. WAL at streaming pace never
 * triggers it.
 * If more than MAX_FROZEN_LAYERS wait, `finishRecord` callers should await
 * `flushBackpressure()` so memory stays bounded when disks are slow.
 *
 * Layers retired from the layer map (flushed in-memory layers, compacted
 * files) may still be read by a read that found them before; they are
 * closed (ephemeral files deleted, file handles released) only when no read
 * of this timeline is in flight.
 *
 * States: active (serving), broken (metadata damaged, or a flush failed: the
 * reason is kept and reported; reads and ingest refuse), stopping/stopped.
 *
 * Remote storage (remote/timeline_remote.ts), when the tenant has it: the
 * layer map also holds remote-only layers of the durable index (downloaded
 * on first read, layers/residence.ts); every flush, compaction, GC and
 * metadata change is reported to the remote timeline client's queue, and a
 * local file whose upload is still queued is unlinked only after it.
 */
import { mkdir, readdir, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { assert, StrataError } from "../lib/errors.js";
import type { TenantId, TimelineId } from "../lib/id.js";
import { formatLsn, INVALID_LSN, lsnAlign, lsnMin, type Lsn } from "../lib/lsn.js";
import type { RequestContext, TaskManager } from "../lib/tasks.js";
import type { WalRedoPool } from "../walredo/pool.js";
import { parseControlFile } from "../formats/pg_control.js";
import { CONTROLFILE_KEY, formatKey, KEY_END, KEY_MIN, type Key } from "./key.js";
import { fsyncDir } from "./layers/layer_file.js";
import { readValue, readPage } from "./getpage.js";
import type { TenantConfig } from "./config.js";
import type { DatadirPut, DatadirReader } from "./datadir.js";
import type { FastDatadirWriter, FastIngestTarget } from "./walingest.js";
import { prewarmFlushWorker } from "./layers/flush_worker.js";
import type { WrittenLayer } from "./layers/delta_layer.js";
import { InMemoryLayer } from "./layers/inmemory_layer.js";
import type { Layer } from "./layers/layer.js";
import { PersistentLayer } from "./layers/layer.js";
import { LayerMap } from "./layers/layer_map.js";
import { isTempFileName, tryParseLayerFileName, type LayerDesc } from "./layers/layer_name.js";
import { resolveInterruptedCompaction } from "./compaction.js";
import { LsnTimeHistory } from "./gc.js";
import type { IndexPageCache } from "./layers/page_cache.js";
import { collectReconstructData, type ReconstructData } from "./layers/reconstruct.js";
import type { Value, WalValue } from "./layers/value.js";
import { METADATA_FILE_NAME, readMetadata, writeMetadata, type TimelineMetadata } from "./metadata.js";
import type { PageserverMetrics, TimelineGaugeSource } from "./metrics.js";
import { runWithReadContext } from "./layers/residence.js";
import { TimelineRemote, type TimelineRemoteFactory } from "./remote/timeline_remote.js";
import type { MaterializedPageCache } from "./page_cache.js";

export type TimelineState = "active" | "broken" | "stopping" | "stopped";

/** Frozen layers allowed to wait for flushing before ingest is held back (memory and re-ingest bound). */
export const MAX_FROZEN_LAYERS = 4;
/** LSNs up to here are exact as JavaScript numbers. */
const MAX_EXACT_LSN = BigInt(Number.MAX_SAFE_INTEGER);
/** Layer size during bulk ingest (module comment): ~0.1 s of flush, so a burst's tail is short, and not a small file. */
export const BULK_LAYER_BYTES = 32 * 1024 * 1024;
/** Bulk pace is judged over this much of the open layer's growth: a few hundred ms of bulk WAL, one clock read per step. */
const BULK_PROBE_BYTES = 8 * 1024 * 1024;
/**
 * WAL filling the open layer at least this fast is bulk ingest: a busy OLTP
 * primary writes a few MB/s, so only catch-up and loads reach it.
 */
export const BULK_INGEST_BYTES_PER_SEC = 16 * 1024 * 1024;
/**
 * finishRecord reads the clock for the (time, LSN) history (gc.ts) once per
 * this many records, the flush task once per tick: a clock read costs ~150 ns
 * on the test VM (kvm-clock), a few percent of ingest when done per record,
 * while the history keeps at most one sample a second anyway.
 */
const LSN_TIME_SAMPLE_RECORDS = 256;
/** The flush task wakes at least this often to check the checkpoint timeout. */
const FLUSH_TASK_TICK_MS = 1_000;

/** What a timeline needs from its tenant and the process. */
export interface TimelineDeps {
  readonly tenantId: TenantId;
  readonly conf: () => TenantConfig;
  readonly tasks: TaskManager;
  readonly log: Logger;
  readonly metrics: PageserverMetrics;
  readonly pageCache: MaterializedPageCache;
  readonly indexCache?: IndexPageCache;
  /** The tenant's redo pool (created lazily, with the cluster's checksum setting). */
  readonly redoPool: (settings: { dataChecksums: boolean }) => WalRedoPool;
  /** The tenant's remote storage, when configured. */
  readonly remote?: TimelineRemoteFactory;
}

export interface CreateTimelineOptions {
  /** Branch: the parent timeline and the branch point (a record boundary at or below its last_record_lsn). */
  readonly ancestor?: { timeline: Timeline; lsn: Lsn; prevRecordLsn?: Lsn };
  /** Root timeline: where its WAL starts (import sets it; the initdb/checkpoint LSN). */
  readonly startLsn?: Lsn;
  readonly prevRecordLsn?: Lsn;
  readonly pgVersion?: number;
}

/** One version set for a key collected across the timeline and its ancestors. */
export interface CollectedVersions {
  readonly key: Key;
  readonly lsn: Lsn;
  readonly image?: { readonly lsn: Lsn; readonly bytes: Uint8Array };
  /** Oldest first, ancestors' records before ours. */
  readonly records: ReadonlyArray<{ readonly lsn: Lsn; readonly value: WalValue }>;
  /** False when no layer of any timeline in the chain holds a version (the key does not exist at lsn). */
  readonly found: boolean;
  readonly layersVisited: number;
}

export interface LayerInfo {
  readonly fileName: string;
  readonly kind: "delta" | "image";
  readonly lsnStart: string;
  readonly lsnEnd: string;
  readonly sizeBytes: number;
}

interface FrozenInfo {
  readonly lastRecordLsn: Lsn;
  readonly prevRecordLsn: Lsn | undefined;
}

/** A frozen layer whose delta file is durable, waiting for the metadata that records it (flushFrozenNow). */
interface FlushedLayer {
  readonly layer: InMemoryLayer;
  readonly info: FrozenInfo;
  readonly written: WrittenLayer;
  /** process.hrtime.bigint() when its flush started (the flush-duration metric). */
  readonly startedNs: bigint;
}

export class Timeline implements DatadirReader, FastDatadirWriter {
  state: TimelineState = "active";
  brokenReason: string | undefined;
  readonly layers = new LayerMap();
  readonly log: Logger;

  private meta: TimelineMetadata;
  private _lastRecordLsn: Lsn;
  private _prevRecordLsn: Lsn | undefined;
  private openLayer: InMemoryLayer | undefined;
  private openLayerSinceMs = 0;
  private freezeRequested = false;
  /** Records finished since the last (time, LSN) sample (LSN_TIME_SAMPLE_RECORDS). */
  private recordsSinceTimeSample = LSN_TIME_SAMPLE_RECORDS - 1;
  /** Size of the open layer at which its WAL pace is next checked (bulk ingest, module comment). */
  private bulkProbeBytes = BULK_LAYER_BYTES;
  /** The open layer's size and the time at the previous pace check (or its creation). */
  private bulkProbeFromBytes = 0;
  private bulkProbeFromMs = 0;
  private readonly frozen = new Map<InMemoryLayer, FrozenInfo>();
  private readonly layerSizes = new Map<string, number>();
  private waiters: Array<{ lsn: Lsn; resolve: () => void }> = [];
  private flushWake: (() => void) | undefined;
  private flushing: Promise<void> = Promise.resolve();
  private activeReads = 0;
  private retired: Array<InMemoryLayer | PersistentLayer> = [];
  /** (time, last_record_lsn) samples for GC's PITR cutoff (gc.ts), in memory only. */
  readonly lsnTimeHistory = new LsnTimeHistory();
  /** Highest commit LSN a safekeeper reported (for lag metrics). */
  remoteCommitLsn: Lsn = INVALID_LSN;
  /** Remote storage of this timeline (upload queue, residence), when the tenant has it. */
  remote: TimelineRemote | undefined;

  /** disk_consistent_lsn of the last durable remote index (0/0 without remote storage). */
  get remoteConsistentLsn(): Lsn {
    return this.remote?.remoteConsistentLsn ?? INVALID_LSN;
  }
  /**
   * DatadirReader.get: the value of `key` as of `lsn` (reconstructed through
   * redo when WAL records are stored for it), or undefined when no version
   * exists. Waits (bounded) for ingest to reach `lsn`.
   */
  async get(key: Key, lsn: Lsn, ctx: RequestContext): Promise<Uint8Array | undefined> {
    return runWithReadContext(ctx, () => readValue(this, key, lsn, ctx));
  }

  /**
   * A relation or SLRU page as of `lsn` (8 KiB), an all-zero page for a
   * block that has no version (datadir.ts: unwritten blocks below the size
   * are zeros). Existence checks are the caller's (page service: nblocks).
   */
  async getPage(key: Key, lsn: Lsn, ctx: RequestContext): Promise<Uint8Array> {
    return runWithReadContext(ctx, () => readPage(this, key, lsn, ctx));
  }

  /** Data checksums of the cluster, once known (from pg_control). */
  private dataChecksums: boolean | undefined;

  private constructor(
    readonly deps: TimelineDeps,
    readonly timelineId: TimelineId,
    readonly dir: string,
    meta: TimelineMetadata,
    readonly ancestor: Timeline | undefined,
  ) {
    this.meta = meta;
    this._lastRecordLsn = meta.diskConsistentLsn;
    this._prevRecordLsn = meta.prevRecordLsn;
    this.log = deps.log.child({ tenant_id: deps.tenantId, timeline_id: timelineId });
  }

  get tenantId(): TenantId {
    return this.deps.tenantId;
  }
  get lastRecordLsn(): Lsn {
    return this._lastRecordLsn;
  }
  get prevRecordLsn(): Lsn | undefined {
    return this._prevRecordLsn;
  }
  get diskConsistentLsn(): Lsn {
    return this.meta.diskConsistentLsn;
  }
  get ancestorLsn(): Lsn {
    return this.meta.ancestorLsn;
  }
  get ancestorTimelineId(): TimelineId | undefined {
    return this.meta.ancestorTimelineId;
  }
  get latestGcCutoffLsn(): Lsn {
    return this.meta.latestGcCutoffLsn;
  }
  get initdbLsn(): Lsn {
    return this.meta.initdbLsn;
  }
  get pgVersion(): number {
    return this.meta.pgVersion;
  }
  get metadata(): TimelineMetadata {
    return this.meta;
  }

  // ------------------------------------------------------------ lifecycle

  /**
   * Creates the timeline directory and its metadata (durably) and returns the
   * timeline. A branch is O(1): no data is copied; reads at or below the
   * branch point go to the ancestor.
   */
  static async create(deps: TimelineDeps, dir: string, timelineId: TimelineId, opts: CreateTimelineOptions): Promise<Timeline> {
    let meta: TimelineMetadata;
    if (opts.ancestor !== undefined) {
      const a = opts.ancestor.timeline;
      const at = opts.ancestor.lsn;
      if (a.state !== "active") throw new StrataError("invalid_argument", `Cannot branch from timeline ${a.timelineId}: it is ${a.state}`);
      if (at > a.lastRecordLsn) {
        throw new StrataError("invalid_argument", `Cannot branch from timeline ${a.timelineId} at ${formatLsn(at)}: its last record ends at ${formatLsn(a.lastRecordLsn)}`);
      }
      if (at < a.latestGcCutoffLsn) {
        throw new StrataError("invalid_argument", `Cannot branch from timeline ${a.timelineId} at ${formatLsn(at)}: below its GC cutoff ${formatLsn(a.latestGcCutoffLsn)}`);
      }
      if (a.ancestor !== undefined && at < a.ancestorLsn) {
        throw new StrataError("invalid_argument", `Cannot branch from timeline ${a.timelineId} at ${formatLsn(at)}: below its own branch point ${formatLsn(a.ancestorLsn)}`);
      }
      const prev = opts.ancestor.prevRecordLsn ?? (at === a.lastRecordLsn ? a.prevRecordLsn : undefined);
      meta = {
        diskConsistentLsn: at,
        prevRecordLsn: prev,
        ancestorTimelineId: a.timelineId,
        ancestorLsn: at,
        latestGcCutoffLsn: at,
        initdbLsn: a.initdbLsn,
        pgVersion: a.pgVersion,
      };
    } else {
      const start = opts.startLsn ?? INVALID_LSN;
      meta = {
        diskConsistentLsn: start,
        prevRecordLsn: opts.prevRecordLsn,
        ancestorTimelineId: undefined,
        ancestorLsn: INVALID_LSN,
        latestGcCutoffLsn: INVALID_LSN,
        initdbLsn: start,
        pgVersion: opts.pgVersion ?? 15,
      };
    }
    try {
      await mkdir(dir, { recursive: false });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code === "EEXIST" ? "invalid_argument" : "io_error";
      throw new StrataError(code, `Cannot create timeline directory ${dir}: ${(e as Error).message}`, { cause: e });
    }
    await writeMetadata(dir, meta);
    await fsyncDir(join(dir, ".."));
    const tl = new Timeline(deps, timelineId, dir, meta, opts.ancestor?.timeline);
    if (deps.remote !== undefined) {
      tl.remote = new TimelineRemote(deps.remote, tl, deps, tl.log);
      tl.remote.metadataChanged(meta);
    }
    return tl;
  }

  /**
   * Loads a timeline from its directory: metadata, then the layer map from the
   * listing (removing temp files and layers above disk_consistent_lsn).
   * Failures come back as a Broken timeline with the reason, never as a throw,
   * so one damaged timeline cannot stop the others from loading.
   */
  static async load(deps: TimelineDeps, dir: string, timelineId: TimelineId, resolveAncestor: (id: TimelineId) => Timeline | undefined): Promise<Timeline> {
    let meta: TimelineMetadata;
    try {
      meta = await readMetadata(dir);
    } catch (e) {
      return Timeline.broken(deps, dir, timelineId, `cannot load metadata: ${(e as Error).message}`);
    }
    let ancestor: Timeline | undefined;
    if (meta.ancestorTimelineId !== undefined) {
      ancestor = resolveAncestor(meta.ancestorTimelineId);
      if (ancestor === undefined) return Timeline.broken(deps, dir, timelineId, `ancestor timeline ${meta.ancestorTimelineId} is missing`, meta);
    }
    const tl = new Timeline(deps, timelineId, dir, meta, ancestor);
    if (deps.remote !== undefined) tl.remote = new TimelineRemote(deps.remote, tl, deps, tl.log);
    try {
      await tl.loadLayers();
    } catch (e) {
      tl.setBroken(`cannot load layers: ${(e as Error).message}`);
    }
    if (ancestor !== undefined && ancestor.state === "broken") tl.setBroken(`ancestor timeline ${ancestor.timelineId} is broken`);
    return tl;
  }

  /** A placeholder for a timeline that cannot be loaded (reported by the API, refuses all work). */
  static broken(deps: TimelineDeps, dir: string, timelineId: TimelineId, reason: string, meta?: TimelineMetadata): Timeline {
    const tl = new Timeline(
      deps,
      timelineId,
      dir,
      meta ?? { diskConsistentLsn: INVALID_LSN, prevRecordLsn: undefined, ancestorTimelineId: undefined, ancestorLsn: INVALID_LSN, latestGcCutoffLsn: INVALID_LSN, initdbLsn: INVALID_LSN, pgVersion: 15 },
      undefined,
    );
    tl.setBroken(reason);
    return tl;
  }

  private async loadLayers(): Promise<void> {
    const names = await readdir(this.dir);
    const disk = this.meta.diskConsistentLsn;
    const found: Array<{ name: string; desc: LayerDesc }> = [];
    for (const name of names) {
      if (name === METADATA_FILE_NAME) continue;
      const path = join(this.dir, name);
      if (isTempFileName(name)) {
        await unlink(path);
        this.log.info({ file: name }, "removed temporary file left by an interrupted write");
        continue;
      }
      const desc = tryParseLayerFileName(name);
      if (desc === undefined) {
        this.log.warn({ file: name }, "ignoring unknown file in timeline directory");
        continue;
      }
      // Versions above disk_consistent_lsn are re-ingested from WAL; a file holding them is a flush
      // that did not complete (its metadata update never happened).
      const future = desc.kind === "delta" ? desc.lsnRange.end > disk + 1n : desc.lsnRange.start > disk;
      if (future) {
        await unlink(path);
        this.log.warn({ file: name, disk_consistent_lsn: formatLsn(disk) }, "removed layer file above disk_consistent_lsn");
        continue;
      }
      found.push({ name, desc });
    }
    // Layers of the durable remote index that are not on local disk: remote-only, downloaded on demand.
    const remoteOnly = new Set<string>();
    for (const r of this.remote?.remoteOnlyLayers(new Set(found.map((f) => f.name))) ?? []) {
      remoteOnly.add(r.name);
      found.push({ name: r.name, desc: r.desc });
      this.layerSizes.set(r.name, r.sizeBytes);
    }
    // A crash inside level-0 compaction leaves inputs and (some) outputs side by side.
    const doomed = new Set(resolveInterruptedCompaction(found));
    const loaded: Array<{ layer: PersistentLayer; sizeBytes: number }> = [];
    for (const { name, desc } of found) {
      if (remoteOnly.has(name)) {
        if (doomed.has(name)) {
          this.layerSizes.delete(name);
          continue;
        }
        const layer = new PersistentLayer(this.dir, desc, this.deps.indexCache === undefined ? {} : { cache: this.deps.indexCache });
        this.remote!.adoptLayer(layer, this.layerSizes.get(name) ?? 0, false);
        this.layers.insertHistoric(layer);
        loaded.push({ layer, sizeBytes: this.layerSizes.get(name) ?? 0 });
        continue;
      }
      if (doomed.has(name)) {
        await unlink(join(this.dir, name));
        this.log.warn({ file: name }, "removed layer file left by an interrupted compaction");
        continue;
      }
      const layer = new PersistentLayer(this.dir, desc, this.deps.indexCache === undefined ? {} : { cache: this.deps.indexCache });
      this.layers.insertHistoric(layer);
      this.layerSizes.set(layer.fileName, (await stat(join(this.dir, name))).size);
      this.remote?.adoptLayer(layer, this.layerSizes.get(layer.fileName) ?? 0, true);
      loaded.push({ layer, sizeBytes: this.layerSizes.get(layer.fileName) ?? 0 });
    }
    this.remote?.reconcile(loaded, this.meta);
  }

  setBroken(reason: string): void {
    if (this.state === "broken") return;
    this.state = "broken";
    this.brokenReason = reason;
    this.log.error({ reason }, "timeline is broken");
    for (const w of this.waiters) w.resolve();
    this.waiters = [];
  }

  /** Starts the flush task. */
  activate(): void {
    if (this.state !== "active") return;
    this.remote?.start();
    this.deps.tasks.spawn("layer_flush", { tenantId: this.tenantId, timelineId: this.timelineId, name: `flush ${this.timelineId}` }, (signal) => this.flushLoop(signal));
  }

  /**
   * Stops the timeline: optionally flushes the open layer (graceful shutdown),
   * cancels its tasks and releases in-memory layers. Idempotent.
   */
  async shutdown(opts: { flush?: boolean } = {}): Promise<void> {
    if (this.state === "stopped") return;
    if (opts.flush === true && this.state === "active") {
      try {
        await this.checkpoint();
      } catch (e) {
        this.log.warn({ err: (e as Error).message }, "flush at shutdown failed; WAL above disk_consistent_lsn is ingested again at start-up");
      }
    }
    if (this.state !== "broken") this.state = "stopping";
    for (const w of this.waiters) w.resolve();
    this.waiters = [];
    await this.deps.tasks.shutdown({ tenantId: this.tenantId, timelineId: this.timelineId });
    await this.remote?.shutdown();
    await this.flushing.catch(() => undefined);
    this.openLayer?.close();
    this.openLayer = undefined;
    for (const f of this.frozen.keys()) f.close();
    this.frozen.clear();
    for (const l of this.layers.historicLayers()) if (l instanceof PersistentLayer) await l.close();
    await this.retiredClosed.catch(() => undefined);
    for (const l of this.retired) await closeLayer(l);
    this.retired = [];
    this.deps.pageCache.dropTimeline(this.timelineId);
    if (this.state !== "broken") this.state = "stopped";
  }

  private checkActive(what: string): void {
    if (this.state === "active") return;
    if (this.state === "broken") throw new StrataError("unavailable", `Timeline ${this.timelineId} is broken (${this.brokenReason}); cannot ${what}`);
    throw new StrataError("cancelled", `Timeline ${this.timelineId} is ${this.state}; cannot ${what}`);
  }

  // ------------------------------------------------------------ write path

  /**
   * DatadirWriter.put: stores the versions of one WAL record (or import step),
   * all at the record's version LSN (above last_record_lsn). Waits first when
   * too many frozen layers are queued for flushing (back-pressure).
   */
  async put(entries: ReadonlyArray<DatadirPut>): Promise<void> {
    if (this.needsBackpressure) await this.flushBackpressure();
    for (const e of entries) this.putValue(e.key, e.lsn, e.value);
  }

  /**
   * WalIngest's fast path (FastDatadirWriter): the open in-memory layer, for
   * the synchronous puts of one record at `lsn`, when they may go in right
   * now — the timeline is active, `lsn` is above last_record_lsn and no
   * back-pressure applies. Otherwise undefined, and ingest goes through
   * `put`, which waits or reports the error.
   */
  fastIngestTarget(lsn: Lsn): FastIngestTarget | undefined {
    if (this.state !== "active" || lsn <= this._lastRecordLsn || this.needsBackpressure) return undefined;
    return this.openLayer ?? this.createOpenLayer();
  }

  private createOpenLayer(): InMemoryLayer {
    const layer = InMemoryLayer.create({ dir: this.dir, startLsn: (this._lastRecordLsn + 1n) as Lsn });
    prewarmFlushWorker();
    this.openLayer = layer;
    this.layers.setOpenLayer(layer);
    this.openLayerSinceMs = Date.now();
    this.bulkProbeBytes = BULK_LAYER_BYTES;
    this.bulkProbeFromBytes = 0;
    this.bulkProbeFromMs = this.openLayerSinceMs;
    return layer;
  }

  /** Stores one version at `lsn` (above last_record_lsn). */
  putValue(key: Key, lsn: Lsn, value: Value): void {
    this.checkActive("ingest");
    if (lsn <= this._lastRecordLsn) {
      throw new StrataError("invalid_argument", `Timeline ${this.timelineId}: put of ${formatKey(key)} at ${formatLsn(lsn)} is not above last_record_lsn ${formatLsn(this._lastRecordLsn)}`);
    }
    (this.openLayer ?? this.createOpenLayer()).put(key, lsn, value);
  }

  /**
   * DatadirWriter.finishRecord: publishes a record. last_record_lsn becomes its
   * MAXALIGNed end (the version LSN of its puts and where the next record
   * starts), so readers waiting for it wake; `prevRecordLsn` is the record's
   * start (the next record's xl_prev). Freezes the open layer at the
   * checkpoint distance.
   */
  finishRecord(endLsn: Lsn, prevRecordLsn?: Lsn): void {
    this.checkActive("ingest");
    // (ingest passes aligned LSNs: spare the bigint arithmetic then)
    const end = Number(endLsn) % 8 === 0 && endLsn <= MAX_EXACT_LSN ? endLsn : lsnAlign(endLsn, 8);
    if (end < this._lastRecordLsn) {
      throw new StrataError("invalid_argument", `Timeline ${this.timelineId}: record end ${formatLsn(end)} is below last_record_lsn ${formatLsn(this._lastRecordLsn)}`);
    }
    const put = this.openLayer?.lastPutLsn;
    if (put !== undefined && put > end) {
      throw new StrataError("invalid_argument", `Timeline ${this.timelineId}: record end ${formatLsn(end)} is below a version put at ${formatLsn(put)}`);
    }
    this._lastRecordLsn = end;
    this._prevRecordLsn = prevRecordLsn;
    if (++this.recordsSinceTimeSample >= LSN_TIME_SAMPLE_RECORDS) {
      this.recordsSinceTimeSample = 0;
      this.lsnTimeHistory.record(Date.now(), end);
    }
    this.wakeWaiters();
    const open = this.openLayer;
    if (open === undefined) return;
    if (this.freezeRequested) {
      this.freezeOpenLayer();
      return;
    }
    const size = open.sizeBytes;
    if (size >= this.deps.conf().checkpointDistanceBytes) this.freezeOpenLayer();
    else if (size >= this.bulkProbeBytes) this.bulkProbe(size);
  }

  /** Level-0 layers: flushed ones (deltas over all keys) and frozen in-memory ones. */
  private level0Count(): number {
    let n = this.frozen.size;
    for (const l of this.layers.historicLayers()) {
      if (l.desc.kind === "delta" && l.desc.keyRange.start === KEY_MIN && l.desc.keyRange.end === KEY_END) n++;
    }
    return n;
  }

  /** Bulk ingest (module comment): freezes the open layer if its last BULK_PROBE_BYTES arrived at bulk pace. */
  private bulkProbe(size: number): void {
    const now = Date.now();
    const elapsedMs = Math.max(1, now - this.bulkProbeFromMs);
    if ((size - this.bulkProbeFromBytes) * 1000 >= BULK_INGEST_BYTES_PER_SEC * elapsedMs && this.level0Count() < this.deps.conf().compactionThreshold) {
      this.freezeOpenLayer();
      return;
    }
    this.bulkProbeFromBytes = size;
    this.bulkProbeFromMs = now;
    this.bulkProbeBytes = size + BULK_PROBE_BYTES;
  }

  /**
   * Sets last_record_lsn without a record (import of a data directory ends at
   * its checkpoint; a branch starts at its branch point). Only forward.
   */
  advanceLastRecordLsn(lsn: Lsn, prevRecordLsn?: Lsn): void {
    this.finishRecord(lsn, prevRecordLsn);
  }

  /** True when ingest should wait (`flushBackpressure`) before going on. */
  get needsBackpressure(): boolean {
    return this.frozen.size > MAX_FROZEN_LAYERS;
  }

  /** Resolves when the number of frozen layers is back under the limit (or the timeline stops). */
  async flushBackpressure(signal?: AbortSignal): Promise<void> {
    while (this.needsBackpressure && this.state === "active") {
      signal?.throwIfAborted();
      // Flush ourselves (serialized with the flush task) rather than wait for it: works with or without the task.
      await this.flushFrozen(signal);
    }
  }

  /** Freezes the open layer at last_record_lsn + 1 (only between records) and wakes the flush task. */
  private freezeOpenLayer(): void {
    const open = this.openLayer;
    if (open === undefined) return;
    const put = open.lastPutLsn;
    if (put !== undefined && put > this._lastRecordLsn) {
      // A record is half ingested: freeze when it finishes.
      this.freezeRequested = true;
      return;
    }
    this.freezeRequested = false;
    if (open.entries === 0) {
      // Nothing to write; the layer map forgets it and the next put opens a new one.
      return;
    }
    open.freeze((this._lastRecordLsn + 1n) as Lsn);
    this.layers.freezeOpenLayer();
    this.frozen.set(open, { lastRecordLsn: this._lastRecordLsn, prevRecordLsn: this._prevRecordLsn });
    this.openLayer = undefined;
    this.flushWake?.();
  }

  /**
   * Freezes the open layer and flushes every frozen layer, then records
   * disk_consistent_lsn = last_record_lsn when nothing is left in memory.
   * What the HTTP checkpoint trigger and graceful shutdown call.
   */
  async checkpoint(signal?: AbortSignal): Promise<void> {
    this.checkActive("flush");
    this.freezeOpenLayer();
    await this.flushFrozen(signal);
    // The flushed in-memory layers are closed (their ephemeral files removed) asynchronously,
    // after the last metadata write; a checkpoint leaves none behind unless reads still hold them.
    await this.retiredClosed.catch(() => undefined);
  }

  private flushFrozen(signal?: AbortSignal): Promise<void> {
    const run = this.flushing.catch(() => undefined).then(() => this.flushFrozenNow(signal));
    this.flushing = run;
    return run;
  }

  /**
   * Flushes every frozen layer, oldest first, as a pipeline of two stages:
   * the delta file of the next layer is written (flush worker) while the
   * metadata recording the previous ones is made durable here. That
   * metadata write costs an fsync, rename and directory fsync, which under
   * ingest's I/O took 100-300 ms on the test VM, longer than writing a
   * 32 MiB layer; run one after the other, the two made the flush fall
   * behind bulk ingest. Publication stays in LSN order: a layer leaves
   * `frozen` for the layer map (and is reported to remote storage) only
   * after the metadata whose disk_consistent_lsn covers it is durable, so
   * nothing (compaction, GC, uploads) treats a layer file as part of the
   * timeline before a restart would keep it; layers whose files finished
   * while a metadata write was running are published together by the next
   * one. A delta file durable ahead of its metadata is what a crash between
   * the two leaves anyway: the load removes it (above disk_consistent_lsn)
   * and its WAL is ingested again.
   */
  private async flushFrozenNow(signal?: AbortSignal): Promise<void> {
    const flushed: FlushedLayer[] = [];
    let publishing = false;
    let publisher: Promise<void> = Promise.resolve();
    let publishError: unknown;
    const publish = async (): Promise<void> => {
      try {
        while (flushed.length > 0) {
          const batch = flushed.splice(0);
          const newest = batch.at(-1)!;
          try {
            await this.persistDiskConsistent(newest.info.lastRecordLsn, newest.info.prevRecordLsn);
          } catch (e) {
            this.setBroken(`flush of in-memory layer at ${formatLsn(batch[0]!.layer.startLsn)} failed: ${(e as Error).message}`);
            throw e;
          }
          for (const f of batch) this.publishFlushed(f);
        }
      } catch (e) {
        publishError ??= e;
      } finally {
        publishing = false; // (synchronously after the last check of `flushed`)
      }
    };
    const started = new Set<InMemoryLayer>();
    for (;;) {
      if (publishError !== undefined) throw publishError as Error;
      let next: [InMemoryLayer, FrozenInfo] | undefined;
      for (const e of this.frozen) {
        if (!started.has(e[0])) {
          next = e;
          break;
        }
      }
      if (next === undefined) {
        if (!publishing) break;
        await publisher; // then look again: a layer frozen meanwhile (checkpoint) is taken by this run
        continue;
      }
      const [layer, info] = next;
      started.add(layer);
      const startedNs = process.hrtime.bigint();
      let written: WrittenLayer;
      try {
        written = await layer.writeDeltaLayerOffThread(this.dir, signal === undefined ? {} : { signal });
      } catch (e) {
        await publisher; // the layers written before this one are still published
        if (e instanceof StrataError && e.code === "cancelled") throw e;
        this.setBroken(`flush of in-memory layer at ${formatLsn(layer.startLsn)} failed: ${(e as Error).message}`);
        throw e;
      }
      flushed.push({ layer, info, written, startedNs });
      if (publishError !== undefined) throw publishError as Error; // (the timeline is broken: no further metadata)
      if (!publishing) {
        publishing = true;
        publisher = publish();
      }
    }
    // Nothing in memory but the open layer: if it is empty too, everything up to last_record_lsn is on disk.
    if (this.frozen.size === 0 && (this.openLayer === undefined || this.openLayer.entries === 0) && this._lastRecordLsn > this.meta.diskConsistentLsn) {
      const openPut = this.openLayer?.lastPutLsn;
      if (openPut === undefined) {
        await this.persistDiskConsistent(this._lastRecordLsn, this._prevRecordLsn);
        this.remote?.metadataChanged(this.meta);
      }
    }
  }

  /** A flushed layer whose metadata is durable: its file replaces it in the layer map (flushFrozenNow). */
  private publishFlushed(f: FlushedLayer): void {
    const { layer, written } = f;
    const persistent = new PersistentLayer(this.dir, written.desc, this.deps.indexCache === undefined ? {} : { cache: this.deps.indexCache });
    this.layers.replaceFrozen(layer, persistent);
    this.layerSizes.set(persistent.fileName, written.header.fileSizeBytes);
    this.frozen.delete(layer);
    this.remote?.layersChanged([{ layer: persistent, sizeBytes: written.header.fileSizeBytes }], [], this.meta);
    this.retire(layer);
    this.deps.metrics.flushes.inc();
    this.deps.metrics.flushSeconds.observe(Number(process.hrtime.bigint() - f.startedNs) / 1e9);
  }

  private async persistDiskConsistent(lsn: Lsn, prev: Lsn | undefined): Promise<void> {
    if (lsn <= this.meta.diskConsistentLsn) return;
    const meta: TimelineMetadata = { ...this.meta, diskConsistentLsn: lsn, prevRecordLsn: prev };
    await writeMetadata(this.dir, meta);
    this.meta = meta;
  }

  /**
   * Durably records where a root timeline's history starts once its
   * bootstrap (import of initdb output or a stopped cluster) is done: the
   * initial LSN of the timeline JSON and the lower bound of backups and
   * branch points. Only for a root that has none yet.
   */
  async setInitdbLsn(lsn: Lsn): Promise<void> {
    if (this.ancestor !== undefined || this.meta.initdbLsn !== INVALID_LSN) {
      throw new StrataError("invalid_argument", `Timeline ${this.timelineId} already has a start LSN (${formatLsn(this.meta.initdbLsn)}) or is a branch`);
    }
    const meta: TimelineMetadata = { ...this.meta, initdbLsn: lsn };
    await writeMetadata(this.dir, meta);
    this.meta = meta;
  }

  /** Durably updates the GC cutoff (GC) — reads below it are refused afterwards. */
  async setGcCutoff(lsn: Lsn): Promise<void> {
    if (lsn <= this.meta.latestGcCutoffLsn) return;
    const meta: TimelineMetadata = { ...this.meta, latestGcCutoffLsn: lsn };
    await writeMetadata(this.dir, meta);
    this.meta = meta;
    this.remote?.metadataChanged(meta);
  }

  private async flushLoop(signal: AbortSignal): Promise<void> {
    while (!signal.aborted && this.state === "active") {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, Math.min(FLUSH_TASK_TICK_MS, this.deps.conf().checkpointTimeoutMs));
        const onAbort = () => done();
        function done() {
          clearTimeout(timer);
          signal.removeEventListener("abort", onAbort);
          resolve();
        }
        this.flushWake = done;
        signal.addEventListener("abort", onAbort, { once: true });
      });
      this.flushWake = undefined;
      if (signal.aborted || this.state !== "active") break;
      if (this.recordsSinceTimeSample > 0) {
        // (records finished since the last sample: an idle timeline adds none)
        this.recordsSinceTimeSample = 0;
        this.lsnTimeHistory.record(Date.now(), this._lastRecordLsn);
      }
      const open = this.openLayer;
      const timedOut = open !== undefined && Date.now() - this.openLayerSinceMs >= this.deps.conf().checkpointTimeoutMs;
      if (timedOut) this.freezeOpenLayer();
      try {
        if (this.frozen.size > 0 || timedOut || (open === undefined && this._lastRecordLsn > this.meta.diskConsistentLsn)) await this.flushFrozen(signal);
      } catch (e) {
        if (signal.aborted) break;
        this.log.error({ err: (e as Error).message }, "layer flush failed");
      }
    }
  }

  // ------------------------------------------------------------ layers (compaction, retirement)

  /** Replaces historic layers in one step (compaction); the removed ones are deleted once unread. */
  replaceHistoricLayers(remove: readonly PersistentLayer[], add: ReadonlyArray<{ layer: PersistentLayer; sizeBytes: number }>): void {
    this.layers.replaceHistoric(remove, add.map((a) => a.layer));
    for (const a of add) this.layerSizes.set(a.layer.fileName, a.sizeBytes);
    for (const r of remove) {
      this.layerSizes.delete(r.fileName);
      this.retire(r, { deleteFile: true });
    }
    this.remote?.layersChanged(add, remove, this.meta);
  }

  /**
   * GC: takes `remove` out of the layer map in one step; their files are
   * deleted (and the directory fsynced) once no read is in flight. Resolves
   * when that has happened, or at once when reads are in flight (the last
   * of them to finish then deletes the files).
   */
  async removeHistoricLayers(remove: readonly PersistentLayer[]): Promise<void> {
    this.replaceHistoricLayers(remove, []);
    await this.retiredClosed;
  }

  private readonly deleteOnClose = new Set<PersistentLayer>();
  /** The latest close of retired layers (GC awaits it). */
  private retiredClosed: Promise<void> = Promise.resolve();

  private retire(layer: InMemoryLayer | PersistentLayer, opts: { deleteFile?: boolean } = {}): void {
    if (opts.deleteFile === true && layer instanceof PersistentLayer) this.deleteOnClose.add(layer);
    this.retired.push(layer);
    if (this.activeReads === 0) this.scheduleCloseRetired();
  }

  private scheduleCloseRetired(): void {
    // Take the list now (shutdown closes whatever is still in `retired`), process after the previous batch.
    const list = this.retired;
    this.retired = [];
    const run = this.retiredClosed.catch(() => undefined).then(() => this.closeRetired(list));
    this.retiredClosed = run;
    void run.catch(() => undefined);
  }

  private async closeRetired(list: Array<InMemoryLayer | PersistentLayer>): Promise<void> {
    let deleted = false;
    for (const l of list) {
      await closeLayer(l);
      if (l instanceof PersistentLayer && this.deleteOnClose.delete(l)) {
        // A file whose upload is still queued is unlinked by the remote client after the upload.
        if (this.remote?.releaseLocalFile(l.fileName, l.path) === true) continue;
        await unlink(l.path).catch(() => undefined);
        deleted = true;
      }
    }
    // Make the deletions durable (a resurrected file after a crash would be harmless but wasteful).
    if (deleted) await fsyncDir(this.dir).catch((e: unknown) => this.log.warn({ err: (e as Error).message }, "fsync of timeline directory after layer deletion failed"));
  }

  private compacting: Promise<unknown> = Promise.resolve();

  /**
   * Runs `fn` after any compaction of this timeline in progress: compaction
   * steps (level-0 merge, image creation) of one timeline never overlap, so
   * two of them cannot write the same layer file name.
   */
  async withCompactionLock<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.compacting.catch(() => undefined).then(fn);
    this.compacting = run;
    return run;
  }

  /** Historic layers with their sizes (HTTP detail, metrics). */
  layerInfos(): LayerInfo[] {
    const out: LayerInfo[] = [];
    for (const l of this.layers.historicLayers()) {
      const name = (l as PersistentLayer).fileName;
      out.push({
        fileName: name,
        kind: l.desc.kind,
        lsnStart: formatLsn(l.desc.lsnRange.start),
        lsnEnd: formatLsn(l.desc.lsnRange.end),
        sizeBytes: this.layerSizes.get(name) ?? 0,
      });
    }
    return out;
  }

  gaugeSource(): TimelineGaugeSource {
    let delta = 0;
    let image = 0;
    let bytes = 0;
    for (const l of this.layers.historicLayers()) {
      if (l.desc.kind === "delta") delta++;
      else image++;
    }
    for (const v of this.layerSizes.values()) bytes += v;
    return {
      tenantId: this.tenantId,
      timelineId: this.timelineId,
      lastRecordLsn: this._lastRecordLsn,
      diskConsistentLsn: this.meta.diskConsistentLsn,
      walLagBytes: this.remoteCommitLsn > this._lastRecordLsn ? Number(this.remoteCommitLsn - this._lastRecordLsn) : 0,
      layerCounts: { delta, image, frozen: this.frozen.size, open: this.openLayer === undefined ? 0 : 1 },
      layerBytes: bytes,
    };
  }

  // ------------------------------------------------------------ read path

  /**
   * Waits until last_record_lsn >= lsn. Bounded by `timeoutMs` (tenant
   * setting by default) and cancellable by `signal`; a broken or stopping
   * timeline fails the wait.
   */
  async waitForLsn(lsn: Lsn, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    if (this._lastRecordLsn >= lsn) return;
    this.checkActive(`wait for ${formatLsn(lsn)}`);
    const timeoutMs = opts.timeoutMs ?? this.deps.conf().waitLsnTimeoutMs;
    const signal = opts.signal;
    signal?.throwIfAborted();
    await new Promise<void>((resolve, reject) => {
      const waiter = { lsn, resolve: () => finish() };
      const timer = setTimeout(() => finish(new StrataError("timeout", `Timed out after ${timeoutMs} ms waiting for WAL at ${formatLsn(lsn)} on timeline ${this.timelineId}; last record ends at ${formatLsn(this._lastRecordLsn)}`)), timeoutMs);
      const onAbort = () => finish(new StrataError("cancelled", `Wait for ${formatLsn(lsn)} cancelled`, { cause: signal?.reason }));
      const finish = (err?: Error) => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.waiters = this.waiters.filter((w) => w !== waiter);
        if (err !== undefined) reject(err);
        else resolve();
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiters.push(waiter);
    });
    if (this._lastRecordLsn < lsn) this.checkActive(`wait for ${formatLsn(lsn)}`);
  }

  private wakeWaiters(): void {
    if (this.waiters.length === 0) return;
    const ready = this.waiters.filter((w) => w.lsn <= this._lastRecordLsn);
    for (const w of ready) w.resolve();
  }

  /** Validates a read LSN: not above last_record_lsn (after waiting), not below the GC cutoff. */
  async prepareRead(lsn: Lsn, ctx?: RequestContext, opts: { timeoutMs?: number } = {}): Promise<void> {
    this.checkActive("read");
    await this.waitForLsn(lsn, { ...(ctx === undefined ? {} : { signal: ctx.signal }), ...opts });
    if (lsn < this.meta.latestGcCutoffLsn) {
      throw new StrataError("invalid_argument", `Read at ${formatLsn(lsn)} on timeline ${this.timelineId} is below the GC cutoff ${formatLsn(this.meta.latestGcCutoffLsn)}: that history is gone`);
    }
    if (this.ancestor !== undefined && lsn < this.meta.ancestorLsn && lsn < this.ancestor.latestGcCutoffLsn) {
      throw new StrataError("invalid_argument", `Read at ${formatLsn(lsn)} is below the ancestor's GC cutoff ${formatLsn(this.ancestor.latestGcCutoffLsn)}`);
    }
  }

  /**
   * Collects the versions of `key` as of `lsn` across this timeline and its
   * ancestors (newest first in layers, returned oldest first). No waiting:
   * callers use prepareRead first.
   */
  async collectVersions(key: Key, lsn: Lsn): Promise<CollectedVersions> {
    return collectAcrossAncestors(this, key, lsn);
  }

  /** This timeline's part of collectVersions (its layer map only), keeping retired layers open meanwhile. */
  async collectLocal(key: Key, lsn: Lsn): Promise<ReconstructData> {
    if (this.state === "broken") throw new StrataError("unavailable", `Timeline ${this.timelineId} is broken (${this.brokenReason})`);
    this.activeReads++;
    try {
      return await collectReconstructData(this.layers, key, lsn);
    } finally {
      this.activeReads--;
      if (this.activeReads === 0 && this.retired.length > 0) this.scheduleCloseRetired();
    }
  }

  /**
   * Runs `fn` on this timeline's own layer map with collectLocal's
   * bookkeeping (retired layers stay open meanwhile): the range reads of a
   * backup (getpage.ts readPageRun, reconstruct.ts collectReconstructDataRange).
   */
  async withLocalRead<T>(fn: (layers: LayerMap) => Promise<T>): Promise<T> {
    if (this.state === "broken") throw new StrataError("unavailable", `Timeline ${this.timelineId} is broken (${this.brokenReason})`);
    this.activeReads++;
    try {
      return await fn(this.layers);
    } finally {
      this.activeReads--;
      if (this.activeReads === 0 && this.retired.length > 0) this.scheduleCloseRetired();
    }
  }

  /** Data checksums of the cluster (read once from the stored pg_control; false if none is stored yet). */
  async clusterHasDataChecksums(): Promise<boolean> {
    if (this.dataChecksums !== undefined) return this.dataChecksums;
    const v = await this.collectVersions(CONTROLFILE_KEY, this._lastRecordLsn);
    if (v.image === undefined) return false;
    this.dataChecksums = parseControlFile(v.image.bytes).dataChecksumVersion !== 0;
    return this.dataChecksums;
  }

  /** The tenant's redo pool with this cluster's checksum setting. */
  async redoPool(): Promise<WalRedoPool> {
    return this.deps.redoPool({ dataChecksums: await this.clusterHasDataChecksums() });
  }
}

async function closeLayer(l: Layer): Promise<void> {
  if (l instanceof InMemoryLayer) l.close();
  else if (l instanceof PersistentLayer) await l.close();
  else assert(false, "unknown layer type");
}

/** Versions of `key` at `lsn` from `start` and, below each branch point, its ancestors (oldest records first). */
async function collectAcrossAncestors(start: Timeline, key: Key, lsn: Lsn): Promise<CollectedVersions> {
  // This timeline's records first, then each ancestor's (older) ones.
  const chunks: Array<ReconstructData["records"]> = [];
  let tl: Timeline = start;
  let at = lsn;
  let visited = 0;
  for (;;) {
    const data = await tl.collectLocal(key, at);
    visited += data.layersVisited.length;
    chunks.push(data.records);
    if (data.stop === "history_end" && tl.ancestor !== undefined) {
      at = lsnMin(tl.ancestorLsn, (data.continueBelowLsn - 1n) as Lsn);
      tl = tl.ancestor;
      continue;
    }
    const records = chunks.reverse().flat();
    const found = data.stop === "image" || data.stop === "will_init" || records.length > 0;
    return { key, lsn, ...(data.image === undefined ? {} : { image: data.image }), records, found, layersVisited: visited };
  }
}
