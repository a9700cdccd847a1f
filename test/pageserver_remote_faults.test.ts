/**
 * Issue 7, acceptance 3: storage faults. The pageserver's S3 endpoint is a
 * proxy in front of s3rver that fails (503 SlowDown), resets and delays
 * requests at random (seeded). Checked:
 *   - ingest continues while uploads fail and are retried;
 *   - with storage down completely, remote_consistent_lsn stalls (while
 *     last_record_lsn moves on and the safekeeper keeps the WAL), and it
 *     resumes when storage comes back;
 *   - nothing was lost: a fresh pageserver attaching from s3rver directly
 *     (generation 2) serves byte-identical pages.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { formatLsn, parseLsn } from "../src/lib/lsn.js";
import type { Pageserver } from "../src/pageserver/pageserver.js";
import { PagestreamClient } from "../src/pageserver/pagestream.js";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";
import { startPostgres } from "./harness/pg_server.js";
import { S3RVER_CREDENTIALS, startS3rver, type S3rverServer } from "./harness/s3rver.js";
import { makeTempDir } from "./harness/tools.js";
import { http, newIds, waitFor } from "./safekeeper_helpers.js";
import { FaultyProxy, snapshotPages, startRemotePs, timelineState, waitRemoteConsistent, waitTenantActive, type RelRef } from "./pageserver_remote_support.js";
import { computeWithSafekeeper } from "./pageserver_chain.js";

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = "true";

/** How long storage stays down in the test: long enough for several retry rounds of the queue. */
const OUTAGE_MS = 4_000;

