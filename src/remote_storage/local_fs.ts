/**
 * LocalFsStorage — remote storage in a local directory: the embedded default
 * for a one-machine deployment, and the quickest backend for tests.
 *
 * Layout: object "a/b/c" is the file `<root>/a/b/c`, byte for byte, so the
 * directory can be inspected (and copied to a bucket) with ordinary tools.
 * Two kinds of hidden helper files sit beside objects and are never listed:
 *   `.<name>.<random>.___temp`  an upload in progress (or left by a crash);
 *   `<name>.___meta`            JSON user metadata, written only when given.
 * Paths whose last segment ends in one of those suffixes are refused.
 *
 * Crash safety: an upload writes a temp file in the object's directory,
 * fsyncs it, renames it over the object and fsyncs the directory (and any
 * directories it had to create), so after a crash readers see the old object
 * or the whole new one. Metadata goes to its sidecar before the object is
 * renamed; the sidecar records the inode of the data file it belongs to, and
 * a sidecar whose inode does not match (a crash between the two renames, or a
 * later upload without metadata) is ignored. Stale temp files are invisible
 * and harmless; `cleanupTempFiles` removes them.
 *
 * Listing emulates S3's ListObjectsV2 exactly (UTF-8 byte order, delimiter
 * folding, pages counting objects + prefixes, continuation after the last
 * entry returned). Empty directories left by deletes are not objects and are
 * never reported as common prefixes. One difference from S3 is inherent in a
 * file system: "a" and "a/b" cannot both be objects; such an upload fails
 * with a permanent io_error.
 *
 * Cancellation and timeouts: checked between steps; an upload that is
 * cancelled before its rename leaves nothing behind.
 */
import { createHash, randomBytes } from "node:crypto";
import { constants as fsConstants, type Dirent } from "node:fs";
import { mkdir, open, readdir, readFile, rename, rm, stat, unlink, type FileHandle } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { Writable } from "node:stream";
import { DEFAULT_REMOTE_TIMEOUT_MS, OpScope, invalidArgument, ioError, notFound, raceAbort, existsViaHead, type RemoteOpOptions, type RemoteStorageError } from "./errors.js";
import { compareKeys, type RemotePath, type RemotePrefix } from "./remote_path.js";
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
import { checkPath, checkPrefix, emptyStream, guardDownloadStream, prepareUploadBody, validateMetadata, validateRange } from "./streams.js";

const TEMP_SUFFIX = ".___temp";
const META_SUFFIX = ".___meta";

/** Concurrent unlinks of one deleteMany: enough to hide syscall latency, few enough to not hog the thread pool. */
const DELETE_CONCURRENCY = 8;

export interface LocalFsStorageOptions {
  /** Absolute directory holding the objects; created if missing. */
  root: string;
  defaultTimeoutMs?: number;
}

interface MetaFile {
  ino: number;
  metadata: Record<string, string>;
}

export class LocalFsStorage implements RemoteStorage {
  readonly root: string;
  private readonly defaultTimeoutMs: number;

  constructor(opts: LocalFsStorageOptions) {
    if (!opts.root.startsWith("/")) throw invalidArgument(`local storage root "${opts.root}" must be an absolute path`);
    this.root = resolve(opts.root);
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? DEFAULT_REMOTE_TIMEOUT_MS;
  }

  describe(): string {
    return `file://${this.root}/`;
  }

  async close(): Promise<void> {}

  list(prefix: RemotePrefix, opts?: ListOptions): AsyncIterable<ListPage> {
    return paginate(this, prefix, opts);
  }

