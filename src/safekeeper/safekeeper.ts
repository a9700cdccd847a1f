/**
 * Safekeeper — one safekeeper process: its timelines, the WAL acceptors that
 * pull WAL from computes, the libpq WAL service and the HTTP API.
 *
 * Start-up (`Safekeeper.start`): open every timeline under the data
 * directory (each runs WAL crash recovery), start the WAL service and the
 * HTTP API, then an acceptor task for every timeline that has a registered
 * compute — a safekeeper restarted after `kill -9` reconnects to its compute
 * on its own, resuming at its recovered flush LSN.
 *
 * Tasks (DESIGN §8): acceptors run as TaskManager tasks owned by their
 * tenant/timeline; a new compute registration cancels and awaits the old
 * acceptor before starting the new one; deleting a timeline cancels its
 * tasks first. `stop()` closes listeners, cancels every task, waits for them
 * (bounded) and closes the timelines (storing progress).
 *
 * Extension point for consensus (src/safekeeper/consensus, peers.ts): pass
 * `extensions` — each may add HTTP routes before the server listens and
 * run its own start/stop around the safekeeper's. The consensus module uses
 * the Timeline's consensus-facing methods (snapshot, vote,
 * truncateAndSetHistory, appendWalFromPeer, readWal, setPeerFlushLsns,
 * setCommitLsn) and `sk.tasks` for its
 * own tasks. With no peers configured the safekeeper is the only member of
 * its timelines' sets and commit_lsn is its own flush record LSN.
 *
 * Storage I/O goes through InlineIoFS (inline_fs.ts: commit-path writes and
 * fsyncs on the event loop, config `wal_fsync`) unless a DurableFS is passed
 * (tests pass a FaultyFS).
 *
 * WAL offload (wal_backup.ts): with `remote_storage` configured (or a
 * RemoteStorage passed in, as tests do), every timeline gets a "backup"
 * task uploading its finished segments; retention then waits for
 * backup_lsn, and consumers asking for WAL older than the local segments
 * are served from remote storage. The storage is closed at stop.
 *
 * Timeline creation is serialized per id (the timeline directory's create is
 * not safe against a concurrent create of the same id).
 */
import type { FastifyInstance } from "fastify";
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import type { TenantId, TimelineId } from "../lib/id.js";
import { errorFields, silentLogger } from "../lib/logging.js";
import { createRegistry, type Registry } from "../lib/metrics.js";
import { sleep, TaskManager } from "../lib/tasks.js";
import type { SafekeeperConfig } from "./config.js";
import type { DurableFS } from "./durable_fs.js";
import { InlineIoFS } from "./inline_fs.js";
import { buildHttpApi } from "./http_api.js";
import { SafekeeperMetrics } from "./metrics.js";
import type { Term } from "./term_history.js";
import { Timeline, type ComputeRegistration, type TimelineCreateParams } from "./timeline.js";
import { TimelineStore } from "./timeline_dir.js";
import { CONNECT_TIMEOUT_MS, parseConnString, probeCompute, runWalAcceptor, timelineStartFor } from "./wal_acceptor.js";
import { WalService } from "./wal_service.js";
import { DEFAULT_WAL_RECEIVER_BIN, nativeReceiverAvailable } from "./native_receiver.js";
import type { Lsn } from "../lib/lsn.js";
import type { RemoteStorage } from "../remote_storage/remote_storage.js";
import { fetchRemoteSegment, runWalBackup } from "./wal_backup.js";

/** Bound on waiting for tasks at shutdown (below a supervisor's typical kill timeout). */
export const SHUTDOWN_TIMEOUT_MS = 10_000;

export interface SafekeeperExtension {
  readonly name: string;
  /** Adds routes to the HTTP API (called once, before it listens). */
  registerRoutes?(app: FastifyInstance, sk: Safekeeper): void;
  /** Called after the safekeeper is up. */
  start?(sk: Safekeeper): Promise<void>;
  /** Called first in `stop()`. */
  stop?(): Promise<void>;
}

export interface SafekeeperOptions {
  config: SafekeeperConfig;
  log?: Logger;
  registry?: Registry;
  fs?: DurableFS;
  extensions?: readonly SafekeeperExtension[];
  /** WAL offload target, instead of the one `config.remoteStorage` names (tests pass fault-injecting wrappers). */
  remoteStorage?: RemoteStorage;
}

