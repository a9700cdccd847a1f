/**
 * One WAL record as contiguous bytes (PostgreSQL 15 `access/xlogrecord.h`):
 * header parse, CRC check, full decode into `DecodedRecord`, and the inverse,
 * `encodeRecord`.
 *
 * Record layout (little-endian):
 *
 *   XLogRecord (24 bytes)
 *     0  uint32 xl_tot_len    whole record, header included
 *     4  uint32 xl_xid
 *     8  uint64 xl_prev       LSN of the previous record
 *     16 uint8  xl_info       high 4 bits: rmgr-specific type; low: XLR_* flags
 *     17 uint8  xl_rmid
 *     18 2 bytes padding (zero)
 *     20 uint32 xl_crc        CRC-32C of bytes [24, tot_len) then [0, 20)
 *   fragment headers, no padding, in this order:
 *     block headers, ids 0..32 strictly ascending:
 *       uint8 id, uint8 fork_flags, uint16 data_length,
 *       [if HAS_IMAGE: uint16 bimg_len, uint16 hole_offset, uint8 bimg_info,
 *                      [if compressed and HAS_HOLE: uint16 hole_length]],
 *       [unless SAME_REL: RelFileNode (3 x uint32)], uint32 block number
 *     [253 ORIGIN: uint16] [252 TOPLEVEL_XID: uint32]
 *     [255 DATA_SHORT: uint8 len | 254 DATA_LONG: uint32 len]   (always last)
 *   payloads in header order: per block its image then its data; main data.
 *
 * Decoding is DecodeXLogRecord's logic with every check it makes (lengths
 * against the record length, HAS_DATA vs data_length, the hole / compression
 * consistency rules, SAME_REL on the first block, block-id order), plus the
 * CRC check of ValidXLogRecord done first: nothing in a record is believed
 * before its CRC matches. Failures are `WalDecodeError` (a StrataError with
 * code "corrupt_data" and the record's LSN). The result holds views into the
 * input bytes, nothing is copied.
 *
 * `encodeRecord` is XLogRecordAssemble's layout for callers that synthesize
 * WAL (wal_synthesis.ts, tests): it sets SAME_REL as PostgreSQL does (when a
 * block's relation equals the previous block's), picks the short or long main
 * data header by length, and seals the record with its CRC.
 */
import { StrataError, type ErrorCode } from "../../lib/errors.js";
import { formatLsn, type Lsn } from "../../lib/lsn.js";
import { xlogRecordCrc, xlogRecordCrcAt } from "../crc32c.js";
import type { BlockImage, BlockRef, DecodedRecord, FpiCompression, RelFileNode } from "./decoded_record.js";

/** SizeOfXLogRecord. */
export const SIZE_OF_XLOG_RECORD = 24;
/** BLCKSZ: relation page size; a full-page image restores to this many bytes. */
export const BLCKSZ = 8192;
/**
 * Largest xl_tot_len accepted. PostgreSQL 16 names this limit
 * XLogRecordMaxSize (1020 MiB: what fits MaxAllocSize with room for the
 * decoded-record overhead) and refuses to write bigger records; PostgreSQL 15
 * is bounded by the same allocation limit when decoding. A larger value is
 * garbage, and capping it bounds the memory one record can make us allocate.
 */
export const XLOG_RECORD_MAX_SIZE_BYTES = 1020 * 1024 * 1024;

/** xl_info bits owned by the WAL machinery; the rest belong to the rmgr. */
export const XLR_INFO_MASK = 0x0f;
export const XLR_RMGR_INFO_MASK = 0xf0;
export const XLR_SPECIAL_REL_UPDATE = 0x01;
export const XLR_CHECK_CONSISTENCY = 0x02;

export const XLR_MAX_BLOCK_ID = 32;
export const XLR_BLOCK_ID_DATA_SHORT = 255;
export const XLR_BLOCK_ID_DATA_LONG = 254;
export const XLR_BLOCK_ID_ORIGIN = 253;
export const XLR_BLOCK_ID_TOPLEVEL_XID = 252;

