/**
 * fullbackup end to end with real PostgreSQL 15 (DESIGN §6).
 *
 * A server with data checksums runs a workload (pgbench tables, a table
 * with TOAST and several index types, a second database, a sequence, an
 * unlogged table with an index, a prepared transaction left open) and is
 * stopped cleanly. Its data directory is imported into a real Timeline
 * (layers, flushing, walredo) at the end of its shutdown checkpoint, X1.
 *
 *   1. fullbackup at X1, streamed into `tar -x` (gzip), started with an
 *      unmodified PostgreSQL: no recovery (pg_control's checkpoint is X1),
 *      pg_dump of both databases equals the original's, the prepared
 *      transaction is there and commits, the unlogged table is empty and
 *      usable, pg_amcheck --heapallindexed is clean, writes work, and
 *      txid_current() is past every XID the original used.
 *   2. The original runs more (pgbench, DDL, COMMIT PREPARED, a dropped
 *      table) with table fingerprints recorded at X2, mid-history, and at
 *      the end; all WAL after X1 is ingested into the timeline. A
 *      fullbackup at X2 started on its own has X2's fingerprints, the
 *      still-prepared transaction and a clean pg_amcheck; one at the end
 *      has the original's final pg_dump.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chown, mkdir, readFile, appendFile } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import type { Readable } from "node:stream";
import { PgServer, startPostgres } from "./harness/pg_server.js";
import { freePort } from "./harness/ports.js";
import { makeTempDir, pgUser, removeTempDir, runTool } from "./harness/tools.js";
import { importDatadir } from "../src/pageserver/import_datadir.js";
import { WalIngest } from "../src/pageserver/walingest.js";
import { recordVersionLsn } from "../src/pageserver/datadir.js";
import { Timeline, type TimelineDeps } from "../src/pageserver/timeline.js";
import { parseTenantConfig } from "../src/pageserver/config.js";
import { PageserverMetrics } from "../src/pageserver/metrics.js";
import { MaterializedPageCache } from "../src/pageserver/page_cache.js";
import { basebackup, timelineBackupLsn, type BasebackupSummary } from "../src/pageserver/basebackup.js";
import { WalRedoManager } from "../src/walredo/pool.js";
import { WalFileReader } from "../src/formats/wal/wal_files.js";
import { parseControlFile } from "../src/formats/pg_control.js";
import { generateTenantId, generateTimelineId } from "../src/lib/id.js";
import { createRegistry } from "../src/lib/metrics.js";
import { silentLogger } from "../src/lib/logging.js";
import { TaskManager, requestContext } from "../src/lib/tasks.js";
import { formatLsn, parseLsn, type Lsn } from "../src/lib/lsn.js";

/** Bound on extracting one backup with tar. */
const TAR_TIMEOUT_MS = 60_000;
const SERVER_SETTINGS = { max_prepared_transactions: 5, autovacuum: false, checkpoint_timeout: "1h", max_wal_size: "1GB", wal_keep_size: "1GB" } as const;

/** Streams a backup into `tar -x` run as the PostgreSQL user, so the files are the server's. */
async function extract(stream: Readable, dataDir: string, gzip: boolean): Promise<void> {
  const user = pgUser();
  await mkdir(dataDir, { mode: 0o700 });
  if (user) await chown(dataDir, user.uid, user.gid);
  const child = spawn("/bin/tar", [gzip ? "-xzf" : "-xf", "-", "-C", dataDir], { stdio: ["pipe", "ignore", "pipe"], ...(user ? { uid: user.uid, gid: user.gid } : {}) });
  let stderr = "";
  child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`tar did not finish within ${TAR_TIMEOUT_MS} ms`));
    }, TAR_TIMEOUT_MS);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve(code ?? 1);
    });
  });
  await pipeline(stream, child.stdin);
  const code = await exited;
  assert.equal(code, 0, `tar -x failed: ${stderr}`);
}

