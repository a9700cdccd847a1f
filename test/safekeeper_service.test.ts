/**
 * The safekeeper service against a real PostgreSQL 15 primary, in-process:
 * it becomes the primary's only synchronous standby (sk_1), commits wait for
 * its fsync and return, its WAL is byte-identical to the primary's pg_wal and
 * readable by pg_waldump, the HTTP API reports the LSNs, a compute of a
 * lower term is refused with 409 (fencing basics), and a restart resumes
 * streaming from the recovered flush LSN.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { startPostgres } from "./harness/pg_server.js";
import { pgWaldump } from "./harness/waldump.js";
import { removeTempDir } from "./harness/tools.js";
import { formatLsn, parseLsn, type Lsn } from "../src/lib/lsn.js";
import { compareWal, copySegmentsForWaldump, http, newIds, startInProcess, timelineDir, timelineLsn, waitFor } from "./safekeeper_helpers.js";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";

// Both commit loops: the native receiver process (the default) and the one in the safekeeper's own process.
for (const walReceiver of ["native", "node"] as const) {
  test(`safekeeper as the only synchronous standby (${walReceiver} commit loop): durable commits, identical WAL, HTTP state, fencing`, { timeout: 90_000 }, async () => {
    const pg = await startPostgres({ synchronousStandbyNames: "sk_1" });
    let sk: Safekeeper | undefined = await startInProcess({ id: 1, walReceiver });
    assert.equal(sk.nativeReceiverBin !== undefined, walReceiver === "native", "the commit loop asked for");
    const dataDir = sk.config.dataDir;
    const ids = newIds();
    const base = `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`;
    try {
      // Registration creates the timeline from the compute's identity.
      let r = await http(sk.httpPort, "PUT", `${base}/compute`, { connstr: pg.connString(), term: 1 });
      assert.equal(r.status, 201, r.text);
      const st = r.body as Record<string, unknown>;
      const sysid = await pg.sql("SELECT system_identifier FROM pg_control_system()");
      assert.equal(st.system_id, sysid);
      assert.equal(st.wal_seg_size, 16 * 1024 * 1024);
      const startLsn = parseLsn(st.timeline_start_lsn as string);
      assert.equal(startLsn % BigInt(16 * 1024 * 1024), 0n, "an implicitly created timeline starts at a segment start");
      assert.match((st.compute as { connstr: string }).connstr, /host=127\.0\.0\.1/);

      // Commits return once sk_1 has fsynced them.
      const t0 = Date.now();
      await pg.sql("CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g;", { timeoutMs: 30_000 });
      for (let i = 0; i < 20; i++) await pg.sql(`INSERT INTO t VALUES (${10000 + i}, 'c${i}')`, { timeoutMs: 30_000 });
      const syncState = await pg.sql("SELECT application_name || ' ' || sync_state FROM pg_stat_replication");
      assert.equal(syncState, "sk_1 sync");
      await pg.switchWal();
      await pg.sql("INSERT INTO t SELECT g, 'after switch' FROM generate_series(3000, 3500) g", { timeoutMs: 30_000 });
      const primaryFlush = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
      await waitFor("the safekeeper to flush up to the primary's flush LSN", async () => (await timelineLsn(sk!.httpPort, ids, "flush_lsn")) >= primaryFlush, 20_000);
      const commitLsn = await timelineLsn(sk.httpPort, ids, "commit_lsn");
      assert.ok(commitLsn >= primaryFlush - 8n && commitLsn <= primaryFlush, `solo commit ${formatLsn(commitLsn)} follows the flush record LSN (primary ${formatLsn(primaryFlush)})`);
      console.log(`commits through the safekeeper took ${Date.now() - t0} ms`);

      // Byte-identical to the primary's pg_wal, and pg_waldump reads it.
      const dir = timelineDir(dataDir, ids);
      const n = await compareWal(pg.walDir, dir, startLsn, primaryFlush);
      assert.ok(n > 16 * 1024 * 1024, `compared ${n} bytes across a segment switch`);
      const copy = await copySegmentsForWaldump(dir);
      try {
        const recs = await pgWaldump({ path: copy, start: startLsn, end: primaryFlush });
        const commits = recs.filter((x) => x.rmgr === "Transaction" && x.type === "COMMIT");
        assert.ok(commits.length >= 22, `pg_waldump found ${commits.length} commits`);
        assert.ok(recs.some((x) => x.rmgr === "XLOG" && x.type === "SWITCH"));
      } finally {
        await removeTempDir(copy);
      }

      // HTTP state and metrics.
      r = await http(sk.httpPort, "GET", base);
      assert.equal(r.status, 200);
      const s2 = r.body as Record<string, unknown>;
      assert.equal(s2.term, 1);
      assert.deepEqual(s2.term_history, [{ term: 1, lsn: formatLsn(startLsn) }]);
      assert.equal((s2.compute as { connected: boolean }).connected, true);
      r = await http(sk.httpPort, "GET", "/metrics");
      assert.match(r.text, /strata_safekeeper_fsyncs_total\{tenant_id="[0-9a-f]+",timeline_id="[0-9a-f]+"\} [1-9]/);
      assert.match(r.text, /strata_safekeeper_wal_flush_seconds_count [1-9]/);
      r = await http(sk.httpPort, "GET", "/v1/status");
      assert.deepEqual((r.body as { timelines: unknown[] }).timelines, [{ tenant_id: ids.tenantId, timeline_id: ids.timelineId }]);

      // Fencing basics: a compute registration with a lower term is refused.
      r = await http(sk.httpPort, "PUT", `${base}/compute`, { connstr: pg.connString(), term: 3 });
      assert.equal(r.status, 200, r.text);
      r = await http(sk.httpPort, "PUT", `${base}/compute`, { connstr: "host=127.0.0.1 port=1 user=x", term: 2 });
      assert.equal(r.status, 409, r.text);
      assert.equal((r.body as { code: string }).code, "stale_term");
      assert.equal((r.body as { current_term: number }).current_term, 3);
      // Same term, another compute: refused too (one compute per term).
      r = await http(sk.httpPort, "PUT", `${base}/compute`, { connstr: "host=127.0.0.1 port=1 user=x", term: 3 });
      assert.equal(r.status, 409, r.text);
      // The term-3 registration of the same compute resumes streaming: a new term starting at the flush LSN.
      await pg.sql("INSERT INTO t VALUES (99999, 'term 3')", { timeoutMs: 30_000 });
      r = await http(sk.httpPort, "GET", base);
      const hist = (r.body as { term_history: { term: number; lsn: string }[] }).term_history;
      assert.equal(hist.length, 2);
      assert.equal(hist[1]!.term, 3);

      // Restart: the safekeeper recovers, reconnects on its own, and commits flow again.
      await sk.stop();
      sk = undefined;
      const stalled = pg.sql("INSERT INTO t VALUES (100000, 'while down')", { timeoutMs: 60_000 });
      let done = false;
      void stalled.then(() => (done = true), () => (done = true));
      await new Promise((res) => setTimeout(res, 1500));
      assert.equal(done, false, "a commit does not return while the only synchronous standby is down");
      sk = await startInProcess({ id: 1, dataDir, walReceiver });
      await stalled;
      const count = await pg.sql("SELECT count(*) FROM t");
      assert.equal(count, String(2000 + 20 + 501 + 2));
      const endLsn: Lsn = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
      await waitFor("flush after restart", async () => (await timelineLsn(sk!.httpPort, ids, "flush_lsn")) >= endLsn, 20_000);
      await compareWal(pg.walDir, timelineDir(dataDir, ids), startLsn, endLsn);
    } finally {
      await sk?.stop();
      await pg.destroy();
      await removeTempDir(dataDir);
    }
  });
}
