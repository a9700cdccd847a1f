/**
 * Names of PostgreSQL 15's resource managers and of their record types,
 * exactly as pg_waldump prints them.
 *
 * The rmgr names come from `access/rmgrlist.h` (ids 0..21 are built in;
 * 128..255 are custom rmgrs, which pg_waldump calls `custom###`). Record-type
 * names are each rmgr's `rm_identify` (src/backend/access/rmgrdesc/*desc.c),
 * including its quirks: most switch on `info & ~XLR_INFO_MASK`, Transaction
 * on `info & XLOG_XACT_OPMASK` (0x70: 0x80 is "has xinfo"), and CommitTs and
 * ReplicationOrigin on the raw info byte (so a set XLR_* flag bit makes them
 * unknown). Some rmgrs spell out an init-page variant ("INSERT+INIT"). When
 * rm_identify knows no name, pg_waldump prints `UNKNOWN (%x)` of the rmgr
 * bits; `recordTypeName` returns the same.
 *
 * Kept as data tables so the dump tool, ingest diagnostics and metrics share
 * one spelling.
 */
import { RM_MAX_BUILTIN_ID, RM_MIN_CUSTOM_ID, XLR_INFO_MASK } from "./xlog_record.js";

export const RM_XLOG_ID = 0;
export const RM_XACT_ID = 1;
export const RM_SMGR_ID = 2;
export const RM_CLOG_ID = 3;
export const RM_DBASE_ID = 4;
export const RM_TBLSPC_ID = 5;
export const RM_MULTIXACT_ID = 6;
export const RM_RELMAP_ID = 7;
export const RM_STANDBY_ID = 8;
export const RM_HEAP2_ID = 9;
export const RM_HEAP_ID = 10;
export const RM_BTREE_ID = 11;
export const RM_HASH_ID = 12;
export const RM_GIN_ID = 13;
export const RM_GIST_ID = 14;
export const RM_SEQ_ID = 15;
export const RM_SPGIST_ID = 16;
export const RM_BRIN_ID = 17;
export const RM_COMMIT_TS_ID = 18;
export const RM_REPLORIGIN_ID = 19;
export const RM_GENERIC_ID = 20;
export const RM_LOGICALMSG_ID = 21;

/** rm_name of the built-in rmgrs, indexed by id (rmgrlist.h order). */
export const RMGR_NAMES: readonly string[] = [
  "XLOG",
  "Transaction",
  "Storage",
  "CLOG",
  "Database",
  "Tablespace",
  "MultiXact",
  "RelMap",
  "Standby",
  "Heap2",
  "Heap",
  "Btree",
  "Hash",
  "Gin",
  "Gist",
  "Sequence",
  "SPGist",
  "BRIN",
  "CommitTs",
  "ReplicationOrigin",
  "Generic",
  "LogicalMessage",
];

/** The rmgr name pg_waldump prints for `rmid`. */
export function rmgrName(rmid: number): string {
  if (rmid >= 0 && rmid <= RM_MAX_BUILTIN_ID) return RMGR_NAMES[rmid]!;
  if (rmid >= RM_MIN_CUSTOM_ID && rmid <= 255) return `custom${String(rmid).padStart(3, "0")}`;
  return `unknown${rmid}`;
}

type Table = Readonly<Record<number, string>>;

/** How an rmgr's rm_identify picks the value it switches on. */
interface Identify {
  readonly mask: number;
  readonly names: Table;
}

const RMGR_BITS = ~XLR_INFO_MASK & 0xff;
const XLOG_HEAP_INIT_PAGE = 0x80;

