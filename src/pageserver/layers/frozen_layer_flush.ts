/**
 * The flush of a frozen in-memory layer into a level-0 delta layer file: the
 * algorithm, over a plain snapshot of the layer's index, so that it runs the
 * same on the main thread (InMemoryLayer.writeDeltaLayer) and on the flush
 * worker thread (flush_worker.ts), and both write byte-identical files.
 *
 * The snapshot (`FrozenLayerSnapshot`) is what a frozen InMemoryLayer is made
 * of (inmemory_layer.ts explains the index): the ephemeral file's descriptor,
 * the LSN range, the slot keys and the row arrays. Descriptors are
 * process-wide, so a worker thread reads the same file through the same fd;
 * the row arrays live on SharedArrayBuffers, so a worker sees them without a
 * copy. A frozen layer is read-only, so the reader threads need no locking;
 * the owner must keep the fd open and the arrays unchanged until the flush
 * has settled (InMemoryLayer.close is only called after it).
 *
 * Flushing visits values in key order, i.e. in random file order; one pread
 * per value cost a third of ingest time (~5 µs each). Two modes:
 *   - whole-file (files up to FLUSH_WHOLE_FILE_MAX_BYTES, e.g. every layer of
 *     bulk ingest): the file is read as it is into one value buffer, and
 *     each key's versions go to the writer straight from there, as one batch
 *     (DeltaLayerWriter.putVersions: no per-value copy, call or allocation
 *     before the writer's own copy into its output buffer);
 *   - key groups (larger files): the next keys whose values add up to at
 *     most the value buffer's size are read in file order through a
 *     FLUSH_READ_CHUNK_BYTES window (each read starts at the next value still
 *     wanted, so gaps larger than the window are skipped) into the buffer,
 *     laid out in key order, then written out the same way. A key whose
 *     versions alone exceed the buffer is read value by value.
 * Buffers and index scratch arrays are kept by the thread between flushes
 * (one set; a concurrent flush allocates its own) and released after
 * FLUSH_BUFFER_IDLE_MS without a flush: fresh memory's first touch is the
 * expensive part on the test VM (~4-10 ms per MiB), and would otherwise be
 * paid per flush. The delta writer's awaits on its 1 MiB output writes
 * yield to the event loop regularly.
 *
 * Crash safety is the delta writer's (layer_file.ts: temp file, fsync,
 * rename, directory fsync); a cancelled or failed flush removes its partial
 * file. Invariant relied upon: file offsets never decrease with the row
 * number, so sorting row numbers sorts by file offset.
 */
import { readSync } from "node:fs";
import { assert, StrataError } from "../../lib/errors.js";
import { formatLsn, type Lsn } from "../../lib/lsn.js";
import type { Key } from "../key.js";
import { DeltaLayerWriter, type WrittenLayer } from "./delta_layer.js";
import type { DeltaVersionBatch } from "./layer_file.js";
import { FULL_KEY_RANGE, type KeyRange } from "./range.js";

/** Value bytes of one flush group (see the module comment): 16 MiB keeps passes over a 256 MiB layer few. */
export const FLUSH_GROUP_BYTES = 16 * 1024 * 1024;
/**
 * A frozen layer whose ephemeral file is at most this large is flushed in
 * whole-file mode (module comment): the file is read into one kept buffer,
 * grown to fit. Covers the layers of bulk ingest (timeline.ts
 * BULK_LAYER_BYTES, 32 MiB) with room; the memory is the thread's until
 * FLUSH_BUFFER_IDLE_MS without a flush.
 */
export const FLUSH_WHOLE_FILE_MAX_BYTES = 64 * 1024 * 1024;
/** The kept value buffer grows in steps of this size (fewer reallocations as layer sizes vary). */
const VALUES_GROWTH_BYTES = 8 * 1024 * 1024;
/** Read window of a flush group's sweep over the ephemeral file. */
export const FLUSH_READ_CHUNK_BYTES = 1024 * 1024;
/** Kept flush buffers unused this long are released (the next flush allocates again). */
export const FLUSH_BUFFER_IDLE_MS = 30_000;
/**
 * Largest gap between two values one read of the flush sweep covers: a
 * positioned read costs a few microseconds, about what copying this many
 * bytes of the OS page cache costs.
 */
