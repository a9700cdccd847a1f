/**
 * The flush worker: one worker thread (node:worker_threads) per process that
 * writes frozen in-memory layers out as delta layer files, so the main thread
 * goes on decoding and ingesting WAL meanwhile. This is how the pageserver
 * uses a second core: a flush (reading the ephemeral file in key order,
 * encoding the delta layer with its checksums and index, fsync) is a third or
 * more of the work of ingest, and independent of it once the layer is frozen.
 *
 *   Timeline flush task --flushOnWorker(snapshot)--> worker thread
 *        (awaits)       <--- { written } | { error } ---
 *
 * What crosses: the layer's snapshot (frozen_layer_flush.ts). Its index
 * arrays are on SharedArrayBuffers (no copy), its ephemeral file is read
 * through the same descriptor (descriptors are process-wide), the slot keys
 * are copied (one bigint per distinct key). The worker runs the very same
 * `writeFrozenLayer` as the main thread does, so the file is byte-identical
 * and its crash safety is the delta writer's: temp file, fsync, rename,
 * directory fsync, all done before the worker answers. The caller (the
 * timeline) advances disk_consistent_lsn only after that answer, as before.
 *
 * Lifetime and cancellation: the thread starts on the first flush (or
 * earlier, `prewarmFlushWorker`, when a timeline opens an in-memory layer), is
 * unref'd whenever no flush is in flight (it never keeps the process alive)
 * and is terminated after FLUSH_WORKER_IDLE_MS without work, or by
 * `stopFlushWorker()`. A flush is always awaited by the task that started it
 * (the timeline's flush task or checkpoint, under the task manager); aborting
 * its signal is forwarded to the worker, which abandons the partial file at
 * the next key group and answers "cancelled". A promise returned here
 * settles only once the worker no longer uses the snapshot (an answer, or
 * the thread's exit), so the caller may then close the layer.
 *
 * Errors: a StrataError thrown in the worker comes back with its code and
 * message (e.g. io_error naming the file); anything else, or the thread dying,
 * is "internal" with the worker's message. The timeline marks itself broken
 * on either, as for a flush on the main thread.
 */
import { Worker } from "node:worker_threads";
import { StrataError, type ErrorCode } from "../../lib/errors.js";
import type { WrittenLayer } from "./delta_layer.js";
import type { FrozenFlushOptions, FrozenLayerSnapshot } from "./frozen_layer_flush.js";

/** The idle worker is terminated after this long (a thread's start costs ~50 ms; flushes come every few seconds under load). */
export const FLUSH_WORKER_IDLE_MS = 30_000;

/** Main -> worker. */
export type FlushRequest =
  | { readonly type: "flush"; readonly id: number; readonly snap: FrozenLayerSnapshot; readonly dir: string; readonly opts: WorkerFlushOptions; readonly aborted: boolean }
  | { readonly type: "cancel"; readonly id: number };

/** Worker -> main. */
export type FlushReply =
  | { readonly id: number; readonly ok: true; readonly written: WrittenLayer }
  | { readonly id: number; readonly ok: false; readonly code: ErrorCode; readonly message: string };

/** The options that cross to the worker (the signal stays here and is forwarded as "cancel"). */
export type WorkerFlushOptions = Pick<FrozenFlushOptions, "keyRange" | "generation" | "indexPageSizeBytes">;

interface Job {
  /** The thread the job was sent to (its exit fails only its own jobs). */
  readonly worker: Worker;
  readonly resolve: (w: WrittenLayer) => void;
  readonly reject: (e: Error) => void;
  readonly signal: AbortSignal | undefined;
  readonly onAbort: () => void;
}

class FlushWorker {
  private worker: Worker | undefined;
  private readonly jobs = new Map<number, Job>();
  private nextId = 1;
  private idleTimer: NodeJS.Timeout | undefined;
  /** Why a thread failed ("error" event, or stopped), reported to its jobs at its exit. */
  private readonly failures = new WeakMap<Worker, Error>();

