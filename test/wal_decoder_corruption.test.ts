/**
 * Acceptance 2 and the `strata wal dump` command, on one real server's WAL.
 *
 * * Flipping any single byte of a record (sampled over many records and over
 *   header, block-header and payload offsets) makes the decoder fail with an
 *   error naming that record's LSN, after decoding every record before it.
 * * Random windows of real WAL with random damage only ever yield records or
 *   a WalDecodeError, within a time bound.
 * * `node dist/src/cli/main.js wal dump <dir> --json` prints what pg_waldump
 *   prints; `--start/--end` select the same records as pg_waldump -s/-e; a
 *   damaged segment makes it print the records before the damage, report the
 *   LSN on stderr and exit 1.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFile, mkdir, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { startPostgres, type PgServer } from "./harness/pg_server.js";
import { makeTempDir, removeTempDir } from "./harness/tools.js";
import { pgWaldump, runPgWaldump } from "./harness/waldump.js";
import { formatLsn, parseLsn, segmentStart, XLOG_BLCKSZ, type Lsn } from "../src/lib/lsn.js";
import type { DecodedRecord } from "../src/formats/wal/decoded_record.js";
import { WalFileReader } from "../src/formats/wal/wal_files.js";
import { WalStreamDecoder } from "../src/formats/wal/wal_stream_decoder.js";
import { WalDecodeError } from "../src/formats/wal/xlog_record.js";
import { SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD } from "../src/formats/wal/xlog_page.js";
import { assertSameAsWaldump, DECODER_TEST_SETTINGS, readSegments } from "./wal_decoder_support.js";
import { seededRandom as prng } from "../src/lib/prng.js";

/** Bound on one CLI run. */
const CLI_TIMEOUT_MS = 60_000;

let pg: PgServer;
let segments: Uint8Array[];
let segSize: number;
let firstLsn: Lsn;
let records: DecodedRecord[];

before(async () => {
  pg = await startPostgres({ walCompression: "lz4", settings: DECODER_TEST_SETTINGS });
  await pg.pgbench(["-i", "-s", "1", "-q"]);
  await pg.checkpoint();
  await pg.pgbench(["-n", "-c", "2", "-t", "100"]);
  await pg.sql("CREATE TABLE big (a int, t text); INSERT INTO big SELECT g, repeat('x', 3000) FROM generate_series(1, 50) g;");
  await pg.stop();
  const reader = await WalFileReader.open(pg.walDir);
  segSize = reader.walSegSizeBytes;
  firstLsn = segmentStart(reader.segments[0]!.segNo, segSize);
  segments = await readSegments(reader);
  records = [];
  for await (const r of reader.records()) records.push(r);
});

after(async () => {
  await pg?.destroy();
});

/** Stream offset (from firstLsn) of byte `k` of the record at `at`, skipping page headers. */
function recordByteOffset(at: Lsn, k: number): number {
  let pos = Number(at - firstLsn);
  let left = k;
  for (;;) {
    const abs = Number(firstLsn) + pos;
    const toPageEnd = XLOG_BLCKSZ - (abs % XLOG_BLCKSZ);
    if (left < toPageEnd) return pos + left;
    left -= toPageEnd;
    pos += toPageEnd;
    const hdr = (Number(firstLsn) + pos) % segSize === 0 ? SIZE_OF_XLOG_LONG_PHD : SIZE_OF_XLOG_SHORT_PHD;
    pos += hdr;
  }
}

function byteAt(off: number): { seg: Uint8Array; i: number } {
  return { seg: segments[Math.floor(off / segSize)]!, i: off % segSize };
}

/**
 * Decodes from a page boundary before `rec` (the start of its segment, or two
 * pages before its first page) through its end plus a little, returning the
 * records and the error.
 */