const FLUSH_RUN_GAP_BYTES = 32 * 1024;
/** Values up to this size are copied by a loop in the flush sweep (a native copy's call costs more). */
const SMALL_COPY_BYTES = 64;

/** A frozen in-memory layer as plain data (see the module comment). Read-only while a flush runs. */
export interface FrozenLayerSnapshot {
  /** The ephemeral file (for messages) and its open descriptor (positioned reads only). */
  readonly path: string;
  readonly fd: number;
  /** Bytes of the ephemeral file holding values (all of them: a frozen layer's write buffer is empty). */
  readonly fileLen: number;
  readonly startLsn: Lsn;
  readonly endLsn: Lsn;
  /** slot -> key. */
  readonly slotKeys: readonly Key[];
  /** slot -> newest row of the key (first slotKeys.length elements). */
  readonly slotHead: Int32Array;
  /** Per row (first entryCount elements): LSN - startLsn, file offset, value length, previous row of the key (-1: none). */
  readonly rowLsn: Float64Array;
  readonly rowOff: Float64Array;
  readonly rowLen: Int32Array;
  readonly rowPrev: Int32Array;
  readonly entryCount: number;
}

export interface FrozenFlushOptions {
  keyRange?: KeyRange;
  generation?: number;
  indexPageSizeBytes?: number;
  signal?: AbortSignal;
  /**
   * Flush buffer sizes (tests): with either given, the flush uses fresh
   * buffers of these sizes (default FLUSH_GROUP_BYTES / FLUSH_READ_CHUNK_BYTES)
   * and reads the whole file at once only when it fits `groupBytes`.
   */
  groupBytes?: number;
  readChunkBytes?: number;
}

/**
 * A flush's buffers and index scratch arrays (see the module comment), kept
 * by the thread between flushes and grown, never shrunk, while kept: fresh
 * memory costs a page fault per 4 KiB on first touch, several ms per MiB on
 * the test VM, which for per-flush arrays of a few MiB would be a good part
 * of a flush.
 */
class FlushScratch {
  values: Buffer;
  readonly chunk: Buffer;
  private i32 = new Int32Array(0);
  private f64 = new Float64Array(0);

  constructor(valuesBytes: number, chunkBytes: number) {
    this.values = Buffer.allocUnsafe(valuesBytes);
    this.chunk = Buffer.allocUnsafe(chunkBytes);
  }

  /** The value buffer, grown to at least `bytes` (kept scratch only; rounded up so growth is rare). */
  valuesOf(bytes: number): Buffer {
    if (this.values.length < bytes) this.values = Buffer.allocUnsafe(Math.ceil(bytes / VALUES_GROWTH_BYTES) * VALUES_GROWTH_BYTES);
    return this.values;
  }

  /** The index arrays of a flush of `nslots` keys and `n` versions, as views of kept storage (contents undefined). */
  indexArrays(nslots: number, n: number): FlushArrays {
    const i32Len = 2 * nslots + 6 * n;
    const f64Len = nslots + n;
    if (this.i32.length < i32Len) this.i32 = new Int32Array(grownLength(i32Len));
    if (this.f64.length < f64Len) this.f64 = new Float64Array(grownLength(f64Len));
    let i = 0;
    const i32 = (len: number): Int32Array => this.i32.subarray(i, (i += len));
    let f = 0;
    const f64 = (len: number): Float64Array => this.f64.subarray(f, (f += len));
    return {
      order: i32(nslots), slotRows: i32(nslots), rows: i32(n), rowSlot: i32(n), rowGroup: i32(n), byFile: i32(n), at: i32(n), len: i32(n),
      slotBytes: f64(nslots), lsn: f64(n),
    };
  }
}

