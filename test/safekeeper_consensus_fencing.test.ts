/**
 * Multi-safekeeper acceptance 3 (issue 4), fencing, against real PostgreSQL
 * 15: compute A runs in term 1 on three safekeepers and is stopped cleanly;
 * B is a copy of A's data directory; A is started again (still registered
 * for term 1), then the endpoint-start protocol elects term 2 for B. A's
 * next commit hangs and its WAL never reaches the safekeepers; B commits in
 * term 2 and the safekeepers' WAL is byte-identical to B's pg_wal.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { startPostgres, PgServer } from "./harness/pg_server.js";
import { freePort } from "./harness/ports.js";
import { pgWaldump } from "./harness/waldump.js";
import { makeTempDir, removeTempDir, runProgram, runToolOk } from "./harness/tools.js";
import { formatLsn, lsn, parseLsn } from "../src/lib/lsn.js";
import { term } from "../src/safekeeper/term_history.js";
import { compareWal, newIds, timelineDir, timelineLsn, waitFor } from "./safekeeper_helpers.js";
import { bootstrap, elect, register, sleep, startCluster, STALL_CHECK_MS, stopCluster } from "./safekeeper_consensus_cluster.js";

test("acceptance 3: a compute of an older term is fenced; the new term's compute owns the WAL", { timeout: 180_000 }, async () => {
  const a = await startPostgres({ synchronousStandbyNames: "ANY 2 (sk_1, sk_2, sk_3)", settings: { wal_keep_size: "1GB", max_wal_size: "1GB", autovacuum: "off" } });
  const sks = await startCluster();
  const ids = newIds();
  const bBase = await makeTempDir("pg-b");
  let b: PgServer | undefined;
  let aHung: Promise<unknown> | undefined;
  try {
    const { startLsn } = await bootstrap(a, sks, ids);
    await a.pgbench(["-i", "-s", "1", "-q"], { timeoutMs: 60_000 });
    await a.pgbench(["-c", "2", "-T", "3"], { timeoutMs: 60_000 });
    // A stops cleanly: its walsenders wait for the safekeepers to confirm the shutdown checkpoint.
    await a.stop("fast");
    const bData = join(bBase, "data");
    await runProgram("/bin/cp", ["-a", a.dataDir, bData]);
    b = new PgServer(bBase, bData, await freePort());
    const ckpt = parseLsn(/Latest checkpoint location:\s+(\S+)/.exec(await runToolOk("pg_controldata", ["-D", bData], { asPgUser: true }))![1]!);
    const ckptRecord = (await pgWaldump({ path: join(bData, "pg_wal"), start: ckpt })).find((r) => r.lsn === ckpt);
    assert.ok(ckptRecord !== undefined && ckptRecord.type === "CHECKPOINT_SHUTDOWN", "B's last record is A's shutdown checkpoint");
    const copyEnd = lsn(ckpt + BigInt(ckptRecord.totalLen));

    // A comes back, still registered for term 1 (its safekeepers reconnect); B gets term 2.
    await a.start();
    const second = await elect(sks, ids);
    assert.equal(second.term, term(2));
    assert.equal(second.startLsn, copyEnd, `term 2 starts where A's (and B's) WAL ends: ${formatLsn(second.startLsn)} vs ${formatLsn(copyEnd)}`);

    // Fencing: A's next commit never gets its acknowledgements and its WAL never reaches the safekeepers.
    let aDone = false;
    aHung = a.sql("CREATE TABLE written_by_fenced_a AS SELECT generate_series(1, 1000) AS x", { timeoutMs: 120_000 }).finally(() => (aDone = true));
    aHung.catch(() => undefined);
    await sleep(STALL_CHECK_MS);
    assert.equal(aDone, false, "the fenced compute's commit returned");
    const aLsn = await a.currentWalLsn();
    assert.ok(aLsn > second.startLsn, "A wrote WAL after the fence");
    for (const sk of sks) {
      assert.equal(await timelineLsn(sk.httpPort, ids, "flush_lsn"), second.startLsn, `safekeeper ${sk.id} took WAL of the fenced compute`);
      assert.ok((await timelineLsn(sk.httpPort, ids, "commit_lsn")) <= second.startLsn);
    }

    // B starts from the copy and commits in term 2.
    await b.start();
    await register(b, sks, ids, 2, second.startLsn);
    await b.sql("CREATE TABLE written_by_b AS SELECT generate_series(1, 1000) AS x", { timeoutMs: 60_000 });
    await b.pgbench(["-c", "2", "-T", "3"], { timeoutMs: 60_000 });
    assert.equal(aDone, false, "the fenced compute's commit returned after B took over");
    await b.sql("CHECKPOINT");
    const endLsn = parseLsn(await b.sql("SELECT pg_current_wal_flush_lsn()"));
    for (const sk of sks) {
      await waitFor(`safekeeper ${sk.id} to reach B's ${formatLsn(endLsn)}`, async () => (await timelineLsn(sk.httpPort, ids, "flush_lsn")) >= endLsn, 60_000);
    }
    let bytes = 0;
    for (const sk of sks) bytes = await compareWal(b.walDir, timelineDir(sk.dataDir, ids), startLsn, endLsn);
    // A's WAL after the fence is not what the safekeepers hold.
    await assert.rejects(compareWal(a.walDir, timelineDir(sks[0]!.dataDir, ids), second.startLsn, lsn(second.startLsn + 8192n)), /WAL differs/);
    const records = await pgWaldump({ path: join(b.dataDir, "pg_wal"), start: second.startLsn, end: endLsn });
    assert.ok(records.length > 0);
    console.log(`fenced compute's commit hung; safekeepers hold B's WAL (${bytes} bytes identical to B's pg_wal, ${records.length} records of term 2)`);
  } catch (e) {
    for (const sk of sks) console.log(`--- safekeeper ${sk.id} log tail ---\n${sk.stderr.slice(-4000)}`);
    throw e;
  } finally {
    await a.stop("immediate").catch(() => undefined);
    await aHung?.catch(() => undefined);
    await stopCluster(sks);
    await a.destroy();
    if (b !== undefined) await b.destroy();
    else await removeTempDir(bBase);
  }
});

