import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../../../lib/errors.js";
import { lsn } from "../../../lib/lsn.js";
import type { BlockRef, DecodedRecord, RelFileNode } from "../decoded_record.js";
import { BodyWriter, type RecordBody } from "./body_reader.js";
import {
  clearVmBits,
  heap2RecordTypeName,
  heapRecordTypeName,
  heapVmClears,
  parseHeap2Record,
  parseHeapRecord,
  RM_HEAP2_ID,
  RM_HEAP_ID,
  VISIBILITYMAP_ALL_FROZEN,
  VISIBILITYMAP_VALID_BITS,
  vmBitShiftOf,
  vmBlockOf,
  vmMapByteOf,
  VM_HEAPBLOCKS_PER_PAGE,
  XLH_DELETE_ALL_VISIBLE_CLEARED,
  XLH_INSERT_ALL_VISIBLE_CLEARED,
  XLH_LOCK_ALL_FROZEN_CLEARED,
  XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED,
  XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED,
} from "./heap.js";

const at = lsn(0x5000000);
const rel: RelFileNode = { spcOid: 1663, dbOid: 5, relNumber: 16384 };
const block = (id: number, blockNumber: number): BlockRef => ({ id, forkNum: 0, flags: 0, rel, blockNumber, willInit: false });
type VmInput = Pick<DecodedRecord, "lsn" | "rmid" | "info" | "mainData" | "blocks">;
const heapRec = (rmid: number, info: number, mainData: Uint8Array, blocks: BlockRef[]): VmInput => ({ lsn: at, rmid, info, mainData, blocks });

function assertEveryPrefixFails(parse: (r: RecordBody) => unknown, r: RecordBody): void {
  for (let n = 0; n < r.mainData.length; n++) {
    assert.throws(
      () => parse({ ...r, mainData: r.mainData.subarray(0, n) }),
      (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && /HEAP2? \S+ record at 0\/5000000/.test(e.message),
      `prefix ${n}`,
    );
  }
}

const insert = (flags: number) => new BodyWriter().u16(3).u8(flags).finish();
const del = (flags: number) => new BodyWriter().u32(800).u16(4).u8(0).u8(flags).finish();
const update = (flags: number) => new BodyWriter().u32(800).u16(4).u8(0).u8(flags).u32(0).u16(9).finish();
const lock = (flags: number) => new BodyWriter().u32(800).u16(4).i8(0).u8(flags).finish();
const multi = (flags: number, n: number) => {
  const w = new BodyWriter().u8(flags).padTo(2).u16(n);
  for (let i = 1; i <= n; i++) w.u16(i);
  return w.finish();
};

test("VM geometry matches visibilitymap.c", () => {
  assert.equal(VM_HEAPBLOCKS_PER_PAGE, 32672);
  assert.equal(vmBlockOf(32671), 0);
  assert.equal(vmBlockOf(32672), 1);
  assert.equal(vmMapByteOf(32672 + 9), 2);
  assert.equal(vmBitShiftOf(9), 2);
  const page = new Uint8Array(8192).fill(0xff);
  clearVmBits(page, 9, VISIBILITYMAP_VALID_BITS);
  assert.equal(page[24 + 2], 0b11110011);
  clearVmBits(page, 10, VISIBILITYMAP_ALL_FROZEN);
  assert.equal(page[24 + 2], 0b11010011);
});

test("heapVmClears follows the redo routines for every heap record type", () => {
  const both = (heapBlock: number) => ({ rel, heapBlock, clearAllVisible: true, clearAllFrozen: true });
  const frozen = (heapBlock: number) => ({ rel, heapBlock, clearAllVisible: false, clearAllFrozen: true });
  // INSERT
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP_ID, 0x00, insert(XLH_INSERT_ALL_VISIBLE_CLEARED), [block(0, 7)])), [both(7)]);
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP_ID, 0x80, insert(0), [block(0, 7)])), []);
  // DELETE
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP_ID, 0x10, del(XLH_DELETE_ALL_VISIBLE_CLEARED), [block(0, 3)])), [both(3)]);
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP_ID, 0x10, del(0), [block(0, 3)])), []);
  // UPDATE across pages: block 0 new, block 1 old
  const oldAndNew = XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED | XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED;
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP_ID, 0x20, update(oldAndNew), [block(0, 10), block(1, 4)])), [both(4), both(10)]);
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP_ID, 0x20, update(XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED), [block(0, 10), block(1, 4)])), [both(4)]);
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP_ID, 0xa0, update(XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED), [block(0, 10), block(1, 4)])), [both(10)]);
  // HOT_UPDATE on one page (no block 1): old = new block, merged into one entry
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP_ID, 0x40, update(oldAndNew), [block(0, 6)])), [both(6)]);
  // LOCK clears only all-frozen
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP_ID, 0x60, lock(XLH_LOCK_ALL_FROZEN_CLEARED), [block(0, 2)])), [frozen(2)]);
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP_ID, 0x60, lock(0), [block(0, 2)])), []);
  // HEAP2 MULTI_INSERT (with and without INIT) and LOCK_UPDATED
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP2_ID, 0x50, multi(XLH_INSERT_ALL_VISIBLE_CLEARED, 2), [block(0, 8)])), [both(8)]);
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP2_ID, 0xd0, multi(XLH_INSERT_ALL_VISIBLE_CLEARED, 0), [block(0, 8)])), [both(8)]);
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP2_ID, 0x60, lock(XLH_LOCK_ALL_FROZEN_CLEARED), [block(0, 1)])), [frozen(1)]);
  // Records that never clear: HEAP2 VISIBLE sets bits; other rmgrs are ignored.
  assert.deepEqual(heapVmClears(heapRec(RM_HEAP2_ID, 0x40, new BodyWriter().u32(5).u8(3).finish(), [block(0, 0), block(1, 5)])), []);
  assert.deepEqual(heapVmClears(heapRec(11, 0x00, new Uint8Array(0), [])), []);
  // A clearing record without its block reference is corrupt.
  assert.throws(
    () => heapVmClears(heapRec(RM_HEAP_ID, 0x00, insert(XLH_INSERT_ALL_VISIBLE_CLEARED), [])),
    (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && /HEAP INSERT at 0\/5000000 has no block reference 0/.test(e.message),
  );
});