/** See FrozenFlush.run for the roles. */
interface FlushArrays {
  readonly order: Int32Array;
  readonly slotRows: Int32Array;
  readonly rows: Int32Array;
  readonly rowSlot: Int32Array;
  readonly rowGroup: Int32Array;
  readonly byFile: Int32Array;
  readonly at: Int32Array;
  readonly len: Int32Array;
  readonly slotBytes: Float64Array;
  readonly lsn: Float64Array;
}

/** Growth of scratch arrays: room for the next, somewhat larger layer without a reallocation. */
function grownLength(n: number): number {
  return Math.ceil(n * 1.25) + 1024;
}

/** The flush scratch this thread keeps between flushes (see the module comment). */
class FlushScratchPool {
  private kept: FlushScratch | undefined;
  private busy = false;
  private timer: NodeJS.Timeout | undefined;

  acquire(): FlushScratch {
    if (this.busy) return new FlushScratch(FLUSH_GROUP_BYTES, FLUSH_READ_CHUNK_BYTES);
    this.busy = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.kept ??= new FlushScratch(FLUSH_GROUP_BYTES, FLUSH_READ_CHUNK_BYTES);
    return this.kept;
  }

  release(b: FlushScratch): void {
    if (b !== this.kept || !this.busy) return;
    this.busy = false;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.busy) this.kept = undefined;
    }, FLUSH_BUFFER_IDLE_MS);
    this.timer.unref();
  }
}

const flushScratchPool = new FlushScratchPool();

/**
 * Writes the frozen layer `snap` to a new delta layer file in `dir` (key
 * range default: all keys, i.e. level 0). Cancelling `signal` abandons the
 * partial file and rejects with "cancelled".
 */
export async function writeFrozenLayer(snap: FrozenLayerSnapshot, dir: string, opts: FrozenFlushOptions = {}): Promise<WrittenLayer> {
  const writer = await DeltaLayerWriter.create({
    dir,
    keyRange: opts.keyRange ?? FULL_KEY_RANGE,
    lsnRange: { start: snap.startLsn, end: snap.endLsn },
    ...(opts.generation === undefined ? {} : { generation: opts.generation }),
    ...(opts.indexPageSizeBytes === undefined ? {} : { indexPageSizeBytes: opts.indexPageSizeBytes }),
  });
  const custom = opts.groupBytes !== undefined || opts.readChunkBytes !== undefined;
  const scratch = custom ? new FlushScratch(opts.groupBytes ?? FLUSH_GROUP_BYTES, opts.readChunkBytes ?? FLUSH_READ_CHUNK_BYTES) : flushScratchPool.acquire();
  try {
    // Whole-file mode when the file fits the value buffer (grown up to FLUSH_WHOLE_FILE_MAX_BYTES when kept).
    const values = !custom && snap.fileLen <= FLUSH_WHOLE_FILE_MAX_BYTES ? scratch.valuesOf(snap.fileLen) : scratch.values;
    await new FrozenFlush(snap, writer, scratch, values).run(opts.signal);
    return await writer.finish();
  } catch (e) {
    await writer.abort();
    throw e;
  } finally {
    if (!custom) flushScratchPool.release(scratch);
  }
}

/** Keys between two checks of the cancellation signal in whole-file mode (a few ms of work). */
const KEYS_PER_ABORT_CHECK = 1024;

/** One flush's state: the snapshot, the writer and the buffers. */
class FrozenFlush {
  private readonly exactLsn: boolean;
  private readonly startNum: number;
  // Scratch arrays (views of the kept scratch; see `run` for their roles).
  private order!: Int32Array;
  private slotRows!: Int32Array;
  private slotBytes!: Float64Array;
  private rows!: Int32Array;
  private rowSlot!: Int32Array;
  private rowGroup!: Int32Array;
  private byFile!: Int32Array;
  private batch!: DeltaVersionBatch;

