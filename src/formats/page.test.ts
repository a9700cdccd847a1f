/** Unit tests for the data page header: round trips and one invalid case per rule. */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  BLCKSZ,
  getPageLsn,
  headerProblem,
  initPage,
  linePointerCount,
  pageIsAllZero,
  pageIsNew,
  parsePageHeader,
  setPageLsn,
  validatePage,
  writePageHeader,
  type PageHeader,
} from "./page.js";
import { setPageChecksum } from "./page_checksum.js";
import { lsn, parseLsn } from "../lib/lsn.js";
import { StrataError } from "../lib/errors.js";

const isCorrupt = (e: unknown) => e instanceof StrataError && e.code === "corrupt_data";

test("initPage produces PageInit's header; parse/write round trip", () => {
  const page = initPage(16);
  const h = parsePageHeader(page);
  assert.deepEqual(h, {
    lsn: 0n,
    checksum: 0,
    flags: 0,
    lower: 24,
    upper: 8176,
    special: 8176,
    pageSize: 8192,
    layoutVersion: 4,
    pruneXid: 0,
  });
  const h2: PageHeader = { ...h, lsn: parseLsn("1/2345678"), checksum: 0xbeef, flags: 5, lower: 40, upper: 100, pruneXid: 777 };
  writePageHeader(page, h2);
  assert.deepEqual(parsePageHeader(page), h2);
  assert.equal(linePointerCount(page), 4);
  validatePage(page);
});

test("pd_lsn is stored high half first", () => {
  const page = initPage();
  setPageLsn(page, parseLsn("A/B0C0D08"));
  assert.deepEqual([...page.subarray(0, 8)], [0x0a, 0, 0, 0, 0x08, 0x0d, 0x0c, 0x0b]);
  assert.equal(getPageLsn(page), parseLsn("A/B0C0D08"));
});

test("new pages: all-zero is valid, non-zero with pd_upper 0 is corrupt", () => {
  const page = new Uint8Array(BLCKSZ);
  assert.ok(pageIsNew(page));
  assert.ok(pageIsAllZero(page));
  assert.equal(linePointerCount(page), 0);
  validatePage(page, { blockNumber: 3, checksums: true });
  page[5000] = 1;
  assert.ok(!pageIsAllZero(page));
  assert.throws(() => validatePage(page), isCorrupt);
  // unaligned view takes the byte path
  const backing = new Uint8Array(BLCKSZ + 1);
  assert.ok(pageIsAllZero(backing.subarray(1)));
});

test("each header rule has an invalid case", () => {
  const cases: [Partial<PageHeader>, RegExp][] = [
    [{ flags: 0x8 }, /undefined bits/],
    [{ lower: 200, upper: 100 }, /pd_lower 200 > pd_upper/],
    [{ upper: 8190, special: 8184 }, /pd_upper 8190 > pd_special/],
    [{ special: 8200, upper: 8200 }, /pd_special 8200 > 8192/],
    [{ special: 8180, upper: 8180 }, /not MAXALIGNed/],
    [{ pageSize: 4096 }, /page size 4096/],
    [{ layoutVersion: 3 }, /layout version 3/],
  ];
  for (const [patch, re] of cases) {
    const page = initPage();
    writePageHeader(page, { ...parsePageHeader(page), ...patch });
    assert.match(headerProblem(parsePageHeader(page)) ?? "", re);
    assert.throws(() => validatePage(page, { context: "base/5/1234 block 9" }), (e: unknown) => isCorrupt(e) && /base\/5\/1234 block 9/.test(String(e)));
  }
});

test("validatePage checks checksums when asked", () => {
  const page = initPage(8);
  setPageLsn(page, lsn(0x1234567));
  setPageChecksum(page, 11);
  validatePage(page, { blockNumber: 11, checksums: true });
  assert.throws(() => validatePage(page, { blockNumber: 12, checksums: true }), (e: unknown) => isCorrupt(e) && /checksum mismatch/.test(String(e)));
  assert.throws(() => validatePage(page, { checksums: true }), (e: unknown) => e instanceof StrataError && e.code === "invalid_argument");
  page[300] = 9;
  assert.throws(() => validatePage(page, { blockNumber: 11, checksums: true }), isCorrupt);
  validatePage(page, { blockNumber: 11 }); // without checksums the header is still sane
});

test("short input is a StrataError, not a crash", () => {
  assert.throws(() => parsePageHeader(new Uint8Array(10)), (e: unknown) => e instanceof StrataError && e.code === "truncated");
  assert.throws(() => validatePage(new Uint8Array(4096)), (e: unknown) => e instanceof StrataError && e.code === "invalid_argument");
});
