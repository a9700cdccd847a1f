/**
 * S3Storage — remote storage in an S3 bucket or any S3-compatible endpoint
 * (MinIO, Ceph RGW, s3rver in tests), through `@aws-sdk/client-s3`.
 *
 * Object "a/b" is the key `<prefix>/a/b` in the bucket. Mapping of the
 * interface to S3 calls:
 *   listPage   ListObjectsV2 (Prefix, Delimiter, MaxKeys, ContinuationToken)
 *   upload     PutObject with ContentLength; bodies larger than
 *              `multipartThresholdBytes` go through lib-storage's multipart
 *              Upload (parts of `multipartPartSizeBytes`, aborted on failure,
 *              so no half object ever becomes visible)
 *   download   GetObject with `Range: bytes=start-(end-1)`
 *   head       HeadObject;  delete DeleteObject;  copy CopyObject
 *   deleteMany DeleteObjects in batches of S3_MAX_DELETE_BATCH keys
 *
 * Configuration choices and why:
 * - The SDK's own retries are off (maxAttempts 1): RetryingRemoteStorage is
 *   the single retry layer, so attempts do not multiply.
 * - Checksums are computed/validated only "when required": since early 2025
 *   the SDK otherwise sends aws-chunked bodies with trailing CRC32 checksums,
 *   which many S3-compatible servers (s3rver among them) do not understand.
 * - Credentials come from the standard AWS provider chain (environment,
 *   shared config/profile, web identity, instance metadata) unless given
 *   explicitly; the region from the config, else AWS_REGION, else us-east-1.
 *
 * Errors: NoSuchKey/404 -> not_found; HTTP 5xx, 429, throttling codes and
 * failed connections -> transient io_error; other 4xx (denied, no such
 * bucket, bad request) -> permanent io_error. An aborted request is reported
 * as cancelled/timeout by the call's OpScope.
 */