/** How often old WAL segments are looked for; removal is cheap and nothing waits for it. */
export const WAL_RETENTION_INTERVAL_MS = 10_000;

function key(tenantId: string, timelineId: string): string {
  return `${tenantId}/${timelineId}`;
}

export class Safekeeper {
  readonly config: SafekeeperConfig;
  readonly log: Logger;
  readonly registry: Registry;
  readonly metrics: SafekeeperMetrics;
  readonly tasks: TaskManager;
  readonly fs: DurableFS;
  /** The native receiver binary the WAL acceptors run, or undefined: the commit loop runs in this process. */
  readonly nativeReceiverBin: string | undefined;
  private readonly timelines = new Map<string, Timeline>();
  private readonly creating = new Map<string, Promise<Timeline>>();
  private readonly acceptors = new Map<string, { cancel: () => void; done: Promise<void>; term: Term }>();
  private readonly extensions: readonly SafekeeperExtension[];
  /** Where WAL is offloaded; undefined = no offload. Set in start(), before any timeline opens. */
  remoteStorage: RemoteStorage | undefined;
  private walService: WalService | undefined;
  private http: FastifyInstance | undefined;
  private stopping = false;

  private constructor(opts: SafekeeperOptions) {
    this.config = opts.config;
    this.log = (opts.log ?? silentLogger()).child({ safekeeper_id: opts.config.id });
    this.registry = opts.registry ?? createRegistry({ labels: {} });
    this.metrics = new SafekeeperMetrics(this.registry);
    this.tasks = new TaskManager(this.log);
    this.fs = opts.fs ?? new InlineIoFS({ inlineFsync: opts.config.walFsync === "inline" });
    // The native receiver writes segment files itself: only over the real file system (a test's
    // fault-injecting DurableFS keeps the commit loop here), and only when it was built.
    if (opts.config.walReceiver === "native" && opts.fs === undefined) {
      if (nativeReceiverAvailable()) this.nativeReceiverBin = DEFAULT_WAL_RECEIVER_BIN;
      else this.log.warn({ bin: DEFAULT_WAL_RECEIVER_BIN }, "the native WAL receiver is not built (make -C walreceiver); the commit loop runs in this process");
    }
    this.extensions = opts.extensions ?? [];
    this.remoteStorage = opts.remoteStorage;
  }

  /** Opens the timelines and starts serving. On failure everything started is stopped again. */
  static async start(opts: SafekeeperOptions): Promise<Safekeeper> {
    const sk = new Safekeeper(opts);
    try {
      if (sk.remoteStorage === undefined && sk.config.remoteStorage !== undefined) {
        // Loaded on demand: the storage SDKs are large (see config.ts).
        const { createRemoteStorage, parseRemoteStorageConfig } = await import("../remote_storage/config.js");
        sk.remoteStorage = createRemoteStorage(parseRemoteStorageConfig(sk.config.remoteStorage));
      }
      await sk.fs.mkdir(sk.config.dataDir);
      for (const ref of await TimelineStore.list(sk.fs, sk.config.dataDir)) {
        const tl = await Timeline.open(ref.tenantId, ref.timelineId, sk.timelineOptions());
        sk.adopt(tl);
      }
      sk.walService = await WalService.start({
        host: sk.config.listenHost,
        port: sk.config.pgPort,
        resolveTimeline: (t, tl) => sk.resolveForWalService(t, tl),
        metrics: sk.metrics,
        log: sk.log,
        password: sk.config.password,
      });
      sk.http = buildHttpApi(sk);
      for (const ext of sk.extensions) ext.registerRoutes?.(sk.http, sk);
      await sk.http.listen({ host: sk.config.listenHost, port: sk.config.httpPort });
      for (const tl of sk.timelines.values()) sk.startAcceptor(tl);
      for (const ext of sk.extensions) await ext.start?.(sk);
      sk.tasks.spawn("other", { name: "wal_retention" }, (signal) => sk.retentionLoop(signal));
      sk.log.info({ pg_port: sk.pgPort, http_port: sk.httpPort, timelines: sk.timelines.size, data_dir: sk.config.dataDir }, "safekeeper started");
      return sk;
    } catch (e) {
      await sk.stop().catch(() => undefined);
      throw e;
    }
  }

  get pgPort(): number {
    return this.walService?.port ?? 0;
  }

