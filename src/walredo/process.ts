/**
 * One walredo helper process: spawn, handshake, pipelined requests, exit.
 *
 * A `WalRedoProcess` owns exactly one single-user PostgreSQL backend running
 * the strata_walredo extension (walredo/), talking the protocol in
 * protocol.ts over its stdin/stdout. It is the unit the pool (pool.ts)
 * schedules, restarts and kills; it makes no policy decisions itself — no
 * retries, no timeouts, no restarts.
 *
 * Invariants and behaviour:
 * - Requests are written in submission order and the helper replies in the
 *   same order, so in-flight requests form a FIFO; a reply whose id is not
 *   the oldest in-flight id is a protocol violation and kills the process
 *   (it can no longer be trusted).
 * - Start-up is bounded (`startTimeoutMs`): the process must send HELLO, and
 *   HELLO must show the protocol version we speak, 8 KiB pages, the exact
 *   PostgreSQL version the extension was built for and the data-checksum
 *   setting we asked for. If the helper exits first (e.g. the extension's own
 *   version check), the error carries the tail of its stderr.
 * - When the process exits, every in-flight request is rejected with a
 *   `WalRedoProcessError` (code "io_error", `processDied`), which the pool may
 *   retry; an ERROR reply is a `WalRedoError` and is final for that request.
 * - stderr is always drained (a full pipe would block the helper) into a
 *   bounded ring kept for error messages, and forwarded to the logger.
 * - The child runs with a minimal environment, as the run-as user when we are
 *   root, in its own stub directory (stub.ts); a killed helper's lock file is
 *   removed so its slot can restart in the same directory.
 * - `close()` ends stdin: the helper finishes what it has received, replies,
 *   and exits 0. After `closeTimeoutMs` it is killed.
 *
 * Cost per request (the helper spends ≈6 µs on a pipelined single-record
 * replay, so the Node side must stay in the same range to reach 50k req/s):
 * - Requests are encoded into one batch buffer (protocol.ts RequestWriter)
 *   that is written once per event-loop turn, in a setImmediate: every
 *   request submitted while handling a read of replies — including those
 *   submitted by promise continuations of the replies — leaves in one pipe
 *   write. The batch buffers are reused once their write has completed.
 * - Replies are parsed in place in the read chunks (FrameDecoder) and handed
 *   to a `ReplySink` — a plain callback object, no promise per request; the
 *   pool's jobs are sinks. `send()` wraps a sink in a promise for callers
 *   that want one.
 */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { fileURLToPath } from "node:url";
import { StrataError, type ErrorCode } from "../lib/errors.js";
import {
  FrameDecoder,
  PAGE_SIZE_BYTES,
  PROTOCOL_VERSION,
  RequestWriter,
  decodeReply,
  type ApplyRequest,
  type ErrorReply,
  type Hello,
  type MaskRequest,
  type Frame,
  type Reply,
  type Request,
  type TestHookOp,
} from "./protocol.js";
import { clearStaleLock, DEFAULT_PG_BIN_DIR, type RunAsUser } from "./stub.js";

/** The extension this checkout builds (`make -C walredo`), next to the sources. */
export const DEFAULT_EXTENSION_PATH = process.env.STRATA_WALREDO_SO ?? fileURLToPath(new URL("../../../walredo/strata_walredo.so", import.meta.url));

/** Start-up normally takes 15-25 ms; a loaded CI machine can take much longer. */
export const DEFAULT_START_TIMEOUT_MS = 20_000;
/** How long an orderly close waits for the helper to exit before killing it. */
export const DEFAULT_CLOSE_TIMEOUT_MS = 5_000;
/** stderr kept for error messages: enough for a FATAL with hint and context. */
const STDERR_RING_BYTES = 8 * 1024;
/**
 * shared_buffers of a helper. The extension keeps the pool at most half full,
 * so half of this (128 pages) bounds what one record may touch: far above
 * the 33 blocks a record can reference plus their FSM and VM pages.
 */
const SHARED_BUFFERS = "2MB";

/** Minimal logger (pino-compatible subset). */
export interface WalRedoLogger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

export const silentLogger: WalRedoLogger = { warn() {}, info() {}, debug() {} };

/** SQLSTATE of an error reply → strata error code. */
function codeForSqlstate(sqlstate: string): ErrorCode {
  switch (sqlstate) {
    case "XX001": // data_corrupted: bad CRC, truncated or undecodable record
    case "XX000": // internal_error: a redo routine rejected the page or record
      return "corrupt_data";
    case "0A000": // feature_not_supported: refused record type
      return "unsupported";
    case "22023": // invalid_parameter_value
    case "54000": // program_limit_exceeded
      return "invalid_argument";
    case "08P01":
      return "protocol_violation";
    default:
      return "internal";
  }
}

