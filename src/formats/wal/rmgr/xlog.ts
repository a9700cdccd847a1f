/**
 * XLOG resource manager (RM_XLOG_ID = 0): record types and body parsers.
 *
 * The pageserver interprets these itself: checkpoints carry the cluster-wide
 * counters (next XID/OID/multixact, oldest XIDs) that basebackup must write
 * into the generated pg_control and checkpoint record; NEXTOID advances the
 * OID counter between checkpoints; FPI / FPI_FOR_HINT are pure full-page
 * images (the image itself is in the block reference, restored by fpi.ts);
 * SWITCH ends a segment; the rest are parsed so ingest can log or skip them
 * knowingly.
 *
 * Layouts are PostgreSQL 15's (src/include/catalog/pg_control.h,
 * src/include/access/xlog_internal.h) on a 64-bit little-endian build:
 *
 *   CheckPoint (88 bytes, sizeof incl. tail padding)
 *     0 redo u64 | 8 ThisTimeLineID u32 | 12 PrevTimeLineID u32
 *     16 fullPageWrites bool | 17..23 pad | 24 nextXid u64 (FullTransactionId)
 *     32 nextOid | 36 nextMulti | 40 nextMultiOffset | 44 oldestXid
 *     48 oldestXidDB | 52 oldestMulti | 56 oldestMultiDB | 60 pad
 *     64 time i64 (pg_time_t, Unix seconds) | 72 oldestCommitTsXid
 *     76 newestCommitTsXid | 80 oldestActiveXid | 84..87 pad
 *
 * `encodeCheckPoint` is the writer of the same struct (basebackup needs a
 * shutdown checkpoint record and pg_control's checkPointCopy); padding bytes
 * are written as zeros, as PostgreSQL's MemSet'd structs have them.
 */
import { lsn, type Lsn } from "../../../lib/lsn.js";
import { BodyReader, describeRecord, XLR_INFO_MASK, type RecordBody } from "./body_reader.js";
import { RM_XLOG_ID } from "../rmgr_names.js";

/** Resource manager id(s), as rmgrlist.h numbers them (defined once, in rmgr_names.ts). */
export { RM_XLOG_ID };

export const XLOG_CHECKPOINT_SHUTDOWN = 0x00;
export const XLOG_CHECKPOINT_ONLINE = 0x10;
export const XLOG_NOOP = 0x20;
export const XLOG_NEXTOID = 0x30;
export const XLOG_SWITCH = 0x40;
export const XLOG_BACKUP_END = 0x50;
export const XLOG_PARAMETER_CHANGE = 0x60;
export const XLOG_RESTORE_POINT = 0x70;
export const XLOG_FPW_CHANGE = 0x80;
export const XLOG_END_OF_RECOVERY = 0x90;
export const XLOG_FPI_FOR_HINT = 0xa0;
export const XLOG_FPI = 0xb0;
/* 0xC0 is unused in PostgreSQL 15. */
export const XLOG_OVERWRITE_CONTRECORD = 0xd0;

/** sizeof(CheckPoint) on 64-bit builds (84 bytes of fields + 4 tail padding). */
export const SIZE_OF_CHECKPOINT = 88;
/** sizeof(xl_parameter_change): six ints and two bools, padded to 4. */
export const SIZE_OF_PARAMETER_CHANGE = 28;
/** MAXFNAMELEN: size of xl_restore_point.rp_name. */
export const RESTORE_POINT_NAME_BYTES = 64;
/** sizeof(xl_restore_point): TimestampTz + rp_name[64]. */
export const SIZE_OF_RESTORE_POINT = 8 + RESTORE_POINT_NAME_BYTES;
/** sizeof(xl_end_of_recovery): TimestampTz + two TimeLineIDs. */
export const SIZE_OF_END_OF_RECOVERY = 16;
/** sizeof(xl_overwrite_contrecord): XLogRecPtr + TimestampTz. */
export const SIZE_OF_OVERWRITE_CONTRECORD = 16;

/** wal_level values as stored in xl_parameter_change and pg_control. */
export const WAL_LEVEL_NAMES: Readonly<Record<number, string>> = { 0: "minimal", 1: "replica", 2: "logical" };

export interface CheckPoint {
  /** REDO start point: where replay starts for this checkpoint. */
  redo: Lsn;
  thisTimeLineId: number;
  prevTimeLineId: number;
  fullPageWrites: boolean;
  /** FullTransactionId: epoch in the high 32 bits, XID in the low 32. */
  nextXid: bigint;
  nextOid: number;
  nextMulti: number;
  nextMultiOffset: number;
  oldestXid: number;
  oldestXidDb: number;
  oldestMulti: number;
  oldestMultiDb: number;
  /** pg_time_t: seconds since the Unix epoch. */
  time: bigint;
  oldestCommitTsXid: number;
  newestCommitTsXid: number;
  oldestActiveXid: number;
}

