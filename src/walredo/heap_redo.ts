/**
 * Native (TypeScript) redo of the heap records that build freshly loaded
 * tables: HEAP INSERT, HEAP2 MULTI_INSERT (with or without INIT_PAGE) and the
 * heap-page half of HEAP2 VISIBLE, each exactly as PostgreSQL 15's
 * heap_xlog_insert / heap_xlog_multi_insert / heap_xlog_visible change the
 * target heap page.
 *
 * Why: a bulk load (COPY, pgbench -i, INSERT ... SELECT) writes one
 * MULTI_INSERT per heap page, usually followed by a VISIBLE record, and
 * nothing else touches those pages until they are next modified. Replaying
 * them through the redo helper costs a process round trip per page; a full
 * backup of a freshly loaded database is then bound by walredo. These three
 * routines are simple page edits (PageInit, PageAddItem with a synthesized
 * tuple header, pd_flags, pd_lsn) and cheap to do here.
 *
 * Exactness: the result must be byte-identical to what the helper (i.e.
 * PostgreSQL) produces, so every step below follows the C code:
 *   - PageInit zeroes the page and sets lower/upper/special/version;
 *   - the tuple is a zeroed 23-byte HeapTupleHeader (t_infomask2, t_infomask
 *     and t_hoff from the record; xmin = the record's XID; cmin = 0, which
 *     also clears HEAP_COMBOCID; t_ctid = (block, offset)) followed by the
 *     record's tuple bytes; only `size` bytes are copied to the page (the
 *     MAXALIGN padding keeps what was there, as memcpy leaves it);
 *   - PageAddItem(overwrite, is_heap) places it at pd_upper - MAXALIGN(size)
 *     and sets the line pointer (LP_NORMAL), growing pd_lower when the
 *     offset is new;
 *   - pd_lsn = the record's (MAXALIGNed) end; INSERT/MULTI_INSERT clear
 *     PD_ALL_VISIBLE for XLH_INSERT_ALL_VISIBLE_CLEARED, MULTI_INSERT sets it
 *     for XLH_INSERT_ALL_FROZEN_SET; VISIBLE sets it and bumps pd_lsn only
 *     when hint bits are WAL-logged (data checksums: the redo helper's stub
 *     mirrors that setting and runs with wal_log_hints off);
 *   - a record whose target page is at or past the record (pd_lsn >= end)
 *     is skipped (XLogReadBufferForRedo's BLK_DONE).
 * Anything PostgreSQL would PANIC on, or that this module does not model
 * (no base page for a non-init record, an all-zero base page, an
 * overwritten line pointer in use, malformed tuple data, speculative
 * inserts), returns undefined: the caller hands the record to the helper,
 * which either does what PostgreSQL does or reports the error.
 * Visibility-map pages are not this module's (native_redo.ts applies the VM
 * bit clearing; VISIBLE's VM half goes to the helper).
 *
 * Tested byte-for-byte against the helper on real PostgreSQL WAL
 * (heap_redo.test.ts).
 */
import { lsnAlign, type Lsn } from "../lib/lsn.js";
import { BLCKSZ, ITEM_ID_SIZE, PD_ALL_VISIBLE, PG_PAGE_LAYOUT_VERSION, SIZE_OF_PAGE_HEADER_DATA } from "../formats/page.js";
import { maxAlign } from "../formats/wal/rmgr/body_reader.js";
import type { BlockRef, DecodedRecord } from "../formats/wal/decoded_record.js";
import {
  RM_HEAP2_ID,
  RM_HEAP_ID,
  XLH_INSERT_ALL_FROZEN_SET,
  XLH_INSERT_ALL_VISIBLE_CLEARED,
  XLH_INSERT_IS_SPECULATIVE,
  XLOG_HEAP2_MULTI_INSERT,
  XLOG_HEAP2_VISIBLE,
  XLOG_HEAP_INIT_PAGE,
  XLOG_HEAP_INSERT,
  XLOG_HEAP_OPMASK,
} from "../formats/wal/rmgr/heap.js";

