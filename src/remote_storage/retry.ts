/**
 * RetryingRemoteStorage — bounded retries with exponential backoff and jitter
 * around any RemoteStorage.
 *
 * Object stores fail a small fraction of requests for reasons that go away
 * (a 503 SlowDown, a reset connection, a node restarting), so every call is
 * retried — but only for errors the backend marked transient (errors.ts),
 * never after the caller's AbortSignal fired, and at most `maxAttempts` times
 * in total. Permanent errors (not_found, access denied, bad arguments) come
 * back at once. When the attempts run out the last error is rethrown, its
 * message saying how many attempts were made.
 *
 * Each attempt gets the caller's full `timeoutMs` (a timeout is transient: a
 * stuck connection is retried on a fresh one). The wait before attempt n+1 is
 * "equal jitter": half of min(maxDelayMs, baseDelayMs * 2^(n-1)) plus a random
 * part up to the other half, so concurrent clients spread out while every
 * client still backs off.
 *
 * What is retried:
 * - list pages one at a time (a failure on page 7 retries page 7);
 * - uploads whose body can be replayed (bytes or a factory); an upload from a
 *   bare Readable is tried once, because the stream cannot be rewound;
 * - downloads: starting one, and — when the backend gave an etag — resuming a
 *   stream that broke in the middle, with a ranged request for the rest that
 *   must see the same etag (otherwise the object changed under the reader and
 *   the stream fails with a permanent io_error);
 * - head, exists, delete, deleteMany and copy: all idempotent.
 */
import { PassThrough, type Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { RemoteStorageError, invalidArgument, ioError, isTransient, type RemoteOpOptions } from "./errors.js";
import type { RemotePath, RemotePrefix } from "./remote_path.js";
import {
  paginate,
  type Download,
  type DownloadOptions,
  type ListOptions,
  type ListPage,
  type ListPageOptions,
  type RemoteObjectInfo,
  type RemoteStorage,
  type UploadBody,
  type UploadOptions,
} from "./remote_storage.js";

export interface RetryPolicy {
  /** Attempts per call including the first (>= 1). */
  maxAttempts: number;
  /** Wait before the second attempt (before jitter). */
  baseDelayMs: number;
  /** Cap on the wait between two attempts. */
  maxDelayMs: number;
}

/**
 * Six attempts with waits of ~0.1, 0.2, 0.4, 0.8, 1.6 s ride out a few
 * seconds of throttling or a restarting endpoint (about 3 s in total) without
 * holding an upload queue for long; outages longer than that are the upload
 * queue's business (it keeps the work and tries again later).
 */
export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = { maxAttempts: 6, baseDelayMs: 100, maxDelayMs: 5_000 };

/** Upper bound on maxAttempts, so a typo in a config cannot turn into an hour of retrying. */
export const MAX_RETRY_ATTEMPTS = 100;

export interface RetryEvent {
  what: string;
  /** The attempt that failed (1-based). */
  attempt: number;
  delayMs: number;
  error: RemoteStorageError;
}

export interface RetryingRemoteStorageOptions {
  policy?: Partial<RetryPolicy>;
  /** Called before each wait; for logs and metrics. */
  onRetry?: (event: RetryEvent) => void;
  /** Random source in [0, 1); tests pass a seeded one. */
  random?: () => number;
}

/** The wait before attempt `failedAttempt + 1`. */
export function backoffDelayMs(failedAttempt: number, policy: RetryPolicy, random: () => number): number {
  const exp = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.min(failedAttempt - 1, 30));
  return Math.round(exp / 2 + (random() * exp) / 2);
}

export function validateRetryPolicy(p: Partial<RetryPolicy> | undefined): RetryPolicy {
  const policy = { ...DEFAULT_RETRY_POLICY, ...p };
  if (!Number.isSafeInteger(policy.maxAttempts) || policy.maxAttempts < 1 || policy.maxAttempts > MAX_RETRY_ATTEMPTS) {
    throw invalidArgument(`retry maxAttempts ${policy.maxAttempts} is not in 1..${MAX_RETRY_ATTEMPTS}`);
  }
  if (!(policy.baseDelayMs >= 0) || !(policy.maxDelayMs >= policy.baseDelayMs)) {
    throw invalidArgument(`retry delays must satisfy 0 <= baseDelayMs (${policy.baseDelayMs}) <= maxDelayMs (${policy.maxDelayMs})`);
  }
  return policy;
}

export class RetryingRemoteStorage implements RemoteStorage {
  readonly policy: RetryPolicy;
  /** Retries made so far (attempts beyond the first), for metrics and tests. */
  retries = 0;
  private readonly onRetry: ((e: RetryEvent) => void) | undefined;
  private readonly random: () => number;

  constructor(
    readonly inner: RemoteStorage,
    opts: RetryingRemoteStorageOptions = {},
  ) {
    this.policy = validateRetryPolicy(opts.policy);
    this.onRetry = opts.onRetry;
    this.random = opts.random ?? Math.random;
  }

