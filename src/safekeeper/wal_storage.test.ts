import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StrataError } from "../lib/errors.js";
import { formatLsn, lsn, segmentStart, walFileName, type Lsn } from "../lib/lsn.js";
import { WalWriter } from "../formats/wal/wal_writer.js";
import { encodeRecord } from "../formats/wal/xlog_record.js";
import { RM_XLOG_ID, XLOG_SWITCH } from "../formats/wal/rmgr/xlog.js";
import { NodeDurableFS, type DurableFS } from "./durable_fs.js";
import { FaultyFS } from "./faulty_fs.js";
import { InlineIoFS } from "./inline_fs.js";
import { seededRandom } from "../lib/prng.js";
import { WalStorage } from "./wal_storage.js";

/** 1 MiB segments (the smallest PostgreSQL allows) so tests cross many boundaries cheaply. */
const SEG = 1024 * 1024;
const SYSID = 7654321n;
const START = segmentStart(3n, SEG);

/** A WAL stream of valid records from START with every page- and segment-crossing shape. */
interface Stream {
  bytes: Uint8Array;
  /** Record spans, in order. */
  records: { lsn: Lsn; endLsn: Lsn }[];
  recordEnds: Set<bigint>;
}

function makeStream(seed: number, totalBytes: number, opts: { switchAt?: number } = {}): Stream {
  const rand = seededRandom(seed);
  const w = new WalWriter({ startLsn: START, walSegSizeBytes: SEG, systemId: SYSID });
  const records: { lsn: Lsn; endLsn: Lsn }[] = [];
  let prev = lsn(0);
  let switched = false;
  while (Number(w.insertLsn - START) < totalBytes) {
    const r = rand();
    const size = r < 0.85 ? 1 + Math.floor(rand() * 300) : r < 0.98 ? 4000 + Math.floor(rand() * 40000) : 200_000 + Math.floor(rand() * 400_000);
    const at = w.nextRecordLsn;
    let raw: Uint8Array;
    const doSwitch = opts.switchAt !== undefined && !switched && Number(w.insertLsn - START) >= opts.switchAt;
    if (doSwitch) {
      raw = encodeRecord({ rmid: RM_XLOG_ID, info: XLOG_SWITCH, prevLsn: prev });
    } else {
      const data = new Uint8Array(size);
      for (let i = 0; i < size; i += 97) data[i] = (seed + i) & 0xff;
      raw = encodeRecord({ rmid: 10, info: 0, xid: 1000 + records.length, prevLsn: prev, mainData: data });
    }
    const placed = w.appendRecord(raw);
    assert.equal(placed.lsn, at);
    records.push(placed);
    prev = placed.lsn;
    if (doSwitch) {
      w.padToSegmentEnd();
      switched = true;
    }
  }
  return { bytes: w.take(), records, recordEnds: new Set(records.map((r) => r.endLsn as bigint)) };
}

/** WAL files in a directory, without a pre-allocated next segment (`*.tmp`). */
async function walFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => !n.endsWith(".tmp")).sort();
}

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "strata-wal-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function openStorage(fs: DurableFS, dir: string, hint: Lsn = START, preallocateAhead = true): Promise<WalStorage> {
  return WalStorage.open({ fs, dir, walSegSizeBytes: SEG, timelineStartLsn: START, flushLsnHint: hint, systemId: SYSID, preallocateAhead });
}

/** Writes stream bytes [from, to) in random chunks with occasional flushes. */
async function writeChunks(s: WalStorage, stream: Stream, from: Lsn, to: Lsn, rand: () => number, onFlush?: (l: Lsn) => void): Promise<void> {
  let pos = from;
  while (pos < to) {
    const n = Math.min(Number(to - pos), 1 + Math.floor(rand() * (rand() < 0.1 ? 300_000 : 20_000)));
    const off = Number(pos - START);
    await s.write(pos, stream.bytes.subarray(off, off + n));
    pos = lsn(pos + BigInt(n));
    if (rand() < 0.2) {
      const f = await s.flush();
      onFlush?.(f);
    }
  }
}