/** SizeofHeapTupleHeader (offsetof t_bits). */
const HEAP_TUPLE_HEADER_BYTES = 23;
/** MaxHeapTupleSize: BLCKSZ - MAXALIGN(page header + one line pointer). */
const MAX_HEAP_TUPLE_BYTES = BLCKSZ - 32;
/** MaxHeapTuplesPerPage: (BLCKSZ - page header) / (MAXALIGN(tuple header) + line pointer). */
const MAX_HEAP_TUPLES_PER_PAGE = 291;
/** SizeOfHeapHeader (xl_heap_header: t_infomask2, t_infomask, t_hoff). */
const HEAP_HEADER_BYTES = 5;
/** SizeOfMultiInsertTuple (xl_multi_insert_tuple: datalen, t_infomask2, t_infomask, t_hoff). */
const MULTI_INSERT_TUPLE_BYTES = 7;
/** SizeOfHeapInsert (xl_heap_insert: offnum, flags). */
const HEAP_INSERT_BYTES = 3;
/** SizeOfHeapMultiInsert (flags, pad, ntuples). */
const HEAP_MULTI_INSERT_BYTES = 4;
/** SizeOfHeapVisible (cutoff_xid, flags). */
const HEAP_VISIBLE_BYTES = 5;
/** t_infomask bit HeapTupleHeaderSetCmin clears. */
const HEAP_COMBOCID = 0x0020;
/** ItemIdData.lp_flags. */
const LP_UNUSED = 0;
const LP_NORMAL = 1;

/** Tuples up to this size are copied byte by byte: cheaper than a subarray view plus set for the ~100-byte rows of a bulk load. */
const SMALL_COPY_BYTES = 256;

const OFF_LSN = 0;
const OFF_FLAGS = 10;
const OFF_LOWER = 12;
const OFF_UPPER = 14;
const OFF_SPECIAL = 16;
const OFF_SIZE_VERSION = 18;

export interface HeapRedoOptions {
  /** Hint bits are WAL-logged (data checksums): VISIBLE then bumps pd_lsn. */
  readonly hintBitsLogged: boolean;
}

function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function pageLsn(v: DataView): bigint {
  return (BigInt(v.getUint32(OFF_LSN, true)) << 32n) | BigInt(v.getUint32(OFF_LSN + 4, true));
}

function setPageLsn(v: DataView, lsn: bigint): void {
  v.setUint32(OFF_LSN, Number(lsn >> 32n), true);
  v.setUint32(OFF_LSN + 4, Number(lsn & 0xffffffffn), true);
}

/** The value redo compares and stamps: the record's MAXALIGNed end (EndRecPtr). */
function recordEnd(record: DecodedRecord): bigint {
  return lsnAlign(record.endLsn, 8) as Lsn;
}

/** Whether a record (for the block `block` of it) is one this module replays. */
export function isNativeHeapRecord(record: DecodedRecord, block: BlockRef): boolean {
  if (block.forkNum !== 0) return false;
  if (record.rmid === RM_HEAP_ID) return (record.info & XLOG_HEAP_OPMASK) === XLOG_HEAP_INSERT && block.id === 0;
  if (record.rmid === RM_HEAP2_ID) {
    const op = record.info & XLOG_HEAP_OPMASK;
    if (op === XLOG_HEAP2_MULTI_INSERT) return block.id === 0;
    if (op === XLOG_HEAP2_VISIBLE) return block.id === 1;
  }
  return false;
}

/** PageInit (no special space) into `into` (or a new page). */
function initHeapPage(into: Uint8Array | undefined): Uint8Array {
  const page = into ?? new Uint8Array(BLCKSZ);
  page.fill(0);
  const v = dv(page);
  v.setUint16(OFF_LOWER, SIZE_OF_PAGE_HEADER_DATA, true);
  v.setUint16(OFF_UPPER, BLCKSZ, true);
  v.setUint16(OFF_SPECIAL, BLCKSZ, true);
  v.setUint16(OFF_SIZE_VERSION, BLCKSZ | PG_PAGE_LAYOUT_VERSION, true);
  return page;
}

/** PageGetMaxOffsetNumber. */
function maxOffset(v: DataView): number {
  const lower = v.getUint16(OFF_LOWER, true);
  return lower <= SIZE_OF_PAGE_HEADER_DATA ? 0 : (lower - SIZE_OF_PAGE_HEADER_DATA) / ITEM_ID_SIZE;
}

/**
 * PageAddItemExtended(page, tuple, offnum, PAI_OVERWRITE | PAI_IS_HEAP) for a
 * tuple built from a record: a zeroed header with the given fields, then
 * `data[dataStart, dataStart + dataLen)`. False where PostgreSQL would refuse
 * (and PANIC in redo).
 */
