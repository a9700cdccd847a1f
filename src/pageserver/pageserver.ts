/**
 * The pageserver process: tenants on local disk, a WAL receiver per active
 * timeline, the libpq page service, the HTTP management API, and background
 * compaction.
 *
 * Start-up: load every tenant and timeline (damaged ones are Broken and
 * reported; the rest serve), start WAL receivers for timelines that hold
 * data when safekeepers are configured, then listen. Shutdown (`stop`):
 * stop listening, cancel connections and receivers, flush every timeline's
 * open layer (graceful: a restart then has nothing to re-ingest) and, with
 * remote storage, wait (bounded) for the uploads, stop the
 * redo pools, and await every task (bounded).
 *
 * Bootstrap of a root timeline is an import of a cleanly shut-down data
 * directory at the end of its shutdown checkpoint record (initdb output,
 * or any stopped PostgreSQL 15 cluster); WAL ingest continues from there.
 *
 * Remote storage (`config.remoteStorage`, a URL): tenants load through the
 * attach procedure (remote/tenant_remote.ts) and a timeline's WAL receiver
 * starts when its tenant becomes active; a disk-usage eviction task runs when
 * `maxLocalLayerBytes` is set (remote/eviction.ts).
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { FastifyInstance } from "fastify";
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import { formatLsn, lsnAlign, segmentNumber, segmentOffset, walFileName, type Lsn } from "../lib/lsn.js";
import { errorFields } from "../lib/logging.js";
import type { Registry } from "../lib/metrics.js";
import { sleep, TaskManager } from "../lib/tasks.js";
import { parseControlFile } from "../formats/pg_control.js";
import { WalStreamDecoder } from "../formats/wal/wal_stream_decoder.js";
import { WalRedoMetrics } from "../walredo/metrics.js";
import { WalRedoManager } from "../walredo/pool.js";
import { compactLevel0, createImageLayers } from "./compaction.js";
import { parseHostPort, type PageserverConfig } from "./config.js";
import { buildHttpApi, type PageserverControl } from "./http_api.js";
import { importDatadir } from "./import_datadir.js";
import { PageserverMetrics } from "./metrics.js";
import { PageService } from "./page_service.js";
import { TenantManager } from "./tenant_manager.js";
import type { Timeline } from "./timeline.js";
import { WalReceiver, type WalReceiverStatus } from "./wal_receiver.js";
import { createRemoteStorage } from "../remote_storage/config.js";
import type { RemoteStorage } from "../remote_storage/remote_storage.js";
import { EVICTION_PERIOD_MS } from "./config.js";
import { diskUsageEvictionPass } from "./remote/eviction.js";
import { RemoteMetrics } from "./remote/metrics.js";

/** Background compaction looks at every timeline this often (image creation is cheap when nothing is due). */
export const COMPACTION_PERIOD_MS = 20_000;
/** Bound on graceful shutdown's wait for tasks. */
export const SHUTDOWN_TIMEOUT_MS = 30_000;
/**
 * Graceful shutdown waits this long for upload queues to drain, so a stopped
 * pageserver's remote copy is complete (its local directory may then be
 * dropped). Storage that is down must not hold a stop forever: what is left
 * is uploaded at the next start.
 */
export const SHUTDOWN_UPLOAD_WAIT_MS = 30_000;

/** The LSN where the next record after a cleanly stopped cluster's shutdown checkpoint starts. */
export async function shutdownCheckpointEnd(datadir: string): Promise<Lsn> {
  const cf = parseControlFile(new Uint8Array(await readFile(join(datadir, "global", "pg_control"))));
  const seg = cf.xlogSegSize;
  const decoder = new WalStreamDecoder(cf.checkPoint, { walSegSizeBytes: seg });
  let segNo = segmentNumber(cf.checkPoint, seg);
  let first = true;
  // The checkpoint record is small, but may cross into the next segment.
  for (let i = 0; i < 2; i++, segNo++) {
    const path = join(datadir, "pg_wal", walFileName(cf.checkPointCopy.thisTimeLineId, segNo, seg));
    const bytes = await readFile(path).catch((e: Error) => {
      throw new StrataError("not_found", `Cannot read the checkpoint's WAL segment ${path}: ${e.message}`);
    });
    decoder.feed(first ? bytes.subarray(segmentOffset(cf.checkPoint, seg)) : bytes);
    first = false;
    const rec = decoder.next();
    if (rec !== undefined) return lsnAlign(rec.endLsn, 8);
  }
  throw new StrataError("corrupt_data", `No checkpoint record at ${formatLsn(cf.checkPoint)} in ${datadir}/pg_wal`);
}

