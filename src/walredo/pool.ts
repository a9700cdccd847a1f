/**
 * A tenant's pool of WAL redo helpers, and the manager that keeps tenants apart.
 *
 * Place in the data flow: the pageserver's read path (GetPage) collects a
 * base image and the WAL records above it, `reconstruct` (native_redo.ts)
 * applies what TypeScript can, and everything else comes here:
 *
 *   GetPage -> reconstruct -> WalRedoPool.apply -> WalRedoProcess -> helper (C)
 *
 * Scheduling
 * - Up to `processes` helpers, started lazily: the first request starts one;
 *   another starts only while every running helper is busy, so an idle tenant
 *   costs one process (or none before its first read).
 * - Each helper has at most `pipelineDepth` requests in flight; the rest wait
 *   in a FIFO queue of at most `maxQueuedRequests` (a full queue rejects with
 *   "unavailable" — back-pressure the page service turns into an error the
 *   compute retries, instead of unbounded memory).
 * - A long record chain is split into requests of at most
 *   MAX_REQUEST_RECORD_BYTES, chained through the intermediate page.
 *
 * Failures
 * - An ERROR reply (bad CRC, refused record, a redo routine's ERROR/PANIC)
 *   fails that request only; the helper keeps serving.
 * - A request in flight longer than `requestTimeoutMs` means a hung helper:
 *   it is killed. A helper that dies (or is killed) is replaced; each request
 *   that was in flight on it is retried once, *alone* on a helper (nothing
 *   else in flight there), so a request that kills helpers is identified
 *   exactly and fails on its second death without taking others with it.
 *   A request that fails twice gets an error naming both failures.
 * - Requests also time out while queued (same bound), so a pool whose helpers
 *   cannot start fails requests instead of hanging; a failed start is retried
 *   with exponential back-off, and when no helper is running the queued
 *   requests fail with the start-up error (e.g. the version check's message).
 *
 * Shutdown: `close()` (or the abort of `signal`, the pageserver's shutdown
 * signal) rejects queued requests with "cancelled", lets in-flight requests
 * finish (the helper answers everything it received before EOF on stdin),
 * then waits for every helper to exit and removes the stub directories —
 * after starting one helper in the directory of a slot whose last helper was
 * killed, which makes PostgreSQL reclaim the dead helper's shared memory.
 *
 * Cost: a request is one `Job` object that is also the helper's reply sink
 * (process.ts ReplySink), so the only promise per request is the one the
 * caller gets; an apply whose records fit one request is sent as it is;
 * descriptions for logs are built only when something is logged.
 *
 * Isolation: a pool belongs to one tenant and owns its helpers; helpers are
 * never handed between pools. `WalRedoManager` maps tenant ids to pools, so
 * one tenant's records can only ever reach that tenant's processes.
 */
import { join } from "node:path";
import { StrataError } from "../lib/errors.js";
import { defaultWalRedoMetrics, type WalRedoMetrics } from "./metrics.js";
import {
  WalRedoError,
  WalRedoProcess,
  WalRedoProcessError,
  reclaimAfterCrash,
  silentLogger,
  type ReplySink,
  type WalRedoLogger,
  type WalRedoProcessOptions,
} from "./process.js";
import {
  applyPayloadBytes,
  describeRecords,
  describeTarget,
  type ApplyRequest,
  type MaskRequest,
  type Reply,
  type Request,
  type RedoRecord,
  type TestHookOp,
} from "./protocol.js";
import { createStubDir, defaultRunAsUser, defaultWalRedoDir, DEFAULT_PG_BIN_DIR, ensureStubTemplate, removeStubDir, type RunAsUser, type StubTemplate } from "./stub.js";

/** More helpers than this per tenant would starve other tenants on a small machine. */
export const MAX_PROCESSES_PER_POOL = 16;
/** Default in-flight requests per helper: enough to hide pipe wake-ups (≈70k req/s at 8). */
export const DEFAULT_PIPELINE_DEPTH = 16;
/** Default queue bound: ~10k pending reads is far past any healthy backlog. */
export const DEFAULT_MAX_QUEUED_REQUESTS = 10_000;
/**
 * Default time a request may wait or run. Replay of even thousands of records
 * takes milliseconds; seconds mean a hung helper or a pool that cannot start.
 */
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
/**
 * Records per request are cut at this many bytes; longer chains become several
 * requests chained through the intermediate page. Far below the frame limit
 * so one request never holds much memory on either side.
 */