  get httpPort(): number {
    const a = this.http?.server.address();
    return typeof a === "object" && a !== null ? a.port : 0;
  }

  /** This safekeeper alone decides commit_lsn (no peers). */
  get soloCommit(): boolean {
    return this.config.peers.length === 0;
  }

  private timelineOptions() {
    const storage = this.remoteStorage;
    return {
      fs: this.fs,
      root: this.config.dataDir,
      metrics: this.metrics,
      log: this.log,
      soloCommit: this.soloCommit,
      ...(storage === undefined
        ? {}
        : {
            remoteWal: {
              fetchSegment: (tenantId: TenantId, timelineId: TimelineId, segNo: bigint, walSegSizeBytes: number) =>
                fetchRemoteSegment(storage, tenantId, timelineId, segNo, walSegSizeBytes),
            },
          }),
    };
  }

  private adopt(tl: Timeline): void {
    this.timelines.set(key(tl.tenantId, tl.timelineId), tl);
    tl.events.on("compute", () => this.startAcceptor(tl));
    const storage = this.remoteStorage;
    if (storage !== undefined && !this.stopping) {
      this.tasks.spawn("backup", { tenantId: tl.tenantId, timelineId: tl.timelineId, name: `wal_backup ${key(tl.tenantId, tl.timelineId)}` }, (signal) =>
        runWalBackup(tl, { storage, metrics: this.metrics, log: this.log }, signal),
      );
    }
  }

  listTimelines(): Timeline[] {
    return [...this.timelines.values()];
  }

  findTimeline(tenantId: TenantId, timelineId: TimelineId): Timeline | undefined {
    return this.timelines.get(key(tenantId, timelineId));
  }

  /** The timeline, or not_found. */
  getTimeline(tenantId: TenantId, timelineId: TimelineId): Timeline {
    const tl = this.findTimeline(tenantId, timelineId);
    if (tl === undefined) throw new StrataError("not_found", `Timeline ${tenantId}/${timelineId} does not exist on safekeeper ${this.config.id}`);
    return tl;
  }

  private resolveForWalService(tenantId: string | undefined, timelineId: string | undefined): Timeline {
    if (tenantId !== undefined && timelineId !== undefined) return this.getTimeline(tenantId as TenantId, timelineId as TimelineId);
    const all = this.listTimelines();
    if (all.length === 1) return all[0]!;
    throw new StrataError(
      "not_found",
      `No timeline given and safekeeper ${this.config.id} holds ${all.length} timelines: pass options='-c tenant_id=<id> -c timeline_id=<id>' in the connection string`,
    );
  }

  /** Creates a timeline (invalid_argument if it exists). */
  createTimeline(params: TimelineCreateParams): Promise<Timeline> {
    const k = key(params.tenantId, params.timelineId);
    const pending = this.creating.get(k);
    if (pending !== undefined || this.timelines.has(k)) {
      return Promise.reject(new StrataError("invalid_argument", `Timeline ${k} already exists or is being created`));
    }
    const p = (async () => {
      this.checkRunning();
      const tl = await Timeline.create(params, this.timelineOptions());
      this.adopt(tl);
      this.log.info({ tenant_id: params.tenantId, timeline_id: params.timelineId, start_lsn: params.startLsn.toString(16) }, "timeline created");
      return tl;
    })().finally(() => this.creating.delete(k));
    this.creating.set(k, p);
    return p;
  }

  /**
   * Registers the compute of a timeline (creating the timeline from the
   * compute's identity when it does not exist yet: system id, version,
   * segment size, and the segment start of its slot's restart LSN).
   * StaleTermError for a term below the timeline's.
   */
  async registerCompute(
    tenantId: TenantId,
    timelineId: TimelineId,
    reg: { connstr: string; term: Term; startLsn: Lsn | undefined },
  ): Promise<{ timeline: Timeline; registration: ComputeRegistration; created: boolean }> {
    this.checkRunning();
    parseConnString(reg.connstr); // refuse a malformed connection string before anything changes
    let tl = this.findTimeline(tenantId, timelineId);
    let created = false;
    if (tl === undefined) {
      const k = key(tenantId, timelineId);
      const pending = this.creating.get(k);
      if (pending !== undefined) {
        tl = await pending;
      } else {
        let identity;
        try {
          identity = await probeCompute(reg.connstr, this.config.id, AbortSignal.timeout(CONNECT_TIMEOUT_MS * 2));
        } catch (e) {
          if (e instanceof StrataError && (e.code === "invalid_argument" || e.code === "unsupported")) throw e;
          throw new StrataError("unavailable", `Cannot reach the compute to create timeline ${k}: ${(e as Error).message}`, { cause: e });
        }
        tl = this.findTimeline(tenantId, timelineId) ?? (await this.createTimeline({
          tenantId,
          timelineId,
          systemId: identity.systemId,
          pgVersion: identity.pgVersion,
          walSegSizeBytes: identity.walSegSizeBytes,
          startLsn: timelineStartFor(identity),
        }));
        created = true;
      }
    }
    const registration = await tl.registerCompute(reg);
    return { timeline: tl, registration, created };
  }

