/**
 * HEAP (RM_HEAP_ID = 10) and HEAP2 (RM_HEAP2_ID = 9) resource managers:
 * record types, fixed-part parsers and the visibility-map side effects.
 *
 * Heap records are replayed by the walredo process for the heap pages they
 * reference. But several of them *also* clear bits in the relation's
 * visibility-map fork, in a VM page the record does not reference as a block
 * (heap_xlog_insert & co. call visibilitymap_clear on a page they look up
 * themselves). A pageserver that replays one block at a time must therefore
 * turn those side effects into explicit "clear VM bits" updates of the VM
 * page itself; `heapVmClears` says which, exactly as PostgreSQL 15's redo
 * routines (src/backend/access/heap/heapam.c) decide:
 *
 *   HEAP INSERT         XLH_INSERT_ALL_VISIBLE_CLEARED      block 0       both bits
 *   HEAP2 MULTI_INSERT  XLH_INSERT_ALL_VISIBLE_CLEARED      block 0       both bits
 *   HEAP DELETE         XLH_DELETE_ALL_VISIBLE_CLEARED      block 0       both bits
 *   HEAP (HOT_)UPDATE   XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED  block 1 if present, else block 0   both bits
 *                       XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED  block 0       both bits
 *   HEAP LOCK           XLH_LOCK_ALL_FROZEN_CLEARED         block 0       all-frozen only
 *   HEAP2 LOCK_UPDATED  XLH_LOCK_ALL_FROZEN_CLEARED         block 0       all-frozen only
 *
 * (HEAP2 VISIBLE *sets* bits; it references the VM page as block 0 and the
 * heap page as block 1, so ordinary per-block replay covers it.)
 *
 * The clear happens in redo whether or not the heap page itself is restored
 * from a full-page image, so ingest must apply it for every such record.
 *
 * Fixed-part layouts (src/include/access/heapam_xlog.h, offsets in bytes):
 *   xl_heap_insert (3): offnum u16 | flags u8
 *   xl_heap_delete (8): xmax u32 | offnum u16 | infobits_set u8 | flags u8
 *   xl_heap_update (14): old_xmax u32 | old_offnum u16 | old_infobits_set u8 | flags u8 | new_xmax u32 | new_offnum u16
 *   xl_heap_truncate (12 + 4n): dbId u32 | nrelids u32 | flags u8 | pad | relids[]
 *   xl_heap_confirm / xl_heap_inplace (2): offnum u16
 *   xl_heap_lock (8): locking_xid u32 | offnum u16 | infobits_set i8 | flags u8
 *   xl_heap_prune (8): latestRemovedXid u32 | nredirected u16 | ndead u16
 *   xl_heap_vacuum (2): nunused u16
 *   xl_heap_freeze_page (6): cutoff_xid u32 | ntuples u16
 *   xl_heap_visible (5): cutoff_xid u32 | flags u8
 *   xl_heap_multi_insert (4 + 2n): flags u8 | pad | ntuples u16 | offsets[n] (absent with INIT_PAGE)
 *   xl_heap_lock_updated (8): xmax u32 | offnum u16 | infobits_set u8 | flags u8
 *   xl_heap_new_cid (34): top_xid | cmin | cmax | combocid | target_node (12) | target_tid (6)
 *   xl_heap_rewrite_mapping (40): mapped_xid | mapped_db | mapped_rel | pad | offset i64 | num_mappings u32 | pad | start_lsn u64
 */
import { StrataError } from "../../../lib/errors.js";
import { formatLsn, lsn, type Lsn } from "../../../lib/lsn.js";
import type { BlockRef, DecodedRecord, RelFileNode } from "../decoded_record.js";
import { BodyReader, describeRecord, readRelFileNode, type RecordBody } from "./body_reader.js";
import { RM_HEAP2_ID, RM_HEAP_ID } from "../rmgr_names.js";

/** Resource manager id(s), as rmgrlist.h numbers them (defined once, in rmgr_names.ts). */
export { RM_HEAP2_ID, RM_HEAP_ID };

