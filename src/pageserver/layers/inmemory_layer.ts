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
 * index stays in the JavaScript heap. The index is batch-shaped, with no
 * object per version: each distinct key gets a dense slot number, and
 * versions are rows of four typed arrays — LSN offset
 * from startLsn, file offset, length, and the row of the key's previous
 * version — so a key's versions form a chain from its newest row (`slotHead`)
 * back to its oldest. About 24 bytes per version however large the value,
 * nothing for the garbage collector to trace per put, and the arrays grow by
 * doubling (into the arrays of a closed layer when one is kept). Keys map to
 * slots through a table per relation fork for relation blocks (block number
 * -> slot in a typed array: `forkSlots`, what ingest uses, with no bigint
 * key or Map lookup per block) and a Map for all other keys; `slotOf(key)`
 * routes a key to where it belongs, so both ways in meet the same slot.
 * The ephemeral file is never fsynced: after a crash the layer's
 * content is re-ingested from WAL above the timeline's disk-consistent LSN,
 * and the file (`ephemeral-*.tmp`) is garbage.
 *
 * Why a file rather than large reused memory buffers: on the test VM (and any
 * host that reclaims a guest's free pages) fresh process memory costs ~4-10
 * ms per MiB on first touch, and memory freed after a flush is handed back,
 * so every layer would pay again; the OS page cache behind the file is
 * shared and recycled by the kernel, and one write per filled buffer costs
 * tens of microseconds.
 *
 * WAL records are put with `putWal`: the value's two-byte prefix and the
 * caller's record header are written straight into the write buffer followed
 * by the record bytes, without building an intermediate value. A record
 * stored under several keys (one per block it touches) is written once when
 * its prefix is the same: the rows share the file bytes (values are never
 * modified, so sharing is invisible to readers and to the flush).
 *
 * Writes are write-behind: a filled write buffer is handed to the thread
 * pool as one positioned write (`fs.write`) and ingest goes on in the next
 * buffer, taken from a small process-wide pool of warm buffers
 * (WriteBufferPool), so the copy into the OS page cache (~0.4 ms per MiB on
 * the test VM, a tenth of ingest's main-thread time) runs on another core.
 * `put` still needs no promise: file offsets are assigned when a value is
 * appended, and positioned writes may complete in any order. While a
 * buffer's write is in flight its values are read from the buffer itself
 * (`inflight`); when no buffer is free or MAX_INFLIGHT_WRITES are pending,
 * the buffer is written synchronously (`writeSync`) as before. A write's
 * failure is kept and fails every later put, read and flush of the layer
 * (io_error): its bytes are not in the file, so nothing may read past it.
 * The flush waits for all writes to complete (`writesSettled`) before it
 * reads the file; `close` closes the descriptor only after the last
 * completion, so no write ever lands on a reused descriptor.
 * Reads are synchronous positioned reads (why: layer_file.ts).
 *
 * Flushing to a delta layer (frozen_layer_flush.ts) visits values in key
 * order, reading the ephemeral file in key groups through reused buffers; it
 * runs either on this thread (`writeDeltaLayer`) or on the flush worker
 * thread (`writeDeltaLayerOffThread`, flush_worker.ts), which reads the same
 * file descriptor and the index arrays, kept on SharedArrayBuffers for that,
 * without a copy. Both write the same bytes.
 *
 * Invariants: LSNs of puts never decrease; (key, LSN) is unique; every LSN is
 * in [startLsn, endLsn) once frozen. A value is entirely in the file, in
 * one write buffer in flight or in the current write buffer, never split. File offsets never decrease with
 * the row number (rows are appended in put order; a shared value's offset is
 * that of an earlier row), so sorting row numbers sorts by file offset.
 */
import { close, openSync, readSync, unlinkSync, write, writeSync } from "node:fs";
import { join } from "node:path";
import { assert, StrataError } from "../../lib/errors.js";
import { formatLsn, lsnMax, lsnMin, type Lsn } from "../../lib/lsn.js";
import { FORK_INIT, formatKey, relBlockKey, type Key, type RelTag } from "../key.js";
import type { WrittenLayer } from "./delta_layer.js";
import { flushOnWorker } from "./flush_worker.js";
import { FLUSH_BUFFER_IDLE_MS, writeFrozenLayer, type FrozenFlushOptions, type FrozenLayerSnapshot } from "./frozen_layer_flush.js";
export { FLUSH_BUFFER_IDLE_MS };
import { MAX_VALUE_BYTES } from "./layer_file.js";
import type { LayerDesc } from "./layer_name.js";
import { FULL_KEY_RANGE, LSN_UNBOUNDED, type LsnRange } from "./range.js";
import {
  decodeValue, encodedValueSize, encodeValue, encodeValueInto, isBase, WAL_OVERHEAD_BYTES, type GetValuesOptions, type RedoEngine, type Value, type ValueEntry,
} from "./value.js";

/** Write buffer: 256 KiB amortizes syscalls over ~30 page images or thousands of small records. */
export const DEFAULT_INMEMORY_WRITE_BUFFER_BYTES = 256 * 1024;
/** (flush buffer sizes: frozen_layer_flush.ts) */
export { FLUSH_GROUP_BYTES, FLUSH_READ_CHUNK_BYTES } from "./frozen_layer_flush.js";
/**
 * Write buffers of one layer in flight at once (write-behind, module
 * comment): completions are seen only when ingest yields to the event loop
 * (between pieces of the WAL stream), and a 1 MiB piece of WAL fills about
 * five 256 KiB buffers; beyond this the layer writes synchronously.
 */
export const MAX_INFLIGHT_WRITES = 8;
/**
 * Free write buffers the process keeps (warm memory: first touches cost ms
 * per MiB on the test VM): 2 MiB at the default size, the memory
 * write-behind adds to a process whatever its layers' sizes.
 */
export const KEPT_WRITE_BUFFERS = 8;

/**
 * Write buffers of the default size, shared by the open layers of all
 * timelines: a buffer whose write completed comes back here, so write-behind
 * reuses memory already touched instead of fresh pages.
 */
class WriteBufferPool {
  private readonly free: Buffer[] = [];

  take(bytes: number): Buffer {
    if (bytes === DEFAULT_INMEMORY_WRITE_BUFFER_BYTES) {
      const b = this.free.pop();
      if (b !== undefined) return b;
    }
    return Buffer.allocUnsafeSlow(bytes);
  }

  give(b: Buffer): void {
    if (b.length === DEFAULT_INMEMORY_WRITE_BUFFER_BYTES && this.free.length < KEPT_WRITE_BUFFERS) this.free.push(b);
  }
}

const writeBufferPool = new WriteBufferPool();

/** A write buffer handed to the thread pool: file offsets [start, start + len) are in `buf` until it completes. */
interface InflightWrite {
  readonly start: number;
  readonly buf: Buffer;
  readonly len: number;
}

/** Initial rows of the version index (grows by doubling): small layers stay small. */
const INITIAL_ROWS = 1024;
/** Initial key slots (grows by doubling). */
const INITIAL_SLOTS = 256;

/** The version index's row arrays (see the module comment). */
interface RowArrays {
  readonly lsn: Float64Array;
  readonly off: Float64Array;
  readonly len: Int32Array;
  readonly prev: Int32Array;
}

/** Largest row arrays kept for the next layer: 1M rows, 24 MiB. */
const KEPT_ROWS_MAX = 1 << 20;
/**
 * Row array sets kept: the layer being flushed gives its set back when it
 * closes, often after the next layer opened, so with two kept sets a new or
 * growing layer usually finds one.
 */
const KEPT_ROW_SETS = 2;

/**
 * The row arrays of closed layers, for later layers to start with or grow
 * into (their first touch is paid once, not per layer: fresh memory costs
 * a page fault per 4 KiB, several ms per MiB on the test VM); released
 * after FLUSH_BUFFER_IDLE_MS unused.
 */
class RowArrayPool {
  private kept: RowArrays[] = [];
  private timer: NodeJS.Timeout | undefined;

  /** The largest kept set, or fresh arrays of INITIAL_ROWS. */
  take(): RowArrays {
    let best = -1;
    for (let i = 0; i < this.kept.length; i++) if (best < 0 || this.kept[i]!.lsn.length > this.kept[best]!.lsn.length) best = i;
    if (best < 0) return { lsn: sharedF64(INITIAL_ROWS), off: sharedF64(INITIAL_ROWS), len: sharedI32(INITIAL_ROWS), prev: sharedI32(INITIAL_ROWS) };
    return this.kept.splice(best, 1)[0]!;
  }

  /** A kept set of at least `rows` rows (the smallest such), if any. */
  takeAtLeast(rows: number): RowArrays | undefined {
    let best = -1;
    for (let i = 0; i < this.kept.length; i++) {
      const n = this.kept[i]!.lsn.length;
      if (n >= rows && (best < 0 || n < this.kept[best]!.lsn.length)) best = i;
    }
    return best < 0 ? undefined : this.kept.splice(best, 1)[0]!;
  }

  give(rows: RowArrays): void {
    if (rows.lsn.length > KEPT_ROWS_MAX) return;
    this.kept.push(rows);
    // keep the largest sets
    this.kept.sort((a, b) => b.lsn.length - a.lsn.length);
    this.kept.length = Math.min(this.kept.length, KEPT_ROW_SETS);
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.kept = [];
    }, FLUSH_BUFFER_IDLE_MS);
    this.timer.unref();
  }
}

