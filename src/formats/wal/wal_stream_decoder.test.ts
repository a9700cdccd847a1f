import { test } from "node:test";
import assert from "node:assert/strict";
import { formatLsn, parseLsn, XLOG_BLCKSZ, type Lsn } from "../../lib/lsn.js";
import type { DecodedRecord } from "./decoded_record.js";
import { WalStreamDecoder } from "./wal_stream_decoder.js";
import { WalWriter } from "./wal_writer.js";
import { encodeRecord, WalDecodeError, type RecordSpec } from "./xlog_record.js";
import { XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_FIRST_IS_CONTRECORD } from "./xlog_page.js";
import { seededRandom as prng } from "../../lib/prng.js";

const SEG = 1024 * 1024; // small segments so tests cross segment boundaries cheaply

interface Written {
  lsn: Lsn;
  endLsn: Lsn;
  raw: Uint8Array;
}

/** Builds a WAL stream of records with main data of the given sizes (prev-links chained). */
class StreamBuilder {
  readonly w: WalWriter;
  readonly written: Written[] = [];
  private prev: Lsn;
  constructor(start: Lsn, prev: Lsn = parseLsn("0/0")) {
    this.w = new WalWriter({ startLsn: start, walSegSizeBytes: SEG, systemId: 777n });
    this.prev = prev;
  }
  add(spec: Omit<RecordSpec, "prevLsn">): Written {
    const lsn = this.w.nextRecordLsn;
    const raw = encodeRecord({ ...spec, prevLsn: this.prev });
    const placed = this.w.appendRecord(raw);
    assert.equal(placed.lsn, lsn);
    this.prev = lsn;
    const rec = { lsn, endLsn: placed.endLsn, raw };
    this.written.push(rec);
    return rec;
  }
  addData(n: number, fill = n & 0xff): Written {
    return this.add({ rmid: 10, info: 0, xid: 7, mainData: new Uint8Array(n).fill(fill) });
  }
  /** Adds a record of exactly `total` bytes (>= 26). */
  addTotal(total: number): Written {
    if (total <= 24 + 2 + 255) return this.addData(total - 26);
    return this.addData(total - 29);
  }
  bytes(): Uint8Array {
    return this.w.take();
  }
}

function decodeAll(start: Lsn, chunks: Iterable<Uint8Array>): DecodedRecord[] {
  const d = new WalStreamDecoder(start, { walSegSizeBytes: SEG });
  const out: DecodedRecord[] = [];
  for (const c of chunks) {
    d.feed(c);
    for (const r of d.records()) out.push(r);
  }
  d.end();
  return out;
}

function randomChunks(bytes: Uint8Array, rnd: () => number, maxChunk: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; ) {
    const n = 1 + Math.floor(rnd() * maxChunk);
    out.push(bytes.slice(i, i + n));
    i += n;
  }
  return out;
}

function assertSame(got: DecodedRecord[], want: Written[]): void {
  assert.equal(got.length, want.length, "record count");
  for (let i = 0; i < want.length; i++) {
    const g = got[i]!;
    const w = want[i]!;
    assert.equal(formatLsn(g.lsn), formatLsn(w.lsn), `record ${i} lsn`);
    assert.equal(formatLsn(g.endLsn), formatLsn(w.endLsn), `record ${i} end`);
    assert.equal(g.totalLength, w.raw.length);
    assert.ok(Buffer.from(g.raw).equals(Buffer.from(w.raw)), `record ${i} bytes`);
  }
}

/** A mixed stream: tiny, page-sized, multi-page and multi-segment records. */
function mixedStream(start: Lsn, seed: number): StreamBuilder {
  const rnd = prng(seed);
  const b = new StreamBuilder(start);
  for (let i = 0; i < 400; i++) {
    const kind = rnd();
    if (kind < 0.6) b.addData(Math.floor(rnd() * 200));
    else if (kind < 0.85) b.addData(Math.floor(rnd() * 9000));
    else if (kind < 0.97) b.addData(Math.floor(rnd() * 40000));
    else b.addData(1_200_000 + Math.floor(rnd() * 1000)); // longer than a segment
  }
  return b;
}

