/**
 * The on-disk container shared by delta and image layer files: header,
 * checksummed value records, and a B-tree index of fixed-size pages.
 *
 * Delta and image layers differ only in what an index entry's key is (key +
 * LSN for deltas, key alone for images) and what the value bytes mean; the
 * byte layout, the checksums, the crash-safe write and the index search are
 * the same and live here once. docs/layer-format.md is the byte-level
 * reference; in short:
 *
 *   [0, 128)        header (magic, version, ranges, counts, root offset, CRC)
 *   [128, ...)      value records  (value bytes, CRC32C)    interleaved with
 *                   leaf index pages, each written as soon as it fills
 *   [..., size)     internal index pages, bottom level first, root last
 *
 * Why leaves are interleaved with values: the writer streams entries sorted
 * by entry key and must not hold the index in memory (a 256 MiB delta of
 * 100-byte WAL records has ~2.5M entries). Writing each leaf as it fills
 * bounds the writer's memory to one leaf page plus the first key of every
 * leaf (~1/200 of the index), from which the internal levels are built at the
 * end. Readers follow offsets (point lookups, and range scans that step
 * from leaf to leaf through the internal pages), so the placement is free.
 *
 * Integrity: every byte of a finished file is covered by a checksum. The
 * header carries a CRC32C of its first 124 bytes; each index page carries a
 * CRC32C of its contents chained from its own file offset (so a page read
 * from the wrong place fails too); each value record carries a CRC32C of its
 * bytes chained from its entry key (so an index entry pointing at another
 * entry's value fails too). Readers verify before use and report
 * StrataError("corrupt_data") naming the file and offset; nothing unverified
 * is returned or cached. The file size is recorded in the header, so a
 * truncated file is rejected at open.
 *
 * Crash safety: a writer writes `<name>.<random>.tmp` in the target
 * directory, fsyncs it (datasyncs started in the background while writing
 * leave the final fsync little to do), renames it to `<name>` and fsyncs the
 * directory. A
 * crash leaves either no file, a complete file, or a `.tmp` leftover that the
 * timeline deletes at load. A layer file is never modified after the rename.
 *
 * Limits are named constants below; offsets are stored as 48-bit integers
 * (256 TiB), well inside JavaScript's exact integer range.
 */
import { readSync } from "node:fs";
import { open, rename, unlink, type FileHandle } from "node:fs/promises";
import { basename, join } from "node:path";
import { assert, StrataError } from "../../lib/errors.js";
import { crc32c, crc32cRange } from "../../formats/crc32c.js";
import { lsn, type Lsn } from "../../lib/lsn.js";
import type { Key } from "../key.js";
import { copyWithCrc32c, crc32cU64 } from "./crc_copy.js";
import { allocateReaderId, type IndexPageCache, sharedIndexPageCache } from "./page_cache.js";
import { decodeKeyRangeEnd, encodeKeyRangeEnd, formatKeyRange, formatLsnRange, type KeyRange, type LsnRange } from "./range.js";
import { tempFileName, tryParseLayerFileName, type LayerDesc } from "./layer_name.js";

export type LayerFileFormat = "delta" | "image";

export const LAYER_FORMAT_VERSION = 1;
export const HEADER_SIZE_BYTES = 128;
/** Bytes of the header covered by its CRC (the CRC sits in the last 4). */
const HEADER_CRC_OFFSET = 124;
/** Index page size written by default: 8 KiB, one typical filesystem block multiple. */
export const DEFAULT_INDEX_PAGE_SIZE_BYTES = 8192;
/** Smallest page accepted: still fits 6 delta entries, so internal fan-out >= 2 holds. Tests use it to get deep trees. */
export const MIN_INDEX_PAGE_SIZE_BYTES = 256;
/** Largest page accepted: counts are 16-bit and one page must stay a cheap read. */
export const MAX_INDEX_PAGE_SIZE_BYTES = 65536;
/** Depth bound: even at the minimum page size (fan-out 7) 16 levels address 7^15 leaves. */
export const MAX_INDEX_DEPTH = 16;
/** Largest value: PostgreSQL's XLogRecordMaxSize is just under 1 GiB; nothing we store is larger. */
export const MAX_VALUE_BYTES = 1024 * 1024 * 1024;
/** Trailing CRC32C of every value record. */
export const VALUE_CRC_BYTES = 4;
/** Values of one key closer together than this are fetched with one read (most keys: a few KiB). */
const COALESCED_READ_MAX_BYTES = 128 * 1024;
/** Read-ahead of sequential scans: large reads, small enough to keep many scans in flight. */
const READ_AHEAD_BYTES = 1024 * 1024;
/** Writer output buffer: large sequential writes without holding much memory. */
const WRITE_BUFFER_BYTES = 1024 * 1024;
/**
 * A writer starts a datasync of what it has written whenever this much more
 * is written (one at a time, in the background), so the fsync that makes the
 * finished file durable finds little left to write: the disk works while the
 * writer still computes, instead of after.
 */
const BACKGROUND_SYNC_BYTES = 8 * 1024 * 1024;
/**
 * Output buffers kept for later writers. Fresh memory costs a page fault per
 * 4 KiB on first touch (ms per MiB on a VM whose host reclaims free pages),
 * which for a writer of a small file would be most of its cost.
 */
const KEPT_WRITE_BUFFERS = 4;
const keptWriteBuffers: Buffer[] = [];

/** Bytes of a delta entry key's LSN (after the 18-byte key). */
const DELTA_LSN_BYTES = 8;

/**
 * The versions of one key handed to `LayerFileWriter.addDeltaVersions` (a
 * flush's batch): version i has LSN `lsn[i]` (an exact integer) and value
 * `src[at[i], at[i] + len[i])`. Arrays are indexed by version; the caller
 * reuses them between calls.
 */
export interface DeltaVersionBatch {
  readonly src: Uint8Array;
  readonly lsn: Float64Array;
  readonly at: Int32Array;
  readonly len: Int32Array;
}

/** Copies an entry key (tens of bytes): a loop beats Buffer.copy's call overhead at this size. */
function copySmall(src: Uint8Array, dst: Uint8Array, at: number): void {
  for (let i = 0; i < src.length; i++) dst[at + i] = src[i]!;
}

/**
 * Writes a leaf entry's value location at `at`: the 48-bit offset, then
 * the 32-bit length, big-endian (writeUIntBE's bytes, without its argument
 * checks: this runs once per value of every flush and compaction).
 */
function putValueLocation(leaf: Uint8Array, at: number, offset: number, len: number): void {
  const hi = Math.floor(offset / 0x1_0000_0000);
  leaf[at] = (hi >>> 8) & 0xff;
  leaf[at + 1] = hi & 0xff;
  leaf[at + 2] = (offset >>> 24) & 0xff;
  leaf[at + 3] = (offset >>> 16) & 0xff;
  leaf[at + 4] = (offset >>> 8) & 0xff;
  leaf[at + 5] = offset & 0xff;
  leaf[at + 6] = (len >>> 24) & 0xff;
  leaf[at + 7] = (len >>> 16) & 0xff;
  leaf[at + 8] = (len >>> 8) & 0xff;
  leaf[at + 9] = len & 0xff;
}

function takeWriteBuffer(): Buffer {
  return keptWriteBuffers.pop() ?? Buffer.allocUnsafeSlow(WRITE_BUFFER_BYTES);
}