const rowArrayPool = new RowArrayPool();

/**
 * Index arrays live on SharedArrayBuffers: the flush worker reads a frozen
 * layer's index without a copy (frozen_layer_flush.ts). Same speed as plain
 * typed arrays for ordinary element access.
 */
function sharedF64(n: number): Float64Array {
  return new Float64Array(new SharedArrayBuffer(n * Float64Array.BYTES_PER_ELEMENT));
}
function sharedI32(n: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer(n * Int32Array.BYTES_PER_ELEMENT));
}

/** Rough heap cost of one index row (LSN, offset, length, previous row); part of the size estimate. */
const INDEX_BYTES_PER_ENTRY = 24;
/** Rough heap cost of one distinct key (map entry, bigint, slot arrays). */
const INDEX_BYTES_PER_KEY = 96;

/** The two bytes value.ts puts in front of a WAL record, per (willInit, engine): flags are computed once, by value.ts itself. */
const WAL_PREFIX = new Map<string, Uint8Array>();
function walPrefix(willInit: boolean, engine: RedoEngine | undefined): Uint8Array {
  const id = `${willInit ? 1 : 0}${engine ?? ""}`;
  let p = WAL_PREFIX.get(id);
  if (p === undefined) {
    p = encodeValue(engine === undefined ? { kind: "wal", willInit, rec: new Uint8Array(0) } : { kind: "wal", willInit, rec: new Uint8Array(0), engine });
    assert(p.length === WAL_OVERHEAD_BYTES, "WAL value prefix is two bytes");
    WAL_PREFIX.set(id, p);
  }
  return p;
}
/** The prefixes by (engine code, willInit): the hot path indexes them instead of building the map key. */
const PREFIXES: readonly Uint8Array[] = [
  walPrefix(false, undefined), walPrefix(true, undefined),
  walPrefix(false, "postgres"), walPrefix(true, "postgres"),
  walPrefix(false, "native"), walPrefix(true, "native"),
];
function prefixOf(willInit: boolean, engine: RedoEngine | undefined): Uint8Array {
  return PREFIXES[(engine === undefined ? 0 : engine === "postgres" ? 2 : 4) + (willInit ? 1 : 0)]!;
}

