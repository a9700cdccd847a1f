import { test } from "node:test";
import assert from "node:assert/strict";
import { lsn } from "../lib/lsn.js";
import type { BlockRef, DecodedRecord } from "../formats/wal/decoded_record.js";
import { RM_HEAP2_ID, RM_HEAP_ID, XLOG_HEAP2_MULTI_INSERT, XLOG_HEAP2_VISIBLE, XLOG_HEAP_INIT_PAGE, XLOG_HEAP_INSERT } from "../formats/wal/rmgr/heap.js";
import { applyHeapRecord, isNativeHeapRecord } from "./heap_redo.js";

// Byte-exactness against PostgreSQL is test/heap_redo.test.ts (real WAL, the
// real redo helper). These are the layout details and the cases the module
// must decline (hand to the helper) instead of guessing.

const REL = { spcOid: 1663, dbOid: 5, relNumber: 16400 };
const BLK = 0x12345;

function block(data: Uint8Array | undefined, opts: { id?: number; willInit?: boolean; forkNum?: number } = {}): BlockRef {
  return { id: opts.id ?? 0, forkNum: opts.forkNum ?? 0, flags: 0, rel: REL, blockNumber: BLK, willInit: opts.willInit ?? false, ...(data === undefined ? {} : { data }) };
}

function record(rmid: number, info: number, mainData: Uint8Array, blocks: BlockRef[], end = 0x1000_0038n): DecodedRecord {
  return { lsn: lsn(end - 0x38n), endLsn: lsn(end - 3n), totalLength: 0x35, xid: 777, prevLsn: lsn(0n), info, rmid, crc: 0, blocks, mainData, raw: new Uint8Array(0) };
}

/** xl_multi_insert_tuple + data, SHORTALIGNed one after another. */
function multiInsertData(tuples: Array<{ infomask2: number; infomask: number; hoff: number; data: number[] }>): Uint8Array {
  const out: number[] = [];
  for (const t of tuples) {
    if (out.length % 2 === 1) out.push(0);
    const n = t.data.length;
    out.push(n & 0xff, n >> 8, t.infomask2 & 0xff, t.infomask2 >> 8, t.infomask & 0xff, t.infomask >> 8, t.hoff, ...t.data);
  }
  return new Uint8Array(out);
}

const u16 = (b: Uint8Array, off: number) => b[off]! | (b[off + 1]! << 8);
const u32 = (b: Uint8Array, off: number) => (b[off]! | (b[off + 1]! << 8) | (b[off + 2]! << 16) | (b[off + 3]! << 24)) >>> 0;
const OPTS = { hintBitsLogged: false };

test("MULTI_INSERT+INIT builds the page as PageInit + PageAddItem do", () => {
  const tuples = [
    { infomask2: 3, infomask: 0x0800 | 0x0020, hoff: 24, data: [0, 1, 2, 3, 4] }, // HEAP_COMBOCID must be cleared
    { infomask2: 3, infomask: 0x0800, hoff: 24, data: [9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9] },
  ];
  const main = new Uint8Array([0x20, 0, 2, 0]); // ALL_FROZEN_SET, ntuples 2
  const r = record(RM_HEAP2_ID, XLOG_HEAP2_MULTI_INSERT | XLOG_HEAP_INIT_PAGE, main, [block(multiInsertData(tuples), { willInit: true })]);
  assert.ok(isNativeHeapRecord(r, r.blocks[0]!));
  const page = applyHeapRecord(undefined, r, r.blocks[0]!, OPTS)!;
  assert.equal(page.length, 8192);
  assert.equal(u32(page, 0), 0x0, "pd_lsn hi");
  assert.equal(u32(page, 4), 0x1000_0038 >>> 0, "pd_lsn lo = the MAXALIGNed end");
  assert.equal(u16(page, 10), 0x0004, "PD_ALL_VISIBLE from ALL_FROZEN_SET");
  assert.equal(u16(page, 12), 24 + 2 * 4, "pd_lower: two line pointers");
  const size1 = 23 + 5;
  const size2 = 23 + 11;
  const upper1 = 8192 - 32; // MAXALIGN(28)
  const upper2 = upper1 - 40; // MAXALIGN(34)
  assert.equal(u16(page, 14), upper2, "pd_upper");
  assert.equal(u16(page, 16), 8192, "pd_special");
  assert.equal(u16(page, 18), 8192 | 4, "page size and layout version");
  assert.equal(u32(page, 24), (upper1 | (1 << 15) | (size1 << 17)) >>> 0, "line pointer 1");
  assert.equal(u32(page, 28), (upper2 | (1 << 15) | (size2 << 17)) >>> 0, "line pointer 2");
  assert.equal(u32(page, upper1), 777, "t_xmin");
  assert.equal(u32(page, upper1 + 4), 0, "t_xmax");
  assert.equal(u32(page, upper1 + 8), 0, "t_cid = FirstCommandId");
  assert.equal(u16(page, upper1 + 12), BLK >>> 16, "t_ctid block hi");
  assert.equal(u16(page, upper1 + 14), BLK & 0xffff, "t_ctid block lo");
  assert.equal(u16(page, upper1 + 16), 1, "t_ctid offset");
  assert.equal(u16(page, upper1 + 20), 0x0800, "t_infomask without HEAP_COMBOCID");
  assert.equal(page[upper1 + 22], 24, "t_hoff");
  assert.deepEqual([...page.subarray(upper1 + 23, upper1 + 28)], [0, 1, 2, 3, 4]);
  assert.equal(u16(page, upper2 + 16), 2, "second tuple's offset");
});

