/**
 * Errors of remote storage operations, and the scope that gives every
 * operation its cancellation and timeout.
 *
 * Every failure a RemoteStorage call reports is a `RemoteStorageError`: a
 * StrataError whose code says what happened and whose `transient` flag says
 * whether trying the same call again may succeed. The retry wrapper retries
 * exactly the transient ones, so the flag is the contract between backends
 * and everything above them:
 *
 * | code        | transient | meaning                                              |
 * |-------------|-----------|------------------------------------------------------|
 * | not_found   | no        | the object does not exist                            |
 * | timeout     | yes       | this attempt ran out of time (`timeoutMs`)           |
 * | cancelled   | no        | the caller's AbortSignal fired: never retried        |
 * | io_error    | either    | network/5xx/throttling (yes); denied/bad request (no) |
 * | invalid_argument | no   | a bad path, range, size or configuration             |
 *
 * `OpScope` joins the caller's AbortSignal with the per-call timeout into one
 * signal that backends pass to their SDK, and turns whatever the SDK throws
 * when that signal fires into "cancelled" or "timeout" — SDKs report both as
 * the same AbortError, so only the scope knows which one it was. A scope owns
 * a timer; it must be disposed (downloads dispose it when their stream closes).
 */
import { setMaxListeners } from "node:events";
import { StrataError, type ErrorCode } from "../lib/errors.js";

export type RemoteErrorCode = Extract<ErrorCode, "not_found" | "timeout" | "cancelled" | "io_error" | "invalid_argument">;

export class RemoteStorageError extends StrataError {
  override name = "RemoteStorageError";
  /** True when the same call may succeed if tried again. */
  readonly transient: boolean;
  constructor(code: RemoteErrorCode, message: string, options: { transient: boolean; cause?: unknown }) {
    super(code, message, options.cause === undefined ? undefined : { cause: options.cause });
    this.transient = options.transient;
  }
}

export function notFound(what: string, cause?: unknown): RemoteStorageError {
  return new RemoteStorageError("not_found", `${what}: not found`, { transient: false, cause });
}

export function ioError(message: string, transient: boolean, cause?: unknown): RemoteStorageError {
  return new RemoteStorageError("io_error", message, { transient, cause });
}

export function invalidArgument(message: string): RemoteStorageError {
  return new RemoteStorageError("invalid_argument", message, { transient: false });
}

/** True for errors that the retry wrapper may retry. */
export function isTransient(err: unknown): boolean {
  return err instanceof RemoteStorageError && err.transient;
}

/** True for "the object does not exist". */
export function isNotFound(err: unknown): boolean {
  return err instanceof StrataError && err.code === "not_found";
}

/**
 * Default time one call may take, including streaming a download's body.
 * Two minutes lets a 1 GiB layer move at ~10 MiB/s, yet a hung connection
 * is noticed long before an operator would.
 */
export const DEFAULT_REMOTE_TIMEOUT_MS = 120_000;

/**
 * Listeners one call's signal may carry: each concurrent SDK request of a
 * batch (deleteMany, multipart parts) adds one; batches are bounded far below.
 */
const SCOPE_MAX_LISTENERS = 100;

/** Options every RemoteStorage call takes. */
export interface RemoteOpOptions {
  /** Cancels the call; the call then fails with "cancelled" (never retried). */
  signal?: AbortSignal;
  /** Time this call may take, including streaming a download; default: the backend's. */
  timeoutMs?: number;
}

class ScopeAbort extends Error {
  constructor(readonly kind: "timeout" | "cancelled") {
    super(kind);
  }
}

/** One call's cancellation + timeout. */
export class OpScope {
  readonly signal: AbortSignal;
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout | undefined;
  private readonly onCallerAbort: (() => void) | undefined;
  private readonly callerSignal: AbortSignal | undefined;
  private readonly timeoutMs: number = 0;