/** The helper answered a request with an error: final for that request. */
export class WalRedoError extends StrataError {
  override name = "WalRedoError";
  readonly sqlstate: string;
  readonly recordIndex: number | undefined;
  readonly panicCaught: boolean;
  readonly context: string;
  constructor(reply: ErrorReply, what: string) {
    const at = reply.recordIndex !== undefined ? ` (record ${reply.recordIndex} of the request)` : "";
    const ctx = reply.context ? `; ${reply.context}` : "";
    const panic = reply.panicCaught ? " [PANIC in redo caught]" : "";
    super(codeForSqlstate(reply.sqlstate), `walredo ${what} failed${at}: ${reply.message}${ctx}${panic} (SQLSTATE ${reply.sqlstate})`);
    this.sqlstate = reply.sqlstate;
    this.recordIndex = reply.recordIndex;
    this.panicCaught = reply.panicCaught;
    this.context = reply.context;
  }
}

/** The helper process failed: could not start, died, or was killed. */
export class WalRedoProcessError extends StrataError {
  override name = "WalRedoProcessError";
  constructor(
    code: ErrorCode,
    message: string,
    /** The process is gone; a request that was in flight may be retried elsewhere. */
    readonly processDied: boolean,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
  }
}

export interface WalRedoProcessOptions {
  /** Stub data directory (stub.ts) this process may use exclusively. */
  readonly stubDir: string;
  /** Must match the stub's pg_control; checked against HELLO. */
  readonly dataChecksums: boolean;
  /** The cluster's wal_log_hints (with dataChecksums, decides XLogHintBitIsNeeded() in redo); checked against HELLO. */
  readonly walLogHints?: boolean;
  readonly runAs: RunAsUser | null;
  readonly pgBinDir?: string;
  readonly extensionPath?: string;
  /** Accept fault-injection requests (tests only). */
  readonly testHooks?: boolean;
  readonly startTimeoutMs?: number;
  readonly logger?: WalRedoLogger;
  /** For logs: whose records this process serves. */
  readonly tenantId?: string;
}

/**
 * Receives the outcome of one request: exactly one of the two is called,
 * once, never synchronously from `enqueue`. An ERROR reply arrives as
 * `failed(WalRedoError)`, the helper's death as `failed(WalRedoProcessError)`.
 */
export interface ReplySink {
  replied(reply: Reply): void;
  failed(err: Error): void;
}

interface Pending {
  readonly id: number;
  readonly what: string;
  readonly sink: ReplySink;
}

export interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** Why strata ended it, if it did ("timeout", "close", "protocol violation"…). */
  readonly reason: string | undefined;
}

export class WalRedoProcess {
  private helloInfo: Hello | undefined;
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly decoder = new FrameDecoder();
  private readonly writer = new RequestWriter();
  private flushScheduled = false;
  private protocolBroken = false;
  private readonly inFlight: Pending[] = [];
  private inFlightHead = 0;
  private nextId = 1;
  private stderrRing = "";
  private exitInfo: ExitInfo | undefined;
  private killReason: string | undefined;
  private readonly exited: Promise<ExitInfo>;
  private readonly exitListeners: ((info: ExitInfo) => void)[] = [];
  private readonly logger: WalRedoLogger;
  private readonly opts: WalRedoProcessOptions;
  private readyResolve!: (h: Hello) => void;
  private readyReject!: (e: Error) => void;
  private readonly ready: Promise<Hello>;

  /** Spawns a helper and waits for a valid HELLO. */
  static async start(opts: WalRedoProcessOptions): Promise<WalRedoProcess> {
    await clearStaleLock(opts.stubDir);
    const proc = new WalRedoProcess(opts);
    const startTimeoutMs = opts.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
    const timer = setTimeout(() => {
      proc.readyReject(new WalRedoProcessError("timeout", `walredo helper did not become ready within ${startTimeoutMs} ms; stderr: ${proc.stderrTail}`, true));
    }, startTimeoutMs);
    try {
      const hello = await proc.ready;
      checkHello(hello, opts);
    } catch (e) {
      proc.kill("start-up failed");
      await proc.exited;
      throw e;
    } finally {
      clearTimeout(timer);
    }
    proc.logger.debug({ pid: proc.pid, tenantId: opts.tenantId }, "walredo helper started");
    return proc;
  }