test("INSERT into an existing page, VISIBLE, and BLK_DONE for pages already past the record", () => {
  const base = applyHeapRecord(undefined, record(RM_HEAP2_ID, XLOG_HEAP2_MULTI_INSERT | XLOG_HEAP_INIT_PAGE, new Uint8Array([0, 0, 1, 0]), [block(multiInsertData([{ infomask2: 1, infomask: 0, hoff: 24, data: [1] }]), { willInit: true })]), block(undefined), OPTS);
  assert.equal(base, undefined, "a block without data is declined");
  const first = record(RM_HEAP2_ID, XLOG_HEAP2_MULTI_INSERT | XLOG_HEAP_INIT_PAGE, new Uint8Array([0, 0, 1, 0]), [block(multiInsertData([{ infomask2: 1, infomask: 0, hoff: 24, data: [1] }]), { willInit: true })]);
  const p1 = applyHeapRecord(undefined, first, first.blocks[0]!, OPTS)!;
  const insData = new Uint8Array([1, 0, 0, 0, 24, 42, 43]); // xl_heap_header + 2 bytes
  const ins = record(RM_HEAP_ID, XLOG_HEAP_INSERT, new Uint8Array([2, 0, 0x01]), [block(insData)], 0x1000_0100n); // offnum 2, ALL_VISIBLE_CLEARED
  const withFlag = new Uint8Array(p1);
  withFlag[10] = 0x04;
  const p2 = applyHeapRecord(withFlag, ins, ins.blocks[0]!, OPTS)!;
  assert.equal(u16(p2, 12), 24 + 8);
  assert.equal(u16(p2, 10), 0, "PD_ALL_VISIBLE cleared");
  assert.equal(u32(p2, 4), 0x1000_0100);
  assert.deepEqual(withFlag[10], 0x04, "the input page is not modified");
  // VISIBLE (heap page is block 1): sets PD_ALL_VISIBLE; pd_lsn only when hint bits are logged
  const vis = record(RM_HEAP2_ID, XLOG_HEAP2_VISIBLE, new Uint8Array([0, 0, 0, 0, 3]), [block(undefined, { id: 0, forkNum: 2 }), block(undefined, { id: 1 })], 0x1000_0200n);
  assert.ok(isNativeHeapRecord(vis, vis.blocks[1]!) && !isNativeHeapRecord(vis, vis.blocks[0]!));
  const p3 = applyHeapRecord(p2, vis, vis.blocks[1]!, OPTS)!;
  assert.equal(u16(p3, 10), 0x04);
  assert.equal(u32(p3, 4), 0x1000_0100, "pd_lsn kept without logged hint bits");
  const p3h = applyHeapRecord(p2, vis, vis.blocks[1]!, { hintBitsLogged: true })!;
  assert.equal(u32(p3h, 4), 0x1000_0200, "pd_lsn bumped with logged hint bits");
  // a page already at or past the record: unchanged (XLogReadBufferForRedo's BLK_DONE)
  const older = record(RM_HEAP_ID, XLOG_HEAP_INSERT, new Uint8Array([3, 0, 0]), [block(insData)], 0x1000_0100n);
  assert.deepEqual(applyHeapRecord(p2, older, older.blocks[0]!, OPTS), p2);
});

