/**
 * Delta layer files: every version of the keys in a key range whose LSN lies
 * in an LSN range, sorted by (key, LSN).
 *
 * A delta layer is what a frozen in-memory layer becomes when flushed (level
 * 0: all keys, one LSN range), and what compaction produces when it re-cuts
 * level-0 deltas by key range (level 1). Its entries are (key, LSN, value)
 * where the value is an encoded `Value` (value.ts): usually a WAL record, an
 * image when the record carried a full-page image.
 *
 * Byte layout, checksums and crash safety are those of layer_file.ts (entry
 * key = 18-byte key + 8-byte big-endian LSN). The reader answers the one
 * query GetPage needs — the versions of one key in an LSN range, newest first
 * — with a single B-tree descent plus a short forward scan, and iterates
 * entries in order for compaction and backup.
 */
import { StrataError } from "../../lib/errors.js";
import { formatLsn, lsnMax, lsnMin, type Lsn } from "../../lib/lsn.js";
import { formatKey, KEY_SIZE_BYTES, type Key } from "../key.js";
import type { IndexPageCache } from "./page_cache.js";
import { formatLayerFileName, type LayerDesc } from "./layer_name.js";
import {
  deltaEntryKey, LayerFileReader, LayerFileWriter, OpenedLayerFile, readKey, writeKey, type DeltaVersionBatch, type LayerFileSummary, type LeafEntry, type ReadWindow,
  type ScanOptions,
} from "./layer_file.js";
import { formatKeyRange, formatLsnRange, keyRangeContains, lsnRangeContains, type KeyRange, type LsnRange } from "./range.js";
import { decodeValue, encodeValue, isBase, type GetValuesOptions, type Value, type ValueEntry } from "./value.js";

export interface DeltaLayerWriterOptions {
  dir: string;
  keyRange: KeyRange;
  lsnRange: LsnRange;
  generation?: number;
  indexPageSizeBytes?: number;
}

export interface WrittenLayer extends LayerFileSummary {
  readonly desc: LayerDesc;
}

/** Streams (key, LSN, value) entries, sorted by (key, LSN), into a new delta layer file. */
export class DeltaLayerWriter {
  /** The entry key being written: 18-byte key then 8-byte LSN (deltaEntryKey's layout). */
  private readonly entryKey = Buffer.allocUnsafe(26);
  /** The key whose bytes entryKey holds, if any. */
  private lastKey: Key | undefined;
  /** The LSN range as numbers (putEncodedAtNumber); the end is clamped to 2^53, past which no exact number lies. */
  private readonly lsnStartNum: number;
  private readonly lsnEndNum: number;

  private constructor(
    private readonly file: LayerFileWriter,
    readonly desc: LayerDesc,
  ) {
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    this.lsnStartNum = desc.lsnRange.start > max ? Number.MAX_SAFE_INTEGER + 1 : Number(desc.lsnRange.start);
    this.lsnEndNum = desc.lsnRange.end > max ? Number.MAX_SAFE_INTEGER + 1 : Number(desc.lsnRange.end);
  }

  static async create(opts: DeltaLayerWriterOptions): Promise<DeltaLayerWriter> {
    const desc: LayerDesc = {
      kind: "delta",
      keyRange: opts.keyRange,
      lsnRange: opts.lsnRange,
      ...(opts.generation === undefined ? {} : { generation: opts.generation }),
    };
    const name = formatLayerFileName(desc); // validates the ranges
    const file = await LayerFileWriter.create({
      dir: opts.dir, name, format: "delta", keyRange: opts.keyRange, lsnRange: opts.lsnRange,
      ...(opts.indexPageSizeBytes === undefined ? {} : { indexPageSizeBytes: opts.indexPageSizeBytes }),
    });
    return new DeltaLayerWriter(file, desc);
  }

  get entries(): number {
    return this.file.entries;
  }

  get bytesWritten(): number {
    return this.file.bytesWritten;
  }

  async put(key: Key, lsn: Lsn, value: Value): Promise<void> {
    await this.putEncoded(key, lsn, encodeValue(value));
  }

  /**
   * Appends an already-encoded value (value.ts encoding), e.g. copied from
   * another layer. Returns a promise only when the file writer must write
   * (see LayerFileWriter.add); await it before the next put. The key's 18
   * bytes are reused while consecutive puts name the same key (a flush puts
   * every version of a key in a row).
   */
  putEncoded(key: Key, lsn: Lsn, encoded: Uint8Array): Promise<void> | undefined {
    if (key !== this.lastKey) {
      if (!keyRangeContains(this.desc.keyRange, key)) {
        throw new StrataError("invalid_argument", `Delta layer: key ${formatKey(key)} outside ${formatKeyRange(this.desc.keyRange)}`);
      }
      writeKey(this.entryKey, 0, key);
      this.lastKey = key;
    }
    if (!lsnRangeContains(this.desc.lsnRange, lsn)) {
      throw new StrataError("invalid_argument", `Delta layer: LSN ${formatLsn(lsn)} outside ${formatLsnRange(this.desc.lsnRange)}`);
    }
    this.entryKey.writeBigUInt64BE(lsn, KEY_SIZE_BYTES);
    return this.file.add(this.entryKey, encoded);
  }

