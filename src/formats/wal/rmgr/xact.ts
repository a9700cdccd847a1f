/**
 * XACT resource manager (RM_XACT_ID = 1): transaction commit/abort/prepare.
 *
 * The pageserver interprets these itself rather than replaying them: a commit
 * or abort sets the status bits of the top-level XID and its subtransactions
 * in clog pages (see clog.ts for the bit math), drops the relations the
 * transaction deleted, and PREPARE / COMMIT_PREPARED / ABORT_PREPARED create
 * and remove two-phase state.
 *
 * Layouts (src/include/access/xact.h, PostgreSQL 15):
 *
 *   xl_xact_commit / xl_xact_abort: xact_time TimestampTz (8 bytes), then, in
 *   this order and only when flagged:
 *     xinfo u32                 if xl_info & XLOG_XACT_HAS_INFO (0x80)
 *     dbinfo {dbId, tsId}        XACT_XINFO_HAS_DBINFO
 *     subxacts {n i32, xids[]}   XACT_XINFO_HAS_SUBXACTS
 *     relfilenodes {n, nodes[]}  XACT_XINFO_HAS_RELFILENODES (dropped relations)
 *     stats {n, {kind,db,obj}[]} XACT_XINFO_HAS_DROPPED_STATS
 *     invals {n, msgs[16]}       XACT_XINFO_HAS_INVALS (commit records only)
 *     twophase xid u32           XACT_XINFO_HAS_TWOPHASE
 *     gid, NUL-terminated        XACT_XINFO_HAS_GID (only after twophase)
 *     origin {lsn u64, ts i64}   XACT_XINFO_HAS_ORIGIN, *unaligned*
 *   All chunks before the GID are multiples of 4 bytes and need only 4-byte
 *   alignment, so they are read back to back with no padding.
 *
 *   PREPARE: the whole two-phase state file minus its CRC: TwoPhaseFileHeader
 *   (xl_xact_prepare, 72 bytes) then, each padded to MAXALIGN: gid (gidlen
 *   bytes incl. NUL), subxact XIDs, commit rels, abort rels, commit stats,
 *   abort stats, invalidation messages, then rmgr-specific 2PC records (locks,
 *   predicate locks, ...), which we do not parse.
 *
 *   ASSIGNMENT: xtop u32, nsubxacts i32, xsub[].
 *
 * Every count is checked against the bytes actually present before anything
 * is allocated for it.
 */
import { lsn, type Lsn } from "../../../lib/lsn.js";
import type { RelFileNode } from "../decoded_record.js";
import {
  BodyReader,
  describeRecord,
  maxAlign,
  readRelFileNode,
  SIZE_OF_REL_FILE_NODE,
  XLR_INFO_MASK,
  type RecordBody,
} from "./body_reader.js";
import { RM_XACT_ID } from "../rmgr_names.js";

/** Resource manager id(s), as rmgrlist.h numbers them (defined once, in rmgr_names.ts). */
export { RM_XACT_ID };

export const XLOG_XACT_COMMIT = 0x00;
export const XLOG_XACT_PREPARE = 0x10;
export const XLOG_XACT_ABORT = 0x20;
export const XLOG_XACT_COMMIT_PREPARED = 0x30;
export const XLOG_XACT_ABORT_PREPARED = 0x40;
export const XLOG_XACT_ASSIGNMENT = 0x50;
export const XLOG_XACT_INVALIDATIONS = 0x60;
/** Mask selecting the record type within xl_info. */
export const XLOG_XACT_OPMASK = 0x70;
/** xl_info bit: the commit/abort body carries an xinfo word. */
export const XLOG_XACT_HAS_INFO = 0x80;

export const XACT_XINFO_HAS_DBINFO = 1 << 0;
export const XACT_XINFO_HAS_SUBXACTS = 1 << 1;
export const XACT_XINFO_HAS_RELFILENODES = 1 << 2;
export const XACT_XINFO_HAS_INVALS = 1 << 3;
export const XACT_XINFO_HAS_TWOPHASE = 1 << 4;
export const XACT_XINFO_HAS_ORIGIN = 1 << 5;
export const XACT_XINFO_HAS_AE_LOCKS = 1 << 6;
export const XACT_XINFO_HAS_GID = 1 << 7;
export const XACT_XINFO_HAS_DROPPED_STATS = 1 << 8;
export const XACT_COMPLETION_APPLY_FEEDBACK = 1 << 29;
export const XACT_COMPLETION_UPDATE_RELCACHE_FILE = 1 << 30;
export const XACT_COMPLETION_FORCE_SYNC_COMMIT = 2 ** 31;

