/**
 * Safekeeper WAL storage against a real PostgreSQL 15.
 *
 * A server runs a workload that crosses segment boundaries (one by
 * pg_switch_wal, others by volume). Its WAL from a segment start up to its
 * flush LSN is copied into a WalStorage in random-sized chunks with random
 * flushes, exactly as a WAL receiver would. Then:
 *  (a) pg_waldump over the safekeeper directory lists the same records as
 *      over the server's own pg_wal for that range;
 *  (b) every completed segment file is byte-identical to the server's, and
 *      the partial one up to the end of WAL (zeros after);
 *  (c) after a simulated crash mid-write (a torn, unflushed write and power
 *      loss), reopening finds the end of WAL at the end of the last complete
 *      record — a record boundary of the server's WAL — with nothing lost
 *      that was flushed.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { link, copyFile, readFile, readdir, open } from "node:fs/promises";
import { join } from "node:path";
import { withPostgres, type PgServer } from "./harness/pg_server.js";
import { makeTempDir, removeTempDir } from "./harness/tools.js";
import { pgWaldump, type WaldumpRecord } from "./harness/waldump.js";
import { formatLsn, lsn, parseLsn, parseWalFileName, segmentNumber, segmentOffset, segmentStart, walFileName, DEFAULT_WAL_SEG_SIZE_BYTES, type Lsn } from "../src/lib/lsn.js";
import { NodeDurableFS } from "../src/safekeeper/durable_fs.js";
import { FaultyFS } from "../src/safekeeper/faulty_fs.js";
import { seededRandom } from "../src/lib/prng.js";
import { WalStorage } from "../src/safekeeper/wal_storage.js";

const SEG = DEFAULT_WAL_SEG_SIZE_BYTES;

/** Temp directories made by this file; removed at the end whatever happens (they hold ~200 MB of WAL). */
const tempDirs: string[] = [];
async function tempDir(prefix: string): Promise<string> {
  const d = await makeTempDir(prefix);
  tempDirs.push(d);
  return d;
}

/** Reads the server's WAL bytes [from, to) straight from its pg_wal segment files. */
async function serverWal(pg: PgServer, from: Lsn, to: Lsn): Promise<Uint8Array> {
  const out = new Uint8Array(Number(to - from));
  let done = 0;
  while (done < out.length) {
    const at = lsn(from + BigInt(done));
    const seg = segmentNumber(at);
    const off = segmentOffset(at);
    const n = Math.min(out.length - done, SEG - off);
    const fh = await open(join(pg.walDir, walFileName(1, seg)), "r");
    try {
      const { bytesRead } = await fh.read(out, done, n, off);
      assert.equal(bytesRead, n);
    } finally {
      await fh.close();
    }
    done += n;
  }
  return out;
}

/** A directory pg_waldump can read: final segments linked, the partial one copied under its final name. */
async function waldumpView(walDir: string): Promise<string> {
  const view = await tempDir("sk-view-");
  for (const name of await readdir(walDir)) {
    if (/^[0-9A-F]{24}$/.test(name)) await link(join(walDir, name), join(view, name));
    else if (/^[0-9A-F]{24}\.partial$/.test(name)) await copyFile(join(walDir, name), join(view, name.slice(0, 24)));
  }
  return view;
}

function alignUp8(l: Lsn): bigint {
  return (l + 7n) & ~7n;
}

async function runWorkload(pg: PgServer): Promise<{ start: Lsn; end: Lsn; systemId: bigint }> {
  await pg.sql("CREATE TABLE t (id int PRIMARY KEY, pad text)");
  // Start at a segment boundary, as pg_receivewal does.
  await pg.switchWal();
  const start = segmentStart(segmentNumber(await pg.currentWalLsn()));
  // Wide rows (below the TOAST threshold) keep the record count modest for the volume.
  await pg.sql("INSERT INTO t SELECT g, repeat(md5(g::text), 45) FROM generate_series(1, 4000) g");
  await pg.switchWal(); // a segment ended by XLOG_SWITCH
  await pg.sql("INSERT INTO t SELECT g, repeat(md5(g::text), 45) FROM generate_series(4001, 16000) g");
  await pg.sql("UPDATE t SET pad = 'z' WHERE id % 7 = 0");
  await pg.sql("DELETE FROM t WHERE id % 11 = 0");
  const end = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
  const systemId = BigInt(await pg.sql("SELECT system_identifier FROM pg_control_system()"));
  return { start, end, systemId };
}