function decodeAround(rec: DecodedRecord, fromSegmentStart: boolean): { got: DecodedRecord[]; err: unknown } {
  const recOff = Number(rec.lsn - firstLsn);
  const segOff = recOff - (recOff % segSize);
  const pageOff = recOff - (recOff % XLOG_BLCKSZ) - 2 * XLOG_BLCKSZ;
  const from = fromSegmentStart ? segOff : Math.max(0, pageOff);
  const d = new WalStreamDecoder((firstLsn + BigInt(from)) as Lsn, { walSegSizeBytes: segSize });
  const stopAt = Number(rec.endLsn - firstLsn) + 16 * 1024;
  const got: DecodedRecord[] = [];
  try {
    for (let pos = from; pos < stopAt; ) {
      const { seg, i } = byteAt(pos);
      const n = Math.min(seg.length - i, stopAt - pos);
      d.feed(seg.subarray(i, i + n));
      pos += n;
      for (let r = d.next(); r !== undefined; r = d.next()) got.push(r);
      if (pos >= segments.length * segSize) break;
    }
    d.end();
  } catch (e) {
    return { got, err: e };
  }
  return { got, err: undefined };
}

function firstLsnSeg(): bigint {
  return firstLsn / BigInt(segSize);
}

test("real WAL decodes and matches pg_waldump", async () => {
  assert.ok(records.length > 1000, `${records.length} records`);
  assertSameAsWaldump(records, await pgWaldump({ path: pg.walDir, start: firstLsn }));
});

test("flipping any byte of a record is reported at that record's LSN", { timeout: 120_000 }, (t) => {
  const rnd = prng(42);
  const deadline = Date.now() + 40_000;
  let flips = 0;
  const seenRegions = new Set<string>();
  const messages = new Set<string>();
  // Samples: every record kind of position — first records, ones crossing pages
  // and segments, big ones — and byte offsets in the header (0..23), the
  // fragment headers and the payload.
  const crossing = records.filter((r) => r.lsn / 8192n !== (r.endLsn - 1n) / 8192n);
  const crossingSeg = records.filter((r) => r.lsn / BigInt(segSize) !== (r.endLsn - 1n) / BigInt(segSize));
  const pool = [...crossingSeg, ...crossing.slice(0, 200), ...records];
  for (let n = 0; n < 600 && Date.now() < deadline; n++) {
    const rec = n < crossingSeg.length ? pool[n]! : n < 150 ? crossing[Math.floor(rnd() * crossing.length)]! : records[Math.floor(rnd() * records.length)]!;
    const headerEnd = 24 + Math.min(rec.totalLength - 24, 60);
    const region = n % 3;
    const k =
      region === 0 ? Math.floor(rnd() * 24) : region === 1 ? 24 + Math.floor(rnd() * (headerEnd - 24)) : Math.floor(rnd() * rec.totalLength);
    if (k >= rec.totalLength) continue;
    seenRegions.add(k < 24 ? "header" : k < headerEnd ? "fragment headers" : "payload");
    const off = recordByteOffset(rec.lsn, k);
    const { seg, i } = byteAt(off);
    const original = seg[i]!;
    const bit = 1 << Math.floor(rnd() * 8);
    seg[i] = original ^ bit;
    try {
      const { got, err } = decodeAround(rec, n % 20 === 0);
      assert.ok(err instanceof WalDecodeError, `flip of byte ${k} (bit ${bit}) of ${formatLsn(rec.lsn)}: no error, ${got.length} records`);
      assert.equal(formatLsn(err.lsn), formatLsn(rec.lsn), `flip of byte ${k} of record ${formatLsn(rec.lsn)}: ${err.message}`);
      assert.ok(got.every((r) => r.lsn < rec.lsn));
      messages.add(err.message.replace(/[0-9A-F]+\/[0-9A-F]+/g, "X").replace(/\d+/g, "N").slice(0, 60));
      flips++;
    } finally {
      seg[i] = original;
    }
  }
  assert.ok(flips >= 100, `only ${flips} flips`);
  t.diagnostic(`${flips} single-bit flips, each reported at its record's LSN; ${messages.size} kinds of error message`);
  assert.deepEqual([...seenRegions].sort(), ["fragment headers", "header", "payload"]);
  assert.ok(messages.size >= 2, [...messages].join("\n"));
});