  /**
   * putEncoded with the LSN as a JavaScript number (an exact integer below
   * 2^53, which every real LSN is): a flush puts every version this way and
   * spares a bigint per entry. Same checks and result as putEncoded.
   */
  putEncodedAtNumber(key: Key, lsnNum: number, encoded: Uint8Array): Promise<void> | undefined {
    if (key !== this.lastKey) {
      if (!keyRangeContains(this.desc.keyRange, key)) {
        throw new StrataError("invalid_argument", `Delta layer: key ${formatKey(key)} outside ${formatKeyRange(this.desc.keyRange)}`);
      }
      writeKey(this.entryKey, 0, key);
      this.lastKey = key;
    }
    if (!(Number.isSafeInteger(lsnNum) && lsnNum >= this.lsnStartNum && lsnNum < this.lsnEndNum)) {
      // (exact LSN for the message: the number may be a non-integer here)
      throw new StrataError("invalid_argument", `Delta layer: LSN ${String(lsnNum)} outside ${formatLsnRange(this.desc.lsnRange)}`);
    }
    const hi = Math.floor(lsnNum / 0x1_0000_0000);
    this.entryKey.writeUInt32BE(hi, KEY_SIZE_BYTES);
    this.entryKey.writeUInt32BE(lsnNum - hi * 0x1_0000_0000, KEY_SIZE_BYTES + 4);
    return this.file.add(this.entryKey, encoded);
  }

  /**
   * The versions [from, to) of one key in one call (`b`: LSNs as exact
   * numbers, strictly ascending; values as spans of one buffer): the
   * flush's path, writing the same file as putEncodedAtNumber per version
   * (LayerFileWriter.addDeltaVersions). Returns a promise only when the file
   * writer must write; await it before the next put.
   */
  putVersions(key: Key, b: DeltaVersionBatch, from: number, to: number): Promise<void> | undefined {
    if (key !== this.lastKey) {
      if (!keyRangeContains(this.desc.keyRange, key)) {
        throw new StrataError("invalid_argument", `Delta layer: key ${formatKey(key)} outside ${formatKeyRange(this.desc.keyRange)}`);
      }
      writeKey(this.entryKey, 0, key);
      this.lastKey = key;
    }
    const lsns = b.lsn;
    for (let i = from; i < to; i++) {
      const l = lsns[i]!;
      if (!(l >= this.lsnStartNum && l < this.lsnEndNum)) {
        throw new StrataError("invalid_argument", `Delta layer: LSN ${String(l)} outside ${formatLsnRange(this.desc.lsnRange)}`);
      }
    }
    return this.file.addDeltaVersions(this.entryKey, b, from, to);
  }

  async finish(): Promise<WrittenLayer> {
    const summary = await this.file.finish();
    return { ...summary, desc: this.desc };
  }

  async abort(): Promise<void> {
    await this.file.abort();
  }
}

export interface EncodedEntry {
  readonly key: Key;
  readonly lsn: Lsn;
  /** Verified value bytes, value.ts encoding. */
  readonly encoded: Uint8Array;
}

/** Reads a finished delta layer file. */
export class DeltaLayerReader extends OpenedLayerFile {
  private constructor(file: LayerFileReader) {
    super(file);
  }

  static async open(path: string, opts: { cache?: IndexPageCache } = {}): Promise<DeltaLayerReader> {
    return new DeltaLayerReader(await LayerFileReader.open(path, "delta", opts));
  }

  private decode(e: LeafEntry, bytes: Uint8Array): Value {
    return decodeValue(bytes, `layer file ${this.file.path} value at offset ${e.valueOffset}`);
  }

