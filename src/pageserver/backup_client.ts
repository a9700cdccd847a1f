/**
 * The client side of the page service's basebackup / fullbackup (contract
 * A): what the control plane uses to give a compute its data directory and
 * what `strata timeline export` writes to a file.
 *
 *   fetchBackupToFile  -> backup_receive.ts copyOutBatches("fullbackup <t> <tl> [lsn] [--gzip]")
 *        -> direct_file_writer.ts (O_DIRECT) -> file (tmp, fdatasync, rename)
 *   fetchBackupIntoDir -> PgClient.copyOut(...) -> (gunzip) -> tar-stream extract -> files under dir
 *
 * Both stream: CopyData payloads are written as they arrive and the client
 * pauses the socket while the disk is behind (bounded queues), so memory
 * stays bounded whatever the database size. On the file path the socket
 * reads into a recycled ring (backup_receive.ts says why that matters) and
 * the payloads are copied once, into the direct writer's staging areas,
 * which write past the page cache (direct_file_writer.ts says why).
 *
 * fetchBackupToFile writes the archive as sent (tar, or tar.gz with `gzip`)
 * to `<path>.<random>.tmp` (direct writes: the disk works during the
 * stream), fdatasyncs it, renames it over `path` and fsyncs
 * the directory: `path` is either absent or a complete archive. Any failure
 * removes the temp file.
 *
 * fetchBackupIntoDir extracts into `dir`, which must be absent or empty; it
 * is created with mode 0700 (PostgreSQL refuses a data directory with wider
 * permissions). Member modes are kept as the tar says (basebackup writes
 * 0700 directories and 0600 files), regardless of the umask. Only regular
 * files and directories are accepted, and every member name must stay
 * inside `dir`: absolute names, ".." components, NUL bytes and links are
 * refused (corrupt_data), so a hostile or broken archive cannot write
 * elsewhere. With `owner`, every created entry is chown'ed (strata running
 * as root hands the directory to the PostgreSQL user). On failure the
 * partial contents are removed (and `dir` itself when this call created
 * it). Extracted files are not fsynced: a data directory interrupted by a
 * crash is simply fetched again.
 */
import { randomBytes } from "node:crypto";
import { chmod, chown, mkdir, open, readdir, rename, rm, unlink } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, posix, resolve, sep } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";
import { extract as tarExtract } from "tar-stream";
import { StrataError } from "../lib/errors.js";
import type { TenantId, TimelineId } from "../lib/id.js";
import { formatLsn, type Lsn } from "../lib/lsn.js";
import { PgClient } from "../wire/client.js";
import { fsyncDir } from "./layers/layer_file.js";
import { copyOutBatches } from "./backup_receive.js";
import { DirectFileWriter } from "./direct_file_writer.js";

/** Mode of the directory fetchBackupIntoDir creates (PostgreSQL demands 0700 or 0750 for a data directory). */
export const DATA_DIR_MODE = 0o700;
/** Mode for parent directories of a member that the archive did not list (basebackup always lists them). */
const IMPLICIT_DIR_MODE = 0o700;
/** User name in the startup packet: the page service trusts its network and ignores it. */
const PAGE_SERVICE_USER = "strata";

export interface FetchBackupOptions {
  host: string;
  port: number;
  tenantId: TenantId;
  timelineId: TimelineId;
  /** Omitted: the timeline's last_record_lsn. */
  lsn?: Lsn;
  /** true: fullbackup (every relation file, what an unmodified compute needs). */
  full: boolean;
  gzip?: boolean;
  signal?: AbortSignal;
  /** Called after each chunk with the bytes received so far (compressed bytes when gzip). */
  onProgress?: (bytesSoFar: number) => void;
  /** fetchBackupIntoDir only: chown every created entry (and `dir`) to this user. */
  owner?: { uid: number; gid: number };
}

/** The page service command for `opts`. */
export function backupCommandText(opts: Pick<FetchBackupOptions, "tenantId" | "timelineId" | "lsn" | "full" | "gzip">): string {
  const words = [opts.full ? "fullbackup" : "basebackup", opts.tenantId, opts.timelineId];
  if (opts.lsn !== undefined) words.push(formatLsn(opts.lsn));
  if (opts.gzip === true) words.push("--gzip");
  return words.join(" ");
}

/** The archive's bytes as they arrive, counted for onProgress. */
async function* backupBytes(opts: FetchBackupOptions, counter: { bytes: number }): AsyncGenerator<Buffer> {
  const client = await PgClient.connect({
    host: opts.host,
    port: opts.port,
    user: PAGE_SERVICE_USER,
    ...(opts.signal === undefined ? {} : { signal: opts.signal }),
  });
  try {
    for await (const chunk of client.copyOut(backupCommandText(opts), opts.signal === undefined ? {} : { signal: opts.signal })) {
      counter.bytes += chunk.length;
      opts.onProgress?.(counter.bytes);
      yield chunk;
    }
  } finally {
    await client.close().catch(() => undefined);
  }
}

/**
 * Payload bytes per batch handed from the receive ring to the file writer:
 * copied into the writer's staging area, then released to the ring.
 */
const FILE_WRITE_BATCH_BYTES = 1 << 20;

