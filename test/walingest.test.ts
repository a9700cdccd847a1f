/**
 * WAL ingest against a real PostgreSQL 15 server (the checks are listed in
 * walingest_lib.ts): one workload, verified twice — through a store made of
 * the real layer and redo parts only, and through the pageserver's Timeline
 * (in-memory layers frozen and flushed to delta layer files on the way).
 */
import { test } from "node:test";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { Registry } from "prom-client";
import { startPostgres } from "./harness/pg_server.js";
import { makeTempDir, removeTempDir } from "./harness/tools.js";
import { TestStore } from "./walingest_store.js";
import { ingestAndCompare, serverFixture, snapshotStoppedCluster, workload } from "./walingest_lib.js";
import { Timeline, type TimelineDeps } from "../src/pageserver/timeline.js";
import { parseTenantConfig } from "../src/pageserver/config.js";
import { PageserverMetrics } from "../src/pageserver/metrics.js";
import { MaterializedPageCache } from "../src/pageserver/page_cache.js";
import { generateTenantId, generateTimelineId } from "../src/lib/id.js";
import { createRegistry } from "../src/lib/metrics.js";
import { silentLogger } from "../src/lib/logging.js";
import { TaskManager } from "../src/lib/tasks.js";
import { WalRedoManager, WalRedoPool } from "../src/walredo/pool.js";
import { WalRedoMetrics } from "../src/walredo/metrics.js";
import { defaultWalRedoDir } from "../src/walredo/stub.js";

/** Record types the workload must reach for the test to mean anything. */
const EXPECTED_RECORD_TYPES = [
    "Storage/CREATE", "Storage/TRUNCATE", "Database/CREATE_FILE_COPY", "Database/CREATE_WAL_LOG", "Database/DROP",
    "Transaction/PREPARE", "Transaction/COMMIT_PREPARED", "Transaction/ABORT_PREPARED", "Transaction/ABORT", "MultiXact/CREATE_ID",
    "RelMap/UPDATE", "Heap2/VISIBLE", "Heap2/MULTI_INSERT", "Heap/HOT_UPDATE", "Heap/LOCK", "Sequence/LOG", "Hash/INIT_META_PAGE",
    "Gin/INSERT", "Gist/PAGE_UPDATE", "SPGist/ADD_LEAF", "BRIN/INSERT", "Btree/NEWROOT", "XLOG/FPI", "XLOG/CHECKPOINT_SHUTDOWN", "XLOG/CHECKPOINT_ONLINE",
];

test("WAL ingest reproduces a PostgreSQL 15 cluster: dirs, sizes, pages, SLRUs, relmaps, 2PC, counters", { timeout: 300_000 }, async (t) => {
  const pg = await startPostgres({
    settings: { wal_keep_size: "4GB", max_wal_size: "4GB", checkpoint_timeout: "1h", max_prepared_transactions: 5, autovacuum: false, lock_timeout: "10s" },
  });
  const work = await makeTempDir("walingest");
  const pool = new WalRedoPool({ tenantId: "walingest", dataChecksums: false, processes: 2, baseDir: join(defaultWalRedoDir(), "walingest"), metrics: new WalRedoMetrics(new Registry()) });
  try {
    // a consistent copy of the fresh cluster
    const snap = join(work, "snap");
    await snapshotStoppedCluster(pg, snap);

    // workload, catalog facts, clean stop
    const t0 = Date.now();
    await workload(pg);
    const fx = await serverFixture(pg, snap, pool);
    await pg.stop("fast");
    console.log(`walingest: workload ${Date.now() - t0} ms`);

    await t.test("into a store of the real layer and redo parts", async () => {
      await mkdir(join(work, "store"));
      const store = new TestStore(join(work, "store"), pool);
      try {
        await ingestAndCompare("test store", store, fx, { recordTypes: EXPECTED_RECORD_TYPES, truncateFlags: 7, multixacts: true });
      } finally {
        store.close();
      }
    });

    await t.test("into the pageserver Timeline (flushing to delta layers)", async () => {
      const root = join(work, "timeline");
      const tenantConf = parseTenantConfig({ checkpointDistanceBytes: 4 * 1024 * 1024 });
      const redo = new WalRedoManager({ baseDir: join(defaultWalRedoDir(), "walingest-tl") });
      const tenantId = generateTenantId();
      const tasks = new TaskManager();
      const deps: TimelineDeps = {
        tenantId,
        conf: () => tenantConf,
        tasks,
        log: silentLogger(),
        metrics: new PageserverMetrics(createRegistry({ defaultMetrics: false })),
        pageCache: new MaterializedPageCache(1024),
        redoPool: (s) => redo.pool(tenantId, s),
      };
      const id = generateTimelineId();
      await mkdir(root, { recursive: true });
      const tl = await Timeline.create(deps, join(root, id), id, { startLsn: fx.snapCf.checkPoint });
      tl.activate();
      try {
        await ingestAndCompare("timeline", tl, fx, { recordTypes: EXPECTED_RECORD_TYPES, truncateFlags: 7, multixacts: true });
      } finally {
        await tl.shutdown();
        await tasks.close(5000);
        await redo.close();
      }
    });
  } finally {
    await pool.close();
    await pg.destroy();
    await removeTempDir(work);
  }
});
