/**
 * PostgreSQL 15 data pages (relation blocks): the page header and its checks.
 *
 * Every relation fork (heap, index, FSM, visibility map) is a sequence of
 * BLCKSZ (8 KiB) pages. Each starts with PageHeaderData (storage/bufpage.h):
 *
 *   offset size field
 *        0    8 pd_lsn              end of the last WAL record that changed the page;
 *                                   stored as two native uint32 halves, HIGH half first
 *        8    2 pd_checksum         data checksum (page_checksum.ts), 0 if checksums are off
 *       10    2 pd_flags            PD_HAS_FREE_LINES | PD_PAGE_FULL | PD_ALL_VISIBLE
 *       12    2 pd_lower            start of free space (end of the line pointer array)
 *       14    2 pd_upper            end of free space (start of tuple data)
 *       16    2 pd_special          start of the access method's special space
 *       18    2 pd_pagesize_version page size (high byte) | layout version 4 (low byte)
 *       20    4 pd_prune_xid        oldest prunable XID hint, 0 if none
 *       24  4*n pd_linp[]           line pointers (ItemIdData), n = (pd_lower - 24) / 4
 *
 * All fields are little-endian: strata, like the PostgreSQL it serves, runs
 * on x86_64/arm64 and the files are native-endian.
 *
 * A page whose pd_upper is 0 is "new" (never initialized); PostgreSQL accepts
 * it from disk only if every byte is zero. `validatePage` applies the same
 * rules as PageIsVerifiedExtended (bufpage.c) — plus the size/version byte
 * check, which PostgreSQL leaves to later users of the page — and reports a
 * bad page from outside as a StrataError (never an assert): pages come from
 * relation files, WAL full-page images, the redo process and the network.
 *
 * Functions here take a page as a Uint8Array view of exactly BLCKSZ bytes and
 * never copy it; setters modify the page in place.
 */
import { StrataError } from "../lib/errors.js";
import { lsn, type Lsn } from "../lib/lsn.js";
import { pageChecksum } from "./page_checksum.js";

/** BLCKSZ: the data page size this build of PostgreSQL (Debian's) uses. */
export const BLCKSZ = 8192;
/** SizeOfPageHeaderData: the fixed header before the line pointer array. */
export const SIZE_OF_PAGE_HEADER_DATA = 24;
/** sizeof(ItemIdData): one line pointer. */
export const ITEM_ID_SIZE = 4;
/** PG_PAGE_LAYOUT_VERSION: the layout version every page written since 8.3 carries. */
export const PG_PAGE_LAYOUT_VERSION = 4;
/** MAXIMUM_ALIGNOF on x86_64: pd_special must be a multiple of it. */
export const MAXALIGN_BYTES = 8;

export const PD_HAS_FREE_LINES = 0x0001;
export const PD_PAGE_FULL = 0x0002;
export const PD_ALL_VISIBLE = 0x0004;
/** OR of every defined pd_flags bit; any other bit set means a corrupt header. */
export const PD_VALID_FLAG_BITS = 0x0007;

const OFF_LSN_HI = 0;
const OFF_LSN_LO = 4;
const OFF_CHECKSUM = 8;
const OFF_FLAGS = 10;
const OFF_LOWER = 12;
const OFF_UPPER = 14;
const OFF_SPECIAL = 16;
const OFF_PAGESIZE_VERSION = 18;
const OFF_PRUNE_XID = 20;

/** PageHeaderData, decoded. `pageSize`/`layoutVersion` split pd_pagesize_version. */
export interface PageHeader {
  lsn: Lsn;
  checksum: number;
  flags: number;
  lower: number;
  upper: number;
  special: number;
  /** pd_pagesize_version & 0xFF00 (8192 on every valid page). */
  pageSize: number;
  /** pd_pagesize_version & 0x00FF (4 on every valid page). */
  layoutVersion: number;
  pruneXid: number;
}

function view(page: Uint8Array): DataView {
  return new DataView(page.buffer, page.byteOffset, page.byteLength);
}

function requireHeader(page: Uint8Array, what: string): void {
  if (page.byteLength < SIZE_OF_PAGE_HEADER_DATA) {
    throw new StrataError(
      "truncated",
      `Cannot ${what}: page has ${page.byteLength} bytes, the header alone needs ${SIZE_OF_PAGE_HEADER_DATA}`,
    );
  }
}