/** Fetches the archive into `path` (tar, or tar.gz with gzip), atomically (see the module header). */
export async function fetchBackupToFile(opts: FetchBackupOptions, path: string): Promise<{ bytes: number }> {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(4).toString("hex")}.tmp`);
  let file: DirectFileWriter | undefined;
  try {
    file = await DirectFileWriter.create(tmp, 0o600);
    const batches = copyOutBatches({
      host: opts.host,
      port: opts.port,
      user: PAGE_SERVICE_USER,
      query: backupCommandText(opts),
      batchBytes: FILE_WRITE_BATCH_BYTES,
      ...(opts.signal === undefined ? {} : { signal: opts.signal }),
    });
    for await (const batch of batches) {
      try {
        await file.write(batch.views);
      } finally {
        batch.release(); // copied (or failed): the receive ring may read into these bytes again
      }
      opts.onProgress?.(file.bytesWritten);
    }
    const bytes = await file.finish();
    file = undefined;
    await rename(tmp, path);
    await fsyncDir(dirname(path));
    return { bytes };
  } catch (e) {
    await file?.abort();
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

/** A member name made safe: relative, normalized, inside the extraction root; corrupt_data otherwise. */
export function safeMemberPath(root: string, name: string): string {
  if (name.includes("\0")) throw new StrataError("corrupt_data", `Refusing backup member ${JSON.stringify(name)}: NUL byte in the name`);
  if (name.startsWith("/") || isAbsolute(name)) throw new StrataError("corrupt_data", `Refusing backup member ${JSON.stringify(name)}: absolute path`);
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.some((p) => p === "..")) throw new StrataError("corrupt_data", `Refusing backup member ${JSON.stringify(name)}: ".." would leave the target directory`);
  if (parts.length === 0) return resolve(root);
  const full = resolve(root, posix.join(...parts));
  const base = resolve(root);
  if (full !== base && !full.startsWith(base + sep)) throw new StrataError("corrupt_data", `Refusing backup member ${JSON.stringify(name)}: outside the target directory`);
  return full;
}

/** Creates `dir` (0700) or checks that it is empty; returns whether it was created. */
async function prepareTargetDir(dir: string): Promise<boolean> {
  let created = false;
  try {
    await mkdir(dirname(dir), { recursive: true });
    await mkdir(dir, { mode: DATA_DIR_MODE });
    created = true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw new StrataError("io_error", `Cannot create ${dir}: ${(e as Error).message}`, { cause: e });
    const entries = await readdir(dir);
    if (entries.length > 0) throw new StrataError("invalid_argument", `Cannot extract a backup into ${dir}: the directory is not empty (${entries.length} entries)`);
  }
  await chmod(dir, DATA_DIR_MODE);
  return created;
}

/** Fetches the archive and extracts it into `dir` (see the module header). */
export async function fetchBackupIntoDir(opts: FetchBackupOptions, dir: string): Promise<{ bytes: number; files: number }> {
  const root = resolve(dir);
  const created = await prepareTargetDir(root);
  const counter = { bytes: 0 };
  let files = 0;
  const madeDirs = new Set<string>([root]);
  const own = async (p: string) => {
    if (opts.owner !== undefined) await chown(p, opts.owner.uid, opts.owner.gid);
  };
  const ensureParents = async (p: string) => {
    const parents: string[] = [];
    for (let d = dirname(p); !madeDirs.has(d) && d.startsWith(root); d = dirname(d)) parents.push(d);
    for (const d of parents.reverse()) {
      await mkdir(d, { mode: IMPLICIT_DIR_MODE }).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== "EEXIST") throw e;
      });
      madeDirs.add(d);
      await own(d);
    }
  };
  try {
    await own(root);
    const ex = tarExtract();
    const source = Readable.from(backupBytes(opts, counter));
    const feeding = opts.gzip === true ? pipeline(source, createGunzip(), ex) : pipeline(source, ex);
    feeding.catch(() => undefined); // reported through the iteration below, then awaited
    for await (const entry of ex) {
      const h = entry.header;
      const target = safeMemberPath(root, h.name);
      const mode = (h.mode ?? 0o600) & 0o7777;
      if (h.type === "directory") {
        entry.resume();
        if (target !== root) {
          await ensureParents(target);
          await mkdir(target, { mode }).catch((e: NodeJS.ErrnoException) => {
            if (e.code !== "EEXIST") throw e;
          });
          await chmod(target, mode);
          madeDirs.add(target);
          await own(target);
        }
        continue;
      }
      if (h.type !== "file" && h.type !== "contiguous-file" && h.type !== undefined && h.type !== null) {
        entry.resume();
        throw new StrataError("corrupt_data", `Refusing backup member ${JSON.stringify(h.name)}: type ${h.type} (only files and directories are expected)`);
      }
      await ensureParents(target);
      const fh = await open(target, "wx", mode);
      try {
        for await (const chunk of entry as AsyncIterable<Buffer>) await fh.write(chunk);
      } finally {
        await fh.close();
      }
      await chmod(target, mode);
      await own(target);
      files++;
    }
    await feeding;
    return { bytes: counter.bytes, files };
  } catch (e) {
    if (created) await rm(root, { recursive: true, force: true }).catch(() => undefined);
    else for (const n of await readdir(root).catch(() => [] as string[])) await rm(join(root, n), { recursive: true, force: true }).catch(() => undefined);
    throw e;
  }
}