test("WalStorage holds a real server's WAL: pg_waldump agrees, segments are byte-identical, crash recovery ends at a record", async (t) => {
  t.after(async () => {
    for (const d of tempDirs) await removeTempDir(d);
  });
  await withPostgres({ settings: { wal_keep_size: "1GB", checkpoint_timeout: "30min", max_wal_size: "1GB" } }, async (pg) => {
    const { start, end, systemId } = await runWorkload(pg);
    const segments = Number(segmentNumber(end) - segmentNumber(start)) + 1;
    const wal = await serverWal(pg, start, end);
    assert.ok(segments >= 3 && wal.length < 40 * 1048576, `workload spans ${segments} segments, ${wal.length} bytes from ${formatLsn(start)} to ${formatLsn(end)}`);

    // Copy into a WalStorage in random chunks with random flushes.
    const dir = await tempDir("sk-wal-");
    const fs = new NodeDurableFS();
    const s = await WalStorage.open({ fs, dir, walSegSizeBytes: SEG, timelineStartLsn: start, flushLsnHint: start, systemId });
    const rand = seededRandom(42);
    let pos = start;
    let flushes = 0;
    const t0 = performance.now();
    while (pos < end) {
      const n = Math.min(Number(end - pos), 1 + Math.floor(rand() * (rand() < 0.2 ? 512 * 1024 : 16 * 1024)));
      await s.write(pos, wal.subarray(Number(pos - start), Number(pos - start) + n));
      pos = lsn(pos + BigInt(n));
      if (rand() < 0.05) {
        await s.flush();
        flushes++;
      }
    }
    assert.equal(await s.flush(), end);
    const ms = performance.now() - t0;
    console.log(`copied ${(wal.length / 1048576).toFixed(1)} MiB over ${segments} segments in ${ms.toFixed(0)} ms with ${flushes + 1} flushes`);
    const recordEnd = s.flushRecordLsn!;
    assert.ok(recordEnd <= end && recordEnd > end - 65536n, `last complete record ends at ${formatLsn(recordEnd)}`);

    // (b) byte-identical segments.
    const names = (await readdir(dir)).filter((n) => !n.endsWith(".tmp")).sort();
    assert.equal(names.length, segments);
    for (const name of names) {
      const ours = await readFile(join(dir, name));
      assert.equal(ours.length, SEG, `${name} is full-size`);
      const segLsn = segmentStart(parseWalFileName(name).segNo);
      const theirs = await readFile(join(pg.walDir, name.slice(0, 24)));
      if (name.endsWith(".partial")) {
        const valid = Number(end - segLsn);
        assert.ok(ours.subarray(0, valid).equals(theirs.subarray(0, valid)), `${name} differs from the server's below ${formatLsn(end)}`);
        assert.ok(ours.subarray(valid).every((b) => b === 0), `${name} has bytes after the end of WAL`);
      } else {
        assert.ok(ours.equals(theirs), `${name} is not byte-identical to the server's`);
      }
    }

    // (a) pg_waldump lists the same records.
    const view = await waldumpView(dir);
    const ourRecords = await pgWaldump({ path: view, start, end: recordEnd });
    const serverRecords = await pgWaldump({ path: pg.walDir, start, end: recordEnd });
    assert.ok(serverRecords.length > 10000, `server lists ${serverRecords.length} records`);
    assert.equal(ourRecords.length, serverRecords.length);
    assert.deepEqual(ourRecords, serverRecords);
    assert.ok(serverRecords.some((r) => r.rmgr === "XLOG" && r.type === "SWITCH"));
    console.log(`pg_waldump: ${serverRecords.length} identical records, ${new Set(serverRecords.map((r) => r.rmgr)).size} resource managers`);
    await s.close();

    // A reopen without a crash finds the same end.
    const reopened = await WalStorage.open({ fs, dir, walSegSizeBytes: SEG, timelineStartLsn: start, flushLsnHint: s.recoveryStartLsn, systemId });
    assert.equal(reopened.writeLsn, recordEnd);
    await reopened.close();

    // (c) Crash mid-write: flush up to a point inside the last segment, then a torn unflushed write, then power loss.
    await crashMidWrite(serverRecords, wal, start, end, systemId);
  });
});