export const XLOG_HEAP_INSERT = 0x00;
export const XLOG_HEAP_DELETE = 0x10;
export const XLOG_HEAP_UPDATE = 0x20;
export const XLOG_HEAP_TRUNCATE = 0x30;
export const XLOG_HEAP_HOT_UPDATE = 0x40;
export const XLOG_HEAP_CONFIRM = 0x50;
export const XLOG_HEAP_LOCK = 0x60;
export const XLOG_HEAP_INPLACE = 0x70;
export const XLOG_HEAP_OPMASK = 0x70;
/** xl_info bit: redo re-initializes the page (applies to HEAP and HEAP2 MULTI_INSERT). */
export const XLOG_HEAP_INIT_PAGE = 0x80;

export const XLOG_HEAP2_REWRITE = 0x00;
export const XLOG_HEAP2_PRUNE = 0x10;
export const XLOG_HEAP2_VACUUM = 0x20;
export const XLOG_HEAP2_FREEZE_PAGE = 0x30;
export const XLOG_HEAP2_VISIBLE = 0x40;
export const XLOG_HEAP2_MULTI_INSERT = 0x50;
export const XLOG_HEAP2_LOCK_UPDATED = 0x60;
export const XLOG_HEAP2_NEW_CID = 0x70;

export const XLH_INSERT_ALL_VISIBLE_CLEARED = 1 << 0;
export const XLH_INSERT_LAST_IN_MULTI = 1 << 1;
export const XLH_INSERT_IS_SPECULATIVE = 1 << 2;
export const XLH_INSERT_CONTAINS_NEW_TUPLE = 1 << 3;
export const XLH_INSERT_ON_TOAST_RELATION = 1 << 4;
export const XLH_INSERT_ALL_FROZEN_SET = 1 << 5;

export const XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED = 1 << 0;
export const XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED = 1 << 1;
export const XLH_UPDATE_CONTAINS_OLD_TUPLE = 1 << 2;
export const XLH_UPDATE_CONTAINS_OLD_KEY = 1 << 3;
export const XLH_UPDATE_CONTAINS_NEW_TUPLE = 1 << 4;
export const XLH_UPDATE_PREFIX_FROM_OLD = 1 << 5;
export const XLH_UPDATE_SUFFIX_FROM_OLD = 1 << 6;

export const XLH_DELETE_ALL_VISIBLE_CLEARED = 1 << 0;
export const XLH_DELETE_CONTAINS_OLD_TUPLE = 1 << 1;
export const XLH_DELETE_CONTAINS_OLD_KEY = 1 << 2;
export const XLH_DELETE_IS_SUPER = 1 << 3;
export const XLH_DELETE_IS_PARTITION_MOVE = 1 << 4;

export const XLH_TRUNCATE_CASCADE = 1 << 0;
export const XLH_TRUNCATE_RESTART_SEQS = 1 << 1;

export const XLH_LOCK_ALL_FROZEN_CLEARED = 0x01;

/** Visibility-map bits (visibilitymapdefs.h). */
export const VISIBILITYMAP_ALL_VISIBLE = 0x01;
export const VISIBILITYMAP_ALL_FROZEN = 0x02;
export const VISIBILITYMAP_VALID_BITS = 0x03;

/** BLCKSZ. */
const PAGE_SIZE_BYTES = 8192;
/** MAXALIGN(SizeOfPageHeaderData): a VM page's bitmap starts after the page header. */
export const VM_PAGE_HEADER_BYTES = 24;
/** MAPSIZE: bytes of bitmap per VM page. */
export const VM_MAPSIZE_BYTES = PAGE_SIZE_BYTES - VM_PAGE_HEADER_BYTES;
export const VM_BITS_PER_HEAPBLOCK = 2;
export const VM_HEAPBLOCKS_PER_BYTE = 8 / VM_BITS_PER_HEAPBLOCK;
/** HEAPBLOCKS_PER_PAGE = 32672. */
export const VM_HEAPBLOCKS_PER_PAGE = VM_MAPSIZE_BYTES * VM_HEAPBLOCKS_PER_BYTE;

