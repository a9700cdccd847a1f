import { test } from "node:test";
import assert from "node:assert/strict";
import {
  formatLsn, lsn, lsnAdd, lsnAlign, lsnDiff, LSN_MAX, parseLsn, parseWalFileName, segmentNumber,
  segmentOffset, segmentStart, walFileName, pageOffset, pageStart,
} from "./lsn.js";

test("parse and format round trip as PostgreSQL prints", () => {
  assert.equal(formatLsn(parseLsn("0/16B3748")), "0/16B3748");
  assert.equal(formatLsn(parseLsn("0/16b3748")), "0/16B3748");
  assert.equal(formatLsn(parseLsn("FFFFFFFF/FFFFFFFF")), "FFFFFFFF/FFFFFFFF");
  assert.equal(parseLsn("1/0"), 1n << 32n);
  assert.equal(formatLsn(lsn(0)), "0/0");
});

test("parse rejects malformed text with a precise message", () => {
  assert.throws(() => parseLsn("16B3748"), /missing "\/"/);
  assert.throws(() => parseLsn("0/"), /expected X\/Y/);
  assert.throws(() => parseLsn("123456789/0"), /expected X\/Y/);
  assert.throws(() => parseLsn("0/xyz"), /expected X\/Y/);
});

test("arithmetic is checked", () => {
  assert.equal(lsnAdd(lsn(10), 5), 15n);
  assert.throws(() => lsnAdd(lsn(LSN_MAX), 1));
  assert.throws(() => lsnDiff(lsn(1), lsn(2)), /negative/);
  assert.equal(lsnDiff(lsn(7), lsn(2)), 5n);
  assert.throws(() => lsn(-1n));
  assert.throws(() => lsn(2 ** 60));
  assert.equal(lsnAlign(lsn(0x1001)), 0x1008n);
  assert.equal(lsnAlign(lsn(0x1008)), 0x1008n);
});

test("segment and page math", () => {
  const l = parseLsn("1/2345678");
  assert.equal(segmentNumber(l), 0x102n);
  assert.equal(segmentOffset(l), 0x345678);
  assert.equal(segmentStart(0x102n), parseLsn("1/2000000"));
  assert.equal(pageOffset(l), 0x1678);
  assert.equal(pageStart(l), parseLsn("1/2344000"));
});

test("WAL file names match XLogFileName", () => {
  assert.equal(walFileName(1, 1n), "000000010000000000000001");
  assert.equal(walFileName(1, segmentNumber(parseLsn("1/2345678"))), "000000010000000100000002");
  const p = parseWalFileName("000000010000000100000002.partial");
  assert.deepEqual(p, { timeline: 1, segNo: 0x102n, partial: true });
  assert.throws(() => parseWalFileName("00000001000000010000000"), /24 upper-case hex/);
  assert.throws(() => parseWalFileName("000000010000000100000100"), /out of range/);
});
