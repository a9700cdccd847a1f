import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../lib/errors.js";
import { lsn, lsnAdd, type Lsn } from "../lib/lsn.js";
import { getPageLsn, initPage, setPageLsn } from "../formats/page.js";
import { verifyPageChecksum } from "../formats/page_checksum.js";
import type { DecodedRecord } from "../formats/wal/decoded_record.js";
import { decodeRecord, encodeRecord, type BlockRefSpec, type RecordSpec } from "../formats/wal/xlog_record.js";
import { getClogStatus } from "../formats/wal/rmgr/clog.js";
import { getMultiXactMember, getMultiXactOffset } from "../formats/wal/rmgr/multixact.js";
import { engineFor, reconstruct, type RedoKey } from "./native_redo.js";

const REL = { spcOid: 1663, dbOid: 5, relNumber: 16384 };
let nextLsn = 0x2000028;

/** Encodes and decodes a record placed at the next LSN (what the WAL decoder hands out). */
function rec(spec: Omit<RecordSpec, "prevLsn">): DecodedRecord {
  const raw = encodeRecord({ ...spec, prevLsn: lsn(0x2000000) });
  const at = lsn(nextLsn);
  nextLsn += raw.length + 64;
  return decodeRecord(raw, at, lsnAdd(at, raw.length));
}

function u32s(...v: number[]): Uint8Array {
  const b = new Uint8Array(v.length * 4);
  const dv = new DataView(b.buffer);
  v.forEach((x, i) => dv.setUint32(i * 4, x >>> 0, true));
  return b;
}

function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** XACT COMMIT/ABORT with subtransactions (xl_xact_commit + xinfo + xl_xact_subxacts). */
function xactRecord(kind: "commit" | "abort", xid: number, subxacts: number[]): DecodedRecord {
  const time = new Uint8Array(8);
  const info = (kind === "commit" ? 0x00 : 0x20) | (subxacts.length > 0 ? 0x80 : 0);
  const body = subxacts.length > 0 ? cat(time, u32s(2 /* HAS_SUBXACTS */, subxacts.length, ...subxacts)) : time;
  return rec({ rmid: 1, info, xid, mainData: body });
}

function heapPage(seed: number): Uint8Array {
  const p = initPage(0);
  for (let i = 8000; i < 8192; i++) p[i] = (i * seed) & 0xff;
  new DataView(p.buffer).setUint16(14, 8000, true);
  return p;
}

function fpi(page: Uint8Array, forkNum = 0, blockNumber = 0, apply = true): DecodedRecord {
  const block: BlockRefSpec = { id: 0, forkNum, rel: REL, blockNumber, image: { bytes: page, apply, compression: "none" } };
  return rec({ rmid: 0, info: 0xb0, blocks: [block] });
}

/** HEAP INSERT on heap block `blk` with xl_heap_insert.flags. */
function heapInsert(blk: number, flags: number, rel = REL): DecodedRecord {
  return rec({ rmid: 10, info: 0x00, mainData: new Uint8Array([3, 0, flags]), blocks: [{ id: 0, forkNum: 0, rel, blockNumber: blk, data: new Uint8Array(8) }] });
}

const relKey = (forkNum: number, blockNumber: number): RedoKey => ({ kind: "rel", rel: REL, forkNum, blockNumber });
const isInvalid = (re: RegExp) => (e: unknown) => e instanceof StrataError && e.code === "invalid_argument" && re.test(e.message);

test("engineFor: images, VM clears and SLRU records are native; the rest goes to the helper", () => {
  const page = heapPage(3);
  assert.equal(engineFor(relKey(0, 0), { kind: "wal", record: fpi(page) }), "native");
  assert.equal(engineFor(relKey(3, 0), { kind: "wal", record: fpi(page, 3) }), "native");
  assert.equal(engineFor(relKey(0, 0), { kind: "wal", record: fpi(page, 0, 0, false) }), "helper", "consistency-only image");
  assert.equal(engineFor(relKey(0, 0), { kind: "wal", record: heapInsert(0, 0) }), "helper");
  assert.equal(engineFor(relKey(2, 0), { kind: "wal", record: heapInsert(0, 1) }), "native");
  assert.equal(engineFor(relKey(0, 0), { kind: "zeroPage" }), "zero");
  assert.equal(engineFor({ kind: "slru", slru: "clog", pageno: 0 }, { kind: "wal", record: xactRecord("commit", 10, []) }), "native");
  assert.throws(() => engineFor(relKey(0, 0), { kind: "wal", record: xactRecord("commit", 10, []) }), isInvalid(/changes SLRU pages/));
  assert.throws(() => engineFor({ kind: "slru", slru: "clog", pageno: 0 }, { kind: "wal", record: heapInsert(0, 0) }), isInvalid(/does not change this SLRU page/));
  assert.throws(() => engineFor({ kind: "slru", slru: "multixact_offsets", pageno: 0 }, { kind: "wal", record: rec({ rmid: 6, info: 0x10, mainData: u32s(0) }) }), isInvalid(/does not change/));
});