  async listPage(prefix: RemotePrefix, opts: ListPageOptions = {}): Promise<ListPage> {
    checkPrefix(prefix);
    const pageSize = checkPageSize(opts.pageSize);
    return this.run(`list "${prefix}"`, opts, async (scope) => {
      const slash = prefix.lastIndexOf("/");
      const dirPart = prefix.slice(0, slash + 1); // "" or "a/b/"
      const namePrefix = prefix.slice(slash + 1);
      const baseDir = join(this.root, dirPart);
      const after = opts.continuationToken;

      type Candidate = { entry: string; isPrefix: boolean };
      let candidates: Candidate[];
      if (opts.delimiter !== undefined) {
        candidates = [];
        for (const d of await readdirOrEmpty(baseDir)) {
          if (!d.name.startsWith(namePrefix) || isHelperName(d.name)) continue;
          if (d.isFile()) candidates.push({ entry: dirPart + d.name, isPrefix: false });
          else if (d.isDirectory()) candidates.push({ entry: `${dirPart}${d.name}/`, isPrefix: true });
        }
      } else {
        candidates = (await this.walkKeys(baseDir, dirPart, namePrefix, scope)).map((k) => ({ entry: k, isPrefix: false }));
      }
      candidates.sort((a, b) => compareKeys(a.entry, b.entry));

      const page: ListPage = { objects: [], prefixes: [] };
      let taken = 0;
      let lastEntry: string | undefined;
      for (const c of candidates) {
        if (after !== undefined && compareKeys(c.entry, after) <= 0) continue;
        scope.check();
        if (c.isPrefix) {
          if (!(await this.hasObject(join(this.root, c.entry), scope))) continue;
          if (taken === pageSize) {
            page.nextToken = lastEntry;
            break;
          }
          page.prefixes.push(c.entry as RemotePrefix);
        } else {
          const obj = await this.statObject(c.entry);
          if (obj === null) continue; // deleted since readdir
          if (taken === pageSize) {
            page.nextToken = lastEntry;
            break;
          }
          page.objects.push(obj);
        }
        taken++;
        lastEntry = c.entry;
      }
      return page;
    });
  }

  async upload(path: RemotePath, body: UploadBody, opts?: UploadOptions): Promise<void> {
    const what = `upload "${path}"`;
    this.checkObjectName(path);
    const metadata = validateMetadata(what, opts?.metadata);
    const scope = new OpScope(what, opts, this.defaultTimeoutMs);
    const file = this.filePath(path);
    const dir = dirname(file);
    const tmp = join(dir, `.${baseNameOf(file)}.${randomBytes(6).toString("hex")}${TEMP_SUFFIX}`);
    let prepared: Awaited<ReturnType<typeof prepareUploadBody>> | undefined;
    let fh: FileHandle | undefined;
    try {
      scope.check();
      prepared = await prepareUploadBody(what, body, opts, scope);
      await this.ensureDir(dir);
      fh = await open(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o644);
      if (prepared.kind === "bytes") {
        await writeAll(fh, prepared.bytes);
      } else {
        await pipeline(prepared.stream, fileSink(fh), { signal: scope.signal });
      }
      scope.check();
      await fh.sync();
      const { ino } = await fh.stat();
      await fh.close();
      fh = undefined;
      scope.check();
      const metaFile = file + META_SUFFIX;
      if (Object.keys(metadata).length > 0) {
        await this.writeSmallFileAtomically(metaFile, JSON.stringify({ ino, metadata } satisfies MetaFile));
      }
      // Point of no return: after this rename the new object is visible.
      await rename(tmp, file);
      await fsyncDir(dir);
      if (Object.keys(metadata).length === 0) await unlink(metaFile).catch(() => undefined);
    } catch (err) {
      if (prepared?.kind === "stream") prepared.stream.destroy();
      await fh?.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
      throw scope.mapError(err, (e) => classifyFsError(what, e, false));
    } finally {
      scope.dispose();
    }
  }

  async download(path: RemotePath, opts?: DownloadOptions): Promise<Download> {
    const what = `download "${path}"`;
    this.checkObjectName(path);
    const range = validateRange(what, opts?.range);
    const scope = new OpScope(what, opts, this.defaultTimeoutMs);
    let fh: FileHandle | undefined;
    try {
      scope.check();
      const file = this.filePath(path);
      fh = await open(file, "r");
      const st = await fh.stat();
      if (!st.isFile()) throw notFound(what);
      const start = Math.min(range?.start ?? 0, st.size);
      const end = Math.min(range?.end ?? st.size, st.size);
      const sizeBytes = Math.max(0, end - start);
      const metadata = await this.readMetadata(file, st.ino);
      const info = { etag: etagOf(st), lastModified: st.mtime, metadata };
      if (sizeBytes === 0) {
        await fh.close();
        scope.dispose();
        return { stream: emptyStream(), sizeBytes: 0, ...info };
      }
      const source = fh.createReadStream({ start, end: end - 1, autoClose: true });
      fh = undefined; // owned by the stream now
      const stream = guardDownloadStream(what, source, sizeBytes, scope, (e) => classifyFsError(what, e));
      return { stream, sizeBytes, ...info };
    } catch (err) {
      await fh?.close().catch(() => undefined);
      scope.dispose();
      throw scope.mapError(err, (e) => classifyFsError(what, e));
    }
  }

