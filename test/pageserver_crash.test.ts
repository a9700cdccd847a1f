/**
 * `kill -9` of the pageserver process during ingest (issue 5, acceptance 3):
 * `strata pageserver` runs as a child process streaming from an in-process
 * safekeeper while the compute runs pgbench -i; it is SIGKILLed once it has
 * flushed some layers, restarted, resumes from its disk_consistent_lsn
 * (the restart's first last_record_lsn), catches up with the compute, and
 * then every page of the pgbench tables read over the page service equals
 * the compute's files after CHECKPOINT (masked as wal_consistency_checking
 * does). A SIGTERM afterwards is a clean stop (exit 0).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile, rm } from "node:fs/promises";
import { formatLsn, parseLsn } from "../src/lib/lsn.js";
import { PagestreamClient } from "../src/pageserver/pagestream.js";
import { WalRedoPool } from "../src/walredo/pool.js";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";
import { startPostgres } from "./harness/pg_server.js";
import { freePort } from "./harness/ports.js";
import { makeTempDir } from "./harness/tools.js";
import { http, newIds, waitFor } from "./safekeeper_helpers.js";
import { comparePages } from "./pageserver_support.js";
import { computeWithSafekeeper, startPageserverChild, type PageserverChild } from "./pageserver_chain.js";

test("kill -9 during ingest: restart resumes from disk_consistent_lsn and every pgbench page matches", { timeout: 170_000 }, async () => {
  const pg = await startPostgres({ synchronousStandbyNames: "sk_1", settings: { autovacuum: false, checkpoint_timeout: "1h", max_wal_size: "1GB" } });
  const ids = newIds();
  const psDir = await makeTempDir("ps");
  const [pgPort, httpPort] = [await freePort(), await freePort()];
  let sk: Safekeeper | undefined;
  let child: PageserverChild | undefined;
  const pool = new WalRedoPool({ tenantId: "masking", dataChecksums: false });
  try {
    const chain = await computeWithSafekeeper(pg, ids);
    sk = chain.sk;
    const copy = chain.importDir;
    child = await startPageserverChild({ dataDir: psDir, pgPort, httpPort, skPort: sk.pgPort });
    assert.equal((await http(httpPort, "POST", "/v1/tenant", { tenant_id: ids.tenantId })).status, 201);
    const r = await http(httpPort, "POST", `/v1/tenant/${ids.tenantId}/timeline`, { new_timeline_id: ids.timelineId, import_datadir: copy });
    assert.equal(r.status, 201, r.text);
    const importLsn = parseLsn((r.body as { last_record_lsn: string }).last_record_lsn);
    const tl = `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`;
    const state = async (port: number) => (await http(port, "GET", tl)).body as { last_record_lsn: string; disk_consistent_lsn: string };

    // Kill once a few layers are flushed while pgbench -i is still writing.
    const bench = pg.pgbench(["-i", "-s", "1", "-q"]);
    await waitFor("a few flushed layers", async () => parseLsn((await state(httpPort)).disk_consistent_lsn) > importLsn + 3n * 1024n * 1024n, 60_000, 50);
    const before = await state(httpPort);
    child.proc.kill("SIGKILL");
    assert.equal(await child.exited, null);
    console.log(`killed at last_record_lsn ${before.last_record_lsn}, disk_consistent_lsn ${before.disk_consistent_lsn}`);
    await bench;

    child = await startPageserverChild({ dataDir: psDir, pgPort, httpPort, skPort: sk.pgPort });
    const after = await state(httpPort);
    assert.ok(parseLsn(after.disk_consistent_lsn) >= parseLsn(before.disk_consistent_lsn), "no flushed layer lost");
    await pg.checkpoint();
    const end = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    await waitFor("the restarted pageserver to catch up", async () => parseLsn((await state(httpPort)).last_record_lsn) >= end, 90_000, 100);
    // The restarted receiver streamed from the restart's last_record_lsn = its disk_consistent_lsn.
    const streamLine = child.stderr().split("\n").find((l) => l.includes('"msg":"streaming WAL"'));
    assert.ok(streamLine !== undefined, "the restarted pageserver logged where it resumed");
    const resumedAt = parseLsn((JSON.parse(streamLine) as { start: string }).start);
    assert.ok(resumedAt >= parseLsn(before.disk_consistent_lsn) && resumedAt < end, `resumed at ${formatLsn(resumedAt)}`);
    console.log(`restarted: resumed streaming at ${formatLsn(resumedAt)} (disk_consistent_lsn before the kill ${before.disk_consistent_lsn}); caught up to ${formatLsn(end)}`);

    const client = await PagestreamClient.connect({ host: "127.0.0.1", port: pgPort, user: "postgres", tenantId: ids.tenantId, timelineId: ids.timelineId });
    const dbOid = Number(await pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'"));
    let pages = 0;
    for (const [name, rmid] of [["pgbench_accounts", 10], ["pgbench_branches", 10], ["pgbench_tellers", 10], ["pgbench_accounts_pkey", 11]] as const) {
      const rel = { spcOid: 1663, dbOid, relNumber: Number(await pg.sql(`SELECT pg_relation_filenode('${name}')`)), fork: 0 };
      const file = await readFile(await pg.relationFilePath(name));
      assert.equal(await client.nblocks(rel, end), file.length / 8192, name);
      const got = await Promise.all(Array.from({ length: file.length / 8192 }, (_, b) => client.getPage(rel, b, end)));
      for (let b = 0; b < got.length; b++) {
        assert.notEqual(await comparePages(pool, rmid, 0, b, got[b]!, file.subarray(b * 8192, (b + 1) * 8192)), "different", `${name} block ${b}`);
        pages++;
      }
    }
    await client.close();
    console.log(`${pages} pgbench pages equal the compute's files after the crash`);
    child.proc.kill("SIGTERM");
    assert.equal(await child.exited, 0, child.stderr().slice(-2000));
    child = undefined;
  } finally {
    if (child !== undefined) {
      child.proc.kill("SIGKILL");
      await child.exited;
    }
    await sk?.stop().catch(() => undefined);
    await pool.close();
    await pg.destroy();
    await rm(psDir, { recursive: true, force: true });
  }
});
