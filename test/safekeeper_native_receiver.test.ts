/**
 * The native commit loop (walreceiver/strata-wal-receiver, driven by
 * wal_acceptor.ts and Timeline's external writer) against a real
 * PostgreSQL 15 primary: what it must keep of the safekeeper's contract.
 *
 * 1. Under a bulk load that crosses segment ends, with the safekeeper's
 *    critical sections suspending and resuming the receiver all the while
 *    (flushes, idempotent re-registrations, status reads), the WAL is
 *    byte-identical to the primary's pg_wal and every commit is durable.
 * 2. The receiver process killed (-9) mid-load: commits stall only briefly,
 *    the acceptor reconnects with a new receiver, nothing acknowledged is
 *    lost and the WAL is byte-identical again.
 * 3. Fencing: once a registration with a higher term returns, the receiver
 *    is gone and the old compute's commits are no longer acknowledged.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { startPostgres, type PgServer } from "./harness/pg_server.js";
import { removeTempDir } from "./harness/tools.js";
import { formatLsn, parseLsn, type Lsn } from "../src/lib/lsn.js";
import { compareWal, http, newIds, startInProcess, timelineDir, timelineLsn, waitFor, type TimelineIds } from "./safekeeper_helpers.js";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";

/** Pids of this process's strata-wal-receiver children (the in-process safekeeper's receivers). */
async function receiverPids(): Promise<number[]> {
  const out: number[] = [];
  for (const tid of await readdir(`/proc/${process.pid}/task`)) {
    const kids = (await readFile(`/proc/${process.pid}/task/${tid}/children`, "utf8").catch(() => "")).trim();
    for (const k of kids === "" ? [] : kids.split(" ")) {
      const cmd = await readFile(`/proc/${k}/cmdline`, "utf8").catch(() => "");
      if (cmd.includes("strata-wal-receiver")) out.push(Number(k));
    }
  }
  return out;
}

async function primaryFlush(pg: { sql(q: string): Promise<string> }): Promise<Lsn> {
  return parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
}

/**
 * A primary with sk_1 as its synchronous standby and an in-process
 * safekeeper (native commit loop) registered for it, its receiver running.
 */
async function setUp(table: string): Promise<{ pg: PgServer; sk: Safekeeper; ids: TimelineIds; base: string; startLsn: Lsn }> {
  const pg = await startPostgres({ synchronousStandbyNames: "sk_1", settings: { wal_keep_size: "256MB" } });
  let sk: Safekeeper | undefined;
  try {
    sk = await startInProcess({ id: 1, walReceiver: "native" });
    const ids = newIds();
    const base = `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`;
    assert.ok(sk.nativeReceiverBin !== undefined, "the native receiver is built (scripts/setup)");
    const r = await http(sk.httpPort, "PUT", `${base}/compute`, { connstr: pg.connString(), term: 1 });
    assert.equal(r.status, 201, r.text);
    const startLsn = parseLsn((r.body as { timeline_start_lsn: string }).timeline_start_lsn);
    await pg.sql(table, { timeoutMs: 30_000 });
    await waitFor("a receiver process", async () => (await receiverPids()).length === 1, 20_000);
    return { pg, sk, ids, base, startLsn };
  } catch (e) {
    // A failed set-up stops what it started: the tests' own clean-up never runs.
    if (sk !== undefined) {
      await sk.stop();
      await removeTempDir(sk.config.dataDir);
    }
    await pg.destroy();
    throw e;
  }
}

