/**
 * `strata start` rejoins safekeepers to running endpoints
 * (src/control_plane/rejoin.ts), with real PostgreSQL 15 computes and real
 * strata processes (3 safekeepers, a pageserver):
 *
 *   - endpoint main runs on all 3; safekeeper 3 is killed (SIGKILL);
 *   - endpoint e1 starts on a new branch b1 with only safekeepers 1 and 2
 *     (a quorum), so safekeeper 3 has neither b1's timeline nor e1's
 *     registration; rows are written on both endpoints;
 *   - `strata start` restarts safekeeper 3 and rejoins it: it then holds b1's
 *     timeline, streams from e1, its flush LSN reaches e1's, and its WAL
 *     bytes over [e1's start LSN, that flush LSN) equal e1's pg_wal. For
 *     main (safekeeper 3 was killed while it ran) the persisted registration
 *     alone reconnects it (checked: rejoin registers nothing there);
 *   - safekeeper 1 is killed: commits on e1 and main still return (the
 *     quorum 2 of 3 now needs safekeeper 3), so it really counts;
 *   - `strata status --json` shows per endpoint which safekeepers stream;
 *     a second `strata endpoint rejoin` is a no-op.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { formatLsn, parseLsn, type Lsn } from "../src/lib/lsn.js";
import { cliJson, cliOk, lastLine, runCli, sqlAt, withRepo, type StatusJson } from "./cli_support.js";
import { compareWal } from "./safekeeper_helpers.js";

interface SkTimeline {
  flush_lsn: string;
  term: string | number;
  compute: { term: string | number; connected: boolean } | null;
}

async function skTimeline(httpPort: number, tenant: string, timeline: string): Promise<SkTimeline | undefined> {
  const r = await fetch(`http://127.0.0.1:${httpPort}/v1/tenant/${tenant}/timeline/${timeline}`, { signal: AbortSignal.timeout(5_000) });
  if (r.status === 404) return undefined;
  if (!r.ok) throw new Error(`GET timeline on ${httpPort}: ${r.status} ${await r.text()}`);
  return (await r.json()) as SkTimeline;
}

type Status = Omit<StatusJson, "endpoints"> & { endpoints: (StatusJson["endpoints"][number] & { timeline_id: string; tenant_id: string; safekeepers: { id: number; state: string }[] })[] };

test("strata start rejoins a safekeeper that missed an endpoint start; it then counts in the quorum", { timeout: 150_000 }, async () => {
  await withRepo(async (repo) => {
    const t0 = Date.now();
    const mainConn = lastLine(await cliOk(repo, ["up", "--safekeepers", "3", "--quiet"]));
    await sqlAt(mainConn, "CREATE TABLE kv(k int PRIMARY KEY, v text); INSERT INTO kv SELECT g, 'main ' || g FROM generate_series(1, 100) g");
    await cliOk(repo, ["timeline", "branch", "--branch-name", "b1"]);

    const s0 = await cliJson<Status>(repo, ["status"]);
    const [sk1, sk2, sk3] = s0.safekeepers;
    assert.ok(sk1 && sk2 && sk3 && sk3.pid !== null);
    process.kill(sk3.pid, "SIGKILL");

    // e1 starts on 2 of 3.
    const started = await cliJson<{ connstr: string; start_lsn: string; term: string }>(repo, ["endpoint", "start", "e1", "--branch-name", "b1", "--quiet"]);
    const e1 = started.connstr;
    const e1Start: Lsn = parseLsn(started.start_lsn);
    await sqlAt(e1, "INSERT INTO kv SELECT g, 'b1 ' || g FROM generate_series(101, 3100) g; CREATE TABLE t2 AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g");
    await sqlAt(mainConn, "INSERT INTO kv SELECT g, 'main ' || g FROM generate_series(101, 200) g");
    const s1 = await cliJson<Status>(repo, ["status"]);
    const e1Status = s1.endpoints.find((e) => e.name === "e1")!;
    const tenant = e1Status.tenant_id;
    const b1 = e1Status.timeline_id;
    const mainTl = s1.endpoints.find((e) => e.name === "main")!.timeline_id;
    assert.equal(await skTimeline(sk3.http_port, tenant, b1).catch(() => "down"), "down", "safekeeper 3 is down");
    assert.deepEqual(
      e1Status.safekeepers.map((k) => [k.id, k.state]),
      [
        [1, "streaming"],
        [2, "streaming"],
        [3, "unreachable"],
      ],
    );

    // strata start: safekeeper 3 comes back and joins e1 (and main).
    const tStart = Date.now();
    const r = await runCli(repo, ["start"]);
    const startMs = Date.now() - tStart;
    assert.equal(r.code, 0, r.stderr);
    const out = r.stdout;
    // e1's registration was missing on safekeeper 3 and is made now; main's was persisted there
    // before the kill, and the restarted safekeeper reconnects on its own (nothing registered).
    assert.match(r.stderr, /safekeeper 3: created timeline/);
    assert.match(r.stderr, /safekeeper 3: registered endpoint e1's compute under term/);
    assert.doesNotMatch(r.stderr, /registered endpoint main's compute/);
    assert.match(out, /safekeeper 3: started/);
    assert.match(out, /endpoint e1: term \d+, safekeepers streaming: 1, 2, 3/);
    assert.match(out, /endpoint main: term \d+, safekeepers streaming: 1, 2, 3/);

    const computeFlush = parseLsn(await sqlAt(e1, "SELECT pg_current_wal_flush_lsn()"));
    const st3 = await skTimeline(sk3.http_port, tenant, b1);
    assert.ok(st3 !== undefined, "safekeeper 3 has b1's timeline");
    assert.equal(String(st3.compute?.term), started.term, "registered under e1's term");
    assert.equal(st3.compute?.connected, true);
    const sk3Flush = parseLsn(st3.flush_lsn);
    assert.ok(sk3Flush >= computeFlush, `safekeeper 3 flush ${formatLsn(sk3Flush)} reached the compute's ${formatLsn(computeFlush)}`);
    const compared = await compareWal(join(repo, "endpoints", "e1", "pgdata", "pg_wal"), join(repo, "safekeepers", "sk3", "data", tenant, b1), e1Start, computeFlush);
    assert.ok(compared > 1_000_000, `compared ${compared} bytes`);

    // Idempotent: a second rejoin registers nothing.
    const again = await cliJson<{ registered: number[]; streaming: number[]; problems: string[] }>(repo, ["endpoint", "rejoin", "e1", "--quiet"]);
    assert.deepEqual([again.registered, again.streaming, again.problems], [[], [1, 2, 3], []]);
    const s2 = await cliJson<Status>(repo, ["status"]);
    for (const e of s2.endpoints) assert.deepEqual(e.safekeepers.map((k) => k.state), ["streaming", "streaming", "streaming"], `endpoint ${e.name}`);

    // Safekeeper 3 counts: without safekeeper 1, commits still need it.
    process.kill(s2.safekeepers[0]!.pid!, "SIGKILL");
    const tKill = Date.now();
    assert.equal(await sqlAt(e1, "INSERT INTO kv SELECT g, 'after' FROM generate_series(5001, 5100) g; SELECT count(*) FROM kv", { timeoutMs: 20_000 }), "3200");
    assert.equal(await sqlAt(mainConn, "INSERT INTO kv VALUES (999, 'after'); SELECT count(*) FROM kv", { timeoutMs: 20_000 }), "201");
    const commitMs = Date.now() - tKill;
    const after3 = parseLsn((await skTimeline(sk3.http_port, tenant, b1))!.flush_lsn);
    assert.ok(after3 > sk3Flush, "safekeeper 3 acknowledged the new commits");
    const main3 = await skTimeline(sk3.http_port, tenant, mainTl);
    assert.equal(main3?.compute?.connected, true);

    console.log(
      `rejoin: strata start (restart + rejoin of 2 endpoints) ${startMs} ms; sk3 caught up to ${formatLsn(computeFlush)}, ${compared} WAL bytes equal to e1's pg_wal; commits with sk1 down in ${commitMs} ms; total ${Date.now() - t0} ms`,
    );
  });
});
