/**
 * The glue between one Timeline and remote storage: what timeline.ts calls
 * (small hooks) and what it gets back (layer residence, remote_consistent_lsn).
 *
 *   Timeline.load/create -> TimelineRemote (index from the tenant's attach step)
 *       loadLayers: local files ∪ remote-only layers of the index
 *       reconcile:  local layers the index lacks -> uploads, then an index
 *   flush         -> layersChanged(added)            -> layer upload + index
 *   compaction/GC -> layersChanged(added, removed)   -> uploads, index, deletions
 *   metadata      -> metadataChanged                 -> index
 *   read of a remote-only layer -> residence -> downloadLayerFile
 *
 * A layer is *evictable* when it is resident and listed in the last durable
 * index (then a crash after the eviction still finds it remotely). Layers
 * only in the projected state (upload queued) are never evicted.
 */
import { unlink } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import type { TenantId, TimelineId } from "../../lib/id.js";
import type { Lsn } from "../../lib/lsn.js";
import type { TaskManager } from "../../lib/tasks.js";
import type { RemoteStorage } from "../../remote_storage/remote_storage.js";
import type { PersistentLayer } from "../layers/layer.js";
import type { LayerDesc } from "../layers/layer_name.js";
import { parseLayerFileName } from "../layers/layer_name.js";
import { LayerResidence } from "../layers/residence.js";
import type { TimelineMetadata } from "../metadata.js";
import { downloadLayerFile } from "./download.js";
import type { IndexLayerMeta, IndexPart } from "./index_part.js";
import type { RemoteMetrics } from "./metrics.js";
import { RemoteTimelineClient } from "./remote_timeline_client.js";
import { StrataError } from "../../lib/errors.js";

/** What a tenant with remote storage hands its timelines. */
export interface TimelineRemoteFactory {
  readonly storage: RemoteStorage;
  readonly generation: number;
  readonly metrics?: RemoteMetrics;
  /** The durable index downloaded for this timeline at load/attach, if any. */
  indexFor(timelineId: TimelineId): IndexPart | undefined;
}

export interface TimelineRemoteOwner {
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  readonly dir: string;
}

export class TimelineRemote {
  readonly client: RemoteTimelineClient;
  private readonly layers = new Map<string, PersistentLayer>();
  private readonly unregisterResident: (() => void) | undefined;

  constructor(
    private readonly factory: TimelineRemoteFactory,
    private readonly owner: TimelineRemoteOwner,
    deps: { tasks: TaskManager; log: Logger },
    private readonly log: Logger,
  ) {
    const index = factory.indexFor(owner.timelineId);
    this.client = new RemoteTimelineClient({
      storage: factory.storage,
      tenantId: owner.tenantId,
      timelineId: owner.timelineId,
      generation: factory.generation,
      localDir: owner.dir,
      tasks: deps.tasks,
      log: deps.log,
      ...(factory.metrics === undefined ? {} : { metrics: factory.metrics }),
      ...(index === undefined ? {} : { index }),
    });
    this.unregisterResident = factory.metrics?.addResidentSource(() => this.residentBytes());
  }

  get remoteConsistentLsn(): Lsn {
    return this.client.remoteConsistentLsn;
  }

  /** Layers of the durable index that are not among `localNames` (remote-only at load). */
  remoteOnlyLayers(localNames: ReadonlySet<string>): Array<{ name: string; desc: LayerDesc; sizeBytes: number }> {
    const out: Array<{ name: string; desc: LayerDesc; sizeBytes: number }> = [];
    const ix = this.factory.indexFor(this.owner.timelineId);
    if (ix === undefined) return out;
    for (const [name, m] of ix.layers) if (!localNames.has(name)) out.push({ name, desc: parseLayerFileName(name), sizeBytes: m.fileSizeBytes });
    return out;
  }