/** Last record end at or below `l`, or START. */
function lastRecordEndAtOrBelow(stream: Stream, l: Lsn): Lsn {
  let best = START;
  for (const r of stream.records) if (r.endLsn <= l) best = r.endLsn;
  return best;
}

function segName(segNo: bigint, partial = false): string {
  return walFileName(1, segNo, SEG) + (partial ? ".partial" : "");
}

/** Checks the directory holds exactly the stream's bytes below `end` and zeros after it. */
async function assertDirMatches(dir: string, stream: Stream, end: Lsn, context: string): Promise<void> {
  const names = await walFiles(dir);
  for (const name of names) {
    assert.match(name, /^[0-9A-F]{24}(\.partial)?$/, `${context}: unexpected file ${name}`);
    const segNo = BigInt("0x" + name.slice(16, 24));
    const segLsn = segmentStart(segNo, SEG);
    const content = await readFile(join(dir, name));
    assert.equal(content.length, SEG, `${context}: ${name} is not full-size`);
    const valid = Math.max(0, Math.min(SEG, Number(end - segLsn)));
    const off = Number(segLsn - START);
    const expected = Buffer.from(stream.bytes.subarray(Math.max(0, off), Math.max(0, off) + valid));
    if (off >= 0) assert.ok(content.subarray(0, valid).equals(expected), `${context}: ${name} differs from the stream below ${formatLsn(end)}`);
    const tail = content.subarray(valid);
    assert.ok(tail.every((b) => b === 0), `${context}: ${name} has non-zero bytes after ${formatLsn(end)}`);
    if (!name.endsWith(".partial")) assert.equal(valid, SEG, `${context}: final segment ${name} not complete`);
  }
}

function isStrataError(code: string) {
  return (e: unknown) => e instanceof StrataError && e.code === code;
}

test("writes in random chunks land byte-identical in full-size segments; reopen finds the last record end", async () => {
  const stream = makeStream(1, 3.5 * SEG, { switchAt: 1.3 * SEG });
  await withDir(async (dir) => {
    const fs = new NodeDurableFS();
    const s = await openStorage(fs, dir);
    assert.equal(s.writeLsn, START);
    const end = lsn(START + BigInt(stream.bytes.length));
    let lastFlush = START;
    await writeChunks(s, stream, START, end, seededRandom(2), (f) => {
      assert.ok(f >= lastFlush, "flush LSN never goes back");
      lastFlush = f;
    });
    assert.equal(s.writeLsn, end);
    assert.equal(await s.flush(), end);
    assert.equal(s.flushRecordLsn, stream.records[stream.records.length - 1]!.endLsn);
    assert.equal(s.recoveryStartLsn, stream.records[stream.records.length - 1]!.lsn);
    const names = await walFiles(dir);
    assert.deepEqual(names, [segName(3n), segName(4n), segName(5n), segName(6n, true)]);
    await assertDirMatches(dir, stream, end, "after writing");
    await s.close();
    // The next segment was pre-allocated in the background once the partial one was half full.
    assert.ok((await readdir(dir)).includes(segName(7n) + ".tmp"));

    // Reopen from the hint: the end is the last record's end (the stream's trailing padding is zeros anyway).
    const again = await openStorage(fs, dir, s.recoveryStartLsn);
    const lastEnd = stream.records[stream.records.length - 1]!.endLsn;
    assert.equal(again.writeLsn, lastEnd);
    assert.equal(again.flushLsn, lastEnd);
    assert.equal(again.recovery.zeroedBytes, 0);
    assert.ok(!(await readdir(dir)).includes(segName(7n) + ".tmp"), "open removes leftover temp files");
    // Reopen from the timeline start decodes everything (through the XLOG_SWITCH padding).
    await again.close();
    const fromStart = await openStorage(fs, dir, START);
    assert.equal(fromStart.writeLsn, lastEnd);
    assert.equal(fromStart.recovery.recordsDecoded, stream.records.length);
    await fromStart.close();
  });
});

