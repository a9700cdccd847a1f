/**
 * Pageserver benchmark (run on demand: `node dist/bench/pageserver.js [--transactions N]`).
 *
 * 1. Ingest: a real PostgreSQL 15 runs pgbench; its initial data directory is
 *    imported and its WAL (read from pg_wal, decoded up front so decoding is
 *    not counted) is ingested through WalIngest into a timeline with the
 *    default checkpoint distance; prints WAL MB/s and records/s, flushes
 *    included (a final checkpoint is part of the time).
 * 2. GetPage over the libpq page service (pagestream), like Neon's pagebench:
 *    requests/s and p50/p99 latency for (a) cached pages (the same LSN asked
 *    again) and (b) pages needing replay (pgbench_accounts blocks at the
 *    end LSN, first read, page cache off), with 1 and 8 concurrent clients.
 */
import { rm } from "node:fs/promises";
import { performance } from "node:perf_hooks";
import { generateTenantId, generateTimelineId } from "../src/lib/id.js";
import { createRegistry } from "../src/lib/metrics.js";
import { createLogger } from "../src/lib/logging.js";
import { defaultPageserverConfig } from "../src/pageserver/config.js";
import { internalContext } from "../src/pageserver/getpage.js";
import { importDatadir } from "../src/pageserver/import_datadir.js";
import { Pageserver } from "../src/pageserver/pageserver.js";
import { PagestreamClient } from "../src/pageserver/pagestream.js";
import { WalIngest } from "../src/pageserver/walingest.js";
import { makeTempDir } from "../test/harness/tools.js";
import { readWal, runCapturedWorkload } from "../test/pageserver_support.js";

const args = process.argv.slice(2);
const txIdx = args.indexOf("--transactions");
const transactions = txIdx >= 0 ? Number(args[txIdx + 1]) : 2000;

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!;
}

async function main(): Promise<void> {
  const w = await runCapturedWorkload({ pgbenchTransactions: transactions });
  const dataDir = await makeTempDir("psbench");
  const config = { ...defaultPageserverConfig(dataDir), listenPgPort: 0, listenHttpPort: 0, pageCachePages: 0 };
  const ps = await Pageserver.start({ config, log: createLogger({ component: "bench", level: "warn" }), registry: createRegistry({ defaultMetrics: false }) });
  try {
    const tenant = await ps.tenants.createTenant(generateTenantId());
    const tl = await tenant.createTimeline(generateTimelineId());
    const records = await readWal(w.pg.walDir, w.importLsn, w.endLsn);
    const walBytes = Number(w.endLsn - w.importLsn);
    const ti = performance.now();
    await importDatadir(w.dataDirCopy, w.importLsn, tl);
    const importMs = performance.now() - ti;
    const ctx = internalContext();
    const ingest = new WalIngest(tl, tl, { startLsn: tl.lastRecordLsn });
    const t0 = performance.now();
    for (const rec of records) await ingest.ingestRecord(rec, ctx);
    await tl.checkpoint();
    const s = (performance.now() - t0) / 1000;
    console.log(`import: ${importMs.toFixed(0)} ms`);
    console.log(`ingest: ${(walBytes / 1e6).toFixed(1)} MB of WAL, ${records.length} records in ${s.toFixed(2)} s = ${(walBytes / 1e6 / s).toFixed(1)} MB/s, ${(records.length / s).toFixed(0)} records/s (flushes included, ${tl.layerInfos().length} layer files)`);

    const accounts = w.relations.find((r) => r.name === "pgbench_accounts")!;
    const rel = { spcOid: accounts.spcOid, dbOid: accounts.dbOid, relNumber: accounts.relNumber, fork: 0 };
    const nblocks = accounts.file.length / 8192;
    const run = async (label: string, clients: number, perClient: number, blockOf: (c: number, i: number) => number, cacheOn: boolean) => {
      ps.tenants.pageCache.dropTimeline(tl.timelineId);
      ps.tenants.pageCache.setCapacity(cacheOn ? 1 << 20 : 0);
      if (cacheOn) {
        // Warm: one read of each block the clients will ask for.
        const warm = await PagestreamClient.connect({ host: "127.0.0.1", port: ps.pgPort, user: "postgres", tenantId: tenant.tenantId, timelineId: tl.timelineId });
        await Promise.all(Array.from({ length: Math.min(nblocks, perClient) }, (_, b) => warm.getPage(rel, b, tl.lastRecordLsn)));
        await warm.close();
      }
      const cs = await Promise.all(Array.from({ length: clients }, () => PagestreamClient.connect({ host: "127.0.0.1", port: ps.pgPort, user: "postgres", tenantId: tenant.tenantId, timelineId: tl.timelineId })));
      const lat: number[] = [];
      const tStart = performance.now();
      await Promise.all(
        cs.map(async (c, ci) => {
          for (let i = 0; i < perClient; i++) {
            const t = performance.now();
            await c.getPage(rel, blockOf(ci, i), tl.lastRecordLsn);
            lat.push(performance.now() - t);
          }
        }),
      );
      const secs = (performance.now() - tStart) / 1000;
      lat.sort((a, b) => a - b);
      console.log(`getpage ${label}, ${clients} client(s): ${(lat.length / secs).toFixed(0)} req/s, p50 ${pct(lat, 50).toFixed(3)} ms, p99 ${pct(lat, 99).toFixed(3)} ms (${lat.length} requests)`);
      await Promise.all(cs.map((c) => c.close()));
    };
    const n = Math.min(nblocks, 1600);
    await run("cached", 1, 2000, (_c, i) => i % n, true);
    await run("cached", 8, 1000, (c, i) => (c * 131 + i) % n, true);
    await run("replay (cache off)", 1, 400, (_c, i) => i % n, false);
    await run("replay (cache off)", 8, 200, (c, i) => (c * 200 + i) % n, false);
  } finally {
    await ps.stop();
    await w.pg.destroy();
    await rm(dataDir, { recursive: true, force: true });
  }
}

await main();