export const MAX_REQUEST_RECORD_BYTES = 8 * 1024 * 1024;
/** The timeout watchdog runs every requestTimeoutMs / 4, within these bounds. */
const WATCHDOG_MIN_INTERVAL_MS = 10;
const WATCHDOG_MAX_INTERVAL_MS = 1_000;
/** Attempts per request: the first, and one retry after its helper died. */
const MAX_ATTEMPTS = 2;
/** Back-off after failed helper starts: 100 ms doubling up to 5 s. */
const START_BACKOFF_BASE_MS = 100;
const START_BACKOFF_MAX_MS = 5_000;

export interface WalRedoPoolOptions {
  readonly tenantId: string;
  /** The tenant's cluster has data checksums (selects the stub template). */
  readonly dataChecksums: boolean;
  readonly walLogHints?: boolean;
  /** Helpers at most (default 1). */
  readonly processes?: number;
  readonly pipelineDepth?: number;
  readonly maxQueuedRequests?: number;
  readonly requestTimeoutMs?: number;
  /** Split record chains into requests of at most this many bytes (default MAX_REQUEST_RECORD_BYTES). */
  readonly maxRequestRecordBytes?: number;
  readonly startTimeoutMs?: number;
  readonly closeTimeoutMs?: number;
  /** Aborting it closes the pool (the pageserver's shutdown signal). */
  readonly signal?: AbortSignal;
  readonly metrics?: WalRedoMetrics;
  readonly logger?: WalRedoLogger;
  /** Directory for stub directories (default: per-uid dir under the temp dir). */
  readonly baseDir?: string;
  /** Directory for cached stub templates (default: per-uid dir under the temp dir, shared by all pools). */
  readonly templateCacheDir?: string;
  readonly pgBinDir?: string;
  readonly extensionPath?: string;
  /** User helpers run as; default: `postgres` when we are root, else ourselves. */
  readonly runAs?: RunAsUser | null;
  /** Accept fault-injection requests (tests only). */
  readonly testHooks?: boolean;
}

type Kind = "apply" | "mask" | "stats" | "test";

/** What a pool does when a job's helper answers or fails (one object per pool, not per job). */
interface JobEvents {
  replied(job: Job, reply: Reply): void;
  failed(job: Job, err: Error): void;
}

/** One request through the pool: queued, in flight on a slot, retried, settled. */
class Job implements ReplySink {
  attempts = 0;
  /** Retried after its helper died: runs alone on a helper. */
  isolated = false;
  settled = false;
  /** performance.now() by which it must be dispatched (queued) or answered (in flight). */
  deadlineMs: number;
  /** The slot it is in flight on, while it is. */
  runningOn: Slot | undefined = undefined;
  /** pid of the helper it was last sent to (logs). */
  runningPid = 0;
  firstFailure: Error | undefined = undefined;

  constructor(
    private readonly events: JobEvents,
    readonly kind: Kind,
    readonly request: Request,
    readonly records: number,
    readonly startedAtMs: number,
    timeoutMs: number,
    /** Settles the caller's promise: a page for apply and mask, the reply otherwise. */
    readonly resolve: (value: Reply | Uint8Array) => void,
    readonly reject: (e: Error) => void,
    /** Only this slot may run it (stats of one helper, tests). */
    readonly slotIndex: number | undefined,
  ) {
    this.deadlineMs = startedAtMs + timeoutMs;
  }

  replied(reply: Reply): void {
    this.events.replied(this, reply);
  }

  failed(err: Error): void {
    this.events.failed(this, err);
  }

  /** For messages and logs; built only when needed (formatting LSNs costs more than a replay). */
  describe(): string {
    const r = this.request;
    switch (r.type) {
      case "apply":
        return `apply to ${describeTarget(r.apply.target)} (${describeRecords(r.apply.records)})`;
      case "mask":
        return `mask of block ${r.mask.blockNumber} with rmgr ${r.mask.rmid}`;
      case "stats":
        return "stats";
      case "test":
        return `test hook ${r.test.op}`;
    }
  }
}

interface Slot {
  readonly index: number;
  stubDir: string | undefined;
  proc: WalRedoProcess | undefined;
  starting: boolean;
  /** A retried (isolated) request is in flight: nothing else may be sent. */
  isolatedBusy: boolean;
  /** Requests in flight on the helper, oldest first (the helper answers in order). */
  readonly inFlight: Job[];
  startFailures: number;
  /** The slot's last helper died abnormally: its shared memory must be reclaimed before the stub goes. */
  crashed: boolean;
  nextStartAtMs: number;
  lastStartError: Error | undefined;
}