test("a write not at the write LSN is refused and changes nothing", async () => {
  const stream = makeStream(3, 100_000);
  await withDir(async (dir) => {
    const s = await openStorage(new NodeDurableFS(), dir);
    await s.write(START, stream.bytes.subarray(0, 5000));
    await assert.rejects(s.write(lsn(START + 4999n), stream.bytes.subarray(4999, 6000)), isStrataError("invalid_argument"));
    await assert.rejects(s.write(lsn(START + 5001n), stream.bytes.subarray(5001, 6000)), (e: unknown) => isStrataError("invalid_argument")(e) && String(e).includes("not contiguous"));
    assert.equal(s.writeLsn, START + 5000n);
    // Not refused for good: the right LSN works.
    await s.write(lsn(START + 5000n), stream.bytes.subarray(5000, 6000));
    assert.equal(await s.flush(), START + 6000n);
    await s.close();
    await assert.rejects(s.write(lsn(START + 6000n), new Uint8Array(8)), isStrataError("unavailable"));
  });
});

test("reads cross segment boundaries, stop at the flush LSN, and removed WAL is not_found", async () => {
  const full = makeStream(4, 2.7 * SEG);
  // Write up to a record end past 2.5 segments first, the rest later.
  const split = full.records.find((r) => r.endLsn > START + BigInt(2.5 * SEG))!.endLsn;
  const stream = { ...full, bytes: full.bytes.subarray(0, Number(split - START)) };
  await withDir(async (dir) => {
    const s = await openStorage(new NodeDurableFS(), dir);
    const end = lsn(START + BigInt(stream.bytes.length));
    await writeChunks(s, stream, START, end, seededRandom(5));
    await s.flush();
    // Unflushed bytes are not served.
    const extraAt = end;
    const more = full.bytes.subarray(stream.bytes.length);
    assert.ok(more.length > 0);
    const crossing = lsn(segmentStart(4n, SEG) - 1000n);
    const got = await s.read(crossing, 5000);
    assert.ok(Buffer.from(got).equals(Buffer.from(stream.bytes.subarray(Number(crossing - START), Number(crossing - START) + 5000))));
    const big = await s.read(START, 10 * SEG);
    assert.equal(big.length, stream.bytes.length);
    assert.ok(Buffer.from(big).equals(Buffer.from(stream.bytes)));
    assert.equal((await s.read(lsn(end - 10n), 100)).length, 10);
    assert.equal((await s.read(end, 100)).length, 0);
    assert.equal((await s.read(START, 100, lsn(START + 40n))).length, 40);
    await s.write(extraAt, more);
    assert.equal((await s.read(lsn(end - 10n), 100)).length, 10, "written but unflushed WAL is not readable");
    await s.flush();
    assert.equal((await s.read(lsn(end - 10n), 100)).length, Math.min(100, 10 + more.length));

    // Retention removes whole final segments only.
    assert.equal(await s.removeSegmentsBefore(lsn(segmentStart(4n, SEG) + 10n)), 1);
    assert.deepEqual(await walFiles(dir), [segName(4n), segName(5n, true)]);
    await assert.rejects(s.read(START, 10), isStrataError("not_found"));
    assert.equal((await s.read(segmentStart(4n, SEG), 10)).length, 10);
    assert.equal(await s.removeSegmentsBefore(lsn(segmentStart(9n, SEG))), 1, "the partial segment stays");
    assert.deepEqual(await walFiles(dir), [segName(5n, true)]);
    const hint = s.recoveryStartLsn;
    await s.close();
    // Reopen with a hint older than every remaining segment: decoding starts at the oldest one.
    const again = await openStorage(new NodeDurableFS(), dir, START);
    assert.equal(again.recovery.decodeStartLsn, segmentStart(5n, SEG));
    assert.equal(again.writeLsn, full.records[full.records.length - 1]!.endLsn);
    await again.close();
    assert.ok(hint >= segmentStart(5n, SEG));
  });
});

