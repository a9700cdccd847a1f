/**
 * Issue 6 acceptance 2 through the real `strata` command line (one
 * safekeeper, a pageserver, PostgreSQL 15 computes), shared by
 * cli_branching_lsn.test.ts (branches at recorded LSNs) and
 * cli_branching_time.test.ts (branches at recorded times). Split in two
 * files because every compute needs a fullbackup (~50 MB: a few seconds
 * each on 2 loaded cores) and each file must stay near two minutes.
 *
 *   pgbench runs on `main`; after each of POINTS rounds we record
 *   (insert LSN, fingerprint of every pgbench table, wall-clock time from
 *   the server's clock). We then branch at every recorded LSN
 *   (`--ancestor-start-lsn`) or every recorded time (`--at`), start a
 *   compute on each branch (a few at a time, then stop them) and check:
 *     - the branch's fingerprint equals the one recorded at that point;
 *     - `pg_amcheck --heapallindexed` is clean;
 *     - writes on a branch never appear on main or on a sibling: each
 *       branch first checks that no sibling's marker table exists, then
 *       creates its own; main never sees one, nor a branch's rows.
 */
import assert from "node:assert/strict";
import { runTool } from "./harness/tools.js";
import { cliOk, lastLine, portOf, runCli, sqlAt, withRepo } from "./cli_support.js";

/** Recorded points (acceptance: at least 10). */
export const POINTS = 10;
/** Computes running at once (2 cores shared with other test files; the pageserver serves one backup at a time anyway). */
const PARALLEL = 2;
const PG_CONFIG = ["--pg-config", "shared_buffers=16MB", "--pg-config", "max_connections=20", "--pg-config", "fsync=off"];

/** md5 of every pgbench table's rows, in key order. */
export const FINGERPRINT_SQL = `SELECT concat_ws(' ',
  (SELECT md5(string_agg(a::text, ',' ORDER BY aid)) FROM pgbench_accounts a),
  (SELECT md5(string_agg(b::text, ',' ORDER BY bid)) FROM pgbench_branches b),
  (SELECT md5(string_agg(t::text, ',' ORDER BY tid)) FROM pgbench_tellers t),
  (SELECT md5(coalesce(string_agg(h::text, ',' ORDER BY tid, bid, aid, delta, mtime), '')) FROM pgbench_history h))`;

/** The server's clock as RFC 3339 with microseconds (what --at takes). */
export const NOW_SQL = `to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`;

export interface Point {
  lsn: string;
  at: string;
  fingerprint: string;
}

/** Runs `fn` over `items` with at most `n` in flight. */
export async function inBatches<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/** pg_amcheck --heapallindexed on a compute: exit 0 and no report. */
export async function amcheckClean(connstr: string, what: string): Promise<void> {
  const r = await runTool("pg_amcheck", ["-h", "127.0.0.1", "-p", String(portOf(connstr)), "-U", "postgres", "--install-missing", "--heapallindexed", "postgres"], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, `${what}: pg_amcheck: ${r.stdout}${r.stderr}`);
  assert.equal(r.stdout.trim(), "", `${what}: pg_amcheck reports nothing`);
}