  private constructor(opts: WalRedoProcessOptions) {
    this.opts = opts;
    this.logger = opts.logger ?? silentLogger;
    this.ready = new Promise<Hello>((resolve, reject) => {
      this.readyResolve = resolve;
      this.readyReject = reject;
    });
    // Rejections of `ready` are observed by start(); never unhandled.
    this.ready.catch(() => {});
    const pgBinDir = opts.pgBinDir ?? DEFAULT_PG_BIN_DIR;
    const extension = opts.extensionPath ?? DEFAULT_EXTENSION_PATH;
    const settings: Record<string, string> = {
      shared_preload_libraries: extension,
      "strata_walredo.enable": "on",
      "strata_walredo.test_hooks": opts.testHooks ? "on" : "off",
      wal_log_hints: opts.walLogHints ? "on" : "off",
      shared_buffers: SHARED_BUFFERS,
      max_connections: "2",
      max_worker_processes: "0",
      max_wal_senders: "0",
      max_prepared_transactions: "0",
      autovacuum: "off",
      fsync: "off",
      huge_pages: "off",
      log_min_messages: "warning",
    };
    const args = ["--single", "-D", opts.stubDir];
    for (const [k, v] of Object.entries(settings)) args.push("-c", `${k}=${v}`);
    args.push("postgres");
    this.child = spawn(`${pgBinDir}/postgres`, args, {
      cwd: opts.stubDir,
      env: { PATH: "/usr/bin:/bin", LC_ALL: "C" },
      stdio: ["pipe", "pipe", "pipe"],
      ...(opts.runAs ? { uid: opts.runAs.uid, gid: opts.runAs.gid } : {}),
    });
    this.child.stdout.on("data", (b: Buffer) => this.onStdout(b));
    this.child.stderr.on("data", (b: Buffer) => this.onStderr(b));
    // Writes to a dead helper fail with EPIPE; the exit handler reports it.
    this.child.stdin.on("error", () => {});
    this.exited = new Promise<ExitInfo>((resolve) => {
      let spawnError: Error | undefined;
      this.child.on("error", (e) => {
        spawnError = e;
        // "error" without "exit" when the binary cannot be spawned at all
        if (this.child.pid === undefined) resolve(this.handleExit(null, null, `cannot start ${pgBinDir}/postgres: ${e.message}`));
      });
      this.child.on("close", (code, signal) => resolve(this.handleExit(code, signal, spawnError ? spawnError.message : undefined)));
    });
  }

  /** HELLO the helper sent at start-up. */
  get hello(): Hello {
    if (!this.helloInfo) throw new Error("assertion failed: walredo process used before HELLO");
    return this.helloInfo;
  }

  get pid(): number {
    return this.hello.pid;
  }

  /** Requests written and not yet answered. */
  get inFlightCount(): number {
    return this.inFlight.length - this.inFlightHead;
  }

  /** How the process ended, once it has. */
  get exit(): ExitInfo | undefined {
    return this.exitInfo;
  }

  get alive(): boolean {
    return this.exitInfo === undefined && this.killReason === undefined;
  }

  /** The tail of the helper's stderr (for error messages). */
  get stderrTail(): string {
    return lastLines(this.stderrRing);
  }

  /** Called once when the process has exited (after in-flight requests were rejected). */
  onceExited(listener: (info: ExitInfo) => void): void {
    if (this.exitInfo) listener(this.exitInfo);
    else this.exitListeners.push(listener);
  }

  apply(req: ApplyRequest): Promise<Uint8Array> {
    return this.send({ type: "apply", apply: req }, "apply").then((r) => expectPage(r, "apply"));
  }

  mask(req: MaskRequest): Promise<Uint8Array> {
    return this.send({ type: "mask", mask: req }, "mask").then((r) => expectPage(r, "mask"));
  }

  async stats(): Promise<Readonly<Record<string, number>>> {
    const r = await this.send({ type: "stats" }, "stats");
    if (r.type !== "stats") throw new StrataError("protocol_violation", `walredo stats: unexpected ${r.type} reply`);
    return r.stats;
  }

  async testHook(op: TestHookOp, arg = 0): Promise<void> {
    const r = await this.send({ type: "test", test: { op, arg } }, "test hook");
    if (r.type !== "ok") throw new StrataError("protocol_violation", `walredo test hook: unexpected ${r.type} reply`);
  }