test("truncate across segments drops later files, zeroes the tail, and WAL can be rewritten", async () => {
  const stream = makeStream(6, 3.3 * SEG);
  await withDir(async (dir) => {
    const fs = new NodeDurableFS();
    const s = await openStorage(fs, dir);
    const end = lsn(START + BigInt(stream.bytes.length));
    await writeChunks(s, stream, START, end, seededRandom(7));
    await s.flush();
    // A record boundary in the second segment.
    const cut = stream.records.find((r) => r.endLsn > segmentStart(4n, SEG) + 300_000n)!.endLsn;
    await s.truncate(cut);
    assert.equal(s.writeLsn, cut);
    assert.equal(s.flushLsn, cut);
    assert.deepEqual(await walFiles(dir), [segName(3n), segName(4n, true)]);
    await assertDirMatches(dir, stream, cut, "after truncate");
    assert.equal((await s.read(lsn(cut - 8n), 100)).length, 8);
    // Rewrite the same WAL: identical files again.
    await writeChunks(s, stream, cut, end, seededRandom(8));
    await s.flush();
    await assertDirMatches(dir, stream, end, "after rewrite");

    // Truncate at a segment boundary: that segment goes entirely.
    await s.truncate(segmentStart(5n, SEG));
    assert.deepEqual(await walFiles(dir), [segName(3n), segName(4n)]);
    assert.equal(s.writeLsn, segmentStart(5n, SEG));
    // Truncate where nothing needs dropping is a no-op that still flushes.
    await s.truncate(s.writeLsn);

    // Write a different continuation (a new term's WAL) from a record boundary and recover it.
    const cut2 = stream.records.find((r) => r.endLsn > segmentStart(4n, SEG) + 500_000n)!;
    await s.truncate(cut2.endLsn);
    const w = new WalWriter({ startLsn: lsn((cut2.endLsn + 7n) & ~7n), walSegSizeBytes: SEG, systemId: SYSID });
    const ends: Lsn[] = [];
    let prev = cut2.lsn;
    for (let i = 0; i < 50; i++) {
      const placed = w.appendRecord(encodeRecord({ rmid: 10, info: 0, prevLsn: prev, mainData: new Uint8Array(30_000).fill(i) }));
      ends.push(placed.endLsn);
      prev = placed.lsn;
    }
    // Pad the gap up to the aligned start with zeros, as a server would stream it.
    const gap = Number(w.startLsn - cut2.endLsn);
    await s.write(cut2.endLsn, new Uint8Array(gap));
    await s.write(w.startLsn, w.take());
    await s.flush();
    const hint = s.recoveryStartLsn;
    await s.close();
    const again = await openStorage(fs, dir, hint);
    assert.equal(again.writeLsn, ends[ends.length - 1]);
    await again.close();
    // Even recovering from before the truncation point finds the new WAL, not the old.
    const fromStart = await openStorage(fs, dir, START);
    assert.equal(fromStart.writeLsn, ends[ends.length - 1]);
    await fromStart.close();
  });
});

test("out-of-range truncates are refused", async () => {
  const stream = makeStream(9, 200_000);
  await withDir(async (dir) => {
    const s = await openStorage(new NodeDurableFS(), dir);
    await s.write(START, stream.bytes);
    await assert.rejects(s.truncate(lsn(START + BigInt(stream.bytes.length) + 8n)), isStrataError("invalid_argument"));
    await assert.rejects(s.truncate(lsn(START - 8n)), isStrataError("invalid_argument"));
    await s.close();
  });
});

