import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../../lib/errors.js";
import { parseLsn, type Lsn } from "../../lib/lsn.js";
import {
  encodePageHeader,
  isValidWalSegSize,
  makePageHeader,
  pageHeaderSize,
  parsePageHeader,
  SIZE_OF_XLOG_LONG_PHD,
  SIZE_OF_XLOG_SHORT_PHD,
  validatePageHeader,
  writePageHeader,
  XLOG_PAGE_MAGIC,
  XLP_BKP_REMOVABLE,
  XLP_FIRST_IS_CONTRECORD,
  XLP_LONG_HEADER,
  type XLogPageHeader,
} from "./xlog_page.js";

const SEG = 16 * 1024 * 1024;
// The long header of segment 000000010000000000000001 from a fresh PostgreSQL 15.18 initdb.
const REAL_LONG_HEADER = Uint8Array.from(
  Buffer.from("10d1020001000000000000010000000000000000000000004a8e38a8659e0b6b0000000100200000", "hex"),
);

test("parse a real long page header", () => {
  const h = parsePageHeader(REAL_LONG_HEADER);
  assert.equal(h.magic, XLOG_PAGE_MAGIC);
  assert.equal(h.info, XLP_LONG_HEADER);
  assert.equal(h.tli, 1);
  assert.equal(h.pageAddr, parseLsn("0/1000000"));
  assert.equal(h.remLen, 0);
  assert.equal(h.long?.systemId, 0x6b0b9e65a8388e4an);
  assert.equal(h.long?.segSizeBytes, SEG);
  assert.equal(h.long?.xlogBlckSz, 8192);
  validatePageHeader(h, parseLsn("0/1000000"), { walSegSizeBytes: SEG, systemId: 0x6b0b9e65a8388e4an });
  assert.deepEqual(encodePageHeader(h), REAL_LONG_HEADER);
});

test("short and long headers round trip", () => {
  const cases: XLogPageHeader[] = [
    makePageHeader({ pageAddr: parseLsn("0/1002000"), tli: 1, remLen: 0, walSegSizeBytes: SEG, systemId: 1n }),
    makePageHeader({ pageAddr: parseLsn("5/A2000"), tli: 7, remLen: 1234, walSegSizeBytes: SEG, systemId: 1n, extraInfo: XLP_BKP_REMOVABLE }),
    makePageHeader({ pageAddr: parseLsn("FFFFFFFF/FF000000"), tli: 2, remLen: 99, walSegSizeBytes: SEG, systemId: 0xffffffffffffffffn }),
  ];
  for (const h of cases) {
    const bytes = encodePageHeader(h);
    assert.equal(bytes.length, pageHeaderSize(h.info));
    assert.deepEqual(parsePageHeader(bytes), h);
    validatePageHeader(h, h.pageAddr, { walSegSizeBytes: SEG });
    // Written at an offset inside a larger buffer.
    const big = new Uint8Array(100).fill(0xee);
    assert.equal(writePageHeader(big, 7, h), bytes.length);
    assert.deepEqual(parsePageHeader(big, 7), h);
  }
  assert.equal(cases[0]!.info, 0);
  assert.equal(cases[1]!.info, XLP_BKP_REMOVABLE | XLP_FIRST_IS_CONTRECORD);
  assert.equal(cases[2]!.info, XLP_LONG_HEADER | XLP_FIRST_IS_CONTRECORD);
  assert.equal(encodePageHeader(cases[0]!).length, SIZE_OF_XLOG_SHORT_PHD);
  assert.equal(encodePageHeader(cases[2]!).length, SIZE_OF_XLOG_LONG_PHD);
});

function expectInvalid(h: XLogPageHeader, at: Lsn, re: RegExp, opts: { systemId?: bigint; previousTli?: number } = {}): void {
  assert.throws(
    () => validatePageHeader(h, at, { walSegSizeBytes: SEG, ...opts }),
    (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && re.test(e.message) && e.message.includes("WAL page at"),
  );
}

test("page header validation catches every invalid case", () => {
  const at = parseLsn("0/1002000");
  const short = makePageHeader({ pageAddr: at, tli: 3, remLen: 0, walSegSizeBytes: SEG, systemId: 1n });
  expectInvalid({ ...short, magic: 0xd10d }, at, /0\/1002000.*invalid magic number D10D/);
  expectInvalid({ ...short, info: 0x10 }, at, /invalid info bits 0010/);
  expectInvalid(short, parseLsn("0/1004000"), /unexpected pageaddr 0\/1002000/);
  expectInvalid(short, at, /out-of-sequence timeline ID 3 \(after 4\)/, { previousTli: 4 });
  validatePageHeader(short, at, { walSegSizeBytes: SEG, previousTli: 3 });

  const segStart = parseLsn("0/2000000");
  const long = makePageHeader({ pageAddr: segStart, tli: 1, remLen: 0, walSegSizeBytes: SEG, systemId: 42n });
  expectInvalid({ ...long, info: 0, long: undefined } as XLogPageHeader, segStart, /lacks XLP_LONG_HEADER/);
  expectInvalid(long, segStart, /different database system/, { systemId: 43n });
  expectInvalid({ ...long, long: { ...long.long!, segSizeBytes: SEG * 2 } }, segStart, /incorrect segment size 33554432/);
  expectInvalid({ ...long, long: { ...long.long!, xlogBlckSz: 4096 } }, segStart, /incorrect XLOG_BLCKSZ 4096/);
});

test("parse needs enough bytes", () => {
  assert.throws(() => parsePageHeader(new Uint8Array(23)), (e: unknown) => e instanceof StrataError && e.code === "truncated");
  assert.throws(() => parsePageHeader(REAL_LONG_HEADER.subarray(0, 30)), (e: unknown) => e instanceof StrataError && e.code === "truncated");
  assert.throws(() => writePageHeader(new Uint8Array(30), 0, parsePageHeader(REAL_LONG_HEADER)), /do not fit/);
});

test("segment size sanity", () => {
  assert.ok(isValidWalSegSize(SEG));
  assert.ok(isValidWalSegSize(1 << 20));
  assert.ok(isValidWalSegSize(1 << 30));
  assert.ok(!isValidWalSegSize(1 << 19));
  assert.ok(!isValidWalSegSize(2 ** 31));
  assert.ok(!isValidWalSegSize(3 << 20));
});