  /** Starts (or restarts) the WAL acceptor for the timeline's registered compute. */
  private startAcceptor(tl: Timeline): void {
    const reg = tl.compute;
    if (reg === undefined || this.stopping || tl.isClosed) return;
    const k = key(tl.tenantId, tl.timelineId);
    const prev = this.acceptors.get(k);
    if (prev !== undefined && prev.term === reg.term) return;
    prev?.cancel();
    const after = prev?.done ?? Promise.resolve();
    const gate = after.then(() => undefined);
    const task = this.tasks.spawn("wal_acceptor", { tenantId: tl.tenantId, timelineId: tl.timelineId, name: `wal_acceptor ${k} term ${reg.term}` }, async (signal) => {
      await gate; // the previous connection is gone before the new one starts
      if (signal.aborted) return;
      await runWalAcceptor(
        { timeline: tl, registration: reg, safekeeperId: this.config.id, log: this.log, ...(this.nativeReceiverBin !== undefined ? { nativeReceiverBin: this.nativeReceiverBin } : {}) },
        signal,
      );
    });
    const entry = { cancel: task.cancel, done: task.done, term: reg.term };
    this.acceptors.set(k, entry);
    void task.done.then(() => {
      if (this.acceptors.get(k) === entry) this.acceptors.delete(k);
    });
  }

  /** Stops the timeline's tasks and removes it. */
  async deleteTimeline(tenantId: TenantId, timelineId: TimelineId): Promise<void> {
    const tl = this.getTimeline(tenantId, timelineId);
    const k = key(tenantId, timelineId);
    this.timelines.delete(k);
    this.acceptors.get(k)?.cancel();
    await this.tasks.shutdown({ tenantId, timelineId }, SHUTDOWN_TIMEOUT_MS);
    await tl.delete();
    this.log.info({ tenant_id: tenantId, timeline_id: timelineId }, "timeline deleted");
  }

  private checkRunning(): void {
    if (this.stopping) throw new StrataError("unavailable", `Safekeeper ${this.config.id} is shutting down`);
  }

  /**
   * WAL retention: every WAL_RETENTION_INTERVAL_MS, remove each timeline's
   * segments below its retention horizon (Timeline.retentionHorizonLsn). A
   * failure is logged and retried on the next round; it never stops serving.
   */
  private async retentionLoop(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await sleep(WAL_RETENTION_INTERVAL_MS, signal);
      for (const tl of this.timelines.values()) {
        await tl.removeOldWal().catch((e: unknown) => this.log.warn({ tenant_id: tl.tenantId, timeline_id: tl.timelineId, ...errorFields(e) }, "WAL retention failed"));
      }
    }
  }

  /** Graceful stop: extensions, listeners, tasks, then timelines (progress stored). Idempotent. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const ext of [...this.extensions].reverse()) {
      await ext.stop?.().catch((e: unknown) => this.log.warn({ extension: ext.name, ...errorFields(e) }, "extension stop failed"));
    }
    await this.http?.close().catch((e: unknown) => this.log.warn(errorFields(e), "HTTP API close failed"));
    const stuck = await this.tasks.close(SHUTDOWN_TIMEOUT_MS);
    await this.walService?.stop();
    for (const tl of this.timelines.values()) {
      await tl.close().catch((e: unknown) => this.log.warn({ tenant_id: tl.tenantId, timeline_id: tl.timelineId, ...errorFields(e) }, "timeline close failed"));
    }
    await this.remoteStorage?.close().catch((e: unknown) => this.log.warn(errorFields(e), "remote storage close failed"));
    this.log.info({ stuck_tasks: stuck.length }, "safekeeper stopped");
  }
}
