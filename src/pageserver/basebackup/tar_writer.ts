/**
 * A streaming tar writer for base backups, on top of `tar-stream`'s pack.
 *
 * Why a wrapper: tar-stream's pack is a streamx Readable whose entries are
 * written one at a time through "sink" streams. This class turns that into
 * awaitable calls (`dir`, `file`, `fileFrom`) that respect back-pressure:
 * `fileFrom` writes a chunk and, when the sink reports a full buffer, waits
 * for it to drain, so a consumer that reads slowly (a network socket) holds
 * the producer back and at most a few chunks are buffered, never the
 * database. `output` is a Node.js Readable of Buffer chunks (object mode,
 * see OUTPUT_HIGH_WATER_MARK_CHUNKS; optionally gzip-compressed with
 * node:zlib, then a byte stream) for the page service and files.
 *
 * Invariants: entries are written strictly one after another (the caller
 * awaits each call); a streamed file gets exactly the size its header
 * announced (tar-stream fails the archive otherwise); `finish` ends the
 * archive with its two zero blocks. `abort(err)` destroys the archive: the
 * output stream errors with `err`, and the pending call rejects.
 */
import { Readable } from "node:stream";
import { constants as zlibConstants, createGzip } from "node:zlib";
import { pack as tarPack, type Pack } from "tar-stream";
import { StrataError } from "../../lib/errors.js";
import { DIR_MODE, FILE_MODE } from "./layout.js";

/**
 * gzip level of compressed backups: 1, zlib's fastest. Relation pages are
 * mostly compressible either way, and level 6 (zlib's default) costs about
 * three times the CPU for a few per cent less output on one core.
 */
export const DEFAULT_GZIP_LEVEL = 1;

/**
 * Small chunks (8 KiB pages) are copied into buffers of this size before
 * they are handed to tar-stream: its per-write cost (streamx queues, one
 * async-iterator step in the output) dominates at 8 KiB; at 256 KiB the
 * writer runs ~3x faster, and one buffer per backup is cheap.
 */
const COALESCE_BYTES = 256 * 1024;
/** Bytes tar-stream's pack buffers before its sinks report back-pressure (streamx default 16 KiB is too small for 8 KiB pages). */
const PACK_HIGH_WATER_MARK_BYTES = 1 << 20;
/**
 * Chunks the output stream buffers. The output is in object mode so that
 * chunks pass through as the pack made them (<= COALESCE_BYTES each, or a
 * 16 MiB WAL segment): a byte-mode stream concatenates everything buffered
 * on each read, a copy of the whole archive that cost several per cent of
 * a fullbackup's CPU. 4 chunks keep the bound near 1 MiB.
 */
const OUTPUT_HIGH_WATER_MARK_CHUNKS = 4;

export interface TarWriterOptions {
  /** Modification time of every entry (reproducible archives: the caller passes the backup's time). */
  readonly mtime: Date;
  readonly gzip?: boolean | { readonly level?: number };
  /**
   * Called with a chunk given to `fileFrom` once the writer no longer needs
   * it (it was copied into a coalescing buffer); chunks passed through whole
   * are the output's consumer's to release (basebackup/chunk_pool.ts).
   */
  readonly release?: (chunk: Uint8Array) => void;
}

interface SinkLike {
  /** streamx: set once the sink is being destroyed (the archive was destroyed or the consumer left). */
  readonly destroying: boolean;
  write(data: Uint8Array): boolean;
  end(): void;
  once(event: "drain" | "close", fn: () => void): void;
  on(event: "error", fn: () => void): void;
  removeListener(event: "drain" | "close", fn: () => void): void;
}

/** Resolves when the sink can take more, or when it closed (destroyed: the entry callback reports why). */
function drained(sink: SinkLike): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      sink.removeListener("drain", done);
      sink.removeListener("close", done);
      resolve();
    };
    sink.once("drain", done);
    sink.once("close", done);
  });
}

export class TarWriter {
  private readonly pack: Pack;
  readonly output: Readable;
  private failed: Error | undefined;
  /** Bytes of file contents written (without tar headers and padding). */
  contentBytes = 0;
  entries = 0;

