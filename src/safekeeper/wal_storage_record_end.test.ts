/**
 * WalStorage's record-boundary tracking (`flushRecordLsn`) through restarts
 * and truncations — the regression test for the state that made consensus
 * stall: a timeline reopened at an unaligned record end (e.g. 0/2247FBA)
 * must keep finding record ends from there, exactly, without re-decoding.
 *
 * The WAL is built with WalWriter so every record's span is known, and the
 * cut points cover each shape a record end can have: unaligned mid-page, the
 * next record starting on the next page or in the next segment, the next
 * record's header split across a page boundary, records that cross pages
 * and segments, and the end of an XLOG_SWITCH. For each cut:
 * * restart: WAL up to the cut plus a torn (durable) prefix of the next
 *   record, close, reopen with an older hint, then write on in random
 *   chunks — after every flush `flushRecordLsn` is the exact last record end;
 * * truncate: WAL past the cut, truncate at the cut, write on (exact), then
 *   restart (exact);
 * * restart right after a truncation (hint = the cut, as the timeline
 *   stores it): the boundary and the WAL end are the exact cut, and the
 *   record ends are exact again from there.
 * MemoryFS keeps the dozens of 1 MiB-segment storages fast.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { formatLsn, lsn, segmentNumber, segmentStart, XLOG_BLCKSZ, type Lsn } from "../lib/lsn.js";
import { WalWriter } from "../formats/wal/wal_writer.js";
import { encodeRecord } from "../formats/wal/xlog_record.js";
import { RM_XLOG_ID, XLOG_SWITCH } from "../formats/wal/rmgr/xlog.js";
import { seededRandom } from "../lib/prng.js";
import { MemoryFS } from "./consensus/memory_fs.js";
import { WalStorage } from "./wal_storage.js";

const SEG = 1024 * 1024;
const SYSID = 424242n;
const START = segmentStart(2n, SEG);
const DIR = "/wal";
/** Bytes written after each cut: crosses dozens of pages and, for late cuts, a segment. */
const WRITE_ON_BYTES = 300_000;

interface Rec {
  lsn: Lsn;
  endLsn: Lsn;
  isSwitch: boolean;
}

interface Stream {
  bytes: Uint8Array;
  records: Rec[];
  ends: bigint[];
}

/**
 * Data size for a record (rmid 10, main data only) that ends `k` bytes before
 * the end of the current page, if one fits on it.
 */
function sizeEndingBeforePageEnd(at: Lsn, k: number): number | undefined {
  const room = XLOG_BLCKSZ - Number(at % BigInt(XLOG_BLCKSZ)) - k;
  // Record header 24 bytes, then a 2-byte (data <= 255) or 5-byte data header.
  if (room - 26 >= 1 && room - 26 <= 255) return room - 26;
  if (room - 29 > 255) return room - 29;
  return undefined;
}

/** Mostly small records (many ends per page, so every page offset occurs), some page- and segment-crossing ones, one switch, and records placed to end in the last bytes of a page. */
function makeStream(seed: number, totalBytes: number, switchAt: number): Stream {
  const rand = seededRandom(seed);
  const w = new WalWriter({ startLsn: START, walSegSizeBytes: SEG, systemId: SYSID });
  const records: Rec[] = [];
  let prev = lsn(0);
  let switched = false;
  while (Number(w.insertLsn - START) < totalBytes) {
    const r = rand();
    const doSwitch = !switched && Number(w.insertLsn - START) >= switchAt;
    let raw: Uint8Array;
    if (doSwitch) {
      raw = encodeRecord({ rmid: RM_XLOG_ID, info: XLOG_SWITCH, prevLsn: prev });
    } else {
      const placed = r < 0.03 ? sizeEndingBeforePageEnd(w.nextRecordLsn, Math.floor(rand() * 24)) : undefined;
      const size = placed ?? (r < 0.95 ? 1 + Math.floor(rand() * 200) : r < 0.998 ? 3000 + Math.floor(rand() * 20000) : 100_000 + Math.floor(rand() * 200_000));
      const data = new Uint8Array(size);
      // No zero bytes: a torn record's missing tail must not happen to match the zeroed disk.
      for (let i = 0; i < size; i++) data[i] = ((seed + i * 31) & 0xff) | 1;
      raw = encodeRecord({ rmid: 10, info: 0, xid: 100 + records.length, prevLsn: prev, mainData: data });
    }
    const placed = w.appendRecord(raw);
    records.push({ ...placed, isSwitch: doSwitch });
    prev = placed.lsn;
    if (doSwitch) {
      w.padToSegmentEnd();
      switched = true;
    }
  }
  return { bytes: w.take(), records, ends: records.map((x) => x.endLsn as bigint) };
}