test("clog: commit and abort set the final status of the XID and its subtransactions on this page only", async () => {
  const key0: RedoKey = { kind: "slru", slru: "clog", pageno: 0 };
  const key1: RedoKey = { kind: "slru", slru: "clog", pageno: 1 };
  // 32767 is the last XID of page 0, 32768 the first of page 1
  const commit = xactRecord("commit", 1000, [1001, 32767, 32768, 40000]);
  const abort = xactRecord("abort", 2000, [2001]);
  const p0 = await reconstruct(key0, new Uint8Array(8192), [commit, abort]);
  for (const x of [1000, 1001, 32767]) assert.equal(getClogStatus(p0, x), 1, `xid ${x}`);
  for (const x of [2000, 2001]) assert.equal(getClogStatus(p0, x), 2, `xid ${x}`);
  assert.equal(getClogStatus(p0, 999), 0);
  assert.equal(getClogStatus(p0, 1002), 0);
  const p1 = await reconstruct(key1, new Uint8Array(8192), [commit, abort]);
  assert.equal(getClogStatus(p1, 32768), 1);
  assert.equal(getClogStatus(p1, 40000), 1);
  assert.equal(p1.reduce((n, b) => n + (b !== 0 ? 1 : 0), 0), 2, "only two bytes changed on page 1");
  // ZEROPAGE of this page zeroes it; of another page leaves it alone
  const zero0 = rec({ rmid: 3, info: 0x00, mainData: u32s(0) });
  const zero1 = rec({ rmid: 3, info: 0x00, mainData: u32s(1) });
  assert.deepEqual(await reconstruct(key0, p0, [zero0]), new Uint8Array(8192));
  assert.deepEqual(await reconstruct(key0, p0, [zero1]), p0);
  // from nothing: ZEROPAGE then commit
  const p = await reconstruct(key0, undefined, [zero0, xactRecord("commit", 5, [])]);
  assert.equal(getClogStatus(p, 5), 1);
  await assert.rejects(reconstruct(key0, undefined, [commit]), isInvalid(/no base image/));
});

test("multixact: CREATE_ID writes the offset and the members, across member pages and the u32 wrap", async () => {
  const create = (mid: number, moff: number, members: [number, number][]) =>
    rec({ rmid: 6, info: 0x20, mainData: u32s(mid, moff, members.length, ...members.flat()) });
  const off: RedoKey = { kind: "slru", slru: "multixact_offsets", pageno: 0 };
  const m1 = create(5, 100, [
    [700, 0],
    [701, 5],
    [702, 3],
  ]);
  const offs = await reconstruct(off, new Uint8Array(8192), [m1]);
  assert.equal(getMultiXactOffset(offs, 5), 100);
  assert.equal(getMultiXactOffset(offs, 6), 103, "the next multixact's start (15.18 RecordNewMultiXact)");
  assert.equal(getMultiXactOffset(offs, 4), 0);
  // the next multixact's entry on the next page: that page is written (and
  // created if missing), the own page is not needed
  const lastOnPage0 = 2047;
  const m0 = create(lastOnPage0, 5000, [[1, 1]]);
  const next = await reconstruct({ kind: "slru", slru: "multixact_offsets", pageno: 1 }, undefined, [m0]);
  assert.equal(getMultiXactOffset(next, 2048), 5001);
  // wrap: the multixact after 2^32-1 is 1, and a next offset of 0 becomes 1
  const wrap = create(0xffffffff, 0xfffffffe, [
    [1, 1],
    [2, 1],
  ]);
  const first = await reconstruct(off, new Uint8Array(8192), [wrap]);
  assert.equal(getMultiXactOffset(first, 1), 1);
  const mem0: RedoKey = { kind: "slru", slru: "multixact_members", pageno: 0 };
  const members = await reconstruct(mem0, new Uint8Array(8192), [m1]);
  assert.deepEqual([100, 101, 102].map((o) => getMultiXactMember(members, o)), [
    { xid: 700, status: 0 },
    { xid: 701, status: 5 },
    { xid: 702, status: 3 },
  ]);
  // 1636 members per page: offsets 1635 and 1636 are on pages 0 and 1
  const m2 = create(6, 1635, [
    [800, 1],
    [801, 2],
  ]);
  const p0 = await reconstruct(mem0, new Uint8Array(8192), [m2]);
  const p1 = await reconstruct({ kind: "slru", slru: "multixact_members", pageno: 1 }, new Uint8Array(8192), [m2]);
  assert.deepEqual(getMultiXactMember(p0, 1635), { xid: 800, status: 1 });
  assert.deepEqual(getMultiXactMember(p1, 1636), { xid: 801, status: 2 });
  assert.deepEqual(getMultiXactMember(p0, 1634), { xid: 0, status: 0 });
  // the member offset wraps from 2^32-1 to 0
  const m3 = create(7, 0xffffffff, [
    [900, 4],
    [901, 4],
  ]);
  const last = Math.floor(0xffffffff / 1636);
  const pl = await reconstruct({ kind: "slru", slru: "multixact_members", pageno: last }, new Uint8Array(8192), [m3]);
  const pz = await reconstruct(mem0, new Uint8Array(8192), [m3]);
  assert.deepEqual(getMultiXactMember(pl, 0xffffffff), { xid: 900, status: 4 });
  assert.deepEqual(getMultiXactMember(pz, 0), { xid: 901, status: 4 });
  // ZERO_OFF_PAGE / ZERO_MEM_PAGE
  assert.deepEqual(await reconstruct(off, offs, [rec({ rmid: 6, info: 0x00, mainData: u32s(0) })]), new Uint8Array(8192));
  assert.deepEqual(await reconstruct(mem0, members, [rec({ rmid: 6, info: 0x10, mainData: u32s(0) })]), new Uint8Array(8192));
});

