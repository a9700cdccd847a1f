/**
 * DurableFS — the few file-system calls the safekeeper's storage makes, behind
 * an interface, so durability logic can be tested under injected failures.
 *
 * Everything the safekeeper promises (a reported flush LSN is on disk, a
 * control file is the old or the new state, never a mix) rests on the order
 * of a handful of calls: write, fsync of a file, rename, fsync of the
 * directory. `NodeDurableFS` makes those calls on the real file system;
 * `FaultyFS` (faulty_fs.ts) wraps any DurableFS and fails the Nth call, tears
 * a write, or simulates power loss by undoing what was not yet made durable.
 * Storage code only ever talks to this interface (STYLE.md rule 7).
 *
 * Durability model the callers rely on (POSIX, as ext4/xfs honour it):
 * * data written to a file survives a crash only after `sync()` on it;
 * * a create, rename or unlink survives only after `syncDir()` on the
 *   directory holding the name;
 * * rename within one directory is atomic: after a crash the name refers to
 *   the old file or the new one.
 *
 * Errors are Node's own (with `code` such as ENOENT, EIO); callers turn them
 * into StrataError("io_error") with the path, where they handle them.
 */
import { open, readFile, rename, unlink, readdir, mkdir, type FileHandle } from "node:fs/promises";
import { dirname } from "node:path";

export interface DurableFile {
  readonly path: string;
  /** Writes all of `data` at byte `position`. */
  write(data: Uint8Array, position: number): Promise<void>;
  /** Reads up to `into.length` bytes at `position`; returns how many (fewer only at end of file). */
  read(into: Uint8Array, position: number): Promise<number>;
  /** Makes the file's data (and the metadata needed to read it back) durable. */
  sync(): Promise<void>;
  /**
   * The commit path's synchronous variant (WalStorage.appendAndFlushNow):
   * when this file does small I/O on the caller's thread (InlineIoFS), writes
   * all of `data` at `position` and then makes the file durable as `sync`
   * does, before returning true. Returns false, having done nothing, when it
   * does not (or `data` is too large for it): the caller uses write + sync.
   * Absent: always false.
   */
  writeAndSyncNow?(data: Uint8Array, position: number): boolean;
  /** Current size in bytes. */
  size(): Promise<number>;
  close(): Promise<void>;
}

/** "read": existing file, read-only; "readwrite": existing file; "create": create or truncate, read-write. */
export type OpenMode = "read" | "readwrite" | "create";

export interface DurableFS {
  openFile(path: string, mode: OpenMode): Promise<DurableFile>;
  readFile(path: string): Promise<Uint8Array>;
  /** Atomic rename (replacing `to` if it exists). Durable after syncDir of the directory. */
  rename(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
  /** Names in a directory (no `.`/`..`), in no particular order. */
  readdir(dir: string): Promise<string[]>;
  /** Creates a directory and missing parents; no error if it exists. */
  mkdir(dir: string): Promise<void>;
  /** fsync of a directory: makes creates, renames and unlinks in it durable. */
  syncDir(dir: string): Promise<void>;
}

/** True for "no such file or directory". */
export function isNotFound(e: unknown): boolean {
  return typeof e === "object" && e !== null && (e as { code?: unknown }).code === "ENOENT";
}

/** Suffix of the temporary file writeFileAtomic writes before renaming it into place. */
export const ATOMIC_TEMP_SUFFIX = ".tmp";

/**
 * Replaces `path` with `data` so that after a crash at any point the file
 * holds the old content or the new one, never a mix: write a temp file,
 * fsync it, rename it over `path`, fsync the directory. A crash can leave
 * the temp file behind; callers remove `*.tmp` files they own on open.
 */
export async function writeFileAtomic(fs: DurableFS, path: string, data: Uint8Array): Promise<void> {
  const tmp = path + ATOMIC_TEMP_SUFFIX;
  const f = await fs.openFile(tmp, "create");
  try {
    await f.write(data, 0);
    await f.sync();
  } finally {
    await f.close();
  }
  await fs.rename(tmp, path);
  await fs.syncDir(dirname(path));
}

class NodeFile implements DurableFile {
  constructor(
    readonly path: string,
    private readonly fh: FileHandle,
  ) {}

  async write(data: Uint8Array, position: number): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, position + done);
      if (bytesWritten <= 0) throw new Error(`write to ${this.path} at ${position + done} made no progress`);
      done += bytesWritten;
    }
  }

  async read(into: Uint8Array, position: number): Promise<number> {
    let done = 0;
    while (done < into.length) {
      const { bytesRead } = await this.fh.read(into, done, into.length - done, position + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  }

  async sync(): Promise<void> {
    // fdatasync: WAL segments are pre-allocated, so their size never changes
    // after creation; for new files it still flushes the size (POSIX requires
    // the metadata needed to read the data back).
    await this.fh.datasync();
  }

  async size(): Promise<number> {
    return (await this.fh.stat()).size;
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** The real file system. */
export class NodeDurableFS implements DurableFS {
  async openFile(path: string, mode: OpenMode): Promise<DurableFile> {
    const flags = mode === "read" ? "r" : mode === "readwrite" ? "r+" : "w+";
    return new NodeFile(path, await open(path, flags));
  }

  async readFile(path: string): Promise<Uint8Array> {
    const b = await readFile(path);
    return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  }

  async rename(from: string, to: string): Promise<void> {
    await rename(from, to);
  }

  async unlink(path: string): Promise<void> {
    await unlink(path);
  }

  async readdir(dir: string): Promise<string[]> {
    return await readdir(dir);
  }

  async mkdir(dir: string): Promise<void> {
    await mkdir(dir, { recursive: true });
  }

  async syncDir(dir: string): Promise<void> {
    const fh = await open(dir, "r");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }
}
