/**
 * The in-memory layer: where ingested versions land before they reach a
 * delta layer file.
 *
 * DESIGN §4: the open in-memory layer receives every (key, LSN, value) that
 * WAL ingest produces, in LSN order; at the checkpoint distance (or a
 * timeout) the timeline freezes it (`freeze(endLsn)`: read-only from then on,
 * covering [startLsn, endLsn)), opens a new one, and a flush task writes the
 * frozen one out as a level-0 delta layer (`writeDeltaLayer`). Reads are
 * served from it at every stage.
 *
 * Memory stays bounded although the name says "in memory": value bytes are
 * appended to an ephemeral file (through a small write buffer) and only an
 * index stays in the JavaScript heap — per key, a packed array of
 * (LSN offset from startLsn, file offset, length) triples, about 24 bytes per
 * version however large the value. The ephemeral file is never fsynced: after
 * a crash the layer's content is re-ingested from WAL above the timeline's
 * disk-consistent LSN, and the file (`ephemeral-*.tmp`) is garbage.
 *
 * Writes are synchronous (`writeSync` into the OS page cache, one call per
 * filled write buffer): `put` then needs no promise per record, ingest order
 * is trivially the file order, and a buffer flush costs tens of microseconds.
 * Reads are synchronous positioned reads too (why: layer_file.ts). Flushing
 * to a delta layer visits values in key order, i.e. in random file order:
 * one pread per value cost a third of ingest time (~5 µs each), so a flush
 * reads the whole ephemeral file into memory once when it is at most
 * FLUSH_READ_WHOLE_MAX_BYTES (the default checkpoint distance is well below
 * it: the peak is one layer's worth of memory during its flush) and falls
 * back to one pread per value above that. The delta writer's awaits on its
 * 1 MiB output writes yield to the event loop regularly.
 *
 * Invariants: LSNs of puts never decrease; (key, LSN) is unique; every LSN is
 * in [startLsn, endLsn) once frozen. A value is entirely in the file or
 * entirely in the write buffer, never split.
 */
import { closeSync, openSync, readSync, unlinkSync, writeSync } from "node:fs";
import { join } from "node:path";
import { assert, StrataError } from "../../lib/errors.js";
import { formatLsn, lsnMax, lsnMin, type Lsn } from "../../lib/lsn.js";
import { formatKey, type Key } from "../key.js";
import { DeltaLayerWriter, type WrittenLayer } from "./delta_layer.js";
import { MAX_VALUE_BYTES } from "./layer_file.js";
import type { LayerDesc } from "./layer_name.js";
import { FULL_KEY_RANGE, LSN_UNBOUNDED, type KeyRange, type LsnRange } from "./range.js";
import { decodeValue, encodeValue, isBase, type GetValuesOptions, type Value, type ValueEntry } from "./value.js";

/** Write buffer: 256 KiB amortizes syscalls over ~30 page images or thousands of small records. */
export const DEFAULT_INMEMORY_WRITE_BUFFER_BYTES = 256 * 1024;
/**
 * Largest ephemeral file a flush reads whole instead of value by value: twice
 * the default checkpoint distance (256 MiB), so default layers always take the
 * fast path while an operator's huge checkpoint distance cannot make a flush
 * allocate without bound.
 */
export const FLUSH_READ_WHOLE_MAX_BYTES = 512 * 1024 * 1024;
/** Rough heap cost of one index triple (three doubles); part of the size estimate. */
const INDEX_BYTES_PER_ENTRY = 24;
/** Rough heap cost of one distinct key (map entry, bigint, array header). */
const INDEX_BYTES_PER_KEY = 96;

export interface InMemoryLayerOptions {
  /** Directory for the ephemeral file (the timeline's directory). */
  dir: string;
  startLsn: Lsn;
  writeBufferBytes?: number;
}

let ephemeralCounter = 0;

export class InMemoryLayer {
  readonly startLsn: Lsn;
  readonly path: string;
  private fd: number;
  private readonly buf: Buffer;
  private bufLen = 0;
  /** Bytes already written to the file; the buffer holds file offsets [fileLen, fileLen + bufLen). */
  private fileLen = 0;
  /** key -> packed triples [lsn - startLsn, offset, length, ...] in LSN order. */
  private readonly index = new Map<Key, number[]>();
  private entryCount = 0;
  private lastLsn: Lsn | undefined;
  private endLsn: Lsn | undefined;
  private closed = false;

  private constructor(opts: InMemoryLayerOptions, path: string, fd: number) {
    this.startLsn = opts.startLsn;
    this.path = path;
    this.fd = fd;
    this.buf = Buffer.allocUnsafe(opts.writeBufferBytes ?? DEFAULT_INMEMORY_WRITE_BUFFER_BYTES);
  }