test("visibility map: heap records clear the bits of their heap block on the VM page, LSN untouched", async () => {
  const vm = initPage(0);
  vm.fill(0xff, 24, 24 + 100);
  setPageLsn(vm, lsn(0x1234));
  const key = relKey(2, 0);
  const page = await reconstruct(key, vm, [heapInsert(2, 1), heapInsert(5, 0)]);
  // heap block 2: byte 0 of the map, bits 4-5
  assert.equal(page[24], 0xff & ~(0x3 << 4));
  assert.equal(page[25], 0xff, "block 5 had no clear flag");
  assert.equal(getPageLsn(page), lsn(0x1234));
  // a heap block mapping to VM page 1 does not touch page 0
  assert.deepEqual(await reconstruct(key, vm, [heapInsert(40000, 1)]), vm);
  // another relation's record does not either
  assert.deepEqual(await reconstruct(key, vm, [heapInsert(2, 1, { ...REL, relNumber: 1 })]), vm);
  // HEAP LOCK with ALL_FROZEN_CLEARED clears only the frozen bit
  const lock = rec({ rmid: 10, info: 0x60, mainData: cat(u32s(1234), new Uint8Array([1, 0, 0, 1])), blocks: [{ id: 0, forkNum: 0, rel: REL, blockNumber: 0 }] });
  const locked = await reconstruct(key, vm, [lock]);
  assert.equal(locked[24], 0xff & ~0x2);
  // no VM page yet: vm_readbuf's PageInit, then the clear
  assert.deepEqual(await reconstruct(key, undefined, [heapInsert(2, 1)]), initPage(0));
});

test("full-page images apply natively: hole re-inserted, pd_lsn = MAXALIGNed end; new pages keep LSN 0", async () => {
  const img = heapPage(7);
  const r = fpi(img, 0, 4);
  const page = await reconstruct(relKey(0, 4), undefined, [r]);
  const expected = new Uint8Array(img);
  setPageLsn(expected, lsn((r.endLsn + 7n) & ~7n) as Lsn);
  assert.deepEqual(page, expected);
  // init fork
  const init = await reconstruct(relKey(3, 0), undefined, [fpi(img, 3, 0)]);
  assert.equal(getPageLsn(init) > 0n, true);
  // an all-zero image stays all zeros
  assert.deepEqual(await reconstruct(relKey(0, 9), heapPage(1), [fpi(new Uint8Array(8192), 0, 9)]), new Uint8Array(8192));
  // later images win; zeroPage markers zero the page
  assert.deepEqual(await reconstruct(relKey(0, 4), undefined, [fpi(heapPage(1), 0, 4), r]), page);
  assert.deepEqual(await reconstruct(relKey(0, 4), undefined, [r, { kind: "zeroPage" }]), new Uint8Array(8192));
  // checksums
  const stamped = await reconstruct(relKey(0, 4), undefined, [r], { setChecksum: true });
  assert.ok(verifyPageChecksum(stamped, 4));
});

test("records that need PostgreSQL's redo need a pool; bad inputs are refused", async () => {
  await assert.rejects(reconstruct(relKey(0, 0), heapPage(1), [heapInsert(0, 0)]), isInvalid(/no walredo pool was given/));
  await assert.rejects(reconstruct(relKey(0, 0), new Uint8Array(100), []), isInvalid(/base image is 100 bytes/));
  await assert.rejects(reconstruct(relKey(0, 0), undefined, []), isInvalid(/no base image and no records/));
});