/** A PostgreSQL server on an extracted backup (config appended like the harness does). */
async function startFromBackup(stream: Readable, gzip: boolean): Promise<PgServer> {
  const baseDir = await makeTempDir("bbrestore");
  const dataDir = join(baseDir, "data");
  const server = new PgServer(baseDir, dataDir, await freePort());
  try {
    await extract(stream, dataDir, gzip);
    await appendFile(
      join(dataDir, "postgresql.conf"),
      "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\nfsync = off\nshared_buffers = '32MB'\nmax_prepared_transactions = 5\nautovacuum = off\n",
    );
    await server.start();
    return server;
  } catch (e) {
    await server.destroy();
    throw e;
  }
}

async function serverLog(pg: PgServer): Promise<string> {
  return readFile(pg.logFile, "utf8").catch(() => "");
}

/** Started from a shut-down checkpoint at `summary.checkpointLsn`, without recovery. */
async function assertCleanStart(pg: PgServer, summary: BasebackupSummary): Promise<void> {
  const log = await serverLog(pg);
  assert.match(log, /database system was shut down at/, log);
  assert.doesNotMatch(log, /redo starts|not properly shut down|automatic recovery|invalid checkpoint/, log);
  assert.equal(await pg.sql("SELECT pg_is_in_recovery()"), "f");
  const [cp] = await pg.rows("SELECT checkpoint_lsn, redo_lsn FROM pg_control_checkpoint()");
  assert.deepEqual(cp, [formatLsn(summary.checkpointLsn), formatLsn(summary.checkpointLsn)]);
  assert.ok(parseLsn(await pg.sql("SELECT pg_current_wal_insert_lsn()")) >= summary.walStartLsn);
}

/** pg_dump without the per-run random \restrict key lines (PostgreSQL 15.14+); unlogged table data excluded. */
async function pgDump(pg: PgServer, db: string): Promise<string> {
  const r = await runTool("pg_dump", ["-h", pg.host, "-p", String(pg.port), "-U", "postgres", "-d", db, "--exclude-table-data=u"]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.replace(/^\\(un)?restrict .*$/gm, "");
}

function assertSameDump(actual: string, expected: string, what: string): void {
  if (actual === expected) return;
  const a = actual.split("\n");
  const e = expected.split("\n");
  let i = 0;
  while (i < a.length && i < e.length && a[i] === e[i]) i++;
  assert.fail(`${what}: dumps differ first at line ${i + 1}: got ${JSON.stringify(a[i]?.slice(0, 200))}, expected ${JSON.stringify(e[i]?.slice(0, 200))} (${a.length} vs ${e.length} lines)`);
}

/** pg_amcheck of every database; --rootdescend takes ShareLock on tables: no prepared transaction may hold locks. */
async function amcheck(pg: PgServer): Promise<void> {
  const r = await runTool("pg_amcheck", ["-h", pg.host, "-p", String(pg.port), "-U", "postgres", "--all", "--install-missing", "--heapallindexed", "--rootdescend"], {
    timeoutMs: 120_000,
    env: { PGOPTIONS: "-c lock_timeout=20s" },
  });
  assert.equal(r.code, 0, `pg_amcheck: ${r.stdout}${r.stderr}`);
}

const TABLES: Record<string, string[]> = {
  postgres: ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history", "t", "docs"],
  db2: ["items"],
};

/** count + order-independent hash of every table (rows as text). */
async function fingerprint(pg: PgServer): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const [db, tables] of Object.entries(TABLES)) {
    for (const t of tables) {
      const exists = await pg.sql(`SELECT to_regclass('${t}') IS NOT NULL`, { db });
      out[`${db}.${t}`] = exists === "t" ? await pg.sql(`SELECT count(*) || ':' || coalesce(sum(hashtext(x::text)::bigint), 0) FROM ${t} x`, { db }) : "absent";
    }
  }
  return out;
}

