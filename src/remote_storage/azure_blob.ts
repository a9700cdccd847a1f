/**
 * AzureBlobStorage — remote storage in an Azure Blob container (Azurite in
 * tests), through `@azure/storage-blob`.
 *
 * Object "a/b" is the block blob `<prefix>/a/b` in the container. Mapping:
 *   listPage   List Blobs, flat or by hierarchy with delimiter "/", one page
 *              per call (maxPageSize, continuation marker)
 *   upload     Put Blob for bytes; for streams, staged blocks committed with
 *              one Put Block List — atomic: an uncommitted upload is invisible
 *   download   Get Blob with an offset/count range
 *   head       Get Blob Properties;  delete Delete Blob (if it exists)
 *   deleteMany individual deletes, AZURE_DELETE_CONCURRENCY at a time (the
 *              Blob Batch API is not available on every endpoint, Azurite's
 *              support is partial, and deletes are rare and small)
 *   copy       Copy Blob within the account, polled until done
 *
 * Like the S3 backend, the SDK's retries are off (maxTries 1, and no
 * automatic re-reads of broken download streams): RetryingRemoteStorage is
 * the single retry layer. Credentials: a connection string, or an account
 * name + shared key (+ an endpoint for Azurite or sovereign clouds).
 *
 * Errors: 404 (BlobNotFound) -> not_found, except ContainerNotFound which is
 * a permanent configuration error; 408/429/5xx and failed connections ->
 * transient; other 4xx -> permanent.
 */
import { BlobServiceClient, StorageSharedKeyCredential, type ContainerClient, type StoragePipelineOptions } from "@azure/storage-blob";
import type { Readable } from "node:stream";
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
  type RemoteObject,
  type RemoteObjectInfo,
  type RemoteStorage,
  type UploadBody,
  type UploadOptions,
} from "./remote_storage.js";
import { checkPath, checkPrefix, downloadOf, emptyDownloadOf, objectInfo, prepareUploadBody, validateMetadata, validateRange } from "./streams.js";

/** Deletes in flight during one deleteMany: bounded so a large delete does not open hundreds of sockets. */
export const AZURE_DELETE_CONCURRENCY = 16;
/** Block size of stream uploads: 8 MiB blocks, 4 in flight, buffer at most 32 MiB per upload. */
export const AZURE_UPLOAD_BLOCK_BYTES = 8 * 1024 * 1024;
export const AZURE_UPLOAD_CONCURRENCY = 4;
/** How often a server-side copy is polled; copies inside one account usually finish at once. */
const COPY_POLL_INTERVAL_MS = 200;

export interface AzureBlobStorageOptions {
  container: string;
  /** Blob name prefix under which all objects live ("" for the container root). */
  prefix?: string;
  /** A full connection string; if given, account/accountKey/endpoint are not used. */
  connectionString?: string;
  account?: string;
  accountKey?: string;
  /** Blob service URL; default https://<account>.blob.core.windows.net. Azurite: http://127.0.0.1:<port>/<account>. */
  endpoint?: string;
  defaultTimeoutMs?: number;
}

export class AzureBlobStorage implements RemoteStorage {
  readonly container: ContainerClient;
  private readonly rootPrefix: string;
  private readonly defaultTimeoutMs: number;

  constructor(opts: AzureBlobStorageOptions) {
    if (!/^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$/.test(opts.container)) {
      throw invalidArgument(`Azure container name "${opts.container}" is not valid (3-63 characters of a-z, 0-9 and single "-")`);
    }
    this.rootPrefix = normalizeRootPrefix(opts.prefix);
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? DEFAULT_REMOTE_TIMEOUT_MS;
    const pipeline: StoragePipelineOptions = { retryOptions: { maxTries: 1 } };
    let service: BlobServiceClient;
    if (opts.connectionString !== undefined) {
      service = BlobServiceClient.fromConnectionString(opts.connectionString, pipeline);
    } else {
      if (opts.account === undefined || opts.accountKey === undefined) {
        throw invalidArgument("Azure storage needs a connection string, or an account name and key");
      }
      const endpoint = opts.endpoint ?? `https://${opts.account}.blob.core.windows.net`;
      service = new BlobServiceClient(endpoint, new StorageSharedKeyCredential(opts.account, opts.accountKey), pipeline);
    }
    this.container = service.getContainerClient(opts.container);
  }

