import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../../../lib/errors.js";
import { lsn } from "../../../lib/lsn.js";
import { BodyWriter, type RecordBody } from "./body_reader.js";
import {
  CLOG_XACTS_PER_PAGE,
  clogBitShiftOf,
  clogByteOf,
  clogPageOf,
  getClogStatus,
  parseClogRecord,
  setClogStatus,
  TRANSACTION_STATUS_ABORTED,
  TRANSACTION_STATUS_COMMITTED,
  TRANSACTION_STATUS_SUB_COMMITTED,
} from "./clog.js";
import { slruSegmentFileName, slruSegmentOf, SLRU_PAGES_PER_SEGMENT } from "./slru.js";

const at = lsn(0x3000000);
const rec = (info: number, mainData: Uint8Array): RecordBody => ({ lsn: at, info, mainData });
function assertEveryPrefixFails(r: RecordBody): void {
  for (let n = 0; n < r.mainData.length; n++) {
    assert.throws(
      () => parseClogRecord({ ...r, mainData: r.mainData.subarray(0, n) }),
      (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && /CLOG \w+ record at 0\/3000000/.test(e.message),
    );
  }
}

test("clog geometry matches clog.c: 2 bits per xact, 32768 xacts per page, 32 pages per segment", () => {
  assert.equal(CLOG_XACTS_PER_PAGE, 32768);
  assert.equal(SLRU_PAGES_PER_SEGMENT, 32);
  assert.equal(clogPageOf(32767), 0);
  assert.equal(clogPageOf(32768), 1);
  assert.equal(clogByteOf(32768 + 9), 2);
  assert.equal(clogBitShiftOf(9), 2);
  assert.equal(clogBitShiftOf(11), 6);
  // Highest XID: page 131071, segment 4095 = "0FFF".
  assert.equal(clogPageOf(0xffffffff), 131071);
  assert.equal(slruSegmentFileName(slruSegmentOf(clogPageOf(0xffffffff))), "0FFF");
  assert.equal(slruSegmentFileName(0x1a), "001A");
});

test("setting status bits touches only the xact's two bits", () => {
  const page = new Uint8Array(8192);
  setClogStatus(page, 1000, TRANSACTION_STATUS_COMMITTED);
  setClogStatus(page, 1001, TRANSACTION_STATUS_ABORTED);
  setClogStatus(page, 1003, TRANSACTION_STATUS_SUB_COMMITTED);
  assert.equal(page[250], 0b11_00_10_01);
  assert.equal(getClogStatus(page, 1000), 1);
  assert.equal(getClogStatus(page, 1002), 0);
  setClogStatus(page, 1003, TRANSACTION_STATUS_COMMITTED);
  assert.equal(page[250], 0b01_00_10_01);
  assert.throws(() => setClogStatus(new Uint8Array(10), 1, 1), /clog page is 10 bytes/);
  assert.throws(() => setClogStatus(page, 1, 4), /clog status 4 is outside/);
});

test("ZEROPAGE and TRUNCATE", () => {
  const zero = new BodyWriter().i32(3).finish();
  assert.deepEqual(parseClogRecord(rec(0x00, zero)), { type: "ZEROPAGE", pageno: 3 });
  assertEveryPrefixFails(rec(0x00, zero));
  const trunc = new BodyWriter().i32(2).u32(70000).u32(1).finish();
  assert.deepEqual(parseClogRecord(rec(0x10, trunc)), { type: "TRUNCATE", pageno: 2, oldestXact: 70000, oldestXactDb: 1 });
  assertEveryPrefixFails(rec(0x10, trunc));
  assert.throws(() => parseClogRecord(rec(0x00, new BodyWriter().i32(-1).finish())), /pageno -1 is negative/);
  assert.throws(() => parseClogRecord(rec(0x20, zero)), /unknown CLOG record type/);
});