export interface WalRedoProcessInfo {
  readonly slot: number;
  readonly pid: number;
  readonly inFlight: number;
}

export class WalRedoPool {
  readonly tenantId: string;
  readonly dataChecksums: boolean;
  private readonly opts: WalRedoPoolOptions;
  private readonly size: number;
  private readonly depth: number;
  private readonly maxQueued: number;
  private readonly timeoutMs: number;
  private readonly metrics: WalRedoMetrics;
  private readonly logger: WalRedoLogger;
  private readonly baseDir: string;
  private readonly runAs: RunAsUser | null;
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private readonly retryQueue: Job[] = [];
  private template: Promise<StubTemplate> | undefined;
  private closing = false;
  private closed: Promise<void> | undefined;
  private startTimer: NodeJS.Timeout | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private readonly watchdogIntervalMs: number;
  private readonly onAbort = () => void this.close();
  private readonly jobEvents: JobEvents = {
    replied: (job, reply) => this.onJobReplied(job, reply),
    failed: (job, err) => this.onJobFailed(job, err),
  };

  constructor(opts: WalRedoPoolOptions) {
    const size = opts.processes ?? 1;
    if (!Number.isInteger(size) || size < 1 || size > MAX_PROCESSES_PER_POOL) {
      throw new StrataError("invalid_argument", `walredo pool size ${size} is not in 1..${MAX_PROCESSES_PER_POOL}`);
    }
    const depth = opts.pipelineDepth ?? DEFAULT_PIPELINE_DEPTH;
    if (!Number.isInteger(depth) || depth < 1) throw new StrataError("invalid_argument", `walredo pipeline depth ${depth} must be a positive integer`);
    this.tenantId = opts.tenantId;
    this.dataChecksums = opts.dataChecksums;
    this.opts = opts;
    this.size = size;
    this.depth = depth;
    this.maxQueued = opts.maxQueuedRequests ?? DEFAULT_MAX_QUEUED_REQUESTS;
    this.timeoutMs = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.watchdogIntervalMs = Math.max(WATCHDOG_MIN_INTERVAL_MS, Math.min(WATCHDOG_MAX_INTERVAL_MS, this.timeoutMs / 4));
    this.metrics = opts.metrics ?? defaultWalRedoMetrics();
    this.logger = opts.logger ?? silentLogger;
    this.baseDir = opts.baseDir ?? defaultWalRedoDir();
    this.runAs = opts.runAs === undefined ? defaultRunAsUser() : opts.runAs;
    for (let i = 0; i < size; i++) {
      this.slots.push({ index: i, stubDir: undefined, proc: undefined, starting: false, isolatedBusy: false, inFlight: [], startFailures: 0, crashed: false, nextStartAtMs: 0, lastStartError: undefined });
    }
    if (opts.signal?.aborted) this.closing = true;
    opts.signal?.addEventListener("abort", this.onAbort, { once: true });
  }

  /**
   * Replays `records` onto the target page (from `basePage`, or from nothing
   * when the first record initializes it) and returns the new page.
   */
  apply(req: ApplyRequest): Promise<Uint8Array> {
    const maxBytes = this.opts.maxRequestRecordBytes ?? MAX_REQUEST_RECORD_BYTES;
    if (fitsOneRequest(req.records, maxBytes)) return this.submit<Uint8Array>("apply", { type: "apply", apply: req }, req.records.length);
    return this.applyInChunks(req, maxBytes);
  }

  private async applyInChunks(req: ApplyRequest, maxBytes: number): Promise<Uint8Array> {
    const chunks = splitRecords(req.records, maxBytes);
    let base = req.basePage;
    let page: Uint8Array | undefined;
    for (let i = 0; i < chunks.length; i++) {
      const last = i === chunks.length - 1;
      const chunk: ApplyRequest = { target: req.target, records: chunks[i]!, setChecksum: last && (req.setChecksum ?? false), ...(base ? { basePage: base } : {}) };
      page = await this.submit<Uint8Array>("apply", { type: "apply", apply: chunk }, chunk.records.length);
      base = page;
    }
    return page!;
  }