/** End of the last record ending at or below `l` (START if none): binary search. */
function lastEndAtOrBelow(st: Stream, l: Lsn): Lsn {
  let lo = 0;
  let hi = st.ends.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (st.ends[mid]! <= l) lo = mid + 1;
    else hi = mid;
  }
  return lo === 0 ? START : lsn(st.ends[lo - 1]!);
}

const pageOff = (l: bigint) => Number(l % BigInt(XLOG_BLCKSZ));
const alignUp = (l: bigint) => (l + 7n) & ~7n;

/** Cut indexes (a cut is the end of records[i]), up to `perShape` of each shape, in stream order. */
function pickCuts(st: Stream, perShape: number): { index: number; shape: string }[] {
  const shapes: [string, (r: Rec, next: Rec) => boolean][] = [
    ["unaligned end mid-page", (r) => r.endLsn % 8n !== 0n && pageOff(r.endLsn) > 100 && pageOff(r.endLsn) < XLOG_BLCKSZ - 100],
    ["next record on the next page", (r) => pageOff(alignUp(r.endLsn)) === 0],
    ["next record's header split across pages", (r) => XLOG_BLCKSZ - pageOff(alignUp(r.endLsn)) < 24 && pageOff(alignUp(r.endLsn)) !== 0],
    ["record crossed a page", (r) => r.lsn / BigInt(XLOG_BLCKSZ) !== (r.endLsn - 1n) / BigInt(XLOG_BLCKSZ) && r.endLsn % 8n !== 0n],
    ["next record in the next segment", (r, next) => segmentNumber(next.lsn, SEG) !== segmentNumber(r.endLsn - 1n as Lsn, SEG)],
    ["record crossed a segment", (r) => segmentNumber(r.lsn, SEG) !== segmentNumber(r.endLsn - 1n as Lsn, SEG)],
    ["XLOG_SWITCH", (r) => r.isSwitch],
  ];
  const out: { index: number; shape: string }[] = [];
  for (const [name, pred] of shapes) {
    let n = 0;
    // Spread picks over the stream: every k-th match.
    const matches: number[] = [];
    for (let i = 1; i < st.records.length - 1; i++) if (pred(st.records[i]!, st.records[i + 1]!)) matches.push(i);
    const step = Math.max(1, Math.floor(matches.length / perShape));
    for (let k = 0; k < matches.length && n < perShape; k += step, n++) out.push({ index: matches[k]!, shape: name });
  }
  return out;
}

function open(fs: MemoryFS, hint: Lsn): Promise<WalStorage> {
  return WalStorage.open({ fs, dir: DIR, walSegSizeBytes: SEG, timelineStartLsn: START, flushLsnHint: hint, systemId: SYSID, preallocateAhead: false });
}

/** The stream's bytes [from, to) (zeros past its end are never asked for). */
const slice = (st: Stream, from: Lsn, to: Lsn) => st.bytes.subarray(Number(from - START), Number(to - START));

/**
 * Writes [from, to) in random chunks with random flushes; after every flush
 * the flush record LSN must be the exact last record end. Returns the
 * recovery hints seen (what a control file would have stored).
 */
async function writeOn(s: WalStorage, st: Stream, from: Lsn, to: Lsn, rand: () => number, ctx: string): Promise<Lsn[]> {
  const hints: Lsn[] = [];
  let pos = from;
  while (pos < to) {
    const n = Math.min(Number(to - pos), 1 + Math.floor(rand() * (rand() < 0.2 ? 40_000 : 900)));
    const next = lsn(pos + BigInt(n));
    await s.write(pos, slice(st, pos, next));
    pos = next;
    if (rand() < 0.3 || pos === to) {
      const f = await s.flush();
      assert.equal(formatLsn(s.flushRecordLsn), formatLsn(lastEndAtOrBelow(st, f)), `${ctx}: flush record LSN after a flush at ${formatLsn(f)}`);
      hints.push(s.recoveryStartLsn);
    }
  }
  return hints;
}

const STREAM = makeStream(7, 2.6 * SEG, 1.4 * SEG);
const STREAM_END = lsn(START + BigInt(STREAM.bytes.length));
const CUTS = pickCuts(STREAM, 5);

test("the cut points cover every record-end shape", () => {
  const shapes = new Map<string, number>();
  for (const c of CUTS) shapes.set(c.shape, (shapes.get(c.shape) ?? 0) + 1);
  assert.equal(shapes.size, 7, `shapes found: ${[...shapes.keys()].join(", ")}`);
  console.log(`${CUTS.length} cuts over ${STREAM.records.length} records: ${[...shapes].map(([k, v]) => `${k} ${v}`).join(", ")}`);
});

