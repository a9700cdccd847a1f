/**
 * A tenant: one customer's set of timelines, with its settings and its WAL
 * redo pool.
 *
 * On disk: `tenants/<tenant_id>/config.json` (tenant settings, config.ts,
 * written atomically) and `tenants/<tenant_id>/timelines/<timeline_id>/`
 * (timeline.ts). A tenant directory without a valid config.json is Broken
 * (reported with the reason; its timelines are not loaded).
 *
 * Timelines load ancestors first (a branch needs its parent's layer map to
 * answer reads below the branch point); a timeline whose ancestor is missing
 * or broken is itself broken, the others serve. Creating a timeline is
 * either an empty root (bootstrapped by import_datadir, then fed WAL) or a
 * branch (parent + LSN, O(1): only a directory and a metadata file).
 *
 * Isolation: every redo request of this tenant goes to the tenant's own pool
 * (`WalRedoManager.pool(tenantId)`), never to another tenant's processes.
 *
 * GC (gc.ts) runs as one background task per tenant (kind "gc", every
 * `gcPeriodMs`), over its active timelines, parents and children alike; the
 * tenant supplies each timeline's retain points (its children's branch
 * points).
 *
 * Deletion of a timeline renames its directory to `<id>.___deleted` first
 * (one atomic step), then removes it; a crash in between leaves a marker
 * that the next load finishes removing. A timeline with children cannot be
 * deleted.
 *
 * Remote storage (remote/tenant_remote.ts): a tenant holds a generation
 * (`attachment.json`, contract B) and, when the pageserver has remote
 * storage, a TenantRemote its timelines upload through. Such a tenant starts
 * in state "attaching" (`Tenant.attaching`) and becomes active in
 * `finishAttach` once the remote indexes are downloaded.
 */
import { randomBytes } from "node:crypto";
import { mkdir, open, readdir, readFile, rename, rm, unlink } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import { isIdText, parseTimelineId, type TenantId, type TimelineId } from "../lib/id.js";
import type { Lsn } from "../lib/lsn.js";
import type { TaskManager } from "../lib/tasks.js";
import type { WalRedoManager } from "../walredo/pool.js";
import { parseTenantConfig, type TenantConfig } from "./config.js";
import type { IndexPageCache } from "./layers/page_cache.js";
import { fsyncDir } from "./layers/layer_file.js";
import { gcTimeline, type GcResult } from "./gc.js";
import { readMetadata } from "./metadata.js";
import type { PageserverMetrics } from "./metrics.js";
import type { MaterializedPageCache } from "./page_cache.js";
import { Timeline, type TimelineDeps } from "./timeline.js";
import type { TenantRemote } from "./remote/tenant_remote.js";

export const TENANT_CONFIG_FILE_NAME = "config.json";
export const TIMELINES_DIR_NAME = "timelines";
const DELETED_SUFFIX = ".___deleted";
/** The GC task re-checks its period this often (so a changed gcPeriodMs applies within a second). */
const GC_LOOP_TICK_MS = 1_000;

export type TenantState = "attaching" | "active" | "broken" | "stopping" | "stopped";

/** Process-wide services a tenant uses. */
export interface TenantDeps {
  readonly tasks: TaskManager;
  readonly log: Logger;
  readonly metrics: PageserverMetrics;
  readonly pageCache: MaterializedPageCache;
  readonly indexCache?: IndexPageCache;
  readonly redo: WalRedoManager;
}

async function writeFileAtomic(dir: string, name: string, data: string): Promise<void> {
  const tmp = join(dir, `${name}.${randomBytes(4).toString("hex")}.tmp`);
  const fh = await open(tmp, "wx");
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, join(dir, name));
  await fsyncDir(dir);
}

export class Tenant {
  state: TenantState = "active";
  brokenReason: string | undefined;
  private readonly timelines = new Map<TimelineId, Timeline>();
  readonly log: Logger;
  /** The attachment's generation (contract B; 1 for tenants created before generations). */
  generation = 1;
  /** Remote storage of this tenant, when the pageserver has it. */
  remote: TenantRemote | undefined;

