/**
 * The record bodies the pageserver interprets itself, one module per
 * resource manager (xlog, xact, smgr, clog, dbase, multixact, relmap, heap),
 * and `parseRmgrRecord`, which dispatches a decoded record to its parser.
 *
 * Records of other resource managers (btree, hash, gin, ...) are opaque to
 * strata: they are stored per block and replayed by walredo, so
 * `parseRmgrRecord` returns undefined for them rather than failing.
 */
import type { DecodedRecord } from "../decoded_record.js";
import type { RecordBody } from "./body_reader.js";
import { parseClogRecord, RM_CLOG_ID, type ClogRecordBody } from "./clog.js";
import { parseDbaseRecord, RM_DBASE_ID, type DbaseRecordBody } from "./dbase.js";
import { parseHeap2Record, parseHeapRecord, RM_HEAP2_ID, RM_HEAP_ID, type Heap2RecordBody, type HeapRecordBody } from "./heap.js";
import { parseMultiXactRecord, RM_MULTIXACT_ID, type MultiXactRecordBody } from "./multixact.js";
import { parseRelmapRecord, RM_RELMAP_ID, type RelmapUpdate } from "./relmap.js";
import { parseSmgrRecord, RM_SMGR_ID, type SmgrRecordBody } from "./smgr.js";
import { parseXactRecord, RM_XACT_ID, type XactRecordBody } from "./xact.js";
import { parseXlogRecord, RM_XLOG_ID, type XlogRecordBody } from "./xlog.js";

export type ParsedRmgrRecord =
  | { rmgr: "XLOG"; body: XlogRecordBody }
  | { rmgr: "Transaction"; body: XactRecordBody }
  | { rmgr: "Storage"; body: SmgrRecordBody }
  | { rmgr: "CLOG"; body: ClogRecordBody }
  | { rmgr: "Database"; body: DbaseRecordBody }
  | { rmgr: "MultiXact"; body: MultiXactRecordBody }
  | { rmgr: "RelMap"; body: RelmapUpdate }
  | { rmgr: "Heap2"; body: Heap2RecordBody }
  | { rmgr: "Heap"; body: HeapRecordBody };

/**
 * Parses the main data of a record whose resource manager strata interprets
 * (names as pg_waldump prints them). Returns undefined for other rmgrs;
 * throws StrataError("corrupt_data") for a malformed body.
 */
export function parseRmgrRecord(record: RecordBody & Pick<DecodedRecord, "rmid">): ParsedRmgrRecord | undefined {
  switch (record.rmid) {
    case RM_XLOG_ID:
      return { rmgr: "XLOG", body: parseXlogRecord(record) };
    case RM_XACT_ID:
      return { rmgr: "Transaction", body: parseXactRecord(record) };
    case RM_SMGR_ID:
      return { rmgr: "Storage", body: parseSmgrRecord(record) };
    case RM_CLOG_ID:
      return { rmgr: "CLOG", body: parseClogRecord(record) };
    case RM_DBASE_ID:
      return { rmgr: "Database", body: parseDbaseRecord(record) };
    case RM_MULTIXACT_ID:
      return { rmgr: "MultiXact", body: parseMultiXactRecord(record) };
    case RM_RELMAP_ID:
      return { rmgr: "RelMap", body: parseRelmapRecord(record) };
    case RM_HEAP2_ID:
      return { rmgr: "Heap2", body: parseHeap2Record(record) };
    case RM_HEAP_ID:
      return { rmgr: "Heap", body: parseHeapRecord(record) };
    default:
      return undefined;
  }
}
