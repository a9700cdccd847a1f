/**
 * The tenant manager: every tenant this pageserver holds, under
 * `<dataDir>/tenants/`.
 *
 * Start-up loads each tenant directory (tenant.ts); a damaged tenant or
 * timeline is kept in the map as Broken with its reason — reported by the
 * HTTP API, refusing work — while the others serve. Shutdown stops tenants
 * (flushing open layers when asked) and the redo pools.
 *
 * It also owns the process-wide services tenants share: the materialized
 * page cache, the layer index page cache, the metrics, and the WalRedoManager
 * (which gives each tenant its own pool).
 *
 * With remote storage (`remoteStorage`), every tenant is loaded through the
 * attach procedure (remote/tenant_remote.ts: newest index wins, layers on
 * demand, resumable after a crash): at start-up and on `attachTenant`. A
 * tenant's generation is kept in its `attachment.json`. `detachTenant`
 * flushes, waits for the upload queues and removes the local copy.
 */
import { mkdir, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import { generateTenantId, isIdText, parseTenantId, type TenantId, type TimelineId } from "../lib/id.js";
import type { TaskManager } from "../lib/tasks.js";
import type { WalRedoManager } from "../walredo/pool.js";
import { DEFAULT_TENANT_CONFIG, parseTenantConfig, type TenantConfig } from "./config.js";
import { IndexPageCache } from "./layers/page_cache.js";
import type { PageserverMetrics } from "./metrics.js";
import { MaterializedPageCache } from "./page_cache.js";
import { removeDeletedMarkers, Tenant } from "./tenant.js";
import type { Timeline } from "./timeline.js";
import type { RemoteStorage } from "../remote_storage/remote_storage.js";
import { errorFields } from "../lib/logging.js";
import { RemoteMetrics } from "./remote/metrics.js";
import { checkGeneration } from "./remote/index_part.js";
import {
  hasAttachingMarker, prepareWithRetries, readAttachment, removeAttachingMarker, TenantRemote, writeAttachingMarker, writeGeneration,
} from "./remote/tenant_remote.js";
import { TENANT_CONFIG_FILE_NAME } from "./tenant.js";

/** Start-up waits this long for tenants to finish attaching before it goes on (they finish in the background). */
export const ATTACH_WAIT_AT_START_MS = 15_000;

export const TENANTS_DIR_NAME = "tenants";

export interface TenantManagerOptions {
  readonly dataDir: string;
  readonly tasks: TaskManager;
  readonly log: Logger;
  readonly metrics: PageserverMetrics;
  readonly redo: WalRedoManager;
  readonly pageCachePages: number;
  readonly defaultTenantConfig?: TenantConfig;
  /** Remote storage (layers and index_part.json); absent = local only. */
  readonly remoteStorage?: RemoteStorage;
  /** Called when a tenant becomes active after an attach (start WAL receivers). */
  readonly onTenantActive?: (t: Tenant) => void;
}

export class TenantManager {
  private readonly tenants = new Map<TenantId, Tenant>();
  readonly pageCache: MaterializedPageCache;
  readonly indexCache = new IndexPageCache();
  readonly tenantsDir: string;
  private closed = false;

  constructor(readonly opts: TenantManagerOptions) {
    this.tenantsDir = join(opts.dataDir, TENANTS_DIR_NAME);
    this.pageCache = new MaterializedPageCache(opts.pageCachePages);
    opts.metrics.setTimelineSource(() => this.allTimelines().filter((t) => t.state === "active").map((t) => t.gaugeSource()));
  }

  private get deps() {
    return { tasks: this.opts.tasks, log: this.opts.log, metrics: this.opts.metrics, pageCache: this.pageCache, indexCache: this.indexCache, redo: this.opts.redo };
  }

  /** Loads every tenant from disk and starts their timelines' tasks. */
  async loadAll(): Promise<void> {
    await mkdir(this.tenantsDir, { recursive: true });
    await removeDeletedMarkers(this.tenantsDir);
    const attaching: Promise<void>[] = [];
    for (const name of (await readdir(this.tenantsDir)).sort()) {
      if (!isIdText(name)) {
        this.opts.log.warn({ entry: name }, "ignoring unknown entry in tenants directory");
        continue;
      }
      const id = parseTenantId(name);
      const dir = join(this.tenantsDir, id);
      if (this.opts.remoteStorage !== undefined) {
        const t = await this.loadAttaching(id, dir);
        if (t !== undefined) {
          attaching.push(this.startAttach(t));
          continue;
        }
      }
      const t = await Tenant.load(this.deps, dir, id);
      const attachment = await readAttachment(dir).catch(() => ({ generation: 1, remoteStorage: false }));
      t.generation = attachment.generation;
      // Some of its layers may exist only in remote storage (evicted, or never downloaded since an attach).
      if (attachment.remoteStorage) t.setBroken("this tenant's layers live in remote storage; start the pageserver with --remote-storage");
      this.tenants.set(id, t);
      t.activate();
    }
    if (attaching.length > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(attaching), new Promise<void>((r) => (timer = setTimeout(r, ATTACH_WAIT_AT_START_MS)))]);
      clearTimeout(timer);
    }
    const broken = this.allTimelines().filter((t) => t.state === "broken").length + [...this.tenants.values()].filter((t) => t.state === "broken").length;
    this.opts.log.info({ tenants: this.tenants.size, timelines: this.allTimelines().length, broken }, "tenants loaded");
  }

  async createTenant(id: TenantId = generateTenantId(), config?: unknown, generation = 1): Promise<Tenant> {
    if (this.closed) throw new StrataError("cancelled", "pageserver is shutting down");
    if (this.tenants.has(id)) throw new StrataError("invalid_argument", `Tenant ${id} already exists`);
    checkGeneration(generation, "generation");
    const conf = parseTenantConfig(config, this.opts.defaultTenantConfig ?? DEFAULT_TENANT_CONFIG);
    await mkdir(this.tenantsDir, { recursive: true });
    const t = await Tenant.create(this.deps, join(this.tenantsDir, id), id, conf);
    await writeGeneration(t.dir, generation, this.opts.remoteStorage !== undefined);
    t.generation = generation;
    if (this.opts.remoteStorage !== undefined) t.remote = this.tenantRemote(id, generation);
    this.tenants.set(id, t);
    return t;
  }

  // ------------------------------------------------------------ remote storage: attach / detach

  private tenantRemote(id: TenantId, generation: number): TenantRemote {
    return new TenantRemote(this.opts.remoteStorage!, id, generation, RemoteMetrics.of(this.opts.metrics.registry), this.opts.log.child({ tenant_id: id }));
  }

  /** An attaching Tenant for a directory at start-up; undefined when its config is unreadable (Tenant.load reports it). */
  private async loadAttaching(id: TenantId, dir: string): Promise<Tenant | undefined> {
    try {
      const config = parseTenantConfig(JSON.parse(await readFile(join(dir, TENANT_CONFIG_FILE_NAME), "utf8")));
      const { generation, remoteStorage } = await readAttachment(dir);
      if (!remoteStorage) await writeGeneration(dir, generation, true); // from now on its layers may be remote-only
      if (await hasAttachingMarker(dir)) this.opts.log.info({ tenant_id: id }, "resuming an interrupted attach");
      else await writeAttachingMarker(dir);
      const t = Tenant.attaching(this.deps, dir, id, config, this.tenantRemote(id, generation));
      this.tenants.set(id, t);
      return t;
    } catch (e) {
      this.opts.log.error({ tenant_id: id, ...errorFields(e) }, "cannot start loading tenant");
      return undefined;
    }
  }

  /** Runs the attach steps of an attaching tenant as a task; resolves when it is active, broken or cancelled. */
  private startAttach(t: Tenant): Promise<void> {
    const remote = t.remote!;
    const { done } = this.opts.tasks.spawn("remote_download", { tenantId: t.tenantId, name: `attach ${t.tenantId}` }, async (signal) => {
      const t0 = Date.now();
      try {
        await prepareWithRetries(remote, t.dir, t.log, signal);
      } catch (e) {
        if (!signal.aborted) t.setBroken(`attach failed: ${(e as Error).message}`);
        return;
      }
      if (signal.aborted) return;
      await t.finishAttach();
      if (t.state !== "active") return;
      await removeAttachingMarker(t.dir);
      t.activate();
      t.log.info({ generation: t.generation, timelines: t.listTimelines().length, ms: Date.now() - t0 }, "tenant attached");
      this.opts.onTenantActive?.(t);
    });
    return done;
  }

  /**
   * Attaches a tenant from remote storage under `generation` (contract B):
   * visible at once as "attaching"; the attach continues as a task.
   */
  async attachTenant(id: TenantId, generation: number, config?: unknown): Promise<Tenant> {
    if (this.closed) throw new StrataError("cancelled", "pageserver is shutting down");
    if (this.opts.remoteStorage === undefined) throw new StrataError("invalid_argument", "This pageserver has no remote storage (--remote-storage); cannot attach");
    checkGeneration(generation, "generation");
    const existing = this.tenants.get(id);
    if (existing !== undefined) {
      throw new StrataError("invalid_argument", `Tenant ${id} is already attached here (generation ${existing.generation}, state ${existing.state}); detach it first`);
    }
    const conf = parseTenantConfig(config, this.opts.defaultTenantConfig ?? DEFAULT_TENANT_CONFIG);
    await mkdir(this.tenantsDir, { recursive: true });
    const dir = join(this.tenantsDir, id);
    const t0 = await Tenant.create(this.deps, dir, id, conf);
    await writeGeneration(dir, generation, true);
    await writeAttachingMarker(dir);
    const t = Tenant.attaching(this.deps, dir, id, t0.conf, this.tenantRemote(id, generation));
    this.tenants.set(id, t);
    void this.startAttach(t);
    return t;
  }

  /**
   * Detaches a tenant: `beforeStop` (stop WAL receivers), flush every
   * timeline, wait for every upload queue to drain, stop, remove local files.
   */
  async detachTenant(id: TenantId, beforeStop: (t: Tenant) => Promise<void>, signal?: AbortSignal): Promise<void> {
    const t = this.get(id);
    await beforeStop(t);
    if (t.state === "active") {
      for (const tl of t.listTimelines()) {
        if (tl.state !== "active") continue;
        await tl.checkpoint(signal);
        await tl.remote?.client.waitForQueueEmpty(signal);
      }
    }
    await t.shutdown();
    this.tenants.delete(id);
    await t.removeFiles();
    this.opts.log.info({ tenant_id: id, generation: t.generation }, "tenant detached");
  }

  list(): Tenant[] {
    return [...this.tenants.values()];
  }

  get(id: TenantId): Tenant {
    const t = this.tenants.get(id);
    if (t === undefined) throw new StrataError("not_found", `Tenant ${id} not found`);
    return t;
  }

  /** The timeline; not_found for an unknown tenant or timeline. */
  timeline(tenantId: TenantId, timelineId: TimelineId): Timeline {
    return this.get(tenantId).getTimeline(timelineId);
  }

  allTimelines(): Timeline[] {
    return [...this.tenants.values()].flatMap((t) => t.listTimelines());
  }

  async deleteTenant(id: TenantId): Promise<void> {
    const t = this.get(id);
    await t.shutdown();
    this.tenants.delete(id);
    await t.removeFiles();
  }

  /** Stops all tenants (flushing open layers when `flush`), then the redo pools. */
  async shutdown(opts: { flush?: boolean } = {}): Promise<void> {
    this.closed = true;
    for (const t of this.tenants.values()) await t.shutdown(opts);
    await this.opts.redo.close();
  }
}