  /** Gives a layer in the layer map its residence (download on demand, eviction, access time). */
  adoptLayer(layer: PersistentLayer, sizeBytes: number, resident: boolean): void {
    const name = layer.fileName;
    this.layers.set(name, layer);
    layer.residence = new LayerResidence(name, sizeBytes, resident, {
      download: async (signal) => {
        const meta: IndexLayerMeta | undefined = this.client.durableLayer(name);
        if (meta === undefined) throw new StrataError("not_found", `Layer ${name} of timeline ${this.owner.timelineId} is neither local nor in the durable remote index`);
        const t0 = Date.now();
        await downloadLayerFile(this.factory.storage, { tenantId: this.owner.tenantId, timelineId: this.owner.timelineId, dir: this.owner.dir }, name, meta, {
          ...(signal === undefined ? {} : { signal }),
          ...(this.factory.metrics === undefined ? {} : { metrics: this.factory.metrics }),
        });
        this.log.info({ layer: name, bytes: meta.fileSizeBytes, ms: Date.now() - t0 }, "layer downloaded on demand");
      },
      removeLocal: async () => {
        await unlink(join(this.owner.dir, name)).catch((e: NodeJS.ErrnoException) => {
          if (e.code !== "ENOENT") throw e;
        });
      },
      onDownloadPolicy: (behavior, ctx) => this.log.warn({ layer: name, task_kind: ctx.taskKind, behavior }, "read needs a remote-only layer"),
    });
  }

  /**
   * After load: uploads local layers the remote copy lacks, deletes remote
   * layers the layer map no longer has (e.g. inputs of a compaction that
   * finished locally), and uploads an index if anything changed.
   */
  reconcile(mapLayers: ReadonlyArray<{ layer: PersistentLayer; sizeBytes: number }>, meta: TimelineMetadata): void {
    const projected = new Set(this.client.projectedLayerNames());
    const inMap = new Set(mapLayers.map((l) => l.layer.fileName));
    let changed = false;
    for (const { layer, sizeBytes } of mapLayers) {
      if (!projected.has(layer.fileName)) {
        this.client.scheduleLayerUpload(layer.fileName, sizeBytes);
        changed = true;
      }
    }
    const gone = [...projected].filter((n) => !inMap.has(n));
    const ix = this.factory.indexFor(this.owner.timelineId);
    if (gone.length > 0) this.client.scheduleLayerDeletion(gone, meta);
    else if (changed || ix === undefined || ix.generation !== this.factory.generation || meta.diskConsistentLsn !== ix.metadata.diskConsistentLsn) {
      this.client.scheduleIndexUpload(meta);
    }
  }

  /** A flush, compaction or GC changed the layer map (layers already durable locally). */
  layersChanged(added: ReadonlyArray<{ layer: PersistentLayer; sizeBytes: number }>, removed: readonly PersistentLayer[], meta: TimelineMetadata): void {
    // A name both removed and added (a layer rewritten under the same name) is re-uploaded, not deleted.
    const addedNames = new Set(added.map((a) => a.layer.fileName));
    const gone = removed.map((r) => r.fileName).filter((n) => !addedNames.has(n));
    for (const r of removed) this.layers.delete(r.fileName);
    for (const a of added) {
      this.adoptLayer(a.layer, a.sizeBytes, true);
      this.client.scheduleLayerUpload(a.layer.fileName, a.sizeBytes, { replace: removed.some((r) => r.fileName === a.layer.fileName) });
    }
    if (gone.length > 0) this.client.scheduleLayerDeletion(gone, meta);
    else this.client.scheduleIndexUpload(meta);
  }

  metadataChanged(meta: TimelineMetadata): void {
    this.client.scheduleIndexUpload(meta);
  }

  /** True when the client unlinks the file after its queued upload (the caller must not). */
  releaseLocalFile(name: string, path: string): boolean {
    return this.client.unlinkAfterUpload(name, path);
  }

  residentBytes(): number {
    let n = 0;
    for (const l of this.layers.values()) if (l.residence?.resident === true) n += l.residence.sizeBytes;
    return n;
  }

  /** Resident layers that the durable index lists (safe to evict). */
  evictableLayers(): PersistentLayer[] {
    return [...this.layers.values()].filter((l) => l.residence?.resident === true && this.client.durableLayer(l.fileName) !== undefined);
  }

  allLayers(): PersistentLayer[] {
    return [...this.layers.values()];
  }

  start(): void {
    this.client.start();
  }

  async shutdown(): Promise<void> {
    await this.client.shutdown();
    this.unregisterResident?.();
  }
}
