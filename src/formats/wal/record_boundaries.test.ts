import { test } from "node:test";
import assert from "node:assert/strict";
import { lsn, segmentStart, XLOG_BLCKSZ, type Lsn } from "../../lib/lsn.js";
import { seededRandom } from "../../lib/prng.js";
import { RecordBoundaryTracker } from "./record_boundaries.js";
import { WalStreamDecoder } from "./wal_stream_decoder.js";
import { WalWriter } from "./wal_writer.js";
import { encodeRecord, WalDecodeError } from "./xlog_record.js";
import { RM_XLOG_ID, XLOG_SWITCH } from "./rmgr/xlog.js";

const SEG = 1024 * 1024;
const SYSID = 42n;
const START = segmentStart(2n, SEG);

/** WAL with small, page-crossing, segment-crossing and XLOG_SWITCH records, then a zero tail. */
function makeWal(seed: number, totalBytes: number): Uint8Array {
  const rand = seededRandom(seed);
  const w = new WalWriter({ startLsn: START, walSegSizeBytes: SEG, systemId: SYSID });
  let prev = lsn(0);
  let n = 0;
  while (Number(w.insertLsn - START) < totalBytes) {
    const r = rand();
    if (r < 0.003) {
      prev = w.appendRecord(encodeRecord({ rmid: RM_XLOG_ID, info: XLOG_SWITCH, prevLsn: prev })).lsn;
      w.padToSegmentEnd();
      continue;
    }
    const size = r < 0.85 ? 1 + Math.floor(rand() * 300) : r < 0.98 ? 4000 + Math.floor(rand() * 40000) : 100_000 + Math.floor(rand() * 300_000);
    const data = new Uint8Array(size);
    for (let i = 0; i < size; i += 61) data[i] = (seed + i) & 0xff;
    prev = w.appendRecord(encodeRecord({ rmid: 10, info: 0, xid: 1000 + n++, prevLsn: prev, mainData: data })).lsn;
  }
  return w.take();
}

function chunks(bytes: Uint8Array, rand: () => number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let off = 0;
  while (off < bytes.length) {
    const r = rand();
    const len = r < 0.3 ? 1 + Math.floor(rand() * 30) : r < 0.8 ? 1 + Math.floor(rand() * 9000) : 1 + Math.floor(rand() * 200_000);
    out.push(bytes.subarray(off, off + len));
    off += len;
  }
  return out;
}

function decoderBoundaries(start: Lsn, bytes: Uint8Array): string[] {
  const d = new WalStreamDecoder(start, { walSegSizeBytes: SEG, systemId: SYSID });
  d.feed(bytes);
  const out: string[] = [];
  try {
    for (let r = d.next(); r !== undefined; r = d.next()) out.push(`${r.lsn}-${r.endLsn}`);
  } catch (e) {
    if (!(e instanceof WalDecodeError)) throw e;
  }
  return out;
}

function trackerBoundaries(start: Lsn, parts: Uint8Array[]): string[] {
  const out: string[] = [];
  const t = new RecordBoundaryTracker(start, { walSegSizeBytes: SEG, onRecord: (a, b) => out.push(`${a}-${b}`) });
  for (const p of parts) t.feed(p);
  return out;
}

test("boundary tracker matches WalStreamDecoder on random WAL in random chunkings and start points", () => {
  let compared = 0;
  for (let seed = 1; seed <= 6; seed++) {
    const wal = makeWal(seed, 3 * SEG + 12345);
    const rand = seededRandom(seed * 7919);
    const full = new Uint8Array(wal.length + 3 * XLOG_BLCKSZ); // zero tail: end of WAL
    full.set(wal);
    const expected = decoderBoundaries(START, full);
    assert.ok(expected.length > 100);
    for (let k = 0; k < 4; k++) {
      assert.deepEqual(trackerBoundaries(START, chunks(full, rand)), expected, `seed ${seed} chunking ${k}`);
      compared++;
    }
    // Start at random page boundaries (contrecord skip) and at record starts.
    for (let k = 0; k < 6; k++) {
      const page = Math.floor(rand() * (wal.length / XLOG_BLCKSZ));
      const pageStart = lsn(START + BigInt(page * XLOG_BLCKSZ));
      const fromPage = full.subarray(page * XLOG_BLCKSZ);
      const exp = decoderBoundaries(pageStart, fromPage);
      assert.deepEqual(trackerBoundaries(pageStart, chunks(fromPage, rand)), exp, `seed ${seed} page ${page}`);
      const mid = exp[Math.floor(exp.length / 3)];
      if (mid !== undefined && BigInt(mid.split("-")[0]!) % BigInt(XLOG_BLCKSZ) !== 0n) {
        const recLsn = lsn(BigInt(mid.split("-")[0]!));
        const fromRec = full.subarray(Number(recLsn - START));
        assert.deepEqual(trackerBoundaries(recLsn, chunks(fromRec, rand)), decoderBoundaries(recLsn, fromRec), `seed ${seed} record ${recLsn}`);
      }
      compared += 2;
    }
  }
  console.log(`boundary tracker: ${compared} stream comparisons identical to WalStreamDecoder`);
});

test("boundary tracker stops on a bad page header and on a bad record length", () => {
  const wal = makeWal(99, SEG / 2);
  const bad = wal.slice();
  bad.fill(0, 0, 2); // the first page's magic
  const t = new RecordBoundaryTracker(START, { walSegSizeBytes: SEG });
  t.feed(bad);
  assert.ok(t.failure !== undefined);
  assert.match(t.failure?.message ?? "", /magic/);
  const t2 = new RecordBoundaryTracker(START, { walSegSizeBytes: SEG });
  t2.feed(new Uint8Array(XLOG_BLCKSZ)); // zeros: no page magic
  assert.ok(t2.failure !== undefined);
  // A record claiming fewer bytes than its own header.
  const rec = new Uint8Array(64);
  rec[0] = 10; // xl_tot_len 10 < SizeOfXLogRecord
  const t3 = new RecordBoundaryTracker(lsn(START + 40n), { walSegSizeBytes: SEG });
  t3.feed(rec);
  assert.match(t3.failure?.message ?? "", /Invalid record length 10 at 0\/200028/);
});

test("boundary tracker CPU per MiB vs WalStreamDecoder (micro-benchmark)", () => {
  const wal = makeWal(5, 8 * SEG);
  const parts = chunks(wal, seededRandom(3)).map((p) => p.slice());
  const mib = wal.length / (1024 * 1024);
  const time = (fn: () => void): number => {
    const t0 = process.cpuUsage();
    fn();
    const d = process.cpuUsage(t0);
    return (d.user + d.system) / mib;
  };
  const dec = time(() => {
    const d = new WalStreamDecoder(START, { walSegSizeBytes: SEG, systemId: SYSID });
    for (const p of parts) {
      d.feed(p.slice());
      for (let r = d.next(); r !== undefined; r = d.next());
    }
  });
  const trk = time(() => {
    const t = new RecordBoundaryTracker(START, { walSegSizeBytes: SEG });
    for (const p of parts) t.feed(p);
  });
  console.log(`CPU per MiB written: WalStreamDecoder (with copy, as WalStorage did) ${dec.toFixed(0)} µs, RecordBoundaryTracker ${trk.toFixed(0)} µs`);
  assert.ok(trk < dec);
});
