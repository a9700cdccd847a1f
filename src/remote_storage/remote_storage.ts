/**
 * The RemoteStorage interface: the one way strata reads and writes its
 * durable tier (DESIGN.md §7), whatever is behind it — a local directory, S3
 * or an S3-compatible store, or Azure Blob.
 *
 *   pageserver upload queue / attach / safekeeper WAL offload
 *                        |
 *          RetryingRemoteStorage (bounded, transient errors only)
 *                        |
 *     [FaultInjectingRemoteStorage in tests of the layers above]
 *                        |
 *        LocalFsStorage | S3Storage | AzureBlobStorage
 *
 * The contract every backend keeps (tested by one shared conformance suite,
 * test/remote_storage_conformance.ts, run against all three):
 * - Names are RemotePath / RemotePrefix values (remote_path.ts), resolved
 *   under the backend's configured root. Byte ranges are half-open [start, end).
 * - An upload is atomic: readers see the old object or the whole new one,
 *   never a part; a failed or cancelled upload leaves the old state.
 *   Overwriting is allowed (last writer wins).
 * - `list` is S3's ListObjectsV2: keys in UTF-8 byte order; with delimiter
 *   "/" keys below the next "/" after the prefix are folded into one common
 *   prefix; a page holds at most `pageSize` entries (objects + prefixes).
 * - `delete`/`deleteMany` succeed for keys that do not exist (S3 semantics);
 *   `head`, `download` and the source of `copy` fail with "not_found".
 * - Every call takes an AbortSignal and a timeout (errors.ts): the call ends
 *   promptly with "cancelled" or "timeout". For `download` both keep covering
 *   the returned stream until it ends or is destroyed.
 * - Backends never retry by themselves (their SDKs' retries are switched off):
 *   retrying is the RetryingRemoteStorage wrapper's job, so attempts do not
 *   multiply across layers and the limit is one named constant.
 */
import type { Readable } from "node:stream";
import type { RemoteOpOptions } from "./errors.js";
import type { RemotePath, RemotePrefix } from "./remote_path.js";

export type { RemoteOpOptions } from "./errors.js";

/** One object in a listing. */
export interface RemoteObject {
  path: RemotePath;
  sizeBytes: number;
  lastModified?: Date;
  /** Opaque version tag; changes when the object is overwritten. */
  etag?: string;
}

/** What `head` returns. */
export interface RemoteObjectInfo extends RemoteObject {
  /** User metadata given at upload ({} if none). */
  metadata: Record<string, string>;
}

/** Entries of one listing page. */
export interface ListPage {
  objects: RemoteObject[];
  /** With a delimiter: the folded "directories", each ending in the delimiter. */
  prefixes: RemotePrefix[];
  /** Pass to the next `listPage` call; absent on the last page. */
  nextToken?: string;
}

/** S3 answers at most 1000 keys per ListObjectsV2 page; we use the same cap everywhere. */
export const MAX_LIST_PAGE_SIZE = 1000;

export interface ListOptions extends RemoteOpOptions {
  /** Fold keys into common prefixes at this delimiter. Only "/" is supported. */
  delimiter?: "/";
  /** Entries per page, 1..MAX_LIST_PAGE_SIZE (default: the maximum). */
  pageSize?: number;
}

export interface ListPageOptions extends ListOptions {
  /** `nextToken` of the previous page. */
  continuationToken?: string;
}

/**
 * An upload body. Bytes and factories can be sent again, so the retry wrapper
 * retries uploads of those; a bare Readable can be consumed only once, so an
 * upload from one is tried once.
 */
export type UploadBody = Uint8Array | Readable | (() => Readable | Promise<Readable>);

export interface UploadOptions extends RemoteOpOptions {
  /** Exact body length; required for streams. A body of another length fails the upload. */
  sizeBytes?: number;
  /**
   * User metadata: keys of [a-z0-9_] starting with a letter, printable ASCII
   * values, at most MAX_METADATA_BYTES in total (the strictest of the backends).
   */
  metadata?: Record<string, string>;
}

/** Half-open byte range. `end` defaults to the end of the object and is clamped to it. */
export interface ByteRange {
  start: number;
  end?: number;
}

export interface DownloadOptions extends RemoteOpOptions {
  /** Download only [start, end). A start at or past the end gives an empty stream. */
  range?: ByteRange;
}

/** A started download. Read `stream` to the end or destroy it. */
export interface Download {
  stream: Readable;
  /** Bytes `stream` will yield. A stream that ends short fails with a transient io_error. */
  sizeBytes: number;
  etag?: string;
  lastModified?: Date;
  metadata: Record<string, string>;
}

export interface RemoteStorage {
  /** Human-readable location for logs, e.g. `s3://bucket/prefix/`. Never includes secrets. */
  describe(): string;

  /** One page of a listing; pass `nextToken` back as `continuationToken` for the next. */
  listPage(prefix: RemotePrefix, opts?: ListPageOptions): Promise<ListPage>;

  /** All pages of a listing, fetched lazily one `listPage` call at a time. */
  list(prefix: RemotePrefix, opts?: ListOptions): AsyncIterable<ListPage>;

  /** Creates or replaces the object atomically. */
  upload(path: RemotePath, body: UploadBody, opts?: UploadOptions): Promise<void>;

  /** Starts a (ranged) download; fails with "not_found" before returning a stream. */
  download(path: RemotePath, opts?: DownloadOptions): Promise<Download>;

  /** Size and metadata; "not_found" if missing. */
  head(path: RemotePath, opts?: RemoteOpOptions): Promise<RemoteObjectInfo>;

  /** `head` without the not_found error. */
  exists(path: RemotePath, opts?: RemoteOpOptions): Promise<boolean>;

  /** Deletes one object; a missing object is not an error. */
  delete(path: RemotePath, opts?: RemoteOpOptions): Promise<void>;

  /** Deletes many objects (batched per backend limits); missing objects are not an error. */
  deleteMany(paths: readonly RemotePath[], opts?: RemoteOpOptions): Promise<void>;

  /** Server-side copy (the destination is replaced atomically, metadata included). */
  copy(from: RemotePath, to: RemotePath, opts?: RemoteOpOptions): Promise<void>;

  /** Releases connections and timers. The storage is unusable afterwards. */
  close(): Promise<void>;
}

/** The `list` every implementation shares: a loop over `listPage`. */
export async function* paginate(storage: RemoteStorage, prefix: RemotePrefix, opts: ListOptions = {}): AsyncGenerator<ListPage> {
  let continuationToken: string | undefined;
  for (;;) {
    const page = await storage.listPage(prefix, { ...opts, continuationToken });
    yield page;
    if (page.nextToken === undefined) return;
    continuationToken = page.nextToken;
  }
}

/** Every object and common prefix under `prefix` (all pages concatenated). */
export async function listAll(
  storage: RemoteStorage,
  prefix: RemotePrefix,
  opts: ListOptions = {},
): Promise<{ objects: RemoteObject[]; prefixes: RemotePrefix[] }> {
  const objects: RemoteObject[] = [];
  const prefixes: RemotePrefix[] = [];
  for await (const page of storage.list(prefix, opts)) {
    objects.push(...page.objects);
    prefixes.push(...page.prefixes);
  }
  return { objects, prefixes };
}

/** Downloads a whole object (or range) into memory. For small objects: index files, tests. */
export async function downloadBytes(storage: RemoteStorage, path: RemotePath, opts?: DownloadOptions): Promise<Buffer> {
  const dl = await storage.download(path, opts);
  const chunks: Buffer[] = [];
  for await (const chunk of dl.stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