import {
  CopyObjectCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { Transform, type Readable } from "node:stream";
import { DEFAULT_REMOTE_TIMEOUT_MS, OpScope, errorMessage, invalidArgument, ioError, isNetworkError, notFound, existsViaHead, type RemoteOpOptions, type RemoteStorageError } from "./errors.js";
import { normalizeRootPrefix, type RemotePath, type RemotePrefix } from "./remote_path.js";
import {
  MAX_LIST_PAGE_SIZE,
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
import { checkPath, checkPrefix, downloadOf, emptyDownloadOf, objectInfo, prepareUploadBody, validateMetadata, validateRange } from "./streams.js";

/** DeleteObjects accepts at most 1000 keys per request (S3 API limit). */
export const S3_MAX_DELETE_BATCH = 1000;
/** S3's smallest allowed multipart part (except the last). */
export const S3_MIN_PART_SIZE_BYTES = 5 * 1024 * 1024;
/**
 * Above this a stream goes up in parts. 64 MiB keeps typical layer files
 * (tens of MiB) to one request while a 1 GiB image layer uploads in parallel
 * parts that can fail and be re-sent individually.
 */
export const DEFAULT_MULTIPART_THRESHOLD_BYTES = 64 * 1024 * 1024;
/** 16 MiB parts: 4 in flight buffer 64 MiB; 10,000 parts (S3's cap) reach 160 GiB. */
export const DEFAULT_MULTIPART_PART_SIZE_BYTES = 16 * 1024 * 1024;
/** Parts uploaded concurrently by one multipart upload. */
export const MULTIPART_QUEUE_SIZE = 4;

export interface S3StorageOptions {
  bucket: string;
  /** Key prefix under which all objects live ("" for the bucket root). */
  prefix?: string;
  region?: string;
  /** Custom endpoint URL, e.g. http://127.0.0.1:9000 for an S3-compatible server. */
  endpoint?: string;
  /** Address buckets as endpoint/bucket rather than bucket.endpoint (needed by most S3-compatible servers). */
  forcePathStyle?: boolean;
  /** Explicit credentials (tests); otherwise the AWS default provider chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  defaultTimeoutMs?: number;
  multipartThresholdBytes?: number;
  multipartPartSizeBytes?: number;
}

export class S3Storage implements RemoteStorage {
  readonly client: S3Client;
  readonly bucket: string;
  private readonly rootPrefix: string;
  private readonly defaultTimeoutMs: number;
  private readonly multipartThresholdBytes: number;
  private readonly multipartPartSizeBytes: number;
  private readonly endpoint: string | undefined;

  constructor(opts: S3StorageOptions) {
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(opts.bucket)) {
      throw invalidArgument(`S3 bucket name "${opts.bucket}" is not valid (3-63 characters of a-z, 0-9, ".", "-")`);
    }
    this.bucket = opts.bucket;
    this.rootPrefix = normalizeRootPrefix(opts.prefix);
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? DEFAULT_REMOTE_TIMEOUT_MS;
    this.multipartThresholdBytes = opts.multipartThresholdBytes ?? DEFAULT_MULTIPART_THRESHOLD_BYTES;
    this.multipartPartSizeBytes = opts.multipartPartSizeBytes ?? DEFAULT_MULTIPART_PART_SIZE_BYTES;
    if (this.multipartPartSizeBytes < S3_MIN_PART_SIZE_BYTES) {
      throw invalidArgument(`S3 multipart part size ${this.multipartPartSizeBytes} is below S3's minimum of ${S3_MIN_PART_SIZE_BYTES} bytes`);
    }
    this.endpoint = opts.endpoint;
    const config: S3ClientConfig = {
      region: opts.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? "us-east-1",
      forcePathStyle: opts.forcePathStyle ?? false,
      maxAttempts: 1,
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
      // Errors are reported (and logged once, where handled) through our own
      // error types; the SDK's console warnings would be a second, unstructured copy.
      logger: { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined },
    };
    if (opts.endpoint !== undefined) config.endpoint = opts.endpoint;
    if (opts.credentials !== undefined) config.credentials = opts.credentials;
    this.client = new S3Client(config);
  }

  describe(): string {
    return `s3://${this.bucket}/${this.rootPrefix}${this.endpoint ? ` (endpoint ${this.endpoint})` : ""}`;
  }

  async close(): Promise<void> {
    this.client.destroy();
  }

  list(prefix: RemotePrefix, opts?: ListOptions): AsyncIterable<ListPage> {
    return paginate(this, prefix, opts);
  }

  async listPage(prefix: RemotePrefix, opts: ListPageOptions = {}): Promise<ListPage> {
    checkPrefix(prefix);
    const pageSize = opts.pageSize ?? MAX_LIST_PAGE_SIZE;
    if (!Number.isSafeInteger(pageSize) || pageSize < 1 || pageSize > MAX_LIST_PAGE_SIZE) {
      throw invalidArgument(`list: pageSize ${pageSize} is not in 1..${MAX_LIST_PAGE_SIZE}`);
    }
    const what = `list "${prefix}"`;
    return this.run(what, opts, async (scope) => {
      const res = await this.client.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: this.rootPrefix + prefix,
          Delimiter: opts.delimiter,
          MaxKeys: pageSize,
          ContinuationToken: opts.continuationToken,
        }),
        { abortSignal: scope.signal },
      );
      const page: ListPage = { objects: [], prefixes: [] };
      for (const o of res.Contents ?? []) {
        if (o.Key === undefined) continue;
        const obj: ListPage["objects"][number] = { path: this.relative(o.Key) as RemotePath, sizeBytes: o.Size ?? 0 };
        if (o.LastModified) obj.lastModified = o.LastModified;
        if (o.ETag) obj.etag = o.ETag;
        page.objects.push(obj);
      }
      for (const p of res.CommonPrefixes ?? []) {
        if (p.Prefix !== undefined) page.prefixes.push(this.relative(p.Prefix) as RemotePrefix);
      }
      if (res.IsTruncated && res.NextContinuationToken) page.nextToken = res.NextContinuationToken;
      return page;
    });
  }

  async upload(path: RemotePath, body: UploadBody, opts?: UploadOptions): Promise<void> {
    const what = `upload "${path}"`;
    checkPath(path);
    const metadata = validateMetadata(what, opts?.metadata);
    const scope = new OpScope(what, opts, this.defaultTimeoutMs);
    // Aborts the request when the scope fires *or* the body fails: the SDK
    // does not notice a failed body stream and would wait for the server,
    // which waits for the rest of the announced Content-Length.
    const request = new AbortController();
    const abortRequest = (): void => request.abort();
    scope.signal.addEventListener("abort", abortRequest, { once: true });
    let bodyError: unknown;
    let stream: Readable | undefined;
    try {
      scope.check();
      const prepared = await prepareUploadBody(what, body, opts, scope);
      if (prepared.kind === "stream") {
        stream = prepared.stream;
        stream.once("error", (err) => {
          bodyError ??= err;
          request.abort();
        });
      }
      const Key = this.key(path);
      if (prepared.kind === "bytes" || prepared.sizeBytes <= this.multipartThresholdBytes) {
        await this.client.send(
          new PutObjectCommand({
            Bucket: this.bucket,
            Key,
            Body: prepared.kind === "bytes" ? prepared.bytes : prepared.stream,
            ContentLength: prepared.kind === "bytes" ? prepared.bytes.length : prepared.sizeBytes,
            Metadata: metadata,
          }),
          { abortSignal: request.signal },
        );
      } else {
        const up = new Upload({
          client: this.client,
          params: { Bucket: this.bucket, Key, Body: prepared.stream, Metadata: metadata },
          partSize: this.multipartPartSizeBytes,
          queueSize: MULTIPART_QUEUE_SIZE,
          leavePartsOnError: false,
          abortController: request,
        });
        await up.done();
      }
      if (bodyError !== undefined) throw bodyError;
    } catch (err) {
      stream?.destroy();
      throw scope.mapError(bodyError ?? err, (e) => classifyS3Error(what, e));
    } finally {
      scope.signal.removeEventListener("abort", abortRequest);
      scope.dispose();
    }
  }

  async download(path: RemotePath, opts?: DownloadOptions): Promise<Download> {
    const what = `download "${path}"`;
    checkPath(path);
    const range = validateRange(what, opts?.range);
    if (range !== undefined && range.end !== undefined && range.end === range.start) {
      // An empty range cannot be expressed as a Range header ("bytes=5-4" is ignored by S3).
      return emptyDownloadOf(await this.head(path, opts));
    }
    const scope = new OpScope(what, opts, this.defaultTimeoutMs);
    const classify = (e: unknown): RemoteStorageError => classifyS3Error(what, e);
    try {
      scope.check();
      const Range = range === undefined ? undefined : `bytes=${range.start}-${range.end === undefined ? "" : range.end - 1}`;
      let res;
      try {
        res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.key(path), Range }), { abortSignal: scope.signal });
      } catch (err) {
        if (Range !== undefined && httpStatus(err) === 416) {
          // Start at or past the end: S3 answers 416 InvalidRange; the contract says "empty".
          scope.dispose();
          const info = await this.head(path, opts);
          return emptyDownloadOf(info);
        }
        throw err;
      }
      let source = res.Body as Readable | undefined;
      let sizeBytes = res.ContentLength ?? 0;
      if (range !== undefined && source !== undefined) {
        // HTTP lets a server ignore or widen a Range (s3rver answers "bytes=0-0"
        // with the whole object): cut what we asked for out of what was sent.
        const served = parseContentRange(res.ContentRange) ?? { start: 0, end: sizeBytes };
        const wantStart = range.start;
        const wantEnd = Math.min(range.end ?? served.end, served.end);
        if (served.start > wantStart || wantEnd < wantStart) throw ioError(`${what}: server sent bytes [${served.start}, ${served.end}) for a request of [${range.start}, ${range.end ?? ""})`, false);
        if (served.start !== wantStart || served.end !== wantEnd) {
          source = sliceStream(source, wantStart - served.start, wantEnd - wantStart);
          sizeBytes = wantEnd - wantStart;
        }
      }
      return downloadOf(what, source, { sizeBytes, metadata: res.Metadata, etag: res.ETag, lastModified: res.LastModified }, scope, classify);
    } catch (err) {
      scope.dispose();
      throw scope.mapError(err, classify);
    }
  }

  async head(path: RemotePath, opts?: RemoteOpOptions): Promise<RemoteObjectInfo> {
    const what = `head "${path}"`;
    checkPath(path);
    return this.run(what, opts, async (scope) => {
      const res = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.key(path) }), { abortSignal: scope.signal });
      return objectInfo(path, { sizeBytes: res.ContentLength ?? 0, metadata: res.Metadata, etag: res.ETag, lastModified: res.LastModified });
    });
  }

  exists(path: RemotePath, opts?: RemoteOpOptions): Promise<boolean> {
    return existsViaHead(() => this.head(path, opts));
  }

  async delete(path: RemotePath, opts?: RemoteOpOptions): Promise<void> {
    const what = `delete "${path}"`;
    checkPath(path);
    await this.run(what, opts, async (scope) => {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.key(path) }), { abortSignal: scope.signal });
    });
  }

  async deleteMany(paths: readonly RemotePath[], opts?: RemoteOpOptions): Promise<void> {
    for (const p of paths) checkPath(p);
    const what = `delete ${paths.length} objects`;
    await this.run(what, opts, async (scope) => {
      for (let i = 0; i < paths.length; i += S3_MAX_DELETE_BATCH) {
        const batch = paths.slice(i, i + S3_MAX_DELETE_BATCH);
        const res = await this.client.send(
          new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: batch.map((p) => ({ Key: this.key(p) })), Quiet: true } }),
          { abortSignal: scope.signal },
        );
        const errors = (res.Errors ?? []).filter((e) => e.Code !== "NoSuchKey");
        if (errors.length > 0) {
          const first = errors[0];
          const transient = errors.every((e) => TRANSIENT_S3_CODES.has(e.Code ?? ""));
          throw ioError(`${what}: ${errors.length} keys failed, first "${first?.Key}": ${first?.Code} ${first?.Message ?? ""}`, transient);
        }
      }
    });
  }

  async copy(from: RemotePath, to: RemotePath, opts?: RemoteOpOptions): Promise<void> {
    const what = `copy "${from}" to "${to}"`;
    checkPath(from);
    checkPath(to);
    await this.run(what, opts, async (scope) => {
      const source = `${this.bucket}/${this.key(from).split("/").map(encodeURIComponent).join("/")}`;
      await this.client.send(new CopyObjectCommand({ Bucket: this.bucket, Key: this.key(to), CopySource: source }), { abortSignal: scope.signal });
    });
  }

  private run<T>(what: string, opts: RemoteOpOptions | undefined, fn: (scope: OpScope) => Promise<T>): Promise<T> {
    return OpScope.run(what, opts, this.defaultTimeoutMs, (e) => classifyS3Error(what, e), fn);
  }

  private key(path: RemotePath): string {
    return this.rootPrefix + path;
  }

  private relative(key: string): string {
    return key.startsWith(this.rootPrefix) ? key.slice(this.rootPrefix.length) : key;
  }
}

/** "bytes 0-999/1000" -> [0, 1000). */
function parseContentRange(header: string | undefined): { start: number; end: number } | undefined {
  const m = header === undefined ? null : /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header);
  if (!m) return undefined;
  return { start: Number(m[1]), end: Number(m[2]) + 1 };
}

/** Skips `skip` bytes of `source`, passes the next `take`, then stops reading it. */
function sliceStream(source: Readable, skip: number, take: number): Readable {
  let pos = 0;
  const out = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      const from = Math.max(0, skip - pos);
      const to = Math.min(chunk.length, skip + take - pos);
      pos += chunk.length;
      if (to > from) this.push(chunk.subarray(from, to));
      if (pos >= skip + take) {
        this.push(null);
        source.unpipe(out);
        source.destroy();
      }
      cb();
    },
  });
  source.on("error", (err) => out.destroy(err));
  out.on("error", () => undefined); // surfaced by guardDownloadStream, which reads `out`
  return source.pipe(out);
}