test("random damage to real WAL never crashes or hangs", { timeout: 60_000 }, () => {
  const rnd = prng(7);
  const deadline = Date.now() + 20_000;
  let runs = 0;
  while (runs < 200 && Date.now() < deadline) {
    const s = Math.floor(rnd() * segments.length);
    const pageIdx = Math.floor(rnd() * (segSize / XLOG_BLCKSZ - 40));
    const from = pageIdx * XLOG_BLCKSZ;
    const window = segments[s]!.slice(from, from + Math.floor(rnd() * 300_000));
    const damage = Math.floor(rnd() * 4);
    for (let j = 0; j < damage; j++) {
      const at = Math.floor(rnd() * window.length);
      window.fill(Math.floor(rnd() * 256), at, at + 1 + Math.floor(rnd() * 16));
    }
    const d = new WalStreamDecoder((segmentStart(BigInt(s) + firstLsnSeg(), segSize) + BigInt(from)) as Lsn, { walSegSizeBytes: segSize });
    try {
      for (let i = 0; i < window.length; ) {
        const n = 1 + Math.floor(rnd() * 20000);
        d.feed(window.subarray(i, i + n));
        i += n;
        for (let r = d.next(); r !== undefined; r = d.next()) assert.ok(r.totalLength >= 24);
      }
      d.end();
    } catch (e) {
      if (!(e instanceof WalDecodeError)) throw e;
    }
    runs++;
  }
  assert.ok(runs >= 50);
});

function runCli(args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(process.cwd(), "dist/src/cli/main.js"), ...args], { stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`strata ${args.join(" ")} did not finish within ${CLI_TIMEOUT_MS} ms`));
    }, CLI_TIMEOUT_MS);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), code: code ?? -1 });
    });
  });
}

interface JsonRecord {
  lsn: string;
  end_lsn: string;
  prev_lsn: string;
  rmgr: string;
  type: string;
  len: number;
  xid: number;
  blocks: { spc: number; db: number; rel: number; fork: number; blk: number; image: boolean }[];
}

function parseJsonLines(stdout: string): JsonRecord[] {
  return stdout
    .split("\n")
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as JsonRecord);
}