  /** Writes one request; resolves with its reply (ERROR replies reject). */
  send(req: Request, what: string): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => {
      const err = this.enqueue(req, what, { replied: resolve, failed: reject });
      if (err) reject(err);
    });
  }

  /**
   * Queues one request for the next batch write; its outcome goes to `sink`.
   * Returns the error instead, and queues nothing, when the process is not
   * running (a `WalRedoProcessError` with processDied) or the request cannot
   * be encoded (invalid_argument).
   */
  enqueue(req: Request, what: string, sink: ReplySink): Error | undefined {
    if (!this.alive) return new WalRedoProcessError("io_error", `walredo helper ${this.helloInfo?.pid ?? "?"} is not running`, true);
    const id = this.nextId;
    try {
      this.writer.append(id, req);
    } catch (e) {
      return e instanceof Error ? e : new Error(String(e));
    }
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    this.inFlight.push({ id, what, sink });
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
    return undefined;
  }

  /** Writes the batch of requests queued since the last flush (one pipe write). */
  private readonly flush = (): void => {
    this.flushScheduled = false;
    if (this.writer.pendingBytes === 0 || this.exitInfo) return;
    const batch = this.writer.take();
    this.child.stdin.write(batch, () => this.writer.recycle(batch));
  };

  /** Kills the process now (SIGKILL); in-flight requests fail as "process died". */
  kill(reason: string): void {
    if (this.exitInfo) return;
    this.killReason ??= reason;
    this.child.kill("SIGKILL");
  }

  /** Sends a signal without marking the process dead (tests: SIGSTOP a helper). */
  signal(sig: NodeJS.Signals): void {
    this.child.kill(sig);
  }

  /** Orderly shutdown: EOF on stdin, wait for exit, kill after the timeout. */
  async close(timeoutMs = DEFAULT_CLOSE_TIMEOUT_MS): Promise<ExitInfo> {
    if (!this.exitInfo) {
      this.flush();
      this.child.stdin.end();
      const timer = setTimeout(() => this.kill(`did not exit within ${timeoutMs} ms of close`), timeoutMs);
      try {
        await this.exited;
      } finally {
        clearTimeout(timer);
      }
    }
    return this.exitInfo ?? (await this.exited);
  }

  private onStderr(b: Buffer): void {
    const text = b.toString("utf8");
    this.stderrRing = (this.stderrRing + text).slice(-STDERR_RING_BYTES);
    for (const line of text.split("\n")) {
      if (line.trim()) this.logger.warn({ pid: this.helloInfo?.pid, tenantId: this.opts.tenantId }, `walredo helper: ${line.trim()}`);
    }
  }

  private onStdout(b: Buffer): void {
    if (this.protocolBroken) return; // nothing after a violation is trusted; the kill is under way
    this.decoder.push(b);
    for (;;) {
      let head: Pending | undefined;
      let reply: Reply;
      try {
        const f = this.decoder.next();
        if (!f) return;
        if (!this.helloInfo) {
          this.onHello(f);
          continue;
        }
        // decoded before the request leaves the FIFO: a malformed reply kills
        // the helper, and handleExit then fails this request with the others
        head = this.expectedHead(f);
        reply = decodeReply(f);
        this.dropHead();
      } catch (e) {
        this.protocolFailure(e);
        return;
      }
      // outside the try: what a sink does is not the helper's protocol
      if (reply.type === "error") head.sink.failed(new WalRedoError(reply.error, head.what));
      else head.sink.replied(reply);
    }
  }

  private onHello(f: Frame): void {
    const reply = decodeReply(f);
    if (reply.type !== "hello") throw new StrataError("protocol_violation", `walredo helper sent ${reply.type} before HELLO`);
    this.helloInfo = reply.hello;
    this.readyResolve(reply.hello);
  }

  /** The oldest in-flight request, which `f` must answer. */
  private expectedHead(f: Frame): Pending {
    const head = this.inFlight[this.inFlightHead];
    if (!head || head.id !== f.requestId) {
      throw new StrataError("protocol_violation", `walredo helper replied to request ${f.requestId}, expected ${head ? head.id : "none"}`);
    }
    return head;
  }

  /** Removes the oldest in-flight request (answered) from the FIFO. */
  private dropHead(): void {
    this.inFlightHead++;
    if (this.inFlightHead === this.inFlight.length) {
      this.inFlight.length = 0;
      this.inFlightHead = 0;
    } else if (this.inFlightHead > 1024 && this.inFlightHead * 2 > this.inFlight.length) {
      this.inFlight.splice(0, this.inFlightHead);
      this.inFlightHead = 0;
    }
  }

  private protocolFailure(e: unknown): void {
    this.protocolBroken = true;
    this.logger.warn({ pid: this.helloInfo?.pid, err: e }, "walredo helper broke the protocol; killing it");
    this.readyReject(e instanceof Error ? e : new Error(String(e)));
    this.kill(`protocol violation: ${e instanceof Error ? e.message : String(e)}`);
  }

  private handleExit(code: number | null, signal: NodeJS.Signals | null, spawnError: string | undefined): ExitInfo {
    if (this.exitInfo) return this.exitInfo;
    const full: ExitInfo = { code, signal, reason: this.killReason ?? spawnError };
    this.exitInfo = full;
    const why = full.reason ?? describeExit(code, signal);
    this.readyReject(
      new WalRedoProcessError("io_error", `walredo helper exited during start-up (${why}): ${this.stderrTail || "no message on stderr"}`, true),
    );
    const pending = this.inFlight.slice(this.inFlightHead);
    this.inFlight.length = 0;
    this.inFlightHead = 0;
    if (this.helloInfo && (pending.length > 0 || code !== 0)) {
      this.logger.warn({ pid: this.helloInfo.pid, tenantId: this.opts.tenantId, code, signal, reason: full.reason, inFlight: pending.length }, "walredo helper exited");
    }
    for (const p of pending) {
      p.sink.failed(
        new WalRedoProcessError(
          full.reason?.startsWith("timeout") ? "timeout" : "io_error",
          `walredo helper ${this.helloInfo?.pid ?? "?"} ended while a ${p.what} request was in flight (${why})${this.stderrTail ? `; stderr: ${this.stderrTail}` : ""}`,
          true,
        ),
      );
    }
    // A killed helper leaves postmaster.pid behind; the slot's next helper
    // reuses the directory.
    void clearStaleLock(this.opts.stubDir).catch(() => {});
    for (const l of this.exitListeners.splice(0)) l(full);
    return full;
  }
}