export interface InMemoryLayerOptions {
  /** Directory for the ephemeral file (the timeline's directory). */
  dir: string;
  startLsn: Lsn;
  writeBufferBytes?: number;
}

let ephemeralCounter = 0;

/**
 * A fork's dense block table (ForkSlots) covers blocks below
 * max(DENSE_MIN_BLOCKS, DENSE_BLOCKS_PER_KEY x the fork's keys in the layer),
 * at 4 bytes a block: so it costs at most ~64 bytes per key plus 16 KiB per
 * fork, however sparse the blocks; blocks beyond go to a Map. (Ingest of a
 * table's random updates fills it densely soon: 2k keys of a 32k-block table.)
 */
const DENSE_MIN_BLOCKS = 4096;
const DENSE_BLOCKS_PER_KEY = 16;
/** 2^136: keys below it are in the relation namespace (top byte 0). */
const REL_NAMESPACE_END = 1n << 136n;
/** Block number of relation size keys (InvalidBlockNumber): not a block. */
const SIZE_BLOCK = 0xffffffff;

/**
 * The fields of `key` when it is a relation block key (key.ts layout:
 * namespace 0, relNumber != 0, fork 0..3, block != InvalidBlockNumber),
 * else undefined. Off the hot path (general ingest path and reads).
 */