  /** The page after the resource manager's mask routine (consistency checks). */
  mask(req: MaskRequest): Promise<Uint8Array> {
    return this.submit<Uint8Array>("mask", { type: "mask", mask: req }, 0);
  }

  /** Statistics of every running helper (starts one if none runs). */
  async stats(): Promise<(Readonly<Record<string, number>> & { pid: number; slot: number })[]> {
    const running = this.slots.filter((s) => s.proc?.alive);
    const targets = running.length > 0 ? running.map((s) => s.index) : [undefined];
    return Promise.all(
      targets.map(async (slotIndex) => {
        const r = await this.submit<Reply>("stats", { type: "stats" }, 0, slotIndex);
        if (r.type !== "stats") throw new StrataError("protocol_violation", `walredo stats: unexpected ${r.type} reply`);
        const slot = slotIndex ?? 0;
        return { ...r.stats, pid: this.slots[slot]?.proc?.pid ?? -1, slot };
      }),
    );
  }

  /** Fault injection (pool created with testHooks). */
  async testHook(op: TestHookOp, arg = 0, slotIndex?: number): Promise<void> {
    await this.submit<Reply>("test", { type: "test", test: { op, arg } }, 0, slotIndex);
  }

  /** Running helpers (tests, diagnostics). */
  processes(): WalRedoProcessInfo[] {
    return this.slots.flatMap((s) => (s.proc?.alive ? [{ slot: s.index, pid: s.proc.pid, inFlight: s.proc.inFlightCount }] : []));
  }

  /** The helper in a slot (tests: kill or stop it). */
  processInSlot(slotIndex: number): WalRedoProcess | undefined {
    return this.slots[slotIndex]?.proc;
  }

  get queuedCount(): number {
    return this.queue.length + this.retryQueue.length;
  }

  /** Orderly shutdown; idempotent. */
  close(): Promise<void> {
    this.closed ??= this.shutdown();
    return this.closed;
  }

  // ------------------------------------------------------------ internals