  constructor(private readonly opts: TarWriterOptions) {
    this.pack = tarPack({ highWaterMark: PACK_HIGH_WATER_MARK_BYTES });
    // Every failure reaches the consumer through `abort` (output.destroy) or
    // the entry callbacks; the pack's own 'error' event may fire after the
    // output stopped iterating it, and must not become an uncaught exception.
    this.pack.on("error", () => undefined);
    const tar = Readable.from(this.pack as AsyncIterable<Uint8Array>, { objectMode: true, highWaterMark: OUTPUT_HIGH_WATER_MARK_CHUNKS });
    if (opts.gzip) {
      const level = typeof opts.gzip === "object" && opts.gzip.level !== undefined ? opts.gzip.level : DEFAULT_GZIP_LEVEL;
      const gz = createGzip({ level, flush: zlibConstants.Z_NO_FLUSH });
      tar.on("error", (e) => gz.destroy(e));
      gz.on("close", () => {
        if (!tar.destroyed) tar.destroy();
      });
      this.output = tar.pipe(gz);
    } else {
      this.output = tar;
    }
  }

  private check(): void {
    if (this.failed) throw this.failed;
  }

  async dir(name: string): Promise<void> {
    this.check();
    await this.entry({ name, type: "directory", mode: DIR_MODE }, undefined);
  }

  /** A small file given whole. */
  async file(name: string, bytes: Uint8Array | string): Promise<void> {
    this.check();
    const b = typeof bytes === "string" ? Buffer.from(bytes, "utf8") : bytes;
    await this.entry({ name, type: "file", mode: FILE_MODE, size: b.length }, b);
    this.contentBytes += b.length;
  }

  /**
   * A file of `sizeBytes` bytes whose contents come from `chunks` (e.g. the
   * pages of a relation segment), streamed with back-pressure. The chunks
   * must add up to exactly `sizeBytes`.
   */
  async fileFrom(name: string, sizeBytes: number, chunks: AsyncIterable<Uint8Array>): Promise<void> {
    this.check();
    let written = 0;
    const done = new Promise<void>((resolve, reject) => {
      const sink = this.pack.entry(
        { name, type: "file", mode: FILE_MODE, size: sizeBytes, mtime: this.opts.mtime, uid: 0, gid: 0 },
        (err) => (err ? reject(err) : resolve()),
      ) as unknown as SinkLike;
      // destroyed with the archive: the entry callback above reports the error
      sink.on("error", () => undefined);
      void (async () => {
        try {
          // The coalescing buffer is allocated when a small chunk needs it: a file whose chunks are
          // large (a backup's page runs) passes them through and never pays for one.
          let buf: Buffer | undefined;
          let used = 0;
          // bytes a coalescing buffer can take: up to COALESCE_BYTES, never beyond the file's end
          const room = () => Math.min(COALESCE_BYTES, sizeBytes - written);
          const flush = async () => {
            if (used === 0 || buf === undefined) return;
            const full = sink.write(used === buf.length ? buf : buf.subarray(0, used));
            buf = undefined;
            used = 0;
            if (!full && !sink.destroying) await drained(sink);
          };
          for await (const chunk of chunks) {
            this.check();
            // destroyed underneath us (consumer gone): the entry callback rejects with the cause
            if (sink.destroying) return;
            if (written + used + chunk.length > sizeBytes) throw new Error(`assertion failed: tar entry ${name} got more than its ${sizeBytes} bytes`);
            if (buf !== undefined && used + chunk.length > buf.length) {
              written += used;
              await flush();
            }
            if (chunk.length >= (buf?.length ?? room())) {
              written += chunk.length;
              if (!sink.write(chunk) && !sink.destroying) await drained(sink);
              continue;
            }
            buf ??= Buffer.allocUnsafe(room());
            buf.set(chunk, used);
            used += chunk.length;
            this.opts.release?.(chunk);
          }
          written += used;
          await flush();
          if (sink.destroying) return;
          if (written !== sizeBytes) throw new Error(`assertion failed: tar entry ${name} got ${written} of its ${sizeBytes} bytes`);
          sink.end();
        } catch (e) {
          this.abort(e as Error);
          reject(e as Error);
        }
      })();
    });
    await done;
    this.contentBytes += sizeBytes;
    this.entries++;
  }

  private entry(header: { name: string; type: "file" | "directory"; mode: number; size?: number }, body: Uint8Array | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const full = { ...header, mtime: this.opts.mtime, uid: 0, gid: 0 };
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      // a directory entry completes itself (no body); errors reach `cb`
      const sink = body !== undefined ? this.pack.entry(full, body, cb) : this.pack.entry(full, cb);
      sink.on("error", () => undefined);
      this.entries++;
    });
  }

  /** Ends the archive (two zero blocks) once the last entry is written. */
  finish(): void {
    this.check();
    this.pack.finalize();
  }

  /** Destroys the archive: the output stream errors with `err`. Idempotent. */
  abort(err: Error): void {
    if (this.failed) return;
    this.failed = err instanceof Error ? err : new StrataError("internal", String(err));
    this.pack.destroy(this.failed);
    this.output.destroy(this.failed);
  }
}