test("decodes a mixed stream fed whole, in random chunks, and byte by byte", () => {
  const start = parseLsn("0/3000000");
  const b = mixedStream(start, 1);
  const bytes = b.bytes();
  assert.ok(bytes.length > 3 * SEG);
  assertSame(decodeAll(start, [bytes]), b.written);
  for (const seed of [2, 3, 4]) {
    assertSame(decodeAll(start, randomChunks(bytes, prng(seed), 20000)), b.written);
    assertSame(decodeAll(start, randomChunks(bytes, prng(seed), 100)), b.written);
  }
  // One byte at a time over the first part (a few segments' worth is slow).
  const firstPart = bytes.subarray(0, 200_000);
  const expected = b.written.filter((w) => w.endLsn <= start + 200_000n);
  const d = new WalStreamDecoder(start, { walSegSizeBytes: SEG });
  const got: DecodedRecord[] = [];
  for (let i = 0; i < firstPart.length; i++) {
    d.feed(firstPart.subarray(i, i + 1));
    for (const r of d.records()) got.push(r);
  }
  assertSame(got, expected);
});

test("records split by a page boundary at every MAXALIGNed offset, and chunks split at every byte", () => {
  const start = parseLsn("0/500000");
  for (let before = 8; before <= XLOG_BLCKSZ - 24 - 8; before += 8) {
    // Place a filler so the target record starts `before` bytes before the page end.
    const b = new StreamBuilder(start);
    const fillerTotal = XLOG_BLCKSZ - 40 - before; // first page has the long header
    if (fillerTotal < 26) continue;
    b.addTotal(fillerTotal);
    const target = b.addData(300 + (before % 50));
    assert.equal(Number(target.lsn % 8192n), XLOG_BLCKSZ - before);
    b.addData(10);
    const bytes = b.bytes();
    assertSame(decodeAll(start, [bytes]), b.written);
    if (before <= 64 || before % 1024 === 0) {
      // Split the input at every byte of the target record.
      const from = Number(target.lsn - start);
      for (let cut = from; cut <= from + target.raw.length + 24; cut++) {
        assertSame(decodeAll(start, [bytes.subarray(0, cut), bytes.subarray(cut)]), b.written);
      }
    }
  }
});

test("starts at a record inside a page (walsender style) and at page boundaries", () => {
  const start = parseLsn("0/300000");
  const b = mixedStream(start, 5);
  const bytes = b.bytes();
  const rnd = prng(6);
  for (let k = 0; k < 40; k++) {
    const i = 1 + Math.floor(rnd() * (b.written.length - 2));
    const from = b.written[i]!;
    if (from.lsn % 8192n === 0n) continue;
    const sub = bytes.subarray(Number(from.lsn - start));
    assertSame(decodeAll(from.lsn, randomChunks(sub, rnd, 5000)), b.written.slice(i));
  }
  // From every page boundary of the first 3 segments: the continued record is skipped.
  for (let page: bigint = start; page < start + BigInt(3 * SEG); page += 8192n * 37n) {
    const sub = bytes.subarray(Number(page - start));
    const expect = b.written.filter((w) => w.lsn > page);
    assertSame(decodeAll(page as Lsn, [sub]), expect);
  }
});

test("starts at a segment whose first pages continue a multi-page record", () => {
  const start = parseLsn("0/100000");
  const b = new StreamBuilder(start);
  b.addData(SEG - 100); // ends beyond the first segment
  b.addData(30000); // crosses several pages of the second segment
  const after = b.addData(50);
  b.addData(60);
  const bytes = b.bytes();
  // Start at the second segment: the first record's tail is skipped.
  const seg2 = start + BigInt(SEG);
  assertSame(decodeAll(seg2 as Lsn, [bytes.subarray(SEG)]), b.written.slice(1));
  // Start at a page inside the second record: everything until `after` is skipped.
  const mid = (b.written[1]!.lsn - (b.written[1]!.lsn % 8192n) + 8192n) as Lsn;
  assertSame(decodeAll(mid, [bytes.subarray(Number(mid - start))]), b.written.slice(2));
  assert.ok(after.lsn > mid);
});