function makeDeps(redo: WalRedoManager): TimelineDeps & { tasks: TaskManager } {
  const tenantId = generateTenantId();
  const conf = parseTenantConfig({ waitLsnTimeoutMs: 10_000 });
  return {
    tenantId,
    conf: () => conf,
    tasks: new TaskManager(),
    log: silentLogger(),
    metrics: new PageserverMetrics(createRegistry({ defaultMetrics: false })),
    pageCache: new MaterializedPageCache(1024),
    redoPool: (s) => redo.pool(tenantId, s),
  };
}

async function workloadA(pg: PgServer): Promise<void> {
  await pg.pgbench(["-i", "-s", "1", "-q"]);
  await pg.sql(`
    CREATE TABLE t (id int PRIMARY KEY, v text, arr int[]);
    INSERT INTO t SELECT g, 'row ' || g, ARRAY[g, g + 1] FROM generate_series(1, 5000) g;
    CREATE INDEX t_v ON t (v);
    CREATE INDEX t_arr ON t USING gin (arr);
    CREATE INDEX t_hash ON t USING hash (id);
    CREATE TABLE docs (id int PRIMARY KEY, body text);
    INSERT INTO docs SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 200) i) FROM generate_series(1, 50) g;
    CREATE SEQUENCE s;
    SELECT nextval('s') FROM generate_series(1, 77);
    CREATE UNLOGGED TABLE u (id int PRIMARY KEY, v text);
    INSERT INTO u SELECT g, 'unlogged' FROM generate_series(1, 1000) g;
    UPDATE t SET v = 'updated' WHERE id % 7 = 0;
    DELETE FROM t WHERE id % 11 = 0;
    VACUUM t;
    BEGIN; INSERT INTO t VALUES (100001, 'prepared'); PREPARE TRANSACTION 'p1';
  `);
  await pg.sql("CREATE DATABASE db2");
  await pg.sql("CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 2000) g; VACUUM items;", { db: "db2" });
  await pg.pgbench(["-n", "-c", "2", "-j", "2", "-t", "100"]);
}