export const BKPBLOCK_FORK_MASK = 0x0f;
export const BKPBLOCK_HAS_IMAGE = 0x10;
export const BKPBLOCK_HAS_DATA = 0x20;
export const BKPBLOCK_WILL_INIT = 0x40;
export const BKPBLOCK_SAME_REL = 0x80;

export const BKPIMAGE_HAS_HOLE = 0x01;
export const BKPIMAGE_APPLY = 0x02;
export const BKPIMAGE_COMPRESS_PGLZ = 0x04;
export const BKPIMAGE_COMPRESS_LZ4 = 0x08;
export const BKPIMAGE_COMPRESS_ZSTD = 0x10;
const BKPIMAGE_COMPRESS_MASK = BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD;

/** RM_MAX_BUILTIN_ID in PG 15 (LogicalMessage) and the custom-rmgr id range. */
export const RM_MAX_BUILTIN_ID = 21;
export const RM_MIN_CUSTOM_ID = 128;
export const RM_MAX_CUSTOM_ID = 255;

/** RmgrIdIsValid: built-in ids 0..21 and custom ids 128..255. */
export function isValidRmgrId(rmid: number): boolean {
  return (rmid >= 0 && rmid <= RM_MAX_BUILTIN_ID) || (rmid >= RM_MIN_CUSTOM_ID && rmid <= RM_MAX_CUSTOM_ID);
}

/** A WAL decoding failure: an operating error that names the LSN it happened at. */
export class WalDecodeError extends StrataError {
  override name = "WalDecodeError";
  /** LSN of the record (or page) that failed. */
  readonly lsn: Lsn;
  /**
   * True when the failure is what a reader sees at the end of written WAL: a
   * record length of zero where the next record should start (PostgreSQL
   * zero-fills the unused tail of the current page). Recovery treats this as
   * "end of WAL", not as corruption.
   */
  readonly endOfWal: boolean;
  constructor(code: ErrorCode, at: Lsn, message: string, options?: { cause?: unknown; endOfWal?: boolean }) {
    super(code, message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.lsn = at;
    this.endOfWal = options?.endOfWal ?? false;
  }
}

/** The fixed 24-byte header. */
export interface XLogRecordHeader {
  readonly totalLength: number;
  readonly xid: number;
  readonly prevLsn: Lsn;
  readonly info: number;
  readonly rmid: number;
  readonly crc: number;
}

function u16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}
function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}
function u64(b: Uint8Array, o: number): bigint {
  const lo = u32(b, o);
  const hi = u32(b, o + 4);
  return hi === 0 ? BigInt(lo) : (BigInt(hi) << 32n) | BigInt(lo);
}

/** xl_tot_len of the record at `bytes[offset]` (needs 4 bytes). */
export function readTotalLength(bytes: Uint8Array, offset = 0): number {
  return u32(bytes, offset);
}

/** Parses the 24-byte record header at `bytes[offset]`; no validation. */
export function parseRecordHeader(bytes: Uint8Array, offset = 0): XLogRecordHeader {
  if (offset < 0 || bytes.length - offset < SIZE_OF_XLOG_RECORD) {
    throw new StrataError(
      "truncated",
      `Cannot parse WAL record header at offset ${offset}: need ${SIZE_OF_XLOG_RECORD} bytes, have ${Math.max(0, bytes.length - offset)}`,
    );
  }
  return {
    totalLength: u32(bytes, offset),
    xid: u32(bytes, offset + 4),
    prevLsn: u64(bytes, offset + 8) as Lsn,
    info: bytes[offset + 16]!,
    rmid: bytes[offset + 17]!,
    crc: u32(bytes, offset + 20),
  };
}

/**
 * ValidXLogRecordHeader: length, rmgr id and prev-link. With `expectedPrev`
 * the prev-link must equal it (sequential reading); without, it must only
 * point below the record (the first record after a random start).
 */