/** HEAPBLK_TO_MAPBLOCK: VM fork block holding the bits of heap block `heapBlock`. */
export function vmBlockOf(heapBlock: number): number {
  return Math.floor(heapBlock / VM_HEAPBLOCKS_PER_PAGE);
}
/** HEAPBLK_TO_MAPBYTE: byte within the VM page's bitmap (add VM_PAGE_HEADER_BYTES for the page offset). */
export function vmMapByteOf(heapBlock: number): number {
  return Math.floor((heapBlock % VM_HEAPBLOCKS_PER_PAGE) / VM_HEAPBLOCKS_PER_BYTE);
}
/** HEAPBLK_TO_OFFSET: bit shift of the heap block's two bits within that byte. */
export function vmBitShiftOf(heapBlock: number): number {
  return (heapBlock % VM_HEAPBLOCKS_PER_BYTE) * VM_BITS_PER_HEAPBLOCK;
}

/**
 * Clears `flags` (VISIBILITYMAP_* bits) of `heapBlock` in a VM page, in place,
 * as visibilitymap_clear does (the page LSN is not touched: PostgreSQL does
 * not stamp it either).
 */
export function clearVmBits(vmPage: Uint8Array, heapBlock: number, flags: number): void {
  if (vmPage.length !== PAGE_SIZE_BYTES) {
    throw new StrataError("invalid_argument", `VM page is ${vmPage.length} bytes, expected ${PAGE_SIZE_BYTES}`);
  }
  const at = VM_PAGE_HEADER_BYTES + vmMapByteOf(heapBlock);
  vmPage[at] = (vmPage[at] ?? 0) & ~((flags & VISIBILITYMAP_VALID_BITS) << vmBitShiftOf(heapBlock));
}

export type HeapRecordBody =
  | { type: "INSERT"; init: boolean; offnum: number; flags: number }
  | { type: "DELETE"; xmax: number; offnum: number; infobitsSet: number; flags: number }
  | {
      type: "UPDATE" | "HOT_UPDATE";
      init: boolean;
      oldXmax: number;
      oldOffnum: number;
      oldInfobitsSet: number;
      flags: number;
      newXmax: number;
      newOffnum: number;
    }
  | { type: "TRUNCATE"; dbId: number; flags: number; relids: number[] }
  | { type: "CONFIRM"; offnum: number }
  | { type: "LOCK"; lockingXid: number; offnum: number; infobitsSet: number; flags: number }
  | { type: "INPLACE"; offnum: number };

export type Heap2RecordBody =
  | {
      type: "REWRITE";
      mappedXid: number;
      mappedDb: number;
      mappedRel: number;
      offset: bigint;
      numMappings: number;
      startLsn: Lsn;
    }
  | { type: "PRUNE"; latestRemovedXid: number; nredirected: number; ndead: number }
  | { type: "VACUUM"; nunused: number }
  | { type: "FREEZE_PAGE"; cutoffXid: number; ntuples: number }
  | { type: "VISIBLE"; cutoffXid: number; flags: number }
  | { type: "MULTI_INSERT"; init: boolean; flags: number; ntuples: number; offsets: number[] }
  | { type: "LOCK_UPDATED"; xmax: number; offnum: number; infobitsSet: number; flags: number }
  | {
      type: "NEW_CID";
      topXid: number;
      cmin: number;
      cmax: number;
      combocid: number;
      targetNode: RelFileNode;
      targetBlock: number;
      targetOffnum: number;
    };