  /**
   * @param what names the call in messages, e.g. `download "a/b"`.
   */
  constructor(readonly what: string, opts: RemoteOpOptions | undefined, defaultTimeoutMs: number) {
    this.signal = this.controller.signal;
    setMaxListeners(SCOPE_MAX_LISTENERS, this.signal);
    const timeoutMs = opts?.timeoutMs ?? defaultTimeoutMs;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
      throw invalidArgument(`${what}: timeoutMs must be a positive number, got ${timeoutMs}`);
    }
    this.callerSignal = opts?.signal;
    if (this.callerSignal?.aborted) {
      this.controller.abort(new ScopeAbort("cancelled"));
      return;
    }
    if (this.callerSignal) {
      this.onCallerAbort = () => this.controller.abort(new ScopeAbort("cancelled"));
      this.callerSignal.addEventListener("abort", this.onCallerAbort, { once: true });
    }
    this.timer = setTimeout(() => this.controller.abort(new ScopeAbort("timeout")), timeoutMs);
    this.timeoutMs = timeoutMs;
  }

  /** The error the call fails with because its signal fired, or null while it has not. */
  abortError(): RemoteStorageError | null {
    if (!this.signal.aborted) return null;
    const reason: unknown = this.signal.reason;
    if (reason instanceof ScopeAbort && reason.kind === "timeout") {
      return new RemoteStorageError("timeout", `${this.what}: timed out after ${this.timeoutMs} ms`, { transient: true });
    }
    return new RemoteStorageError("cancelled", `${this.what}: cancelled`, { transient: false });
  }

  /** Throws the abort error if the signal has fired (call between steps). */
  check(): void {
    const e = this.abortError();
    if (e) throw e;
  }

  /**
   * Maps an error thrown inside the call: once the signal fired, whatever the
   * SDK threw is reported as cancelled/timeout (with the original as cause);
   * RemoteStorageErrors pass through; anything else goes to `classify`.
   */
  mapError(err: unknown, classify: (err: unknown) => RemoteStorageError): RemoteStorageError {
    const aborted = this.abortError();
    if (aborted) {
      if (err instanceof RemoteStorageError && (err.code === "cancelled" || err.code === "timeout")) return err;
      return new RemoteStorageError(aborted.code as RemoteErrorCode, aborted.message, { transient: aborted.transient, cause: err });
    }
    if (err instanceof RemoteStorageError) return err;
    return classify(err);
  }

  /** Releases the timer and the listener on the caller's signal. Idempotent. */
  dispose(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.callerSignal && this.onCallerAbort) this.callerSignal.removeEventListener("abort", this.onCallerAbort);
  }

  /** Runs `fn` in a scope that is disposed afterwards, mapping its errors. */
  static async run<T>(
    what: string,
    opts: RemoteOpOptions | undefined,
    defaultTimeoutMs: number,
    classify: (err: unknown) => RemoteStorageError,
    fn: (scope: OpScope) => Promise<T>,
  ): Promise<T> {
    const scope = new OpScope(what, opts, defaultTimeoutMs);
    try {
      scope.check();
      return await raceAbort(scope, fn(scope));
    } catch (err) {
      throw scope.mapError(err, classify);
    } finally {
      scope.dispose();
    }
  }
}

/**
 * Settles with `p`, or rejects as soon as the scope's signal fires — for SDK
 * calls that do not honour an AbortSignal promptly (or at all). The abandoned
 * promise's eventual rejection is swallowed.
 */
export function raceAbort<T>(scope: OpScope, p: Promise<T>): Promise<T> {
  if (scope.signal.aborted) {
    p.catch(() => undefined);
    return Promise.reject(scope.abortError() ?? new Error("aborted"));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(scope.abortError() ?? new Error("aborted"));
    scope.signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        scope.signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        scope.signal.removeEventListener("abort", onAbort);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

/** Node/undici network error codes that mean "the connection failed; try again". */
const TRANSIENT_NETWORK_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EAI_AGAIN",
  "ENOTFOUND",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
  "UND_ERR_SOCKET",
  "UND_ERR_CONNECT_TIMEOUT",
  "ERR_STREAM_PREMATURE_CLOSE",
  "REQUEST_SEND_ERROR",
  "TimeoutError",
]);

/** True if `err` (or a cause) looks like a failed connection rather than an answer. */
export function isNetworkError(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && TRANSIENT_NETWORK_CODES.has(code)) return true;
    if (/socket hang up|ECONNRESET|ECONNREFUSED|premature close|aborted/i.test(e.message)) return true;
  }
  return false;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * `exists` for every backend: a `head` that fails with not_found means "no";
 * any other failure (timeout, network, permission) is reported, never
 * mistaken for absence.
 */
export async function existsViaHead(head: () => Promise<unknown>): Promise<boolean> {
  try {
    await head();
    return true;
  } catch (err) {
    if (err instanceof StrataError && err.code === "not_found") return false;
    throw err;
  }
}