export function validateRecordHeader(hdr: XLogRecordHeader, at: Lsn, expectedPrev: Lsn | undefined, maxTotalLength = XLOG_RECORD_MAX_SIZE_BYTES): void {
  if (hdr.totalLength < SIZE_OF_XLOG_RECORD) {
    throw new WalDecodeError(
      "corrupt_data",
      at,
      `Invalid record length at ${formatLsn(at)}: wanted ${SIZE_OF_XLOG_RECORD}, got ${hdr.totalLength}`,
      { endOfWal: hdr.totalLength === 0 },
    );
  }
  if (hdr.totalLength > maxTotalLength) {
    throw new WalDecodeError(
      "corrupt_data",
      at,
      `Invalid record length at ${formatLsn(at)}: ${hdr.totalLength} exceeds the limit of ${maxTotalLength} bytes`,
    );
  }
  if (!isValidRmgrId(hdr.rmid)) {
    throw new WalDecodeError("corrupt_data", at, `Invalid resource manager ID ${hdr.rmid} at ${formatLsn(at)}`);
  }
  const prevOk = expectedPrev === undefined ? hdr.prevLsn < at : hdr.prevLsn === expectedPrev;
  if (!prevOk) {
    throw new WalDecodeError(
      "corrupt_data",
      at,
      `Record with incorrect prev-link ${formatLsn(hdr.prevLsn)} at ${formatLsn(at)}` +
        (expectedPrev === undefined ? "" : ` (expected ${formatLsn(expectedPrev)})`),
    );
  }
}

/** ValidXLogRecord: throws unless xl_crc matches. `record.length` must be xl_tot_len. */
export function checkRecordCrc(record: Uint8Array, at: Lsn): void {
  checkRecordCrcAt(record, 0, record.length, at);
}

/** checkRecordCrc for the record occupying buf[off, off + totalLength). */
export function checkRecordCrcAt(buf: Uint8Array, off: number, totalLength: number, at: Lsn): void {
  const stored = u32(buf, off + 20);
  const computed = xlogRecordCrcAt(buf, off, totalLength);
  if (stored !== computed) {
    throw new WalDecodeError(
      "corrupt_data",
      at,
      `Incorrect resource manager data checksum in record at ${formatLsn(at)}: stored ${hex8(stored)}, computed ${hex8(computed)}`,
    );
  }
}

function hex8(v: number): string {
  return v.toString(16).toUpperCase().padStart(8, "0");
}

export interface DecodeRecordOptions {
  /** Check xl_crc first (default true). Only skip when the caller just did. */
  verifyCrc?: boolean;
  /**
   * The record's xl_prev when the caller has already verified it (the stream
   * decoder checks it against the previous record); saves rebuilding the bigint.
   */
  prevLsn?: Lsn;
}

function corrupt(at: Lsn, what: string): never {
  throw new WalDecodeError("corrupt_data", at, `Invalid WAL record at ${formatLsn(at)}: ${what}`);
}

function shortData(at: Lsn, what: string, n: number, remaining: number, totalLength: number): never {
  return corrupt(at, `${what} needs ${n} bytes but only ${remaining} remain of xl_tot_len ${totalLength}`);
}

// Per-block fields gathered while walking the fragment headers, before the
// payload offsets are known. Module-level scratch: decoding is synchronous
// and never re-entrant, and this keeps the hot path free of allocations.
const PB_FLAGS = 0;
const PB_DATA_LEN = 1;
const PB_IMAGE_LEN = 2;
const PB_HOLE_OFFSET = 3;
const PB_HOLE_LEN = 4;
const PB_BIMG_INFO = 5;
const PB_ID = 6;
const PB_FIELDS = 7;
const pendingFields = new Int32Array((XLR_MAX_BLOCK_ID + 1) * PB_FIELDS);
const pendingBlockNumbers = new Float64Array(XLR_MAX_BLOCK_ID + 1);
const pendingRels: RelFileNode[] = [];

