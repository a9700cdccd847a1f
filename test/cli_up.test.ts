/**
 * Issue 6 acceptance 1 and 4 through the real `strata` command line: three
 * safekeepers, a pageserver and a compute started by `strata up` in a temp
 * repo dir (real processes, real PostgreSQL 15).
 *
 *   1. `strata up` on a clean dir prints a connection string on its last
 *      line; psql works on it; `strata status --json` has the documented
 *      shape; a second endpoint on main is refused; `strata up` again just
 *      prints the same string; `strata stop`
 *      then `strata up` keeps every row.
 *   4. kill -9 of the compute's postmaster in the middle of pgbench (plus a
 *      client that records every INSERT whose COMMIT was acknowledged);
 *      `strata endpoint start main` again: every acknowledged id is there,
 *      and pgbench_history holds at least as many rows as pgbench reported
 *      processed transactions.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseLsn } from "../src/lib/lsn.js";
import { PgClient } from "../src/wire/client.js";
import { runTool } from "./harness/tools.js";
import { cliJson, cliOk, lastLine, portOf, runCli, sqlAt, withRepo, type StatusJson } from "./cli_support.js";

const CONNSTR_RE = /^postgresql:\/\/postgres@127\.0\.0\.1:\d+\/postgres$/;

/** Inserts ids 1.. one per transaction until stopped; returns the ids whose COMMIT was acknowledged. */
async function recordAcknowledged(port: number, stop: AbortSignal): Promise<number[]> {
  const acked: number[] = [];
  let client: PgClient | undefined;
  try {
    client = await PgClient.connect({ host: "127.0.0.1", port, user: "postgres", database: "postgres" });
    for (let id = 1; !stop.aborted; id++) {
      await client.simpleQuery(`INSERT INTO acked(id) VALUES (${id})`);
      acked.push(id); // only after CommandComplete + ReadyForQuery: the commit was acknowledged
    }
  } catch {
    /* the compute died: the ids so far are the acknowledged ones */
  } finally {
    await client?.close().catch(() => undefined);
  }
  return acked;
}

test("strata up: psql works, status shape, idempotent, stop + up keeps data; kill -9 mid-pgbench loses nothing acknowledged", { timeout: 240_000 }, async () => {
  await withRepo(async (repo) => {
    // --- acceptance 1 ---
    const t0 = Date.now();
    const upOut = await cliOk(repo, ["up", "--safekeepers", "3"]);
    const connstr = lastLine(upOut);
    assert.match(connstr, CONNSTR_RE);
    const upMs = Date.now() - t0;
    assert.equal(await sqlAt(connstr, "CREATE TABLE kv(k int PRIMARY KEY, v text); INSERT INTO kv SELECT g, 'row ' || g FROM generate_series(1, 1000) g; SELECT count(*) FROM kv"), "1000");

    const s = await cliJson<StatusJson>(repo, ["status"]);
    assert.deepEqual(Object.keys(s.pageserver).filter((k) => ["pid", "pg_port", "http_port", "datadir"].includes(k)).sort(), ["datadir", "http_port", "pg_port", "pid"]);
    assert.equal(typeof s.pageserver.pid, "number");
    assert.equal(s.safekeepers.length, 3);
    for (const k of s.safekeepers) for (const f of ["id", "pid", "pg_port", "http_port", "datadir"] as const) assert.ok(k[f] !== undefined && k[f] !== null, `safekeeper.${f}`);
    assert.equal(s.endpoints.length, 1);
    const ep = s.endpoints[0]!;
    assert.deepEqual([ep.name, ep.branch, ep.connstr, ep.port], ["main", "main", connstr, portOf(connstr)]);
    assert.equal(typeof ep.pid, "number");
    assert.equal(s.tenants.length, 1);
    const tl = s.tenants[0]!.timelines[0]!;
    assert.equal(tl.branch, "main");
    assert.equal(tl.ancestor, null);
    assert.equal(tl.ancestor_lsn, null);
    for (const f of ["last_record_lsn", "disk_consistent_lsn", "remote_consistent_lsn"] as const) parseLsn(tl[f]!);
    assert.match(tl.id, /^[0-9a-f]{32}$/);

    const second = await runCli(repo, ["endpoint", "start", "second", "--branch-name", "main"]);
    assert.equal(second.code, 2, second.stderr);
    assert.match(second.stderr, /already has a running endpoint \(main\)/);

    const again = await cliOk(repo, ["up", "--quiet"]);
    assert.equal(lastLine(again), connstr, "up on a running deployment prints the same connection string");

    await cliOk(repo, ["stop"]);
    const down = await cliJson<StatusJson>(repo, ["status"]);
    assert.equal(down.pageserver.pid, null);
    assert.equal(down.endpoints[0]!.pid, null);
    const upAgain = lastLine(await cliOk(repo, ["up", "--quiet"]));
    assert.equal(upAgain, connstr);
    assert.equal(await sqlAt(connstr, "SELECT count(*), sum(k) FROM kv"), "1000|500500");
    assert.equal(await sqlAt(connstr, "INSERT INTO kv VALUES (1001, 'after restart') RETURNING v"), "after restart");

    // --- acceptance 4 ---
    await sqlAt(connstr, "CREATE TABLE acked(id int PRIMARY KEY)");
    const init = await runTool("pgbench", ["-i", "-s", "1", "-q", connstr], { timeoutMs: 120_000 });
    assert.equal(init.code, 0, init.stderr);
    const stop = new AbortController();
    const recorder = recordAcknowledged(portOf(connstr), stop.signal);
    const bench = runTool("pgbench", ["-n", "-c", "2", "-T", "30", connstr], { timeoutMs: 120_000 });
    await new Promise((res) => setTimeout(res, 5000));
    const before = await sqlAt(connstr, "SELECT count(*) FROM acked");
    assert.ok(Number(before) > 0, "the recorder commits");
    const pid = (await cliJson<StatusJson>(repo, ["status"])).endpoints[0]!.pid!;
    process.kill(pid, "SIGKILL");
    const benchResult = await bench;
    stop.abort();
    const acked = await recorder;
    const processed = /number of transactions actually processed: (\d+)/.exec(benchResult.stdout);
    assert.ok(acked.length > 0);

    const restarted = lastLine(await cliOk(repo, ["endpoint", "start", "main", "--quiet"]));
    assert.equal(restarted, connstr);
    const ids = new Set((await sqlAt(connstr, "SELECT id FROM acked")).split("\n").filter((x) => x !== "").map(Number));
    const missing = acked.filter((id) => !ids.has(id));
    assert.deepEqual(missing.slice(0, 10), [], `${missing.length} acknowledged ids lost`);
    const history = Number(await sqlAt(connstr, "SELECT count(*) FROM pgbench_history"));
    if (processed !== null) assert.ok(history >= Number(processed[1]), `pgbench reported ${processed[1]} processed, history has ${history}`);
    assert.equal(await sqlAt(connstr, "SELECT count(*) FROM kv"), "1001");
    assert.equal(await sqlAt(connstr, "INSERT INTO acked VALUES (-1) RETURNING id"), "-1", "writable after the crash");
    console.log(
      `strata up: first up ${upMs} ms; kill -9 mid-pgbench: ${acked.length} acknowledged inserts all present (${ids.size} rows), pgbench processed ${processed?.[1] ?? "n/a (aborted)"}, history ${history}`,
    );
  });
});