/**
 * After a helper was killed, its shared memory (a small SysV segment and a
 * POSIX DSM control segment) outlives it. PostgreSQL reclaims both when the
 * next server starts in the same data directory, so before a stub directory
 * whose last helper died is removed, one helper is started there and closed.
 * Best effort: failures are ignored (the directory goes away regardless).
 */
export async function reclaimAfterCrash(opts: WalRedoProcessOptions): Promise<void> {
  try {
    const proc = await WalRedoProcess.start({ ...opts, testHooks: false });
    await proc.close();
  } catch {
    // nothing more can be done here
  }
}

function expectPage(r: Reply, what: string): Uint8Array {
  if (r.type !== "page" || r.page.length !== PAGE_SIZE_BYTES) {
    throw new StrataError("protocol_violation", `walredo ${what}: expected a page reply, got ${r.type}`);
  }
  return r.page;
}

function checkHello(h: Hello, opts: WalRedoProcessOptions): void {
  const bad = (msg: string) => new WalRedoProcessError("unsupported", `walredo helper: ${msg}`, true);
  if (h.protocolVersion !== PROTOCOL_VERSION) {
    throw bad(`speaks protocol version ${h.protocolVersion}, strata speaks ${PROTOCOL_VERSION}; rebuild the extension (make -C walredo)`);
  }
  if (h.builtPgVersionNum !== h.runningPgVersionNum) {
    throw bad(`extension built for PostgreSQL ${h.builtPgVersionNum} runs in ${h.runningPgVersionNum}; rebuild it (make -C walredo)`);
  }
  if (h.blockSizeBytes !== PAGE_SIZE_BYTES) throw bad(`server uses ${h.blockSizeBytes}-byte pages, strata needs ${PAGE_SIZE_BYTES}`);
  if (h.dataChecksums !== opts.dataChecksums) {
    throw bad(`stub directory has data checksums ${h.dataChecksums ? "on" : "off"}, expected ${opts.dataChecksums ? "on" : "off"}`);
  }
  if (h.walLogHints !== (opts.walLogHints ?? false)) {
    throw bad(`runs with wal_log_hints ${h.walLogHints ? "on" : "off"}, expected ${opts.walLogHints ? "on" : "off"}`);
  }
  if (h.testHooks !== (opts.testHooks ?? false)) throw bad(`test hooks are ${h.testHooks ? "on" : "off"}, expected the opposite`);
}

function describeExit(code: number | null, signal: NodeJS.Signals | null): string {
  return signal ? `killed by ${signal}` : `exit code ${code}`;
}

/** The last few non-empty lines, on one line. */
function lastLines(text: string, n = 3): string {
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .slice(-n)
    .join(" | ");
}