function relBlockOf(key: Key): { spcOid: number; dbOid: number; relNumber: number; fork: number; blk: number } | undefined {
  if (key >= REL_NAMESPACE_END || key < 0n) return undefined;
  const blk = Number(key & 0xffffffffn);
  const fork = Number((key >> 32n) & 0xffn);
  const relNumber = Number((key >> 40n) & 0xffffffffn);
  if (blk === SIZE_BLOCK || fork > FORK_INIT || relNumber === 0) return undefined;
  return { spcOid: Number((key >> 104n) & 0xffffffffn), dbOid: Number((key >> 72n) & 0xffffffffn), relNumber, fork, blk };
}

/** The slots of one relation fork's blocks in one in-memory layer (InMemoryLayer.forkSlots). */
export class ForkSlots {
  readonly spcOid: number;
  readonly dbOid: number;
  readonly relNumber: number;
  readonly fork: number;
  /** Block -> slot + 1 (0: none here) for the blocks it covers; other blocks' slots are in `sparse`. */
  private dense = new Int32Array(0);
  private sparse: Map<number, number> | undefined;
  private keys = 0;

  constructor(
    tag: RelTag,
    /** relBlockKey(tag, 0): a block's key is keyBase + block. */
    private readonly keyBase: Key,
    private readonly newSlot: (key: Key) => number,
  ) {
    this.spcOid = tag.spcOid;
    this.dbOid = tag.dbOid;
    this.relNumber = tag.relNumber;
    this.fork = tag.fork;
  }

  /** The slot of block `blk` (a valid block number), or -1. */
  find(blk: number): number {
    if (blk < this.dense.length) {
      const s = this.dense[blk]!;
      if (s > 0) return s - 1;
    }
    // (a block may have gone to the Map before the dense table grew over it)
    return this.sparse?.get(blk) ?? -1;
  }

  /** The slot of block `blk`, created when new. */
  slotOf(blk: number): number {
    const found = this.find(blk);
    if (found >= 0) return found;
    const slot = this.newSlot((this.keyBase + BigInt(blk)) as Key);
    this.keys++;
    const cover = Math.max(DENSE_MIN_BLOCKS, DENSE_BLOCKS_PER_KEY * this.keys);
    if (blk >= this.dense.length && blk < cover) {
      const grown = new Int32Array(Math.min(cover, Math.max(blk + 1, this.dense.length * 2)));
      grown.set(this.dense);
      this.dense = grown;
    }
    if (blk < this.dense.length) this.dense[blk] = slot + 1;
    else (this.sparse ??= new Map()).set(blk, slot);
    return slot;
  }
}

export class InMemoryLayer {
  readonly startLsn: Lsn;
  readonly path: string;
  private fd: number;
  private buf: Buffer;
  /** Write buffers handed to the thread pool, oldest first (module comment: write-behind). */
  private readonly inflight: InflightWrite[] = [];
  /** The first failed write-behind (fails every later use of the layer). */
  private writeError: StrataError | undefined;
  /** Called when `inflight` becomes empty. */
  private settleWaiters: Array<() => void> = [];
  /** close() was called while writes were in flight: the descriptor is closed after the last one. */
  private closeWhenSettled = false;
  private bufLen = 0;
  /** Bytes already written to the file; the buffer holds file offsets [fileLen, fileLen + bufLen). */
  private fileLen = 0;

  // ---- the index (see the module comment)
  /** key -> slot, for keys other than relation blocks (those are in `forks`). */
  private readonly slots = new Map<Key, number>();
  /** Relation number -> the slot tables of its forks in this layer (ForkSlots). */
  private readonly forks = new Map<number, ForkSlots[]>();
  /** slot -> key. */
  private slotKeys: Key[] = [];
  /** slot -> newest row of the key. */
  private slotHead = sharedI32(INITIAL_SLOTS);
  /** Per row: LSN - startLsn, file offset, value length, previous row of the same key (-1: none). */
  private rowLsn: Float64Array;
  private rowOff: Float64Array;
  private rowLen: Int32Array;
  private rowPrev: Int32Array;
  private entryCount = 0;

  private lastLsn: Lsn | undefined;
  /** lastLsn - startLsn as a number (puts of one record share their LSN: converted once). */
  private lastRel = -1;
  private endLsn: Lsn | undefined;
  private closed = false;

  /** The last WAL value written by putWal, for sharing its bytes with the record's other keys. */
  private lastWalBody: Uint8Array | undefined;
  private readonly lastWalHead = new Uint8Array(16);
  private lastWalHeadLen = -1;
  private lastWalPrefix: Uint8Array | undefined;
  private lastWalOff = -1;

