/**
 * Checks shared by every backend: upload bodies, metadata, byte ranges and
 * the guard around download streams.
 *
 * Backends differ in how they move bytes but must agree on what is accepted
 * and what a short stream means, so those rules live here once:
 * - an upload body must yield exactly `sizeBytes` bytes; more or fewer fails
 *   the upload (permanently: the caller's stream is wrong) before the object
 *   becomes visible, because the length check runs before the backend's
 *   final commit (rename, PutObject end, block-list commit);
 * - a download stream that ends before `sizeBytes` bytes fails with a
 *   transient io_error, so a caller never mistakes a cut connection for a
 *   shorter object;
 * - the call's OpScope (signal + timeout) stays attached to the download
 *   stream until it closes, and is disposed exactly then.
 */
import { Readable, Transform, finished } from "node:stream";
import { invalidArgument, ioError, type OpScope, type RemoteStorageError } from "./errors.js";
import { parseRemotePath, parseRemotePrefix, type RemotePath, type RemotePrefix } from "./remote_path.js";
import type { ByteRange, Download, RemoteObjectInfo, UploadBody, UploadOptions } from "./remote_storage.js";

/**
 * Largest total of metadata keys + values. S3 allows 2 KiB of user metadata
 * per object (Azure 8 KiB); the portable limit is the smaller one.
 */
export const MAX_METADATA_BYTES = 2048;

/** Keys that S3 (lower-cased headers) and Azure (C# identifiers) both keep as given. */
const METADATA_KEY = /^[a-z][a-z0-9_]*$/;
/** Values travel as HTTP header values: printable ASCII only. */
const METADATA_VALUE = /^[\x20-\x7e]*$/;

export function validateMetadata(what: string, metadata: Record<string, string> | undefined): Record<string, string> {
  if (metadata === undefined) return {};
  let total = 0;
  for (const [k, v] of Object.entries(metadata)) {
    if (!METADATA_KEY.test(k)) throw invalidArgument(`${what}: metadata key "${k}" must match ${METADATA_KEY.source}`);
    if (typeof v !== "string" || !METADATA_VALUE.test(v)) {
      throw invalidArgument(`${what}: metadata value of "${k}" must be printable ASCII`);
    }
    total += k.length + v.length;
  }
  if (total > MAX_METADATA_BYTES) throw invalidArgument(`${what}: metadata is ${total} bytes, more than ${MAX_METADATA_BYTES}`);
  return { ...metadata };
}

/** Validates a range; returns it with integer bounds (end may stay undefined). */
export function validateRange(what: string, range: ByteRange | undefined): ByteRange | undefined {
  if (range === undefined) return undefined;
  const { start, end } = range;
  if (!Number.isSafeInteger(start) || start < 0) throw invalidArgument(`${what}: range start ${start} is not a non-negative integer`);
  if (end !== undefined && (!Number.isSafeInteger(end) || end < start)) {
    throw invalidArgument(`${what}: range end ${end} is not an integer >= start ${start}`);
  }
  return end === undefined ? { start } : { start, end };
}

/** The body of an upload after validation: bytes, or a stream that checks its length. */
export type PreparedBody = { kind: "bytes"; bytes: Uint8Array } | { kind: "stream"; stream: Readable; sizeBytes: number };

/** Checks the size option against the body and opens a factory. */
export async function prepareUploadBody(what: string, body: UploadBody, opts: UploadOptions | undefined, scope: OpScope): Promise<PreparedBody> {
  const size = opts?.sizeBytes;
  if (size !== undefined && (!Number.isSafeInteger(size) || size < 0)) throw invalidArgument(`${what}: sizeBytes ${size} is not a non-negative integer`);
  if (body instanceof Uint8Array) {
    if (size !== undefined && size !== body.length) {
      throw invalidArgument(`${what}: sizeBytes ${size} but the body is ${body.length} bytes`);
    }
    return { kind: "bytes", bytes: body };
  }
  const stream = typeof body === "function" ? await body() : body;
  if (size === undefined) {
    stream.destroy();
    throw invalidArgument(`${what}: sizeBytes is required for a stream body`);
  }
  return { kind: "stream", stream: lengthCheckedStream(what, stream, size, scope), sizeBytes: size };
}

/**
 * Passes `source` through, failing if it yields more or fewer than `sizeBytes`
 * bytes, or when the scope is aborted. Destroying the result destroys `source`.
 */
function lengthCheckedStream(what: string, source: Readable, sizeBytes: number, scope: OpScope): Readable {
  let seen = 0;
  const out = new Transform({
    transform(chunk: Buffer | string, _enc, cb) {
      const buf = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
      seen += buf.length;
      if (seen > sizeBytes) cb(invalidArgument(`${what}: body is longer than sizeBytes ${sizeBytes}`));
      else cb(null, buf);
    },
    flush(cb) {
      if (seen !== sizeBytes) cb(invalidArgument(`${what}: body ended after ${seen} bytes, sizeBytes is ${sizeBytes}`));
      else cb();
    },
  });
  wire(source, out, scope, (err) => ioError(`${what}: reading the upload body failed: ${String(err)}`, false, err), undefined);
  return out;
}

