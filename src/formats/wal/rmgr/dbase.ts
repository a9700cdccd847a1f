/**
 * DBASE resource manager (RM_DBASE_ID = 4): CREATE DATABASE and DROP DATABASE.
 *
 * The pageserver applies these to its key space: CREATE_FILE_COPY copies every
 * relation of the source database (as of this LSN) into the new one;
 * CREATE_WAL_LOG only creates the database directory — the relation pages
 * follow as ordinary WAL (FPIs and relmap updates); DROP removes the
 * database's relations and directory in each listed tablespace.
 *
 * Layouts (src/include/commands/dbcommands_xlog.h, PostgreSQL 15):
 *   xl_dbase_create_file_copy_rec (16): db_id | tablespace_id | src_db_id | src_tablespace_id
 *   xl_dbase_create_wal_log_rec    (8): db_id | tablespace_id
 *   xl_dbase_drop_rec         (8 + 4n): db_id | ntablespaces i32 | tablespace_ids[n]
 */
import { BodyReader, describeRecord, XLR_INFO_MASK, type RecordBody } from "./body_reader.js";
import { RM_DBASE_ID } from "../rmgr_names.js";

/** Resource manager id(s), as rmgrlist.h numbers them (defined once, in rmgr_names.ts). */
export { RM_DBASE_ID };

export const XLOG_DBASE_CREATE_FILE_COPY = 0x00;
export const XLOG_DBASE_CREATE_WAL_LOG = 0x10;
export const XLOG_DBASE_DROP = 0x20;

export const SIZE_OF_DBASE_CREATE_FILE_COPY = 16;
export const SIZE_OF_DBASE_CREATE_WAL_LOG = 8;
export const MIN_SIZE_OF_DBASE_DROP = 8;

export type DbaseRecordBody =
  | { type: "CREATE_FILE_COPY"; dbId: number; tablespaceId: number; srcDbId: number; srcTablespaceId: number }
  | { type: "CREATE_WAL_LOG"; dbId: number; tablespaceId: number }
  | { type: "DROP"; dbId: number; tablespaceIds: number[] };

const DBASE_TYPE_NAMES: Readonly<Record<number, string>> = {
  [XLOG_DBASE_CREATE_FILE_COPY]: "CREATE_FILE_COPY",
  [XLOG_DBASE_CREATE_WAL_LOG]: "CREATE_WAL_LOG",
  [XLOG_DBASE_DROP]: "DROP",
};

/** pg_waldump's name for a DBASE record type (dbase_identify), or undefined. */
export function dbaseRecordTypeName(info: number): string | undefined {
  return DBASE_TYPE_NAMES[info & ~XLR_INFO_MASK];
}

export function parseDbaseRecord(record: RecordBody): DbaseRecordBody {
  const op = record.info & ~XLR_INFO_MASK;
  const what = describeRecord(`DBASE ${DBASE_TYPE_NAMES[op] ?? `info 0x${op.toString(16)}`}`, record.lsn);
  const r = new BodyReader(record.mainData, what);
  switch (op) {
    case XLOG_DBASE_CREATE_FILE_COPY: {
      r.require(SIZE_OF_DBASE_CREATE_FILE_COPY, "xl_dbase_create_file_copy_rec");
      const dbId = r.u32("db_id");
      const tablespaceId = r.u32("tablespace_id");
      const srcDbId = r.u32("src_db_id");
      const srcTablespaceId = r.u32("src_tablespace_id");
      return { type: "CREATE_FILE_COPY", dbId, tablespaceId, srcDbId, srcTablespaceId };
    }
    case XLOG_DBASE_CREATE_WAL_LOG: {
      r.require(SIZE_OF_DBASE_CREATE_WAL_LOG, "xl_dbase_create_wal_log_rec");
      const dbId = r.u32("db_id");
      const tablespaceId = r.u32("tablespace_id");
      return { type: "CREATE_WAL_LOG", dbId, tablespaceId };
    }
    case XLOG_DBASE_DROP: {
      r.require(MIN_SIZE_OF_DBASE_DROP, "xl_dbase_drop_rec");
      const dbId = r.u32("db_id");
      const n = r.count(r.i32("ntablespaces"), Math.floor(r.remaining / 4), "ntablespaces");
      const tablespaceIds: number[] = [];
      for (let i = 0; i < n; i++) tablespaceIds.push(r.u32("tablespace_ids"));
      return { type: "DROP", dbId, tablespaceIds };
    }
    default:
      throw r.invalid(`unknown DBASE record type (info 0x${record.info.toString(16)})`);
  }
}