  private constructor(opts: InMemoryLayerOptions, path: string, fd: number) {
    this.startLsn = opts.startLsn;
    this.path = path;
    this.fd = fd;
    this.buf = writeBufferPool.take(opts.writeBufferBytes ?? DEFAULT_INMEMORY_WRITE_BUFFER_BYTES);
    const rows = rowArrayPool.take();
    this.rowLsn = rows.lsn;
    this.rowOff = rows.off;
    this.rowLen = rows.len;
    this.rowPrev = rows.prev;
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
    return this.slotKeys.length;
  }

  /** Bytes of values appended (the ephemeral file's size, buffer included). */
  get valueBytes(): number {
    return this.fileLen + this.bufLen;
  }

  /** Estimated total footprint (file + heap index): what the checkpoint-distance trigger compares. */
  get sizeBytes(): number {
    return this.valueBytes + this.entryCount * INDEX_BYTES_PER_ENTRY + this.slotKeys.length * INDEX_BYTES_PER_KEY;
  }

  /** Highest LSN put so far. */
  get lastPutLsn(): Lsn | undefined {
    return this.lastLsn;
  }

  /** Appends one version, encoded straight into the write buffer. LSNs must not decrease; (key, LSN) must be new. */
  put(key: Key, lsn: Lsn, value: Value): void {
    this.putAt(this.slotOf(key), lsn, value);
  }

  /**
   * The slot number of `key` in this layer (created, without versions, when
   * new): `putAt` / `putWalAt` take it instead of the key, so a caller that
   * remembers slots by its own cheap identifiers (ingest: per relation fork
   * and block number) spares the bigint key and its lookup per version.
   * Slots are valid for this layer only.
   */
  slotOf(key: Key): number {
    const rb = relBlockOf(key);
    if (rb !== undefined) return this.forkSlots(rb.spcOid, rb.dbOid, rb.relNumber, rb.fork).slotOf(rb.blk);
    let slot = this.slots.get(key);
    if (slot === undefined) {
      slot = this.newSlot(key);
      this.slots.set(key, slot);
    }
    return slot;
  }

  /** The slot of `key`, or -1 when the layer has no version of it. */
  private findSlot(key: Key): number {
    const rb = relBlockOf(key);
    if (rb === undefined) return this.slots.get(key) ?? -1;
    const list = this.forks.get(rb.relNumber);
    if (list === undefined) return -1;
    for (const f of list) if (f.spcOid === rb.spcOid && f.dbOid === rb.dbOid && f.fork === rb.fork) return f.find(rb.blk);
    return -1;
  }

  /**
   * The slot table of one relation fork's blocks in this layer (created when
   * new): `slotOf(blk)` there equals this layer's slotOf(relBlockKey(fork,
   * blk)), looked up by block number in a typed array instead of by bigint
   * key in a Map (~1 µs per new key on the test VM, and ingest meets tens of
   * thousands of keys per layer). Ingest keeps the table per fork while it
   * puts into this layer.
   */
  forkSlots(spcOid: number, dbOid: number, relNumber: number, fork: number): ForkSlots {
    let list = this.forks.get(relNumber);
    if (list === undefined) {
      list = [];
      this.forks.set(relNumber, list);
    }
    for (let i = 0; i < list.length; i++) {
      const f = list[i]!;
      if (f.fork === fork && f.dbOid === dbOid && f.spcOid === spcOid) return f;
    }
    const tag = { spcOid, dbOid, relNumber, fork };
    const f = new ForkSlots(tag, relBlockKey(tag, 0), (key) => this.newSlot(key));
    list.push(f);
    return f;
  }

  /** Registers a new key (no versions yet) and returns its slot. */
  private newSlot(key: Key): number {
    assert(!this.closed, "put on a closed in-memory layer");
    if (this.endLsn !== undefined) {
      throw new StrataError("invalid_argument", `In-memory layer at ${formatLsn(this.startLsn)} is frozen; cannot add key ${formatKey(key)}`);
    }
    const slot = this.slotKeys.length;
    if (slot === this.slotHead.length) {
      const grown = sharedI32(slot * 2);
      grown.set(this.slotHead);
      this.slotHead = grown;
    }
    this.slotHead[slot] = -1;
    this.slotKeys.push(key);
    return slot;
  }