/**
 * Decodes the complete record in `raw` (exactly xl_tot_len bytes, page
 * headers already removed) that starts at `at` and ends at `endLsn`.
 */
export function decodeRecord(raw: Uint8Array, at: Lsn, endLsn: Lsn, opts?: DecodeRecordOptions): DecodedRecord {
  if (raw.length < SIZE_OF_XLOG_RECORD) {
    return corrupt(at, `${raw.length} bytes is shorter than the ${SIZE_OF_XLOG_RECORD}-byte record header`);
  }
  const totalLength = u32(raw, 0);
  if (totalLength !== raw.length) corrupt(at, `xl_tot_len ${totalLength} does not match the ${raw.length} bytes given`);
  if (opts?.verifyCrc !== false) checkRecordCrc(raw, at);

  let pos = SIZE_OF_XLOG_RECORD;
  let remaining = totalLength - SIZE_OF_XLOG_RECORD;
  let dataTotal = 0;
  let mainDataLength = 0;
  let origin: number | undefined;
  let toplevelXid: number | undefined;
  let maxBlockId = -1;
  let prevRel: RelFileNode | undefined;
  let nBlocks = 0;
  const pf = pendingFields;

  while (remaining > dataTotal) {
    if (remaining < 1) shortData(at, "fragment header id", 1, remaining, totalLength);
    const blockId = raw[pos]!;
    pos += 1;
    remaining -= 1;
    if (blockId === XLR_BLOCK_ID_DATA_SHORT) {
      if (remaining < 1) shortData(at, "short main data header", 1, remaining, totalLength);
      mainDataLength = raw[pos]!;
      pos += 1;
      remaining -= 1;
      dataTotal += mainDataLength;
      break; // main data is always the last fragment
    } else if (blockId === XLR_BLOCK_ID_DATA_LONG) {
      if (remaining < 4) shortData(at, "long main data header", 4, remaining, totalLength);
      mainDataLength = u32(raw, pos);
      pos += 4;
      remaining -= 4;
      dataTotal += mainDataLength;
      break;
    } else if (blockId === XLR_BLOCK_ID_ORIGIN) {
      if (remaining < 2) shortData(at, "replication origin", 2, remaining, totalLength);
      origin = u16(raw, pos);
      pos += 2;
      remaining -= 2;
    } else if (blockId === XLR_BLOCK_ID_TOPLEVEL_XID) {
      if (remaining < 4) shortData(at, "top-level xid", 4, remaining, totalLength);
      toplevelXid = u32(raw, pos);
      pos += 4;
      remaining -= 4;
    } else if (blockId <= XLR_MAX_BLOCK_ID) {
      if (blockId <= maxBlockId) corrupt(at, `out-of-order block_id ${blockId}`);
      maxBlockId = blockId;
      if (remaining < 3) shortData(at, `block ${blockId} header`, 3, remaining, totalLength);
      const flags = raw[pos]!;
      const dataLength = u16(raw, pos + 1);
      pos += 3;
      remaining -= 3;
      const hasData = (flags & BKPBLOCK_HAS_DATA) !== 0;
      if (hasData && dataLength === 0) corrupt(at, `BKPBLOCK_HAS_DATA set, but no data included (block ${blockId})`);
      if (!hasData && dataLength !== 0) corrupt(at, `BKPBLOCK_HAS_DATA not set, but data length is ${dataLength} (block ${blockId})`);
      dataTotal += dataLength;
      let imageLength = 0;
      let holeOffset = 0;
      let holeLength = 0;
      let bimgInfo = 0;
      if ((flags & BKPBLOCK_HAS_IMAGE) !== 0) {
        if (remaining < 5) shortData(at, `block ${blockId} image header`, 5, remaining, totalLength);
        imageLength = u16(raw, pos);
        holeOffset = u16(raw, pos + 2);
        bimgInfo = raw[pos + 4]!;
        pos += 5;
        remaining -= 5;
        if ((bimgInfo & BKPIMAGE_COMPRESS_MASK) !== 0) {
          if ((bimgInfo & BKPIMAGE_HAS_HOLE) !== 0) {
            if (remaining < 2) shortData(at, `block ${blockId} compressed image hole length`, 2, remaining, totalLength);
            holeLength = u16(raw, pos);
            pos += 2;
            remaining -= 2;
          }
        } else {
          holeLength = BLCKSZ - imageLength;
        }
        dataTotal += imageLength;
        checkImageHeader(at, blockId, imageLength, holeOffset, holeLength, bimgInfo);
      }
      let rel: RelFileNode;
      if ((flags & BKPBLOCK_SAME_REL) === 0) {
        if (remaining < 12) shortData(at, `block ${blockId} relation`, 12, remaining, totalLength);
        rel = { spcOid: u32(raw, pos), dbOid: u32(raw, pos + 4), relNumber: u32(raw, pos + 8) };
        pos += 12;
        remaining -= 12;
        prevRel = rel;
      } else {
        if (prevRel === undefined) return corrupt(at, `BKPBLOCK_SAME_REL set but no previous rel (block ${blockId})`);
        rel = prevRel;
      }
      if (remaining < 4) shortData(at, `block ${blockId} block number`, 4, remaining, totalLength);
      const base = nBlocks * PB_FIELDS;
      pf[base + PB_FLAGS] = flags;
      pf[base + PB_DATA_LEN] = dataLength;
      pf[base + PB_IMAGE_LEN] = imageLength;
      pf[base + PB_HOLE_OFFSET] = holeOffset;
      pf[base + PB_HOLE_LEN] = holeLength;
      pf[base + PB_BIMG_INFO] = bimgInfo;
      pf[base + PB_ID] = blockId;
      pendingBlockNumbers[nBlocks] = u32(raw, pos);
      pendingRels[nBlocks] = rel;
      nBlocks++;
      pos += 4;
      remaining -= 4;
    } else {
      corrupt(at, `invalid block_id ${blockId}`);
    }
  }
  if (remaining !== dataTotal) {
    corrupt(at, `fragment lengths add up to ${dataTotal} bytes but ${remaining} bytes of payload remain`);
  }

  const blocks: BlockRef[] = nBlocks === 0 ? (NO_BLOCKS as BlockRef[]) : new Array<BlockRef>(nBlocks);
  for (let i = 0; i < nBlocks; i++) {
    const base = i * PB_FIELDS;
    const flags = pf[base + PB_FLAGS]!;
    let image: BlockImage | undefined;
    if ((flags & BKPBLOCK_HAS_IMAGE) !== 0) {
      const imageLength = pf[base + PB_IMAGE_LEN]!;
      const bimgInfo = pf[base + PB_BIMG_INFO]!;
      image = {
        bytes: raw.subarray(pos, pos + imageLength),
        holeOffset: pf[base + PB_HOLE_OFFSET]!,
        holeLength: pf[base + PB_HOLE_LEN]!,
        bimgInfo,
        apply: (bimgInfo & BKPIMAGE_APPLY) !== 0,
        compression: compressionOf(bimgInfo),
      };
      pos += imageLength;
    }
    const dataLength = pf[base + PB_DATA_LEN]!;
    let data: Uint8Array | undefined;
    if (dataLength > 0) {
      data = raw.subarray(pos, pos + dataLength);
      pos += dataLength;
    }
    // One object shape for every block (absent parts are undefined) keeps
    // consumers' property accesses monomorphic.
    blocks[i] = {
      id: pf[base + PB_ID]!,
      forkNum: flags & BKPBLOCK_FORK_MASK,
      flags,
      rel: pendingRels[i]!,
      blockNumber: pendingBlockNumbers[i]!,
      willInit: (flags & BKPBLOCK_WILL_INIT) !== 0,
      image,
      data,
    };
  }
  pendingRels.length = 0;
  return {
    lsn: at,
    endLsn,
    totalLength,
    xid: u32(raw, 4),
    prevLsn: opts?.prevLsn ?? (u64(raw, 8) as Lsn),
    info: raw[16]!,
    rmid: raw[17]!,
    crc: u32(raw, 20),
    blocks,
    mainData: mainDataLength === 0 ? EMPTY_BYTES : raw.subarray(pos, pos + mainDataLength),
    origin,
    toplevelXid,
    raw,
  };
}

