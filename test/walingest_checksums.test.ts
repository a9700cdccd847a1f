/**
 * WAL ingest of a cluster with data checksums (checks: walingest_lib.ts).
 *
 * With checksums on, XLogHintBitIsNeeded() is true: setting a hint bit on a
 * page for the first time after a checkpoint writes XLOG FPI_FOR_HINT, heap2
 * VISIBLE carries the heap page's image, and FSM pages can reach WAL. The
 * redo helpers run with a checksum-enabled stub, as PostgreSQL's redo
 * depends on the setting.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { Registry } from "prom-client";
import { startPostgres, type PgServer } from "./harness/pg_server.js";
import { makeTempDir, removeTempDir } from "./harness/tools.js";
import { TestStore } from "./walingest_store.js";
import { ingestAndCompare, serverFixture, snapshotStoppedCluster } from "./walingest_lib.js";
import { WalRedoPool } from "../src/walredo/pool.js";
import { WalRedoMetrics } from "../src/walredo/metrics.js";
import { defaultWalRedoDir } from "../src/walredo/stub.js";

async function workload(pg: PgServer): Promise<void> {
  await pg.sql(`
    CREATE TABLE h (id int PRIMARY KEY, v text);
    INSERT INTO h SELECT g, repeat('h', 50) FROM generate_series(1, 20000) g;
    CHECKPOINT;
    SELECT count(*) FROM h WHERE v <> '';
    UPDATE h SET v = 'u' WHERE id % 7 = 0;
    VACUUM h;
    CHECKPOINT;
    SELECT count(*) FROM h;
    CREATE TABLE tr AS SELECT g AS id, repeat('x', 100) AS pad FROM generate_series(1, 10000) g;
    VACUUM (FREEZE) tr;
    DELETE FROM tr WHERE id > 3000;
    VACUUM tr;
    CREATE INDEX h_v ON h (v);
    CREATE TABLE p (id int);
    BEGIN; INSERT INTO p VALUES (1); PREPARE TRANSACTION 'c1';
    CREATE TABLE d (id int); INSERT INTO d SELECT generate_series(1, 100); DROP TABLE d;
    TRUNCATE h;
    INSERT INTO h SELECT g, 'again' FROM generate_series(1, 500) g;
  `);
  await pg.sql(`CREATE DATABASE wl`);
  await pg.sql(`CREATE TABLE in_wl AS SELECT generate_series(1, 1000) AS id; VACUUM in_wl;`, { db: "wl" });
}

test("WAL ingest of a cluster with data checksums: FPI_FOR_HINT and friends", { timeout: 180_000 }, async () => {
  const pg = await startPostgres({
    dataChecksums: true,
    settings: { wal_keep_size: "4GB", max_wal_size: "4GB", checkpoint_timeout: "1h", max_prepared_transactions: 5, autovacuum: false, lock_timeout: "10s" },
  });
  const work = await makeTempDir("walingest-ck");
  const pool = new WalRedoPool({ tenantId: "walingest-ck", dataChecksums: true, processes: 2, baseDir: join(defaultWalRedoDir(), "walingest-ck"), metrics: new WalRedoMetrics(new Registry()) });
  try {
    const snap = join(work, "snap");
    await snapshotStoppedCluster(pg, snap);
    await workload(pg);
    const fx = await serverFixture(pg, snap, pool);
    assert.equal(fx.snapCf.dataChecksumVersion, 1);
    await pg.stop("fast");
    await mkdir(join(work, "store"));
    const store = new TestStore(join(work, "store"), pool);
    try {
      await ingestAndCompare("data checksums", store, fx, {
        recordTypes: ["XLOG/FPI_FOR_HINT", "Heap2/VISIBLE", "Heap2/PRUNE", "Storage/TRUNCATE", "Transaction/PREPARE", "Database/CREATE_WAL_LOG", "Btree/INSERT_LEAF"],
      });
    } finally {
      store.close();
    }
  } finally {
    await pool.close();
    await pg.destroy();
    await removeTempDir(work);
  }
});
