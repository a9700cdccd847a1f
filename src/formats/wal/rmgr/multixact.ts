/**
 * MULTIXACT resource manager (RM_MULTIXACT_ID = 6) and the layout of the two
 * multixact SLRUs (src/backend/access/transam/multixact.c, PostgreSQL 15).
 *
 * The pageserver applies these records itself: ZERO_OFF_PAGE / ZERO_MEM_PAGE
 * create zeroed pages, CREATE_ID writes the multixact's starting member
 * offset into pg_multixact/offsets and each member (XID + lock status) into
 * pg_multixact/members, TRUNCATE_ID removes old segments.
 *
 *   offsets: one u32 member offset per MultiXactId, 2048 per page;
 *     multi m is at page m / 2048, byte (m % 2048) * 4.
 *   members: groups of 20 bytes — 4 flag bytes (one status byte per member)
 *     then 4 XIDs — 409 groups (1636 members) per page, 12 bytes unused;
 *     member offset o is in page o / 1636, group (o / 4) % 409 at byte
 *     group * 20; its status byte is flags byte (o % 4), its XID at byte
 *     group * 20 + 4 + (o % 4) * 4.
 *   Both counters are unsigned 32-bit and wrap; MultiXactId 0 is invalid.
 *
 * Layouts (src/include/access/multixact.h):
 *   ZERO_*_PAGE: pageno i32
 *   xl_multixact_create (12 + 8n): mid u32 | moff u32 | nmembers i32 | {xid u32, status i32}[n]
 *   xl_multixact_truncate (20): oldestMultiDB | startTruncOff | endTruncOff | startTruncMemb | endTruncMemb
 */
import { StrataError } from "../../../lib/errors.js";
import { BodyReader, describeRecord, XLR_INFO_MASK, type RecordBody } from "./body_reader.js";
import { SLRU_PAGE_SIZE_BYTES } from "./slru.js";
import { RM_MULTIXACT_ID } from "../rmgr_names.js";

/** Resource manager id(s), as rmgrlist.h numbers them (defined once, in rmgr_names.ts). */
export { RM_MULTIXACT_ID };

export const XLOG_MULTIXACT_ZERO_OFF_PAGE = 0x00;
export const XLOG_MULTIXACT_ZERO_MEM_PAGE = 0x10;
export const XLOG_MULTIXACT_CREATE_ID = 0x20;
export const XLOG_MULTIXACT_TRUNCATE_ID = 0x30;

/** MultiXactStatus values. */
export const MULTIXACT_STATUS_FOR_KEY_SHARE = 0x00;
export const MULTIXACT_STATUS_FOR_SHARE = 0x01;
export const MULTIXACT_STATUS_FOR_NO_KEY_UPDATE = 0x02;
export const MULTIXACT_STATUS_FOR_UPDATE = 0x03;
export const MULTIXACT_STATUS_NO_KEY_UPDATE = 0x04;
export const MULTIXACT_STATUS_UPDATE = 0x05;
export const MAX_MULTIXACT_STATUS = MULTIXACT_STATUS_UPDATE;

/** pg_waldump's abbreviations of MultiXactStatus (out_member in mxactdesc.c). */
export const MULTIXACT_STATUS_NAMES: readonly string[] = ["keysh", "sh", "fornokeyupd", "forupd", "nokeyupd", "upd"];

export const FIRST_MULTIXACT_ID = 1;

/** sizeof(MultiXactOffset) = 4, so 2048 offsets per page. */
export const MULTIXACT_OFFSETS_PER_PAGE = SLRU_PAGE_SIZE_BYTES / 4;
export const MXACT_MEMBER_BITS_PER_XACT = 8;
export const MULTIXACT_FLAGBYTES_PER_GROUP = 4;
export const MULTIXACT_MEMBERS_PER_MEMBERGROUP = MULTIXACT_FLAGBYTES_PER_GROUP;
/** 4 XIDs + 4 flag bytes. */
export const MULTIXACT_MEMBERGROUP_SIZE = 4 * MULTIXACT_MEMBERS_PER_MEMBERGROUP + MULTIXACT_FLAGBYTES_PER_GROUP;
export const MULTIXACT_MEMBERGROUPS_PER_PAGE = Math.floor(SLRU_PAGE_SIZE_BYTES / MULTIXACT_MEMBERGROUP_SIZE);
export const MULTIXACT_MEMBERS_PER_PAGE = MULTIXACT_MEMBERGROUPS_PER_PAGE * MULTIXACT_MEMBERS_PER_MEMBERGROUP;

