/**
 * SMGR resource manager (RM_SMGR_ID = 2): relation fork creation and truncation.
 *
 * The pageserver applies both itself: CREATE makes a fork exist with size 0
 * (in the relation directory and size keys), TRUNCATE cuts the main fork
 * and, per its flags, the FSM and visibility-map forks (whose new sizes are
 * derived from the heap size by the FSM / VM addressing rules).
 *
 * Layouts (src/include/catalog/storage_xlog.h, PostgreSQL 15):
 *   xl_smgr_create   (16 bytes): rnode RelFileNode (12) | forkNum i32
 *   xl_smgr_truncate (20 bytes): blkno u32 | rnode RelFileNode | flags i32
 */
import type { RelFileNode } from "../decoded_record.js";
import { BodyReader, describeRecord, readRelFileNode, XLR_INFO_MASK, type RecordBody } from "./body_reader.js";
import { RM_SMGR_ID } from "../rmgr_names.js";

/** Resource manager id(s), as rmgrlist.h numbers them (defined once, in rmgr_names.ts). */
export { RM_SMGR_ID };

export const XLOG_SMGR_CREATE = 0x10;
export const XLOG_SMGR_TRUNCATE = 0x20;

export const SMGR_TRUNCATE_HEAP = 0x0001;
export const SMGR_TRUNCATE_VM = 0x0002;
export const SMGR_TRUNCATE_FSM = 0x0004;
export const SMGR_TRUNCATE_ALL = SMGR_TRUNCATE_HEAP | SMGR_TRUNCATE_VM | SMGR_TRUNCATE_FSM;

export const SIZE_OF_SMGR_CREATE = 16;
export const SIZE_OF_SMGR_TRUNCATE = 20;

/** Fork numbers (ForkNumber in relpath.h). */
export const MAIN_FORKNUM = 0;
export const FSM_FORKNUM = 1;
export const VISIBILITYMAP_FORKNUM = 2;
export const INIT_FORKNUM = 3;
export const MAX_FORKNUM = INIT_FORKNUM;

export interface SmgrCreate {
  type: "CREATE";
  rel: RelFileNode;
  forkNum: number;
}

export interface SmgrTruncate {
  type: "TRUNCATE";
  /** New size of the truncated forks' heap, in blocks. */
  blkno: number;
  rel: RelFileNode;
  /** SMGR_TRUNCATE_* bits. */
  flags: number;
  truncateHeap: boolean;
  truncateVm: boolean;
  truncateFsm: boolean;
}

export type SmgrRecordBody = SmgrCreate | SmgrTruncate;

/** pg_waldump's name for an SMGR record type (smgr_identify), or undefined. */
export function smgrRecordTypeName(info: number): string | undefined {
  const op = info & ~XLR_INFO_MASK;
  return op === XLOG_SMGR_CREATE ? "CREATE" : op === XLOG_SMGR_TRUNCATE ? "TRUNCATE" : undefined;
}

export function parseSmgrRecord(record: RecordBody): SmgrRecordBody {
  const op = record.info & ~XLR_INFO_MASK;
  const what = describeRecord(`SMGR ${smgrRecordTypeName(op) ?? `info 0x${op.toString(16)}`}`, record.lsn);
  const r = new BodyReader(record.mainData, what);
  switch (op) {
    case XLOG_SMGR_CREATE: {
      r.require(SIZE_OF_SMGR_CREATE, "xl_smgr_create");
      const rel = readRelFileNode(r, "rnode");
      const forkNum = r.i32("forkNum");
      if (forkNum < 0 || forkNum > MAX_FORKNUM) throw r.invalid(`forkNum ${forkNum} is outside [0, ${MAX_FORKNUM}]`);
      return { type: "CREATE", rel, forkNum };
    }
    case XLOG_SMGR_TRUNCATE: {
      r.require(SIZE_OF_SMGR_TRUNCATE, "xl_smgr_truncate");
      const blkno = r.u32("blkno");
      const rel = readRelFileNode(r, "rnode");
      const flags = r.i32("flags");
      return {
        type: "TRUNCATE",
        blkno,
        rel,
        flags,
        truncateHeap: (flags & SMGR_TRUNCATE_HEAP) !== 0,
        truncateVm: (flags & SMGR_TRUNCATE_VM) !== 0,
        truncateFsm: (flags & SMGR_TRUNCATE_FSM) !== 0,
      };
    }
    default:
      throw r.invalid(`unknown SMGR record type (info 0x${record.info.toString(16)})`);
  }
}
