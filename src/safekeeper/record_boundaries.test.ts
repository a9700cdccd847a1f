/**
 * RecordBoundaryTracker agrees with the full decoder (WalStreamDecoder) on
 * where records end — for every chunking, from record starts and from page
 * boundaries (a continued record's tail skipped), across page headers that
 * split record headers, segment boundaries and XLOG_SWITCH — and reports
 * invalid bytes with their LSN.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { formatLsn, lsn, segmentStart, XLOG_BLCKSZ, type Lsn } from "../lib/lsn.js";
import { WalWriter } from "../formats/wal/wal_writer.js";
import { WalStreamDecoder } from "../formats/wal/wal_stream_decoder.js";
import { encodeRecord } from "../formats/wal/xlog_record.js";
import { RM_XLOG_ID, XLOG_SWITCH } from "../formats/wal/rmgr/xlog.js";
import { XLP_FIRST_IS_OVERWRITE_CONTRECORD } from "../formats/wal/xlog_page.js";
import { seededRandom } from "../lib/prng.js";
import { RecordBoundaryTracker } from "./record_boundaries.js";

const SEG = 1024 * 1024;
const START = segmentStart(5n, SEG);

function makeStream(seed: number, totalBytes: number): { bytes: Uint8Array; records: { lsn: Lsn; endLsn: Lsn }[] } {
  const rand = seededRandom(seed);
  const w = new WalWriter({ startLsn: START, walSegSizeBytes: SEG, systemId: 99n });
  const records: { lsn: Lsn; endLsn: Lsn }[] = [];
  let prev = lsn(0);
  let switched = false;
  while (Number(w.insertLsn - START) < totalBytes) {
    const r = rand();
    const doSwitch = !switched && Number(w.insertLsn - START) > totalBytes / 2;
    let raw: Uint8Array;
    if (doSwitch) {
      raw = encodeRecord({ rmid: RM_XLOG_ID, info: XLOG_SWITCH, prevLsn: prev });
    } else {
      const size = r < 0.9 ? 1 + Math.floor(rand() * 150) : r < 0.99 ? 2000 + Math.floor(rand() * 15000) : 50_000 + Math.floor(rand() * 100_000);
      const data = new Uint8Array(size).fill(7);
      raw = encodeRecord({ rmid: 10, info: 0, xid: 1, prevLsn: prev, mainData: data });
    }
    const placed = w.appendRecord(raw);
    records.push(placed);
    prev = placed.lsn;
    if (doSwitch) {
      w.padToSegmentEnd();
      switched = true;
    }
  }
  return { bytes: w.take(), records };
}

/** Record ends the full decoder finds from `from` over the stream fed in one piece, or undefined if it fails. */
function decoderEnds(bytes: Uint8Array, from: Lsn): bigint[] | undefined {
  const d = new WalStreamDecoder(from, { walSegSizeBytes: SEG });
  d.feed(bytes.subarray(Number(from - START)));
  const out: bigint[] = [];
  try {
    for (let r = d.next(); r !== undefined; r = d.next()) out.push(r.endLsn);
  } catch {
    return undefined;
  }
  return out;
}