/** GIDSIZE: maximum GID length including the terminating NUL. */
export const GIDSIZE = 200;
/** TWOPHASE_MAGIC: format identifier of a two-phase state file / PREPARE body. */
export const TWOPHASE_MAGIC = 0x57f94534;
/** sizeof(xl_xact_prepare) == sizeof(TwoPhaseFileHeader). */
export const SIZE_OF_XACT_PREPARE = 72;
/** sizeof(SharedInvalidationMessage): a 16-byte union. */
export const SIZE_OF_SHARED_INVAL_MESSAGE = 16;
/** sizeof(xl_xact_stats_item): kind, dboid, objoid. */
export const SIZE_OF_XACT_STATS_ITEM = 12;
/** sizeof(xl_xact_origin). */
export const SIZE_OF_XACT_ORIGIN = 16;

/** A statistics entry dropped by the transaction (xl_xact_stats_item). */
export interface DroppedStatsItem {
  kind: number;
  dbOid: number;
  objOid: number;
}

/** COMMIT, COMMIT_PREPARED, ABORT, ABORT_PREPARED, parsed like ParseCommitRecord / ParseAbortRecord. */
export interface XactCompletion {
  type: "COMMIT" | "COMMIT_PREPARED" | "ABORT" | "ABORT_PREPARED";
  /** TimestampTz: microseconds since 2000-01-01 00:00 UTC. */
  xactTime: bigint;
  /** xinfo flags word, 0 if the record has none. */
  xinfo: number;
  /** MyDatabaseId / MyDatabaseTableSpace, present with XACT_XINFO_HAS_DBINFO. */
  dbInfo?: { dbId: number; tsId: number };
  subxacts: number[];
  /** Relations the transaction drops (commit) or whose creation it undoes (abort). */
  droppedRels: RelFileNode[];
  droppedStats: DroppedStatsItem[];
  /** Number of shared invalidation messages (commit only); the messages themselves are in `invalMessages`. */
  invalMessageCount: number;
  /** Raw SharedInvalidationMessage array (16 bytes each), a view into the body. */
  invalMessages: Uint8Array;
  /** XID of the prepared transaction, for *_PREPARED records (XACT_XINFO_HAS_TWOPHASE). */
  twophaseXid?: number;
  /** GID of the prepared transaction, when XACT_XINFO_HAS_GID. */
  twophaseGid?: string;
  /** Replication origin LSN and timestamp, when XACT_XINFO_HAS_ORIGIN. */
  origin?: { lsn: Lsn; timestamp: bigint };
}

/** PREPARE: the TwoPhaseFileHeader and the parts of the state that follow it. */
export interface XactPrepare {
  type: "PREPARE";
  magic: number;
  /** Length of the state file, including its 4-byte CRC (which the WAL record does not carry). */
  totalLength: number;
  xid: number;
  databaseOid: number;
  /** TimestampTz of PREPARE TRANSACTION. */
  preparedAt: bigint;
  ownerOid: number;
  initFileInval: boolean;
  gid: string;
  subxacts: number[];
  commitRels: RelFileNode[];
  abortRels: RelFileNode[];
  commitStats: DroppedStatsItem[];
  abortStats: DroppedStatsItem[];
  invalMessageCount: number;
  originLsn: Lsn;
  originTimestamp: bigint;
}

export interface XactAssignment {
  type: "ASSIGNMENT";
  xtop: number;
  subxacts: number[];
}

export interface XactInvalidations {
  type: "INVALIDATION";
  invalMessageCount: number;
  invalMessages: Uint8Array;
}

export type XactRecordBody = XactCompletion | XactPrepare | XactAssignment | XactInvalidations;

const XACT_TYPE_NAMES: Readonly<Record<number, string>> = {
  [XLOG_XACT_COMMIT]: "COMMIT",
  [XLOG_XACT_PREPARE]: "PREPARE",
  [XLOG_XACT_ABORT]: "ABORT",
  [XLOG_XACT_COMMIT_PREPARED]: "COMMIT_PREPARED",
  [XLOG_XACT_ABORT_PREPARED]: "ABORT_PREPARED",
  [XLOG_XACT_ASSIGNMENT]: "ASSIGNMENT",
  [XLOG_XACT_INVALIDATIONS]: "INVALIDATION",
};

/** pg_waldump's name for an XACT record type (xact_identify), or undefined. */
export function xactRecordTypeName(info: number): string | undefined {
  return XACT_TYPE_NAMES[info & XLOG_XACT_OPMASK];
}

function readXids(r: BodyReader, n: number, field: string): number[] {
  r.require(n * 4, field);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) out[i] = r.u32(field);
  return out;
}