function addHeapTuple(
  page: Uint8Array, v: DataView, offnum: number, data: Uint8Array, dataStart: number, dataLen: number,
  infomask2: number, infomask: number, hoff: number, xid: number, blkno: number,
): boolean {
  const lower0 = v.getUint16(OFF_LOWER, true);
  const upper0 = v.getUint16(OFF_UPPER, true);
  const special = v.getUint16(OFF_SPECIAL, true);
  if (lower0 < SIZE_OF_PAGE_HEADER_DATA || lower0 > upper0 || upper0 > special || special > BLCKSZ) return false;
  const limit = maxOffset(v) + 1;
  if (offnum < 1 || offnum > limit || offnum > MAX_HEAP_TUPLES_PER_PAGE) return false;
  const itemOff = SIZE_OF_PAGE_HEADER_DATA + (offnum - 1) * ITEM_ID_SIZE;
  if (offnum < limit) {
    const lp = v.getUint32(itemOff, true);
    const flags = (lp >>> 15) & 3;
    const len = lp >>> 17;
    // ItemIdIsUsed || ItemIdHasStorage: PostgreSQL refuses to overwrite
    if (flags !== LP_UNUSED || len !== 0) return false;
  }
  const size = HEAP_TUPLE_HEADER_BYTES + dataLen;
  if (dataLen < 0 || size > MAX_HEAP_TUPLE_BYTES) return false;
  const lower = offnum === limit ? lower0 + ITEM_ID_SIZE : lower0;
  const upper = upper0 - maxAlign(size);
  if (lower > upper) return false;
  v.setUint32(itemOff, (upper | (LP_NORMAL << 15) | (size << 17)) >>> 0, true);
  // the tuple: every header byte (a zeroed header with these fields), then the record's bytes; padding untouched
  v.setUint32(upper, xid >>> 0, true); // t_xmin
  v.setUint32(upper + 4, 0, true); // t_xmax
  v.setUint32(upper + 8, 0, true); // t_cid = FirstCommandId
  v.setUint16(upper + 12, blkno >>> 16, true); // t_ctid.ip_blkid.bi_hi
  v.setUint16(upper + 14, blkno & 0xffff, true); // bi_lo
  v.setUint16(upper + 16, offnum, true); // ip_posid
  v.setUint16(upper + 18, infomask2, true);
  v.setUint16(upper + 20, infomask & ~HEAP_COMBOCID, true);
  page[upper + 22] = hoff;
  const to = upper + HEAP_TUPLE_HEADER_BYTES;
  if (dataLen <= SMALL_COPY_BYTES) {
    for (let i = 0; i < dataLen; i++) page[to + i] = data[dataStart + i]!;
  } else {
    page.set(data.subarray(dataStart, dataStart + dataLen), to);
  }
  v.setUint16(OFF_LOWER, lower, true);
  v.setUint16(OFF_UPPER, upper, true);
  return true;
}

/** A copy of the page before a non-init record (in `into`, or new), or undefined when redo would not find it (XLogReadBufferForRedo: BLK_NOTFOUND). */
function existingPage(page: Uint8Array | undefined, into: Uint8Array | undefined): Uint8Array | undefined {
  if (page === undefined || page.length !== BLCKSZ) return undefined;
  const v = dv(page);
  if (v.getUint16(OFF_UPPER, true) === 0) return undefined; // PageIsNew
  if (into === undefined) return new Uint8Array(page);
  into.set(page);
  return into;
}

function redoInsert(page: Uint8Array | undefined, record: DecodedRecord, block: BlockRef, into: Uint8Array | undefined): Uint8Array | undefined {
  const main = record.mainData;
  if (main.length < HEAP_INSERT_BYTES) return undefined;
  const mv = dv(main);
  const offnum = mv.getUint16(0, true);
  const flags = main[2]!;
  if ((flags & (XLH_INSERT_IS_SPECULATIVE | XLH_INSERT_ALL_FROZEN_SET)) !== 0) return undefined;
  const init = (record.info & XLOG_HEAP_INIT_PAGE) !== 0;
  const out = init ? initHeapPage(into) : existingPage(page, into);
  if (out === undefined) return undefined;
  const v = dv(out);
  const end = recordEnd(record);
  if (!init && end <= pageLsn(v)) return out; // BLK_DONE
  const data = block.data;
  if (data === undefined || data.length <= HEAP_HEADER_BYTES) return undefined;
  const dd = dv(data);
  if (maxOffset(v) + 1 < offnum) return undefined;
  if (!addHeapTuple(out, v, offnum, data, HEAP_HEADER_BYTES, data.length - HEAP_HEADER_BYTES, dd.getUint16(0, true), dd.getUint16(2, true), data[4]!, record.xid, block.blockNumber)) {
    return undefined;
  }
  setPageLsn(v, end);
  if ((flags & XLH_INSERT_ALL_VISIBLE_CLEARED) !== 0) v.setUint16(OFF_FLAGS, v.getUint16(OFF_FLAGS, true) & ~PD_ALL_VISIBLE, true);
  return out;
}