test("reopen after a crash with a segment filled mid-record: the final segment is trusted, the record completes later", async () => {
  const stream = makeStream(10, 2.2 * SEG);
  await withDir(async (dir) => {
    const fs = new NodeDurableFS();
    const s = await openStorage(fs, dir);
    const segEnd = segmentStart(4n, SEG);
    const spanning = stream.records.find((r) => r.lsn < segEnd && r.endLsn > segEnd);
    await s.write(START, stream.bytes.subarray(0, Number(segEnd - START)));
    assert.equal(s.flushLsn, segEnd, "completing a segment makes it durable");
    const hint = s.recoveryStartLsn;
    await s.close();
    const again = await openStorage(fs, dir, hint);
    assert.equal(again.writeLsn, segEnd);
    const end = lsn(START + BigInt(stream.bytes.length));
    await writeChunks(again, stream, segEnd, end, seededRandom(11));
    await again.flush();
    if (spanning !== undefined) assert.ok(again.recoveryStartLsn > spanning.lsn, "the tracker completed the record spanning the boundary");
    await again.close();
    const third = await openStorage(fs, dir, again.recoveryStartLsn);
    assert.equal(third.writeLsn, stream.records[stream.records.length - 1]!.endLsn);
    await third.close();
  });
});

test("garbage after valid WAL in the partial segment is zeroed on open", async () => {
  const stream = makeStream(12, 300_000);
  await withDir(async (dir) => {
    const fs = new NodeDurableFS();
    const s = await openStorage(fs, dir);
    const mid = Math.floor(stream.records.length / 2);
    const cut = stream.records[mid]!;
    await s.write(START, stream.bytes.subarray(0, Number(cut.endLsn - START)));
    // A torn tail: half of the next record, then garbage.
    const garbageAt = cut.endLsn;
    const next = stream.records[mid + 1]!;
    const half = stream.bytes.subarray(Number(garbageAt - START), Number(next.lsn - START) + 20);
    await s.write(garbageAt, half);
    await s.write(lsn(garbageAt + BigInt(half.length)), new Uint8Array(5000).fill(0xab));
    await s.flush();
    await s.close();
    const again = await openStorage(fs, dir, START);
    assert.equal(again.writeLsn, cut.endLsn);
    assert.ok(again.recovery.zeroedBytes >= 5000);
    assert.ok(again.recovery.stopReason !== undefined);
    await again.close();
    await assertDirMatches(dir, stream, cut.endLsn, "after recovery");
  });
});

test("a failed fsync fails the flush and every later change until reopen; reported WAL survives", async () => {
  const stream = makeStream(13, 500_000);
  await withDir(async (dir) => {
    const real = new NodeDurableFS();
    const fs = new FaultyFS(real, { seed: 3 });
    const s = await openStorage(fs, dir);
    await s.write(START, stream.bytes.subarray(0, 100_000));
    const flushed = await s.flush();
    fs.addFault({ op: "sync", nth: 1, effect: "error" });
    await s.write(flushed, stream.bytes.subarray(100_000, 200_000));
    await assert.rejects(s.flush(), isStrataError("io_error"));
    assert.equal(s.flushLsn, flushed, "the flush LSN did not advance");
    await assert.rejects(s.write(s.writeLsn, stream.bytes.subarray(200_000, 200_100)), (e: unknown) => isStrataError("io_error")(e) && String(e).includes("reopen"));
    const hint = s.recoveryStartLsn;
    await s.close();
    await fs.powerLoss();
    const again = await openStorage(real, dir, hint);
    assert.ok(again.writeLsn >= lastRecordEndAtOrBelow(stream, flushed));
    await again.close();
  });
});

/**
 * The crash simulation: write random chunks with random flushes through a
 * FaultyFS that crashes (or tears a write) at a random point, lose power,
 * reopen on the real file system, and check:
 *  - every complete record at or below the last reported flush LSN is there;
 *  - the recovered end is a record end or the end of a final segment;
 *  - every byte below the end is the stream's, everything after is zero;
 *  - the rest of the stream can be written on top and recovered completely.
 */