test("fullbackup: an unmodified PostgreSQL 15 starts on it at an imported checkpoint and mid-history after ingest", { timeout: 300_000 }, async () => {
  const t0 = Date.now();
  const timings: string[] = [];
  const mark = (what: string, since: number) => timings.push(`${what} ${Date.now() - since} ms`);
  const pg = await startPostgres({ dataChecksums: true, settings: SERVER_SETTINGS });
  const work = await makeTempDir("basebackup");
  const redo = new WalRedoManager();
  const deps = makeDeps(redo);
  let tl: Timeline | undefined;
  const restored: PgServer[] = [];
  const ctx = requestContext("backup", new AbortController().signal);
  try {
    // ---- the original: workload A, facts, clean stop
    await workloadA(pg);
    const dumpsA = { postgres: await pgDump(pg, "postgres"), db2: await pgDump(pg, "db2") };
    const lastSeq = Number(await pg.sql("SELECT last_value FROM s"));
    const maxXidA = BigInt(await pg.sql("SELECT txid_current()"));
    await pg.stop("fast");
    const cfA = parseControlFile(new Uint8Array(await readFile(join(pg.dataDir, "global", "pg_control"))));
    mark("workload A", t0);

    // ---- import at the end of the shutdown checkpoint record (X1)
    const tImport = Date.now();
    const walReader = await WalFileReader.open(pg.walDir, { start: cfA.checkPoint });
    let x1: Lsn | undefined;
    for await (const rec of walReader.records()) {
      assert.equal(rec.lsn, cfA.checkPoint);
      x1 = recordVersionLsn(rec);
      break;
    }
    assert.ok(x1 !== undefined);
    const id = generateTimelineId();
    tl = await Timeline.create(deps, join(work, id), id, { startLsn: cfA.checkPoint });
    tl.activate();
    const imported = await importDatadir(pg.dataDir, x1, tl);
    mark(`import (${imported.relationBlocks} blocks)`, tImport);

    // ---- 1. fullbackup at X1 (gzip), started on its own
    const tB1 = Date.now();
    const at1 = await timelineBackupLsn(tl, undefined);
    assert.equal(at1.lsn, x1);
    const b1 = await basebackup(tl, { lsn: at1.lsn, prevRecordLsn: at1.prevRecordLsn, bounds: at1.bounds, full: true, gzip: true });
    assert.equal(b1.summary.checkpoint.nextXid, cfA.checkPointCopy.nextXid, "nextXid = the original's at its shutdown");
    assert.equal(b1.summary.checkpoint.nextOid, cfA.checkPointCopy.nextOid);
    assert.equal(b1.summary.twoPhaseFiles, 1);
    assert.equal(b1.summary.unloggedRelations, 4, "u, its primary key, its TOAST table and TOAST index");
    assert.equal(b1.summary.slruPagesAdded, 0);
    const r1 = await startFromBackup(b1.stream, true);
    restored.push(r1);
    const fin1 = await b1.finished;
    mark(`fullbackup X1 ${(b1.summary.relationBytes / 1048576).toFixed(1)} MiB relations, ${fin1.tarEntries} members, extract + start`, tB1);
    await assertCleanStart(r1, b1.summary);
    assertSameDump(await pgDump(r1, "postgres"), dumpsA.postgres, "pg_dump postgres at X1");
    assertSameDump(await pgDump(r1, "db2"), dumpsA.db2, "pg_dump db2 at X1");
    assert.equal(await r1.sql("SELECT gid FROM pg_prepared_xacts"), "p1");
    assert.equal(await r1.sql("SELECT count(*) FROM u"), "0", "unlogged table reset");
    await r1.sql("INSERT INTO u SELECT g, 'again' FROM generate_series(1, 100) g");
    assert.equal(await r1.sql("SELECT count(*) FROM u WHERE id BETWEEN 10 AND 20"), "11");
    await r1.sql("COMMIT PREPARED 'p1'");
    assert.equal(await r1.sql("SELECT v FROM t WHERE id = 100001"), "prepared");
    assert.ok(BigInt(await r1.sql("SELECT txid_current()")) > maxXidA, "new XIDs are past the history's");
    assert.ok(Number(await r1.sql("SELECT nextval('s')")) > lastSeq);
    await r1.sql("CREATE TABLE new_after_backup AS SELECT generate_series(1, 1000) AS id; UPDATE t SET v = 'written' WHERE id < 100;");
    const tAm1 = Date.now();
    await amcheck(r1);
    mark("pg_amcheck X1", tAm1);
    await r1.destroy();

    // ---- 2. more history on the original, fingerprints at X2 and at the end
    await pg.start();
    await pg.pgbench(["-n", "-c", "2", "-j", "2", "-t", "150"]);
    await pg.sql("INSERT INTO t SELECT g, 'phase b' FROM generate_series(200001, 203000) g; CHECKPOINT;");
    await pg.sql("CREATE TABLE more_items AS SELECT generate_series(1, 3000) AS id; DELETE FROM items WHERE id % 3 = 0;", { db: "db2" });
    const maxXidX2 = BigInt(await pg.sql("SELECT txid_current()"));
    const fpX2 = await fingerprint(pg);
    const x2 = parseLsn(await pg.sql("SELECT pg_current_wal_insert_lsn()"));
    await pg.sql("COMMIT PREPARED 'p1'; UPDATE t SET v = 'after x2' WHERE id < 500; DROP TABLE docs;");
    await pg.pgbench(["-n", "-c", "2", "-j", "2", "-t", "100"]);
    await pg.sql("VACUUM items;", { db: "db2" });
    const fpEnd = await fingerprint(pg);
    const dumpsEnd = { postgres: await pgDump(pg, "postgres"), db2: await pgDump(pg, "db2") };
    await pg.stop("fast");

    const tIngest = Date.now();
    const ingest = new WalIngest(tl, tl, { startLsn: x1 });
    const reader2 = await WalFileReader.open(pg.walDir, { start: x1 });
    let records = 0;
    for await (const batch of reader2.batches()) {
      for (const rec of batch) {
        if (rec.lsn < x1) continue;
        await ingest.ingestRecord(rec, ctx);
        records++;
        if (tl.needsBackpressure) await tl.flushBackpressure();
      }
    }
    assert.ok(tl.lastRecordLsn > x2, `ingested to ${formatLsn(tl.lastRecordLsn)}, past X2 ${formatLsn(x2)}`);
    mark(`ingest ${records} records (${formatLsn(x1)}..${formatLsn(tl.lastRecordLsn)})`, tIngest);

    // fullbackup at X2 (plain tar): the first read of X2's pages, redo included; throughput into tar -x
    const at2 = await timelineBackupLsn(tl, x2, { timeoutMs: 5000 });
    const tB2 = Date.now();
    const b2 = await basebackup(tl, { lsn: at2.lsn, bounds: at2.bounds, full: true });
    let streamMs = 0;
    const [fin2, r2] = await Promise.all([
      b2.finished.then((f) => {
        streamMs = Date.now() - tB2;
        return f;
      }),
      startFromBackup(b2.stream, false),
    ]);
    restored.push(r2);
    timings.push(`fullbackup X2 streamed ${(fin2.contentBytes / 1048576).toFixed(1)} MiB into tar -x in ${streamMs} ms (${(fin2.contentBytes / 1048576 / (streamMs / 1000)).toFixed(1)} MiB/s)`);
    mark(`fullbackup X2 (${formatLsn(at2.lsn)}, ${fin2.checksumsSet} checksums computed) extract + start`, tB2);
    await assertCleanStart(r2, b2.summary);
    assert.deepEqual(await fingerprint(r2), fpX2, "fingerprints at X2");
    assert.equal(await r2.sql("SELECT gid FROM pg_prepared_xacts"), "p1", "still prepared at X2");
    assert.ok(BigInt(await r2.sql("SELECT txid_current()")) > maxXidX2);
    await r2.sql("COMMIT PREPARED 'p1'");
    assert.equal(await r2.sql("SELECT v FROM t WHERE id = 100001"), "prepared");
    await amcheck(r2);
    await r2.destroy();

    // fullbackup at the end: the original's final pg_dump
    const tB3 = Date.now();
    const at3 = await timelineBackupLsn(tl, undefined);
    const b3 = await basebackup(tl, { lsn: at3.lsn, prevRecordLsn: at3.prevRecordLsn, bounds: at3.bounds, full: true });
    const r3 = await startFromBackup(b3.stream, false);
    restored.push(r3);
    await b3.finished;
    mark("fullbackup end extract + start", tB3);
    await assertCleanStart(r3, b3.summary);
    assert.deepEqual(await fingerprint(r3), fpEnd, "fingerprints at the end");
    assertSameDump(await pgDump(r3, "postgres"), dumpsEnd.postgres, "pg_dump postgres at the end");
    assertSameDump(await pgDump(r3, "db2"), dumpsEnd.db2, "pg_dump db2 at the end");
    assert.equal(await r3.sql("SELECT count(*) FROM pg_prepared_xacts"), "0");
    await r3.destroy();
    console.log(`basebackup e2e: ${timings.join("; ")}; total ${Date.now() - t0} ms`);
  } finally {
    for (const r of restored) await r.destroy().catch(() => undefined);
    await tl?.shutdown().catch(() => undefined);
    await deps.tasks.close(5000).catch(() => undefined);
    await redo.close().catch(() => undefined);
    await pg.destroy();
    await removeTempDir(work);
  }
});