  /** Queues one request; resolves with a page (apply, mask) or the reply (stats, test). */
  private submit<T extends Reply | Uint8Array>(kind: Kind, request: Request, records: number, slotIndex?: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const job = new Job(this.jobEvents, kind, request, records, performance.now(), this.timeoutMs, resolve as (v: Reply | Uint8Array) => void, reject, slotIndex);
      if (this.closing) {
        this.metrics.countRequest(kind, "cancelled");
        reject(new StrataError("cancelled", `walredo pool of tenant ${this.tenantId} is shut down; ${job.describe()} not run`));
        return;
      }
      if (this.queue.length >= this.maxQueued) {
        this.metrics.countRequest(kind, "rejected");
        this.metrics.errors.inc({ code: "unavailable" });
        reject(new StrataError("unavailable", `walredo pool of tenant ${this.tenantId} has ${this.queue.length} queued requests (limit ${this.maxQueued}); ${job.describe()} rejected`));
        return;
      }
      this.queue.push(job);
      this.armWatchdog();
      this.pump();
    });
  }

  /**
   * Timeouts are checked by one periodic watchdog instead of a timer per
   * request (two timers per request cost more than the replay itself). A
   * request therefore times out between `requestTimeoutMs` and
   * `requestTimeoutMs + watchdogIntervalMs` after its deadline was set.
   */
  private armWatchdog(): void {
    if (this.watchdog || this.closing) return;
    this.watchdog = setInterval(() => this.checkDeadlines(), this.watchdogIntervalMs);
    this.watchdog.unref();
  }

  private checkDeadlines(): void {
    const now = performance.now();
    for (const list of [this.queue, this.retryQueue]) {
      for (const job of list.filter((j) => j.deadlineMs <= now)) {
        removeFrom(list, job);
        const startErr = this.slots.find((s) => s.lastStartError)?.lastStartError;
        this.fail(job, new StrataError("timeout", `walredo ${job.describe()} waited ${this.timeoutMs} ms without a free helper${startErr ? `; last start-up error: ${startErr.message}` : ""}`, { cause: startErr }), "timeout");
      }
    }
    // In flight too long: the helper is hung. Killing it fails every request
    // in flight there with processDied, which retries them (this one too).
    for (const slot of this.slots) {
      const late = slot.inFlight.find((j) => j.deadlineMs <= now);
      if (late && slot.proc?.alive) {
        this.logger.warn({ tenantId: this.tenantId, pid: slot.proc.pid, request: late.describe(), timeoutMs: this.timeoutMs }, "walredo request timed out; killing the helper");
        slot.proc.kill(`timeout: a ${late.kind} request ran longer than ${this.timeoutMs} ms`);
      }
    }
    const busy = this.queue.length > 0 || this.retryQueue.length > 0 || this.slots.some((s) => s.inFlight.length > 0);
    if (!busy && this.watchdog) {
      clearInterval(this.watchdog);
      this.watchdog = undefined;
    }
  }

  private pump(): void {
    if (this.closing) return;
    // Retries first, each alone on an idle helper.
    while (this.retryQueue.length > 0) {
      const job = this.retryQueue[0]!;
      const slot = this.slots.find((s) => s.proc?.alive && s.proc.inFlightCount === 0 && !s.isolatedBusy && (job.slotIndex === undefined || job.slotIndex === s.index));
      if (!slot) break;
      this.retryQueue.shift();
      this.dispatch(job, slot);
    }
    // While a retry waits for an idle helper, send nothing new: helpers drain
    // and the retry cannot starve.
    while (this.queue.length > 0 && this.retryQueue.length === 0) {
      const job = this.queue[0]!;
      const slot = this.pickSlot(job.slotIndex);
      if (!slot) break;
      this.queue.shift();
      this.dispatch(job, slot);
    }
    if (this.queue.length > 0 || this.retryQueue.length > 0) this.maybeStartHelper();
  }

  /** The least-loaded running helper with room, if any. */
  private pickSlot(only: number | undefined): Slot | undefined {
    let best: Slot | undefined;
    for (const s of this.slots) {
      if (only !== undefined && s.index !== only) continue;
      if (!s.proc?.alive || s.isolatedBusy) continue;
      const n = s.proc.inFlightCount;
      if (n >= this.depth) continue;
      if (!best || n < best.proc!.inFlightCount) best = s;
    }
    return best;
  }

  private maybeStartHelper(): void {
    if (this.slots.some((s) => s.starting)) return;
    const anyIdle = this.slots.some((s) => s.proc?.alive && s.proc.inFlightCount === 0 && !s.isolatedBusy);
    const pinned = this.retryQueue.find((j) => j.slotIndex !== undefined) ?? this.queue.find((j) => j.slotIndex !== undefined);
    let slot: Slot | undefined;
    if (pinned && !this.slots[pinned.slotIndex!]?.proc?.alive) slot = this.slots[pinned.slotIndex!];
    else if (!anyIdle) slot = this.slots.find((s) => !s.proc);
    if (!slot) return;
    const waitMs = slot.nextStartAtMs - Date.now();
    if (waitMs > 0) {
      if (!this.startTimer) {
        this.startTimer = setTimeout(() => {
          this.startTimer = undefined;
          this.pump();
        }, waitMs);
      }
      return;
    }
    void this.startHelper(slot);
  }

  private async startHelper(slot: Slot): Promise<void> {
    slot.starting = true;
    try {
      this.template ??= ensureStubTemplate({
        dataChecksums: this.opts.dataChecksums,
        cacheDir: this.opts.templateCacheDir ?? defaultWalRedoDir(),
        pgBinDir: this.opts.pgBinDir ?? DEFAULT_PG_BIN_DIR,
        runAs: this.runAs,
      });
      const template = await this.template.catch((e: unknown) => {
        this.template = undefined; // try initdb again next time
        throw e;
      });
      slot.stubDir ??= await createStubDir(template, join(this.baseDir, "stubs"), this.runAs);
      const proc = await WalRedoProcess.start(this.processOptions(slot.stubDir));
      if (this.closing) {
        await proc.close(this.opts.closeTimeoutMs);
        return;
      }
      slot.proc = proc;
      slot.crashed = false;
      slot.startFailures = 0;
      slot.lastStartError = undefined;
      this.metrics.processes.inc();
      proc.onceExited((info) => {
        slot.proc = undefined;
        slot.isolatedBusy = false;
        slot.crashed = info.code !== 0;
        this.metrics.processes.dec();
        if (!this.closing) {
          const reason = info.reason?.startsWith("timeout") ? "timeout" : info.reason?.startsWith("protocol") ? "protocol" : "died";
          this.metrics.restarts.inc({ reason });
          this.logger.warn({ tenantId: this.tenantId, slot: slot.index, code: info.code, signal: info.signal, reason: info.reason }, "walredo helper ended; it will be replaced when needed");
          // microtask: the in-flight rejections (retries) run first
          queueMicrotask(() => this.pump());
        }
      });
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      slot.startFailures++;
      slot.lastStartError = err;
      slot.nextStartAtMs = Date.now() + Math.min(START_BACKOFF_BASE_MS * 2 ** (slot.startFailures - 1), START_BACKOFF_MAX_MS);
      this.logger.warn({ tenantId: this.tenantId, slot: slot.index, err: err.message, failures: slot.startFailures }, "walredo helper failed to start");
      // Nobody can serve the queue: fail it with the reason instead of
      // letting every request run into its timeout.
      if (!this.slots.some((s) => s.proc?.alive)) {
        for (const job of [...this.retryQueue.splice(0), ...this.queue.splice(0)]) {
          this.fail(job, new WalRedoProcessError(err instanceof StrataError ? err.code : "io_error", `walredo ${job.describe()} failed: no helper could be started: ${err.message}`, false, { cause: err }), "process_failure");
        }
      }
    } finally {
      slot.starting = false;
    }
    this.pump();
  }

  private processOptions(stubDir: string): WalRedoProcessOptions {
    return {
      stubDir,
      dataChecksums: this.opts.dataChecksums,
      walLogHints: this.opts.walLogHints ?? false,
      runAs: this.runAs,
      pgBinDir: this.opts.pgBinDir ?? DEFAULT_PG_BIN_DIR,
      ...(this.opts.extensionPath ? { extensionPath: this.opts.extensionPath } : {}),
      testHooks: this.opts.testHooks ?? false,
      ...(this.opts.startTimeoutMs ? { startTimeoutMs: this.opts.startTimeoutMs } : {}),
      logger: this.logger,
      tenantId: this.tenantId,
    };
  }

  private dispatch(job: Job, slot: Slot): void {
    const proc = slot.proc!;
    job.attempts++;
    job.runningOn = slot;
    job.runningPid = proc.pid;
    job.deadlineMs = performance.now() + this.timeoutMs;
    slot.inFlight.push(job);
    if (job.isolated) slot.isolatedBusy = true;
    if (job.kind === "apply") this.metrics.records.inc(job.records);
    const err = proc.enqueue(job.request, job.kind, job);
    // asynchronously, as every other outcome: pump() is not re-entered from dispatch
    if (err) queueMicrotask(() => job.failed(err));
  }

  /** The job is no longer in flight on its slot. */
  private landed(job: Job): void {
    const slot = job.runningOn;
    job.runningOn = undefined;
    if (!slot) return;
    removeFrom(slot.inFlight, job);
    if (job.isolated) slot.isolatedBusy = false;
  }

  private onJobReplied(job: Job, reply: Reply): void {
    this.landed(job);
    if (job.kind === "apply" || job.kind === "mask") {
      if (reply.type === "page") this.succeed(job, reply.page);
      else this.fail(job, new StrataError("protocol_violation", `walredo ${job.describe()}: expected a page reply, got ${reply.type}`), "process_failure");
    } else {
      this.succeed(job, reply);
    }
    this.pump();
  }

  private onJobFailed(job: Job, err: Error): void {
    this.landed(job);
    this.onDispatchFailure(job, err, job.runningPid);
    this.pump();
  }

  private onDispatchFailure(job: Job, err: Error, pid: number): void {
    if (job.settled) return;
    if (err instanceof WalRedoProcessError && err.processDied && !this.closing) {
      if (job.attempts < MAX_ATTEMPTS) {
        job.firstFailure = err;
        job.isolated = true;
        job.deadlineMs = performance.now() + this.timeoutMs;
        this.retryQueue.push(job);
        this.logger.info({ tenantId: this.tenantId, pid, request: job.describe() }, "walredo helper died with the request in flight; retrying it once");
        return;
      }
      this.fail(
        job,
        new WalRedoProcessError(
          err.code,
          `walredo ${job.describe()} failed: the helper ended twice while running it (first: ${job.firstFailure?.message ?? "?"}; then: ${err.message})`,
          true,
          { cause: err },
        ),
        err.code === "timeout" ? "timeout" : "process_failure",
      );
      return;
    }
    if (err instanceof WalRedoProcessError && this.closing) {
      this.fail(job, new StrataError("cancelled", `walredo pool of tenant ${this.tenantId} shut down while ${job.describe()} was running`, { cause: err }), "cancelled");
      return;
    }
    this.fail(job, err, err instanceof WalRedoError ? "error" : "process_failure");
  }

  private succeed(job: Job, reply: Reply | Uint8Array): void {
    if (job.settled) return;
    job.settled = true;
    this.metrics.countRequest(job.kind, "ok", (performance.now() - job.startedAtMs) / 1000);
    job.resolve(reply);
  }

  private fail(job: Job, err: Error, result: string): void {
    if (job.settled) return;
    job.settled = true;
    this.metrics.countRequest(job.kind, result, (performance.now() - job.startedAtMs) / 1000);
    this.metrics.errors.inc({ code: err instanceof StrataError ? err.code : "internal" });
    job.reject(err);
  }

  private async shutdown(): Promise<void> {
    this.closing = true;
    this.opts.signal?.removeEventListener("abort", this.onAbort);
    clearTimeout(this.startTimer);
    clearInterval(this.watchdog);
    this.watchdog = undefined;
    for (const job of [...this.retryQueue.splice(0), ...this.queue.splice(0)]) {
      this.fail(job, new StrataError("cancelled", `walredo pool of tenant ${this.tenantId} shut down; ${job.describe()} not run`), "cancelled");
    }
    // wait for starts in progress to notice `closing`
    while (this.slots.some((s) => s.starting)) await new Promise((r) => setTimeout(r, 5));
    await Promise.all(
      this.slots.map(async (s) => {
        if (s.proc) {
          const info = await s.proc.close(this.opts.closeTimeoutMs);
          s.crashed = info.code !== 0;
        }
        if (s.stubDir && s.crashed) await reclaimAfterCrash(this.processOptions(s.stubDir));
        if (s.stubDir) await removeStubDir(s.stubDir);
        s.stubDir = undefined;
      }),
    );
  }
}