  constructor(
    private readonly s: FrozenLayerSnapshot,
    private readonly writer: DeltaLayerWriter,
    private readonly scratch: FlushScratch,
    /** Value buffer: the whole file when it fits (whole-file mode), else one key group's values. */
    private readonly values: Buffer,
  ) {
    this.exactLsn = s.endLsn <= BigInt(Number.MAX_SAFE_INTEGER);
    this.startNum = Number(s.startLsn);
  }

  async run(signal: AbortSignal | undefined): Promise<void> {
    const s = this.s;
    const nslots = s.slotKeys.length;
    const n = s.entryCount;
    // order: slots in key order; slotRows / slotBytes: each slot's versions and value bytes;
    // rows: versions in key order (oldest first per key); rowSlot: a version's place in the
    // group buffer; rowGroup: the group a version belongs to (0: none yet); byFile: a group's
    // versions in file order; batch: the versions handed to the writer.
    const a = this.scratch.indexArrays(nslots, n);
    ({ order: this.order, slotRows: this.slotRows, slotBytes: this.slotBytes, rows: this.rows, rowSlot: this.rowSlot, rowGroup: this.rowGroup, byFile: this.byFile } = a);
    // (a plain Uint8Array view: Buffer's own subarray, used per value, is slower)
    this.batch = { src: new Uint8Array(this.values.buffer, this.values.byteOffset, this.values.length), lsn: a.lsn, at: a.at, len: a.len };
    const { order, slotRows, slotBytes } = this;
    for (let i = 0; i < nslots; i++) order[i] = i;
    const keys = s.slotKeys;
    order.sort((a, b) => (keys[a]! < keys[b]! ? -1 : 1));
    for (let sl = 0; sl < nslots; sl++) {
      let sum = 0;
      let count = 0;
      for (let row = s.slotHead[sl]!; row >= 0; row = s.rowPrev[row]!) {
        sum += s.rowLen[row]!;
        count++;
      }
      slotBytes[sl] = sum;
      slotRows[sl] = count;
    }
    if (s.fileLen <= this.values.length) {
      await this.writeWholeFile(signal);
      return;
    }
    this.rowGroup.fill(0);
    let group = 0;
    let k = 0;
    while (k < nslots) {
      this.checkAbort(signal);
      // The group: slots order[k, end) whose values fit the group buffer (at least one key).
      let end = k;
      let total = 0;
      let count = 0;
      while (end < nslots) {
        const sl = order[end]!;
        if (end > k && total + slotBytes[sl]! > this.values.length) break;
        total += slotBytes[sl]!;
        count += slotRows[sl]!;
        end++;
      }
      if (total > this.values.length) await this.writeKeyValueByValue(order[k]!, slotRows[order[k]!]!);
      else await this.writeGroup(k, end, count, ++group);
      k = end;
    }
  }

  private checkAbort(signal: AbortSignal | undefined): void {
    if (signal?.aborted === true) {
      throw new StrataError("cancelled", `Flush of in-memory layer at ${formatLsn(this.s.startLsn)} cancelled`, { cause: signal.reason });
    }
  }

  /** Rows of `slot`, oldest first, into `out` from `at` (`n` of them). */
  private rowsOf(slot: number, n: number, out: Int32Array, at: number): void {
    const s = this.s;
    let i = at + n - 1;
    for (let row = s.slotHead[slot]!; row >= 0; row = s.rowPrev[row]!) out[i--] = row;
  }

  /** Puts one row's value into the delta writer (the LSN as a number when exact). */
  private putRow(key: Key, row: number, value: Uint8Array): Promise<void> | undefined {
    const rel = this.s.rowLsn[row]!;
    if (this.exactLsn) return this.writer.putEncodedAtNumber(key, this.startNum + rel, value);
    return this.writer.putEncoded(key, (this.s.startLsn + BigInt(rel)) as Lsn, value);
  }

