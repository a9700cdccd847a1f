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
 * Reads are synchronous positioned reads too (why: layer_file.ts).
 *
 * Flushing to a delta layer visits values in key order, i.e. in random file
 * order. One pread per value cost a third of ingest time (~5 µs each), and
 * reading the whole file into one buffer costs a layer's worth of fresh
 * memory per flush, whose first touch is the expensive part on the test VM
 * (~4-10 ms per MiB: reading 120 MiB into a new buffer took 520 ms, into an
 * already-used one 16 ms). So a flush works in key groups: it takes the next
 * keys whose values add up to at most FLUSH_GROUP_BYTES, reads their values
 * in file order through a FLUSH_READ_CHUNK_BYTES window (each read starts at
 * the next value still wanted, so gaps larger than the window are skipped)
 * into a group buffer, then writes them out in key order. Both buffers are
 * kept by the process between flushes (one pair; a concurrent flush of
 * another timeline allocates its own) and released after
 * FLUSH_BUFFER_IDLE_MS without a flush. A key whose versions alone exceed
 * the group buffer is read value by value. The delta writer's awaits on its
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
import { decodeValue, encodedValueSize, encodeValue, encodeValueInto, isBase, type GetValuesOptions, type Value, type ValueEntry } from "./value.js";

/** Write buffer: 256 KiB amortizes syscalls over ~30 page images or thousands of small records. */
export const DEFAULT_INMEMORY_WRITE_BUFFER_BYTES = 256 * 1024;
/** Value bytes of one flush group (see the module comment): 16 MiB keeps passes over a 256 MiB layer few. */
export const FLUSH_GROUP_BYTES = 16 * 1024 * 1024;
/** Read window of a flush group's sweep over the ephemeral file. */
export const FLUSH_READ_CHUNK_BYTES = 1024 * 1024;
/** Kept flush buffers unused this long are released (the next flush allocates again). */
export const FLUSH_BUFFER_IDLE_MS = 30_000;

interface FlushBuffers {
  readonly group: Buffer;
  readonly chunk: Buffer;
}

/** The flush buffers the process keeps between flushes (see the module comment). */
class FlushBufferPool {
  private kept: FlushBuffers | undefined;
  private busy = false;
  private timer: NodeJS.Timeout | undefined;

  acquire(): FlushBuffers {
    if (this.busy) return { group: Buffer.allocUnsafe(FLUSH_GROUP_BYTES), chunk: Buffer.allocUnsafe(FLUSH_READ_CHUNK_BYTES) };
    this.busy = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.kept ??= { group: Buffer.allocUnsafe(FLUSH_GROUP_BYTES), chunk: Buffer.allocUnsafe(FLUSH_READ_CHUNK_BYTES) };
    return this.kept;
  }

  release(b: FlushBuffers): void {
    if (b !== this.kept || !this.busy) return;
    this.busy = false;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.busy) this.kept = undefined;
    }, FLUSH_BUFFER_IDLE_MS);
    this.timer.unref();
  }
}

