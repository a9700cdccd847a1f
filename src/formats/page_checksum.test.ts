/**
 * Unit tests for pg_checksum_page. The expected values were computed by
 * PostgreSQL 15's own checksum_impl.h (compiled against the installed server
 * headers) for three deterministic page patterns and five block numbers;
 * test/page_checksum.test.ts checks real relation files of a live server.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { pageChecksum, setPageChecksum, verifyPageChecksum } from "./page_checksum.js";
import { StrataError } from "../lib/errors.js";

const PATTERNS: ((i: number) => number)[] = [
  (i) => (i * 31 + 7) & 0xff,
  (i) => (i === 14 ? 1 : 0),
  (i) => ((i * i + 3 * i) >> 3) & 0xff,
];
const BLOCKS = [0, 1, 7, 12345, 4294967295];
// [pattern][block] -> pg_checksum_page() as printed by the C program.
const EXPECTED = [
  [51176, 51177, 51179, 47105, 14361],
  [21607, 21606, 21600, 25726, 43930],
  [31835, 31836, 31838, 19492, 33702],
];

function flipBit(page: Uint8Array, off: number): void {
  page[off] = (page[off] ?? 0) ^ 0x01;
}

function patternPage(p: number): Uint8Array {
  const page = new Uint8Array(8192);
  for (let i = 0; i < page.length; i++) page[i] = PATTERNS[p]!(i);
  return page;
}

test("pageChecksum matches PostgreSQL's pg_checksum_page for known pages", () => {
  for (let p = 0; p < PATTERNS.length; p++) {
    const page = patternPage(p);
    for (let b = 0; b < BLOCKS.length; b++) {
      assert.equal(pageChecksum(page, BLOCKS[b]!), EXPECTED[p]![b], `pattern ${p} block ${BLOCKS[b]}`);
    }
  }
});

test("pageChecksum ignores the stored pd_checksum and works on unaligned views", () => {
  const page = patternPage(0);
  const before = pageChecksum(page, 3);
  page[8] = 0x12;
  page[9] = 0x34;
  assert.equal(pageChecksum(page, 3), before);
  const backing = new Uint8Array(8192 + 3);
  backing.set(page, 3);
  assert.equal(pageChecksum(backing.subarray(3), 3), before);
  // pd_flags (bytes 10-11) share the word with pd_checksum and do count.
  flipBit(page, 10);
  assert.notEqual(pageChecksum(page, 3), before);
});

test("setPageChecksum / verifyPageChecksum round trip; any flipped byte or wrong block fails", () => {
  const page = patternPage(2);
  const c = setPageChecksum(page, 42);
  assert.equal(page[8]! | (page[9]! << 8), c);
  assert.ok(verifyPageChecksum(page, 42));
  assert.ok(!verifyPageChecksum(page, 43), "transposed block must fail");
  let detected = 0;
  for (const off of [0, 7, 10, 24, 100, 4096, 8191]) {
    flipBit(page, off);
    if (!verifyPageChecksum(page, 42)) detected++;
    flipBit(page, off);
  }
  assert.equal(detected, 7);
  assert.ok(verifyPageChecksum(page, 42));
});

test("checksum values are always in [1, 65535]", () => {
  const page = new Uint8Array(8192);
  for (let b = 0; b < 2000; b++) {
    page[100] = b & 0xff;
    page[200] = b >> 8;
    const c = pageChecksum(page, b);
    assert.ok(c >= 1 && c <= 65535);
  }
});

test("bad arguments are StrataErrors", () => {
  assert.throws(() => pageChecksum(new Uint8Array(100), 0), (e: unknown) => e instanceof StrataError && e.code === "invalid_argument");
  assert.throws(() => pageChecksum(new Uint8Array(8192), -1), StrataError);
  assert.throws(() => pageChecksum(new Uint8Array(8192), 2 ** 32), StrataError);
});

test("throughput: at least 20k pages/s (measured and printed)", () => {
  const page = patternPage(0);
  const n = 20000;
  const t0 = process.hrtime.bigint();
  let acc = 0;
  for (let i = 0; i < n; i++) acc ^= pageChecksum(page, i);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const perSec = Math.round((n / ms) * 1000);
  console.log(`pageChecksum: ${perSec} pages/s (${((perSec * 8192) / 1e6).toFixed(0)} MB/s)`);
  assert.ok(acc >= 0);
  assert.ok(perSec > 20000, `${perSec} pages/s`);
});