  /** `put` by slot (slotOf). */
  putAt(slot: number, lsn: Lsn, value: Value): void {
    const size = encodedValueSize(value);
    this.checkPut(slot, lsn, size);
    this.addRow(slot, this.append(value, size), size);
  }

  /** Appends one version already in value.ts encoding. */
  putEncoded(key: Key, lsn: Lsn, encoded: Uint8Array): void {
    const slot = this.slotOf(key);
    this.checkPut(slot, lsn, encoded.length);
    this.addRow(slot, this.append(encoded, encoded.length), encoded.length);
  }

  /**
   * Appends a WAL-record version whose record bytes are `head` followed by
   * `body` (the same value as put(key, lsn, { kind: "wal", willInit, engine,
   * rec: head ++ body })), without materializing the concatenation. When the
   * previous putWal had the same LSN, body (same object), head bytes and
   * flags, the new version shares its bytes. `head` may be reused by the
   * caller afterwards.
   */
  putWal(key: Key, lsn: Lsn, willInit: boolean, engine: RedoEngine | undefined, head: Uint8Array, body: Uint8Array): void {
    this.putWalAt(this.slotOf(key), lsn, willInit, engine, head, body);
  }

  /** `putWal` by slot (slotOf). */
  putWalAt(slot: number, lsn: Lsn, willInit: boolean, engine: RedoEngine | undefined, head: Uint8Array, body: Uint8Array): void {
    const size = WAL_OVERHEAD_BYTES + head.length + body.length;
    this.checkPut(slot, lsn, size);
    const prefix = prefixOf(willInit, engine);
    if (body === this.lastWalBody && prefix === this.lastWalPrefix && lsn === this.lastLsn && this.sameHead(head)) {
      this.addRow(slot, this.lastWalOff, size);
      return;
    }
    let offset: number;
    if (this.bufLen + size > this.buf.length) this.flushBuffer();
    if (size > this.buf.length) {
      offset = this.fileLen;
      const whole = new Uint8Array(size);
      whole.set(prefix, 0);
      whole.set(head, WAL_OVERHEAD_BYTES);
      whole.set(body, WAL_OVERHEAD_BYTES + head.length);
      this.writeFullySync(whole, this.fileLen);
      this.fileLen += size;
    } else {
      offset = this.fileLen + this.bufLen;
      const b = this.buf;
      let at = this.bufLen;
      b[at] = prefix[0]!;
      b[at + 1] = prefix[1]!;
      at += WAL_OVERHEAD_BYTES;
      for (let i = 0; i < head.length; i++) b[at + i] = head[i]!;
      b.set(body, at + head.length);
      this.bufLen += size;
    }
    this.addRow(slot, offset, size);
    this.lastWalBody = body;
    this.lastWalPrefix = prefix;
    this.lastWalOff = offset;
    if (head.length <= this.lastWalHead.length) {
      this.lastWalHead.set(head);
      this.lastWalHeadLen = head.length;
    } else {
      this.lastWalHeadLen = -1;
    }
  }

  private sameHead(head: Uint8Array): boolean {
    if (head.length !== this.lastWalHeadLen) return false;
    for (let i = 0; i < head.length; i++) if (head[i] !== this.lastWalHead[i]) return false;
    return true;
  }

  /** put's checks for a version of `slot` at `lsn` of `size` bytes. */
  private checkPut(slot: number, lsn: Lsn, size: number): void {
    assert(!this.closed, "put on a closed in-memory layer");
    if (this.writeError !== undefined) throw this.writeError;
    if (!(slot >= 0 && slot < this.slotKeys.length)) assert(false, `in-memory layer: no slot ${slot}`);
    if (this.endLsn !== undefined) {
      throw new StrataError("invalid_argument", `In-memory layer at ${formatLsn(this.startLsn)} is frozen; cannot put at ${formatLsn(lsn)}`);
    }
    if (lsn !== this.lastLsn) {
      if (lsn < this.startLsn || (this.lastLsn !== undefined && lsn < this.lastLsn)) {
        throw new StrataError(
          "invalid_argument",
          `In-memory layer: put at ${formatLsn(lsn)} is below ${formatLsn(this.lastLsn ?? this.startLsn)} (puts must arrive in LSN order)`,
        );
      }
      const relBig = lsn - this.startLsn;
      if (relBig > BigInt(Number.MAX_SAFE_INTEGER)) assert(false, "in-memory layer spans more than 2^53 bytes of WAL");
      this.lastRel = Number(relBig);
      this.lastLsn = lsn;
      this.lastWalBody = undefined;
    }
    if (size > MAX_VALUE_BYTES) {
      throw new StrataError("invalid_argument", `In-memory layer: value of ${size} bytes exceeds ${MAX_VALUE_BYTES}`);
    }
    const head = this.slotHead[slot]!;
    if (head >= 0 && this.rowLsn[head] === this.lastRel) {
      throw new StrataError("invalid_argument", `In-memory layer: duplicate version of ${formatKey(this.slotKeys[slot]!)} at ${formatLsn(lsn)}`);
    }
  }