function keepWriteBuffer(b: Buffer | undefined): void {
  if (b !== undefined && keptWriteBuffers.length < KEPT_WRITE_BUFFERS && !keptWriteBuffers.includes(b)) keptWriteBuffers.push(b);
}

const PAGE_HEADER_BYTES = 8;
const PAGE_CRC_BYTES = 4;
const PAGE_KIND_LEAF = 1;
const PAGE_KIND_INTERNAL = 2;
/** 48-bit file offsets. */
const OFFSET_BYTES = 6;
const LENGTH_BYTES = 4;
const MAX_OFFSET = 2 ** 48 - 1;

const MAGIC: Record<LayerFileFormat, Buffer> = { delta: Buffer.from("STRDELTA", "ascii"), image: Buffer.from("STRIMAGE", "ascii") };
/** Entry key width: delta = 18-byte key + 8-byte LSN; image = key. */
export const ENTRY_KEY_BYTES: Record<LayerFileFormat, number> = { delta: 26, image: 18 };
const KEY_BYTES_OF_DELTA = 26;

export interface LayerHeader {
  readonly format: LayerFileFormat;
  readonly indexPageSizeBytes: number;
  readonly keyRange: KeyRange;
  readonly lsnRange: LsnRange;
  readonly entryCount: number;
  readonly indexRootOffset: number;
  /** Levels in the index, leaves included (1 = the root is a leaf). */
  readonly indexDepth: number;
  /** Sum of value lengths (without their CRCs). */
  readonly valueBytes: number;
  readonly fileSizeBytes: number;
}

export function leafCapacity(pageSize: number, entryKeyBytes: number): number {
  return Math.floor((pageSize - PAGE_HEADER_BYTES - PAGE_CRC_BYTES) / (entryKeyBytes + OFFSET_BYTES + LENGTH_BYTES));
}

export function internalCapacity(pageSize: number, entryKeyBytes: number): number {
  return Math.floor((pageSize - PAGE_HEADER_BYTES - PAGE_CRC_BYTES) / (entryKeyBytes + OFFSET_BYTES));
}

export function checkIndexPageSize(size: number): void {
  if (!Number.isInteger(size) || size < MIN_INDEX_PAGE_SIZE_BYTES || size > MAX_INDEX_PAGE_SIZE_BYTES || (size & (size - 1)) !== 0) {
    throw new StrataError(
      "invalid_argument",
      `Index page size ${size} must be a power of two in [${MIN_INDEX_PAGE_SIZE_BYTES}, ${MAX_INDEX_PAGE_SIZE_BYTES}]`,
    );
  }
}

/**
 * Writes an 18-byte key big-endian at `off`: 2 + 8 + 8 bytes through 64-bit
 * writes (about twice as fast as formatting the key as hex and parsing it
 * back, and it runs once per value written to a layer).
 */
export function writeKey(buf: Buffer, off: number, k: Key): void {
  buf.writeUInt16BE(Number(k >> 128n), off);
  buf.writeBigUInt64BE(BigInt.asUintN(64, k >> 64n), off + 2);
  buf.writeBigUInt64BE(BigInt.asUintN(64, k), off + 10);
}

export function readKey(buf: Buffer, off: number): Key {
  return BigInt("0x" + buf.toString("hex", off, off + 18)) as Key;
}

/** CRC seed of an index page: the CRC32C of its file offset (8 bytes BE), so misplaced pages fail. */
function pageSeed(offset: number): number {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(BigInt(offset));
  return crc32c(b);
}

function sealPage(page: Buffer, kind: number, level: number, count: number, offset: number): void {
  page[0] = kind;
  page[1] = level;
  page.writeUInt16BE(count, 2);
  page.writeUInt32BE(0, 4);
  const end = page.length - PAGE_CRC_BYTES;
  page.writeUInt32BE(crc32c(page.subarray(0, end), pageSeed(offset)), end);
}

function encodeHeader(h: LayerHeader): Buffer {
  const b = Buffer.alloc(HEADER_SIZE_BYTES);
  MAGIC[h.format].copy(b, 0);
  b.writeUInt16BE(LAYER_FORMAT_VERSION, 8);
  b.writeUInt16BE(ENTRY_KEY_BYTES[h.format], 10);
  b.writeUInt32BE(h.indexPageSizeBytes, 12);
  writeKey(b, 16, h.keyRange.start);
  writeKey(b, 34, encodeKeyRangeEnd(h.keyRange.end));
  b.writeBigUInt64BE(h.lsnRange.start, 52);
  b.writeBigUInt64BE(h.lsnRange.end, 60);
  b.writeBigUInt64BE(BigInt(h.entryCount), 68);
  b.writeBigUInt64BE(BigInt(h.indexRootOffset), 76);
  b.writeUInt16BE(h.indexDepth, 84);
  b.writeBigUInt64BE(BigInt(h.valueBytes), 88);
  b.writeBigUInt64BE(BigInt(h.fileSizeBytes), 96);
  b.writeUInt32BE(crc32c(b.subarray(0, HEADER_CRC_OFFSET)), HEADER_CRC_OFFSET);
  return b;
}

function corrupt(path: string, offset: number, what: string): StrataError {
  return new StrataError("corrupt_data", `Layer file ${path}: ${what} (at offset ${offset})`);
}