/** offsetof(xl_multixact_create, members). */
export const SIZE_OF_MULTIXACT_CREATE = 12;
/** sizeof(MultiXactMember): xid + status enum. */
export const SIZE_OF_MULTIXACT_MEMBER = 8;
export const SIZE_OF_MULTIXACT_TRUNCATE = 20;

export interface MultiXactMember {
  xid: number;
  /** MultiXactStatus (0..5). */
  status: number;
}

export type MultiXactRecordBody =
  | { type: "ZERO_OFF_PAGE"; pageno: number }
  | { type: "ZERO_MEM_PAGE"; pageno: number }
  | { type: "CREATE_ID"; mid: number; moff: number; members: MultiXactMember[] }
  | {
      type: "TRUNCATE_ID";
      oldestMultiDb: number;
      startTruncOff: number;
      endTruncOff: number;
      startTruncMemb: number;
      endTruncMemb: number;
    };

/** MultiXactIdToOffsetPage. */
export function multiXactOffsetPageOf(multi: number): number {
  return Math.floor(multi / MULTIXACT_OFFSETS_PER_PAGE);
}
/** Byte offset of the multixact's entry within its offsets page (MultiXactIdToOffsetEntry * 4). */
export function multiXactOffsetByteOf(multi: number): number {
  return (multi % MULTIXACT_OFFSETS_PER_PAGE) * 4;
}
/** MXOffsetToMemberPage. */
export function multiXactMemberPageOf(offset: number): number {
  return Math.floor(offset / MULTIXACT_MEMBERS_PER_PAGE);
}
/** MXOffsetToFlagsOffset: byte offset of the member's group (its flag word) within the page. */
export function multiXactMemberFlagsByteOf(offset: number): number {
  return (
    (Math.floor(offset / MULTIXACT_MEMBERS_PER_MEMBERGROUP) % MULTIXACT_MEMBERGROUPS_PER_PAGE) *
    MULTIXACT_MEMBERGROUP_SIZE
  );
}
/** MXOffsetToFlagsBitShift: shift of the member's status byte within the 32-bit flag word. */
export function multiXactMemberFlagsBitShiftOf(offset: number): number {
  return (offset % MULTIXACT_MEMBERS_PER_MEMBERGROUP) * MXACT_MEMBER_BITS_PER_XACT;
}
/** MXOffsetToMemberOffset: byte offset of the member's XID within the page. */
export function multiXactMemberXidByteOf(offset: number): number {
  return (
    multiXactMemberFlagsByteOf(offset) +
    MULTIXACT_FLAGBYTES_PER_GROUP +
    (offset % MULTIXACT_MEMBERS_PER_MEMBERGROUP) * 4
  );
}

function checkSlruPage(page: Uint8Array, what: string): DataView {
  if (page.length !== SLRU_PAGE_SIZE_BYTES) {
    throw new StrataError("invalid_argument", `${what} page is ${page.length} bytes, expected ${SLRU_PAGE_SIZE_BYTES}`);
  }
  return new DataView(page.buffer, page.byteOffset, page.byteLength);
}

/** Writes multixact `multi`'s starting member offset into its offsets page, in place. */
export function setMultiXactOffset(page: Uint8Array, multi: number, offset: number): void {
  checkSlruPage(page, "multixact offsets").setUint32(multiXactOffsetByteOf(multi), offset >>> 0, true);
}
export function getMultiXactOffset(page: Uint8Array, multi: number): number {
  return checkSlruPage(page, "multixact offsets").getUint32(multiXactOffsetByteOf(multi), true);
}