test("XLOG_SWITCH: the rest of the segment is skipped", () => {
  const start = parseLsn("0/100000");
  const b = new StreamBuilder(start);
  b.addData(100);
  const sw = b.add({ rmid: 0, info: 0x40, xid: 0 });
  b.w.padToSegmentEnd();
  const next = b.addData(20);
  b.addData(5000);
  assert.equal(next.lsn, start + BigInt(SEG) + 40n);
  const bytes = b.bytes();
  assert.equal(bytes.length > SEG, true);
  // Garbage in the padding is never looked at.
  const dirty = bytes.slice();
  dirty.fill(0xab, Number(sw.endLsn - start) + 8, SEG);
  for (const input of [bytes, dirty]) {
    const d = new WalStreamDecoder(start, { walSegSizeBytes: SEG });
    d.feed(input);
    const got = [...d.records()];
    assertSame(got, b.written);
    assert.equal(formatLsn(d.nextRecordLsn), formatLsn(b.written[3]!.endLsn + 8n - (b.written[3]!.endLsn % 8n || 8n)));
  }
});

test("a record ending exactly at a page or segment end", () => {
  const start = parseLsn("0/100000");
  const b = new StreamBuilder(start);
  b.addTotal(XLOG_BLCKSZ - 40); // fills the first page exactly
  b.addTotal(XLOG_BLCKSZ - 24 + XLOG_BLCKSZ - 24); // fills the next two pages exactly
  b.addData(10);
  assert.equal(b.written[0]!.endLsn % 8192n, 0n);
  assert.equal(b.written[1]!.endLsn % 8192n, 0n);
  assertSame(decodeAll(start, [b.bytes()]), b.written);
});

test("XLP_FIRST_IS_OVERWRITE_CONTRECORD drops the partial record", () => {
  const start = parseLsn("0/100000");
  const b = new StreamBuilder(start);
  const first = b.addData(100);
  const lost = b.addData(20000); // crosses into pages 2 and 3
  const bytes = b.bytes();
  // Keep only the first page; then a new page with the overwrite flag and a new record.
  const page2 = start + 8192n;
  const w2 = new WalWriter({ startLsn: page2 as Lsn, walSegSizeBytes: SEG, extraPageInfo: XLP_FIRST_IS_OVERWRITE_CONTRECORD });
  const rec = encodeRecord({ rmid: 0, info: 0xd0, prevLsn: first.lsn, mainData: new Uint8Array(16) });
  const placed = w2.appendRecord(rec);
  const input = new Uint8Array(8192 + 8192);
  input.set(bytes.subarray(0, 8192));
  input.set(w2.take(), 8192);
  const got = decodeAll(start, [input.subarray(0, 8192 + Number(placed.endLsn - page2))]);
  assert.deepEqual(
    got.map((r) => formatLsn(r.lsn)),
    [formatLsn(first.lsn), formatLsn(placed.lsn)],
  );
  assert.ok(lost.lsn < page2);
});

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

function expectError(start: Lsn, input: Uint8Array, at: Lsn, re: RegExp, code = "corrupt_data"): DecodedRecord[] {
  const d = new WalStreamDecoder(start, { walSegSizeBytes: SEG });
  const got: DecodedRecord[] = [];
  let err: unknown;
  try {
    d.feed(input);
    for (const r of d.records()) got.push(r);
    d.end();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof WalDecodeError, `expected WalDecodeError matching ${re}, got ${String(err)}`);
  assert.equal(err.code, code);
  assert.match(err.message, re);
  assert.equal(formatLsn(err.lsn), formatLsn(at));
  // Sticky: later calls fail the same way.
  assert.throws(() => d.next(), (e: unknown) => e === err);
  assert.throws(() => d.feed(new Uint8Array(8)), (e: unknown) => e === err);
  return got;
}

function setU32(b: Uint8Array, off: number, v: number): void {
  new DataView(b.buffer, b.byteOffset).setUint32(off, v, true);
}