  static create(opts: InMemoryLayerOptions): InMemoryLayer {
    const name = `ephemeral-${opts.startLsn.toString(16).toUpperCase().padStart(16, "0")}-${process.pid}-${++ephemeralCounter}.tmp`;
    const path = join(opts.dir, name);
    let fd: number;
    try {
      fd = openSync(path, "wx+");
    } catch (e) {
      throw new StrataError("io_error", `Cannot create ephemeral file ${path}: ${(e as Error).message}`, { cause: e });
    }
    return new InMemoryLayer(opts, path, fd);
  }

  /** Layer descriptor: all keys, [startLsn, endLsn) once frozen, [startLsn, LSN_MAX) while open. */
  get desc(): LayerDesc {
    return { kind: "delta", keyRange: FULL_KEY_RANGE, lsnRange: { start: this.startLsn, end: this.endLsn ?? LSN_UNBOUNDED } };
  }

  get frozen(): boolean {
    return this.endLsn !== undefined;
  }

  get entries(): number {
    return this.entryCount;
  }

  get keyCount(): number {
    return this.index.size;
  }

  /** Bytes of values appended (the ephemeral file's size, buffer included). */
  get valueBytes(): number {
    return this.fileLen + this.bufLen;
  }

  /** Estimated total footprint (file + heap index): what the checkpoint-distance trigger compares. */
  get sizeBytes(): number {
    return this.valueBytes + this.entryCount * INDEX_BYTES_PER_ENTRY + this.index.size * INDEX_BYTES_PER_KEY;
  }

  /** Highest LSN put so far. */
  get lastPutLsn(): Lsn | undefined {
    return this.lastLsn;
  }

  put(key: Key, lsn: Lsn, value: Value): void {
    this.putEncoded(key, lsn, encodeValue(value));
  }

  /** Appends one version (value.ts encoding). LSNs must not decrease; (key, LSN) must be new. */
  putEncoded(key: Key, lsn: Lsn, encoded: Uint8Array): void {
    assert(!this.closed, "put on a closed in-memory layer");
    if (this.endLsn !== undefined) {
      throw new StrataError("invalid_argument", `In-memory layer at ${formatLsn(this.startLsn)} is frozen; cannot put at ${formatLsn(lsn)}`);
    }
    if (lsn < this.startLsn || (this.lastLsn !== undefined && lsn < this.lastLsn)) {
      throw new StrataError(
        "invalid_argument",
        `In-memory layer: put at ${formatLsn(lsn)} is below ${formatLsn(this.lastLsn ?? this.startLsn)} (puts must arrive in LSN order)`,
      );
    }
    if (encoded.length > MAX_VALUE_BYTES) {
      throw new StrataError("invalid_argument", `In-memory layer: value of ${encoded.length} bytes exceeds ${MAX_VALUE_BYTES}`);
    }
    let triples = this.index.get(key);
    const relBig = lsn - this.startLsn;
    assert(relBig <= BigInt(Number.MAX_SAFE_INTEGER), "in-memory layer spans more than 2^53 bytes of WAL");
    const rel = Number(relBig);
    if (triples !== undefined && triples[triples.length - 3] === rel) {
      throw new StrataError("invalid_argument", `In-memory layer: duplicate version of ${formatKey(key)} at ${formatLsn(lsn)}`);
    }
    const offset = this.append(encoded);
    if (triples === undefined) {
      triples = [];
      this.index.set(key, triples);
    }
    triples.push(rel, offset, encoded.length);
    this.entryCount++;
    this.lastLsn = lsn;
  }

  /** Makes the layer read-only, covering [startLsn, endLsn). */
  freeze(endLsn: Lsn): void {
    if (this.endLsn !== undefined) throw new StrataError("invalid_argument", `In-memory layer at ${formatLsn(this.startLsn)} is already frozen`);
    const floor = this.lastLsn === undefined ? this.startLsn : this.lastLsn;
    if (!(endLsn > floor)) {
      throw new StrataError("invalid_argument", `Cannot freeze in-memory layer at ${formatLsn(endLsn)}: must be above ${formatLsn(floor)}`);
    }
    this.flushBuffer();
    this.endLsn = endLsn;
  }

  /** The versions of `key` with LSN in `lsnRange`, newest first. */
  async getValues(key: Key, lsnRange: LsnRange, opts: GetValuesOptions = {}): Promise<ValueEntry[]> {
    const triples = this.index.get(key);
    if (triples === undefined) return [];
    const start = lsnMax(lsnRange.start, this.startLsn);
    const end = lsnMin(lsnRange.end, this.endLsn ?? LSN_UNBOUNDED);
    const out: ValueEntry[] = [];
    for (let i = triples.length - 3; i >= 0; i -= 3) {
      const l = (this.startLsn + BigInt(triples[i]!)) as Lsn;
      if (l >= end) continue;
      if (l < start) break;
      const bytes = await this.readValue(triples[i + 1]!, triples[i + 2]!);
      const value = decodeValue(bytes, `ephemeral file ${this.path} offset ${triples[i + 1]}`);
      out.push({ key, lsn: l, value });
      if (opts.stopAtBase === true && isBase(value)) break;
    }
    return out;
  }