/**
 * Wraps a backend's download stream: counts bytes against `sizeBytes`, maps
 * errors, applies the scope's cancellation/timeout, and disposes the scope
 * when the stream closes.
 */
export function guardDownloadStream(
  what: string,
  source: Readable,
  sizeBytes: number,
  scope: OpScope,
  classify: (err: unknown) => RemoteStorageError,
): Readable {
  let seen = 0;
  const out = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      seen += chunk.length;
      if (seen > sizeBytes) cb(ioError(`${what}: got more than the announced ${sizeBytes} bytes`, true));
      else cb(null, chunk);
    },
    flush(cb) {
      if (seen < sizeBytes) cb(ioError(`${what}: stream ended after ${seen} of ${sizeBytes} bytes`, true));
      else cb();
    },
  });
  wire(source, out, scope, classify, () => scope.dispose());
  return out;
}

/** Pipes source into out with error mapping, abort handling and cleanup. */
function wire(
  source: Readable,
  out: Transform,
  scope: OpScope,
  classify: (err: unknown) => RemoteStorageError,
  onClose: (() => void) | undefined,
): void {
  const onAbort = (): void => {
    const err = scope.abortError();
    source.destroy();
    out.destroy(err ?? undefined);
  };
  if (scope.signal.aborted) {
    queueMicrotask(onAbort);
  } else {
    scope.signal.addEventListener("abort", onAbort, { once: true });
  }
  finished(source, (err) => {
    if (err && !out.destroyed) out.destroy(scope.mapError(err, classify));
  });
  // The error stays stored on `out` (`errored`), where pipeline() and async
  // iteration find it even if they attach later; without this listener an
  // error before the consumer attaches would be an uncaught exception.
  out.on("error", () => undefined);
  out.on("close", () => {
    scope.signal.removeEventListener("abort", onAbort);
    if (!source.destroyed) source.destroy();
    onClose?.();
  });
  source.pipe(out);
}

/** What a backend's response says about an object (fields it did not send are absent or undefined). */
export interface ObjectHeaders {
  sizeBytes: number;
  metadata?: Record<string, string> | undefined;
  etag?: string | undefined;
  lastModified?: Date | undefined;
}

/** The object description `head` returns, from a backend's response headers. */
export function objectInfo(path: RemotePath, h: ObjectHeaders): RemoteObjectInfo {
  const info: RemoteObjectInfo = { path, sizeBytes: h.sizeBytes, metadata: h.metadata ?? {} };
  if (h.etag) info.etag = h.etag;
  if (h.lastModified) info.lastModified = h.lastModified;
  return info;
}

/**
 * The Download for a backend's response: its body guarded by
 * guardDownloadStream, or — when there is nothing to read — an empty stream,
 * with the body destroyed and the scope disposed at once.
 */
export function downloadOf(what: string, source: Readable | undefined, h: ObjectHeaders, scope: OpScope, classify: (err: unknown) => RemoteStorageError): Download {
  const dl: Download = { stream: emptyStream(), sizeBytes: h.sizeBytes, metadata: h.metadata ?? {} };
  if (h.etag) dl.etag = h.etag;
  if (h.lastModified) dl.lastModified = h.lastModified;
  if (source === undefined || h.sizeBytes === 0) {
    source?.destroy();
    scope.dispose();
    return dl;
  }
  dl.stream = guardDownloadStream(what, source, h.sizeBytes, scope, classify);
  return dl;
}

/** An empty Download of the object `info` describes (a zero-length range of it). */
export function emptyDownloadOf(info: RemoteObjectInfo): Download {
  const dl: Download = { stream: emptyStream(), sizeBytes: 0, metadata: info.metadata };
  if (info.etag) dl.etag = info.etag;
  if (info.lastModified) dl.lastModified = info.lastModified;
  return dl;
}

/** An empty download stream. */
export function emptyStream(): Readable {
  return Readable.from([]);
}

/** Validates an object name, reporting a bad one as a RemoteStorageError. */
export function checkPath(path: string): RemotePath {
  try {
    return parseRemotePath(path);
  } catch (err) {
    throw invalidArgument((err as Error).message);
  }
}

/** Validates a listing prefix, reporting a bad one as a RemoteStorageError. */
export function checkPrefix(prefix: string): RemotePrefix {
  try {
    return parseRemotePrefix(prefix);
  } catch (err) {
    throw invalidArgument((err as Error).message);
  }
}
