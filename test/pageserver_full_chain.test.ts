/**
 * Issue 5, acceptance 1 over the whole chain: compute (PostgreSQL 15, with
 * the safekeeper as its synchronous standby sk_1) -> safekeeper -> pageserver
 * (WAL receiver, streaming ingest, layer flushes), running the foundation
 * workload (pgbench, CREATE/DROP TABLE and INDEX of every access method,
 * VACUUM with truncation, TRUNCATE, both CREATE DATABASE strategies, DROP
 * DATABASE, prepared transactions, subtransactions, multixacts, a sequence,
 * an unlogged table: walingest_lib.ts `workload`).
 *
 * After the compute's clean shutdown (its shutdown checkpoint reaches the
 * pageserver through the safekeeper), the pageserver's timeline read at its
 * last record is compared with the compute's files by the same check as the
 * file-based ingest test (walingest_lib.ts `compareWithServer`): database
 * and relation directories and sizes, every block of every main, VM and init
 * fork (masked only as wal_consistency_checking masks), every SLRU page,
 * relmapper and two-phase files, and the XID/OID/multixact counters.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Registry } from "prom-client";
import { parseControlFile } from "../src/formats/pg_control.js";
import { formatLsn } from "../src/lib/lsn.js";
import { createRegistry } from "../src/lib/metrics.js";
import { createLogger } from "../src/lib/logging.js";
import { defaultPageserverConfig } from "../src/pageserver/config.js";
import { Pageserver } from "../src/pageserver/pageserver.js";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";
import { WalRedoMetrics } from "../src/walredo/metrics.js";
import { WalRedoPool } from "../src/walredo/pool.js";
import { defaultWalRedoDir } from "../src/walredo/stub.js";
import { startPostgres } from "./harness/pg_server.js";
import { makeTempDir, removeTempDir } from "./harness/tools.js";
import { http, newIds, startInProcess, waitFor } from "./safekeeper_helpers.js";
import { compareWithServer, serverFixture, snapshotStoppedCluster, workload } from "./walingest_lib.js";

/** Bound on the pageserver catching up with the compute's final shutdown checkpoint. */
const CATCH_UP_TIMEOUT_MS = 120_000;

test("compute -> safekeeper -> pageserver: every block, SLRU page, relmap and counter equals the compute's files", { timeout: 400_000 }, async () => {
  // lock_timeout: the workload's concurrent pgbench clients wait for each other's locks while every
  // commit also waits for the safekeeper; on a loaded two-core machine 10 s was not enough.
  const pg = await startPostgres({
    synchronousStandbyNames: "sk_1",
    settings: { wal_keep_size: "4GB", max_wal_size: "4GB", checkpoint_timeout: "1h", max_prepared_transactions: 5, autovacuum: false, lock_timeout: "120s" },
  });
  const work = await makeTempDir("fullchain");
  const ids = newIds();
  const pool = new WalRedoPool({ tenantId: "fullchain", dataChecksums: false, processes: 1, baseDir: join(defaultWalRedoDir(), "fullchain"), metrics: new WalRedoMetrics(new Registry()) });
  let sk: Safekeeper | undefined;
  let ps: Pageserver | undefined;
  try {
    // Bootstrap: the fresh cluster's cleanly stopped data directory.
    const snap = join(work, "snap");
    await snapshotStoppedCluster(pg, snap);

    sk = await startInProcess({ id: 1 });
    let r = await http(sk.httpPort, "PUT", `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}/compute`, { connstr: pg.connString(), term: 1 });
    assert.equal(r.status, 201, r.text);
    const config = { ...defaultPageserverConfig(join(work, "ps")), listenPgPort: 0, listenHttpPort: 0, safekeepers: [`127.0.0.1:${sk.pgPort}`] };
    // A small checkpoint distance: the workload's WAL crosses many layer flushes on its way.
    config.defaultTenantConfig = { ...config.defaultTenantConfig, checkpointDistanceBytes: 8 * 1024 * 1024, checkpointTimeoutMs: 2000 };
    ps = await Pageserver.start({ config, log: createLogger({ component: "pageserver-test", level: process.env.STRATA_TEST_LOG ?? "warn" }), registry: createRegistry({ defaultMetrics: false }) });
    r = await http(ps.httpPort, "POST", "/v1/tenant", { tenant_id: ids.tenantId });
    assert.equal(r.status, 201, r.text);
    r = await http(ps.httpPort, "POST", `/v1/tenant/${ids.tenantId}/timeline`, { new_timeline_id: ids.timelineId, import_datadir: snap });
    assert.equal(r.status, 201, r.text);

    // The workload: every commit waits for the safekeeper's fsync.
    const t0 = Date.now();
    await workload(pg);
    const fx = await serverFixture(pg, snap, pool);
    // A clean stop: the walsender sends the shutdown checkpoint to the safekeeper before exiting.
    await pg.stop("fast");
    const finalCf = parseControlFile(new Uint8Array(await readFile(join(pg.dataDir, "global", "pg_control"))));
    const tl = ps.tenants.get(ids.tenantId).getTimeline(ids.timelineId);
    await waitFor(`the pageserver to ingest the compute's shutdown checkpoint at ${formatLsn(finalCf.checkPoint)}`, () => tl.lastRecordLsn > finalCf.checkPoint, CATCH_UP_TIMEOUT_MS, 100);
    const walMiB = Number(tl.lastRecordLsn - fx.snapCf.checkPoint) / 1048576;
    console.log(`full chain: workload + streaming ingest of ${walMiB.toFixed(1)} MiB WAL in ${Date.now() - t0} ms; ${tl.layerInfos().length} layer files`);

    const summary = await compareWithServer(tl, fx, tl.lastRecordLsn);
    assert.ok(summary.pages > 3000, `only ${summary.pages} pages compared`);
    assert.ok(summary.counters.nextMulti > 1, "the workload created multixacts");
    console.log(`full chain: ${summary.text}`);
  } finally {
    await ps?.stop().catch(() => undefined);
    await sk?.stop().catch(() => undefined);
    await pool.close();
    await pg.destroy();
    await removeTempDir(work);
  }
});