/** Writes one member (XID and status) at member offset `offset` into its members page, in place. */
export function setMultiXactMember(page: Uint8Array, offset: number, member: MultiXactMember): void {
  const v = checkSlruPage(page, "multixact members");
  if (member.status < 0 || member.status > MAX_MULTIXACT_STATUS) {
    throw new StrataError("invalid_argument", `multixact status ${member.status} is outside [0, ${MAX_MULTIXACT_STATUS}]`);
  }
  v.setUint32(multiXactMemberXidByteOf(offset), member.xid >>> 0, true);
  // The status is one byte of the little-endian flag word: byte index = shift / 8.
  page[multiXactMemberFlagsByteOf(offset) + multiXactMemberFlagsBitShiftOf(offset) / 8] = member.status;
}
export function getMultiXactMember(page: Uint8Array, offset: number): MultiXactMember {
  const v = checkSlruPage(page, "multixact members");
  const flags = v.getUint32(multiXactMemberFlagsByteOf(offset), true);
  return {
    xid: v.getUint32(multiXactMemberXidByteOf(offset), true),
    status: (flags >>> multiXactMemberFlagsBitShiftOf(offset)) & 0xff,
  };
}

const MULTIXACT_TYPE_NAMES: Readonly<Record<number, string>> = {
  [XLOG_MULTIXACT_ZERO_OFF_PAGE]: "ZERO_OFF_PAGE",
  [XLOG_MULTIXACT_ZERO_MEM_PAGE]: "ZERO_MEM_PAGE",
  [XLOG_MULTIXACT_CREATE_ID]: "CREATE_ID",
  [XLOG_MULTIXACT_TRUNCATE_ID]: "TRUNCATE_ID",
};

/** pg_waldump's name for a MULTIXACT record type (multixact_identify), or undefined. */
export function multiXactRecordTypeName(info: number): string | undefined {
  return MULTIXACT_TYPE_NAMES[info & ~XLR_INFO_MASK];
}

export function parseMultiXactRecord(record: RecordBody): MultiXactRecordBody {
  const op = record.info & ~XLR_INFO_MASK;
  const what = describeRecord(`MULTIXACT ${MULTIXACT_TYPE_NAMES[op] ?? `info 0x${op.toString(16)}`}`, record.lsn);
  const r = new BodyReader(record.mainData, what);
  switch (op) {
    case XLOG_MULTIXACT_ZERO_OFF_PAGE:
    case XLOG_MULTIXACT_ZERO_MEM_PAGE: {
      const pageno = r.i32("pageno");
      if (pageno < 0) throw r.invalid(`pageno ${pageno} is negative`);
      return { type: op === XLOG_MULTIXACT_ZERO_OFF_PAGE ? "ZERO_OFF_PAGE" : "ZERO_MEM_PAGE", pageno };
    }
    case XLOG_MULTIXACT_CREATE_ID: {
      r.require(SIZE_OF_MULTIXACT_CREATE, "xl_multixact_create");
      const mid = r.u32("mid");
      const moff = r.u32("moff");
      const n = r.i32("nmembers");
      if (mid === 0) throw r.invalid("mid is InvalidMultiXactId (0)");
      r.count(n, Math.floor(r.remaining / SIZE_OF_MULTIXACT_MEMBER), "nmembers");
      const members: MultiXactMember[] = [];
      for (let i = 0; i < n; i++) {
        const xid = r.u32("members.xid");
        const status = r.i32("members.status");
        if (status < 0 || status > MAX_MULTIXACT_STATUS) {
          throw r.invalid(`member ${i} status ${status} is outside [0, ${MAX_MULTIXACT_STATUS}]`);
        }
        members.push({ xid, status });
      }
      return { type: "CREATE_ID", mid, moff, members };
    }
    case XLOG_MULTIXACT_TRUNCATE_ID: {
      r.require(SIZE_OF_MULTIXACT_TRUNCATE, "xl_multixact_truncate");
      return {
        type: "TRUNCATE_ID",
        oldestMultiDb: r.u32("oldestMultiDB"),
        startTruncOff: r.u32("startTruncOff"),
        endTruncOff: r.u32("endTruncOff"),
        startTruncMemb: r.u32("startTruncMemb"),
        endTruncMemb: r.u32("endTruncMemb"),
      };
    }
    default:
      throw r.invalid(`unknown MULTIXACT record type (info 0x${record.info.toString(16)})`);
  }
}