  /**
   * Whole-file mode: the file is read into the value buffer as it is (large
   * sequential reads, no per-value copy), and every key's versions go to
   * the writer straight from there, in key order.
   */
  private async writeWholeFile(signal: AbortSignal | undefined): Promise<void> {
    const s = this.s;
    const { order, slotRows, rows, batch, values } = this;
    this.readSync(0, s.fileLen, values);
    const nslots = s.slotKeys.length;
    let i = 0;
    for (let k = 0; k < nslots; k++) {
      const sl = order[k]!;
      this.rowsOf(sl, slotRows[sl]!, rows, i);
      i += slotRows[sl]!;
    }
    const count = i;
    if (!this.exactLsn) {
      // (LSNs past 2^53: per version, with bigint LSNs)
      i = 0;
      for (let k = 0; k < nslots; k++) {
        if (k % KEYS_PER_ABORT_CHECK === 0) this.checkAbort(signal);
        const sl = order[k]!;
        const key = s.slotKeys[sl]!;
        for (let last = i + slotRows[sl]!; i < last; i++) {
          const row = rows[i]!;
          const off = s.rowOff[row]!;
          const pending = this.putRow(key, row, values.subarray(off, off + s.rowLen[row]!));
          if (pending !== undefined) await pending;
        }
      }
      return;
    }
    const { lsn, at, len } = batch;
    for (let j = 0; j < count; j++) {
      const row = rows[j]!;
      lsn[j] = this.startNum + s.rowLsn[row]!;
      at[j] = s.rowOff[row]!;
      len[j] = s.rowLen[row]!;
    }
    i = 0;
    for (let k = 0; k < nslots; k++) {
      if (k % KEYS_PER_ABORT_CHECK === 0) this.checkAbort(signal);
      const sl = order[k]!;
      const nv = slotRows[sl]!;
      const pending = this.writer.putVersions(s.slotKeys[sl]!, batch, i, i + nv);
      if (pending !== undefined) await pending;
      i += nv;
    }
  }