test("crash simulation: torn and lost writes never expose unsynced or garbage WAL as flushed", async () => {
  const SEEDS = 30;
  let sawTorn = 0;
  let lostUnsynced = 0;
  let total = 0;
  for (let seed = 1; seed <= SEEDS; seed++) {
    const stream = makeStream(100 + seed, 2.3 * SEG, seed % 3 === 0 ? { switchAt: 1.5 * SEG } : {});
    const end = lsn(START + BigInt(stream.bytes.length));
    await withDir(async (dir) => {
      const real = new NodeDurableFS();
      if (total === 0) {
        // Count the disk-changing calls of one full run, to spread crash points over it.
        const probe = new FaultyFS(real, { seed });
        const p = await openStorage(probe, dir, START, false);
        await writeChunks(p, stream, START, end, seededRandom(seed));
        await p.close();
        total = probe.mutations;
        await rm(dir, { recursive: true, force: true });
      }
      const rand = seededRandom(seed * 7919);
      const effect = rand() < 0.5 ? "torn" : "crash";
      const nth = 1 + Math.floor(rand() * (effect === "torn" ? total / 3 : total));
      const fs = new FaultyFS(real, { seed, faults: [{ op: effect === "torn" ? "write" : "mutation", nth, effect }] });
      let reported = START;
      let hint = START;
      let written = START;
      let s: WalStorage | undefined;
      try {
        // Background pre-allocation makes the order of file operations timing-dependent:
        // odd seeds run without it and replay exactly; even seeds cover it.
        s = await openStorage(fs, dir, START, seed % 2 === 0);
        const storage = s;
        await writeChunks(s, stream, START, end, seededRandom(seed), (f) => {
          reported = f;
          // The timeline persists the hint now and then (sometimes it is stale).
          if (rand() < 0.5) hint = storage.recoveryStartLsn;
        });
      } catch (e) {
        assert.ok(e instanceof StrataError, `seed ${seed}: unexpected ${String(e)}`);
      }
      if (s !== undefined) {
        if (s.flushLsn > reported) reported = s.flushLsn; // a completed segment is flushed too
        written = s.writeLsn;
        await s.close().catch(() => undefined);
      }
      if (effect === "torn") sawTorn++;
      await fs.powerLoss();

      const r = await openStorage(real, dir, hint);
      const must = lastRecordEndAtOrBelow(stream, reported);
      assert.ok(r.writeLsn >= must, `seed ${seed}: recovered ${formatLsn(r.writeLsn)} lost flushed WAL up to ${formatLsn(must)} (reported ${formatLsn(reported)})`);
      const atSegEnd = r.writeLsn % BigInt(SEG) === 0n;
      assert.ok(stream.recordEnds.has(r.writeLsn) || atSegEnd || r.writeLsn === START, `seed ${seed}: recovered end ${formatLsn(r.writeLsn)} is not a record end`);
      if (r.writeLsn < lastRecordEndAtOrBelow(stream, written)) lostUnsynced++;
      await assertDirMatches(dir, stream, r.writeLsn, `seed ${seed}`);
      // The rest of the stream goes on top and all of it is found again.
      await writeChunks(r, stream, r.writeLsn, end, seededRandom(seed + 1));
      await r.flush();
      const hint2 = r.recoveryStartLsn;
      await r.close();
      const final = await openStorage(real, dir, hint2);
      assert.equal(final.writeLsn, stream.records[stream.records.length - 1]!.endLsn, `seed ${seed}: after rewriting`);
      await final.close();
      await assertDirMatches(dir, stream, final.writeLsn, `seed ${seed} final`);
    });
  }
  // The simulation bites: torn writes happened, and unsynced WAL was really lost in some runs.
  assert.ok(sawTorn > 5, `torn: ${sawTorn}`);
  assert.ok(lostUnsynced > 3, `runs that lost unsynced WAL: ${lostUnsynced}`);
});