  /** The versions of `key` with LSN in `lsnRange`, newest first. */
  async getValues(key: Key, lsnRange: LsnRange, opts: GetValuesOptions = {}): Promise<ValueEntry[]> {
    const start = lsnMax(lsnRange.start, this.desc.lsnRange.start);
    const end = lsnMin(lsnRange.end, this.desc.lsnRange.end);
    if (!keyRangeContains(this.desc.keyRange, key) || start >= end) return [];
    const target = deltaEntryKey(key, start);
    const cursor = await this.file.seek(target);
    const found: Array<{ e: LeafEntry; lsn: Lsn }> = [];
    while (cursor.valid) {
      const e = cursor.entry();
      if (e.entryKey.compare(target, 0, 18, 0, 18) !== 0) break;
      const l = e.entryKey.readBigUInt64BE(18) as Lsn;
      if (l >= end) break;
      found.push({ e, lsn: l });
      await cursor.next();
    }
    // Oldest first is file order: usually one coalesced read; verified newest first.
    const valueOf = await this.file.fetchValues(found.map(({ e }) => e));
    const out: ValueEntry[] = [];
    for (let i = found.length - 1; i >= 0; i--) {
      const { e, lsn } = found[i]!;
      const value = this.decode(e, valueOf(i));
      out.push({ key, lsn, value });
      if (opts.stopAtBase === true && isBase(value)) break;
    }
    return out;
  }

  /**
   * Visits every entry with a key in `keyRange` and an LSN in `lsnRange`, in
   * (key, LSN) order, synchronously (LayerFileReader.scanSync): the visitor
   * gets the leaf page and slot of the entry key (key then LSN), the LSN, and
   * the verified encoded value (value.ts), a view valid as long as the caller
   * keeps it. An entry outside the layer's own LSN range is corrupt_data.
   * `opts` sizes the read-ahead and may recycle its buffers (layer_file.ts
   * ScanOptions). Returns the entries visited.
   */
  scanEncodedSync(keyRange: KeyRange, lsnRange: LsnRange, visit: (page: Buffer, slot: number, lsn: Lsn, encoded: Uint8Array) => void, opts: ScanOptions = {}): number {
    const from = keyRange.start < this.desc.keyRange.start ? this.desc.keyRange.start : keyRange.start;
    const to = keyRange.end > this.desc.keyRange.end ? this.desc.keyRange.end : keyRange.end;
    if (from >= to) return 0;
    const own = this.desc.lsnRange;
    const lo = lsnRange.start;
    const hi = lsnRange.end;
    // The LSN is checked from the index entry: versions outside `lsnRange` (most of a
    // long-range delta when the walk's floor is above them) are never read.
    const accept = (page: Buffer, slot: number): boolean => {
      const l = page.readBigUInt64BE(slot + KEY_SIZE_BYTES);
      if (l < own.start || l >= own.end) {
        throw new StrataError("corrupt_data", `Layer file ${this.file.path}: entry (${formatKey(readKey(page, slot))}, ${formatLsn(l as Lsn)}) outside the layer's LSN range ${formatLsnRange(own)}`);
      }
      return l >= lo && l < hi;
    };
    return this.file.scanSync(deltaEntryKey(from, 0n as Lsn), deltaEntryKey(to, 0n as Lsn), (page, slot, encoded) => {
      visit(page, slot, page.readBigUInt64BE(slot + KEY_SIZE_BYTES) as Lsn, encoded);
    }, { ...opts, accept });
  }

  /** Every entry with a key in `keyRange` (default: all), in (key, LSN) order, values verified but not decoded. */
  async *iterateEncoded(keyRange?: KeyRange): AsyncGenerator<EncodedEntry> {
    const from = keyRange === undefined || keyRange.start < this.desc.keyRange.start ? this.desc.keyRange.start : keyRange.start;
    const to = keyRange === undefined || keyRange.end > this.desc.keyRange.end ? this.desc.keyRange.end : keyRange.end;
    if (from >= to) return;
    const cursor = await this.file.seek(deltaEntryKey(from, 0n as Lsn));
    const window: ReadWindow = { buf: undefined, start: 0 };
    while (cursor.valid) {
      const e = cursor.entry();
      const key = readKey(e.entryKey, 0);
      if (key >= to) return;
      const l = e.entryKey.readBigUInt64BE(18) as Lsn;
      if (!keyRangeContains(this.desc.keyRange, key) || !lsnRangeContains(this.desc.lsnRange, l)) {
        throw new StrataError("corrupt_data", `Layer file ${this.file.path}: entry (${formatKey(key)}, ${formatLsn(l)}) outside the layer's ranges (at offset ${e.valueOffset})`);
      }
      const encoded = await this.file.readValueSequential(e, window);
      yield { key, lsn: l, encoded };
      await cursor.next();
    }
  }

  /** Every entry with a key in `keyRange` (default: all), in (key, LSN) order. */
  async *iterate(keyRange?: KeyRange): AsyncGenerator<ValueEntry> {
    for await (const { key, lsn, encoded } of this.iterateEncoded(keyRange)) {
      yield { key, lsn, value: decodeValue(encoded, `layer file ${this.file.path} entry (${formatKey(key)}, ${formatLsn(lsn)})`) };
    }
  }
}