test("invalid page headers, contrecords, lengths, prev-links and CRCs are reported at the right LSN", () => {
  const start = parseLsn("0/100000");
  const b = new StreamBuilder(start);
  for (let i = 0; i < 30; i++) b.addData(700);
  const crossing = b.written.find((w) => w.lsn / 8192n !== (w.endLsn - 1n) / 8192n)!;
  const bytes = b.bytes();
  const page2 = 8192; // relative offset of the second page
  const p2Lsn = (start + 8192n) as Lsn;
  const mutate = (f: (x: Uint8Array) => void): Uint8Array => {
    const x = bytes.slice();
    f(x);
    return x;
  };
  // Bad magic on the segment's first page.
  expectError(start, mutate((x) => (x[0] = 0x11)), start, /invalid magic number D111/);
  // Page inside a record: errors name the record.
  const recInP2 = crossing.lsn < p2Lsn ? crossing.lsn : p2Lsn;
  expectError(start, mutate((x) => (x[page2 + 1] = 0xd2)), recInP2, /invalid magic number D210.*inside the record/);
  expectError(start, mutate((x) => setU32(x, page2 + 8, 0x4000)), recInP2, /unexpected pageaddr 0\/4000/);
  expectError(start, mutate((x) => (x[page2 + 2] = 0x40)), recInP2, /invalid info bits 0040/);
  expectError(start, mutate((x) => (x[page2 + 2] = 0x04)), recInP2, /no contrecord flag at 0\/102000/);
  expectError(start, mutate((x) => setU32(x, page2 + 16, 5)), recInP2, /invalid contrecord length 5/i);
  expectError(start, mutate((x) => setU32(x, page2 + 4, 0)), recInP2, /out-of-sequence timeline ID 0/);
  // Long header fields.
  expectError(start, mutate((x) => setU32(x, 32, SEG * 2)), start, /incorrect segment size/);
  const other = new WalStreamDecoder(start, { walSegSizeBytes: SEG, systemId: 778n });
  assert.throws(() => other.feed(bytes) ?? other.next(), /different database system: system identifier 777, expected 778/);

  // Record-level: prev-link, rmgr, length, CRC.
  const r3 = b.written[3]!;
  const off3 = Number(r3.lsn - start);
  expectError(start, mutate((x) => (x[off3 + 8] = x[off3 + 8]! ^ 0x08)), r3.lsn, /incorrect prev-link .* at 0\/100.*expected/);
  expectError(start, mutate((x) => (x[off3 + 17] = 50)), r3.lsn, /resource manager ID 50/);
  expectError(start, mutate((x) => setU32(x, off3, 20)), r3.lsn, /wanted 24, got 20/);
  expectError(start, mutate((x) => (x[off3 + 30] = x[off3 + 30]! ^ 1)), r3.lsn, /checksum in record at/);
  // A record crossing a page: corruption in its second half.
  const offC = Number(crossing.endLsn - start) - 3;
  expectError(start, mutate((x) => (x[offC] = x[offC]! ^ 0xff)), crossing.lsn, /checksum/);
  // Too large a record (caps memory).
  expectError(start, mutate((x) => setU32(x, off3, 0x7fffffff)), r3.lsn, /exceeds the limit/);
  // A page continuing nothing, read at a record boundary.
  const z = new StreamBuilder(start);
  z.addTotal(8192 - 40);
  z.addData(10);
  const zb = z.bytes();
  zb[8192 + 2] = (zb[8192 + 2]! | XLP_FIRST_IS_CONTRECORD) & 0xff;
  setU32(zb, 8192 + 16, 8);
  expectError(start, zb, (start + 8192n + 24n) as Lsn, /Contrecord is requested by 0\/102018/);
});

test("end of WAL: zero length, truncated input", () => {
  const start = parseLsn("0/100000");
  const b = new StreamBuilder(start);
  b.addData(100);
  b.addData(20000);
  const bytes = b.bytes();
  const withZeros = new Uint8Array(bytes.length + 64);
  withZeros.set(bytes);
  const d = new WalStreamDecoder(start, { walSegSizeBytes: SEG });
  d.feed(withZeros);
  assert.equal(d.next()?.lsn, b.written[0]!.lsn);
  assert.equal(d.next()?.lsn, b.written[1]!.lsn);
  try {
    d.next();
    assert.fail("expected end of WAL");
  } catch (e) {
    assert.ok(e instanceof WalDecodeError);
    assert.equal(e.endOfWal, true);
    assert.match(e.message, /wanted 24, got 0/);
  }
  // Input that stops inside a record or page header: next() waits, end() reports truncation.
  for (const cut of [60, 100, 8192 + 10, Number(b.written[1]!.endLsn - start) - 1]) {
    const got = expectError(start, bytes.subarray(0, cut), b.written[cut < 150 ? 0 : 1]!.lsn, /ends in the middle of the record/, "truncated");
    assert.equal(got.length, cut < 150 ? 0 : 1);
  }
  // Stopping at a record boundary is clean.
  decodeAll(start, [bytes]);
  // Stopping inside a page header.
  const c = new StreamBuilder(start);
  c.addTotal(8192 - 40);
  c.addData(10);
  expectError(start, c.bytes().subarray(0, 8192 + 10), (start + 8192n) as Lsn, /middle of the page header/, "truncated");
});