test("same record ends as the full decoder, for random chunkings and start points", () => {
  const { bytes, records } = makeStream(3, 2.5 * SEG);
  const rand = seededRandom(4);
  const starts: Lsn[] = [START];
  for (let k = 0; k < 12; k++) starts.push(records[1 + Math.floor(rand() * (records.length - 2))]!.lsn);
  // Page boundaries, some in the middle of a record (its tail is skipped).
  for (let k = 0; k < 12; k++) starts.push(lsn(START + BigInt(Math.floor(rand() * (bytes.length / XLOG_BLCKSZ - 1))) * BigInt(XLOG_BLCKSZ)));
  let checked = 0;
  let invalidStarts = 0;
  for (const from of starts) {
    const want = decoderEnds(bytes, from);
    const t = new RecordBoundaryTracker(from, { walSegSizeBytes: SEG });
    if (want === undefined) {
      // A page inside an XLOG_SWITCH's padding is no place to start: both refuse it.
      t.feed(bytes.subarray(Number(from - START)));
      assert.ok(t.failure !== undefined, `from ${formatLsn(from)}: the decoder failed, the tracker did not`);
      invalidStarts++;
      continue;
    }
    const ends: bigint[] = [];
    let pos = Number(from - START);
    while (pos < bytes.length) {
      const n = Math.min(bytes.length - pos, 1 + Math.floor(rand() * (rand() < 0.5 ? 40 : 20_000)));
      const before = t.recordCount;
      t.feed(bytes.subarray(pos, pos + n));
      pos += n;
      assert.equal(t.feedLsn, lsn(START + BigInt(pos)));
      if (t.recordCount !== before) ends.push(t.lastRecordEndLsn!);
      // Several records may complete in one chunk: the last one is what counts.
      const fed: bigint = t.feedLsn;
      const expectedLast: bigint | undefined = [...want].reverse().find((e) => e <= fed);
      assert.equal(t.lastRecordEndLsn, expectedLast === undefined ? undefined : expectedLast, `from ${formatLsn(from)}, fed to ${formatLsn(t.feedLsn)}`);
      checked++;
    }
    assert.equal(t.failure, undefined);
    assert.equal(t.recordCount, want.length, `from ${formatLsn(from)}: record count`);
    assert.equal(ends.at(-1), want.at(-1));
  }
  assert.ok(checked > 1000 && invalidStarts < starts.length / 2, `${checked} checks, ${invalidStarts} invalid starts`);
});

test("invalid bytes: bad page magic, impossible length, missing contrecord flag — failure with the LSN, sticky", () => {
  const { bytes, records } = makeStream(5, 0.2 * SEG);
  // A page header with a bad magic.
  const bad = bytes.slice();
  const page = 3 * XLOG_BLCKSZ;
  bad[page] = 0;
  const t = new RecordBoundaryTracker(START, { walSegSizeBytes: SEG });
  t.feed(bad);
  assert.match(t.failure?.message ?? "", new RegExp(`Invalid WAL page magic .* at ${formatLsn(lsn(START + BigInt(page)))}`));
  const count = t.recordCount;
  t.feed(new Uint8Array(100));
  assert.equal(t.recordCount, count, "nothing reported after a failure");

  // A zero length where a record should start.
  const rec = records[10]!;
  const z = bytes.slice();
  z.fill(0, Number(rec.lsn - START), Number(rec.lsn - START) + 4);
  const t2 = new RecordBoundaryTracker(START, { walSegSizeBytes: SEG });
  t2.feed(z);
  assert.match(t2.failure?.message ?? "", new RegExp(`Invalid record length 0 at ${formatLsn(rec.lsn)}`));

  // A record continuing onto a page whose header lacks the contrecord flag.
  const crossing = records.find((r) => r.lsn / BigInt(XLOG_BLCKSZ) !== (r.endLsn - 1n) / BigInt(XLOG_BLCKSZ))!;
  const nextPage = Number(((crossing.lsn / BigInt(XLOG_BLCKSZ)) + 1n) * BigInt(XLOG_BLCKSZ) - START);
  const c = bytes.slice();
  c[nextPage + 2] = c[nextPage + 2]! & ~1;
  const t3 = new RecordBoundaryTracker(START, { walSegSizeBytes: SEG });
  t3.feed(c);
  assert.match(t3.failure?.message ?? "", /There is no contrecord flag/);

  // The same with XLP_FIRST_IS_OVERWRITE_CONTRECORD: the unfinished record was abandoned; a new one starts there.
  const o = bytes.slice();
  o[nextPage + 2] = (o[nextPage + 2]! & ~1) | XLP_FIRST_IS_OVERWRITE_CONTRECORD;
  // Put a fresh record right after that page header (24-byte short header).
  const fresh = encodeRecord({ rmid: 10, info: 0, xid: 2, prevLsn: crossing.lsn, mainData: new Uint8Array(10).fill(3) });
  o.set(fresh, nextPage + 24);
  const t4 = new RecordBoundaryTracker(START, { walSegSizeBytes: SEG });
  t4.feed(o.subarray(0, nextPage + 24 + fresh.length));
  assert.equal(t4.failure, undefined);
  assert.equal(t4.lastRecordLsn, lsn(START + BigInt(nextPage + 24)));
  assert.equal(t4.lastRecordEndLsn, lsn(START + BigInt(nextPage + 24 + fresh.length)));

  assert.throws(() => new RecordBoundaryTracker(lsn(START + 4n), { walSegSizeBytes: SEG }), /not a page boundary/);
});
