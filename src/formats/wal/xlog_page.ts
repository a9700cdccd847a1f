/**
 * WAL page headers (XLogPageHeaderData / XLogLongPageHeaderData, PostgreSQL 15
 * `access/xlog_internal.h`): parse, validate, write.
 *
 * The WAL stream is cut into 8 KiB pages (XLOG_BLCKSZ). Every page starts with
 * a 24-byte short header; the first page of every segment carries the 40-byte
 * long header, which adds the system identifier, the segment size and the page
 * size as cross-checks. Both sizes are multiples of 8, so MAXALIGNed record
 * positions stay MAXALIGNed across page boundaries.
 *
 * Layout (little-endian, x86-64 / every platform Debian ships PG 15 for):
 *
 *   short (24 bytes)                       long (40 bytes) = short +
 *   0  uint16 xlp_magic   (0xD110 = PG15)  24 uint64 xlp_sysid
 *   2  uint16 xlp_info    (XLP_* flags)    32 uint32 xlp_seg_size
 *   4  uint32 xlp_tli                      36 uint32 xlp_xlog_blcksz
 *   8  uint64 xlp_pageaddr
 *   16 uint32 xlp_rem_len (bytes of a record continued from earlier pages)
 *   20 4 bytes padding (MAXALIGN)
 *
 * Readers and the writer live together (STYLE.md rule 6). The WAL decoder
 * (wal_stream_decoder.ts) and WAL synthesis (wal_synthesis.ts) both use this
 * module. `validatePageHeader` mirrors xlogreader.c's
 * XLogReaderValidatePageHeader check by check, and throws `StrataError`
 * ("corrupt_data") whose message names the page's LSN.
 */
import { StrataError } from "../../lib/errors.js";
import { formatLsn, lsn, XLOG_BLCKSZ, type Lsn } from "../../lib/lsn.js";

/** XLOG_PAGE_MAGIC of PostgreSQL 15 (changes with every WAL format version). */
export const XLOG_PAGE_MAGIC = 0xd110;
/** SizeOfXLogShortPHD: MAXALIGN(sizeof(XLogPageHeaderData)). */
export const SIZE_OF_XLOG_SHORT_PHD = 24;
/** SizeOfXLogLongPHD: MAXALIGN(sizeof(XLogLongPageHeaderData)). */
export const SIZE_OF_XLOG_LONG_PHD = 40;

/** A record continues from the previous page; xlp_rem_len says how much is left. */
export const XLP_FIRST_IS_CONTRECORD = 0x0001;
/** The page has the long header (normally only a segment's first page). */
export const XLP_LONG_HEADER = 0x0002;
/** Backup blocks starting on this page are optional (set when not in a base backup). */
export const XLP_BKP_REMOVABLE = 0x0004;
/** A missing continuation was replaced (CreateOverwriteContrecordRecord): drop the partial record. */
export const XLP_FIRST_IS_OVERWRITE_CONTRECORD = 0x0008;
/** XLP_ALL_FLAGS: any other bit in xlp_info makes the header invalid. */
export const XLP_ALL_FLAGS = 0x000f;

/** WalSegMinSize / WalSegMaxSize: initdb accepts powers of two in [1 MiB, 1 GiB]. */
export const WAL_SEG_MIN_SIZE_BYTES = 1024 * 1024;
export const WAL_SEG_MAX_SIZE_BYTES = 1024 * 1024 * 1024;

/** IsValidWalSegSize. */
export function isValidWalSegSize(sizeBytes: number): boolean {
  return (
    Number.isInteger(sizeBytes) &&
    sizeBytes >= WAL_SEG_MIN_SIZE_BYTES &&
    sizeBytes <= WAL_SEG_MAX_SIZE_BYTES &&
    (sizeBytes & (sizeBytes - 1)) === 0
  );
}

/** The extra fields of a long page header. */
export interface XLogLongPageHeaderFields {
  /** xlp_sysid: pg_control's system identifier. */
  readonly systemId: bigint;
  /** xlp_seg_size: the WAL segment size in bytes. */
  readonly segSizeBytes: number;
  /** xlp_xlog_blcksz: the WAL page size (8192). */
  readonly xlogBlckSz: number;
}