/** Manager of all tenants' pools: one pool per tenant, never shared. */
export class WalRedoManager {
  private readonly pools = new Map<string, WalRedoPool>();
  private closing = false;

  constructor(private readonly defaults: Omit<WalRedoPoolOptions, "tenantId" | "dataChecksums"> = {}) {}

  /** The tenant's pool, created on first use with the tenant's checksum setting. */
  pool(tenantId: string, settings: { dataChecksums: boolean; walLogHints?: boolean }): WalRedoPool {
    if (this.closing) throw new StrataError("cancelled", "walredo manager is shut down");
    let p = this.pools.get(tenantId);
    if (p && p.dataChecksums !== settings.dataChecksums) {
      throw new StrataError("invalid_argument", `tenant ${tenantId}'s walredo pool runs with data checksums ${settings.dataChecksums ? "off" : "on"}; detach the tenant first`);
    }
    if (!p) {
      p = new WalRedoPool({ ...this.defaults, tenantId, ...settings });
      this.pools.set(tenantId, p);
    }
    return p;
  }

  /** Shuts one tenant's pool down (tenant detach). */
  async detach(tenantId: string): Promise<void> {
    const p = this.pools.get(tenantId);
    this.pools.delete(tenantId);
    await p?.close();
  }

  async close(): Promise<void> {
    this.closing = true;
    const all = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(all.map((p) => p.close()));
  }
}

