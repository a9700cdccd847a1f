/**
 * NativeWalReceiver — runs `walreceiver/strata-wal-receiver` (C) for one
 * compute connection and speaks its pipe protocol.
 *
 * Why a separate process: the commit path (read the commit's WAL, write,
 * fdatasync, status update) runs once per group commit; in Node, the event
 * loop and callback machinery alone cost ~50 us of user CPU per cycle, the
 * same loop in C ~5 us (bench/safekeeper.ts, docs/benchmarking.md). The
 * receiver process runs only that loop, in one segment file the safekeeper
 * prepared, and reports progress; everything else stays here (see
 * wal_receiver.c's header for its contract and the pipe format).
 *
 * This module is the transport only: it spawns the process with the
 * replication socket as fd 3, encodes commands (pause, resume, notify,
 * stop) onto its stdin and decodes its reports from its stdout. The
 * policy — when to pause, adopting WAL into WalStorage, fencing — is the
 * acceptor's and the timeline's (wal_acceptor.ts, Timeline's external
 * writer).
 *
 * The process dies with the safekeeper (PR_SET_PDEATHSIG) and when its
 * stdin closes; `stop()` asks it to end after its current cycle and kills
 * it after STOP_TIMEOUT_MS.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import type { Socket } from "node:net";
import { fileURLToPath } from "node:url";
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import { lsn as toLsn, type Lsn } from "../lib/lsn.js";

/** The receiver binary: built by scripts/setup (make -C walreceiver). */
export const DEFAULT_WAL_RECEIVER_BIN = process.env.STRATA_WAL_RECEIVER_BIN ?? fileURLToPath(new URL("../../../walreceiver/strata-wal-receiver", import.meta.url));

/** How long a stopped receiver may take to finish its cycle and exit before it is killed. */
export const STOP_TIMEOUT_MS = 5_000;

/** Totals since the receiver started; LSNs are what it wrote and what it made durable. */
export interface ReceiverProgress {
  readonly writeLsn: Lsn;
  readonly flushLsn: Lsn;
  readonly fsyncs: number;
  readonly bytesWritten: number;
  readonly fsyncSeconds: number;
  /** fsyncs per latency bucket (not cumulative), one more than the bounds given. */
  readonly bucketCounts: readonly number[];
}

export type ReceiverEndReason = "copy_done" | "server_error" | "connection" | "protocol" | "io" | "stopped" | "crashed";

export interface ReceiverEnd {
  readonly reason: ReceiverEndReason;
  /** Text, or for server_error the server's whole ErrorResponse message. */
  readonly detail: Buffer;
  /** The last progress it reported (for crashed: possibly behind what it wrote). */
  readonly progress: ReceiverProgress;
}

export interface NativeReceiverOptions {
  bin?: string;
  socket: Socket;
  /** Bytes read from the socket and not consumed (ReplicationStream.detach): the receiver consumes them first. */
  pending: Buffer;
  segmentPath: string;
  segmentStartLsn: Lsn;
  segmentSizeBytes: number;
  writeLsn: Lsn;
  /** fsync latency histogram bounds, seconds. */
  buckets: readonly number[];
  statusIntervalMs: number;
  /** Progress is reported at least this often while the flush LSN moves. */
  heartbeatMs: number;
  onProgress: (p: ReceiverProgress) => void;
  onPaused: (reason: "requested" | "segment_full", p: ReceiverProgress) => void;
  log: Logger;
}

const END_REASONS: Record<number, ReceiverEndReason> = { 1: "copy_done", 2: "server_error", 3: "connection", 4: "protocol", 5: "io", 6: "stopped" };

/** A receiver's progress before its first report: nothing written past `at`, no fsyncs, `buckets` bounds. */
export function initialProgress(at: Lsn, buckets: number): ReceiverProgress {
  return { writeLsn: at, flushLsn: at, fsyncs: 0, bytesWritten: 0, fsyncSeconds: 0, bucketCounts: new Array<number>(buckets + 1).fill(0) };
}

/** Whether the receiver binary is there (a checkout without `scripts/setup` has none). */
export function nativeReceiverAvailable(bin = DEFAULT_WAL_RECEIVER_BIN): boolean {
  return existsSync(bin);
}

export class NativeWalReceiver {
  /** Resolves once the process has exited, with how the stream ended. */
  readonly ended: Promise<ReceiverEnd>;
  private readonly child: ChildProcess;
  private readonly progressBytes: number;
  private buf: Buffer = Buffer.alloc(0);
  private last: ReceiverProgress;
  private end: ReceiverEnd | undefined;
  private killTimer: NodeJS.Timeout | undefined;
  private stderrTail = "";