  async head(path: RemotePath, opts?: RemoteOpOptions): Promise<RemoteObjectInfo> {
    const what = `head "${path}"`;
    this.checkObjectName(path);
    return this.run(what, opts, async () => {
      const file = this.filePath(path);
      const st = await stat(file);
      if (!st.isFile()) throw notFound(what);
      return { path, sizeBytes: st.size, lastModified: st.mtime, etag: etagOf(st), metadata: await this.readMetadata(file, st.ino) };
    });
  }

  exists(path: RemotePath, opts?: RemoteOpOptions): Promise<boolean> {
    return existsViaHead(() => this.head(path, opts));
  }

  async delete(path: RemotePath, opts?: RemoteOpOptions): Promise<void> {
    const what = `delete "${path}"`;
    this.checkObjectName(path);
    await this.run(what, opts, () => this.deleteFile(path));
  }

  async deleteMany(paths: readonly RemotePath[], opts?: RemoteOpOptions): Promise<void> {
    for (const p of paths) this.checkObjectName(p);
    await this.run(`delete ${paths.length} objects`, opts, async (scope) => {
      for (let i = 0; i < paths.length; i += DELETE_CONCURRENCY) {
        scope.check();
        await Promise.all(paths.slice(i, i + DELETE_CONCURRENCY).map((p) => this.deleteFile(p)));
      }
    });
  }

  async copy(from: RemotePath, to: RemotePath, opts?: RemoteOpOptions): Promise<void> {
    const what = `copy "${from}" to "${to}"`;
    this.checkObjectName(from);
    this.checkObjectName(to);
    const dl = await this.download(from, { ...opts }).catch((err: unknown) => {
      throw err instanceof Error && (err as RemoteStorageError).code === "not_found" ? notFound(`${what}: source`, err) : err;
    });
    await this.upload(to, dl.stream, { ...opts, sizeBytes: dl.sizeBytes, metadata: dl.metadata });
  }

  /** Removes temp files left by crashed uploads (older than `minAgeMs`). Returns how many. */
  async cleanupTempFiles(minAgeMs = 60_000): Promise<number> {
    let removed = 0;
    const stack = [this.root];
    const now = Date.now();
    while (stack.length > 0) {
      const dir = stack.pop() as string;
      for (const d of await readdirOrEmpty(dir)) {
        const p = join(dir, d.name);
        if (d.isDirectory()) stack.push(p);
        else if (d.name.endsWith(TEMP_SUFFIX)) {
          const st = await stat(p).catch(() => null);
          if (st && now - st.mtimeMs >= minAgeMs) {
            await rm(p, { force: true });
            removed++;
          }
        }
      }
    }
    return removed;
  }

  // ---- helpers ----

  private run<T>(what: string, opts: RemoteOpOptions | undefined, fn: (scope: OpScope) => Promise<T>): Promise<T> {
    return OpScope.run(what, opts, this.defaultTimeoutMs, (e) => classifyFsError(what, e), (scope) => raceAbort(scope, fn(scope)));
  }

  private filePath(path: RemotePath): string {
    return join(this.root, ...path.split("/"));
  }

  private checkObjectName(path: RemotePath): void {
    checkPath(path);
    if (isHelperName(path)) {
      throw invalidArgument(`remote path "${path}": names ending in "${TEMP_SUFFIX}" or "${META_SUFFIX}" are reserved by the local backend`);
    }
  }