test("strata wal dump --json lists what pg_waldump lists", { timeout: 120_000 }, async () => {
  const r = await runCli(["wal", "dump", pg.walDir, "--json"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /end of WAL at/);
  const ours = parseJsonLines(r.stdout);
  const theirs = await pgWaldump({ path: pg.walDir, start: firstLsn });
  assert.equal(ours.length, theirs.length);
  for (let i = 0; i < theirs.length; i++) {
    const o = ours[i]!;
    const t = theirs[i]!;
    assert.equal(o.lsn, formatLsn(t.lsn));
    assert.equal(o.prev_lsn, formatLsn(t.prevLsn));
    assert.equal(o.rmgr, t.rmgr);
    assert.equal(o.type.split(" ")[0], t.type);
    assert.equal(o.len, t.totalLen);
    assert.equal(o.xid, t.xid);
    assert.deepEqual(
      o.blocks.map((b) => [b.spc, b.db, b.rel, b.fork, b.blk, b.image]),
      t.blocks.map((b) => [b.spc, b.db, b.rel, b.fork, b.blk, b.fpw]),
    );
    assert.match(o.lsn, /^[0-9A-F]+\/[0-9A-F]+$/);
    assert.ok(parseLsn(o.end_lsn) > parseLsn(o.lsn));
  }
  // Text mode: one line per record, pg_waldump's columns.
  const text = await runCli(["wal", "dump", pg.walDir]);
  assert.equal(text.code, 0);
  const lines = text.stdout.split("\n").filter((l) => l.length > 0);
  assert.equal(lines.length, theirs.length);
  assert.match(lines[0]!, /^rmgr: \S+\s+len \(rec\/tot\):\s+\d+\/\s*\d+, tx:\s+\d+, lsn: [0-9A-F]+\/[0-9A-F]{8}, prev [0-9A-F]+\/[0-9A-F]{8}, end /);
  assert.ok(lines.some((l) => / FPW \(lz4\)/.test(l)));
});

test("strata wal dump --start/--end and a single segment file select what pg_waldump selects", { timeout: 60_000 }, async () => {
  const mid = records[Math.floor(records.length / 2)]!;
  const later = records[Math.floor(records.length / 2) + 500]!;
  // --start inside a record: the next record is the first shown, as with pg_waldump -s.
  const startInside = (mid.lsn + 5n) as Lsn;
  const ours = parseJsonLines((await runCli(["wal", "dump", pg.walDir, "--json", "--start", formatLsn(startInside), "--end", formatLsn(later.endLsn)])).stdout);
  const w = await runPgWaldump({ path: pg.walDir, start: startInside, end: later.endLsn });
  assert.deepEqual(
    ours.map((o) => o.lsn),
    w.records.map((t) => formatLsn(t.lsn)),
  );
  assert.equal(ours[0]!.lsn, formatLsn(records[Math.floor(records.length / 2) + 1]!.lsn));
  // One segment file alone.
  const reader = await WalFileReader.open(pg.walDir);
  const second = reader.segments[1]!.path;
  const one = await runCli(["wal", "dump", second, "--json"]);
  assert.equal(one.code, 0, one.stderr);
  const theirs = await pgWaldump({ path: second });
  assert.deepEqual(
    parseJsonLines(one.stdout).map((o) => o.lsn),
    theirs.map((t) => formatLsn(t.lsn)),
  );
});

test("strata wal dump reports damage with its LSN and exits 1", { timeout: 60_000 }, async () => {
  const dir = await makeTempDir("waldump-bad");
  const reader = await WalFileReader.open(pg.walDir);
  await mkdir(dir, { recursive: true });
  for (const s of reader.segments) await copyFile(s.path, join(dir, basename(s.path)));
  const victim = records[Math.floor(records.length / 3)]!;
  const off = recordByteOffset(victim.lsn, 30);
  const segIdx = Math.floor(off / segSize);
  const bytes = Buffer.from(segments[segIdx]!);
  bytes[off % segSize] = bytes[off % segSize]! ^ 0x55;
  await writeFile(join(dir, basename(reader.segments[segIdx]!.path)), bytes);
  const r = await runCli(["wal", "dump", dir, "--json"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, new RegExp(`error in WAL at ${formatLsn(victim.lsn).replace("/", "\\/")}: .*checksum`));
  const printed = parseJsonLines(r.stdout);
  const before = records.filter((x) => x.lsn < victim.lsn);
  assert.equal(printed.length, before.length);
  assert.equal(printed.at(-1)?.lsn, formatLsn(before.at(-1)!.lsn));
  // A segment file cut short inside a record.
  const inFirst = records.filter((x) => x.endLsn < firstLsn + BigInt(segSize));
  const cutRec = inFirst[Math.floor(inFirst.length / 2)]!;
  const short = join(dir, "short");
  await mkdir(short);
  const shortFile = join(short, basename(reader.segments[0]!.path));
  await writeFile(shortFile, segments[0]!.subarray(0, Number(cutRec.lsn - firstLsn) + 10));
  const t = await runCli(["wal", "dump", shortFile]);
  assert.equal(t.code, 1);
  assert.match(t.stderr, new RegExp(`ends in the middle of the record at ${formatLsn(cutRec.lsn).replace("/", "\\/")}`));
  await removeTempDir(dir);
  const bad = await runCli(["wal", "dump", pg.walDir, "--start", "nonsense"]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /Invalid --start "nonsense"/);
});