  /**
   * Reads the values of the slots order[from, to) (`count` rows) in file
   * order into the group buffer, then writes them in key order. `rowSlot`
   * (one element per row of the layer, reused across groups) maps a row to
   * its place in the group buffer; `rowGroup` (likewise) marks the rows of
   * group number `groupNo`.
   */
  private async writeGroup(from: number, to: number, count: number, groupNo: number): Promise<void> {
    const s = this.s;
    const { order, slotRows, rows, rowSlot, rowGroup, byFile } = this;
    const { chunk } = this.scratch;
    const groupBuf = this.values;
    const group = new Uint8Array(groupBuf.buffer, groupBuf.byteOffset, groupBuf.length);
    const chunkU8 = new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length);
    // Rows in key order (oldest first per key), each given its place in the group buffer.
    let n = 0;
    for (let k = from; k < to; k++) {
      const sl = order[k]!;
      this.rowsOf(sl, slotRows[sl]!, rows, n);
      n += slotRows[sl]!;
    }
    let place = 0;
    let minRow = s.entryCount;
    let maxRow = -1;
    for (let i = 0; i < count; i++) {
      const row = rows[i]!;
      rowSlot[row] = place;
      rowGroup[row] = groupNo;
      place += s.rowLen[row]!;
      if (row < minRow) minRow = row;
      if (row > maxRow) maxRow = row;
    }
    // File order = row order (see the invariants): the group's rows in
    // ascending row number, by a pass over the marks (linear; a layer has
    // few groups) rather than a sort.
    let found = 0;
    for (let r = minRow; r <= maxRow; r++) if (rowGroup[r] === groupNo) byFile[found++] = r;
    assert(found === count, "every row of a flush group is marked once");
    // Sweep in file order, in runs: a run starts at the next wanted value and
    // takes the following ones while the gap to each is at most
    // FLUSH_RUN_GAP_BYTES and the run fits the read window. A run of one
    // value is read straight into its place in the group buffer; a longer
    // one into the window, and its values copied out. (Skipping the bytes of
    // other groups' values between runs keeps each group's pass over the
    // file from reading all of it.)
    let p = 0;
    while (p < count) {
      const first = byFile[p]!;
      const start = s.rowOff[first]!;
      let end = start + s.rowLen[first]!;
      let q = p + 1;
      while (q < count) {
        const o = s.rowOff[byFile[q]!]!;
        const e = Math.max(end, o + s.rowLen[byFile[q]!]!);
        if (o - end > FLUSH_RUN_GAP_BYTES || e - start > chunk.length) break;
        end = e;
        q++;
      }
      if (q === p + 1) {
        const at = rowSlot[first]!;
        this.readSync(start, end - start, groupBuf.subarray(at, end - start + at));
        p = q;
        continue;
      }
      this.readSync(start, end - start, chunk);
      for (; p < q; p++) {
        const r = byFile[p]!;
        const rel = s.rowOff[r]! - start;
        const len = s.rowLen[r]!;
        const at = rowSlot[r]!;
        if (len > SMALL_COPY_BYTES) group.set(chunkU8.subarray(rel, rel + len), at);
        else for (let i = 0; i < len; i++) group[at + i] = chunkU8[rel + i]!;
      }
    }
    if (!this.exactLsn) {
      // (LSNs past 2^53: per version, with bigint LSNs)
      let i = 0;
      for (let k = from; k < to; k++) {
        const sl = order[k]!;
        const key = s.slotKeys[sl]!;
        for (let last = i + slotRows[sl]!; i < last; i++) {
          const row = rows[i]!;
          const at = rowSlot[row]!;
          const pending = this.putRow(key, row, group.subarray(at, at + s.rowLen[row]!));
          if (pending !== undefined) await pending;
        }
      }
      return;
    }
    // The group's versions in key order as one batch, handed to the writer a key at a time.
    const batch = this.batch;
    const { lsn, at, len } = batch;
    for (let i = 0; i < count; i++) {
      const row = rows[i]!;
      lsn[i] = this.startNum + s.rowLsn[row]!;
      at[i] = rowSlot[row]!;
      len[i] = s.rowLen[row]!;
    }
    let i = 0;
    for (let k = from; k < to; k++) {
      const sl = order[k]!;
      const nv = slotRows[sl]!;
      const pending = this.writer.putVersions(s.slotKeys[sl]!, batch, i, i + nv);
      if (pending !== undefined) await pending;
      i += nv;
    }
  }

  /** Writes the `n` versions of one key too large for a group, one pread per value. */
  private async writeKeyValueByValue(slot: number, n: number): Promise<void> {
    const s = this.s;
    const rows = new Int32Array(n);
    this.rowsOf(slot, n, rows, 0);
    const key = s.slotKeys[slot]!;
    let scratch = Buffer.allocUnsafe(0);
    for (const row of rows) {
      const len = s.rowLen[row]!;
      if (scratch.length < len) scratch = Buffer.allocUnsafe(len);
      const pending = this.putRow(key, row, this.readSync(s.rowOff[row]!, len, scratch));
      if (pending !== undefined) await pending;
    }
  }

  private readSync(offset: number, length: number, scratch: Buffer): Buffer {
    const s = this.s;
    assert(offset + length <= s.fileLen, "frozen layer values are all in the file");
    let done = 0;
    while (done < length) {
      let n: number;
      try {
        n = readSync(s.fd, scratch, done, length - done, offset + done);
      } catch (e) {
        throw new StrataError("io_error", `Cannot read ephemeral file ${s.path} at ${offset + done}: ${(e as Error).message}`, { cause: e });
      }
      if (n === 0) throw new StrataError("io_error", `Ephemeral file ${s.path} ended at ${offset + done}, expected ${length} bytes at ${offset}`);
      done += n;
    }
    return scratch.subarray(0, length);
  }
}