/** Parses and validates a header; `actualSize` is the file's size on disk. */
export function decodeHeader(b: Buffer, path: string, actualSize: number, expected: LayerFileFormat): LayerHeader {
  if (actualSize < HEADER_SIZE_BYTES || b.length < HEADER_SIZE_BYTES) {
    throw corrupt(path, 0, `file is ${actualSize} bytes, shorter than the ${HEADER_SIZE_BYTES}-byte header`);
  }
  const format = (Object.keys(MAGIC) as LayerFileFormat[]).find((f) => MAGIC[f].equals(b.subarray(0, 8)));
  if (format === undefined) throw corrupt(path, 0, `bad magic ${JSON.stringify(b.toString("latin1", 0, 8))}`);
  const stored = b.readUInt32BE(HEADER_CRC_OFFSET);
  const computed = crc32c(b.subarray(0, HEADER_CRC_OFFSET));
  if (stored !== computed) {
    throw corrupt(path, HEADER_CRC_OFFSET, `header CRC32C mismatch: stored 0x${stored.toString(16)}, computed 0x${computed.toString(16)}`);
  }
  if (format !== expected) throw corrupt(path, 0, `is a ${format} layer, expected ${expected}`);
  const version = b.readUInt16BE(8);
  if (version !== LAYER_FORMAT_VERSION) {
    throw new StrataError("unsupported", `Layer file ${path}: format version ${version}, this build reads version ${LAYER_FORMAT_VERSION}`);
  }
  const keyBytes = b.readUInt16BE(10);
  if (keyBytes !== ENTRY_KEY_BYTES[format]) throw corrupt(path, 10, `entry key width ${keyBytes}, expected ${ENTRY_KEY_BYTES[format]}`);
  const pageSize = b.readUInt32BE(12);
  try {
    checkIndexPageSize(pageSize);
  } catch {
    throw corrupt(path, 12, `invalid index page size ${pageSize}`);
  }
  const keyRange = { start: readKey(b, 16), end: decodeKeyRangeEnd(readKey(b, 34)) };
  if (!(keyRange.start < keyRange.end)) throw corrupt(path, 16, `empty key range ${formatKeyRange(keyRange)}`);
  const lsnRange = { start: lsn(b.readBigUInt64BE(52)), end: lsn(b.readBigUInt64BE(60)) };
  if (!(lsnRange.start < lsnRange.end)) throw corrupt(path, 52, `empty LSN range ${formatLsnRange(lsnRange)}`);
  if (format === "image" && lsnRange.end !== lsnRange.start + 1n) {
    throw corrupt(path, 52, `image layer LSN range ${formatLsnRange(lsnRange)} is not [lsn, lsn+1)`);
  }
  const u53 = (off: number, what: string): number => {
    const v = b.readBigUInt64BE(off);
    if (v > BigInt(MAX_OFFSET)) throw corrupt(path, off, `${what} ${v} out of range`);
    return Number(v);
  };
  const entryCount = u53(68, "entry count");
  const indexRootOffset = u53(76, "index root offset");
  const indexDepth = b.readUInt16BE(84);
  const valueBytes = u53(88, "value byte count");
  const fileSizeBytes = u53(96, "file size");
  if (b.readUInt16BE(86) !== 0 || !b.subarray(104, HEADER_CRC_OFFSET).every((x) => x === 0)) {
    throw corrupt(path, 86, "reserved header bytes are not zero");
  }
  if (fileSizeBytes !== actualSize) {
    throw corrupt(path, 96, `file is ${actualSize} bytes but its header records ${fileSizeBytes} (truncated or extended)`);
  }
  if (indexDepth < 1 || indexDepth > MAX_INDEX_DEPTH) throw corrupt(path, 84, `index depth ${indexDepth} not in [1, ${MAX_INDEX_DEPTH}]`);
  if (indexRootOffset < HEADER_SIZE_BYTES || indexRootOffset + pageSize > fileSizeBytes) {
    throw corrupt(path, 76, `index root offset ${indexRootOffset} outside the file`);
  }
  return { format, indexPageSizeBytes: pageSize, keyRange, lsnRange, entryCount, indexRootOffset, indexDepth, valueBytes, fileSizeBytes };
}

export interface LayerFileWriterOptions {
  dir: string;
  /** Final file name (from formatLayerFileName). */
  name: string;
  format: LayerFileFormat;
  keyRange: KeyRange;
  lsnRange: LsnRange;
  indexPageSizeBytes?: number;
}

export interface LayerFileSummary {
  readonly path: string;
  readonly name: string;
  readonly header: LayerHeader;
}

async function writeFully(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    assert(bytesWritten > 0, "write made no progress");
    done += bytesWritten;
  }
}

/** fsync a directory so a rename inside it is durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const d = await open(dir, "r");
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/**
 * Streams entries (sorted strictly by entry key) into a new layer file.
 * Memory: one output buffer, one leaf page, and the first key of each leaf.
 *
 * `add` is the hot path of compaction (one call per value): it copies the
 * value and its CRC straight into the output buffer and the entry into the
 * leaf page, allocating nothing, and returns a promise only when a buffer
 * must be written out (once per WRITE_BUFFER_BYTES, or per value larger than
 * the room left), so callers await only then. `addDeltaVersions` is the
 * flush's: all versions of one delta key per call, the same bytes as `add`
 * per version, with the per-key work (order check, the key's part of the
 * entry-key CRC) done once per key.
 *
 * Output is double-buffered: a full buffer is written by the thread pool
 * while the writer fills the other one (positioned writes, so completion
 * order does not matter; a buffer is reused only after its write finished,
 * and a failed write fails the next flush or `finish`). Every
 * BACKGROUND_SYNC_BYTES a datasync starts in the background.
 */
export class LayerFileWriter {
  private readonly keyBytes: number;
  private readonly pageSize: number;
  private readonly leafCap: number;
  private readonly leafStride: number;
  private out = takeWriteBuffer();
  /** The other output buffer (being written while `inflight` is pending), once there is one. */
  private other: Buffer | undefined;
  /** The write of `other`; failures are kept for the next await (the promise is marked handled). */
  private inflight: Promise<void> | undefined;
  /** A background datasync in progress, and the file size it was started at. */
  private syncing: Promise<void> | undefined;
  private syncedTo = 0;
  private outLen = 0;
  /** File position of out[0]. */
  private outPos = HEADER_SIZE_BYTES;
  private readonly leaf: Buffer;
  private leafCount = 0;
  private leafFirstKey: Buffer | undefined;
  private readonly leaves: Array<{ firstKey: Buffer; offset: number }> = [];
  /** The previous entry key (valid when entryCount > 0), for the ordering check. */
  private readonly last: Buffer;
  private entryCount = 0;
  private valueBytes = 0;
  private state: "open" | "finished" | "aborted" = "open";

  private constructor(
    private readonly fh: FileHandle,
    private readonly tmpPath: string,
    private readonly opts: LayerFileWriterOptions,
  ) {
    this.keyBytes = ENTRY_KEY_BYTES[opts.format];
    this.pageSize = opts.indexPageSizeBytes ?? DEFAULT_INDEX_PAGE_SIZE_BYTES;
    this.leafCap = leafCapacity(this.pageSize, this.keyBytes);
    this.leafStride = this.keyBytes + OFFSET_BYTES + LENGTH_BYTES;
    this.leaf = Buffer.alloc(this.pageSize);
    this.last = Buffer.alloc(this.keyBytes);
  }

  static async create(opts: LayerFileWriterOptions): Promise<LayerFileWriter> {
    checkIndexPageSize(opts.indexPageSizeBytes ?? DEFAULT_INDEX_PAGE_SIZE_BYTES);
    const tmpPath = join(opts.dir, tempFileName(opts.name));
    let fh: FileHandle;
    try {
      fh = await open(tmpPath, "wx");
    } catch (e) {
      throw new StrataError("io_error", `Cannot create layer file ${tmpPath}: ${(e as Error).message}`, { cause: e });
    }
    return new LayerFileWriter(fh, tmpPath, opts);
  }

  get entries(): number {
    return this.entryCount;
  }

  /** Bytes written so far (an estimate of the final size, short of internal index pages). */
  get bytesWritten(): number {
    return this.outPos + this.outLen;
  }

  /**
   * Appends one entry. `entryKey` must sort strictly after the previous one;
   * it is copied, so callers may reuse their buffer. Returns undefined when
   * the entry was taken synchronously, else a promise to await before the
   * next call (an output buffer or leaf page is being written).
   */
  add(entryKey: Buffer, value: Uint8Array): Promise<void> | undefined {
    if (this.state !== "open") assert(false, `layer writer for ${this.opts.name} is ${this.state}`);
    if (entryKey.length !== this.keyBytes) assert(false, `entry key of ${entryKey.length} bytes, expected ${this.keyBytes}`);
    if (this.entryCount > 0 && this.last.compare(entryKey) >= 0) {
      throw new StrataError(
        "invalid_argument",
        `Layer ${this.opts.name}: entry ${entryKey.toString("hex")} does not sort after ${this.last.toString("hex")}`,
      );
    }
    const len = value.length;
    if (len > MAX_VALUE_BYTES) {
      throw new StrataError("invalid_argument", `Layer ${this.opts.name}: value of ${len} bytes exceeds ${MAX_VALUE_BYTES}`);
    }
    copySmall(entryKey, this.last, 0);
    const offset = this.outPos + this.outLen;
    if (offset + len + VALUE_CRC_BYTES > MAX_OFFSET) assert(false, "layer file exceeds 48-bit offsets");
    const crc = crc32c(value, crc32c(entryKey));
    this.entryCount++;
    this.valueBytes += len;
    if (this.outLen + len + VALUE_CRC_BYTES <= this.out.length) {
      this.out.set(value, this.outLen);
      this.out.writeUInt32BE(crc, this.outLen + len);
      this.outLen += len + VALUE_CRC_BYTES;
      return this.addLeafEntry(entryKey, offset, len);
    }
    return this.addSlow(entryKey, value, crc, offset);
  }