  constructor(private readonly opts: NativeReceiverOptions) {
    const bin = opts.bin ?? DEFAULT_WAL_RECEIVER_BIN;
    this.progressBytes = 40 + 8 * (opts.buckets.length + 1);
    this.last = initialProgress(opts.writeLsn, opts.buckets.length);
    const args = [
      "--segment", opts.segmentPath,
      "--segment-start", opts.segmentStartLsn.toString(),
      "--segment-size", String(opts.segmentSizeBytes),
      "--write-lsn", opts.writeLsn.toString(),
      "--status-interval-ms", String(opts.statusIntervalMs),
      "--heartbeat-ms", String(opts.heartbeatMs),
      "--parent-pid", String(process.pid),
      "--initial-bytes", String(opts.pending.length),
      ...(opts.buckets.length > 0 ? ["--buckets", opts.buckets.join(",")] : []),
    ];
    this.child = spawn(bin, args, { stdio: ["pipe", "pipe", "pipe", opts.socket] });
    this.ended = new Promise<ReceiverEnd>((resolve) => {
      this.child.once("error", (e) => {
        // Spawning failed (no binary): the process never ran.
        this.end ??= { reason: "crashed", detail: Buffer.from(`cannot run ${bin}: ${e.message}`), progress: this.last };
        resolve(this.end);
      });
      this.child.once("close", (code, signal) => {
        clearTimeout(this.killTimer);
        this.end ??= {
          reason: "crashed",
          detail: Buffer.from(`the WAL receiver exited (${signal !== null ? `signal ${signal}` : `code ${code}`}) without reporting why${this.stderrTail !== "" ? `: ${this.stderrTail.trim()}` : ""}`),
          progress: this.last,
        };
        resolve(this.end);
      });
    });
    this.child.stdin!.on("error", () => undefined); // EPIPE once it exited: 'close' reports that
    this.child.stdout!.on("data", (chunk: Buffer) => this.onData(chunk));
    this.child.stderr!.on("data", (chunk: Buffer) => {
      const text = chunk.toString("utf8");
      this.stderrTail = (this.stderrTail + text).slice(-2000);
      opts.log.warn({ stderr: text.trim() }, "WAL receiver wrote to stderr");
    });
    // Read by the receiver before it first reads the socket (argv says how many).
    if (opts.pending.length > 0) this.send(opts.pending);
  }

  /** The last progress reported. */
  get progress(): ReceiverProgress {
    return this.last;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Finish the current cycle, report "paused", stop reading the socket. */
  pause(): void {
    this.send(Buffer.from("P", "latin1"));
  }

  /** Go on after a pause, in a new segment file when given. */
  resume(segment?: { path: string; startLsn: Lsn }): void {
    if (segment === undefined) {
      const b = Buffer.alloc(5 + 8);
      b.write("R", 0, "latin1");
      b.writeUInt32LE(0, 1);
      this.send(b);
      return;
    }
    const path = Buffer.from(segment.path, "utf8");
    const b = Buffer.alloc(5 + path.length + 8);
    b.write("R", 0, "latin1");
    b.writeUInt32LE(path.length, 1);
    path.copy(b, 5);
    b.writeBigUInt64LE(segment.startLsn, 5 + path.length);
    this.send(b);
  }

  /** Report progress as soon as the flush LSN passes `lsn`. */
  notifyAfter(lsn: Lsn): void {
    const b = Buffer.alloc(9);
    b.write("N", 0, "latin1");
    b.writeBigUInt64LE(lsn, 1);
    this.send(b);
  }

  /** Finish the current cycle and exit (killed after STOP_TIMEOUT_MS). Resolves `ended`. */
  stop(): Promise<ReceiverEnd> {
    if (this.end === undefined && this.killTimer === undefined) {
      this.send(Buffer.from("S", "latin1"));
      this.killTimer = setTimeout(() => this.child.kill("SIGKILL"), STOP_TIMEOUT_MS);
    }
    return this.ended;
  }

  /** Kills the process at once (its unreported WAL is then unknown: `ended` says crashed). */
  kill(): void {
    this.child.kill("SIGKILL");
  }

  private send(b: Buffer): void {
    const stdin = this.child.stdin;
    if (stdin === null || stdin.destroyed || this.end !== undefined) return;
    stdin.write(b);
  }

  private readProgress(b: Buffer, at: number): ReceiverProgress {
    const n = this.opts.buckets.length + 1;
    const counts = new Array<number>(n);
    for (let i = 0; i < n; i++) counts[i] = Number(b.readBigUInt64LE(at + 40 + 8 * i));
    return {
      writeLsn: toLsn(b.readBigUInt64LE(at)),
      flushLsn: toLsn(b.readBigUInt64LE(at + 8)),
      fsyncs: Number(b.readBigUInt64LE(at + 16)),
      bytesWritten: Number(b.readBigUInt64LE(at + 24)),
      fsyncSeconds: b.readDoubleLE(at + 32),
      bucketCounts: counts,
    };
  }

  private onData(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const pb = this.progressBytes;
    let o = 0;
    try {
      while (o < this.buf.length) {
        const kind = String.fromCharCode(this.buf[o]!);
        if (kind === "p") {
          if (this.buf.length - o < 1 + pb) break;
          this.last = this.readProgress(this.buf, o + 1);
          o += 1 + pb;
          this.opts.onProgress(this.last);
        } else if (kind === "z") {
          if (this.buf.length - o < 2 + pb) break;
          const reason = this.buf[o + 1] === 2 ? "segment_full" : "requested";
          this.last = this.readProgress(this.buf, o + 2);
          o += 2 + pb;
          this.opts.onPaused(reason, this.last);
        } else if (kind === "x") {
          if (this.buf.length - o < 2 + pb + 4) break;
          const n = this.buf.readUInt32LE(o + 2 + pb);
          if (this.buf.length - o < 2 + pb + 4 + n) break;
          const reason = END_REASONS[this.buf[o + 1]!];
          if (reason === undefined) throw new StrataError("protocol_violation", `WAL receiver reported end reason ${this.buf[o + 1]}`);
          this.last = this.readProgress(this.buf, o + 2);
          this.end = { reason, detail: Buffer.from(this.buf.subarray(o + 2 + pb + 4, o + 2 + pb + 4 + n)), progress: this.last };
          o += 2 + pb + 4 + n;
        } else {
          throw new StrataError("protocol_violation", `WAL receiver sent report type 0x${this.buf[o]!.toString(16)}`);
        }
      }
    } catch (e) {
      this.opts.log.error({ err: (e as Error).message }, "WAL receiver's reports are garbled; killing it");
      this.kill();
      this.buf = Buffer.alloc(0);
      return;
    }
    this.buf = o === this.buf.length ? Buffer.alloc(0) : this.buf.subarray(o);
  }
}