const HEAP_TYPE_NAMES: Readonly<Record<number, string>> = {
  [XLOG_HEAP_INSERT]: "INSERT",
  [XLOG_HEAP_DELETE]: "DELETE",
  [XLOG_HEAP_UPDATE]: "UPDATE",
  [XLOG_HEAP_TRUNCATE]: "TRUNCATE",
  [XLOG_HEAP_HOT_UPDATE]: "HOT_UPDATE",
  [XLOG_HEAP_CONFIRM]: "HEAP_CONFIRM",
  [XLOG_HEAP_LOCK]: "LOCK",
  [XLOG_HEAP_INPLACE]: "INPLACE",
};
const HEAP2_TYPE_NAMES: Readonly<Record<number, string>> = {
  [XLOG_HEAP2_REWRITE]: "REWRITE",
  [XLOG_HEAP2_PRUNE]: "PRUNE",
  [XLOG_HEAP2_VACUUM]: "VACUUM",
  [XLOG_HEAP2_FREEZE_PAGE]: "FREEZE_PAGE",
  [XLOG_HEAP2_VISIBLE]: "VISIBLE",
  [XLOG_HEAP2_MULTI_INSERT]: "MULTI_INSERT",
  [XLOG_HEAP2_LOCK_UPDATED]: "LOCK_UPDATED",
  [XLOG_HEAP2_NEW_CID]: "NEW_CID",
};

/** pg_waldump's name for a HEAP record type (heap_identify, "+INIT" suffix included). */
export function heapRecordTypeName(info: number): string | undefined {
  const name = HEAP_TYPE_NAMES[info & XLOG_HEAP_OPMASK];
  if (name === undefined) return undefined;
  const op = info & XLOG_HEAP_OPMASK;
  const initable = op === XLOG_HEAP_INSERT || op === XLOG_HEAP_UPDATE || op === XLOG_HEAP_HOT_UPDATE;
  return initable && (info & XLOG_HEAP_INIT_PAGE) !== 0 ? `${name}+INIT` : name;
}
/** pg_waldump's name for a HEAP2 record type (heap2_identify). */
export function heap2RecordTypeName(info: number): string | undefined {
  const name = HEAP2_TYPE_NAMES[info & XLOG_HEAP_OPMASK];
  if (name === undefined) return undefined;
  const isMulti = (info & XLOG_HEAP_OPMASK) === XLOG_HEAP2_MULTI_INSERT;
  return isMulti && (info & XLOG_HEAP_INIT_PAGE) !== 0 ? `${name}+INIT` : name;
}

export function parseHeapRecord(record: RecordBody): HeapRecordBody {
  const op = record.info & XLOG_HEAP_OPMASK;
  const init = (record.info & XLOG_HEAP_INIT_PAGE) !== 0;
  const what = (): string => describeRecord(`HEAP ${heapRecordTypeName(record.info) ?? "?"}`, record.lsn);
  const r = new BodyReader(record.mainData, what);
  switch (op) {
    case XLOG_HEAP_INSERT: {
      r.require(3, "xl_heap_insert");
      return { type: "INSERT", init, offnum: r.u16("offnum"), flags: r.u8("flags") };
    }
    case XLOG_HEAP_DELETE: {
      r.require(8, "xl_heap_delete");
      return { type: "DELETE", xmax: r.u32("xmax"), offnum: r.u16("offnum"), infobitsSet: r.u8("infobits_set"), flags: r.u8("flags") };
    }
    case XLOG_HEAP_UPDATE:
    case XLOG_HEAP_HOT_UPDATE: {
      r.require(14, "xl_heap_update");
      return {
        type: op === XLOG_HEAP_UPDATE ? "UPDATE" : "HOT_UPDATE",
        init,
        oldXmax: r.u32("old_xmax"),
        oldOffnum: r.u16("old_offnum"),
        oldInfobitsSet: r.u8("old_infobits_set"),
        flags: r.u8("flags"),
        newXmax: r.u32("new_xmax"),
        newOffnum: r.u16("new_offnum"),
      };
    }
    case XLOG_HEAP_TRUNCATE: {
      r.require(12, "xl_heap_truncate");
      const dbId = r.u32("dbId");
      const nrelids = r.u32("nrelids");
      const flags = r.u8("flags");
      r.at(12);
      r.count(nrelids, Math.floor(r.remaining / 4), "nrelids");
      const relids: number[] = [];
      for (let i = 0; i < nrelids; i++) relids.push(r.u32("relids"));
      return { type: "TRUNCATE", dbId, flags, relids };
    }
    case XLOG_HEAP_CONFIRM:
      return { type: "CONFIRM", offnum: r.u16("offnum") };
    case XLOG_HEAP_LOCK: {
      r.require(8, "xl_heap_lock");
      return { type: "LOCK", lockingXid: r.u32("locking_xid"), offnum: r.u16("offnum"), infobitsSet: r.u8("infobits_set"), flags: r.u8("flags") };
    }
    case XLOG_HEAP_INPLACE:
      return { type: "INPLACE", offnum: r.u16("offnum") };
    default:
      throw r.invalid(`unknown HEAP record type (info 0x${record.info.toString(16)})`);
  }
}

