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
 */
import { mkdir, readdir } from "node:fs/promises";
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

export const TENANTS_DIR_NAME = "tenants";

export interface TenantManagerOptions {
  readonly dataDir: string;
  readonly tasks: TaskManager;
  readonly log: Logger;
  readonly metrics: PageserverMetrics;
  readonly redo: WalRedoManager;
  readonly pageCachePages: number;
  readonly defaultTenantConfig?: TenantConfig;
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
    for (const name of (await readdir(this.tenantsDir)).sort()) {
      if (!isIdText(name)) {
        this.opts.log.warn({ entry: name }, "ignoring unknown entry in tenants directory");
        continue;
      }
      const id = parseTenantId(name);
      const t = await Tenant.load(this.deps, join(this.tenantsDir, id), id);
      this.tenants.set(id, t);
      t.activate();
    }
    const broken = this.allTimelines().filter((t) => t.state === "broken").length + [...this.tenants.values()].filter((t) => t.state === "broken").length;
    this.opts.log.info({ tenants: this.tenants.size, timelines: this.allTimelines().length, broken }, "tenants loaded");
  }

  async createTenant(id: TenantId = generateTenantId(), config?: unknown): Promise<Tenant> {
    if (this.closed) throw new StrataError("cancelled", "pageserver is shutting down");
    if (this.tenants.has(id)) throw new StrataError("invalid_argument", `Tenant ${id} already exists`);
    const conf = parseTenantConfig(config, this.opts.defaultTenantConfig ?? DEFAULT_TENANT_CONFIG);
    await mkdir(this.tenantsDir, { recursive: true });
    const t = await Tenant.create(this.deps, join(this.tenantsDir, id), id, conf);
    this.tenants.set(id, t);
    return t;
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