const flushBufferPool = new FlushBufferPool();

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

  /** Appends one version, encoded straight into the write buffer. LSNs must not decrease; (key, LSN) must be new. */
  put(key: Key, lsn: Lsn, value: Value): void {
    this.putChecked(key, lsn, encodedValueSize(value), value);
  }

  /** Appends one version already in value.ts encoding. */
  putEncoded(key: Key, lsn: Lsn, encoded: Uint8Array): void {
    this.putChecked(key, lsn, encoded.length, encoded);
  }

  /** `put`'s checks and bookkeeping; `v` is the value, or its encoding (`size` bytes). */
  private putChecked(key: Key, lsn: Lsn, size: number, v: Value | Uint8Array): void {
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
    if (size > MAX_VALUE_BYTES) {
      throw new StrataError("invalid_argument", `In-memory layer: value of ${size} bytes exceeds ${MAX_VALUE_BYTES}`);
    }
    let triples = this.index.get(key);
    const relBig = lsn - this.startLsn;
    assert(relBig <= BigInt(Number.MAX_SAFE_INTEGER), "in-memory layer spans more than 2^53 bytes of WAL");
    const rel = Number(relBig);
    if (triples !== undefined && triples[triples.length - 3] === rel) {
      throw new StrataError("invalid_argument", `In-memory layer: duplicate version of ${formatKey(key)} at ${formatLsn(lsn)}`);
    }
    const offset = this.append(v, size);
    if (triples === undefined) {
      triples = [];
      this.index.set(key, triples);
    }
    triples.push(rel, offset, size);
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
   * `groupBytes` / `readChunkBytes` override the flush buffer sizes (tests).
   */
  async writeDeltaLayer(
    dir: string,
    opts: { keyRange?: KeyRange; generation?: number; indexPageSizeBytes?: number; signal?: AbortSignal; groupBytes?: number; readChunkBytes?: number } = {},
  ): Promise<WrittenLayer> {
    if (this.endLsn === undefined) throw new StrataError("invalid_argument", "Cannot flush an in-memory layer that is not frozen");
    const writer = await DeltaLayerWriter.create({
      dir,
      keyRange: opts.keyRange ?? FULL_KEY_RANGE,
      lsnRange: { start: this.startLsn, end: this.endLsn },
      ...(opts.generation === undefined ? {} : { generation: opts.generation }),
      ...(opts.indexPageSizeBytes === undefined ? {} : { indexPageSizeBytes: opts.indexPageSizeBytes }),
    });
    const custom = opts.groupBytes !== undefined || opts.readChunkBytes !== undefined;
    const bufs = custom
      ? { group: Buffer.allocUnsafe(opts.groupBytes ?? FLUSH_GROUP_BYTES), chunk: Buffer.allocUnsafe(opts.readChunkBytes ?? FLUSH_READ_CHUNK_BYTES) }
      : flushBufferPool.acquire();
    try {
      const keys = [...this.index.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      let k = 0;
      while (k < keys.length) {
        if (opts.signal?.aborted === true) {
          throw new StrataError("cancelled", `Flush of in-memory layer at ${formatLsn(this.startLsn)} cancelled`, { cause: opts.signal.reason });
        }
        // The group: keys [k, end) whose values fit the group buffer (at least one key).
        let end = k;
        let total = 0;
        let count = 0;
        while (end < keys.length) {
          const triples = this.index.get(keys[end]!)!;
          let sum = 0;
          for (let i = 2; i < triples.length; i += 3) sum += triples[i]!;
          if (end > k && total + sum > bufs.group.length) break;
          total += sum;
          count += triples.length / 3;
          end++;
        }
        if (total > bufs.group.length) await this.writeKeyValueByValue(writer, keys[k]!);
        else await this.writeGroup(writer, keys, k, end, count, bufs);
        k = end;
      }
      return await writer.finish();
    } catch (e) {
      await writer.abort();
      throw e;
    } finally {
      if (!custom) flushBufferPool.release(bufs);
    }
  }

  /** Reads the values of keys[from, to) (`count` of them) in file order into the group buffer, then writes them in key order. */
  private async writeGroup(writer: DeltaLayerWriter, keys: Key[], from: number, to: number, count: number, bufs: FlushBuffers): Promise<void> {
    const { group, chunk } = bufs;
    const offs = new Float64Array(count);
    const lens = new Float64Array(count);
    const slots = new Float64Array(count);
    let n = 0;
    let slot = 0;
    for (let k = from; k < to; k++) {
      const triples = this.index.get(keys[k]!)!;
      for (let i = 0; i < triples.length; i += 3) {
        offs[n] = triples[i + 1]!;
        lens[n] = triples[i + 2]!;
        slots[n] = slot;
        slot += triples[i + 2]!;
        n++;
      }
    }
    const order = new Uint32Array(count);
    for (let i = 0; i < count; i++) order[i] = i;
    order.sort((a, b) => offs[a]! - offs[b]!);
    // Sweep: each read starts at the next wanted value and covers every wanted value that ends inside it.
    let p = 0;
    while (p < count) {
      const first = order[p]!;
      const start = offs[first]!;
      if (lens[first]! > chunk.length) {
        this.readValueSync(start, lens[first]!, group.subarray(slots[first]!, slots[first]! + lens[first]!));
        p++;
        continue;
      }
      const readLen = Math.min(chunk.length, this.fileLen - start);
      this.readValueSync(start, readLen, chunk);
      while (p < count) {
        const q = order[p]!;
        const rel = offs[q]! - start;
        if (rel + lens[q]! > readLen) break;
        chunk.copy(group, slots[q]!, rel, rel + lens[q]!);
        p++;
      }
    }
    let j = 0;
    for (let k = from; k < to; k++) {
      const key = keys[k]!;
      const triples = this.index.get(key)!;
      for (let i = 0; i < triples.length; i += 3, j++) {
        const pending = writer.putEncoded(key, (this.startLsn + BigInt(triples[i]!)) as Lsn, group.subarray(slots[j]!, slots[j]! + lens[j]!));
        if (pending !== undefined) await pending;
      }
    }
  }

  /** Writes the versions of one key too large for a group, one pread per value. */
  private async writeKeyValueByValue(writer: DeltaLayerWriter, key: Key): Promise<void> {
    const triples = this.index.get(key)!;
    let scratch = Buffer.allocUnsafe(0);
    for (let i = 0; i < triples.length; i += 3) {
      const len = triples[i + 2]!;
      if (scratch.length < len) scratch = Buffer.allocUnsafe(len);
      const pending = writer.putEncoded(key, (this.startLsn + BigInt(triples[i]!)) as Lsn, this.readValueSync(triples[i + 1]!, len, scratch));
      if (pending !== undefined) await pending;
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

  /** Appends a value (`size` bytes once encoded) or an encoded one; returns its file offset. */
  private append(v: Value | Uint8Array, size: number): number {
    if (this.bufLen + size > this.buf.length) this.flushBuffer();
    const offset = this.fileLen + this.bufLen;
    if (size > this.buf.length) {
      this.writeFullySync(v instanceof Uint8Array ? v : encodeValue(v), this.fileLen);
      this.fileLen += size;
      return offset;
    }
    if (v instanceof Uint8Array) this.buf.set(v, this.bufLen);
    else encodeValueInto(v, this.buf, this.bufLen);
    this.bufLen += size;
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