test("constructor rejects impossible start positions", () => {
  assert.throws(() => new WalStreamDecoder(parseLsn("0/100004")), /Cannot start decoding WAL at 0\/100004/);
  assert.throws(() => new WalStreamDecoder(parseLsn("0/100010")), /Cannot start decoding/);
  assert.throws(() => new WalStreamDecoder(parseLsn("0/100000"), { walSegSizeBytes: 12345 }), /segment size/);
});

test("fuzz: random, truncated and corrupted input only yields records or WalDecodeError", () => {
  const start = parseLsn("0/100000");
  const b = mixedStream(start, 9);
  const bytes = b.bytes().subarray(0, 600_000);
  const rnd = prng(10);
  const deadline = Date.now() + 15_000;
  let runs = 0;
  let errors = 0;
  for (let k = 0; k < 300 && Date.now() < deadline; k++) {
    let input: Uint8Array;
    const mode = k % 3;
    if (mode === 0) {
      input = bytes.slice(0, Math.floor(rnd() * bytes.length));
      for (let f = 0; f < 1 + Math.floor(rnd() * 4); f++) {
        const i = Math.floor(rnd() * input.length);
        input[i] = Math.floor(rnd() * 256);
      }
    } else if (mode === 1) {
      input = new Uint8Array(1 + Math.floor(rnd() * 50000));
      for (let i = 0; i < input.length; i++) input[i] = Math.floor(rnd() * 256);
      if (rnd() < 0.5) input.set(bytes.subarray(0, 40)); // valid long header, garbage after
    } else {
      input = bytes.slice(0, Math.floor(rnd() * 100000));
      const i = 40 + Math.floor(rnd() * (input.length - 40));
      input.fill(0, i, Math.min(input.length, i + Math.floor(rnd() * 64)));
    }
    const d = new WalStreamDecoder(start, { walSegSizeBytes: SEG });
    try {
      for (const c of randomChunks(input, rnd, 9000)) {
        d.feed(c);
        for (const r of d.records()) assert.ok(r.totalLength >= 24);
      }
      d.end();
    } catch (e) {
      if (!(e instanceof WalDecodeError)) throw e;
      errors++;
    }
    runs++;
  }
  assert.ok(runs >= 50, `only ${runs} fuzz runs`);
  assert.ok(errors > 0);
});

test("recycleRecordBuffers: every record is intact until the next call, and slabs are reused", () => {
  const start = parseLsn("0/3000000");
  const b = mixedStream(start, 7);
  for (let i = 0; i < 3000; i++) b.addData(2000 + (i % 7) * 1000); // many page-crossing records: several slabs' worth
  const bytes = b.bytes();
  for (const chunks of [[bytes], randomChunks(bytes, prng(8), 30000)]) {
    const d = new WalStreamDecoder(start, { walSegSizeBytes: SEG, recycleRecordBuffers: true });
    const got: Written[] = [];
    const buffers = new Set<ArrayBufferLike>();
    for (const c of chunks) {
      d.feed(c);
      // compare each record before asking for the next one (the contract), copying what is kept
      for (let r = d.next(); r !== undefined; r = d.next()) {
        got.push({ lsn: r.lsn, endLsn: r.endLsn, raw: r.raw.slice() });
        if (r.raw.buffer !== c.buffer) buffers.add(r.raw.buffer);
      }
    }
    d.end();
    assertSame(got.map((w) => ({ ...w, totalLength: w.raw.length }) as unknown as DecodedRecord), b.written);
    // reassembled records above one slab's worth: only two slabs (plus one buffer per record above the slab limit)
    const big = b.written.filter((w) => w.raw.length > 64 * 1024).length;
    assert.ok(buffers.size <= 2 + big, `${buffers.size} record buffers for ${big} large records`);
  }
});