test("HEAP record parsers and their invalid prefixes", () => {
  const r = (info: number, d: Uint8Array): RecordBody => ({ lsn: at, info, mainData: d });
  assert.deepEqual(parseHeapRecord(r(0x80, insert(1))), { type: "INSERT", init: true, offnum: 3, flags: 1 });
  assert.deepEqual(parseHeapRecord(r(0x10, del(1))), { type: "DELETE", xmax: 800, offnum: 4, infobitsSet: 0, flags: 1 });
  assert.deepEqual(parseHeapRecord(r(0x40, update(3))), {
    type: "HOT_UPDATE", init: false, oldXmax: 800, oldOffnum: 4, oldInfobitsSet: 0, flags: 3, newXmax: 0, newOffnum: 9,
  });
  const trunc = new BodyWriter().u32(5).u32(2).u8(1).padTo(12).u32(16384).u32(16390).finish();
  assert.deepEqual(parseHeapRecord(r(0x30, trunc)), { type: "TRUNCATE", dbId: 5, flags: 1, relids: [16384, 16390] });
  assert.deepEqual(parseHeapRecord(r(0x50, Uint8Array.of(2, 0))), { type: "CONFIRM", offnum: 2 });
  assert.deepEqual(parseHeapRecord(r(0x60, lock(1))), { type: "LOCK", lockingXid: 800, offnum: 4, infobitsSet: 0, flags: 1 });
  assert.deepEqual(parseHeapRecord(r(0x70, Uint8Array.of(5, 0))), { type: "INPLACE", offnum: 5 });
  for (const [info, d] of [[0x00, insert(1)], [0x10, del(1)], [0x20, update(1)], [0x30, trunc], [0x50, Uint8Array.of(2, 0)], [0x60, lock(1)], [0x70, Uint8Array.of(5, 0)]] as const) {
    assertEveryPrefixFails(parseHeapRecord, r(info, d));
  }
  assert.equal(heapRecordTypeName(0xa0), "UPDATE+INIT");
  assert.equal(heapRecordTypeName(0x50), "HEAP_CONFIRM");
});

test("HEAP2 record parsers and their invalid prefixes", () => {
  const r = (info: number, d: Uint8Array): RecordBody => ({ lsn: at, info, mainData: d });
  const prune = new BodyWriter().u32(700).u16(1).u16(2).finish();
  const vacuum = new BodyWriter().u16(4).finish();
  const freeze = new BodyWriter().u32(700).u16(3).finish();
  const visible = new BodyWriter().u32(700).u8(3).finish();
  const newCid = new BodyWriter().u32(800).u32(1).u32(2).u32(0).relFileNode(rel).u16(1).u16(2).u16(7).finish();
  const rewrite = new BodyWriter().u32(700).u32(5).u32(1259).padTo(16).i64(4096n).u32(3).padTo(32).u64(0x6000000n).finish();
  assert.deepEqual(parseHeap2Record(r(0x10, prune)), { type: "PRUNE", latestRemovedXid: 700, nredirected: 1, ndead: 2 });
  assert.deepEqual(parseHeap2Record(r(0x20, vacuum)), { type: "VACUUM", nunused: 4 });
  assert.deepEqual(parseHeap2Record(r(0x30, freeze)), { type: "FREEZE_PAGE", cutoffXid: 700, ntuples: 3 });
  assert.deepEqual(parseHeap2Record(r(0x40, visible)), { type: "VISIBLE", cutoffXid: 700, flags: 3 });
  assert.deepEqual(parseHeap2Record(r(0x50, multi(0, 2))), { type: "MULTI_INSERT", init: false, flags: 0, ntuples: 2, offsets: [1, 2] });
  assert.deepEqual(parseHeap2Record(r(0xd0, multi(0, 0).subarray(0, 4))), { type: "MULTI_INSERT", init: true, flags: 0, ntuples: 0, offsets: [] });
  assert.deepEqual(parseHeap2Record(r(0x70, newCid)), {
    type: "NEW_CID", topXid: 800, cmin: 1, cmax: 2, combocid: 0, targetNode: rel, targetBlock: 0x10002, targetOffnum: 7,
  });
  assert.deepEqual(parseHeap2Record(r(0x00, rewrite)), {
    type: "REWRITE", mappedXid: 700, mappedDb: 5, mappedRel: 1259, offset: 4096n, numMappings: 3, startLsn: lsn(0x6000000),
  });
  for (const [info, d] of [[0x10, prune], [0x20, vacuum], [0x30, freeze], [0x40, visible], [0x50, multi(1, 3)], [0x60, lock(1)], [0x70, newCid], [0x00, rewrite]] as const) {
    assertEveryPrefixFails(parseHeap2Record, r(info, d));
  }
  assert.equal(heap2RecordTypeName(0xd0), "MULTI_INSERT+INIT");
});
