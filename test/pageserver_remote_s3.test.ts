/**
 * Issue 7, acceptance 1 (pageserver level) on S3 (s3rver), plus eviction
 * (acceptance 5): compute -> safekeeper -> pageserver with
 * `remoteStorage = s3://…` running pgbench. Pages of the pgbench tables are
 * noted at the end LSN and at older LSNs (after init, mid-run), on the main
 * timeline and on a branch. Then the pageserver stops, its whole local
 * directory is deleted, an empty one starts and attaches the tenant with
 * generation 2: every noted page is byte-identical, served from layers
 * fetched on demand. Then every layer is evicted and the pages read again
 * (downloads counted in /metrics). WAL written after the attach is ingested
 * (the safekeeper kept it: it only removes WAL below remote_consistent_lsn).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { formatLsn, parseLsn } from "../src/lib/lsn.js";
import type { Pageserver } from "../src/pageserver/pageserver.js";
import { PagestreamClient } from "../src/pageserver/pagestream.js";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";
import { startPostgres } from "./harness/pg_server.js";
import { S3RVER_CREDENTIALS, startS3rver, type S3rverServer } from "./harness/s3rver.js";
import { makeTempDir } from "./harness/tools.js";
import { http, newIds, waitFor } from "./safekeeper_helpers.js";
import { metricValue, snapshotPages, startRemotePs, timelineState, waitRemoteConsistent, waitTenantActive, type RelRef } from "./pageserver_remote_support.js";
import { computeWithSafekeeper } from "./pageserver_chain.js";

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = "true";

test("S3: pgbench, delete the pageserver's local directory, attach with generation 2: every noted page identical; evict all and read again", { timeout: 300_000 }, async () => {
  const pg = await startPostgres({ synchronousStandbyNames: "sk_1", settings: { autovacuum: false, checkpoint_timeout: "1h", max_wal_size: "1GB" } });
  const ids = newIds();
  const psDir = await makeTempDir("ps");
  let s3: S3rverServer | undefined;
  let sk: Safekeeper | undefined;
  let ps: Pageserver | undefined;
  const clients: PagestreamClient[] = [];
  try {
    s3 = await startS3rver({ buckets: ["strata-ps"] });
    process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
    const url = `s3://strata-ps/ps-test?endpoint=${encodeURIComponent(s3.endpoint)}&region=us-east-1&force_path_style=true`;

    const chain = await computeWithSafekeeper(pg, ids);
    sk = chain.sk;
    const copy = chain.importDir;
    ps = await startRemotePs(psDir, sk.pgPort, url);
    let r = await http(ps.httpPort, "POST", "/v1/tenant", { tenant_id: ids.tenantId, generation: 1 });
    assert.equal(r.status, 201, r.text);
    assert.equal((r.body as { generation: number }).generation, 1);
    r = await http(ps.httpPort, "POST", `/v1/tenant/${ids.tenantId}/timeline`, { new_timeline_id: ids.timelineId, import_datadir: copy });
    assert.equal(r.status, 201, r.text);

    await pg.pgbench(["-i", "-s", "1", "-q"], { timeoutMs: 120_000 });
    const lsnInit = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    await pg.pgbench(["-c", "2", "-t", "150", "-n"], { timeoutMs: 120_000 });
    const lsnMid = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    // A branch at the init LSN: its history lives in the ancestor's layers.
    r = await http(ps.httpPort, "POST", `/v1/tenant/${ids.tenantId}/timeline`, { ancestor_timeline_id: ids.timelineId, ancestor_start_lsn: formatLsn(lsnInit) });
    assert.equal(r.status, 201, r.text);
    const branchId = (r.body as { timeline_id: string }).timeline_id;
    await pg.pgbench(["-c", "2", "-t", "150", "-n"], { timeoutMs: 120_000 });
    await pg.checkpoint();
    const lsnEnd = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    const tlPath = `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`;
    await waitFor("ingest to reach the end LSN", async () => parseLsn((await timelineState(ps!.httpPort, ids.tenantId, ids.timelineId)).last_record_lsn) >= lsnEnd, 90_000, 100);
    r = await http(ps.httpPort, "PUT", `${tlPath}/checkpoint`);
    assert.equal(r.status, 200, r.text);
    const t0 = Date.now();
    await waitRemoteConsistent(ps.httpPort, ids.tenantId, ids.timelineId, lsnEnd);
    const before = await timelineState(ps.httpPort, ids.tenantId, ids.timelineId);
    console.log(`uploaded: remote_consistent_lsn ${before.remote_consistent_lsn} (${Date.now() - t0} ms after the checkpoint); ${JSON.stringify(before.remote)}; layers ${JSON.stringify(before.layers)}`);
    // The safekeeper hears the remote-consistent LSN in feedback.
    await waitFor("the safekeeper to learn the remote-consistent LSN", async () => {
      const s = (await http(sk!.httpPort, "GET", `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`)).text;
      const m = /"remote_consistent_lsn":"([0-9A-F]+\/[0-9A-F]+)"/i.exec(s);
      return m !== null && parseLsn(m[1]!) >= lsnEnd;
    }, 30_000, 200).catch((e: Error) => console.log(`(safekeeper JSON check skipped: ${e.message})`));

    // Note pages: main at init / mid / end, branch at init.
    const dbOid = Number(await pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'"));
    const rels: RelRef[] = [];
    for (const name of ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_accounts_pkey"]) {
      rels.push({ name, rel: { spcOid: 1663, dbOid, relNumber: Number(await pg.sql(`SELECT pg_relation_filenode('${name}')`)), fork: 0 } });
    }
    const connect = async (port: number, timelineId: string) => {
      const c = await PagestreamClient.connect({ host: "127.0.0.1", port, user: "postgres", tenantId: ids.tenantId, timelineId: timelineId as never });
      clients.push(c);
      return c;
    };
    const noted = async (port: number) => {
      const main = await connect(port, ids.timelineId);
      const m = await snapshotPages(main, rels, lsnEnd);
      await snapshotPages(main, rels, lsnMid, 3, m);
      await snapshotPages(main, rels, lsnInit, 3, m);
      const branch = await connect(port, branchId);
      const b = await snapshotPages(branch, rels, lsnInit, 3);
      for (const [k, v] of b) m.set(`branch/${k}`, v);
      return m;
    };
    const expected = await noted(ps.pgPort);
    const pageCount = [...expected.keys()].filter((k) => !k.endsWith("nblocks")).length;

    // Stop, delete the whole local directory, start empty, attach with generation 2.
    for (const c of clients.splice(0)) await c.close();
    await ps.stop();
    ps = undefined;
    await rm(psDir, { recursive: true, force: true });
    ps = await startRemotePs(psDir, sk.pgPort, url);
    const ta = Date.now();
    r = await http(ps.httpPort, "POST", `/v1/tenant/${ids.tenantId}/attach`, { generation: 2 });
    assert.equal(r.status, 202, r.text);
    assert.ok(["attaching", "active"].includes((r.body as { state: string }).state), r.text);
    await waitTenantActive(ps.httpPort, ids.tenantId);
    const attachMs = Date.now() - ta;
    const attached = await timelineState(ps.httpPort, ids.tenantId, ids.timelineId);
    assert.equal(attached.remote?.generation, 2);
    // Attach itself downloads only the indexes; ingest of new WAL and reads fetch layers on demand from here on.
    assert.ok(attached.remote !== null && attached.remote.resident_layers + attached.remote.remote_only_layers === attached.layers.delta + attached.layers.image);
    assert.ok(parseLsn(attached.disk_consistent_lsn) >= lsnEnd);
    const localBytesAfterAttach = await dirBytes(psDir);
    const tr = Date.now();
    const got = await noted(ps.pgPort);
    const readMs = Date.now() - tr;
    assert.equal(got.size, expected.size);
    let same = 0;
    for (const [k, v] of expected) {
      assert.deepEqual(got.get(k), v, `page ${k} after attach`);
      same++;
    }
    const downloads1 = await metricValue(ps.httpPort, "strata_pageserver_remote_downloads_total");
    console.log(`attach (generation 2) active after ${attachMs} ms with ${localBytesAfterAttach} local bytes (${attached.remote?.resident_layers} of ${attached.layers.delta + attached.layers.image} layers resident); ${pageCount} noted pages (${same} entries) byte-identical, read in ${readMs} ms with ${downloads1} on-demand downloads`);

    // Evict every layer, read every noted page again.
    const ev = await http(ps.httpPort, "PUT", `${tlPath}/evict_layers`, {});
    assert.equal(ev.status, 200, ev.text);
    const evicted = ev.body as { evicted: number; bytes: number };
    const evb = await http(ps.httpPort, "PUT", `/v1/tenant/${ids.tenantId}/timeline/${branchId}/evict_layers`, {});
    assert.equal(evb.status, 200, evb.text);
    assert.ok(evicted.evicted > 0, ev.text);
    assert.equal((await timelineState(ps.httpPort, ids.tenantId, ids.timelineId)).remote?.resident_layers, 0);
    for (const c of clients.splice(0)) await c.close();
    const again = await noted(ps.pgPort);
    for (const [k, v] of expected) assert.deepEqual(again.get(k), v, `page ${k} after eviction`);
    const downloads2 = await metricValue(ps.httpPort, "strata_pageserver_remote_downloads_total");
    assert.ok(downloads2 > downloads1, `downloads ${downloads1} -> ${downloads2}`);
    assert.ok((await metricValue(ps.httpPort, "strata_pageserver_evictions_total")) >= evicted.evicted);
    console.log(`evicted ${evicted.evicted} layers (${evicted.bytes} bytes); all pages identical again; downloads ${downloads1} -> ${downloads2}`);

    // Ingest continues on the attached pageserver from the index's LSN.
    await pg.sql("CREATE TABLE after_attach AS SELECT g FROM generate_series(1, 1000) g");
    const lsnAfter = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    await waitFor("the attached pageserver to ingest new WAL", async () => parseLsn((await timelineState(ps!.httpPort, ids.tenantId, ids.timelineId)).last_record_lsn) >= lsnAfter, 60_000, 100);
    r = await http(ps.httpPort, "PUT", `${tlPath}/checkpoint`);
    assert.equal(r.status, 200, r.text);
    await waitRemoteConsistent(ps.httpPort, ids.tenantId, ids.timelineId, lsnAfter);
    const objects = await readdir(join(s3.directory, "strata-ps")).catch(() => [] as string[]);
    console.log(`ingest resumed after attach up to ${formatLsn(lsnAfter)}; generation 2 index durable (${objects.length} bucket entries)`);
  } finally {
    for (const c of clients) await c.close().catch(() => undefined);
    await ps?.stop().catch(() => undefined);
    await sk?.stop().catch(() => undefined);
    await pg.destroy();
    await s3?.stop();
    await rm(psDir, { recursive: true, force: true });
  }
});

async function dirBytes(dir: string): Promise<number> {
  let n = 0;
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) n += (await stat(join(e.parentPath ?? (e as unknown as { path: string }).path, e.name))).size;
  }
  return n;
}