/** The whole acceptance-2 scenario, branching by LSN or by time. */
export async function branchingScenario(kind: "lsn" | "time"): Promise<void> {
  await withRepo(async (repo) => {
    const t0 = Date.now();
    const main = lastLine(await cliOk(repo, ["up", "--safekeepers", "1", "--quiet"]));
    const init = await runTool("pgbench", ["-i", "-s", "1", "-q", main], { timeoutMs: 120_000 });
    assert.equal(init.code, 0, init.stderr);

    const points: Point[] = [];
    for (let i = 0; i < POINTS; i++) {
      const r = await runTool("pgbench", ["-n", "-c", "2", "-t", String(20 + 10 * i), main], { timeoutMs: 120_000 });
      assert.equal(r.code, 0, r.stderr);
      const [lsn, at, fingerprint] = (await sqlAt(main, `SELECT pg_current_wal_insert_lsn(), ${NOW_SQL}, (${FINGERPRINT_SQL})`)).split("|");
      points.push({ lsn: lsn!, at: at!, fingerprint: fingerprint! });
      await new Promise((res) => setTimeout(res, 20)); // the next round's commits are strictly later than `at`
    }
    assert.equal(new Set(points.map((p) => p.fingerprint)).size, POINTS, "every point has different contents");
    const mainFinal = await sqlAt(main, FINGERPRINT_SQL);
    const tRecorded = Date.now();

    const branches = points.map((p, i) => ({ name: `${kind}${i}`, args: kind === "lsn" ? ["--ancestor-start-lsn", p.lsn] : ["--at", p.at], point: p }));
    const branchMs: number[] = [];
    await inBatches(branches, 4, async (b) => {
      const s = Date.now();
      const out = JSON.parse(await cliOk(repo, ["timeline", "branch", "--branch-name", b.name, ...b.args, "--json", "--quiet"])) as { ancestor_lsn: string; lsn_by_timestamp?: { kind: string } };
      branchMs.push(Date.now() - s);
      // The last point lies after main's last commit: "future" (branch at main's last record) is right there.
      if (kind === "time") assert.ok(["present", "future"].includes(out.lsn_by_timestamp?.kind ?? ""), `${b.name}: ${b.point.at} is ${out.lsn_by_timestamp?.kind}`);
      else assert.equal(out.ancestor_lsn, b.point.lsn);
    });
    const tree = await cliOk(repo, ["timeline", "list"]);
    for (const b of branches) assert.match(tree, new RegExp(`└ ${b.name} `), `${b.name} in the tree`);

    // A compute on each branch.
    const checked: string[] = [];
    await inBatches(branches, PARALLEL, async (b) => {
      const connstr = lastLine(await cliOk(repo, ["endpoint", "start", `ep-${b.name}`, "--branch-name", b.name, ...PG_CONFIG, "--quiet"]));
      try {
        assert.equal(await sqlAt(connstr, FINGERPRINT_SQL), b.point.fingerprint, `${b.name}: fingerprint at ${b.point.lsn} / ${b.point.at}`);
        await amcheckClean(connstr, b.name);
        // Isolation: no sibling's marker is visible here; leave ours.
        assert.equal(await sqlAt(connstr, "SELECT count(*) FROM pg_class WHERE relname LIKE 'marker_%'"), "0", `${b.name} sees no sibling's writes`);
        await sqlAt(connstr, `CREATE TABLE "marker_${b.name}"(x int); INSERT INTO "marker_${b.name}" VALUES (1); INSERT INTO pgbench_history(tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 424242, now())`);
        checked.push(b.name);
      } finally {
        await cliOk(repo, ["endpoint", "stop", `ep-${b.name}`]);
      }
    });
    assert.equal(checked.length, POINTS);
    const tComputes = Date.now();

    // Main never saw a branch's write; its contents are what they were.
    assert.equal(await sqlAt(main, "SELECT count(*) FROM pg_class WHERE relname LIKE 'marker_%'"), "0");
    assert.equal(await sqlAt(main, "SELECT count(*) FROM pgbench_history WHERE delta = 424242"), "0");
    assert.equal(await sqlAt(main, FINGERPRINT_SQL), mainFinal);

    // Restarting a branch endpoint: its own write is there (the branch's WAL is its own), settings persisted.
    const again = lastLine(await cliOk(repo, ["endpoint", "start", `ep-${kind}3`, "--quiet"]));
    assert.equal(await sqlAt(again, `SELECT count(*) FROM marker_${kind}3`), "1");
    assert.equal(await sqlAt(again, "SELECT count(*) FROM pg_class WHERE relname LIKE 'marker_%'"), "1");
    assert.equal(await sqlAt(again, "SHOW shared_buffers"), "16MB", "--pg-config settings persist with the endpoint");
    await cliOk(repo, ["endpoint", "stop", `ep-${kind}3`]);

    // Misuse: a branch point before the ancestor's start (one far beyond its end is refused too, after the
    // pageserver's bounded wait for WAL — too slow for this test); an unknown ancestor; a malformed LSN.
    const before = await runCli(repo, ["timeline", "branch", "--branch-name", "before", "--ancestor-start-lsn", "0/10"]);
    assert.equal(before.code, 2, before.stderr);
    assert.doesNotMatch(before.stderr, /\n\s+at /);
    const badLsn = await runCli(repo, ["timeline", "branch", "--branch-name", "bad", "--ancestor-start-lsn", "12345"]);
    assert.equal(badLsn.code, 2);
    assert.match(badLsn.stderr, /Cannot parse LSN "12345"/);
    const noAnc = await runCli(repo, ["timeline", "branch", "--branch-name", "x", "--ancestor-branch-name", "nope"]);
    assert.equal(noAnc.code, 3);
    const median = [...branchMs].sort((a, b) => a - b)[branchMs.length >> 1];
    console.log(
      `branching by ${kind}: ${POINTS} points, ${branches.length} branches (median create ${median} ms), ${POINTS} computes checked in ${Math.round((tComputes - tRecorded) / 1000)} s, ` +
        `total ${Math.round((Date.now() - t0) / 1000)} s; refused: ${before.stderr.trim()}`,
    );
  });
}