export interface XLogPageHeader {
  readonly magic: number;
  /** xlp_info flags (XLP_*). A long header has XLP_LONG_HEADER set. */
  readonly info: number;
  readonly tli: number;
  /** xlp_pageaddr: the LSN of the page's first byte. */
  readonly pageAddr: Lsn;
  /** xlp_rem_len: bytes still to come of a record started on an earlier page. */
  readonly remLen: number;
  /** Present iff `info & XLP_LONG_HEADER`. */
  readonly long?: XLogLongPageHeaderFields;
}

/** XLogPageHeaderSize: header size implied by the info flags. */
export function pageHeaderSize(info: number): number {
  return (info & XLP_LONG_HEADER) !== 0 ? SIZE_OF_XLOG_LONG_PHD : SIZE_OF_XLOG_SHORT_PHD;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Reads the page header at `bytes[offset]` without judging it (see
 * `validatePageHeader`). Needs 24 bytes, or 40 when XLP_LONG_HEADER is set;
 * throws "truncated" otherwise.
 */
export function parsePageHeader(bytes: Uint8Array, offset = 0): XLogPageHeader {
  if (offset < 0 || bytes.length - offset < SIZE_OF_XLOG_SHORT_PHD) {
    throw new StrataError(
      "truncated",
      `Cannot parse WAL page header at offset ${offset}: need ${SIZE_OF_XLOG_SHORT_PHD} bytes, have ${Math.max(0, bytes.length - offset)}`,
    );
  }
  const dv = view(bytes);
  const magic = dv.getUint16(offset, true);
  const info = dv.getUint16(offset + 2, true);
  const tli = dv.getUint32(offset + 4, true);
  const pageAddr = dv.getBigUint64(offset + 8, true) as Lsn;
  const remLen = dv.getUint32(offset + 16, true);
  if ((info & XLP_LONG_HEADER) === 0) return { magic, info, tli, pageAddr, remLen };
  if (bytes.length - offset < SIZE_OF_XLOG_LONG_PHD) {
    throw new StrataError(
      "truncated",
      `Cannot parse long WAL page header at ${formatLsn(pageAddr)} (offset ${offset}): need ${SIZE_OF_XLOG_LONG_PHD} bytes, have ${bytes.length - offset}`,
    );
  }
  return {
    magic,
    info,
    tli,
    pageAddr,
    remLen,
    long: {
      systemId: dv.getBigUint64(offset + 24, true),
      segSizeBytes: dv.getUint32(offset + 32, true),
      xlogBlckSz: dv.getUint32(offset + 36, true),
    },
  };
}

/**
 * Writes `hdr` at `target[offset]` (24 or 40 bytes, padding zeroed) and
 * returns the number of bytes written. XLP_LONG_HEADER in `info` and the
 * presence of `long` must agree.
 */
export function writePageHeader(target: Uint8Array, offset: number, hdr: XLogPageHeader): number {
  const isLong = (hdr.info & XLP_LONG_HEADER) !== 0;
  if (isLong !== (hdr.long !== undefined)) {
    throw new StrataError("invalid_argument", "writePageHeader: XLP_LONG_HEADER flag and long fields disagree");
  }
  const size = isLong ? SIZE_OF_XLOG_LONG_PHD : SIZE_OF_XLOG_SHORT_PHD;
  if (offset < 0 || target.length - offset < size) {
    throw new StrataError("invalid_argument", `writePageHeader: ${size} bytes do not fit at offset ${offset}`);
  }
  const dv = view(target);
  dv.setUint16(offset, hdr.magic, true);
  dv.setUint16(offset + 2, hdr.info, true);
  dv.setUint32(offset + 4, hdr.tli, true);
  dv.setBigUint64(offset + 8, hdr.pageAddr, true);
  dv.setUint32(offset + 16, hdr.remLen, true);
  dv.setUint32(offset + 20, 0, true);
  if (hdr.long) {
    dv.setBigUint64(offset + 24, hdr.long.systemId, true);
    dv.setUint32(offset + 32, hdr.long.segSizeBytes, true);
    dv.setUint32(offset + 36, hdr.long.xlogBlckSz, true);
  }
  return size;
}

/** Convenience: the header as a fresh 24- or 40-byte array. */
export function encodePageHeader(hdr: XLogPageHeader): Uint8Array {
  const out = new Uint8Array(pageHeaderSize(hdr.info));
  writePageHeader(out, 0, hdr);
  return out;
}

/**
 * The header a writer puts on the page starting at `pageAddr`: long on a
 * segment's first page, XLP_FIRST_IS_CONTRECORD iff `remLen > 0`.
 */
export function makePageHeader(opts: {
  pageAddr: Lsn;
  tli: number;
  remLen: number;
  walSegSizeBytes: number;
  systemId: bigint;
  /** Extra flags, e.g. XLP_BKP_REMOVABLE (PostgreSQL sets it on every page outside a base backup). */
  extraInfo?: number;
}): XLogPageHeader {
  const atSegmentStart = opts.pageAddr % BigInt(opts.walSegSizeBytes) === 0n;
  let info = opts.extraInfo ?? 0;
  if (opts.remLen > 0) info |= XLP_FIRST_IS_CONTRECORD;
  if (atSegmentStart) info |= XLP_LONG_HEADER;
  const base = { magic: XLOG_PAGE_MAGIC, info, tli: opts.tli, pageAddr: opts.pageAddr, remLen: opts.remLen };
  if (!atSegmentStart) return base;
  return { ...base, long: { systemId: opts.systemId, segSizeBytes: opts.walSegSizeBytes, xlogBlckSz: XLOG_BLCKSZ } };
}

export interface PageValidationOptions {
  walSegSizeBytes: number;
  /** If set, a long header must carry this system identifier. */
  systemId?: bigint;
  /** Timeline of the previous page read; the timeline may not go backwards. */
  previousTli?: number;
}

/**
 * XLogReaderValidatePageHeader: checks `hdr`, read from the page that starts
 * at `expectedPageAddr`, and throws StrataError("corrupt_data") naming that
 * LSN on the first failed check (magic, info bits, long-header fields,
 * missing long header at a segment start, pageaddr, timeline order).
 */
export function validatePageHeader(hdr: XLogPageHeader, expectedPageAddr: Lsn, opts: PageValidationOptions): void {
  const segOff = Number(expectedPageAddr % BigInt(opts.walSegSizeBytes));
  const fail = (what: string): never => {
    throw new StrataError("corrupt_data", `Invalid WAL page at ${formatLsn(expectedPageAddr)} (segment offset ${segOff}): ${what}`);
  };
  if (hdr.magic !== XLOG_PAGE_MAGIC) {
    fail(`invalid magic number ${hex4(hdr.magic)} (expected ${hex4(XLOG_PAGE_MAGIC)}, PostgreSQL 15)`);
  }
  if ((hdr.info & ~XLP_ALL_FLAGS) !== 0) fail(`invalid info bits ${hex4(hdr.info)}`);
  if ((hdr.info & XLP_LONG_HEADER) !== 0) {
    const long = hdr.long;
    if (!long) return fail("XLP_LONG_HEADER set but long header fields missing");
    if (opts.systemId !== undefined && opts.systemId !== 0n && long.systemId !== opts.systemId) {
      fail(`WAL is from a different database system: system identifier ${long.systemId}, expected ${opts.systemId}`);
    }
    if (long.segSizeBytes !== opts.walSegSizeBytes) {
      fail(`incorrect segment size ${long.segSizeBytes} in long page header (expected ${opts.walSegSizeBytes})`);
    }
    if (long.xlogBlckSz !== XLOG_BLCKSZ) {
      fail(`incorrect XLOG_BLCKSZ ${long.xlogBlckSz} in long page header (expected ${XLOG_BLCKSZ})`);
    }
  } else if (segOff === 0) {
    fail(`invalid info bits ${hex4(hdr.info)}: first page of a segment lacks XLP_LONG_HEADER`);
  }
  if (hdr.pageAddr !== expectedPageAddr) fail(`unexpected pageaddr ${formatLsn(hdr.pageAddr)}`);
  if (opts.previousTli !== undefined && hdr.tli < opts.previousTli) {
    fail(`out-of-sequence timeline ID ${hdr.tli} (after ${opts.previousTli})`);
  }
}

function hex4(v: number): string {
  return v.toString(16).toUpperCase().padStart(4, "0");
}

/** The page start for a byte offset: re-exported here so writers need one import. */
export function pageAddrOf(l: Lsn): Lsn {
  return lsn(l - (l % BigInt(XLOG_BLCKSZ)));
}