export interface PageserverStartOptions {
  readonly config: PageserverConfig;
  readonly log: Logger;
  readonly registry: Registry;
}

export class Pageserver implements PageserverControl {
  readonly tasks: TaskManager;
  readonly metrics: PageserverMetrics;
  readonly tenants: TenantManager;
  readonly pageService: PageService;
  private http: FastifyInstance | undefined;
  private readonly receivers = new Map<Timeline, WalReceiver>();
  pgPort = 0;
  httpPort = 0;
  private stopped = false;
  readonly remoteStorage: RemoteStorage | undefined;

  private constructor(readonly opts: PageserverStartOptions) {
    this.tasks = new TaskManager(opts.log);
    this.metrics = new PageserverMetrics(opts.registry);
    this.remoteStorage = opts.config.remoteStorage === undefined ? undefined : createRemoteStorage(opts.config.remoteStorage);
    const redo = new WalRedoManager({ processes: opts.config.walRedoProcesses, metrics: new WalRedoMetrics(opts.registry) });
    this.tenants = new TenantManager({
      dataDir: opts.config.dataDir, tasks: this.tasks, log: opts.log, metrics: this.metrics, redo,
      pageCachePages: opts.config.pageCachePages, defaultTenantConfig: opts.config.defaultTenantConfig,
      ...(this.remoteStorage === undefined ? {} : { remoteStorage: this.remoteStorage }),
      onTenantActive: (t) => {
        for (const tl of t.listTimelines()) this.timelineReady(tl);
      },
    });
    this.pageService = new PageService({ tenants: this.tenants, tasks: this.tasks, log: opts.log, metrics: this.metrics });
  }

  static async start(opts: PageserverStartOptions): Promise<Pageserver> {
    const ps = new Pageserver(opts);
    try {
      await ps.tenants.loadAll();
      for (const tl of ps.tenants.allTimelines()) ps.timelineReady(tl);
      ps.pgPort = await ps.pageService.listen(opts.config.listenPgPort, opts.config.listenPgHost);
      ps.http = buildHttpApi(ps, { log: opts.log, registry: opts.registry });
      await ps.http.listen({ port: opts.config.listenHttpPort, host: opts.config.listenHttpHost });
      const addr = ps.http.server.address();
      ps.httpPort = typeof addr === "object" && addr !== null ? addr.port : opts.config.listenHttpPort;
      ps.tasks.spawn("compaction", { name: "compaction" }, (signal) => ps.compactionLoop(signal));
      if (ps.remoteStorage !== undefined && (opts.config.maxLocalLayerBytes ?? 0) > 0) {
        ps.tasks.spawn("eviction", { name: "disk-usage eviction" }, (signal) => ps.evictionLoop(signal, opts.config.maxLocalLayerBytes!));
      }
      opts.log.info({ pg_port: ps.pgPort, http_port: ps.httpPort, data_dir: opts.config.dataDir }, "pageserver started");
      return ps;
    } catch (e) {
      await ps.stop().catch(() => undefined);
      throw e;
    }
  }

  timelineReady(tl: Timeline): void {
    if (this.stopped || tl.state !== "active" || this.receivers.has(tl)) return;
    if (this.opts.config.safekeepers.length === 0) return;
    // An empty root waits for its bootstrap (import) before it can take WAL.
    if (tl.lastRecordLsn === 0n) return;
    const addrs = this.opts.config.safekeepers.map(parseHostPort);
    const r = new WalReceiver({ timeline: tl, safekeepers: () => addrs, tasks: this.tasks, log: this.opts.log });
    this.receivers.set(tl, r);
    r.start();
  }