export function parseHeap2Record(record: RecordBody): Heap2RecordBody {
  const op = record.info & XLOG_HEAP_OPMASK;
  const init = (record.info & XLOG_HEAP_INIT_PAGE) !== 0;
  const what = (): string => describeRecord(`HEAP2 ${heap2RecordTypeName(record.info) ?? "?"}`, record.lsn);
  const r = new BodyReader(record.mainData, what);
  switch (op) {
    case XLOG_HEAP2_REWRITE: {
      r.require(40, "xl_heap_rewrite_mapping");
      const mappedXid = r.u32("mapped_xid");
      const mappedDb = r.u32("mapped_db");
      const mappedRel = r.u32("mapped_rel");
      const offset = r.at(16).i64("offset");
      const numMappings = r.u32("num_mappings");
      const startLsn = lsn(r.at(32).u64("start_lsn"));
      return { type: "REWRITE", mappedXid, mappedDb, mappedRel, offset, numMappings, startLsn };
    }
    case XLOG_HEAP2_PRUNE: {
      r.require(8, "xl_heap_prune");
      return { type: "PRUNE", latestRemovedXid: r.u32("latestRemovedXid"), nredirected: r.u16("nredirected"), ndead: r.u16("ndead") };
    }
    case XLOG_HEAP2_VACUUM:
      return { type: "VACUUM", nunused: r.u16("nunused") };
    case XLOG_HEAP2_FREEZE_PAGE: {
      r.require(6, "xl_heap_freeze_page");
      return { type: "FREEZE_PAGE", cutoffXid: r.u32("cutoff_xid"), ntuples: r.u16("ntuples") };
    }
    case XLOG_HEAP2_VISIBLE: {
      r.require(5, "xl_heap_visible");
      return { type: "VISIBLE", cutoffXid: r.u32("cutoff_xid"), flags: r.u8("flags") };
    }
    case XLOG_HEAP2_MULTI_INSERT: {
      r.require(4, "xl_heap_multi_insert");
      const flags = r.u8("flags");
      const ntuples = r.at(2).u16("ntuples");
      const offsets: number[] = [];
      // With INIT_PAGE the offsets are implicit (1..ntuples) and not logged.
      if (!init) {
        r.require(ntuples * 2, "offsets");
        for (let i = 0; i < ntuples; i++) offsets.push(r.u16("offsets"));
      }
      return { type: "MULTI_INSERT", init, flags, ntuples, offsets };
    }
    case XLOG_HEAP2_LOCK_UPDATED: {
      r.require(8, "xl_heap_lock_updated");
      return { type: "LOCK_UPDATED", xmax: r.u32("xmax"), offnum: r.u16("offnum"), infobitsSet: r.u8("infobits_set"), flags: r.u8("flags") };
    }
    case XLOG_HEAP2_NEW_CID: {
      r.require(34, "xl_heap_new_cid");
      const topXid = r.u32("top_xid");
      const cmin = r.u32("cmin");
      const cmax = r.u32("cmax");
      const combocid = r.u32("combocid");
      const targetNode = readRelFileNode(r, "target_node");
      const hi = r.u16("target_tid.bi_hi");
      const lo = r.u16("target_tid.bi_lo");
      const targetOffnum = r.u16("target_tid.offset");
      return { type: "NEW_CID", topXid, cmin, cmax, combocid, targetNode, targetBlock: hi * 0x10000 + lo, targetOffnum };
    }
    default:
      throw r.invalid(`unknown HEAP2 record type (info 0x${record.info.toString(16)})`);
  }
}