test("restart at a record end (with a torn, durable prefix of the next record): record ends stay exact from there", async () => {
  const rand = seededRandom(11);
  for (const { index, shape } of CUTS) {
    const cut = STREAM.records[index]!.endLsn;
    const next = STREAM.records[index + 1]!;
    const ctx = `cut ${formatLsn(cut)} (${shape})`;
    const fs = new MemoryFS();
    const s = await open(fs, START);
    const hints = await writeOn(s, STREAM, START, cut, rand, ctx);
    // A durable torn prefix of the next record (what a crash after an fsync mid-record leaves).
    const torn = lsn(cut + BigInt(1 + Math.floor(rand() * Math.max(1, Number(next.endLsn - cut) - 1))));
    if (torn < next.endLsn) {
      await s.write(cut, slice(STREAM, cut, torn));
      await s.flush();
    }
    await s.close();
    // The control file's hint is stored lazily: an older one, or the timeline start.
    const hint = hints.length > 1 && rand() < 0.7 ? hints[Math.floor(rand() * (hints.length - 1))]! : hints.at(-1) ?? START;
    const r = await open(fs, hint);
    assert.equal(formatLsn(r.flushRecordLsn), formatLsn(lastEndAtOrBelow(STREAM, r.flushLsn)), `${ctx}: after reopen (hint ${formatLsn(hint)}, end ${formatLsn(r.flushLsn)})`);
    assert.equal(formatLsn(r.flushRecordLsn), formatLsn(cut), `${ctx}: reopened record end`);
    const to = lsn(r.writeLsn + BigInt(WRITE_ON_BYTES) < STREAM_END ? r.writeLsn + BigInt(WRITE_ON_BYTES) : STREAM_END);
    await writeOn(r, STREAM, r.writeLsn, to, rand, `${ctx}, after reopen`);
    await r.close();
  }
});

test("truncate at a record end: the cut is the record end at once, later ends are exact, and again after a restart", async () => {
  const rand = seededRandom(12);
  for (const { index, shape } of CUTS) {
    const cut = STREAM.records[index]!.endLsn;
    const ctx = `cut ${formatLsn(cut)} (${shape})`;
    const fs = new MemoryFS();
    const s = await open(fs, START);
    const past = lsn(cut + 50_000n < STREAM_END ? cut + 50_000n : STREAM_END);
    await writeOn(s, STREAM, START, past, rand, ctx);
    await s.truncate(cut);
    assert.equal(formatLsn(s.flushRecordLsn), formatLsn(cut), `${ctx}: right after the truncation (flush ${formatLsn(s.flushLsn)})`);
    const to = lsn(cut + BigInt(WRITE_ON_BYTES) < STREAM_END ? cut + BigInt(WRITE_ON_BYTES) : STREAM_END);
    const hints = await writeOn(s, STREAM, cut, to, rand, `${ctx}, after truncate`);
    await s.close();
    const r = await open(fs, hints.at(-1)!);
    assert.equal(formatLsn(r.flushRecordLsn), formatLsn(lastEndAtOrBelow(STREAM, r.flushLsn)), `${ctx}: after truncate + restart`);
    await r.close();
  }
});

test("restart right after a truncation: the boundary and WAL end are the exact (unaligned) cut; exact after the next record", async () => {
  const rand = seededRandom(13);
  for (const { index, shape } of CUTS) {
    const cut = STREAM.records[index]!.endLsn;
    const ctx = `cut ${formatLsn(cut)} (${shape})`;
    const fs = new MemoryFS();
    const s = await open(fs, START);
    const past = lsn(cut + 30_000n < STREAM_END ? cut + 30_000n : STREAM_END);
    await writeOn(s, STREAM, START, past, rand, ctx);
    await s.truncate(cut);
    // The timeline stores the truncation point as the hint before truncating; recoveryStartLsn agrees
    // (or names the start of the record ending at the cut, when that one was tracked).
    const hint = s.recoveryStartLsn;
    assert.ok(hint === cut || hint === STREAM.records[index]!.lsn, `${ctx}: recovery start ${formatLsn(hint)} after the truncation`);
    await s.close();
    const r = await open(fs, cut);
    assert.equal(formatLsn(r.flushRecordLsn), formatLsn(cut), `${ctx}: reopened boundary`);
    assert.equal(formatLsn(r.flushLsn), formatLsn(cut), `${ctx}: reopened WAL end`);
    const to = lsn(cut + BigInt(WRITE_ON_BYTES) < STREAM_END ? cut + BigInt(WRITE_ON_BYTES) : STREAM_END);
    await writeOn(r, STREAM, cut, to, rand, `${ctx}, after truncate + restart`);
    await r.close();
  }
});