  /** Records a version of `slot` at lastRel whose bytes are at `offset`. */
  private addRow(slot: number, offset: number, size: number): void {
    const row = this.entryCount;
    if (row === this.rowLsn.length) this.growRows();
    this.rowLsn[row] = this.lastRel;
    this.rowOff[row] = offset;
    this.rowLen[row] = size;
    this.rowPrev[row] = this.slotHead[slot]!;
    this.slotHead[slot] = row;
    this.entryCount = row + 1;
  }

  private growRows(): void {
    const n = this.rowLsn.length * 2;
    const kept = rowArrayPool.takeAtLeast(n);
    if (kept !== undefined) {
      // a closed layer's arrays, already touched: copy into them
      kept.lsn.set(this.rowLsn);
      kept.off.set(this.rowOff);
      kept.len.set(this.rowLen);
      kept.prev.set(this.rowPrev);
      ({ lsn: this.rowLsn, off: this.rowOff, len: this.rowLen, prev: this.rowPrev } = kept);
      return;
    }
    const lsns = sharedF64(n);
    lsns.set(this.rowLsn);
    this.rowLsn = lsns;
    const offs = sharedF64(n);
    offs.set(this.rowOff);
    this.rowOff = offs;
    const lens = sharedI32(n);
    lens.set(this.rowLen);
    this.rowLen = lens;
    const prevs = sharedI32(n);
    prevs.set(this.rowPrev);
    this.rowPrev = prevs;
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
    // (a closed layer's row arrays may already serve another layer)
    assert(!this.closed, "read of a closed in-memory layer");
    if (this.writeError !== undefined) throw this.writeError;
    const slot = this.findSlot(key);
    if (slot < 0) return [];
    const start = lsnMax(lsnRange.start, this.startLsn);
    const end = lsnMin(lsnRange.end, this.endLsn ?? LSN_UNBOUNDED);
    const out: ValueEntry[] = [];
    for (let row = this.slotHead[slot]!; row >= 0; row = this.rowPrev[row]!) {
      const l = (this.startLsn + BigInt(this.rowLsn[row]!)) as Lsn;
      if (l >= end) continue;
      if (l < start) break;
      const offset = this.rowOff[row]!;
      const bytes = this.readValue(offset, this.rowLen[row]!);
      const value = decodeValue(bytes, `ephemeral file ${this.path} offset ${offset}`);
      out.push({ key, lsn: l, value });
      if (opts.stopAtBase === true && isBase(value)) break;
    }
    return out;
  }

  /** The frozen layer as plain data for a flush (frozen_layer_flush.ts); valid until `close`. */
  snapshot(): FrozenLayerSnapshot {
    if (this.endLsn === undefined) throw new StrataError("invalid_argument", "Cannot flush an in-memory layer that is not frozen");
    assert(!this.closed, "flush of a closed in-memory layer");
    assert(this.bufLen === 0 && this.inflight.length === 0, "a frozen layer's values are all in the file (writesSettled)");
    if (this.writeError !== undefined) throw this.writeError;
    return {
      path: this.path, fd: this.fd, fileLen: this.fileLen, startLsn: this.startLsn, endLsn: this.endLsn,
      slotKeys: this.slotKeys, slotHead: this.slotHead, rowLsn: this.rowLsn, rowOff: this.rowOff, rowLen: this.rowLen, rowPrev: this.rowPrev,
      entryCount: this.entryCount,
    };
  }

  /**
   * Writes the frozen layer's content to a new delta layer file in `dir`, on
   * this thread (frozen_layer_flush.ts). The key range defaults to all keys,
   * which marks the file as level 0. Cancelling `signal` abandons the partial
   * file and rejects with "cancelled". `groupBytes` / `readChunkBytes`
   * override the flush buffer sizes (tests).
   */
  async writeDeltaLayer(dir: string, opts: FrozenFlushOptions = {}): Promise<WrittenLayer> {
    await this.writesSettled();
    return await writeFrozenLayer(this.snapshot(), dir, opts);
  }