test("records the module does not model, or that PostgreSQL would PANIC on, are declined", () => {
  const p = applyHeapRecord(undefined, record(RM_HEAP2_ID, XLOG_HEAP2_MULTI_INSERT | XLOG_HEAP_INIT_PAGE, new Uint8Array([0, 0, 1, 0]), [block(multiInsertData([{ infomask2: 1, infomask: 0, hoff: 24, data: [1] }]), { willInit: true })]), block(multiInsertData([{ infomask2: 1, infomask: 0, hoff: 24, data: [1] }]), { willInit: true }), OPTS)!;
  assert.ok(p !== undefined);
  const insData = new Uint8Array([1, 0, 0, 0, 24, 42]);
  const at = (main: number[], data: Uint8Array | undefined, info = XLOG_HEAP_INSERT) => {
    const r = record(RM_HEAP_ID, info, new Uint8Array(main), [block(data)], 0x2000_0000n);
    return applyHeapRecord(p, r, r.blocks[0]!, OPTS);
  };
  assert.ok(at([2, 0, 0], insData) !== undefined, "the valid case");
  assert.equal(at([3, 0, 0], insData), undefined, "offset beyond max offset + 1");
  assert.equal(at([1, 0, 0], insData), undefined, "overwriting a used line pointer");
  assert.equal(at([2, 0, 0x04], insData), undefined, "speculative insert");
  assert.equal(at([2, 0], insData), undefined, "short main data");
  assert.equal(at([2, 0, 0], new Uint8Array([1, 0, 0, 0, 24])), undefined, "no tuple bytes");
  assert.equal(at([2, 0, 0], undefined), undefined, "no block data");
  const r = record(RM_HEAP_ID, XLOG_HEAP_INSERT, new Uint8Array([1, 0, 0]), [block(insData)]);
  assert.equal(applyHeapRecord(undefined, r, r.blocks[0]!, OPTS), undefined, "no base page for a non-init record");
  assert.equal(applyHeapRecord(new Uint8Array(8192), r, r.blocks[0]!, OPTS), undefined, "an all-zero (new) base page");
  // MULTI_INSERT whose tuple data does not add up
  const bad = multiInsertData([{ infomask2: 1, infomask: 0, hoff: 24, data: [1, 2, 3] }]);
  const trunc = record(RM_HEAP2_ID, XLOG_HEAP2_MULTI_INSERT | XLOG_HEAP_INIT_PAGE, new Uint8Array([0, 0, 1, 0]), [block(bad.subarray(0, bad.length - 1), { willInit: true })]);
  assert.equal(applyHeapRecord(undefined, trunc, trunc.blocks[0]!, OPTS), undefined, "truncated tuple data");
  const extra = record(RM_HEAP2_ID, XLOG_HEAP2_MULTI_INSERT | XLOG_HEAP_INIT_PAGE, new Uint8Array([0, 0, 1, 0]), [block(new Uint8Array([...bad, 0, 0]), { willInit: true })]);
  assert.equal(applyHeapRecord(undefined, extra, extra.blocks[0]!, OPTS), undefined, "trailing bytes (total tuple length mismatch)");
  const both = record(RM_HEAP2_ID, XLOG_HEAP2_MULTI_INSERT | XLOG_HEAP_INIT_PAGE, new Uint8Array([0x21, 0, 1, 0]), [block(bad, { willInit: true })]);
  assert.equal(applyHeapRecord(undefined, both, both.blocks[0]!, OPTS), undefined, "ALL_VISIBLE_CLEARED with ALL_FROZEN_SET");
  // other forks and blocks are not heap pages of these records
  assert.ok(!isNativeHeapRecord(r, block(insData, { forkNum: 1 })));
});