/** Epoch half of a FullTransactionId. */
export function xidEpoch(full: bigint): number {
  return Number(full >> 32n);
}
/** 32-bit XID half of a FullTransactionId. */
export function xidOf(full: bigint): number {
  return Number(full & 0xffffffffn);
}

export interface ParameterChange {
  maxConnections: number;
  maxWorkerProcesses: number;
  maxWalSenders: number;
  maxPreparedXacts: number;
  maxLocksPerXact: number;
  /** 0 minimal, 1 replica, 2 logical (see WAL_LEVEL_NAMES). */
  walLevel: number;
  walLogHints: boolean;
  trackCommitTimestamp: boolean;
}

export type XlogRecordBody =
  | { type: "CHECKPOINT_SHUTDOWN" | "CHECKPOINT_ONLINE"; checkpoint: CheckPoint }
  | { type: "NOOP" }
  | { type: "NEXTOID"; nextOid: number }
  | { type: "SWITCH" }
  | { type: "BACKUP_END"; startLsn: Lsn }
  | { type: "PARAMETER_CHANGE"; params: ParameterChange }
  | { type: "RESTORE_POINT"; time: bigint; name: string }
  | { type: "FPW_CHANGE"; fullPageWrites: boolean }
  | { type: "END_OF_RECOVERY"; time: bigint; thisTimeLineId: number; prevTimeLineId: number }
  | { type: "FPI" }
  | { type: "FPI_FOR_HINT" }
  | { type: "OVERWRITE_CONTRECORD"; overwrittenLsn: Lsn; time: bigint };

const XLOG_TYPE_NAMES: Readonly<Record<number, string>> = {
  [XLOG_CHECKPOINT_SHUTDOWN]: "CHECKPOINT_SHUTDOWN",
  [XLOG_CHECKPOINT_ONLINE]: "CHECKPOINT_ONLINE",
  [XLOG_NOOP]: "NOOP",
  [XLOG_NEXTOID]: "NEXTOID",
  [XLOG_SWITCH]: "SWITCH",
  [XLOG_BACKUP_END]: "BACKUP_END",
  [XLOG_PARAMETER_CHANGE]: "PARAMETER_CHANGE",
  [XLOG_RESTORE_POINT]: "RESTORE_POINT",
  [XLOG_FPW_CHANGE]: "FPW_CHANGE",
  [XLOG_END_OF_RECOVERY]: "END_OF_RECOVERY",
  [XLOG_FPI_FOR_HINT]: "FPI_FOR_HINT",
  [XLOG_FPI]: "FPI",
  [XLOG_OVERWRITE_CONTRECORD]: "OVERWRITE_CONTRECORD",
};

/** pg_waldump's name for an XLOG record type (xlog_identify), or undefined if unknown. */
export function xlogRecordTypeName(info: number): string | undefined {
  return XLOG_TYPE_NAMES[info & ~XLR_INFO_MASK];
}

/** Parses a CheckPoint struct (the body of CHECKPOINT_SHUTDOWN / CHECKPOINT_ONLINE records). */
export function parseCheckPoint(data: Uint8Array, what = "CheckPoint"): CheckPoint {
  const r = new BodyReader(data, what);
  r.require(SIZE_OF_CHECKPOINT, "CheckPoint");
  const redo = lsn(r.u64("redo"));
  const thisTimeLineId = r.u32("ThisTimeLineID");
  const prevTimeLineId = r.u32("PrevTimeLineID");
  const fullPageWrites = r.bool("fullPageWrites");
  const nextXid = r.at(24).u64("nextXid");
  const nextOid = r.u32("nextOid");
  const nextMulti = r.u32("nextMulti");
  const nextMultiOffset = r.u32("nextMultiOffset");
  const oldestXid = r.u32("oldestXid");
  const oldestXidDb = r.u32("oldestXidDB");
  const oldestMulti = r.u32("oldestMulti");
  const oldestMultiDb = r.u32("oldestMultiDB");
  const time = r.at(64).i64("time");
  const oldestCommitTsXid = r.u32("oldestCommitTsXid");
  const newestCommitTsXid = r.u32("newestCommitTsXid");
  const oldestActiveXid = r.u32("oldestActiveXid");
  return {
    redo,
    thisTimeLineId,
    prevTimeLineId,
    fullPageWrites,
    nextXid,
    nextOid,
    nextMulti,
    nextMultiOffset,
    oldestXid,
    oldestXidDb,
    oldestMulti,
    oldestMultiDb,
    time,
    oldestCommitTsXid,
    newestCommitTsXid,
    oldestActiveXid,
  };
}