  private constructor(
    readonly deps: TenantDeps,
    readonly tenantId: TenantId,
    readonly dir: string,
    private config: TenantConfig,
  ) {
    this.log = deps.log.child({ tenant_id: tenantId });
  }

  get conf(): TenantConfig {
    return this.config;
  }

  /** Creates the tenant directory and config durably. */
  static async create(deps: TenantDeps, dir: string, tenantId: TenantId, config: TenantConfig): Promise<Tenant> {
    try {
      await mkdir(dir);
    } catch (e) {
      const exists = (e as NodeJS.ErrnoException).code === "EEXIST";
      throw new StrataError(exists ? "invalid_argument" : "io_error", exists ? `Tenant ${tenantId} already exists` : `Cannot create tenant directory ${dir}: ${(e as Error).message}`, { cause: e });
    }
    await mkdir(join(dir, TIMELINES_DIR_NAME));
    await writeFileAtomic(dir, TENANT_CONFIG_FILE_NAME, JSON.stringify(config, null, 2) + "\n");
    await fsyncDir(join(dir, ".."));
    return new Tenant(deps, tenantId, dir, config);
  }

  /**
   * A tenant whose timelines are not loaded yet: listed as "attaching" while
   * its remote indexes download (remote/tenant_remote.ts); `finishAttach` loads it.
   */
  static attaching(deps: TenantDeps, dir: string, tenantId: TenantId, config: TenantConfig, remote: TenantRemote): Tenant {
    const t = new Tenant(deps, tenantId, dir, config);
    t.state = "attaching";
    t.remote = remote;
    t.generation = remote.generation;
    return t;
  }

  /** Loads the timelines of an attaching tenant and makes it active (or broken). */
  async finishAttach(): Promise<void> {
    if (this.state !== "attaching") return;
    try {
      await this.loadTimelines();
      this.state = "active";
    } catch (e) {
      this.setBroken(`cannot load timelines: ${(e as Error).message}`);
    }
  }

  /** Loads config and timelines; never throws for damaged state (the tenant or timeline is Broken instead). */
  static async load(deps: TenantDeps, dir: string, tenantId: TenantId): Promise<Tenant> {
    let config: TenantConfig;
    try {
      config = parseTenantConfig(JSON.parse(await readFile(join(dir, TENANT_CONFIG_FILE_NAME), "utf8")));
    } catch (e) {
      const t = new Tenant(deps, tenantId, dir, parseTenantConfig(undefined));
      t.setBroken(`cannot load ${TENANT_CONFIG_FILE_NAME}: ${(e as Error).message}`);
      return t;
    }
    const t = new Tenant(deps, tenantId, dir, config);
    try {
      await t.loadTimelines();
    } catch (e) {
      t.setBroken(`cannot list timelines: ${(e as Error).message}`);
    }
    return t;
  }

  private async loadTimelines(): Promise<void> {
    const tdir = join(this.dir, TIMELINES_DIR_NAME);
    const names = await readdir(tdir);
    const ids: TimelineId[] = [];
    for (const n of names) {
      if (n.endsWith(DELETED_SUFFIX)) {
        await rm(join(tdir, n), { recursive: true, force: true });
        continue;
      }
      if (!isIdText(n)) {
        this.log.warn({ entry: n }, "ignoring unknown entry in timelines directory");
        continue;
      }
      ids.push(parseTimelineId(n));
    }
    // Ancestors first: read each metadata to learn the parent, then load in dependency order.
    const parentOf = new Map<TimelineId, TimelineId | undefined>();
    for (const id of ids) {
      try {
        parentOf.set(id, (await readMetadata(join(tdir, id))).ancestorTimelineId);
      } catch {
        parentOf.set(id, undefined); // Timeline.load reports the damage
      }
    }
    const loading = new Set<TimelineId>();
    const loadOne = async (id: TimelineId): Promise<void> => {
      if (this.timelines.has(id) || loading.has(id)) return;
      loading.add(id);
      const parent = parentOf.get(id);
      if (parent !== undefined && parentOf.has(parent)) await loadOne(parent);
      const tl = await Timeline.load(this.timelineDeps(), join(tdir, id), id, (a) => this.timelines.get(a));
      this.timelines.set(id, tl);
    };
    for (const id of ids) await loadOne(id);
  }

