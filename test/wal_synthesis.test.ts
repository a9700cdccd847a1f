/**
 * The real proof of WAL synthesis (issue 2): an unmodified PostgreSQL 15
 * starts from a strata-written pg_control + WAL segment(s) at an LSN X with
 * no recovery, keeps its data, accepts writes, and writes its own WAL right
 * after X.
 *
 * One server, stopped and restarted once per layout. X moves forward each
 * round (data files are never newer than X): the server's own end of WAL
 * (with the original bytes before X as prefix, byte-identical), then X
 * mid-page (NOOP filler), right after a short page header, with a 16-byte
 * gap (continuation marking), with the record header crossing a page, the
 * body crossing a page, the record crossing into the next segment, and X
 * right after a segment's long header. The checkpoint carries nextXid and
 * nextOid above the server's own (pg_control wins: the server must use them).
 * Per round: pg_waldump finds CHECKPOINT_SHUTDOWN at X; after start
 * pg_control_checkpoint() still says X (no end-of-recovery checkpoint) and
 * the log says "shut down", no redo; rows are intact; txid_current() is
 * exactly our nextXid; after new writes, the first record after X points
 * back to X and starts where PostgreSQL's insert position began.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { withPostgres, writeDataFile, type PgServer } from "./harness/pg_server.js";
import { runPgWaldump } from "./harness/waldump.js";
import { encodeControlFile, parseControlFile } from "../src/formats/pg_control.js";
import { nextInsertLsn, shutdownControlFile, synthesizeShutdownCheckpointWal } from "../src/formats/wal/wal_synthesis.js";
import {
  formatLsn,
  lsn,
  lsnAlign,
  pageOffset,
  pageStart,
  parseLsn,
  segmentNumber,
  segmentOffset,
  segmentStart,
  walFileName,
  XLOG_BLCKSZ,
  type Lsn,
} from "../src/lib/lsn.js";

const P = BigInt(XLOG_BLCKSZ);
const CHECKPOINT_RECORD_BYTES = 114;

type Layout = "own-end-with-prefix" | "mid-page" | "after-short-header" | "gap-16" | "header-crosses-page" | "body-crosses-page" | "crosses-segment" | "after-long-header";
const LAYOUTS: Layout[] = [
  "own-end-with-prefix",
  "mid-page",
  "after-short-header",
  "gap-16",
  "header-crosses-page",
  "body-crosses-page",
  "crosses-segment",
  "after-long-header",
];

function headerBytes(pageAddr: Lsn, seg: number): bigint {
  return segmentOffset(pageAddr, seg) === 0 ? 40n : 24n;
}

/** Where a record of `len` bytes starting at `start` ends (page headers in between counted). */
function recordEnd(start: Lsn, len: number, seg: number): Lsn {
  let pos = start;
  let left = BigInt(len);
  while (left > 0n) {
    if (pageOffset(pos) === 0) pos = lsn(pos + headerBytes(pos, seg));
    const n = P - BigInt(pageOffset(pos)) < left ? P - BigInt(pageOffset(pos)) : left;
    pos = lsn(pos + n);
    left -= n;
  }
  return pos;
}

/** First record position at or after `l` (skips a page header). */
function recordPos(l: Lsn, seg: number): Lsn {
  const a = lsnAlign(l);
  return pageOffset(a) === 0 ? lsn(a + headerBytes(a, seg)) : a;
}

/** A page at least 3 pages after `end` that is not a segment's first page. */
function laterPage(end: Lsn, seg: number): Lsn {
  let p = lsn(pageStart(end) + 3n * P);
  if (segmentOffset(p, seg) === 0) p = lsn(p + P);
  return p;
}

function pickX(layout: Layout, end: Lsn, seg: number): Lsn {
  const page = laterPage(end, seg);
  const nextSeg = segmentStart(segmentNumber(end, seg) + 1n, seg);
  switch (layout) {
    case "own-end-with-prefix":
      return end;
    case "mid-page":
      return lsn(page + 1000n);
    case "after-short-header":
      return lsn(page + 24n);
    case "gap-16":
      return lsn(page + 40n);
    case "header-crosses-page":
      return lsn(page + P - 16n);
    case "body-crosses-page":
      return lsn(page + P - 56n);
    case "crosses-segment":
      return lsn(nextSeg - 40n);
    case "after-long-header":
      return lsn(nextSeg + 40n);
  }
}

async function replaceWal(pg: PgServer, segments: { name: string; bytes: Uint8Array }[]): Promise<void> {
  for (const name of await readdir(pg.walDir)) {
    if (/^[0-9A-F]{24}(\.partial)?$|\.history$/.test(name)) await rm(join(pg.walDir, name));
  }
  for (const name of await readdir(join(pg.walDir, "archive_status"))) await rm(join(pg.walDir, "archive_status", name));
  for (const s of segments) await writeDataFile(pg, `pg_wal/${s.name}`, s.bytes);
}