test("reads racing with writes, segment completion and renames always return the stream's bytes", async () => {
  const stream = makeStream(21, 3.2 * SEG);
  await withDir(async (dir) => {
    const s = await openStorage(new NodeDurableFS(), dir);
    const end = lsn(START + BigInt(stream.bytes.length));
    let writing = true;
    let reads = 0;
    const reader = (async () => {
      const rand = seededRandom(22);
      while (writing) {
        const flushed = s.flushLsn;
        if (flushed > START) {
          // Mostly near the head, where the partial segment gets renamed under us.
          const back = BigInt(Math.floor(rand() * Math.min(Number(flushed - START), rand() < 0.7 ? 70_000 : SEG)));
          const at = lsn(flushed - back);
          const got = await s.read(at, 50_000);
          const off = Number(at - START);
          assert.ok(Buffer.from(got).equals(Buffer.from(stream.bytes.subarray(off, off + got.length))), `read at ${formatLsn(at)}`);
          reads++;
        }
        await new Promise((r) => setImmediate(r));
      }
    })();
    try {
      await writeChunks(s, stream, START, end, seededRandom(23));
      await s.flush();
    } finally {
      writing = false;
      await reader;
    }
    assert.ok(reads > 50, `only ${reads} reads`);
    await s.close();
  });
});

test("appendAndFlushNow: synchronous write+fsync inside the partial segment, the async path for everything else, same bytes on disk", async () => {
  const stream = makeStream(11, 2.6 * SEG);
  await withDir(async (dir) => {
    const s = await openStorage(new InlineIoFS(), dir);
    const rand = seededRandom(5);
    let pos = START;
    let fast = 0;
    let slow = 0;
    const end = lsn(START + BigInt(stream.bytes.length));
    while (pos < end) {
      const n = Math.min(Number(end - pos), 1 + Math.floor(rand() * 30_000));
      const off = Number(pos - START);
      const piece = stream.bytes.subarray(off, off + n);
      const next = lsn(pos + BigInt(n));
      const l = s.appendAndFlushNow(pos, piece);
      if (l !== undefined) {
        fast++;
        assert.equal(l, next, "the fast path flushes exactly what it wrote");
      } else {
        slow++;
        assert.equal(s.writeLsn, pos, "a refused fast path writes nothing");
        await s.write(pos, piece);
        assert.equal(await s.flush(), next);
      }
      assert.equal(s.flushLsn, next);
      assert.equal(s.flushRecordLsn, lastRecordEndAtOrBelow(stream, next));
      pos = next;
    }
    // The first write creates the partial segment and every segment end completes one: those take the async path.
    assert.ok(fast > 50 && slow >= 3, `fast ${fast}, slow ${slow}`);
    // While another mutating call is queued the fast path steps aside (ordering).
    const extra = makeStream(11, 2.6 * SEG + 4096);
    const flushing = s.flush();
    const more = extra.bytes.subarray(stream.bytes.length, stream.bytes.length + 100);
    assert.equal(s.appendAndFlushNow(end, more), undefined);
    await flushing;
    await s.close();
    await assertDirMatches(dir, stream, end, "after fast and slow appends");
    const again = await openStorage(new InlineIoFS(), dir);
    assert.equal(again.flushLsn, lastRecordEndAtOrBelow(stream, end));
    await again.close();
  });
});

test("appendAndFlushNow is not available on a file system without inline I/O", async () => {
  const stream = makeStream(12, 0.5 * SEG);
  await withDir(async (dir) => {
    const s = await openStorage(new NodeDurableFS(), dir);
    await s.write(START, stream.bytes.subarray(0, 1000));
    await s.flush();
    assert.equal(s.appendAndFlushNow(lsn(START + 1000n), stream.bytes.subarray(1000, 2000)), undefined);
    assert.equal(s.writeLsn, lsn(START + 1000n));
    await s.close();
  });
});