/** The records fit one request (what splitRecords would leave in one piece), without building arrays. */
function fitsOneRequest(records: readonly RedoRecord[], maxBytes: number): boolean {
  if (records.length <= 1) return true;
  let bytes = 0;
  for (const r of records) {
    bytes += r.raw.length + 20;
    if (bytes > maxBytes) return false;
  }
  return true;
}

function removeFrom(list: Job[], job: Job): boolean {
  if (list[0] === job) {
    list.shift();
    return true;
  }
  const i = list.indexOf(job);
  if (i < 0) return false;
  list.splice(i, 1);
  return true;
}

/** Splits a record chain into runs of at most MAX_REQUEST_RECORD_BYTES (at least one record each). */
export function splitRecords(records: readonly RedoRecord[], maxBytes = MAX_REQUEST_RECORD_BYTES): RedoRecord[][] {
  if (records.length === 0) return [[]];
  const out: RedoRecord[][] = [];
  let cur: RedoRecord[] = [];
  let bytes = 0;
  for (const r of records) {
    const n = r.raw.length + 20;
    if (cur.length > 0 && bytes + n > maxBytes) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(r);
    bytes += n;
  }
  out.push(cur);
  return out;
}

/** For callers sizing requests: payload bytes of one apply. */
export { applyPayloadBytes };