function readRels(r: BodyReader, n: number, field: string): RelFileNode[] {
  r.require(n * SIZE_OF_REL_FILE_NODE, field);
  const out: RelFileNode[] = [];
  for (let i = 0; i < n; i++) out.push(readRelFileNode(r, `${field}[${i}]`));
  return out;
}

function readStats(r: BodyReader, n: number, field: string): DroppedStatsItem[] {
  r.require(n * SIZE_OF_XACT_STATS_ITEM, field);
  const out: DroppedStatsItem[] = [];
  for (let i = 0; i < n; i++) {
    out.push({ kind: r.i32(`${field}.kind`), dbOid: r.u32(`${field}.dboid`), objOid: r.u32(`${field}.objoid`) });
  }
  return out;
}

/** Reads an int32 count and checks it against the bytes left (each element `elemBytes`). */
function readCount(r: BodyReader, elemBytes: number, field: string): number {
  const n = r.i32(field);
  return r.count(n, Math.floor(r.remaining / elemBytes), field);
}

function parseCompletion(record: RecordBody, type: XactCompletion["type"], what: string | (() => string)): XactCompletion {
  const r = new BodyReader(record.mainData, what);
  const isCommit = type === "COMMIT" || type === "COMMIT_PREPARED";
  const xactTime = r.i64("xact_time");
  const xinfo = (record.info & XLOG_XACT_HAS_INFO) !== 0 ? r.u32("xinfo") : 0;
  const out: XactCompletion = {
    type,
    xactTime,
    xinfo,
    subxacts: [],
    droppedRels: [],
    droppedStats: [],
    invalMessageCount: 0,
    invalMessages: new Uint8Array(0),
  };
  if (xinfo & XACT_XINFO_HAS_DBINFO) {
    out.dbInfo = { dbId: r.u32("dbinfo.dbId"), tsId: r.u32("dbinfo.tsId") };
  }
  if (xinfo & XACT_XINFO_HAS_SUBXACTS) {
    const n = readCount(r, 4, "nsubxacts");
    out.subxacts = readXids(r, n, "subxacts");
  }
  if (xinfo & XACT_XINFO_HAS_RELFILENODES) {
    const n = readCount(r, SIZE_OF_REL_FILE_NODE, "nrels");
    out.droppedRels = readRels(r, n, "xnodes");
  }
  if (xinfo & XACT_XINFO_HAS_DROPPED_STATS) {
    const n = readCount(r, SIZE_OF_XACT_STATS_ITEM, "nitems");
    out.droppedStats = readStats(r, n, "stats");
  }
  // Abort records never carry invalidations (xl_xact_abort has no such part),
  // whatever the flag says; ParseAbortRecord ignores the bit too.
  if (isCommit && xinfo & XACT_XINFO_HAS_INVALS) {
    const n = readCount(r, SIZE_OF_SHARED_INVAL_MESSAGE, "nmsgs");
    out.invalMessageCount = n;
    out.invalMessages = r.bytesOf(n * SIZE_OF_SHARED_INVAL_MESSAGE, "msgs");
  }
  if (xinfo & XACT_XINFO_HAS_TWOPHASE) {
    out.twophaseXid = r.u32("twophase.xid");
    if (xinfo & XACT_XINFO_HAS_GID) out.twophaseGid = r.cString(GIDSIZE, "twophase_gid");
  }
  if (xinfo & XACT_XINFO_HAS_ORIGIN) {
    r.require(SIZE_OF_XACT_ORIGIN, "xl_xact_origin");
    out.origin = { lsn: lsn(r.u64("origin_lsn")), timestamp: r.i64("origin_timestamp") };
  }
  return out;
}