const NO_BLOCKS: readonly BlockRef[] = Object.freeze([]) as readonly BlockRef[];
const EMPTY_BYTES = new Uint8Array(0);

/** DecodeXLogRecord's image-header cross-checks, plus: at most one compression bit. */
function checkImageHeader(at: Lsn, blockId: number, imageLength: number, holeOffset: number, holeLength: number, bimgInfo: number): void {
  const fail = (what: string): never => corrupt(at, what);
  const hasHole = (bimgInfo & BKPIMAGE_HAS_HOLE) !== 0;
  const compressBits = bimgInfo & BKPIMAGE_COMPRESS_MASK;
  const blk = `block ${blockId}`;
  if (imageLength > BLCKSZ) fail(`block image length ${imageLength} exceeds ${BLCKSZ} (${blk})`);
  if (hasHole && (holeOffset === 0 || holeLength === 0 || imageLength === BLCKSZ)) {
    fail(`BKPIMAGE_HAS_HOLE set, but hole offset ${holeOffset} length ${holeLength} block image length ${imageLength} (${blk})`);
  }
  if (!hasHole && (holeOffset !== 0 || holeLength !== 0)) {
    fail(`BKPIMAGE_HAS_HOLE not set, but hole offset ${holeOffset} length ${holeLength} (${blk})`);
  }
  if (compressBits !== 0 && imageLength === BLCKSZ) {
    fail(`BKPIMAGE_COMPRESSED set, but block image length ${imageLength} (${blk})`);
  }
  if (!hasHole && compressBits === 0 && imageLength !== BLCKSZ) {
    fail(`neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block image length is ${imageLength} (${blk})`);
  }
  // Stricter than PostgreSQL, which never writes these: a hole must lie
  // inside the page, and one image has one compression method.
  if (hasHole && holeOffset + holeLength > BLCKSZ) {
    fail(`image hole [${holeOffset}, ${holeOffset + holeLength}) extends past the ${BLCKSZ}-byte page (${blk})`);
  }
  if (compressBits !== 0 && (compressBits & (compressBits - 1)) !== 0) {
    fail(`image has more than one compression method (bimg_info 0x${bimgInfo.toString(16)}) (${blk})`);
  }
}