/** Decodes the 24-byte page header (bounds-checked; no validity checks). */
export function parsePageHeader(page: Uint8Array): PageHeader {
  requireHeader(page, "parse page header");
  const dv = view(page);
  const sizeVersion = dv.getUint16(OFF_PAGESIZE_VERSION, true);
  return {
    lsn: getPageLsn(page),
    checksum: dv.getUint16(OFF_CHECKSUM, true),
    flags: dv.getUint16(OFF_FLAGS, true),
    lower: dv.getUint16(OFF_LOWER, true),
    upper: dv.getUint16(OFF_UPPER, true),
    special: dv.getUint16(OFF_SPECIAL, true),
    pageSize: sizeVersion & 0xff00,
    layoutVersion: sizeVersion & 0x00ff,
    pruneXid: dv.getUint32(OFF_PRUNE_XID, true),
  };
}

/** Writes all header fields into the first 24 bytes of `page`. */
export function writePageHeader(page: Uint8Array, h: PageHeader): void {
  requireHeader(page, "write page header");
  const dv = view(page);
  setPageLsn(page, h.lsn);
  dv.setUint16(OFF_CHECKSUM, h.checksum, true);
  dv.setUint16(OFF_FLAGS, h.flags, true);
  dv.setUint16(OFF_LOWER, h.lower, true);
  dv.setUint16(OFF_UPPER, h.upper, true);
  dv.setUint16(OFF_SPECIAL, h.special, true);
  dv.setUint16(OFF_PAGESIZE_VERSION, (h.pageSize & 0xff00) | (h.layoutVersion & 0x00ff), true);
  dv.setUint32(OFF_PRUNE_XID, h.pruneXid, true);
}

/** PageGetLSN: pd_lsn as an LSN (high half stored first). */
export function getPageLsn(page: Uint8Array): Lsn {
  requireHeader(page, "read page LSN");
  const dv = view(page);
  const hi = BigInt(dv.getUint32(OFF_LSN_HI, true));
  const lo = BigInt(dv.getUint32(OFF_LSN_LO, true));
  return lsn((hi << 32n) | lo);
}

/** PageSetLSN. */
export function setPageLsn(page: Uint8Array, l: Lsn): void {
  requireHeader(page, "set page LSN");
  const dv = view(page);
  dv.setUint32(OFF_LSN_HI, Number(l >> 32n), true);
  dv.setUint32(OFF_LSN_LO, Number(l & 0xffffffffn), true);
}

/** pd_checksum as stored. */
export function getPageChecksumField(page: Uint8Array): number {
  requireHeader(page, "read pd_checksum");
  return view(page).getUint16(OFF_CHECKSUM, true);
}

export function setPageChecksumField(page: Uint8Array, checksum: number): void {
  requireHeader(page, "set pd_checksum");
  view(page).setUint16(OFF_CHECKSUM, checksum, true);
}

/** PageIsNew: pd_upper == 0, i.e. the page was never initialized. */
export function pageIsNew(page: Uint8Array): boolean {
  requireHeader(page, "test PageIsNew");
  return view(page).getUint16(OFF_UPPER, true) === 0;
}

/** True when every byte of the page is zero (what an extended-but-unwritten block reads as). */
export function pageIsAllZero(page: Uint8Array): boolean {
  // Compare 8 bytes at a time when the view is aligned, else byte by byte.
  if (page.byteOffset % 8 === 0 && page.byteLength % 8 === 0) {
    const words = new BigUint64Array(page.buffer, page.byteOffset, page.byteLength / 8);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
    return true;
  }
  for (let i = 0; i < page.byteLength; i++) if (page[i] !== 0) return false;
  return true;
}

/**
 * PageGetMaxOffsetNumber: how many line pointers the page has (0 for a page
 * whose pd_lower does not reach past the header, e.g. a new page).
 */
export function linePointerCount(page: Uint8Array): number {
  requireHeader(page, "count line pointers");
  const lower = view(page).getUint16(OFF_LOWER, true);
  if (lower <= SIZE_OF_PAGE_HEADER_DATA) return 0;
  return Math.floor((lower - SIZE_OF_PAGE_HEADER_DATA) / ITEM_ID_SIZE);
}