const IDENTIFY: Readonly<Record<number, Identify>> = {
  [RM_XLOG_ID]: {
    mask: RMGR_BITS,
    names: {
      0x00: "CHECKPOINT_SHUTDOWN",
      0x10: "CHECKPOINT_ONLINE",
      0x20: "NOOP",
      0x30: "NEXTOID",
      0x40: "SWITCH",
      0x50: "BACKUP_END",
      0x60: "PARAMETER_CHANGE",
      0x70: "RESTORE_POINT",
      0x80: "FPW_CHANGE",
      0x90: "END_OF_RECOVERY",
      0xa0: "FPI_FOR_HINT",
      0xb0: "FPI",
      0xd0: "OVERWRITE_CONTRECORD",
    },
  },
  [RM_XACT_ID]: {
    mask: 0x70, // XLOG_XACT_OPMASK
    names: {
      0x00: "COMMIT",
      0x10: "PREPARE",
      0x20: "ABORT",
      0x30: "COMMIT_PREPARED",
      0x40: "ABORT_PREPARED",
      0x50: "ASSIGNMENT",
      0x60: "INVALIDATION",
    },
  },
  [RM_SMGR_ID]: { mask: RMGR_BITS, names: { 0x10: "CREATE", 0x20: "TRUNCATE" } },
  [RM_CLOG_ID]: { mask: RMGR_BITS, names: { 0x00: "ZEROPAGE", 0x10: "TRUNCATE" } },
  [RM_DBASE_ID]: { mask: RMGR_BITS, names: { 0x00: "CREATE_FILE_COPY", 0x10: "CREATE_WAL_LOG", 0x20: "DROP" } },
  [RM_TBLSPC_ID]: { mask: RMGR_BITS, names: { 0x00: "CREATE", 0x10: "DROP" } },
  [RM_MULTIXACT_ID]: {
    mask: RMGR_BITS,
    names: { 0x00: "ZERO_OFF_PAGE", 0x10: "ZERO_MEM_PAGE", 0x20: "CREATE_ID", 0x30: "TRUNCATE_ID" },
  },
  [RM_RELMAP_ID]: { mask: RMGR_BITS, names: { 0x00: "UPDATE" } },
  [RM_STANDBY_ID]: { mask: RMGR_BITS, names: { 0x00: "LOCK", 0x10: "RUNNING_XACTS", 0x20: "INVALIDATIONS" } },
  [RM_HEAP2_ID]: {
    mask: RMGR_BITS,
    names: {
      0x00: "REWRITE",
      0x10: "PRUNE",
      0x20: "VACUUM",
      0x30: "FREEZE_PAGE",
      0x40: "VISIBLE",
      0x50: "MULTI_INSERT",
      [0x50 | XLOG_HEAP_INIT_PAGE]: "MULTI_INSERT+INIT",
      0x60: "LOCK_UPDATED",
      0x70: "NEW_CID",
    },
  },
  [RM_HEAP_ID]: {
    mask: RMGR_BITS,
    names: {
      0x00: "INSERT",
      [0x00 | XLOG_HEAP_INIT_PAGE]: "INSERT+INIT",
      0x10: "DELETE",
      0x20: "UPDATE",
      [0x20 | XLOG_HEAP_INIT_PAGE]: "UPDATE+INIT",
      0x30: "TRUNCATE",
      0x40: "HOT_UPDATE",
      [0x40 | XLOG_HEAP_INIT_PAGE]: "HOT_UPDATE+INIT",
      0x50: "HEAP_CONFIRM",
      0x60: "LOCK",
      0x70: "INPLACE",
    },
  },
  [RM_BTREE_ID]: {
    mask: RMGR_BITS,
    names: {
      0x00: "INSERT_LEAF",
      0x10: "INSERT_UPPER",
      0x20: "INSERT_META",
      0x30: "SPLIT_L",
      0x40: "SPLIT_R",
      0x50: "INSERT_POST",
      0x60: "DEDUP",
      0x70: "DELETE",
      0x80: "UNLINK_PAGE",
      0x90: "UNLINK_PAGE_META",
      0xa0: "NEWROOT",
      0xb0: "MARK_PAGE_HALFDEAD",
      0xc0: "VACUUM",
      0xd0: "REUSE_PAGE",
      0xe0: "META_CLEANUP",
    },
  },
  [RM_HASH_ID]: {
    mask: RMGR_BITS,
    names: {
      0x00: "INIT_META_PAGE",
      0x10: "INIT_BITMAP_PAGE",
      0x20: "INSERT",
      0x30: "ADD_OVFL_PAGE",
      0x40: "SPLIT_ALLOCATE_PAGE",
      0x50: "SPLIT_PAGE",
      0x60: "SPLIT_COMPLETE",
      0x70: "MOVE_PAGE_CONTENTS",
      0x80: "SQUEEZE_PAGE",
      0x90: "DELETE",
      0xa0: "SPLIT_CLEANUP",
      0xb0: "UPDATE_META_PAGE",
      0xc0: "VACUUM_ONE_PAGE",
    },
  },
  [RM_GIN_ID]: {
    mask: RMGR_BITS,
    names: {
      0x10: "CREATE_PTREE",
      0x20: "INSERT",
      0x30: "SPLIT",
      0x40: "VACUUM_PAGE",
      0x50: "DELETE_PAGE",
      0x60: "UPDATE_META_PAGE",
      0x70: "INSERT_LISTPAGE",
      0x80: "DELETE_LISTPAGE",
      0x90: "VACUUM_DATA_LEAF_PAGE",
    },
  },
  [RM_GIST_ID]: {
    mask: RMGR_BITS,
    names: { 0x00: "PAGE_UPDATE", 0x10: "DELETE", 0x20: "PAGE_REUSE", 0x30: "PAGE_SPLIT", 0x60: "PAGE_DELETE", 0x70: "ASSIGN_LSN" },
  },
  [RM_SEQ_ID]: { mask: RMGR_BITS, names: { 0x00: "LOG" } },
  [RM_SPGIST_ID]: {
    mask: RMGR_BITS,
    names: {
      0x10: "ADD_LEAF",
      0x20: "MOVE_LEAFS",
      0x30: "ADD_NODE",
      0x40: "SPLIT_TUPLE",
      0x50: "PICKSPLIT",
      0x60: "VACUUM_LEAF",
      0x70: "VACUUM_ROOT",
      0x80: "VACUUM_REDIRECT",
    },
  },
  [RM_BRIN_ID]: {
    mask: RMGR_BITS,
    names: {
      0x00: "CREATE_INDEX",
      0x10: "INSERT",
      [0x10 | 0x80]: "INSERT+INIT",
      0x20: "UPDATE",
      [0x20 | 0x80]: "UPDATE+INIT",
      0x30: "SAMEPAGE_UPDATE",
      0x40: "REVMAP_EXTEND",
      0x50: "DESUMMARIZE",
    },
  },
  // commit_ts_identify and replorigin_identify switch on the whole info byte.
  [RM_COMMIT_TS_ID]: { mask: 0xff, names: { 0x00: "ZEROPAGE", 0x10: "TRUNCATE" } },
  [RM_REPLORIGIN_ID]: { mask: 0xff, names: { 0x00: "SET", 0x10: "DROP" } },
  [RM_LOGICALMSG_ID]: { mask: RMGR_BITS, names: { 0x00: "MESSAGE" } },
};

/**
 * rm_identify(info) for `rmid`, or undefined where PostgreSQL returns NULL
 * (unknown info bits, custom rmgrs).
 */
export function identifyRecord(rmid: number, info: number): string | undefined {
  if (rmid === RM_GENERIC_ID) return "Generic";
  const id = IDENTIFY[rmid];
  if (!id) return undefined;
  return id.names[info & id.mask];
}

/** The record type as pg_waldump prints it: rm_identify's name or `UNKNOWN (%x)`. */
export function recordTypeName(rmid: number, info: number): string {
  return identifyRecord(rmid, info) ?? `UNKNOWN (${(info & RMGR_BITS).toString(16)})`;
}

/** pg_waldump's fork names (common/relpath.c forkNames). */
export const FORK_NAMES: readonly string[] = ["main", "fsm", "vm", "init"];
