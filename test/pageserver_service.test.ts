/**
 * The pageserver as a service, against real parts: compute (PostgreSQL 15)
 * -> safekeeper (in-process, synchronous standby sk_1) -> pageserver
 * (in-process: WAL receiver, page service, HTTP API).
 *
 * The compute's cleanly stopped data directory bootstraps the timeline
 * through the HTTP API (import_datadir); the WAL receiver then streams from
 * the safekeeper while the compute runs a workload. Checked:
 *   - the pageserver catches up with the compute's flush LSN and reports
 *     feedback to the safekeeper (disk-consistent LSN);
 *   - through the libpq page service (pagestream): nblocks, exists, every
 *     page of the workload's table and index equals the compute's files after
 *     CHECKPOINT (masked as wal_consistency_checking does), clog segment 0
 *     equals pg_xact/0000 for the transactions it covers, dbsize is the sum of
 *     relation sizes, errors come back per request (unknown relation, LSN
 *     not yet ingested -> bounded wait then error) and the stream goes on;
 *   - HTTP: tenant/timeline list and detail, checkpoint, compact, a branch at
 *     an earlier LSN serving the old page version, /metrics;
 *   - a restart of the pageserver resumes streaming from disk_consistent_lsn
 *     and catches up with WAL written while it was down.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { formatLsn, parseLsn, type Lsn } from "../src/lib/lsn.js";
import { createRegistry } from "../src/lib/metrics.js";
import { createLogger } from "../src/lib/logging.js";
import { defaultPageserverConfig } from "../src/pageserver/config.js";
import { Pageserver } from "../src/pageserver/pageserver.js";
import { PagestreamClient, PagestreamError } from "../src/pageserver/pagestream.js";
import { SlruKind } from "../src/pageserver/key.js";
import { WalRedoPool } from "../src/walredo/pool.js";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";
import { startPostgres } from "./harness/pg_server.js";
import { makeTempDir } from "./harness/tools.js";
import { http, newIds, waitFor } from "./safekeeper_helpers.js";
import { comparePages } from "./pageserver_support.js";
import { computeWithSafekeeper } from "./pageserver_chain.js";

async function startPs(dataDir: string, skPort: number): Promise<Pageserver> {
  const config = { ...defaultPageserverConfig(dataDir), listenPgPort: 0, listenHttpPort: 0, safekeepers: [`127.0.0.1:${skPort}`] };
  config.defaultTenantConfig = { ...config.defaultTenantConfig, checkpointDistanceBytes: 4 * 1024 * 1024, checkpointTimeoutMs: 2000 };
  const log = createLogger({ component: "pageserver-test", level: process.env.STRATA_TEST_LOG ?? "warn" });
  return Pageserver.start({ config, log, registry: createRegistry({ defaultMetrics: false }) });
}

test("compute -> safekeeper -> pageserver: streaming ingest, page service, HTTP API, restart", { timeout: 150_000 }, async () => {
  const pg = await startPostgres({ synchronousStandbyNames: "sk_1", settings: { autovacuum: false, checkpoint_timeout: "1h", max_wal_size: "1GB" } });
  const ids = newIds();
  const psDir = await makeTempDir("ps");
  let sk: Safekeeper | undefined;
  let ps: Pageserver | undefined;
  let client: PagestreamClient | undefined;
  const pool = new WalRedoPool({ tenantId: "masking", dataChecksums: false });
  try {
    // Bootstrap material: the compute's cleanly stopped data directory.
    const chain = await computeWithSafekeeper(pg, ids);
    sk = chain.sk;
    const copy = chain.importDir;
    let r;

    ps = await startPs(psDir, sk.pgPort);
    r = await http(ps.httpPort, "POST", "/v1/tenant", { tenant_id: ids.tenantId });
    assert.equal(r.status, 201, r.text);
    r = await http(ps.httpPort, "POST", `/v1/tenant/${ids.tenantId}/timeline`, { new_timeline_id: ids.timelineId, import_datadir: copy });
    assert.equal(r.status, 201, r.text);
    const created = r.body as Record<string, string>;
    const importLsn = parseLsn(created.last_record_lsn!);

    // Workload on the compute (commits wait for the safekeeper).
    await pg.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, repeat('v', g % 200) FROM generate_series(1, 30000) g;", { timeoutMs: 60_000 });
    const lsnEarly = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    const earlyPage = await pg.rawPage("t", "main", 0);
    await pg.sql("UPDATE t SET v = 'updated' WHERE id % 3 = 0; DELETE FROM t WHERE id % 11 = 0; VACUUM t;", { timeoutMs: 60_000 });
    for (let i = 0; i < 30; i++) await pg.sql(`INSERT INTO t VALUES (${100000 + i}, 'single ${i}')`);
    await pg.checkpoint();
    const endLsn = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    const tl = `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`;
    const t0 = Date.now();
    await waitFor("the pageserver to ingest up to the compute's flush LSN", async () => parseLsn(((await http(ps!.httpPort, "GET", tl)).body as Record<string, string>).last_record_lsn!) >= endLsn, 60_000, 100);
    console.log(`ingested ${formatLsn(importLsn)}..${formatLsn(endLsn)} (${endLsn - importLsn} bytes of WAL); caught up ${Date.now() - t0} ms after the workload`);

    // Page service.
    const dbOid = Number(await pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'"));
    client = await PagestreamClient.connect({ host: "127.0.0.1", port: ps.pgPort, user: "postgres", tenantId: ids.tenantId, timelineId: ids.timelineId });
    const rels: Array<{ name: string; rmid: number }> = [{ name: "t", rmid: 10 }, { name: "t_pkey", rmid: 11 }];
    let pages = 0;
    for (const { name, rmid } of rels) {
      const relNumber = Number(await pg.sql(`SELECT pg_relation_filenode('${name}')`));
      const rel = { spcOid: 1663, dbOid, relNumber, fork: 0 };
      const file = await readFile(await pg.relationFilePath(name));
      assert.equal(await client.exists(rel, endLsn), true);
      assert.equal(await client.nblocks(rel, endLsn), file.length / 8192, `${name} size`);
      // Pipelined: all blocks requested at once.
      const got = await Promise.all(Array.from({ length: file.length / 8192 }, (_, b) => client!.getPage(rel, b, endLsn)));
      for (let b = 0; b < got.length; b++) {
        const v = await comparePages(pool, rmid, 0, b, got[b]!, file.subarray(b * 8192, (b + 1) * 8192));
        assert.notEqual(v, "different", `${name} block ${b}`);
        pages++;
      }
      assert.equal(await client.exists(rel, importLsn), false, `${name} did not exist at the import LSN`);
    }
    // Time travel through the page service: block 0 of t as it was before the update.
    const tRel = { spcOid: 1663, dbOid, relNumber: Number(await pg.sql("SELECT pg_relation_filenode('t')")), fork: 0 };
    assert.notEqual(await comparePages(pool, 10, 0, 0, await client.getPage(tRel, 0, lsnEarly), earlyPage), "different", "page at an earlier LSN");
    // clog: the pages of segment 0 equal pg_xact/0000 (after the checkpoint) for the xids in use.
    const clog = await client.slruSegment(SlruKind.Clog, 0, endLsn);
    const pgXact = await readFile(join(pg.dataDir, "pg_xact", "0000"));
    const nextXid = Number(await pg.sql("SELECT txid_current()"));
    const usedBytes = Math.floor(nextXid / 4);
    assert.ok(clog.length >= usedBytes);
    assert.deepEqual(Buffer.from(clog.subarray(0, usedBytes)), pgXact.subarray(0, usedBytes), "clog status of every xid so far");
    const dbsize = await client.dbSize(dbOid, endLsn);
    assert.ok(dbsize > BigInt(pages * 8192), `dbsize ${dbsize}`);
    // Errors answer one request; the stream goes on.
    await assert.rejects(client.nblocks({ ...tRel, relNumber: 999999 }, endLsn), (e: unknown) => e instanceof PagestreamError && e.code === "not_found");
    assert.equal((await client.getPage(tRel, 0, endLsn)).length, 8192);
    console.log(`page service: ${pages} pages equal the compute's files; clog ${usedBytes} bytes equal; dbsize ${dbsize}`);

    // HTTP: detail, checkpoint, compact, branch at the early LSN.
    r = await http(ps.httpPort, "PUT", `${tl}/checkpoint`);
    assert.equal(r.status, 200, r.text);
    const detail = r.body as { disk_consistent_lsn: string; layers: { delta: number; bytes: number }; wal_receiver: { state: string } };
    assert.ok(parseLsn(detail.disk_consistent_lsn) >= endLsn);
    assert.ok(detail.layers.delta >= 2, JSON.stringify(detail.layers));
    assert.equal(detail.wal_receiver.state, "streaming");
    r = await http(ps.httpPort, "PUT", `${tl}/compact`, { force: true });
    assert.equal(r.status, 200, r.text);
    const compacted = r.body as { level0: { inputs: number; outputs: number }; images: { layers: number } };
    assert.ok(compacted.images.layers >= 1 && compacted.level0.inputs >= 2 && compacted.level0.outputs >= 1, r.text);
    r = await http(ps.httpPort, "POST", `/v1/tenant/${ids.tenantId}/timeline`, { ancestor_timeline_id: ids.timelineId, ancestor_start_lsn: formatLsn(lsnEarly) });
    assert.equal(r.status, 201, r.text);
    const branch = (r.body as { timeline_id: string }).timeline_id;
    const bclient = await PagestreamClient.connect({ host: "127.0.0.1", port: ps.pgPort, user: "postgres", tenantId: ids.tenantId, timelineId: branch as never });
    assert.notEqual(await comparePages(pool, 10, 0, 0, await bclient.getPage(tRel, 0, lsnEarly), earlyPage), "different", "branch serves the ancestor's page");
    await bclient.close();
    r = await http(ps.httpPort, "GET", `/v1/tenant/${ids.tenantId}/timeline`);
    assert.equal((r.body as unknown[]).length, 2);
    r = await http(ps.httpPort, "DELETE", `${tl}`);
    assert.equal(r.status, 400, "a timeline with a child cannot be deleted");
    r = await http(ps.httpPort, "GET", "/v1/tenant/00000000000000000000000000000000");
    assert.equal(r.status, 404);
    r = await http(ps.httpPort, "GET", "/metrics");
    assert.match(r.text, /strata_pageserver_getpage_seconds_count\{op="getpage"\} [1-9]/);
    assert.match(r.text, /strata_pageserver_ingest_wal_bytes_total [1-9]/);
    assert.match(r.text, /strata_pageserver_layers\{tenant_id="[0-9a-f]+",timeline_id="[0-9a-f]+",kind="delta"\} [1-9]/);
    assert.match(r.text, /strata_pageserver_page_cache_hit_ratio /);

    // Feedback reached the safekeeper.
    await waitFor("pageserver feedback at the safekeeper", async () => {
      const s = (await http(sk!.httpPort, "GET", `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`)).body as { pageserver_feedback?: { disk_consistent_lsn: string } | null };
      return s.pageserver_feedback != null && parseLsn(s.pageserver_feedback.disk_consistent_lsn) >= endLsn;
    }, 10_000, 100);

    // Restart: WAL written while the pageserver is down is ingested after it comes back.
    await client.close();
    client = undefined;
    await ps.stop();
    await pg.sql("INSERT INTO t SELECT g, 'while down' FROM generate_series(200000, 205000) g", { timeoutMs: 60_000 });
    const afterDown = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    ps = await startPs(psDir, sk.pgPort);
    await waitFor("the restarted pageserver to catch up", async () => parseLsn(((await http(ps!.httpPort, "GET", tl)).body as Record<string, string>).last_record_lsn!) >= afterDown, 30_000, 100);
    client = await PagestreamClient.connect({ host: "127.0.0.1", port: ps.pgPort, user: "postgres", tenantId: ids.tenantId, timelineId: ids.timelineId });
    await pg.checkpoint();
    const file = await readFile(await pg.relationFilePath("t"));
    const n = await client.nblocks(tRel, afterDown);
    assert.equal(n, file.length / 8192);
    const last = await client.getPage(tRel, n - 1, afterDown);
    assert.notEqual(await comparePages(pool, 10, 0, n - 1, last, file.subarray((n - 1) * 8192, n * 8192)), "different");
    // A read above what was ingested waits (bounded) and then fails for that request only.
    const future = (afterDown + 0x100000n) as Lsn;
    const t1 = Date.now();
    await assert.rejects(
      (async () => {
        r = await http(ps!.httpPort, "PATCH", `/v1/tenant/${ids.tenantId}/config`, { waitLsnTimeoutMs: 300 });
        assert.equal(r.status, 200, r.text);
        await client!.getPage(tRel, 0, future);
      })(),
      (e: unknown) => e instanceof PagestreamError && e.code === "timeout",
    );
    assert.ok(Date.now() - t1 < 5000);
    assert.equal((await client.getPage(tRel, 0, afterDown)).length, 8192);
  } finally {
    await client?.close();
    await ps?.stop().catch(() => undefined);
    await sk?.stop().catch(() => undefined);
    await pool.close();
    await pg.destroy();
    await rm(psDir, { recursive: true, force: true });
  }
});