/**
 * PageInit: a fresh empty page with `specialSizeBytes` (MAXALIGNed) of
 * special space, LSN 0, no checksum.
 */
export function initPage(specialSizeBytes = 0): Uint8Array {
  const special = alignUp(specialSizeBytes, MAXALIGN_BYTES);
  if (special > BLCKSZ - SIZE_OF_PAGE_HEADER_DATA) {
    throw new StrataError("invalid_argument", `Cannot init page: special size ${specialSizeBytes} leaves no room for the header`);
  }
  const page = new Uint8Array(BLCKSZ);
  writePageHeader(page, {
    lsn: lsn(0),
    checksum: 0,
    flags: 0,
    lower: SIZE_OF_PAGE_HEADER_DATA,
    upper: BLCKSZ - special,
    special: BLCKSZ - special,
    pageSize: BLCKSZ,
    layoutVersion: PG_PAGE_LAYOUT_VERSION,
    pruneXid: 0,
  });
  return page;
}

function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

export interface ValidatePageOptions {
  /** Block number within the fork; needed (and mixed in) when verifying checksums. */
  blockNumber?: number;
  /** Verify pd_checksum (the cluster runs with data checksums). Requires `blockNumber`. */
  checksums?: boolean;
  /** Where the page came from, for the error message (e.g. "base/5/16384 block 7"). */
  context?: string;
}

/**
 * PageIsVerifiedExtended-like check of a page from outside. Returns normally
 * for a sane page (or an all-zero new page); throws StrataError "corrupt_data"
 * saying exactly which rule failed, or "invalid_argument" for a wrong size.
 */
export function validatePage(page: Uint8Array, opts: ValidatePageOptions = {}): void {
  const where = opts.context ?? (opts.blockNumber !== undefined ? `block ${opts.blockNumber}` : "page");
  if (page.byteLength !== BLCKSZ) {
    throw new StrataError("invalid_argument", `Invalid page (${where}): ${page.byteLength} bytes, expected ${BLCKSZ}`);
  }
  const h = parsePageHeader(page);
  if (h.upper === 0) {
    if (pageIsAllZero(page)) return;
    throw new StrataError("corrupt_data", `Invalid page (${where}): pd_upper is 0 (new page) but the page is not all zeros`);
  }
  const bad = headerProblem(h);
  if (bad !== null) throw new StrataError("corrupt_data", `Invalid page header (${where}): ${bad}`);
  if (opts.checksums) {
    if (opts.blockNumber === undefined) {
      throw new StrataError("invalid_argument", `Cannot verify checksum of ${where}: no block number given`);
    }
    const expected = pageChecksum(page, opts.blockNumber);
    if (expected !== h.checksum) {
      throw new StrataError(
        "corrupt_data",
        `Page checksum mismatch (${where}): stored ${h.checksum}, computed ${expected} for block ${opts.blockNumber}`,
      );
    }
  }
}

/** The first header rule `h` breaks, or null. Exposed for callers that want a boolean. */
export function headerProblem(h: PageHeader): string | null {
  if ((h.flags & ~PD_VALID_FLAG_BITS) !== 0) return `pd_flags 0x${h.flags.toString(16)} has undefined bits`;
  if (h.lower > h.upper) return `pd_lower ${h.lower} > pd_upper ${h.upper}`;
  if (h.upper > h.special) return `pd_upper ${h.upper} > pd_special ${h.special}`;
  if (h.special > BLCKSZ) return `pd_special ${h.special} > ${BLCKSZ}`;
  if (h.special % MAXALIGN_BYTES !== 0) return `pd_special ${h.special} is not MAXALIGNed`;
  if (h.pageSize !== BLCKSZ) return `page size ${h.pageSize} in pd_pagesize_version, expected ${BLCKSZ}`;
  if (h.layoutVersion !== PG_PAGE_LAYOUT_VERSION) {
    return `layout version ${h.layoutVersion} in pd_pagesize_version, expected ${PG_PAGE_LAYOUT_VERSION}`;
  }
  return null;
}