function compressionOf(bimgInfo: number): FpiCompression {
  if ((bimgInfo & BKPIMAGE_COMPRESS_PGLZ) !== 0) return "pglz";
  if ((bimgInfo & BKPIMAGE_COMPRESS_LZ4) !== 0) return "lz4";
  if ((bimgInfo & BKPIMAGE_COMPRESS_ZSTD) !== 0) return "zstd";
  return "none";
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/** A full-page image to put into a record, as it is stored (compressed, hole removed). */
export interface BlockImageSpec {
  /** Stored bytes: BLCKSZ - holeLength bytes if uncompressed, else the compressed bytes. */
  readonly bytes: Uint8Array;
  readonly holeOffset?: number;
  readonly holeLength?: number;
  /** BKPIMAGE_APPLY (default true). */
  readonly apply?: boolean;
  readonly compression?: FpiCompression;
}

export interface BlockRefSpec {
  /** Block reference id 0..32; ids must be strictly ascending within a record. */
  readonly id: number;
  readonly forkNum: number;
  readonly rel: RelFileNode;
  readonly blockNumber: number;
  readonly willInit?: boolean;
  readonly image?: BlockImageSpec;
  /** Per-block data, at most 65535 bytes. */
  readonly data?: Uint8Array;
}

export interface RecordSpec {
  readonly rmid: number;
  /** Full xl_info byte (rmgr bits and XLR_* flags). */
  readonly info: number;
  readonly xid?: number;
  readonly prevLsn: Lsn;
  readonly mainData?: Uint8Array;
  readonly blocks?: readonly BlockRefSpec[];
  readonly origin?: number;
  readonly toplevelXid?: number;
}

const COMPRESSION_BITS: Record<FpiCompression, number> = {
  none: 0,
  pglz: BKPIMAGE_COMPRESS_PGLZ,
  lz4: BKPIMAGE_COMPRESS_LZ4,
  zstd: BKPIMAGE_COMPRESS_ZSTD,
};

function sameRel(a: RelFileNode, b: RelFileNode): boolean {
  return a.spcOid === b.spcOid && a.dbOid === b.dbOid && a.relNumber === b.relNumber;
}

/**
 * Builds a complete WAL record (header with CRC, fragment headers, payloads)
 * the way XLogRecordAssemble lays it out. Throws "invalid_argument" for specs
 * PostgreSQL could not have written.
 */
export function encodeRecord(spec: RecordSpec): Uint8Array {
  const bad = (what: string): never => {
    throw new StrataError("invalid_argument", `encodeRecord: ${what}`);
  };
  if (!isValidRmgrId(spec.rmid)) bad(`invalid rmgr id ${spec.rmid}`);
  if (!Number.isInteger(spec.info) || spec.info < 0 || spec.info > 0xff) bad(`invalid xl_info ${spec.info}`);
  const blocks = spec.blocks ?? [];
  const mainData = spec.mainData ?? new Uint8Array(0);

  // First pass: sizes.
  let headerBytes = 0;
  let payloadBytes = 0;
  let lastId = -1;
  let prev: RelFileNode | undefined;
  for (const b of blocks) {
    if (!Number.isInteger(b.id) || b.id < 0 || b.id > XLR_MAX_BLOCK_ID) bad(`block id ${b.id} outside 0..${XLR_MAX_BLOCK_ID}`);
    if (b.id <= lastId) bad(`block ids must ascend (${b.id} after ${lastId})`);
    lastId = b.id;
    if (!Number.isInteger(b.forkNum) || b.forkNum < 0 || b.forkNum > BKPBLOCK_FORK_MASK) bad(`invalid fork ${b.forkNum}`);
    const dataLength = b.data?.length ?? 0;
    if (dataLength > 0xffff) bad(`block ${b.id} data of ${dataLength} bytes exceeds 65535`);
    headerBytes += 4 + 4; // id, fork_flags, data_length; block number
    payloadBytes += dataLength;
    if (b.image) {
      const img = b.image;
      const compressed = (img.compression ?? "none") !== "none";
      const holeLength = img.holeLength ?? 0;
      const holeOffset = img.holeOffset ?? 0;
      if (holeLength > 0 && (holeOffset === 0 || holeOffset + holeLength > BLCKSZ)) bad(`block ${b.id} image hole invalid`);
      if (holeLength === 0 && holeOffset !== 0) bad(`block ${b.id} image hole offset without length`);
      if (!compressed && img.bytes.length !== BLCKSZ - holeLength) {
        bad(`block ${b.id} uncompressed image must be ${BLCKSZ - holeLength} bytes, got ${img.bytes.length}`);
      }
      if (compressed && img.bytes.length >= BLCKSZ) bad(`block ${b.id} compressed image must be shorter than ${BLCKSZ}`);
      headerBytes += 5 + (compressed && holeLength > 0 ? 2 : 0);
      payloadBytes += img.bytes.length;
    }
    if (!(prev && sameRel(prev, b.rel))) headerBytes += 12;
    prev = b.rel;
  }
  if (spec.origin !== undefined) headerBytes += 3;
  if (spec.toplevelXid !== undefined) headerBytes += 5;
  if (mainData.length > 0) headerBytes += mainData.length > 255 ? 5 : 2;
  payloadBytes += mainData.length;
  const total = SIZE_OF_XLOG_RECORD + headerBytes + payloadBytes;
  if (total > XLOG_RECORD_MAX_SIZE_BYTES) bad(`record of ${total} bytes exceeds ${XLOG_RECORD_MAX_SIZE_BYTES}`);

  const out = new Uint8Array(total);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, total, true);
  dv.setUint32(4, spec.xid ?? 0, true);
  dv.setBigUint64(8, spec.prevLsn, true);
  out[16] = spec.info;
  out[17] = spec.rmid;
  let pos = SIZE_OF_XLOG_RECORD;
  prev = undefined;
  for (const b of blocks) {
    let flags = b.forkNum;
    const dataLength = b.data?.length ?? 0;
    if (b.image) flags |= BKPBLOCK_HAS_IMAGE;
    if (dataLength > 0) flags |= BKPBLOCK_HAS_DATA;
    if (b.willInit) flags |= BKPBLOCK_WILL_INIT;
    const same = prev !== undefined && sameRel(prev, b.rel);
    if (same) flags |= BKPBLOCK_SAME_REL;
    out[pos] = b.id;
    out[pos + 1] = flags;
    dv.setUint16(pos + 2, dataLength, true);
    pos += 4;
    if (b.image) {
      const img = b.image;
      const compression = img.compression ?? "none";
      const holeLength = img.holeLength ?? 0;
      let bimgInfo = COMPRESSION_BITS[compression];
      if (holeLength > 0) bimgInfo |= BKPIMAGE_HAS_HOLE;
      if (img.apply ?? true) bimgInfo |= BKPIMAGE_APPLY;
      dv.setUint16(pos, img.bytes.length, true);
      dv.setUint16(pos + 2, img.holeOffset ?? 0, true);
      out[pos + 4] = bimgInfo;
      pos += 5;
      if (compression !== "none" && holeLength > 0) {
        dv.setUint16(pos, holeLength, true);
        pos += 2;
      }
    }
    if (!same) {
      dv.setUint32(pos, b.rel.spcOid, true);
      dv.setUint32(pos + 4, b.rel.dbOid, true);
      dv.setUint32(pos + 8, b.rel.relNumber, true);
      pos += 12;
    }
    dv.setUint32(pos, b.blockNumber, true);
    pos += 4;
    prev = b.rel;
  }
  if (spec.origin !== undefined) {
    out[pos] = XLR_BLOCK_ID_ORIGIN;
    dv.setUint16(pos + 1, spec.origin, true);
    pos += 3;
  }
  if (spec.toplevelXid !== undefined) {
    out[pos] = XLR_BLOCK_ID_TOPLEVEL_XID;
    dv.setUint32(pos + 1, spec.toplevelXid, true);
    pos += 5;
  }
  if (mainData.length > 255) {
    out[pos] = XLR_BLOCK_ID_DATA_LONG;
    dv.setUint32(pos + 1, mainData.length, true);
    pos += 5;
  } else if (mainData.length > 0) {
    out[pos] = XLR_BLOCK_ID_DATA_SHORT;
    out[pos + 1] = mainData.length;
    pos += 2;
  }
  for (const b of blocks) {
    if (b.image) {
      out.set(b.image.bytes, pos);
      pos += b.image.bytes.length;
    }
    if (b.data && b.data.length > 0) {
      out.set(b.data, pos);
      pos += b.data.length;
    }
  }
  out.set(mainData, pos);
  pos += mainData.length;
  if (pos !== total) throw new Error(`assertion failed: encodeRecord wrote ${pos} of ${total} bytes`);
  sealRecord(out);
  return out;
}

/** (Re)computes and stores xl_crc of the record in `record` (exactly xl_tot_len bytes). */
export function sealRecord(record: Uint8Array): void {
  const crc = xlogRecordCrc(record);
  record[20] = crc & 0xff;
  record[21] = (crc >>> 8) & 0xff;
  record[22] = (crc >>> 16) & 0xff;
  record[23] = crc >>> 24;
}