  /**
   * Appends versions [from, to) of one key of a delta layer (`key` holds the
   * key in its first 18 bytes; `b` describes the versions, LSNs strictly
   * ascending and after the previous entry). The file gets exactly the bytes
   * `add` would write for each version in turn; this is the flush's path,
   * one call per key instead of one per version: the key's share of each
   * entry key's CRC is computed once, the LSN goes straight into the leaf
   * page, and nothing is allocated per version. Returns a promise only when
   * an output buffer must be written (await it before the next call).
   */
  addDeltaVersions(key: Uint8Array, b: DeltaVersionBatch, from: number, to: number): Promise<void> | undefined {
    if (this.state !== "open") assert(false, `layer writer for ${this.opts.name} is ${this.state}`);
    if (this.keyBytes !== KEY_BYTES_OF_DELTA) assert(false, "addDeltaVersions on an image layer writer");
    if (from >= to) return undefined;
    this.checkDeltaOrder(key, b.lsn, from, to);
    const done = this.fillDeltaVersions(key, b, from, to, crc32cRange(key, 0, KEY_BYTES_OF_DELTA - DELTA_LSN_BYTES));
    return done === to ? undefined : this.addDeltaVersionsSlow(key, b, done, to);
  }

  /** addDeltaVersions' checks: the first entry sorts after the previous one, LSNs strictly ascend and are exact and in range. */
  private checkDeltaOrder(key: Uint8Array, lsns: Float64Array, from: number, to: number): void {
    const kb = KEY_BYTES_OF_DELTA - DELTA_LSN_BYTES;
    let prev = -1;
    for (let i = from; i < to; i++) {
      const l = lsns[i]!;
      if (!(Number.isSafeInteger(l) && l > prev)) {
        throw new StrataError("invalid_argument", `Layer ${this.opts.name}: version LSNs of one key must be exact integers in strictly ascending order, got ${l} after ${prev}`);
      }
      prev = l;
    }
    if (this.entryCount === 0) return;
    // (key, lsn[from]) must sort after `last`: byte order of the key, then the LSN.
    const last = this.last;
    let c = 0;
    for (let i = 0; i < kb && c === 0; i++) c = key[i]! - last[i]!;
    if (c === 0) {
      const hi = last.readUInt32BE(kb);
      const lastLsn = hi * 0x1_0000_0000 + last.readUInt32BE(kb + 4);
      c = lsns[from]! - lastLsn;
    }
    if (c <= 0) {
      throw new StrataError(
        "invalid_argument",
        `Layer ${this.opts.name}: entry ${Buffer.from(key.subarray(0, kb)).toString("hex")}/${lsns[from]} does not sort after ${this.last.toString("hex")}`,
      );
    }
  }

  /**
   * Writes versions from `from` on while they fit in the output buffer
   * (value, CRC and, when the entry fills its leaf, the leaf page); returns
   * the first version not written. `keyCrc` is the CRC32C of the key's 18 bytes.
   */
  private fillDeltaVersions(key: Uint8Array, b: DeltaVersionBatch, from: number, to: number, keyCrc: number): number {
    const kb = KEY_BYTES_OF_DELTA - DELTA_LSN_BYTES;
    const out = this.out;
    const outCap = out.length;
    const leaf = this.leaf;
    const stride = this.leafStride;
    const leafCap = this.leafCap;
    const pageSize = this.pageSize;
    const { src, lsn: lsns, at: ats, len: lens } = b;
    let outLen = this.outLen;
    let i = from;
    for (; i < to; i++) {
      const len = lens[i]!;
      const need = len + VALUE_CRC_BYTES + (this.leafCount + 1 === leafCap ? pageSize : 0);
      if (outLen + need > outCap) break;
      if (len > MAX_VALUE_BYTES) {
        throw new StrataError("invalid_argument", `Layer ${this.opts.name}: value of ${len} bytes exceeds ${MAX_VALUE_BYTES}`);
      }
      const offset = this.outPos + outLen;
      if (offset + len + VALUE_CRC_BYTES > MAX_OFFSET) assert(false, "layer file exceeds 48-bit offsets");
      // the leaf entry: key, LSN, 48-bit offset, 32-bit length (big-endian)
      const slot = PAGE_HEADER_BYTES + this.leafCount * stride;
      for (let j = 0; j < kb; j++) leaf[slot + j] = key[j]!;
      const l = lsns[i]!;
      const hi = Math.floor(l / 0x1_0000_0000);
      const lo = l >>> 0;
      let p = slot + kb;
      leaf[p++] = hi >>> 24;
      leaf[p++] = (hi >>> 16) & 0xff;
      leaf[p++] = (hi >>> 8) & 0xff;
      leaf[p++] = hi & 0xff;
      leaf[p++] = lo >>> 24;
      leaf[p++] = (lo >>> 16) & 0xff;
      leaf[p++] = (lo >>> 8) & 0xff;
      leaf[p++] = lo & 0xff;
      putValueLocation(leaf, p, offset, len);
      // the value and its CRC32C, chained from the entry key's (the key's part computed once), in one pass
      const a = ats[i]!;
      if (!(a >= 0 && a + len <= src.length)) assert(false, `batch value [${a}, ${a + len}) outside its ${src.length}-byte buffer`);
      const crc = copyWithCrc32c(src, a, a + len, out, outLen, crc32cU64(hi, lo, keyCrc));
      outLen += len;
      out[outLen++] = crc >>> 24;
      out[outLen++] = (crc >>> 16) & 0xff;
      out[outLen++] = (crc >>> 8) & 0xff;
      out[outLen++] = crc & 0xff;
      this.entryCount++;
      this.valueBytes += len;
      if (this.leafCount === 0) this.leafFirstKey = Buffer.from(leaf.subarray(slot, slot + KEY_BYTES_OF_DELTA));
      if (++this.leafCount === leafCap) {
        // the leaf page goes right after this value (room reserved above)
        this.outLen = outLen;
        const sync = this.flushLeaf();
        assert(sync === undefined, "a filled leaf fits the room reserved for it");
        outLen = this.outLen;
      }
    }
    this.outLen = outLen;
    if (i > from) {
      // the last entry key written, for the next call's order check
      const last = this.last;
      for (let j = 0; j < kb; j++) last[j] = key[j]!;
      const l = lsns[i - 1]!;
      const hi = Math.floor(l / 0x1_0000_0000);
      last.writeUInt32BE(hi, kb);
      last.writeUInt32BE(l - hi * 0x1_0000_0000, kb + 4);
    }
    return i;
  }

