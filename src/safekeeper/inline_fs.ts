/**
 * InlineIoFS — the real file system with the commit path's I/O done inline.
 *
 * Why: through Node's asynchronous fs API every WAL write and every fsync is
 * handed to libuv's thread pool: a worker thread is woken, does the call, and
 * wakes the event loop again. On the commit path (receive WAL, write, fsync,
 * report) those hand-offs are pure overhead — a write of a few KiB into the
 * page cache costs microseconds — and on a small machine, where the
 * compute's backends compete for the same cores, the extra wake-ups and CPU
 * turn directly into commit latency. bench/safekeeper.ts on the shared
 * 2-core development machine (pgbench -c 8, synchronous_commit=on):
 *
 *   fsync on the thread pool:  standby CPU ~1000 us/tx, TPS 0.47-0.67x pg_receivewal
 *   fsync inline:              standby CPU  ~600 us/tx, TPS 0.87-1.00x pg_receivewal
 *
 * So small reads and writes (up to INLINE_IO_MAX_BYTES) are synchronous
 * pread/pwrite on the event-loop thread, and with `inlineFsync` (the
 * default) so is fdatasync — exactly what pg_receivewal and PostgreSQL's own
 * walreceiver do. The price: while one timeline fsyncs, the event loop (other
 * timelines' acceptors, WAL senders, the HTTP API) waits for it, typically a
 * few milliseconds. A safekeeper hosting many busy timelines should run with
 * `inlineFsync: false` (config `wal_fsync = "background"`): fsyncs then
 * overlap across timelines at the cost of a thread hop per commit batch.
 *
 * Durability is the same either way: the DurableFS contract (durable_fs.ts)
 * only promises durability after `sync()`, which is fdatasync in both modes.
 */
import { fdatasyncSync, readSync, writeSync } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { NodeDurableFS, type DurableFile, type OpenMode } from "./durable_fs.js";

/**
 * Largest read or write done inline. Above it (segment zero-fill in 1 MiB
 * chunks, recovery reading whole segments) the thread pool is cheaper than
 * blocking the event loop.
 */
export const INLINE_IO_MAX_BYTES = 256 * 1024;
/**
 * An fsync covering more than this many bytes written since the previous
 * one (a zero-filled new segment: 16 MiB) goes to the thread pool even with
 * `inlineFsync`: it is bulk work off the commit path, and inline it would
 * stall the event loop for the whole device write.
 */
export const INLINE_FSYNC_MAX_DIRTY_BYTES = 1024 * 1024;

class InlineFile implements DurableFile {
  constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    private readonly inlineFsync: boolean,
  ) {}

  /** Bytes written since the last sync (decides whether an fsync is small enough to run inline). */
  private dirtyBytes = 0;

  async write(data: Uint8Array, position: number): Promise<void> {
    this.dirtyBytes += data.length;
    if (data.length > INLINE_IO_MAX_BYTES) {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await this.fh.write(data, done, data.length - done, position + done);
        if (bytesWritten <= 0) throw new Error(`write to ${this.path} at ${position + done} made no progress`);
        done += bytesWritten;
      }
      return;
    }
    this.writeInline(data, position);
  }

  async read(into: Uint8Array, position: number): Promise<number> {
    let done = 0;
    const inline = into.length <= INLINE_IO_MAX_BYTES;
    while (done < into.length) {
      const n = inline ? readSync(this.fh.fd, into, done, into.length - done, position + done) : (await this.fh.read(into, done, into.length - done, position + done)).bytesRead;
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  async sync(): Promise<void> {
    const dirty = this.dirtyBytes;
    this.dirtyBytes = 0;
    if (this.inlineFsync && dirty <= INLINE_FSYNC_MAX_DIRTY_BYTES) fdatasyncSync(this.fh.fd);
    else await this.fh.datasync();
  }

  writeAndSyncNow(data: Uint8Array, position: number): boolean {
    if (!this.inlineFsync || data.length > INLINE_IO_MAX_BYTES || this.dirtyBytes + data.length > INLINE_FSYNC_MAX_DIRTY_BYTES) return false;
    this.dirtyBytes += data.length;
    this.writeInline(data, position);
    this.dirtyBytes = 0;
    fdatasyncSync(this.fh.fd);
    return true;
  }

  private writeInline(data: Uint8Array, position: number): void {
    let done = 0;
    while (done < data.length) {
      const n = writeSync(this.fh.fd, data, done, data.length - done, position + done);
      if (n <= 0) throw new Error(`write to ${this.path} at ${position + done} made no progress`);
      done += n;
    }
  }

  async size(): Promise<number> {
    return (await this.fh.stat()).size;
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

export interface InlineIoOptions {
  /** fdatasync on the event-loop thread (default true); false hands it to the thread pool. */
  inlineFsync?: boolean;
}

export class InlineIoFS extends NodeDurableFS {
  private readonly inlineFsync: boolean;

  constructor(opts: InlineIoOptions = {}) {
    super();
    this.inlineFsync = opts.inlineFsync ?? true;
  }

  override async openFile(path: string, mode: OpenMode): Promise<DurableFile> {
    const flags = mode === "read" ? "r" : mode === "readwrite" ? "r+" : "w+";
    return new InlineFile(path, await open(path, flags), this.inlineFsync);
  }
}