test("storage faults through a misbehaving proxy: ingest goes on, uploads retry, an outage stalls remote_consistent_lsn, nothing lost", { timeout: 300_000 }, async () => {
  const pg = await startPostgres({ synchronousStandbyNames: "sk_1", settings: { autovacuum: false, checkpoint_timeout: "1h", max_wal_size: "1GB" } });
  const ids = newIds();
  const psDir = await makeTempDir("ps");
  let s3: S3rverServer | undefined;
  let proxy: FaultyProxy | undefined;
  let sk: Safekeeper | undefined;
  let ps: Pageserver | undefined;
  const clients: PagestreamClient[] = [];
  try {
    s3 = await startS3rver({ buckets: ["strata-ps"] });
    proxy = await FaultyProxy.start(s3.endpoint, { failFraction: 0.15, resetFraction: 0.05, delayFraction: 0.2, maxDelayMs: 300, seed: 42 });
    process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
    const urlFor = (endpoint: string) => `s3://strata-ps/faults?endpoint=${encodeURIComponent(endpoint)}&region=us-east-1&force_path_style=true&timeout_ms=5000&max_attempts=3`;

    const chain = await computeWithSafekeeper(pg, ids);
    sk = chain.sk;
    const copy = chain.importDir;
    ps = await startRemotePs(psDir, sk.pgPort, urlFor(proxy.endpoint));
    assert.equal((await http(ps.httpPort, "POST", "/v1/tenant", { tenant_id: ids.tenantId, generation: 1 })).status, 201);
    const r = await http(ps.httpPort, "POST", `/v1/tenant/${ids.tenantId}/timeline`, { new_timeline_id: ids.timelineId, import_datadir: copy });
    assert.equal(r.status, 201, r.text);
    const state = () => timelineState(ps!.httpPort, ids.tenantId, ids.timelineId);

    // Phase 1: random faults.
    await pg.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, repeat('f', g % 400) FROM generate_series(1, 15000) g;", { timeoutMs: 90_000 });
    const lsn1 = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    await waitFor("ingest under storage faults", async () => parseLsn((await state()).last_record_lsn) >= lsn1, 60_000, 100);
    assert.equal((await http(ps.httpPort, "PUT", `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}/checkpoint`)).status, 200);
    await waitRemoteConsistent(ps.httpPort, ids.tenantId, ids.timelineId, lsn1, 90_000);
    const p1 = { failed: proxy.failed, reset: proxy.reset, delayed: proxy.delayed, forwarded: proxy.forwarded };
    assert.ok(p1.failed + p1.reset > 0, JSON.stringify(p1));
    console.log(`faults: proxy ${JSON.stringify(p1)}; remote_consistent_lsn reached ${formatLsn(lsn1)}; queue ${JSON.stringify((await state()).remote)}`);

    // Phase 2: storage down. Ingest goes on; remote_consistent_lsn stalls.
    proxy.down = true;
    const stalledAt = parseLsn((await state()).remote_consistent_lsn);
    await pg.sql("UPDATE t SET v = 'during outage' WHERE id % 3 = 0;", { timeoutMs: 60_000 });
    const lsn2 = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    await waitFor("ingest during the outage", async () => parseLsn((await state()).last_record_lsn) >= lsn2, 60_000, 100);
    assert.equal((await http(ps.httpPort, "PUT", `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}/checkpoint`)).status, 200);
    await new Promise((res) => setTimeout(res, OUTAGE_MS));
    const during = await state();
    assert.equal(parseLsn(during.remote_consistent_lsn), stalledAt, "remote_consistent_lsn stalls while storage is down");
    assert.ok(parseLsn(during.disk_consistent_lsn) >= lsn2, "local flushes go on");
    assert.ok((during.remote?.queue_depth ?? 0) > 0 && (during.remote?.failed_attempts ?? 0) > 0, JSON.stringify(during.remote));
    // The safekeeper was told only the stalled LSN, so it still holds the WAL above it.
    proxy.down = false;
    await waitRemoteConsistent(ps.httpPort, ids.tenantId, ids.timelineId, lsn2, 60_000);
    console.log(`outage ${OUTAGE_MS} ms: remote_consistent_lsn held at ${formatLsn(stalledAt)} with ${during.remote?.queue_depth} queued ops and ${during.remote?.failed_attempts} failed attempts; disk_consistent_lsn ${during.disk_consistent_lsn}; resumed to >= ${formatLsn(lsn2)}`);

    // Nothing lost: note pages, then a fresh pageserver attaches straight from s3rver.
    const dbOid = Number(await pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'"));
    const rels: RelRef[] = [];
    for (const name of ["t", "t_pkey"]) rels.push({ name, rel: { spcOid: 1663, dbOid, relNumber: Number(await pg.sql(`SELECT pg_relation_filenode('${name}')`)), fork: 0 } });
    const noted = async (port: number) => {
      const c = await PagestreamClient.connect({ host: "127.0.0.1", port, user: "postgres", tenantId: ids.tenantId, timelineId: ids.timelineId });
      clients.push(c);
      const m = await snapshotPages(c, rels, lsn2);
      return snapshotPages(c, rels, lsn1, 2, m);
    };
    const expected = await noted(ps.pgPort);
    for (const c of clients.splice(0)) await c.close();
    await ps.stop();
    ps = undefined;
    await rm(psDir, { recursive: true, force: true });
    ps = await startRemotePs(psDir, undefined, urlFor(s3.endpoint));
    assert.equal((await http(ps.httpPort, "POST", `/v1/tenant/${ids.tenantId}/attach`, { generation: 2 })).status, 202);
    await waitTenantActive(ps.httpPort, ids.tenantId);
    const got = await noted(ps.pgPort);
    for (const [k, v] of expected) assert.deepEqual(got.get(k), v, `page ${k}`);
    console.log(`after faults and an outage: ${expected.size} noted entries byte-identical on a fresh attach`);
  } finally {
    for (const c of clients) await c.close().catch(() => undefined);
    await ps?.stop().catch(() => undefined);
    await sk?.stop().catch(() => undefined);
    await proxy?.stop();
    await pg.destroy();
    await s3?.stop();
    await rm(psDir, { recursive: true, force: true });
  }
});