  /** addDeltaVersions after the output buffer filled: writes it out and goes on (a value too large for any buffer goes through `add`). */
  private async addDeltaVersionsSlow(key: Uint8Array, b: DeltaVersionBatch, from: number, to: number): Promise<void> {
    const keyCrc = crc32cRange(key, 0, KEY_BYTES_OF_DELTA - DELTA_LSN_BYTES);
    const entryKey = Buffer.alloc(KEY_BYTES_OF_DELTA);
    let i = from;
    while (i < to) {
      const len = b.len[i]!;
      if (len + VALUE_CRC_BYTES + this.pageSize > this.out.length) {
        for (let j = 0; j < KEY_BYTES_OF_DELTA - DELTA_LSN_BYTES; j++) entryKey[j] = key[j]!;
        const l = b.lsn[i]!;
        const hi = Math.floor(l / 0x1_0000_0000);
        entryKey.writeUInt32BE(hi, KEY_BYTES_OF_DELTA - DELTA_LSN_BYTES);
        entryKey.writeUInt32BE(l - hi * 0x1_0000_0000, KEY_BYTES_OF_DELTA - 4);
        await this.add(entryKey, b.src.subarray(b.at[i]!, b.at[i]! + len));
        i++;
        continue;
      }
      await this.flushOut();
      i = this.fillDeltaVersions(key, b, i, to, keyCrc);
    }
  }

  /** `add` for a value that does not fit in the output buffer's free room. */
  private async addSlow(entryKey: Buffer, value: Uint8Array, crc: number, offset: number): Promise<void> {
    await this.append(value);
    const crcBytes = Buffer.allocUnsafe(VALUE_CRC_BYTES);
    crcBytes.writeUInt32BE(crc);
    await this.append(crcBytes);
    await this.addLeafEntry(entryKey, offset, value.length);
  }

  /** Records the entry in the leaf page; a promise only when the full leaf must be written. */
  private addLeafEntry(entryKey: Buffer, offset: number, len: number): Promise<void> | undefined {
    const slot = PAGE_HEADER_BYTES + this.leafCount * this.leafStride;
    const leaf = this.leaf;
    copySmall(entryKey, leaf, slot);
    putValueLocation(leaf, slot + this.keyBytes, offset, len);
    if (this.leafCount === 0) this.leafFirstKey = Buffer.from(entryKey);
    this.leafCount++;
    if (this.leafCount === this.leafCap) return this.flushLeaf();
    return undefined;
  }