  describe(): string {
    return `azure://${this.container.containerName}/${this.rootPrefix} (${this.container.url})`;
  }

  async close(): Promise<void> {}

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
      const settings = { continuationToken: opts.continuationToken, maxPageSize: pageSize };
      const listOpts = { prefix: this.rootPrefix + prefix, abortSignal: scope.signal };
      const page: ListPage = { objects: [], prefixes: [] };
      let token: string | undefined;
      if (opts.delimiter !== undefined) {
        const r = await this.container.listBlobsByHierarchy(opts.delimiter, listOpts).byPage(settings).next();
        if (!r.done) {
          for (const b of r.value.segment.blobItems) page.objects.push(this.object(b));
          for (const p of r.value.segment.blobPrefixes ?? []) page.prefixes.push(this.relative(p.name) as RemotePrefix);
          token = r.value.continuationToken;
        }
      } else {
        const r = await this.container.listBlobsFlat(listOpts).byPage(settings).next();
        if (!r.done) {
          for (const b of r.value.segment.blobItems) page.objects.push(this.object(b));
          token = r.value.continuationToken;
        }
      }
      if (token) page.nextToken = token;
      return page;
    });
  }

  async upload(path: RemotePath, body: UploadBody, opts?: UploadOptions): Promise<void> {
    const what = `upload "${path}"`;
    checkPath(path);
    const metadata = validateMetadata(what, opts?.metadata);
    const scope = new OpScope(what, opts, this.defaultTimeoutMs);
    // Aborts the requests when the scope fires or the body fails, so a broken
    // body never leaves a request waiting for bytes that will not come.
    const request = new AbortController();
    const abortRequest = (): void => request.abort();
    scope.signal.addEventListener("abort", abortRequest, { once: true });
    let bodyError: unknown;
    let stream: Readable | undefined;
    try {
      scope.check();
      const prepared = await prepareUploadBody(what, body, opts, scope);
      const blob = this.container.getBlockBlobClient(this.name(path));
      if (prepared.kind === "bytes") {
        await blob.upload(prepared.bytes, prepared.bytes.length, { metadata, abortSignal: request.signal });
      } else {
        stream = prepared.stream;
        stream.once("error", (err) => {
          bodyError ??= err;
          request.abort();
        });
        await blob.uploadStream(prepared.stream, AZURE_UPLOAD_BLOCK_BYTES, AZURE_UPLOAD_CONCURRENCY, { metadata, abortSignal: request.signal });
      }
      if (bodyError !== undefined) throw bodyError;
    } catch (err) {
      stream?.destroy();
      throw scope.mapError(bodyError ?? err, (e) => classifyAzureError(what, e));
    } finally {
      scope.signal.removeEventListener("abort", abortRequest);
      scope.dispose();
    }
  }

  async download(path: RemotePath, opts?: DownloadOptions): Promise<Download> {
    const what = `download "${path}"`;
    checkPath(path);
    const range = validateRange(what, opts?.range);
    const classify = (e: unknown): RemoteStorageError => classifyAzureError(what, e);
    if (range !== undefined && range.end !== undefined && range.end === range.start) return this.emptyDownload(path, opts);
    const scope = new OpScope(what, opts, this.defaultTimeoutMs);
    try {
      scope.check();
      const blob = this.container.getBlobClient(this.name(path));
      const offset = range?.start ?? 0;
      const count = range?.end === undefined ? undefined : range.end - offset;
      let res;
      try {
        res = await blob.download(offset, count, { abortSignal: scope.signal, maxRetryRequests: 0 });
      } catch (err) {
        if ((err as { statusCode?: number }).statusCode === 416) {
          // Start at or past the end (or any range of an empty blob): the contract says "empty".
          scope.dispose();
          return await this.emptyDownload(path, opts);
        }
        throw err;
      }
      const headers = { sizeBytes: res.contentLength ?? 0, metadata: res.metadata, etag: res.etag, lastModified: res.lastModified };
      return downloadOf(what, res.readableStreamBody as Readable | undefined, headers, scope, classify);
    } catch (err) {
      scope.dispose();
      throw scope.mapError(err, classify);
    }
  }

  async head(path: RemotePath, opts?: RemoteOpOptions): Promise<RemoteObjectInfo> {
    const what = `head "${path}"`;
    checkPath(path);
    return this.run(what, opts, async (scope) => {
      const p = await this.container.getBlobClient(this.name(path)).getProperties({ abortSignal: scope.signal });
      return objectInfo(path, { sizeBytes: p.contentLength ?? 0, metadata: p.metadata, etag: p.etag, lastModified: p.lastModified });
    });
  }

  exists(path: RemotePath, opts?: RemoteOpOptions): Promise<boolean> {
    return existsViaHead(() => this.head(path, opts));
  }

  async delete(path: RemotePath, opts?: RemoteOpOptions): Promise<void> {
    const what = `delete "${path}"`;
    checkPath(path);
    await this.run(what, opts, async (scope) => {
      await this.deleteBlob(path, scope);
    });
  }

  async deleteMany(paths: readonly RemotePath[], opts?: RemoteOpOptions): Promise<void> {
    for (const p of paths) checkPath(p);
    await this.run(`delete ${paths.length} objects`, opts, async (scope) => {
      for (let i = 0; i < paths.length; i += AZURE_DELETE_CONCURRENCY) {
        scope.check();
        await Promise.all(paths.slice(i, i + AZURE_DELETE_CONCURRENCY).map((p) => this.deleteBlob(p, scope)));
      }
    });
  }

  async copy(from: RemotePath, to: RemotePath, opts?: RemoteOpOptions): Promise<void> {
    const what = `copy "${from}" to "${to}"`;
    checkPath(from);
    checkPath(to);
    await this.run(what, opts, async (scope) => {
      const source = this.container.getBlobClient(this.name(from));
      const target = this.container.getBlobClient(this.name(to));
      const poller = await target.beginCopyFromURL(source.url, { abortSignal: scope.signal, intervalInMs: COPY_POLL_INTERVAL_MS });
      const result = await poller.pollUntilDone();
      if (result.copyStatus !== undefined && result.copyStatus !== "success") {
        throw ioError(`${what}: copy ended with status ${result.copyStatus}`, true);
      }
    });
  }

  private async deleteBlob(path: RemotePath, scope: OpScope): Promise<void> {
    await this.container.getBlobClient(this.name(path)).deleteIfExists({ abortSignal: scope.signal });
  }

  private async emptyDownload(path: RemotePath, opts: RemoteOpOptions | undefined): Promise<Download> {
    return emptyDownloadOf(await this.head(path, opts));
  }

  private run<T>(what: string, opts: RemoteOpOptions | undefined, fn: (scope: OpScope) => Promise<T>): Promise<T> {
    return OpScope.run(what, opts, this.defaultTimeoutMs, (e) => classifyAzureError(what, e), fn);
  }

  private name(path: RemotePath): string {
    return this.rootPrefix + path;
  }

  private relative(name: string): string {
    return name.startsWith(this.rootPrefix) ? name.slice(this.rootPrefix.length) : name;
  }

  private object(b: { name: string; properties: { contentLength?: number; lastModified?: Date; etag?: string } }): RemoteObject {
    const o: RemoteObject = { path: this.relative(b.name) as RemotePath, sizeBytes: b.properties.contentLength ?? 0 };
    if (b.properties.lastModified) o.lastModified = b.properties.lastModified;
    if (b.properties.etag) o.etag = b.properties.etag;
    return o;
  }
}

export function classifyAzureError(what: string, err: unknown): RemoteStorageError {
  const e = err as { statusCode?: number; code?: string; name?: string } | undefined;
  const status = e?.statusCode;
  const code = e?.code ?? "";
  const detail = `${code || e?.name || "error"}${status !== undefined ? ` (HTTP ${status})` : ""}: ${errorMessage(err)}`;
  if (code === "ContainerNotFound") return ioError(`${what}: the container does not exist: ${detail}`, false, err);
  if (status === 404 || code === "BlobNotFound") return notFound(what, err);
  if (status === 408 || status === 429 || (status !== undefined && status >= 500)) return ioError(`${what}: ${detail}`, true, err);
  if (status !== undefined && status > 0) return ioError(`${what}: ${detail}`, false, err);
  if (isNetworkError(err)) return ioError(`${what}: ${detail}`, true, err);
  return ioError(`${what}: ${detail}`, false, err);
}
