/**
 * Benchmark: branch creation and compute start-up through `strata`.
 *
 *   node dist/bench/branching.js [--small-scale N] [--large-scale N] [--branches N]
 *
 * One local deployment (`strata up`, one safekeeper) in a temp repo dir.
 * The database on `main` is grown in two steps with pgbench -i
 * (`--small-scale`, default 1: ~15 MB of tables; `--large-scale`, default 20:
 * ~300 MB; the 1 GB is `--large-scale 70`). At each size:
 *   - branch creation: `--branches` branches of main at its last record,
 *     timed two ways — the pageserver's HTTP call alone (POST
 *     /v1/tenant/:t/timeline) and the whole `strata timeline branch` command
 *     (process start, config update). It must not grow with the size: a
 *     branch copies nothing.
 *   - compute start-up: `strata endpoint start` on a fresh branch until the
 *     server accepts connections (election, fullbackup of the whole
 *     database, pg_ctl start, registration), with the fullbackup's size.
 *
 * Runs on demand only, never in the test suite.
 */
import { performance } from "node:perf_hooks";
import { cliJson, cliOk, lastLine, sqlAt, withRepo, type StatusJson } from "../test/cli_support.js";
import { runTool } from "../test/harness/tools.js";

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}

const SMALL_SCALE = arg("--small-scale", 1);
const LARGE_SCALE = arg("--large-scale", 20);
const BRANCHES = arg("--branches", 5);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1] ?? NaN;
}

async function measure(repo: string, main: string, label: string, round: number): Promise<string> {
  const size = await sqlAt(main, "SELECT pg_size_pretty(pg_database_size('postgres'))");
  const sizeBytes = Number(await sqlAt(main, "SELECT sum(pg_database_size(oid)) FROM pg_database"));
  const status = await cliJson<StatusJson>(repo, ["status"]);
  const tenant = status.tenants[0]!.id;
  const mainTl = status.tenants[0]!.timelines.find((t) => t.branch === "main")!.id;
  const http = `http://127.0.0.1:${status.pageserver.http_port}/v1/tenant/${tenant}/timeline`;

  // Let the pageserver catch up first, so branch creation does not wait for WAL.
  const lsn = await sqlAt(main, "SELECT pg_current_wal_insert_lsn()");
  await cliOk(repo, ["timeline", "branch", "--branch-name", `warm${round}`, "--ancestor-start-lsn", lsn, "--quiet"]);

  const httpMs: number[] = [];
  for (let i = 0; i < BRANCHES; i++) {
    const t = performance.now();
    const res = await fetch(http, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ancestor_timeline_id: mainTl }) });
    if (res.status !== 201) throw new Error(`branch via HTTP: ${res.status} ${await res.text()}`);
    await res.arrayBuffer();
    httpMs.push(performance.now() - t);
  }
  const cliMs: number[] = [];
  for (let i = 0; i < BRANCHES; i++) {
    const t = performance.now();
    await cliOk(repo, ["timeline", "branch", "--branch-name", `b${round}_${i}`, "--quiet"]);
    cliMs.push(performance.now() - t);
  }
  const t = performance.now();
  const out = await cliJson<{ connstr: string }>(repo, ["endpoint", "start", `ep${round}`, "--branch-name", `b${round}_0`, "--pg-config", "shared_buffers=16MB", "--quiet"]);
  await sqlAt(out.connstr, "SELECT 1");
  const startMs = performance.now() - t;
  await cliOk(repo, ["endpoint", "stop", `ep${round}`]);
  return (
    `${label}: database ${size} (all databases ${(sizeBytes / 1048576).toFixed(0)} MiB)\n` +
    `  branch creation: HTTP median ${median(httpMs).toFixed(1)} ms (min ${Math.min(...httpMs).toFixed(1)}), strata timeline branch median ${median(cliMs).toFixed(0)} ms\n` +
    `  endpoint start -> accepting connections: ${(startMs / 1000).toFixed(2)} s (${((sizeBytes / 1048576) / (startMs / 1000)).toFixed(1)} MiB of databases per second)`
  );
}

await withRepo(async (repo) => {
  const main = lastLine(await cliOk(repo, ["up", "--safekeepers", "1", "--quiet"]));
  const pgbenchInit = async (scale: number) => {
    const r = await runTool("pgbench", ["-i", "-s", String(scale), "-q", main], { timeoutMs: 3_600_000 });
    if (r.code !== 0) throw new Error(r.stderr);
  };
  await pgbenchInit(SMALL_SCALE);
  const small = await measure(repo, main, `pgbench scale ${SMALL_SCALE}`, 1);
  console.log(small);
  await pgbenchInit(LARGE_SCALE);
  const large = await measure(repo, main, `pgbench scale ${LARGE_SCALE}`, 2);
  console.log(large);
});