  timelineDeps(): TimelineDeps {
    return {
      tenantId: this.tenantId,
      conf: () => this.config,
      tasks: this.deps.tasks,
      log: this.deps.log,
      metrics: this.deps.metrics,
      pageCache: this.deps.pageCache,
      ...(this.deps.indexCache === undefined ? {} : { indexCache: this.deps.indexCache }),
      redoPool: (s) => this.deps.redo.pool(this.tenantId, s),
      ...(this.remote === undefined ? {} : { remote: this.remote }),
    };
  }

  setBroken(reason: string): void {
    this.state = "broken";
    this.brokenReason = reason;
    this.log.error({ reason }, "tenant is broken");
  }

  /** Starts background tasks of every active timeline, and the tenant's GC task. */
  activate(): void {
    for (const tl of this.timelines.values()) tl.activate();
    if (this.state === "active" && !this.gcTaskStarted) {
      this.gcTaskStarted = true;
      this.deps.tasks.spawn("gc", { tenantId: this.tenantId, name: `gc ${this.tenantId}` }, (signal) => this.gcLoop(signal));
    }
  }

  private gcTaskStarted = false;

  /** Branch points (ancestor LSNs) of the children of `id`: GC keeps what reads at them need. */
  branchPointsOf(id: TimelineId): Lsn[] {
    return this.listTimelines().filter((t) => t.ancestorTimelineId === id).map((t) => t.ancestorLsn);
  }

  /** One GC pass on one timeline (HTTP trigger and the background task). */
  async gcTimeline(id: TimelineId, signal?: AbortSignal): Promise<GcResult> {
    this.checkActive();
    const tl = this.getTimeline(id);
    if (tl.state !== "active") throw new StrataError("unavailable", `Timeline ${id} is ${tl.state}${tl.brokenReason === undefined ? "" : ` (${tl.brokenReason})`}; cannot run GC`);
    return gcTimeline(tl, this.branchPointsOf(id), signal === undefined ? {} : { signal });
  }