test("native receiver: bulk load across segments with the receiver suspended and resumed throughout; WAL identical", { timeout: 120_000 }, async () => {
  const { pg, sk: started, ids, base, startLsn } = await setUp("CREATE TABLE big (id int, v text)");
  let sk: Safekeeper | undefined = started;
  const dataDir = sk.config.dataDir;
  try {
    const tl = sk.findTimeline(ids.tenantId, ids.timelineId)!;

    // Critical sections that suspend and resume the receiver, as fast as they come, during the load.
    let churn = true;
    let suspensions = 0;
    const churner = (async () => {
      while (churn) {
        await tl.flush();
        const again = await http(sk!.httpPort, "PUT", `${base}/compute`, { connstr: pg.connString(), term: 1 });
        assert.equal(again.status, 200, again.text);
        await timelineLsn(sk!.httpPort, ids, "flush_lsn");
        suspensions += 2;
      }
    })();
    try {
      // ~45 MB of WAL in a few big transactions and many small ones: two segment ends at least.
      for (let i = 0; i < 4; i++) {
        await pg.sql(`INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(${i * 40000 + 1}, ${(i + 1) * 40000}) g`, { timeoutMs: 60_000 });
        for (let k = 0; k < 20; k++) await pg.sql(`INSERT INTO big VALUES (${-(i * 100 + k)}, 'small')`, { timeoutMs: 30_000 });
      }
    } finally {
      churn = false;
      await churner;
    }
    const end = await primaryFlush(pg);
    assert.ok(end - startLsn > 2n * 16n * 1024n * 1024n, `the load wrote ${end - startLsn} bytes of WAL: two segment ends crossed`);
    assert.ok(suspensions >= 20, `${suspensions} suspensions during the load`);
    // The commits returned, so the receiver acknowledged them: the safekeeper's view catches up at once.
    assert.ok((await timelineLsn(sk.httpPort, ids, "flush_lsn")) >= end, "flush LSN covers every acknowledged commit");
    const n = await compareWal(pg.walDir, timelineDir(dataDir, ids), startLsn, end);
    assert.equal(BigInt(n), end - startLsn);
    assert.equal(await pg.sql("SELECT count(*) FROM big"), String(4 * 40000 + 4 * 20));
    const segs = (await readdir(timelineDir(dataDir, ids))).filter((f) => /^[0-9A-F]{24}(\.partial)?$/.test(f));
    assert.equal(segs.filter((f) => f.endsWith(".partial")).length, 1, `one partial segment: ${segs.join(" ")}`);
    const metrics = (await http(sk.httpPort, "GET", "/metrics")).text;
    const received = Number(/strata_safekeeper_wal_received_bytes_total\{[^}]*\} ([0-9e.+]+)/.exec(metrics)?.[1]);
    assert.ok(received >= Number(end - startLsn) - 16 * 1024 * 1024, `wal_received_bytes ${received} counts the receiver's writes`);
    assert.match(metrics, /strata_safekeeper_wal_flush_seconds_count [1-9]/);
    console.log(`native receiver: ${formatLsn(startLsn)}..${formatLsn(end)} identical (${n} bytes), ${suspensions} suspensions, ${segs.length} segments`);
  } finally {
    await sk?.stop();
    sk = undefined;
    await pg.destroy();
    await removeTempDir(dataDir);
  }
  assert.deepEqual(await receiverPids(), [], "no receiver outlives its safekeeper");
});

test("native receiver killed mid-load: a new one takes over, no acknowledged commit lost; fencing stops it for good", { timeout: 120_000 }, async () => {
  const { pg, sk, ids, base, startLsn } = await setUp("CREATE TABLE acks (id int primary key)");
  const dataDir = sk.config.dataDir;
  try {
    const [first] = await receiverPids();

    // Commits one after another; the receiver is killed in the middle.
    let acked = 0;
    let stop = false;
    const writer = (async () => {
      while (!stop) {
        await pg.sql(`INSERT INTO acks VALUES (${acked + 1})`, { timeoutMs: 30_000 });
        acked++;
      }
    })();
    try {
      await waitFor("some commits", () => Promise.resolve(acked >= 50), 20_000);
      process.kill(first!, "SIGKILL");
      await waitFor("a new receiver", async () => (await receiverPids()).some((p) => p !== first), 20_000);
      const at = acked;
      await waitFor("commits after the restart", () => Promise.resolve(acked >= at + 50), 30_000);
    } finally {
      stop = true;
      await writer;
    }
    assert.equal(await pg.sql("SELECT count(*) FROM acks"), String(acked), "every acknowledged commit is in the table");
    const end = await primaryFlush(pg);
    await waitFor("flush after the restart", async () => (await timelineLsn(sk.httpPort, ids, "flush_lsn")) >= end, 20_000);
    assert.equal(BigInt(await compareWal(pg.walDir, timelineDir(dataDir, ids), startLsn, end)), end - startLsn);

    // Fencing: a registration with a higher term (another compute) stops the receiver before it returns.
    const r = await http(sk.httpPort, "PUT", `${base}/compute`, { connstr: "host=127.0.0.1 port=1 user=x", term: 2 });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(await receiverPids(), [], "the old compute's receiver is gone when the registration returns");
    const flushAtFence = await timelineLsn(sk.httpPort, ids, "flush_lsn");
    let returned = false;
    const late = pg.sql("INSERT INTO acks VALUES (-1)", { timeoutMs: 60_000 }).then(
      () => (returned = true),
      () => (returned = true),
    );
    await new Promise((res) => setTimeout(res, 1500));
    assert.equal(returned, false, "the fenced compute's commit is not acknowledged");
    assert.equal(await timelineLsn(sk.httpPort, ids, "flush_lsn"), flushAtFence, "nothing of the fenced compute becomes durable here");
    // Release the waiting commit (no synchronous standby any more) so the server stops cleanly.
    await pg.sql("ALTER SYSTEM SET synchronous_standby_names = ''", { timeoutMs: 10_000 });
    await pg.sql("SELECT pg_reload_conf()", { timeoutMs: 10_000 });
    await late;
  } finally {
    await sk.stop();
    await pg.destroy();
    await removeTempDir(dataDir);
  }
});