  async timelineGone(tl: Timeline): Promise<void> {
    const r = this.receivers.get(tl);
    this.receivers.delete(tl);
    await r?.stop();
  }

  walReceiverStatus(tl: Timeline): WalReceiverStatus | undefined {
    return this.receivers.get(tl)?.status;
  }

  async importDatadir(tl: Timeline, datadir: string): Promise<{ lsn: Lsn }> {
    if (tl.lastRecordLsn !== 0n || tl.ancestor !== undefined) {
      throw new StrataError("invalid_argument", `Timeline ${tl.timelineId} is not an empty root timeline; cannot import into it`);
    }
    const lsn = await shutdownCheckpointEnd(datadir);
    await importDatadir(datadir, lsn, tl);
    await tl.checkpoint();
    this.opts.log.info({ tenant_id: tl.tenantId, timeline_id: tl.timelineId, lsn: formatLsn(lsn), datadir }, "timeline bootstrapped from data directory");
    return { lsn };
  }

  private async compactionLoop(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await sleep(COMPACTION_PERIOD_MS, signal).catch(() => undefined);
      for (const tl of this.tenants.allTimelines()) {
        if (signal.aborted || tl.state !== "active" || tl.diskConsistentLsn === 0n) continue;
        try {
          await tl.withCompactionLock(async () => {
            await compactLevel0(tl, { signal });
            await createImageLayers(tl, { signal });
          });
        } catch (e) {
          if (!signal.aborted) this.opts.log.warn({ tenant_id: tl.tenantId, timeline_id: tl.timelineId, ...errorFields(e) }, "compaction failed");
        }
      }
    }
  }

  private async evictionLoop(signal: AbortSignal, maxBytes: number): Promise<void> {
    while (!signal.aborted) {
      await sleep(this.opts.config.evictionPeriodMs ?? EVICTION_PERIOD_MS, signal).catch(() => undefined);
      if (signal.aborted) break;
      try {
        await diskUsageEvictionPass(this.tenants.allTimelines(), maxBytes, { log: this.opts.log, metrics: RemoteMetrics.of(this.opts.registry) });
      } catch (e) {
        this.opts.log.warn(errorFields(e), "disk-usage eviction failed");
      }
    }
  }

  /** Flushes every active timeline with remote storage and waits (bounded) for its upload queue. */
  private async flushAndUpload(timeoutMs: number): Promise<void> {
    if (this.remoteStorage === undefined) return;
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), timeoutMs);
    try {
      await Promise.all(
        this.tenants.allTimelines().filter((tl) => tl.state === "active" && tl.remote !== undefined).map(async (tl) => {
          try {
            await tl.checkpoint(ac.signal);
            await tl.remote!.client.waitForQueueEmpty(ac.signal);
          } catch (e) {
            this.opts.log.warn({ tenant_id: tl.tenantId, timeline_id: tl.timelineId, ...errorFields(e) }, "uploads not complete at shutdown; the rest is uploaded at the next start");
          }
        }),
      );
    } finally {
      clearTimeout(timer);
    }
  }

  /** Graceful shutdown: stop intake, flush every timeline, stop everything (bounded). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.http?.close().catch(() => undefined);
    await this.pageService.close();
    for (const r of this.receivers.values()) await r.stop();
    this.receivers.clear();
    await this.tasks.shutdown({ kind: "compaction" }, SHUTDOWN_TIMEOUT_MS);
    await this.flushAndUpload(SHUTDOWN_UPLOAD_WAIT_MS);
    await this.tenants.shutdown({ flush: true });
    await this.tasks.close(SHUTDOWN_TIMEOUT_MS);
    await this.remoteStorage?.close().catch(() => undefined);
    this.opts.log.info("pageserver stopped");
  }
}