/** Parses a PREPARE body (TwoPhaseFileHeader and what follows), like ParsePrepareRecord. */
export function parsePrepare(data: Uint8Array, what: string | (() => string) = "XACT PREPARE record"): XactPrepare {
  const r = new BodyReader(data, what);
  r.require(SIZE_OF_XACT_PREPARE, "TwoPhaseFileHeader");
  const magic = r.u32("magic");
  if (magic !== TWOPHASE_MAGIC) {
    throw r.invalid(`TwoPhaseFileHeader magic 0x${magic.toString(16)}, expected 0x${TWOPHASE_MAGIC.toString(16)}`);
  }
  const totalLength = r.u32("total_len");
  const xid = r.u32("xid");
  const databaseOid = r.u32("database");
  const preparedAt = r.i64("prepared_at");
  const ownerOid = r.u32("owner");
  const nsubxacts = r.i32("nsubxacts");
  const ncommitrels = r.i32("ncommitrels");
  const nabortrels = r.i32("nabortrels");
  const ncommitstats = r.i32("ncommitstats");
  const nabortstats = r.i32("nabortstats");
  const ninvalmsgs = r.i32("ninvalmsgs");
  const initFileInval = r.bool("initfileinval");
  const gidlen = r.at(54).u16("gidlen");
  const originLsn = lsn(r.u64("origin_lsn"));
  const originTimestamp = r.i64("origin_timestamp");
  if (gidlen < 1 || gidlen > GIDSIZE) throw r.invalid(`gidlen ${gidlen} is outside [1, ${GIDSIZE}]`);

  // Each part is padded to MAXALIGN, as save_state_data writes it.
  r.at(maxAlign(SIZE_OF_XACT_PREPARE));
  const gidBytes = r.bytesOf(gidlen, "gid");
  const nul = gidBytes.indexOf(0);
  const gid = Buffer.from(gidBytes.buffer, gidBytes.byteOffset, nul < 0 ? gidlen : nul).toString("utf8");
  const section = <T>(count: number, elemBytes: number, field: string, read: (n: number) => T): T => {
    r.align(8);
    r.count(count, Math.floor(r.remaining / elemBytes), field);
    return read(count);
  };
  const subxacts = section(nsubxacts, 4, "nsubxacts", (n) => readXids(r, n, "subxacts"));
  const commitRels = section(ncommitrels, SIZE_OF_REL_FILE_NODE, "ncommitrels", (n) => readRels(r, n, "commitrels"));
  const abortRels = section(nabortrels, SIZE_OF_REL_FILE_NODE, "nabortrels", (n) => readRels(r, n, "abortrels"));
  const commitStats = section(ncommitstats, SIZE_OF_XACT_STATS_ITEM, "ncommitstats", (n) =>
    readStats(r, n, "commitstats"),
  );
  const abortStats = section(nabortstats, SIZE_OF_XACT_STATS_ITEM, "nabortstats", (n) =>
    readStats(r, n, "abortstats"),
  );
  section(ninvalmsgs, SIZE_OF_SHARED_INVAL_MESSAGE, "ninvalmsgs", (n) =>
    r.bytesOf(n * SIZE_OF_SHARED_INVAL_MESSAGE, "invalmsgs"),
  );
  return {
    type: "PREPARE",
    magic,
    totalLength,
    xid,
    databaseOid,
    preparedAt,
    ownerOid,
    initFileInval,
    gid,
    subxacts,
    commitRels,
    abortRels,
    commitStats,
    abortStats,
    invalMessageCount: ninvalmsgs,
    originLsn,
    originTimestamp,
  };
}

/** Decodes the body of any XACT record by its info bits. */
export function parseXactRecord(record: RecordBody): XactRecordBody {
  const op = record.info & XLOG_XACT_OPMASK;
  const name = XACT_TYPE_NAMES[op];
  // (built only for an error message: ingest parses every COMMIT, and formatting its LSN each time showed in profiles)
  const what = (): string => describeRecord(`XACT ${name ?? `info 0x${(record.info & ~XLR_INFO_MASK).toString(16)}`}`, record.lsn);
  switch (op) {
    case XLOG_XACT_COMMIT:
      return parseCompletion(record, "COMMIT", what);
    case XLOG_XACT_COMMIT_PREPARED:
      return parseCompletion(record, "COMMIT_PREPARED", what);
    case XLOG_XACT_ABORT:
      return parseCompletion(record, "ABORT", what);
    case XLOG_XACT_ABORT_PREPARED:
      return parseCompletion(record, "ABORT_PREPARED", what);
    case XLOG_XACT_PREPARE:
      return parsePrepare(record.mainData, what);
    case XLOG_XACT_ASSIGNMENT: {
      const r = new BodyReader(record.mainData, what);
      const xtop = r.u32("xtop");
      const n = readCount(r, 4, "nsubxacts");
      return { type: "ASSIGNMENT", xtop, subxacts: readXids(r, n, "xsub") };
    }
    case XLOG_XACT_INVALIDATIONS: {
      const r = new BodyReader(record.mainData, what);
      const n = readCount(r, SIZE_OF_SHARED_INVAL_MESSAGE, "nmsgs");
      return {
        type: "INVALIDATION",
        invalMessageCount: n,
        invalMessages: r.bytesOf(n * SIZE_OF_SHARED_INVAL_MESSAGE, "msgs"),
      };
    }
    default:
      throw new BodyReader(record.mainData, what).invalid(`unknown XACT record type (info 0x${record.info.toString(16)})`);
  }
}

/**
 * The XID whose fate a COMMIT/ABORT(_PREPARED) record decides: the prepared
 * transaction's XID for *_PREPARED records, else the record header's xl_xid.
 * Its subtransactions are `body.subxacts`.
 */
export function completedXid(recordXid: number, body: XactCompletion): number {
  return body.twophaseXid ?? recordXid;
}
