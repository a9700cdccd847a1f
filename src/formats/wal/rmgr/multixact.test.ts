import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../../../lib/errors.js";
import { lsn } from "../../../lib/lsn.js";
import { BodyWriter, type RecordBody } from "./body_reader.js";
import {
  getMultiXactMember,
  getMultiXactOffset,
  MULTIXACT_MEMBERGROUPS_PER_PAGE,
  MULTIXACT_MEMBERS_PER_PAGE,
  MULTIXACT_OFFSETS_PER_PAGE,
  multiXactMemberFlagsBitShiftOf,
  multiXactMemberFlagsByteOf,
  multiXactMemberPageOf,
  multiXactMemberXidByteOf,
  multiXactOffsetByteOf,
  multiXactOffsetPageOf,
  parseMultiXactRecord,
  setMultiXactMember,
  setMultiXactOffset,
} from "./multixact.js";

const at = lsn(0x4000000);
const rec = (info: number, mainData: Uint8Array): RecordBody => ({ lsn: at, info, mainData });
function assertEveryPrefixFails(r: RecordBody): void {
  for (let n = 0; n < r.mainData.length; n++) {
    assert.throws(
      () => parseMultiXactRecord({ ...r, mainData: r.mainData.subarray(0, n) }),
      (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && /MULTIXACT \w+ record at 0\/4000000/.test(e.message),
    );
  }
}

test("multixact SLRU geometry matches multixact.c", () => {
  assert.equal(MULTIXACT_OFFSETS_PER_PAGE, 2048);
  assert.equal(MULTIXACT_MEMBERGROUPS_PER_PAGE, 409);
  assert.equal(MULTIXACT_MEMBERS_PER_PAGE, 1636);
  assert.equal(multiXactOffsetPageOf(2048), 1);
  assert.equal(multiXactOffsetByteOf(2049), 4);
  assert.equal(multiXactMemberPageOf(1635), 0);
  assert.equal(multiXactMemberPageOf(1636), 1);
  // member 6: group 1 (bytes 20..39), flags byte 22 (shift 16), xid at 20 + 4 + 2*4 = 32.
  assert.equal(multiXactMemberFlagsByteOf(6), 20);
  assert.equal(multiXactMemberFlagsBitShiftOf(6), 16);
  assert.equal(multiXactMemberXidByteOf(6), 32);
  // The last group of a page ends 12 bytes before the page end.
  assert.equal(multiXactMemberXidByteOf(1635) + 4, 8192 - 12);
  assert.equal(multiXactMemberFlagsByteOf(1636), 0);
});

test("writing offsets and members into pages", () => {
  const off = new Uint8Array(8192);
  setMultiXactOffset(off, 2049, 0xfffffff0);
  assert.equal(getMultiXactOffset(off, 2049), 0xfffffff0);
  assert.deepEqual([...off.subarray(4, 8)], [0xf0, 0xff, 0xff, 0xff]);
  const mem = new Uint8Array(8192);
  setMultiXactMember(mem, 6, { xid: 1234, status: 5 });
  setMultiXactMember(mem, 7, { xid: 99, status: 1 });
  assert.equal(mem[22], 5);
  assert.equal(mem[23], 1);
  assert.deepEqual(getMultiXactMember(mem, 6), { xid: 1234, status: 5 });
  assert.deepEqual(getMultiXactMember(mem, 7), { xid: 99, status: 1 });
  assert.throws(() => setMultiXactMember(mem, 1, { xid: 1, status: 6 }), /multixact status 6 is outside/);
});

test("ZERO_OFF_PAGE, ZERO_MEM_PAGE, CREATE_ID, TRUNCATE_ID", () => {
  const z = new BodyWriter().i32(5).finish();
  assert.deepEqual(parseMultiXactRecord(rec(0x00, z)), { type: "ZERO_OFF_PAGE", pageno: 5 });
  assert.deepEqual(parseMultiXactRecord(rec(0x10, z)), { type: "ZERO_MEM_PAGE", pageno: 5 });
  assertEveryPrefixFails(rec(0x10, z));
  const create = new BodyWriter().u32(3).u32(4).i32(2).u32(740).i32(0).u32(741).i32(5).finish();
  assert.deepEqual(parseMultiXactRecord(rec(0x20, create)), {
    type: "CREATE_ID",
    mid: 3,
    moff: 4,
    members: [
      { xid: 740, status: 0 },
      { xid: 741, status: 5 },
    ],
  });
  assertEveryPrefixFails(rec(0x20, create));
  const badStatus = new BodyWriter().u32(3).u32(4).i32(1).u32(740).i32(9).finish();
  assert.throws(() => parseMultiXactRecord(rec(0x20, badStatus)), /member 0 status 9 is outside \[0, 5\]/);
  const midZero = new BodyWriter().u32(0).u32(4).i32(0).finish();
  assert.throws(() => parseMultiXactRecord(rec(0x20, midZero)), /mid is InvalidMultiXactId/);
  const trunc = new BodyWriter().u32(1).u32(1).u32(100).u32(0).u32(500).finish();
  assert.deepEqual(parseMultiXactRecord(rec(0x30, trunc)), {
    type: "TRUNCATE_ID", oldestMultiDb: 1, startTruncOff: 1, endTruncOff: 100, startTruncMemb: 0, endTruncMemb: 500,
  });
  assertEveryPrefixFails(rec(0x30, trunc));
  assert.throws(() => parseMultiXactRecord(rec(0x40, trunc)), /unknown MULTIXACT record type/);
});