/** One "clear these VM bits of this heap block" side effect of a heap record. */
export interface VmClear {
  /** The heap relation; the bits live in its visibility-map fork. */
  rel: RelFileNode;
  heapBlock: number;
  clearAllVisible: boolean;
  clearAllFrozen: boolean;
}

function blockOf(record: Pick<DecodedRecord, "lsn" | "blocks">, id: number, required: true, what: string): BlockRef;
function blockOf(record: Pick<DecodedRecord, "lsn" | "blocks">, id: number, required: false, what: string): BlockRef | undefined;
function blockOf(
  record: Pick<DecodedRecord, "lsn" | "blocks">,
  id: number,
  required: boolean,
  what: string,
): BlockRef | undefined {
  const b = record.blocks.find((x) => x.id === id);
  if (b === undefined && required) {
    throw new StrataError("corrupt_data", `${what} at ${formatLsn(record.lsn)} has no block reference ${id}`);
  }
  return b;
}

/**
 * The visibility-map bits a HEAP or HEAP2 record clears as a side effect
 * (see the table in the header). Returns [] for other records and for heap
 * records whose flags clear nothing. When both the old and the new tuple
 * are on one heap block the two clears are merged into one entry.
 */
export function heapVmClears(record: Pick<DecodedRecord, "lsn" | "rmid" | "info" | "mainData" | "blocks">): VmClear[] {
  const out: VmClear[] = [];
  const add = (b: BlockRef, allVisible: boolean, allFrozen: boolean): void => {
    const same = out.find(
      (c) =>
        c.heapBlock === b.blockNumber &&
        c.rel.spcOid === b.rel.spcOid &&
        c.rel.dbOid === b.rel.dbOid &&
        c.rel.relNumber === b.rel.relNumber,
    );
    if (same) {
      same.clearAllVisible ||= allVisible;
      same.clearAllFrozen ||= allFrozen;
    } else {
      out.push({ rel: b.rel, heapBlock: b.blockNumber, clearAllVisible: allVisible, clearAllFrozen: allFrozen });
    }
  };
  if (record.rmid === RM_HEAP_ID) {
    const body = parseHeapRecord(record);
    const what = `HEAP ${body.type}`;
    switch (body.type) {
      case "INSERT":
        if (body.flags & XLH_INSERT_ALL_VISIBLE_CLEARED) add(blockOf(record, 0, true, what), true, true);
        break;
      case "DELETE":
        if (body.flags & XLH_DELETE_ALL_VISIBLE_CLEARED) add(blockOf(record, 0, true, what), true, true);
        break;
      case "UPDATE":
      case "HOT_UPDATE": {
        const newBlock = blockOf(record, 0, true, what);
        if (body.flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED) {
          add(blockOf(record, 1, false, what) ?? newBlock, true, true);
        }
        if (body.flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED) add(newBlock, true, true);
        break;
      }
      case "LOCK":
        if (body.flags & XLH_LOCK_ALL_FROZEN_CLEARED) add(blockOf(record, 0, true, what), false, true);
        break;
      default:
        break;
    }
  } else if (record.rmid === RM_HEAP2_ID) {
    const op = record.info & XLOG_HEAP_OPMASK;
    if (op !== XLOG_HEAP2_MULTI_INSERT && op !== XLOG_HEAP2_LOCK_UPDATED) return out;
    const body = parseHeap2Record(record);
    const what = `HEAP2 ${body.type}`;
    if (body.type === "MULTI_INSERT" && body.flags & XLH_INSERT_ALL_VISIBLE_CLEARED) {
      add(blockOf(record, 0, true, what), true, true);
    } else if (body.type === "LOCK_UPDATED" && body.flags & XLH_LOCK_ALL_FROZEN_CLEARED) {
      add(blockOf(record, 0, true, what), false, true);
    }
  }
  return out;
}