  describe(): string {
    return this.inner.describe();
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  list(prefix: RemotePrefix, opts?: ListOptions): AsyncIterable<ListPage> {
    return paginate(this, prefix, opts);
  }

  listPage(prefix: RemotePrefix, opts?: ListPageOptions): Promise<ListPage> {
    return this.retry(`list "${prefix}"`, opts, () => this.inner.listPage(prefix, opts));
  }

  upload(path: RemotePath, body: UploadBody, opts?: UploadOptions): Promise<void> {
    const replayable = body instanceof Uint8Array || typeof body === "function";
    if (!replayable) return this.inner.upload(path, body, opts);
    return this.retry(`upload "${path}"`, opts, () => this.inner.upload(path, body, opts));
  }

  async download(path: RemotePath, opts?: DownloadOptions): Promise<Download> {
    const what = `download "${path}"`;
    const first = await this.retry(what, opts, () => this.inner.download(path, opts));
    if (first.etag === undefined || first.sizeBytes === 0) return first;
    return { ...first, stream: this.resumingStream(what, path, first, opts) };
  }

  head(path: RemotePath, opts?: RemoteOpOptions): Promise<RemoteObjectInfo> {
    return this.retry(`head "${path}"`, opts, () => this.inner.head(path, opts));
  }

  exists(path: RemotePath, opts?: RemoteOpOptions): Promise<boolean> {
    return this.retry(`exists "${path}"`, opts, () => this.inner.exists(path, opts));
  }

  delete(path: RemotePath, opts?: RemoteOpOptions): Promise<void> {
    return this.retry(`delete "${path}"`, opts, () => this.inner.delete(path, opts));
  }

  deleteMany(paths: readonly RemotePath[], opts?: RemoteOpOptions): Promise<void> {
    return this.retry(`delete ${paths.length} objects`, opts, () => this.inner.deleteMany(paths, opts));
  }

  copy(from: RemotePath, to: RemotePath, opts?: RemoteOpOptions): Promise<void> {
    return this.retry(`copy "${from}" to "${to}"`, opts, () => this.inner.copy(from, to, opts));
  }

  private async retry<T>(what: string, opts: RemoteOpOptions | undefined, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (!isTransient(err) || opts?.signal?.aborted) throw err;
        const error = err as RemoteStorageError;
        if (attempt >= this.policy.maxAttempts) {
          throw new RemoteStorageError(error.code as "io_error", `${error.message} (gave up after ${attempt} attempts)`, { transient: true, cause: error });
        }
        const delayMs = backoffDelayMs(attempt, this.policy, this.random);
        this.onRetry?.({ what, attempt, delayMs, error });
        this.retries++;
        await this.wait(what, delayMs, opts?.signal);
      }
    }
  }

  private async wait(what: string, delayMs: number, signal: AbortSignal | undefined): Promise<void> {
    try {
      await sleep(delayMs, undefined, signal ? { signal } : {});
    } catch (err) {
      throw new RemoteStorageError("cancelled", `${what}: cancelled while waiting to retry`, { transient: false, cause: err });
    }
  }

  /**
   * The download's stream, continued with ranged requests when it breaks with
   * a transient error. Every request (the first included) counts against
   * `maxAttempts`.
   */
  private resumingStream(what: string, path: RemotePath, first: Download, opts: DownloadOptions | undefined): Readable {
    const start = opts?.range?.start ?? 0;
    const end = start + first.sizeBytes;
    const out = new PassThrough();
    let current: Download = first;
    let received = 0;
    let attemptsUsed = 1;
    const writable = (): Promise<void> =>
      new Promise<void>((resolve) => {
        const done = (): void => {
          out.off("drain", done);
          out.off("close", done);
          resolve();
        };
        out.on("drain", done);
        out.on("close", done);
      });
    const pump = async (): Promise<void> => {
      for (;;) {
        try {
          for await (const chunk of current.stream) {
            if (out.destroyed) return;
            received += (chunk as Buffer).length;
            if (!out.write(chunk)) await writable();
            if (out.destroyed) return;
          }
          out.end();
          return;
        } catch (err) {
          if (out.destroyed) return;
          let lastError = err;
          for (;;) {
            if (!isTransient(lastError) || opts?.signal?.aborted) throw lastError;
            const error = lastError as RemoteStorageError;
            if (attemptsUsed >= this.policy.maxAttempts) {
              throw new RemoteStorageError(error.code as "io_error", `${error.message} (gave up after ${attemptsUsed} attempts)`, { transient: true, cause: error });
            }
            const delayMs = backoffDelayMs(attemptsUsed, this.policy, this.random);
            this.onRetry?.({ what: `${what} (resume at byte ${start + received})`, attempt: attemptsUsed, delayMs, error });
            this.retries++;
            await this.wait(what, delayMs, opts?.signal);
            attemptsUsed++;
            try {
              current = await this.inner.download(path, { ...opts, range: { start: start + received, end } });
              break;
            } catch (e) {
              lastError = e;
            }
          }
          if (out.destroyed) {
            current.stream.destroy();
            return;
          }
          if (current.etag !== first.etag) {
            current.stream.destroy();
            throw ioError(`${what}: the object changed while it was being downloaded (etag ${first.etag} -> ${current.etag})`, false);
          }
        }
      }
    };
    // The error stays stored on `out` for a reader that attaches later.
    out.on("error", () => undefined);
    out.on("close", () => {
      if (!current.stream.destroyed) current.stream.destroy();
    });
    pump().catch((err: unknown) => out.destroy(err instanceof Error ? err : new Error(String(err))));
    return out;
  }
}
