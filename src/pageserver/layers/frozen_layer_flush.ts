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
 * Flushing visits values in key order, i.e. in random file order. One pread
 * per value cost a third of ingest time (~5 µs each), and reading the whole
 * file into one buffer costs a layer's worth of fresh memory per flush, whose
 * first touch is the expensive part on the test VM (~4-10 ms per MiB). So a
 * flush works in key groups: it takes the next keys whose values add up to at
 * most FLUSH_GROUP_BYTES, reads their values in file order through a
 * FLUSH_READ_CHUNK_BYTES window (each read starts at the next value still
 * wanted, so gaps larger than the window are skipped) into a group buffer,
 * then writes them out in key order. Both buffers are kept by the thread
 * between flushes (one pair; a concurrent flush allocates its own) and
 * released after FLUSH_BUFFER_IDLE_MS without a flush. A key whose versions
 * alone exceed the group buffer is read value by value. The delta writer's
 * awaits on its 1 MiB output writes yield to the event loop regularly.
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
import { FULL_KEY_RANGE, type KeyRange } from "./range.js";

/** Value bytes of one flush group (see the module comment): 16 MiB keeps passes over a 256 MiB layer few. */
export const FLUSH_GROUP_BYTES = 16 * 1024 * 1024;
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
  /** Flush buffer sizes (tests); default FLUSH_GROUP_BYTES / FLUSH_READ_CHUNK_BYTES from the kept pair. */
  groupBytes?: number;
  readChunkBytes?: number;
}

interface FlushBuffers {
  readonly group: Buffer;
  readonly chunk: Buffer;
}

/** The flush buffers this thread keeps between flushes (see the module comment). */
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
  const bufs = custom
    ? { group: Buffer.allocUnsafe(opts.groupBytes ?? FLUSH_GROUP_BYTES), chunk: Buffer.allocUnsafe(opts.readChunkBytes ?? FLUSH_READ_CHUNK_BYTES) }
    : flushBufferPool.acquire();
  try {
    await new FrozenFlush(snap, writer, bufs).run(opts.signal);
    return await writer.finish();
  } catch (e) {
    await writer.abort();
    throw e;
  } finally {
    if (!custom) flushBufferPool.release(bufs);
  }
}

/** One flush's state: the snapshot, the writer and the buffers. */
class FrozenFlush {
  private readonly exactLsn: boolean;
  private readonly startNum: number;

  constructor(
    private readonly s: FrozenLayerSnapshot,
    private readonly writer: DeltaLayerWriter,
    private readonly bufs: FlushBuffers,
  ) {
    this.exactLsn = s.endLsn <= BigInt(Number.MAX_SAFE_INTEGER);
    this.startNum = Number(s.startLsn);
  }

  async run(signal: AbortSignal | undefined): Promise<void> {
    const s = this.s;
    // Slots in key order; per slot its value bytes (the group planning below sums them).
    const nslots = s.slotKeys.length;
    const order = new Int32Array(nslots);
    for (let i = 0; i < nslots; i++) order[i] = i;
    const keys = s.slotKeys;
    order.sort((a, b) => (keys[a]! < keys[b]! ? -1 : 1));
    const slotBytes = new Float64Array(nslots);
    const slotRows = new Int32Array(nslots);
    for (let sl = 0; sl < nslots; sl++) {
      let sum = 0;
      let n = 0;
      for (let row = s.slotHead[sl]!; row >= 0; row = s.rowPrev[row]!) {
        sum += s.rowLen[row]!;
        n++;
      }
      slotBytes[sl] = sum;
      slotRows[sl] = n;
    }
    const rowSlot = new Int32Array(s.entryCount);
    const rowGroup = new Int32Array(s.entryCount);
    let group = 0;
    let k = 0;
    while (k < nslots) {
      if (signal?.aborted === true) {
        throw new StrataError("cancelled", `Flush of in-memory layer at ${formatLsn(s.startLsn)} cancelled`, { cause: signal.reason });
      }
      // The group: slots order[k, end) whose values fit the group buffer (at least one key).
      let end = k;
      let total = 0;
      let count = 0;
      while (end < nslots) {
        const sl = order[end]!;
        if (end > k && total + slotBytes[sl]! > this.bufs.group.length) break;
        total += slotBytes[sl]!;
        count += slotRows[sl]!;
        end++;
      }
      if (total > this.bufs.group.length) await this.writeKeyValueByValue(order[k]!, slotRows[order[k]!]!);
      else await this.writeGroup(order, k, end, count, slotRows, rowSlot, rowGroup, ++group);
      k = end;
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
   * Reads the values of the slots order[from, to) (`count` rows) in file
   * order into the group buffer, then writes them in key order. `rowSlot`
   * (one element per row of the layer, reused across groups) maps a row to
   * its place in the group buffer; `rowGroup` (likewise) marks the rows of
   * group number `groupNo`.
   */
  private async writeGroup(
    order: Int32Array, from: number, to: number, count: number, slotRows: Int32Array, rowSlot: Int32Array, rowGroup: Int32Array, groupNo: number,
  ): Promise<void> {
    const s = this.s;
    const { chunk } = this.bufs;
    const groupBuf = this.bufs.group;
    const group = new Uint8Array(groupBuf.buffer, groupBuf.byteOffset, groupBuf.length);
    const chunkU8 = new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length);
    // Rows in key order (oldest first per key), each given its place in the group buffer.
    const rows = new Int32Array(count);
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
    const byFile = new Int32Array(count);
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