  private async gcLoop(signal: AbortSignal): Promise<void> {
    let lastRunMs = Date.now();
    while (!signal.aborted && this.state === "active") {
      // Wake every tick and compare with the current period, so a config PATCH takes effect at once; 0 = idle.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, Math.min(GC_LOOP_TICK_MS, Math.max(1, this.config.gcPeriodMs)));
        const onAbort = () => done();
        function done() {
          clearTimeout(timer);
          signal.removeEventListener("abort", onAbort);
          resolve();
        }
        signal.addEventListener("abort", onAbort, { once: true });
      });
      const period = this.config.gcPeriodMs;
      if (signal.aborted || this.state !== "active" || period === 0 || Date.now() - lastRunMs < period) continue;
      lastRunMs = Date.now();
      for (const tl of this.listTimelines()) {
        if (signal.aborted) break;
        if (tl.state !== "active" || tl.diskConsistentLsn === 0n) continue;
        try {
          await this.gcTimeline(tl.timelineId, signal);
        } catch (e) {
          if (!signal.aborted) this.log.warn({ timeline_id: tl.timelineId, err: (e as Error).message }, "GC failed");
        }
      }
    }
  }

  private checkActive(): void {
    if (this.state === "broken") throw new StrataError("unavailable", `Tenant ${this.tenantId} is broken: ${this.brokenReason}`);
    if (this.state !== "active") throw new StrataError("cancelled", `Tenant ${this.tenantId} is ${this.state}`);
  }

  async updateConfig(patch: unknown): Promise<TenantConfig> {
    this.checkActive();
    const next = parseTenantConfig(patch, this.config);
    await writeFileAtomic(this.dir, TENANT_CONFIG_FILE_NAME, JSON.stringify(next, null, 2) + "\n");
    this.config = next;
    return next;
  }

  listTimelines(): Timeline[] {
    return [...this.timelines.values()];
  }

  /** The timeline, or not_found. */
  getTimeline(id: TimelineId): Timeline {
    const tl = this.timelines.get(id);
    if (tl === undefined) throw new StrataError("not_found", `Timeline ${id} of tenant ${this.tenantId} not found`);
    return tl;
  }

  /**
   * Creates a timeline: a branch when `ancestorTimelineId` is given (at
   * `ancestorLsn`, default the ancestor's last_record_lsn), else an empty root
   * to be bootstrapped by import.
   */
  async createTimeline(id: TimelineId, opts: { ancestorTimelineId?: TimelineId; ancestorLsn?: Lsn; pgVersion?: number } = {}): Promise<Timeline> {
    this.checkActive();
    if (this.timelines.has(id)) throw new StrataError("invalid_argument", `Timeline ${id} of tenant ${this.tenantId} already exists`);
    const dir = join(this.dir, TIMELINES_DIR_NAME, id);
    let tl: Timeline;
    if (opts.ancestorTimelineId !== undefined) {
      const parent = this.getTimeline(opts.ancestorTimelineId);
      const at = opts.ancestorLsn ?? parent.lastRecordLsn;
      // Branching at an LSN not yet ingested waits for it (bounded).
      if (at > parent.lastRecordLsn) await parent.waitForLsn(at);
      tl = await Timeline.create(this.timelineDeps(), dir, id, { ancestor: { timeline: parent, lsn: at } });
    } else {
      tl = await Timeline.create(this.timelineDeps(), dir, id, { ...(opts.pgVersion === undefined ? {} : { pgVersion: opts.pgVersion }) });
    }
    this.timelines.set(id, tl);
    tl.activate();
    return tl;
  }

  /** Deletes a timeline without children: stops it, then removes its directory (crash-safe via a rename). */
  async deleteTimeline(id: TimelineId): Promise<void> {
    const tl = this.getTimeline(id);
    const children = this.listTimelines().filter((t) => t.ancestorTimelineId === id);
    if (children.length > 0) {
      throw new StrataError("invalid_argument", `Timeline ${id} has ${children.length} child timeline(s) (${children.map((c) => c.timelineId).join(", ")}); delete them first`);
    }
    await tl.shutdown();
    this.timelines.delete(id);
    const gone = `${tl.dir}${DELETED_SUFFIX}`;
    await rename(tl.dir, gone);
    await fsyncDir(join(this.dir, TIMELINES_DIR_NAME));
    await rm(gone, { recursive: true, force: true });
  }

  /** Stops every timeline (children first), optionally flushing open layers, then the tenant's redo pool. */
  async shutdown(opts: { flush?: boolean } = {}): Promise<void> {
    if (this.state === "stopped") return;
    if (this.state !== "broken") this.state = "stopping";
    const byDepth = this.listTimelines().sort((a, b) => depth(b) - depth(a));
    for (const tl of byDepth) await tl.shutdown(opts);
    await this.deps.tasks.shutdown({ tenantId: this.tenantId });
    await this.deps.redo.detach(this.tenantId);
    if (this.state !== "broken") this.state = "stopped";
  }

  /** Removes the tenant's files (after shutdown). */
  async removeFiles(): Promise<void> {
    const gone = `${this.dir}${DELETED_SUFFIX}`;
    await rename(this.dir, gone);
    await fsyncDir(join(this.dir, ".."));
    await rm(gone, { recursive: true, force: true });
  }
}

function depth(tl: Timeline): number {
  let d = 0;
  for (let t = tl.ancestor; t !== undefined; t = t.ancestor) d++;
  return d;
}

/** Removes leftovers of interrupted deletions in a tenants directory. */
export async function removeDeletedMarkers(tenantsDir: string): Promise<void> {
  for (const n of await readdir(tenantsDir)) {
    if (n.endsWith(DELETED_SUFFIX)) await rm(join(tenantsDir, n), { recursive: true, force: true });
    else if (n.endsWith(".tmp")) await unlink(join(tenantsDir, n)).catch(() => undefined);
  }
}

export { DELETED_SUFFIX };
