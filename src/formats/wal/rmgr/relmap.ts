/**
 * RELMAP resource manager (RM_RELMAP_ID = 7): relation-mapper file updates.
 *
 * Mapped catalogs (pg_class and friends) have no relfilenode in pg_class; the
 * mapping lives in `global/pg_filenode.map` (dbid 0, shared) or
 * `base/<db>/pg_filenode.map`. An UPDATE record carries the complete new
 * 512-byte file, which the pageserver stores under the relmap key of
 * (tsid, dbid) and writes out verbatim in base backups.
 *
 * Layout (src/include/utils/relmapper.h, PostgreSQL 15):
 *   xl_relmap_update: dbid u32 | tsid u32 | nbytes i32 | data[nbytes]
 * relmap_redo refuses any nbytes other than sizeof(RelMapFile) = 512, and so do we.
 */
import { BodyReader, describeRecord, XLR_INFO_MASK, type RecordBody } from "./body_reader.js";
import { RM_RELMAP_ID } from "../rmgr_names.js";

/** Resource manager id(s), as rmgrlist.h numbers them (defined once, in rmgr_names.ts). */
export { RM_RELMAP_ID };

export const XLOG_RELMAP_UPDATE = 0x00;

/** offsetof(xl_relmap_update, data). */
export const MIN_SIZE_OF_RELMAP_UPDATE = 12;
/** sizeof(RelMapFile): magic, count, 62 mappings of 8 bytes, CRC, pad. */
export const RELMAP_FILE_SIZE_BYTES = 512;
/** RELMAPPER_FILEMAGIC: first int32 of a relmapper file. */
export const RELMAPPER_FILEMAGIC = 0x592717;

export interface RelmapUpdate {
  type: "UPDATE";
  /** Database OID, 0 for the shared map. */
  dbId: number;
  /** Tablespace OID (pg_global 1664 for the shared map). */
  tsId: number;
  nbytes: number;
  /** The new relmapper file (a view into the record). */
  data: Uint8Array;
}

/** pg_waldump's name for a RELMAP record type (relmap_identify), or undefined. */
export function relmapRecordTypeName(info: number): string | undefined {
  return (info & ~XLR_INFO_MASK) === XLOG_RELMAP_UPDATE ? "UPDATE" : undefined;
}

export function parseRelmapRecord(record: RecordBody): RelmapUpdate {
  const op = record.info & ~XLR_INFO_MASK;
  const what = describeRecord(`RELMAP ${op === XLOG_RELMAP_UPDATE ? "UPDATE" : `info 0x${op.toString(16)}`}`, record.lsn);
  const r = new BodyReader(record.mainData, what);
  if (op !== XLOG_RELMAP_UPDATE) throw r.invalid(`unknown RELMAP record type (info 0x${record.info.toString(16)})`);
  r.require(MIN_SIZE_OF_RELMAP_UPDATE, "xl_relmap_update");
  const dbId = r.u32("dbid");
  const tsId = r.u32("tsid");
  const nbytes = r.i32("nbytes");
  if (nbytes !== RELMAP_FILE_SIZE_BYTES) {
    throw r.invalid(`nbytes ${nbytes}, a relmapper file is ${RELMAP_FILE_SIZE_BYTES} bytes`);
  }
  const data = r.bytesOf(nbytes, "data");
  return { type: "UPDATE", dbId, tsId, nbytes, data };
}