  /** Writes the index, header and file, then makes it durable under its final name. */
  async finish(): Promise<LayerFileSummary> {
    assert(this.state === "open", `layer writer for ${this.opts.name} is ${this.state}`);
    const finalPath = join(this.opts.dir, this.opts.name);
    try {
      if (this.leafCount > 0 || this.leaves.length === 0) await this.flushLeaf();
      const { rootOffset, depth } = await this.writeInternalLevels();
      await this.flushOut();
      await this.drain();
      const header: LayerHeader = {
        format: this.opts.format,
        indexPageSizeBytes: this.pageSize,
        keyRange: this.opts.keyRange,
        lsnRange: this.opts.lsnRange,
        entryCount: this.entryCount,
        indexRootOffset: rootOffset,
        indexDepth: depth,
        valueBytes: this.valueBytes,
        fileSizeBytes: this.outPos,
      };
      await writeFully(this.fh, encodeHeader(header), 0);
      await this.fh.sync();
      await this.fh.close();
      this.state = "finished";
      this.releaseBuffers();
      await rename(this.tmpPath, finalPath);
      await fsyncDir(this.opts.dir);
      return { path: finalPath, name: this.opts.name, header };
    } catch (e) {
      await this.abort();
      if (e instanceof StrataError) throw e;
      throw new StrataError("io_error", `Cannot write layer file ${finalPath}: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Discards the partial file. Safe to call more than once. */
  async abort(): Promise<void> {
    if (this.state === "aborted") return;
    if (this.state === "open") {
      await this.drain().catch(() => undefined);
      await this.fh.close().catch(() => undefined);
      this.releaseBuffers();
    }
    this.state = "aborted";
    await unlink(this.tmpPath).catch(() => undefined);
  }

  /** Seals and appends the leaf page; a promise only when the output buffer must be written first. */
  private flushLeaf(): Promise<void> | undefined {
    const offset = this.bytesWritten;
    sealPage(this.leaf, PAGE_KIND_LEAF, 0, this.leafCount, offset);
    this.leaves.push({ firstKey: this.leafFirstKey ?? Buffer.alloc(this.keyBytes), offset });
    if (this.outLen + this.leaf.length <= this.out.length) {
      this.out.set(this.leaf, this.outLen);
      this.outLen += this.leaf.length;
      this.resetLeaf();
      return undefined;
    }
    return this.append(this.leaf).then(() => this.resetLeaf());
  }

  private resetLeaf(): void {
    this.leaf.fill(0);
    this.leafCount = 0;
    this.leafFirstKey = undefined;
  }

  private async writeInternalLevels(): Promise<{ rootOffset: number; depth: number }> {
    const cap = internalCapacity(this.pageSize, this.keyBytes);
    assert(cap >= 2, "internal fan-out below 2");
    let children = this.leaves;
    let level = 1;
    while (children.length > 1) {
      assert(level < MAX_INDEX_DEPTH, "index deeper than MAX_INDEX_DEPTH");
      const parents: Array<{ firstKey: Buffer; offset: number }> = [];
      for (let i = 0; i < children.length; i += cap) {
        const chunk = children.slice(i, i + cap);
        const page = Buffer.alloc(this.pageSize);
        chunk.forEach((c, j) => {
          const slot = PAGE_HEADER_BYTES + j * (this.keyBytes + OFFSET_BYTES);
          c.firstKey.copy(page, slot);
          page.writeUIntBE(c.offset, slot + this.keyBytes, OFFSET_BYTES);
        });
        const offset = this.bytesWritten;
        sealPage(page, PAGE_KIND_INTERNAL, level, chunk.length, offset);
        await this.append(page);
        parents.push({ firstKey: chunk[0]!.firstKey, offset });
      }
      children = parents;
      level++;
    }
    return { rootOffset: children[0]!.offset, depth: level };
  }

  private async append(b: Uint8Array): Promise<void> {
    if (this.outLen + b.length > this.out.length) await this.flushOut();
    if (b.length > this.out.length) {
      await writeFully(this.fh, b, this.outPos);
      this.outPos += b.length;
      return;
    }
    this.out.set(b, this.outLen);
    this.outLen += b.length;
  }

  /** Starts writing the output buffer and switches to the other one (after the previous write finished). */
  private async flushOut(): Promise<void> {
    if (this.outLen === 0) return;
    if (this.inflight !== undefined) await this.inflight;
    const buf = this.out;
    const pos = this.outPos;
    const write = writeFully(this.fh, buf.subarray(0, this.outLen), pos).then(() => this.maybeSyncInBackground(pos + buf.length));
    write.catch(() => undefined); // handled: the error surfaces at the next await of `inflight`
    this.inflight = write;
    this.out = this.other ?? takeWriteBuffer();
    this.other = buf;
    this.outPos += this.outLen;
    this.outLen = 0;
  }

  /** After a write up to `end`: a datasync in the background when BACKGROUND_SYNC_BYTES were written since the last one. */
  private maybeSyncInBackground(end: number): void {
    if (this.syncing !== undefined || end - this.syncedTo < BACKGROUND_SYNC_BYTES || this.state !== "open") return;
    this.syncedTo = end;
    const sync = this.fh.datasync().finally(() => {
      if (this.syncing === sync) this.syncing = undefined;
    });
    sync.catch(() => undefined); // handled: a failure surfaces in drain()
    this.syncing = sync;
  }

  /** Waits for the write and background sync in flight (rethrowing their failures). */
  private async drain(): Promise<void> {
    const w = this.inflight;
    this.inflight = undefined;
    if (w !== undefined) await w;
    const s = this.syncing;
    if (s !== undefined) await s;
  }

  private releaseBuffers(): void {
    keepWriteBuffer(this.out);
    keepWriteBuffer(this.other);
    this.other = undefined;
  }
}

/** One index entry in a leaf: a view of the entry key plus where its value lives. */
export interface LeafEntry {
  readonly entryKey: Buffer;
  readonly valueOffset: number;
  readonly valueLength: number;
}

interface CursorLevel {
  readonly page: Buffer;
  readonly level: number;
  readonly count: number;
  idx: number;
}

/** Read-only access to a finished layer file through positioned reads and the page cache. */
export class LayerFileReader {
  private readonly readerId = allocateReaderId();
  private readonly keyBytes: number;
  private readonly leafStride: number;
  private readonly internalStride: number;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    readonly header: LayerHeader,
    private readonly cache: IndexPageCache,
  ) {
    this.keyBytes = ENTRY_KEY_BYTES[header.format];
    this.leafStride = this.keyBytes + OFFSET_BYTES + LENGTH_BYTES;
    this.internalStride = this.keyBytes + OFFSET_BYTES;
  }

  /** Opens and validates the header and file size. */
  static async open(path: string, format: LayerFileFormat, opts: { cache?: IndexPageCache } = {}): Promise<LayerFileReader> {
    let fh: FileHandle;
    try {
      fh = await open(path, "r");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code === "ENOENT" ? "not_found" : "io_error";
      throw new StrataError(code, `Cannot open layer file ${path}: ${(e as Error).message}`, { cause: e });
    }
    try {
      const { size } = await fh.stat();
      const b = Buffer.alloc(HEADER_SIZE_BYTES);
      await fh.read(b, 0, HEADER_SIZE_BYTES, 0);
      const header = decodeHeader(b, path, size, format);
      return new LayerFileReader(path, fh, header, opts.cache ?? sharedIndexPageCache);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }

  /**
   * Reads exactly `length` bytes at `offset`; a short read means the file changed under us.
   *
   * Positioned reads are synchronous on purpose: a small pread served from the
   * OS page cache costs microseconds, while FileHandle.read's thread-pool round
   * trip measured ~12x more (11 µs vs 138 µs per 120-byte read on the loaded
   * 2-core test machine), and GetPage does a few such reads per request. Layer
   * files live on local SSD; a cold read blocks the event loop for one device
   * read. The methods stay async so a later switch (e.g. io_uring) is local.
   */
  private readExactSync(offset: number, length: number, arena?: ReadArena): Buffer {
    const buf = arena === undefined ? Buffer.allocUnsafe(length) : arena.take(length);
    let done = 0;
    while (done < length) {
      let n: number;
      try {
        n = readSync(this.fh.fd, buf, done, length - done, offset + done);
      } catch (e) {
        throw new StrataError("io_error", `Cannot read layer file ${this.path} at offset ${offset + done}: ${(e as Error).message}`, { cause: e });
      }
      if (n === 0) throw corrupt(this.path, offset + done, `unexpected end of file reading ${length} bytes`);
      done += n;
    }
    return buf;
  }

  /** Reads and verifies the index page at `offset`, which must be at B-tree level `level`. */
  async readPage(offset: number, level: number): Promise<Buffer> {
    return this.readPageSync(offset, level);
  }

  /** readPage without the promise (scans step through thousands of entries per call). */
  readPageSync(offset: number, level: number): Buffer {
    const size = this.header.indexPageSizeBytes;
    const cached = this.cache.get(this.readerId, offset);
    if (cached !== undefined) {
      // Cached pages were verified; the level check guards against a pointer to
      // a page of another level, which a checksum alone would not catch.
      if (cached[1] !== level) throw corrupt(this.path, offset, `index page at level ${cached[1]}, expected ${level}`);
      return cached;
    }
    if (offset < HEADER_SIZE_BYTES || offset + size > this.header.fileSizeBytes) {
      throw corrupt(this.path, offset, `index page pointer outside the file`);
    }
    const page = this.readExactSync(offset, size);
    const end = size - PAGE_CRC_BYTES;
    const stored = page.readUInt32BE(end);
    const computed = crc32c(page.subarray(0, end), pageSeed(offset));
    if (stored !== computed) {
      throw corrupt(this.path, offset, `index page CRC32C mismatch: stored 0x${stored.toString(16)}, computed 0x${computed.toString(16)}`);
    }
    const kind = page[0]!;
    const count = page.readUInt16BE(2);
    const wantKind = level === 0 ? PAGE_KIND_LEAF : PAGE_KIND_INTERNAL;
    const cap = level === 0 ? leafCapacity(size, this.keyBytes) : internalCapacity(size, this.keyBytes);
    if (kind !== wantKind || page[1] !== level) throw corrupt(this.path, offset, `index page kind ${kind} level ${page[1]}, expected kind ${wantKind} level ${level}`);
    if (count > cap) throw corrupt(this.path, offset, `index page holds ${count} entries, capacity ${cap}`);
    if (page.readUInt32BE(4) !== 0) throw corrupt(this.path, offset + 4, "reserved index page bytes are not zero");
    this.cache.put(this.readerId, offset, page);
    return page;
  }

  private childOffset(page: Buffer, idx: number): number {
    return page.readUIntBE(PAGE_HEADER_BYTES + idx * this.internalStride + this.keyBytes, OFFSET_BYTES);
  }

  /** The leaf entry at `idx` of a verified leaf page. */
  leafEntry(page: Buffer, idx: number): LeafEntry {
    const slot = PAGE_HEADER_BYTES + idx * this.leafStride;
    return {
      entryKey: page.subarray(slot, slot + this.keyBytes),
      valueOffset: page.readUIntBE(slot + this.keyBytes, OFFSET_BYTES),
      valueLength: page.readUInt32BE(slot + this.keyBytes + OFFSET_BYTES),
    };
  }

  /** A cursor at the first entry whose key is >= `target` (or exhausted). */
  async seek(target: Buffer): Promise<LayerCursor> {
    return this.seekSync(target);
  }

  /** seek without the promise. */
  seekSync(target: Buffer): LayerCursor {
    assert(target.length === this.keyBytes, "seek target width");
    const stack: CursorLevel[] = [];
    let offset = this.header.indexRootOffset;
    for (let level = this.header.indexDepth - 1; level >= 0; level--) {
      const page = this.readPageSync(offset, level);
      const count = page.readUInt16BE(2);
      if (level === 0) {
        // First entry >= target.
        let lo = 0;
        let hi = count;
        while (lo < hi) {
          const mid = (lo + hi) >>> 1;
          const slot = PAGE_HEADER_BYTES + mid * this.leafStride;
          if (page.compare(target, 0, this.keyBytes, slot, slot + this.keyBytes) < 0) lo = mid + 1;
          else hi = mid;
        }
        stack.push({ page, level, count, idx: lo });
      } else {
        if (count === 0) throw corrupt(this.path, offset, "empty internal index page");
        // Last child whose first key <= target (child 0 if none).
        let lo = 0;
        let hi = count - 1;
        while (lo < hi) {
          const mid = (lo + hi + 1) >>> 1;
          const slot = PAGE_HEADER_BYTES + mid * this.internalStride;
          if (page.compare(target, 0, this.keyBytes, slot, slot + this.keyBytes) <= 0) lo = mid;
          else hi = mid - 1;
        }
        stack.push({ page, level, count, idx: lo });
        offset = this.childOffset(page, lo);
      }
    }
    const cursor = new LayerCursor(this, stack);
    cursor.settleSync();
    return cursor;
  }

  /** A cursor at the first entry of the file. */
  async first(): Promise<LayerCursor> {
    return this.seek(Buffer.alloc(this.keyBytes));
  }

  /** Descends from `stack`'s top (an internal level) to the leftmost leaf below its current child. */
  async descendLeftmost(stack: CursorLevel[]): Promise<void> {
    this.descendLeftmostSync(stack);
  }

  /** descendLeftmost without the promise. */
  descendLeftmostSync(stack: CursorLevel[]): void {
    let top = stack[stack.length - 1]!;
    while (top.level > 0) {
      const child = this.childOffset(top.page, top.idx);
      const page = this.readPageSync(child, top.level - 1);
      const count = page.readUInt16BE(2);
      if (top.level - 1 > 0 && count === 0) throw corrupt(this.path, child, "empty internal index page");
      top = { page, level: top.level - 1, count, idx: 0 };
      stack.push(top);
    }
  }

  private checkValueBounds(e: LeafEntry): void {
    this.checkValueBoundsAt(e.valueOffset, e.valueLength);
  }

  private checkValueBoundsAt(off: number, len: number): void {
    if (len > MAX_VALUE_BYTES || off < HEADER_SIZE_BYTES || off + len + VALUE_CRC_BYTES > this.header.fileSizeBytes) {
      throw corrupt(this.path, off, `value of ${len} bytes lies outside the file`);
    }
  }

  /** Verifies the value record of `e` held in `buf` at `at` and returns a plain Uint8Array view of the value. */
  private verifyValue(e: LeafEntry, buf: Buffer, at: number): Uint8Array {
    return this.verifyValueAt(e.entryKey, 0, e.valueOffset, e.valueLength, buf, at);
  }

  /** verifyValue for the value of `len` bytes at file offset `valueOffset` whose entry key is `keySrc[keyStart, keyStart + keyBytes)`. */
  private verifyValueAt(keySrc: Uint8Array, keyStart: number, valueOffset: number, len: number, buf: Buffer, at: number): Uint8Array {
    const stored = buf.readUInt32BE(at + len);
    // A plain Uint8Array view: values leave this module as the Value type says, not as Buffers.
    const value = new Uint8Array(buf.buffer, buf.byteOffset + at, len);
    const computed = crc32c(value, crc32cRange(keySrc, keyStart, keyStart + this.keyBytes));
    if (stored !== computed) {
      throw corrupt(this.path, valueOffset, `value CRC32C mismatch: stored 0x${stored.toString(16)}, computed 0x${computed.toString(16)}`);
    }
    return value;
  }

  /** Reads and verifies the value of `e`. */
  async readValue(e: LeafEntry): Promise<Uint8Array> {
    this.checkValueBounds(e);
    return this.verifyValue(e, this.readExactSync(e.valueOffset, e.valueLength + VALUE_CRC_BYTES), 0);
  }

  /**
   * Fetches the values of several entries that lie close together (sorted by
   * offset, e.g. the versions of one key) with one read when their span is at
   * most COALESCED_READ_MAX_BYTES, else one read per value as asked. Returns
   * a function that verifies and returns the value of entries[i] on demand,
   * so a caller that stops early verifies only what it uses.
   */
  async fetchValues(entries: readonly LeafEntry[]): Promise<(i: number) => Uint8Array> {
    for (const e of entries) this.checkValueBounds(e);
    const first = entries[0]?.valueOffset ?? 0;
    const last = entries[entries.length - 1];
    const spanEnd = last === undefined ? 0 : last.valueOffset + last.valueLength + VALUE_CRC_BYTES;
    const sorted = entries.every((e, i) => i === 0 || e.valueOffset > entries[i - 1]!.valueOffset);
    if (last === undefined || !sorted || spanEnd - first > COALESCED_READ_MAX_BYTES) {
      return (i) => {
        const e = entries[i]!;
        return this.verifyValue(e, this.readExactSync(e.valueOffset, e.valueLength + VALUE_CRC_BYTES), 0);
      };
    }
    const span = this.readExactSync(first, spanEnd - first);
    return (i) => this.verifyValue(entries[i]!, span, entries[i]!.valueOffset - first);
  }

  /**
   * Reads values in ascending file order through a read-ahead window
   * (iteration for compaction and backup): one large read per window instead
   * of one small read per value.
   */
  async readValueSequential(e: LeafEntry, window: ReadWindow): Promise<Uint8Array> {
    return this.readValueSequentialSync(e, window);
  }

  /** readValueSequential without the promise. */
  readValueSequentialSync(e: LeafEntry, window: ReadWindow): Uint8Array {
    return this.readValueSequentialAt(e.entryKey, 0, e.valueOffset, e.valueLength, window);
  }

  /**
   * readValueSequentialSync for an entry given by its parts (the key in
   * `keySrc` at `keyStart`): a range scan reads them straight from the leaf
   * page, without a LeafEntry and key view per value (a backup reads one
   * value per 8 KiB page; those allocations were a visible share of its GC).
   */
  private readValueSequentialAt(keySrc: Uint8Array, keyStart: number, valueOffset: number, valueLength: number, window: ReadWindow): Uint8Array {
    this.checkValueBoundsAt(valueOffset, valueLength);
    const need = valueLength + VALUE_CRC_BYTES;
    if (window.buf === undefined || valueOffset < window.start || valueOffset + need > window.start + window.buf.length) {
      const len = Math.min(Math.max(need, window.readAheadBytes ?? READ_AHEAD_BYTES), this.header.fileSizeBytes - valueOffset);
      window.buf = this.readExactSync(valueOffset, len, window.arena);
      window.start = valueOffset;
    }
    return this.verifyValueAt(keySrc, keyStart, valueOffset, valueLength, window.buf, valueOffset - window.start);
  }

  /**
   * Visits every entry with `from <= entry key < to` (byte order) in order,
   * synchronously: one B-tree descent, then leaf after leaf, values read
   * through a read-ahead window (one large read per READ_AHEAD_BYTES) and
   * verified before the visitor sees them. The range read of a backup: no
   * promise, no entry object and no key decoding per entry; `opts.accept`
   * skips entries before their values are read. Returns the number of
   * entries visited.
   */
  scanSync(from: Buffer, to: Buffer, visit: ScanVisitor, opts: ScanOptions = {}): number {
    const expectedValueBytes = opts.expectedValueBytes;
    assert(from.length === this.keyBytes && to.length === this.keyBytes, "scan bound width");
    const cursor = this.seekSync(from);
    // a short scan reads about what it needs (values plus the leaf pages between them), a long one READ_AHEAD_BYTES at a time
    const readAhead = expectedValueBytes === undefined ? READ_AHEAD_BYTES : Math.min(READ_AHEAD_BYTES * 8, Math.max(64 * 1024, Math.ceil(expectedValueBytes * 1.05) + 2 * this.header.indexPageSizeBytes));
    const window: ReadWindow = { buf: undefined, start: 0, readAheadBytes: readAhead, ...(opts.arena === undefined ? {} : { arena: opts.arena }) };
    const keyBytes = this.keyBytes;
    let n = 0;
    while (cursor.valid) {
      const { page, idx } = cursor.position();
      const slot = PAGE_HEADER_BYTES + idx * this.leafStride;
      if (page.compare(to, 0, keyBytes, slot, slot + keyBytes) >= 0) break;
      // entries the caller does not want (e.g. outside its LSN range) cost an index step, not a read
      if (opts.accept === undefined || opts.accept(page, slot)) {
        // the leaf entry's parts read in place (leafEntry's layout: key, offset, length)
        const valueOffset = page.readUIntBE(slot + keyBytes, OFFSET_BYTES);
        const valueLength = page.readUInt32BE(slot + keyBytes + OFFSET_BYTES);
        visit(page, slot, this.readValueSequentialAt(page, slot, valueOffset, valueLength, window));
        n++;
      }
      cursor.nextSync();
    }
    return n;
  }
}

/**
 * What a range scan hands its visitor for each entry: the verified leaf page
 * and the entry's slot in it (the entry key is `page[slot, slot + keyBytes)`),
 * and a verified view of the value (valid until the visitor returns: it lies
 * in the scan's read-ahead buffer, which the next window replaces).
 */
export type ScanVisitor = (page: Buffer, slot: number, value: Uint8Array) => void;

/** Read-ahead state of one sequential scan. */
export interface ReadWindow {
  buf: Buffer | undefined;
  start: number;
  /** Bytes per read (default READ_AHEAD_BYTES). */
  readonly readAheadBytes?: number;
  /** Where read-ahead buffers come from (default: fresh allocations). */
  readonly arena?: ReadArena;
}

export interface ScanOptions {
  /** Value bytes the caller expects in the range: sizes the read-ahead so a short scan reads little more than it needs. */
  readonly expectedValueBytes?: number;
  /** Read-ahead buffers from here instead of fresh allocations (see ReadArena). */
  readonly arena?: ReadArena;
  /** Entries for which this returns false (given the leaf page and the entry's slot) are skipped without reading their values. */
  readonly accept?: (page: Buffer, slot: number) => boolean;
}

/**
 * Read-ahead buffers recycled between scans. Why: a fresh multi-MiB buffer
 * is fresh memory, and the page faults of touching it cost far more than
 * the read itself (measured: ~6 s per GiB of fresh 2 MiB buffers on the
 * 2-core test machine, against ~0.1 s when the buffers are reused). A range
 * read takes its buffers from an arena and, once nothing refers to the
 * values any more (every page of the run copied out or reconstructed),
 * `reset()` makes them available to the next scan. The holder guarantees
 * that no view into a buffer outlives the reset.
 */
export class ReadArena {
  private readonly bufs: Buffer[] = [];
  private used = 0;

  /** A buffer of exactly `length` bytes (a view of a recycled buffer when one is large enough). */
  take(length: number): Buffer {
    let b = this.bufs[this.used];
    if (b === undefined || b.length < length) {
      b = Buffer.allocUnsafe(Math.max(length, b?.length ?? 0));
      this.bufs[this.used] = b;
    }
    this.used++;
    return b.subarray(0, length);
  }

  /** Every buffer is free again (no view handed out may be used after this). */
  reset(): void {
    this.used = 0;
  }
}

/**
 * A position in a layer's index, in entry-key order. Holds the path from the
 * root to the current leaf so it can step to the next leaf without sibling
 * links (leaves are written before their neighbours' offsets are known).
 */
export class LayerCursor {
  constructor(
    private readonly reader: LayerFileReader,
    private readonly stack: CursorLevel[],
  ) {}

  get valid(): boolean {
    const top = this.stack[this.stack.length - 1];
    return top !== undefined && top.level === 0 && top.idx < top.count;
  }

  entry(): LeafEntry {
    const top = this.stack[this.stack.length - 1];
    assert(top !== undefined && top.level === 0 && top.idx < top.count, "cursor is not on an entry");
    return this.reader.leafEntry(top.page, top.idx);
  }

  /** The current leaf page and index (valid cursors only). */
  position(): { page: Buffer; idx: number } {
    const top = this.stack[this.stack.length - 1];
    assert(top !== undefined && top.level === 0 && top.idx < top.count, "cursor is not on an entry");
    return top;
  }

  /** Moves to the next entry; false when the index is exhausted. */
  async next(): Promise<boolean> {
    return this.nextSync();
  }

  /** next without the promise. */
  nextSync(): boolean {
    const top = this.stack[this.stack.length - 1];
    if (top === undefined) return false;
    top.idx++;
    this.settleSync();
    return this.valid;
  }

  /** If the leaf position is past its end, climbs and descends to the next non-empty leaf. */
  async settle(): Promise<void> {
    this.settleSync();
  }

  /** settle without the promise. */
  settleSync(): void {
    for (;;) {
      const leaf = this.stack[this.stack.length - 1];
      if (leaf === undefined || leaf.idx < leaf.count) return;
      this.stack.pop();
      let parent = this.stack[this.stack.length - 1];
      while (parent !== undefined && ++parent.idx >= parent.count) {
        this.stack.pop();
        parent = this.stack[this.stack.length - 1];
      }
      if (parent === undefined) return; // exhausted
      this.reader.descendLeftmostSync(this.stack);
    }
  }
}

/** Entry key of a delta entry: key (18 bytes) then LSN (8 bytes), big-endian, so byte order = (key, lsn) order. */
export function deltaEntryKey(k: Key, l: Lsn, out: Buffer = Buffer.allocUnsafe(26)): Buffer {
  writeKey(out, 0, k);
  out.writeBigUInt64BE(l, 18);
  return out;
}

export function imageEntryKey(k: Key, out: Buffer = Buffer.allocUnsafe(18)): Buffer {
  writeKey(out, 0, k);
  return out;
}

/**
 * What the delta and image layer readers share: the descriptor (ranges from
 * the verified header, generation from the file name), path, sizes and close.
 */
export abstract class OpenedLayerFile {
  readonly desc: LayerDesc;

  protected constructor(protected readonly file: LayerFileReader) {
    const h = file.header;
    const named = tryParseLayerFileName(basename(file.path));
    this.desc = {
      kind: h.format,
      keyRange: h.keyRange,
      lsnRange: h.lsnRange,
      ...(named?.generation === undefined ? {} : { generation: named.generation }),
    };
  }

  get path(): string {
    return this.file.path;
  }

  get entryCount(): number {
    return this.file.header.entryCount;
  }

  get fileSizeBytes(): number {
    return this.file.header.fileSizeBytes;
  }

  async close(): Promise<void> {
    await this.file.close();
  }
}