async function crashMidWrite(records: WaldumpRecord[], wal: Uint8Array, start: Lsn, end: Lsn, systemId: bigint): Promise<void> {
  const starts = new Set(records.map((r) => r.lsn as bigint));
  for (let seed = 1; seed <= 3; seed++) {
    const dir = await tempDir("sk-crash-");
    const real = new NodeDurableFS();
    const rand = seededRandom(seed);
    // Flushed prefix: somewhere in the last segment, not at a record boundary.
    const lastSegStart = segmentStart(segmentNumber(end));
    const flushedTo = lsn(lastSegStart + BigInt(Math.floor(rand() * Number(end - lastSegStart - 100000n))) + 3n);
    const s1 = await WalStorage.open({ fs: real, dir, walSegSizeBytes: SEG, timelineStartLsn: start, flushLsnHint: start, systemId });
    await s1.write(start, wal.subarray(0, Number(flushedTo - start)));
    await s1.flush();
    const hint = s1.recoveryStartLsn;
    await s1.close();

    // Reopen through a FaultyFS (recovery itself trims the unfinished record), then tear a big unflushed write.
    const fs = new FaultyFS(real, { seed });
    const s2 = await WalStorage.open({ fs, dir, walSegSizeBytes: SEG, timelineStartLsn: start, flushLsnHint: hint, systemId });
    fs.addFault({ op: "write", nth: 2 + Math.floor(rand() * 4), effect: "torn" });
    const afterOpen = s2.writeLsn;
    let p = afterOpen;
    let attemptedTo = afterOpen;
    try {
      while (p < end) {
        const n = Math.min(Number(end - p), 20000 + Math.floor(rand() * 60000));
        attemptedTo = lsn(p + BigInt(n));
        await s2.write(p, wal.subarray(Number(p - start), Number(p - start) + n));
        p = attemptedTo;
      }
      assert.fail("the torn write should have crashed the storage");
    } catch (e) {
      assert.ok(!(e instanceof assert.AssertionError), String(e));
    }
    await s2.close().catch(() => undefined);
    await fs.powerLoss();

    const r = await WalStorage.open({ fs: real, dir, walSegSizeBytes: SEG, timelineStartLsn: start, flushLsnHint: hint, systemId });
    const recovered = r.writeLsn;
    // A record boundary of the server's WAL: the next record starts right after it.
    assert.ok(starts.has(alignUp8(recovered)), `seed ${seed}: recovered end ${formatLsn(recovered)} is not a record boundary`);
    // Nothing flushed is lost: every record complete below the flushed point is kept.
    const completeBelowFlush = records.filter((x, i) => i + 1 < records.length && records[i + 1]!.lsn <= flushedTo).pop()!;
    assert.ok(recovered > completeBelowFlush.lsn, `seed ${seed}: lost the flushed record at ${formatLsn(completeBelowFlush.lsn)}`);
    assert.ok(recovered <= attemptedTo, `seed ${seed}: recovered past what was ever written`);
    // The bytes kept are the server's, the rest of the partial segment is zero.
    const kept = await r.read(start, Number(recovered - start));
    assert.ok(Buffer.from(kept).equals(Buffer.from(wal.subarray(0, kept.length))), `seed ${seed}: recovered WAL differs from the server's`);
    const partialName = walFileName(1, segmentNumber(recovered)) + ".partial";
    const partial = await readFile(join(dir, partialName));
    assert.ok(partial.subarray(segmentOffset(recovered)).every((b) => b === 0), `seed ${seed}: bytes after the end of WAL`);
    // pg_waldump sees exactly the server's records that fit below the recovered end.
    const view = await waldumpView(dir);
    const listed = await pgWaldump({ path: view, start, end: recovered });
    const expected = records.filter((x) => x.lsn < recovered);
    assert.deepEqual(listed, expected, `seed ${seed}: pg_waldump lists ${listed.length} records, expected ${expected.length}`);
    console.log(
      `crash seed ${seed}: flushed to ${formatLsn(flushedTo)}, reopened at ${formatLsn(afterOpen)}, torn after ${formatLsn(p)}, recovered end ${formatLsn(recovered)} (${r.recovery.recordsDecoded} records decoded, ${r.recovery.zeroedBytes} bytes zeroed)`,
    );
    await r.close();
  }
}