function redoMultiInsert(page: Uint8Array | undefined, record: DecodedRecord, block: BlockRef, into: Uint8Array | undefined): Uint8Array | undefined {
  const main = record.mainData;
  if (main.length < HEAP_MULTI_INSERT_BYTES) return undefined;
  const mv = dv(main);
  const flags = main[0]!;
  const ntuples = mv.getUint16(2, true);
  if ((flags & XLH_INSERT_ALL_VISIBLE_CLEARED) !== 0 && (flags & XLH_INSERT_ALL_FROZEN_SET) !== 0) return undefined;
  const init = (record.info & XLOG_HEAP_INIT_PAGE) !== 0;
  if (!init && main.length < HEAP_MULTI_INSERT_BYTES + 2 * ntuples) return undefined;
  const out = init ? initHeapPage(into) : existingPage(page, into);
  if (out === undefined) return undefined;
  const v = dv(out);
  const end = recordEnd(record);
  if (!init && end <= pageLsn(v)) return out; // BLK_DONE
  const data = block.data;
  if (data === undefined) return undefined;
  const dd = dv(data);
  let pos = 0;
  for (let i = 0; i < ntuples; i++) {
    const offnum = init ? 1 + i : mv.getUint16(HEAP_MULTI_INSERT_BYTES + 2 * i, true);
    if (maxOffset(v) + 1 < offnum) return undefined;
    pos = (pos + 1) & ~1; // SHORTALIGN (block data starts MAXALIGNed in the decoded record)
    if (pos + MULTI_INSERT_TUPLE_BYTES > data.length) return undefined;
    const datalen = dd.getUint16(pos, true);
    const infomask2 = dd.getUint16(pos + 2, true);
    const infomask = dd.getUint16(pos + 4, true);
    const hoff = data[pos + 6]!;
    pos += MULTI_INSERT_TUPLE_BYTES;
    if (pos + datalen > data.length) return undefined;
    if (!addHeapTuple(out, v, offnum, data, pos, datalen, infomask2, infomask, hoff, record.xid, block.blockNumber)) return undefined;
    pos += datalen;
  }
  if (pos !== data.length) return undefined; // "total tuple length mismatch"
  setPageLsn(v, end);
  const pdFlags = v.getUint16(OFF_FLAGS, true);
  if ((flags & XLH_INSERT_ALL_VISIBLE_CLEARED) !== 0) v.setUint16(OFF_FLAGS, pdFlags & ~PD_ALL_VISIBLE, true);
  if ((flags & XLH_INSERT_ALL_FROZEN_SET) !== 0) v.setUint16(OFF_FLAGS, pdFlags | PD_ALL_VISIBLE, true);
  return out;
}

function redoVisibleHeap(page: Uint8Array | undefined, record: DecodedRecord, opts: HeapRedoOptions, into: Uint8Array | undefined): Uint8Array | undefined {
  if (record.mainData.length < HEAP_VISIBLE_BYTES) return undefined;
  const out = existingPage(page, into);
  if (out === undefined) return undefined;
  const v = dv(out);
  const end = recordEnd(record);
  if (end <= pageLsn(v)) return out; // BLK_DONE
  v.setUint16(OFF_FLAGS, v.getUint16(OFF_FLAGS, true) | PD_ALL_VISIBLE, true);
  if (opts.hintBitsLogged) setPageLsn(v, end);
  return out;
}

/**
 * Applies `record` to the heap page `page` (block `block` of the record,
 * for which isNativeHeapRecord holds) and returns the new page, or
 * undefined when the record must go to the helper (see the module header).
 * `page` is never modified. The result is written into `into` when given
 * (a scratch page of the caller, distinct from `page`, whose contents are
 * then undefined on a decline), else into a new page.
 */
export function applyHeapRecord(page: Uint8Array | undefined, record: DecodedRecord, block: BlockRef, opts: HeapRedoOptions, into?: Uint8Array): Uint8Array | undefined {
  if (block.image?.apply === true) return undefined; // restored images are native_redo.ts's
  if (into !== undefined && (into.length !== BLCKSZ || into === page)) throw new Error("assertion failed: heap redo scratch page");
  if (record.rmid === RM_HEAP_ID) return redoInsert(page, record, block, into);
  const op = record.info & XLOG_HEAP_OPMASK;
  if (op === XLOG_HEAP2_MULTI_INSERT) return redoMultiInsert(page, record, block, into);
  if (op === XLOG_HEAP2_VISIBLE) return redoVisibleHeap(page, record, opts, into);
  return undefined;
}