/** Writes a CheckPoint struct (88 bytes, padding zeroed). Inverse of parseCheckPoint. */
export function encodeCheckPoint(cp: CheckPoint): Uint8Array {
  const out = new Uint8Array(SIZE_OF_CHECKPOINT);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, cp.redo, true);
  v.setUint32(8, cp.thisTimeLineId, true);
  v.setUint32(12, cp.prevTimeLineId, true);
  v.setUint8(16, cp.fullPageWrites ? 1 : 0);
  v.setBigUint64(24, cp.nextXid, true);
  v.setUint32(32, cp.nextOid, true);
  v.setUint32(36, cp.nextMulti, true);
  v.setUint32(40, cp.nextMultiOffset, true);
  v.setUint32(44, cp.oldestXid, true);
  v.setUint32(48, cp.oldestXidDb, true);
  v.setUint32(52, cp.oldestMulti, true);
  v.setUint32(56, cp.oldestMultiDb, true);
  v.setBigInt64(64, cp.time, true);
  v.setUint32(72, cp.oldestCommitTsXid, true);
  v.setUint32(76, cp.newestCommitTsXid, true);
  v.setUint32(80, cp.oldestActiveXid, true);
  return out;
}

export function parseParameterChange(data: Uint8Array, what = "xl_parameter_change"): ParameterChange {
  const r = new BodyReader(data, what);
  r.require(SIZE_OF_PARAMETER_CHANGE, "xl_parameter_change");
  return {
    maxConnections: r.i32("MaxConnections"),
    maxWorkerProcesses: r.i32("max_worker_processes"),
    maxWalSenders: r.i32("max_wal_senders"),
    maxPreparedXacts: r.i32("max_prepared_xacts"),
    maxLocksPerXact: r.i32("max_locks_per_xact"),
    walLevel: r.i32("wal_level"),
    walLogHints: r.bool("wal_log_hints"),
    trackCommitTimestamp: r.bool("track_commit_timestamp"),
  };
}

/** Decodes the body of any XLOG record by its info bits. */
export function parseXlogRecord(record: RecordBody): XlogRecordBody {
  const info = record.info & ~XLR_INFO_MASK;
  const name = XLOG_TYPE_NAMES[info];
  const what = describeRecord(`XLOG ${name ?? `info 0x${info.toString(16)}`}`, record.lsn);
  const r = new BodyReader(record.mainData, what);
  switch (info) {
    case XLOG_CHECKPOINT_SHUTDOWN:
    case XLOG_CHECKPOINT_ONLINE:
      return {
        type: info === XLOG_CHECKPOINT_SHUTDOWN ? "CHECKPOINT_SHUTDOWN" : "CHECKPOINT_ONLINE",
        checkpoint: parseCheckPoint(record.mainData, what),
      };
    case XLOG_NOOP:
      return { type: "NOOP" };
    case XLOG_NEXTOID:
      return { type: "NEXTOID", nextOid: r.u32("nextOid") };
    case XLOG_SWITCH:
      return { type: "SWITCH" };
    case XLOG_BACKUP_END:
      return { type: "BACKUP_END", startLsn: lsn(r.u64("startpoint")) };
    case XLOG_PARAMETER_CHANGE:
      return { type: "PARAMETER_CHANGE", params: parseParameterChange(record.mainData, what) };
    case XLOG_RESTORE_POINT: {
      r.require(SIZE_OF_RESTORE_POINT, "xl_restore_point");
      const time = r.i64("rp_time");
      const name = r.cString(RESTORE_POINT_NAME_BYTES, "rp_name");
      return { type: "RESTORE_POINT", time, name };
    }
    case XLOG_FPW_CHANGE:
      return { type: "FPW_CHANGE", fullPageWrites: r.bool("fpw") };
    case XLOG_END_OF_RECOVERY: {
      r.require(SIZE_OF_END_OF_RECOVERY, "xl_end_of_recovery");
      const time = r.i64("end_time");
      const thisTimeLineId = r.u32("ThisTimeLineID");
      const prevTimeLineId = r.u32("PrevTimeLineID");
      return { type: "END_OF_RECOVERY", time, thisTimeLineId, prevTimeLineId };
    }
    case XLOG_FPI:
      return { type: "FPI" };
    case XLOG_FPI_FOR_HINT:
      return { type: "FPI_FOR_HINT" };
    case XLOG_OVERWRITE_CONTRECORD: {
      r.require(SIZE_OF_OVERWRITE_CONTRECORD, "xl_overwrite_contrecord");
      const overwrittenLsn = lsn(r.u64("overwritten_lsn"));
      const time = r.i64("overwrite_time");
      return { type: "OVERWRITE_CONTRECORD", overwrittenLsn, time };
    }
    default:
      throw r.invalid(`unknown XLOG record type (info 0x${record.info.toString(16)})`);
  }
}