test("PostgreSQL starts without recovery from synthesized pg_control + WAL at X, for every layout", { timeout: 240_000 }, async () => {
  await withPostgres({ settings: { autovacuum: false, log_min_messages: "log" } }, async (pg) => {
    await pg.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;");
    let rows = 2000;
    await pg.stop("fast");
    const summary: string[] = [];

    for (const layout of LAYOUTS) {
      const ctlPath = join(pg.dataDir, "global", "pg_control");
      const cf = parseControlFile(new Uint8Array(await readFile(ctlPath)));
      const seg = cf.xlogSegSize;
      const end = recordPos(recordEnd(cf.checkPoint, CHECKPOINT_RECORD_BYTES, seg), seg);
      const x = pickX(layout, end, seg);
      assert.ok(x >= end, `${layout}: X ${formatLsn(x)} at or after the server's end of WAL ${formatLsn(end)}`);

      let prefix: Uint8Array | undefined;
      if (layout === "own-end-with-prefix") {
        const original = await readFile(join(pg.walDir, walFileName(1, segmentNumber(x, seg), seg)));
        prefix = new Uint8Array(original.subarray(0, segmentOffset(x, seg)));
      }
      const nowSec = BigInt(Math.floor(Date.now() / 1000));
      const { redo: _redo, oldestActiveXid: _oax, ...base } = cf.checkPointCopy;
      const nextXid = cf.checkPointCopy.nextXid + 50n;
      const nextOid = cf.checkPointCopy.nextOid + 1000;
      const wal = synthesizeShutdownCheckpointWal({
        lsn: x,
        checkpoint: { ...base, nextXid, nextOid, time: nowSec },
        systemId: cf.systemIdentifier,
        walSegSizeBytes: seg,
        ...(prefix ? { prefix } : {}),
      });
      if (layout === "own-end-with-prefix") {
        assert.equal(wal.prevLsn, cf.checkPoint, "chained to the server's own shutdown checkpoint");
        assert.deepEqual(wal.segments[0]!.bytes.subarray(0, prefix!.length), prefix, "byte-identical up to X");
      }
      if (layout === "crosses-segment") assert.equal(wal.segments.length, 2);
      if (layout === "gap-16") assert.equal(wal.gapFill, "contrecord");
      if (layout === "mid-page") assert.equal(wal.gapFill, "noop");

      await replaceWal(pg, wal.segments);
      await writeDataFile(pg, "global/pg_control", encodeControlFile(shutdownControlFile(cf, x, wal.checkpoint, nowSec)));

      // pg_waldump reads the synthesized WAL from X.
      const dump = await runPgWaldump({ path: pg.walDir, start: x });
      const first = dump.records[0];
      assert.ok(first, `${layout}: pg_waldump printed nothing: ${dump.stderr}`);
      assert.equal(first.lsn, x, layout);
      assert.equal(first.rmgr, "XLOG");
      assert.equal(first.type, "CHECKPOINT_SHUTDOWN");
      assert.match(first.desc, new RegExp(`redo ${formatLsn(x)}; tli 1; prev tli 1; fpw true; xid ${Number(nextXid >> 32n)}:${Number(nextXid & 0xffffffffn)}; oid ${nextOid};`));
      assert.equal(first.totalLen, CHECKPOINT_RECORD_BYTES);

      // Start: no recovery, data intact, our counters used.
      const logBefore = (await readFile(pg.logFile, "utf8").catch(() => "")).length;
      await pg.start();
      const log = (await readFile(pg.logFile, "utf8")).slice(logBefore);
      assert.match(log, /database system was shut down at/, `${layout}: clean start\n${log}`);
      assert.doesNotMatch(log, /redo starts|not properly shut down|automatic recovery|invalid|PANIC|FATAL/, `${layout}\n${log}`);
      const [ckpt] = await pg.rows("SELECT checkpoint_lsn, redo_lsn, pg_is_in_recovery() FROM pg_control_checkpoint()");
      assert.deepEqual(ckpt, [formatLsn(x), formatLsn(x), "f"], `${layout}: still the synthesized checkpoint`);
      const insertAtStart = parseLsn(await pg.sql("SELECT pg_current_wal_insert_lsn()"));
      assert.equal(await pg.sql("SELECT count(*) || ':' || sum(length(v)) FROM t"), `${rows}:${rows * 32}`, layout);
      assert.equal(await pg.sql("BEGIN; SELECT txid_current(); COMMIT;"), (nextXid).toString(), `${layout}: nextXid from pg_control`);
      const oid = Number(await pg.sql(`CREATE TABLE t_${layout.replace(/-/g, "_")} (a int); SELECT 't_${layout.replace(/-/g, "_")}'::regclass::oid`));
      assert.ok(oid >= nextOid && oid < nextOid + 100, `${layout}: new OID ${oid} from nextOid ${nextOid}`);
      await pg.sql(`INSERT INTO t SELECT g, md5(g::text) FROM generate_series(${rows + 1}, ${rows + 500}) g`);
      rows += 500;
      const insertAfter = parseLsn(await pg.sql("SELECT pg_current_wal_insert_lsn()"));
      assert.ok(insertAtStart >= nextInsertLsn(wal) && insertAfter > insertAtStart, `${layout}: WAL continues after X`);
      // The server's own WAL follows the synthesized record: its first record points back to X.
      // (Read while running: the shutdown checkpoint may recycle X's segment.)
      const after = await runPgWaldump({ path: pg.walDir, start: x });
      assert.equal(after.records[0]?.lsn, x);
      const second = after.records[1];
      assert.ok(second, `${layout}: a record after X`);
      assert.equal(second.prevLsn, x, `${layout}: prev-link to X`);
      assert.equal(second.lsn, recordPos(wal.endLsn, seg), `${layout}: first own record right after the checkpoint`);
      assert.ok(after.records.length > 10);
      await pg.stop("fast");
      summary.push(`${layout} X=${formatLsn(x)} fill=${wal.gapFill} segs=${wal.segments.length} next=${formatLsn(second.lsn)}`);
    }

    // After all rounds: a normal restart (the server's own shutdown checkpoint) keeps everything.
    await pg.start();
    assert.equal(await pg.sql("SELECT count(*) FROM t"), String(rows));
    console.log(`wal synthesis: ${summary.length} layouts started cleanly\n  ${summary.join("\n  ")}`);
  });
});
