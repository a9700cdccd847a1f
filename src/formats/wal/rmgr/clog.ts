/**
 * CLOG resource manager (RM_CLOG_ID = 3) and the commit-log page layout.
 *
 * The pageserver keeps pg_xact pages as SLRU pages in its key space. It
 * interprets CLOG records itself (ZEROPAGE creates an all-zero page, TRUNCATE
 * removes segments before `pageno`) and it sets transaction status bits
 * itself when it ingests XACT commit/abort records — the redo process never
 * sees clog. The bit math lives here so both sides agree with clog.c:
 *
 *   2 status bits per XID, 4 XIDs per byte, 32768 XIDs per 8 KiB page;
 *   XID x is in page x / 32768, byte (x % 32768) / 4, at bit shift (x % 4) * 2.
 *
 * Layouts (src/include/access/clog.h, PostgreSQL 15):
 *   ZEROPAGE: pageno i32
 *   TRUNCATE: xl_clog_truncate (12 bytes): pageno i32 | oldestXact u32 | oldestXactDb u32
 */
import { StrataError } from "../../../lib/errors.js";
import { BodyReader, describeRecord, XLR_INFO_MASK, type RecordBody } from "./body_reader.js";
import { SLRU_PAGE_SIZE_BYTES } from "./slru.js";
import { RM_CLOG_ID } from "../rmgr_names.js";

/** Resource manager id(s), as rmgrlist.h numbers them (defined once, in rmgr_names.ts). */
export { RM_CLOG_ID };

export const CLOG_ZEROPAGE = 0x00;
export const CLOG_TRUNCATE = 0x10;

export const TRANSACTION_STATUS_IN_PROGRESS = 0x00;
export const TRANSACTION_STATUS_COMMITTED = 0x01;
export const TRANSACTION_STATUS_ABORTED = 0x02;
export const TRANSACTION_STATUS_SUB_COMMITTED = 0x03;

export const CLOG_BITS_PER_XACT = 2;
export const CLOG_XACTS_PER_BYTE = 4;
export const CLOG_XACTS_PER_PAGE = SLRU_PAGE_SIZE_BYTES * CLOG_XACTS_PER_BYTE;
export const CLOG_XACT_BITMASK = (1 << CLOG_BITS_PER_XACT) - 1;

export const SIZE_OF_CLOG_TRUNCATE = 12;

export type ClogRecordBody =
  | { type: "ZEROPAGE"; pageno: number }
  | { type: "TRUNCATE"; pageno: number; oldestXact: number; oldestXactDb: number };

/** TransactionIdToPage. */
export function clogPageOf(xid: number): number {
  return Math.floor(xid / CLOG_XACTS_PER_PAGE);
}
/** TransactionIdToByte: byte offset of the XID's status within its page. */
export function clogByteOf(xid: number): number {
  return Math.floor((xid % CLOG_XACTS_PER_PAGE) / CLOG_XACTS_PER_BYTE);
}
/** Bit shift of the XID's two status bits within its byte (TransactionIdToBIndex * bits). */
export function clogBitShiftOf(xid: number): number {
  return (xid % CLOG_XACTS_PER_BYTE) * CLOG_BITS_PER_XACT;
}

function checkClogPage(page: Uint8Array): void {
  if (page.length !== SLRU_PAGE_SIZE_BYTES) {
    throw new StrataError("invalid_argument", `clog page is ${page.length} bytes, expected ${SLRU_PAGE_SIZE_BYTES}`);
  }
}

/** Reads the status of `xid` from its clog page. */
export function getClogStatus(page: Uint8Array, xid: number): number {
  checkClogPage(page);
  return ((page[clogByteOf(xid)] ?? 0) >> clogBitShiftOf(xid)) & CLOG_XACT_BITMASK;
}

/** Sets the status of `xid` in its clog page, in place, as TransactionIdSetStatusBit does. */
export function setClogStatus(page: Uint8Array, xid: number, status: number): void {
  checkClogPage(page);
  if (status < 0 || status > CLOG_XACT_BITMASK) {
    throw new StrataError("invalid_argument", `clog status ${status} is outside [0, ${CLOG_XACT_BITMASK}]`);
  }
  const byte = clogByteOf(xid);
  const shift = clogBitShiftOf(xid);
  page[byte] = ((page[byte] ?? 0) & ~(CLOG_XACT_BITMASK << shift)) | (status << shift);
}

/** pg_waldump's name for a CLOG record type (clog_identify), or undefined. */
export function clogRecordTypeName(info: number): string | undefined {
  const op = info & ~XLR_INFO_MASK;
  return op === CLOG_ZEROPAGE ? "ZEROPAGE" : op === CLOG_TRUNCATE ? "TRUNCATE" : undefined;
}

export function parseClogRecord(record: RecordBody): ClogRecordBody {
  const op = record.info & ~XLR_INFO_MASK;
  const what = describeRecord(`CLOG ${clogRecordTypeName(op) ?? `info 0x${op.toString(16)}`}`, record.lsn);
  const r = new BodyReader(record.mainData, what);
  switch (op) {
    case CLOG_ZEROPAGE: {
      const pageno = r.i32("pageno");
      if (pageno < 0) throw r.invalid(`pageno ${pageno} is negative`);
      return { type: "ZEROPAGE", pageno };
    }
    case CLOG_TRUNCATE: {
      r.require(SIZE_OF_CLOG_TRUNCATE, "xl_clog_truncate");
      const pageno = r.i32("pageno");
      if (pageno < 0) throw r.invalid(`pageno ${pageno} is negative`);
      const oldestXact = r.u32("oldestXact");
      const oldestXactDb = r.u32("oldestXactDb");
      return { type: "TRUNCATE", pageno, oldestXact, oldestXactDb };
    }
    default:
      throw r.invalid(`unknown CLOG record type (info 0x${record.info.toString(16)})`);
  }
}