  /**
   * Writes the frozen layer's content to a new delta layer file in `dir`.
   * The key range defaults to all keys, which marks the file as level 0.
   * Cancelling `signal` abandons the partial file and rejects with "cancelled".
   */
  async writeDeltaLayer(
    dir: string,
    opts: { keyRange?: KeyRange; generation?: number; indexPageSizeBytes?: number; signal?: AbortSignal } = {},
  ): Promise<WrittenLayer> {
    if (this.endLsn === undefined) throw new StrataError("invalid_argument", "Cannot flush an in-memory layer that is not frozen");
    const writer = await DeltaLayerWriter.create({
      dir,
      keyRange: opts.keyRange ?? FULL_KEY_RANGE,
      lsnRange: { start: this.startLsn, end: this.endLsn },
      ...(opts.generation === undefined ? {} : { generation: opts.generation }),
      ...(opts.indexPageSizeBytes === undefined ? {} : { indexPageSizeBytes: opts.indexPageSizeBytes }),
    });
    try {
      const keys = [...this.index.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      const whole = this.fileLen <= FLUSH_READ_WHOLE_MAX_BYTES ? this.readValueSync(0, this.fileLen, Buffer.allocUnsafe(this.fileLen)) : undefined;
      let scratch = Buffer.allocUnsafe(8192);
      for (const key of keys) {
        if (opts.signal?.aborted === true) {
          throw new StrataError("cancelled", `Flush of in-memory layer at ${formatLsn(this.startLsn)} cancelled`, { cause: opts.signal.reason });
        }
        const triples = this.index.get(key)!;
        for (let i = 0; i < triples.length; i += 3) {
          const offset = triples[i + 1]!;
          const len = triples[i + 2]!;
          let bytes: Buffer;
          if (whole !== undefined) {
            bytes = whole.subarray(offset, offset + len);
          } else {
            if (scratch.length < len) scratch = Buffer.allocUnsafe(len);
            bytes = this.readValueSync(offset, len, scratch);
          }
          await writer.putEncoded(key, (this.startLsn + BigInt(triples[i]!)) as Lsn, bytes);
        }
      }
      return await writer.finish();
    } catch (e) {
      await writer.abort();
      throw e;
    }
  }

  /** Releases the ephemeral file. The layer must no longer be read. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeSync(this.fd);
    try {
      unlinkSync(this.path);
    } catch {
      // Already gone: nothing to release.
    }
  }

  private append(encoded: Uint8Array): number {
    if (this.bufLen + encoded.length > this.buf.length) this.flushBuffer();
    const offset = this.fileLen + this.bufLen;
    if (encoded.length > this.buf.length) {
      this.writeFullySync(encoded, this.fileLen);
      this.fileLen += encoded.length;
      return offset;
    }
    this.buf.set(encoded, this.bufLen);
    this.bufLen += encoded.length;
    return offset;
  }

  private flushBuffer(): void {
    if (this.bufLen === 0) return;
    this.writeFullySync(this.buf.subarray(0, this.bufLen), this.fileLen);
    this.fileLen += this.bufLen;
    this.bufLen = 0;
  }

  private writeFullySync(data: Uint8Array, position: number): void {
    let done = 0;
    try {
      while (done < data.length) done += writeSync(this.fd, data, done, data.length - done, position + done);
    } catch (e) {
      throw new StrataError("io_error", `Cannot write ephemeral file ${this.path}: ${(e as Error).message}`, { cause: e });
    }
  }

  /** A copy of the value at `offset` (from the buffer or the file). Synchronous pread: see layer_file.ts. */
  private async readValue(offset: number, length: number): Promise<Uint8Array> {
    if (offset >= this.fileLen) {
      const from = offset - this.fileLen;
      return new Uint8Array(this.buf.subarray(from, from + length)); // a copy: the buffer is reused
    }
    const out = this.readValueSync(offset, length, Buffer.allocUnsafe(length));
    return new Uint8Array(out.buffer, out.byteOffset, length);
  }

  private readValueSync(offset: number, length: number, scratch: Buffer): Buffer {
    assert(offset + length <= this.fileLen, "frozen layer values are all in the file");
    let done = 0;
    while (done < length) {
      const n = readSync(this.fd, scratch, done, length - done, offset + done);
      if (n === 0) throw new StrataError("io_error", `Ephemeral file ${this.path} ended at ${offset + done}, expected ${length} bytes at ${offset}`);
      done += n;
    }
    return scratch.subarray(0, length);
  }
}