/** S3 error codes that mean "busy or broken for now". */
const TRANSIENT_S3_CODES = new Set([
  "SlowDown",
  "Throttling",
  "ThrottlingException",
  "RequestThrottled",
  "TooManyRequests",
  "RequestTimeout",
  "RequestTimeoutException",
  "InternalError",
  "ServiceUnavailable",
  "OperationAborted",
]);

function httpStatus(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}

export function classifyS3Error(what: string, err: unknown): RemoteStorageError {
  const name = (err as { name?: string; Code?: string } | undefined)?.name ?? "";
  const status = httpStatus(err);
  const detail = `${name}${status !== undefined ? ` (HTTP ${status})` : ""}: ${errorMessage(err)}`;
  if (name === "NoSuchBucket") return ioError(`${what}: the bucket does not exist: ${detail}`, false, err);
  if (name === "NoSuchKey" || name === "NotFound" || status === 404) return notFound(what, err);
  if (TRANSIENT_S3_CODES.has(name) || status === 429 || (status !== undefined && status >= 500)) {
    return ioError(`${what}: ${detail}`, true, err);
  }
  if (status !== undefined) return ioError(`${what}: ${detail}`, false, err);
  if (isNetworkError(err) || (err as { $fault?: string }).$fault === "server") return ioError(`${what}: ${detail}`, true, err);
  // No HTTP answer and not a known network failure: a bug or a misconfiguration; retrying will not help.
  return ioError(`${what}: ${detail}`, false, err);
}