  run(snap: FrozenLayerSnapshot, dir: string, opts: FrozenFlushOptions): Promise<WrittenLayer> {
    const w = this.ensureWorker();
    const id = this.nextId++;
    const signal = opts.signal;
    return new Promise<WrittenLayer>((resolve, reject) => {
      const onAbort = (): void => w.postMessage({ type: "cancel", id } satisfies FlushRequest);
      this.jobs.set(id, { worker: w, resolve, reject, signal, onAbort });
      signal?.addEventListener("abort", onAbort, { once: true });
      w.ref();
      if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
      this.idleTimer = undefined;
      const wopts: WorkerFlushOptions = {
        ...(opts.keyRange === undefined ? {} : { keyRange: opts.keyRange }),
        ...(opts.generation === undefined ? {} : { generation: opts.generation }),
        ...(opts.indexPageSizeBytes === undefined ? {} : { indexPageSizeBytes: opts.indexPageSizeBytes }),
      };
      const request: FlushRequest = { type: "flush", id, snap, dir, opts: wopts, aborted: signal?.aborted === true };
      try {
        w.postMessage(request);
      } catch (e) {
        // (not cloneable: a bug of the caller's snapshot; the worker never saw it)
        this.settle(id);
        reject(new StrataError("internal", `Cannot hand the flush of ${snap.path} to the flush worker: ${(e as Error).message}`, { cause: e }));
      }
    });
  }

  prewarm(): void {
    if (this.worker !== undefined) return;
    this.ensureWorker();
    if (this.jobs.size === 0) this.becameIdle();
  }

  /** Terminates the thread (pending flushes reject when it has exited). */
  async stop(): Promise<void> {
    const w = this.worker;
    if (w === undefined) return;
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (!this.failures.has(w)) this.failures.set(w, new StrataError("cancelled", "Flush worker stopped"));
    this.worker = undefined;
    await w.terminate();
  }

  private ensureWorker(): Worker {
    if (this.worker !== undefined) return this.worker;
    const w = new Worker(new URL("./flush_worker_thread.js", import.meta.url));
    this.worker = w;
    w.unref();
    w.on("message", (reply: FlushReply) => this.onReply(reply));
    w.on("error", (e: Error) => {
      this.failures.set(w, new StrataError("internal", `Flush worker failed: ${e.message}`, { cause: e }));
    });
    w.on("exit", (code) => {
      if (this.worker === w) this.worker = undefined;
      const err = this.failures.get(w) ?? new StrataError("internal", `Flush worker exited with code ${code}`);
      for (const [id, job] of this.jobs) {
        if (job.worker !== w) continue;
        this.jobs.delete(id);
        job.signal?.removeEventListener("abort", job.onAbort);
        job.reject(err);
      }
      if (this.jobs.size === 0) this.becameIdle();
    });
    return w;
  }

  /** Forgets job `id` (answered or never sent); returns it. */
  private settle(id: number): Job | undefined {
    const job = this.jobs.get(id);
    if (job === undefined) return undefined;
    this.jobs.delete(id);
    job.signal?.removeEventListener("abort", job.onAbort);
    if (this.jobs.size === 0) this.becameIdle();
    return job;
  }

  private onReply(reply: FlushReply): void {
    const job = this.settle(reply.id);
    if (job === undefined) return;
    if (reply.ok) job.resolve(reply.written);
    else if (reply.code === "cancelled") job.reject(new StrataError("cancelled", reply.message, { cause: job.signal?.reason }));
    else job.reject(new StrataError(reply.code, reply.message));
  }

  private becameIdle(): void {
    const w = this.worker;
    if (w === undefined) return;
    w.unref();
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      if (this.jobs.size === 0 && this.worker === w) {
        this.worker = undefined;
        void w.terminate();
      }
    }, FLUSH_WORKER_IDLE_MS);
    this.idleTimer.unref();
  }
}

const flushWorker = new FlushWorker();

/** Writes the frozen layer `snap` into `dir` on the flush worker thread (same result as writeFrozenLayer). */
export function flushOnWorker(snap: FrozenLayerSnapshot, dir: string, opts: FrozenFlushOptions = {}): Promise<WrittenLayer> {
  return flushWorker.run(snap, dir, opts);
}

/**
 * Starts the worker thread now if it is not running, so that its start-up
 * (module loading, tens of ms) overlaps ingest instead of delaying the first
 * flush. It stops again after FLUSH_WORKER_IDLE_MS if no flush comes.
 */
export function prewarmFlushWorker(): void {
  flushWorker.prewarm();
}

/** Terminates the flush worker thread if it runs (it restarts on the next flush). */
export function stopFlushWorker(): Promise<void> {
  return flushWorker.stop();
}