  private async deleteFile(path: RemotePath): Promise<void> {
    const file = this.filePath(path);
    try {
      await unlink(file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // ENOENT: already gone. EISDIR/EPERM on a directory: "a" is not an object when only "a/b" exists.
      if (code !== "ENOENT" && code !== "EISDIR" && code !== "ENOTDIR" && !(code === "EPERM" && (await isDir(file)))) throw err;
    }
    await unlink(file + META_SUFFIX).catch(() => undefined);
  }

  private async statObject(key: string): Promise<RemoteObject | null> {
    const st = await stat(join(this.root, key)).catch(() => null);
    if (st === null || !st.isFile()) return null;
    return { path: key as RemotePath, sizeBytes: st.size, lastModified: st.mtime, etag: etagOf(st) };
  }

  /** All object keys below baseDir whose name in baseDir starts with namePrefix. Iterative DFS. */
  private async walkKeys(baseDir: string, dirPart: string, namePrefix: string, scope: OpScope): Promise<string[]> {
    const keys: string[] = [];
    const stack: { dir: string; keyPrefix: string; top: boolean }[] = [{ dir: baseDir, keyPrefix: dirPart, top: true }];
    while (stack.length > 0) {
      scope.check();
      const { dir, keyPrefix, top } = stack.pop() as { dir: string; keyPrefix: string; top: boolean };
      for (const d of await readdirOrEmpty(dir)) {
        if (top && !d.name.startsWith(namePrefix)) continue;
        if (d.isDirectory()) stack.push({ dir: join(dir, d.name), keyPrefix: `${keyPrefix}${d.name}/`, top: false });
        else if (d.isFile() && !isHelperName(d.name)) keys.push(keyPrefix + d.name);
      }
    }
    return keys;
  }

  /** True if the directory holds at least one object (at any depth). */
  private async hasObject(dir: string, scope: OpScope): Promise<boolean> {
    const stack = [dir];
    while (stack.length > 0) {
      scope.check();
      const d = stack.pop() as string;
      for (const e of await readdirOrEmpty(d)) {
        if (e.isFile() && !isHelperName(e.name)) return true;
        if (e.isDirectory()) stack.push(join(d, e.name));
      }
    }
    return false;
  }

  private async readMetadata(file: string, ino: number): Promise<Record<string, string>> {
    let text: string;
    try {
      text = await readFile(file + META_SUFFIX, "utf8");
    } catch {
      return {};
    }
    try {
      const parsed = JSON.parse(text) as MetaFile;
      return parsed.ino === ino && typeof parsed.metadata === "object" && parsed.metadata !== null ? parsed.metadata : {};
    } catch {
      return {}; // a torn sidecar cannot exist (it is renamed into place), but never fail a read over metadata
    }
  }

  private async writeSmallFileAtomically(file: string, text: string): Promise<void> {
    const tmp = `${dirname(file)}/.${baseNameOf(file)}.${randomBytes(6).toString("hex")}${TEMP_SUFFIX}`;
    const fh = await open(tmp, "wx", 0o644);
    try {
      await writeAll(fh, Buffer.from(text));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  }

  /** mkdir -p, fsyncing the parent of every directory it created. */
  private async ensureDir(dir: string): Promise<void> {
    let first: string | undefined;
    try {
      first = await mkdir(dir, { recursive: true });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOTDIR" || code === "EEXIST") {
        throw ioError(`cannot create directory "${dir}": a path component is an object (the local backend cannot hold both "a" and "a/b")`, false, err);
      }
      throw err;
    }
    if (first === undefined) return;
    for (let d = dir; ; d = dirname(d)) {
      await fsyncDir(dirname(d));
      if (d === first || d === this.root || d === dirname(d)) break;
    }
  }
}

function checkPageSize(pageSize: number | undefined): number {
  if (pageSize === undefined) return MAX_LIST_PAGE_SIZE;
  if (!Number.isSafeInteger(pageSize) || pageSize < 1 || pageSize > MAX_LIST_PAGE_SIZE) {
    throw invalidArgument(`list: pageSize ${pageSize} is not in 1..${MAX_LIST_PAGE_SIZE}`);
  }
  return pageSize;
}

function isHelperName(name: string): boolean {
  return name.endsWith(TEMP_SUFFIX) || name.endsWith(META_SUFFIX);
}

function baseNameOf(file: string): string {
  return file.slice(file.lastIndexOf("/") + 1);
}

function etagOf(st: { ino: number; size: number; mtimeMs: number }): string {
  return createHash("sha1").update(`${st.ino}:${st.size}:${st.mtimeMs}`).digest("hex").slice(0, 16);
}

async function readdirOrEmpty(dir: string): Promise<Dirent[]> {
  try {
    return await readdir(dir, { withFileTypes: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return [];
    throw err;
  }
}

async function isDir(p: string): Promise<boolean> {
  return (await stat(p).catch(() => null))?.isDirectory() ?? false;
}

async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, off, bytes.length - off);
    off += bytesWritten;
  }
}

function fileSink(fh: FileHandle): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      writeAll(fh, chunk).then(() => cb(), cb);
    },
  });
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** File-system errors: missing is not_found; resource exhaustion is transient; the rest permanent. */
function classifyFsError(what: string, err: unknown, missingIsNotFound = true): RemoteStorageError {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (missingIsNotFound && (code === "ENOENT" || code === "ENOTDIR" || code === "EISDIR")) return notFound(what, err);
  const transient = code === "EAGAIN" || code === "EBUSY" || code === "EMFILE" || code === "ENFILE" || code === "ENOSPC" || code === "EIO" || code === "EINTR";
  return ioError(`${what}: ${err instanceof Error ? err.message : String(err)}`, transient, err);
}