  /**
   * writeDeltaLayer on the flush worker thread (flush_worker.ts): the same
   * bytes, while this thread goes on ingesting. The layer must not be closed
   * before the returned promise settles (it settles only once the worker no
   * longer touches the file or the index).
   */
  async writeDeltaLayerOffThread(dir: string, opts: Omit<FrozenFlushOptions, "groupBytes" | "readChunkBytes"> = {}): Promise<WrittenLayer> {
    await this.writesSettled();
    return await flushOnWorker(this.snapshot(), dir, opts);
  }

  /** Releases the ephemeral file. The layer must no longer be read. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    rowArrayPool.give({ lsn: this.rowLsn, off: this.rowOff, len: this.rowLen, prev: this.rowPrev });
    writeBufferPool.give(this.buf);
    // The name goes now; the descriptor is closed on the thread pool: the
    // last close of an unlinked file frees its page cache, tens of ms for a
    // layer-sized file, which this thread (ingest) need not wait for.
    try {
      unlinkSync(this.path);
    } catch {
      // Already gone: nothing to release.
    }
    if (this.inflight.length > 0) this.closeWhenSettled = true;
    else close(this.fd, () => undefined); // (a failed close of a read-only-from-now file loses nothing)
  }

  /** Write buffers handed to the thread pool and not yet completed. */
  get writesInFlight(): number {
    return this.inflight.length;
  }

  /** Resolves when no write-behind is in flight; rejects with the first write failure. */
  async writesSettled(): Promise<void> {
    if (this.inflight.length > 0) await new Promise<void>((resolve) => this.settleWaiters.push(resolve));
    if (this.writeError !== undefined) throw this.writeError;
  }

  /** Hands `seg` to the thread pool (the rest of it after a short write). */
  private writeBehind(seg: InflightWrite, done: number): void {
    write(this.fd, seg.buf, done, seg.len - done, seg.start + done, (err, n) => {
      if (err === null && n > 0 && done + n < seg.len) {
        this.writeBehind(seg, done + n);
        return;
      }
      if ((err !== null || n <= 0) && this.writeError === undefined) {
        const why = err === null ? "write made no progress" : err.message;
        this.writeError = new StrataError("io_error", `Cannot write ephemeral file ${this.path} at ${seg.start + done}: ${why}`, { cause: err ?? undefined });
      }
      this.writeCompleted(seg);
    });
  }

  private writeCompleted(seg: InflightWrite): void {
    const i = this.inflight.indexOf(seg);
    assert(i >= 0, "a completed write-behind is in flight");
    this.inflight.splice(i, 1);
    writeBufferPool.give(seg.buf);
    if (this.inflight.length > 0) return;
    if (this.closeWhenSettled) {
      this.closeWhenSettled = false;
      close(this.fd, () => undefined);
    }
    const waiters = this.settleWaiters;
    this.settleWaiters = [];
    for (const w of waiters) w();
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

  /** Writes the filled buffer out (write-behind, or synchronously when MAX_INFLIGHT_WRITES are pending) and starts an empty one. */
  private flushBuffer(): void {
    if (this.bufLen === 0) return;
    if (this.writeError !== undefined) throw this.writeError;
    if (this.inflight.length < MAX_INFLIGHT_WRITES) {
      const seg: InflightWrite = { start: this.fileLen, buf: this.buf, len: this.bufLen };
      this.inflight.push(seg);
      this.buf = writeBufferPool.take(seg.buf.length);
      this.writeBehind(seg, 0);
    } else {
      this.writeFullySync(this.buf.subarray(0, this.bufLen), this.fileLen);
    }
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
  private readValue(offset: number, length: number): Uint8Array {
    if (offset >= this.fileLen) {
      const from = offset - this.fileLen;
      return new Uint8Array(this.buf.subarray(from, from + length)); // a copy: the buffer is reused
    }
    for (const seg of this.inflight) {
      // (a value lies entirely in one buffer)
      if (offset >= seg.start && offset < seg.start + seg.len) {
        const from = offset - seg.start;
        return new Uint8Array(seg.buf.subarray(from, from + length));
      }
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
