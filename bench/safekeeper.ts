/**
 * Benchmark: what a strata safekeeper costs a committing PostgreSQL.
 *
 *   node dist/bench/safekeeper.js [--duration S] [--warmup S] [--clients N] [--scale N] [--rounds R] [--rate TPS]
 *                                 [--baseline-main PATH/dist/src/cli/main.js] [--baseline-node-args "FLAGS"] [--baseline-wal-receiver node]
 *                                 [--order alternate|a-first]
 *
 * One PostgreSQL 15 primary (fsync on, as in production), pgbench TPC-B-like
 * load, synchronous_commit = on, in three set-ups on the same machine in one
 * run:
 *   (a) one strata safekeeper (`strata safekeeper` child process) as the only
 *       synchronous standby sk_1;
 *   (b) `pg_receivewal --synchronous --slot` playing the same role (it
 *       fsyncs each write and reports the flush position at once);
 *   (c) asynchronous commit (synchronous_commit = off, no standby waited for).
 * For each: TPS and per-transaction latency p50/p99 from pgbench's
 * transaction log, after `--warmup` seconds (default 5) of the same load
 * that are not measured (each set-up alike). Then the ratios a/b and a/c of TPS (goal: a/b >= 1.0).
 * `--rounds` repeats the a/b/c sequence (alternating cancels drift in the
 * machine's load); figures are per round and their median. With `--order
 * alternate` (the default) every second round runs (b) before (a).
 * `--baseline-main` adds (a0): the same as (a) with another build of strata
 * (e.g. the last commit, unpacked and built elsewhere), run in the same
 * rounds, so a change's effect is measured under the same machine load.
 * `--baseline-wal-receiver node` runs (a0) with the commit loop in the
 * safekeeper's own process instead of the native receiver (this build
 * unless `--baseline-main` is given): the two loops under the same load.
 * `--baseline-node-args "FLAGS"` runs (a0) with extra node flags (e.g.
 * "--single-threaded-gc"; with this build unless `--baseline-main` is given):
 * a runtime setting measured the same way.
 * `--rate TPS` throttles pgbench to a fixed rate (pgbench -R): the TPS then
 * say nothing, but the standby's CPU per transaction at the same rate is a
 * like-for-like cost per commit that a busy machine distorts much less.
 * For the standby process the bench prints its CPU per transaction (user +
 * system, from /proc) and, for strata, the fsyncs per transaction (from its
 * metrics): group commit shows there.
 *
 * Runs on demand only, never in the test suite.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { startPostgres, type PgServer } from "../test/harness/pg_server.js";
import { freePort } from "../test/harness/ports.js";
import { makeTempDir, PG_BIN_DIR, removeTempDir, runTool } from "../test/harness/tools.js";
import { generateTenantId, generateTimelineId } from "../src/lib/id.js";
import { http, startChild, stopChild, waitFor, type ChildSafekeeper } from "../test/safekeeper_helpers.js";

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}

const DURATION_S = arg("--duration", 15);
const CLIENTS = arg("--clients", 8);
/** `--rate N`: pgbench -R (transactions per second, spread over the clients); 0 = as fast as possible. */
const RATE = arg("--rate", 0);
const SCALE = arg("--scale", 5);
const ROUNDS = arg("--rounds", 1);
/** Seconds of unmeasured pgbench before each measured run (every set-up alike). */
const WARMUP_S = arg("--warmup", 5);
function strArg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const BASELINE_MAIN = strArg("--baseline-main");
const BASELINE_NODE_ARGS = strArg("--baseline-node-args")?.split(" ").filter((a) => a !== "");
const BASELINE_WAL_RECEIVER = strArg("--baseline-wal-receiver");
/** `--order alternate` (default): odd rounds run (b) before (a); `a-first`: always (a) first. */
const ORDER = strArg("--order") ?? "alternate";
if (ORDER !== "alternate" && ORDER !== "a-first") throw new Error(`--order must be alternate or a-first, not ${ORDER}`);

interface Result {
  mode: string;
  /** CPU seconds (user, system) the standby process (safekeeper or pg_receivewal) used during the run. */
  standbyCpuS?: { user: number; sys: number };
  /** Safekeeper fsyncs during the run. */
  fsyncs?: number;
  tps: number;
  p50Ms: number;
  p99Ms: number;
  transactions: number;
}

/** USER_HZ on Linux. */
const CLOCK_TICKS_PER_SECOND = 100;

/** utime and stime of a process, in seconds. */
/**
 * CPU seconds of process `pid` and all its descendants (the safekeeper's
 * native WAL receiver is a child process): their own times, plus the times
 * of children that exited and were waited for (cutime, cstime).
 */
async function cpuSeconds(pid: number): Promise<{ user: number; sys: number }> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  if (stat === "") return { user: 0, sys: 0 };
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  let user = (Number(fields[11]) + Number(fields[13])) / CLOCK_TICKS_PER_SECOND;
  let sys = (Number(fields[12]) + Number(fields[14])) / CLOCK_TICKS_PER_SECOND;
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  for (const tid of tasks) {
    const children = (await readFile(`/proc/${pid}/task/${tid}/children`, "utf8").catch(() => "")).trim();
    for (const c of children === "" ? [] : children.split(" ")) {
      const sub = await cpuSeconds(Number(c));
      user += sub.user;
      sys += sub.sys;
    }
  }
  return { user, sys };
}

/** Runs `fn` and adds the CPU time process `pid` (and its descendants) used meanwhile. */
async function withCpu(pid: number | undefined, fn: () => Promise<Result>): Promise<Result> {
  if (pid === undefined) return await fn();
  const before = await cpuSeconds(pid);
  const r = await fn();
  const after = await cpuSeconds(pid);
  return { ...r, standbyCpuS: { user: after.user - before.user, sys: after.sys - before.sys } };
}

/** The safekeeper's fsync counter (all timelines). */
async function fsyncCount(httpPort: number): Promise<number> {
  const text = (await http(httpPort, "GET", "/metrics")).text;
  let n = 0;
  for (const line of text.split("\n")) if (line.startsWith("strata_safekeeper_fsyncs_total{")) n += Number(line.slice(line.lastIndexOf(" ") + 1));
  return n;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** The pgbench load every set-up runs: CLIENTS clients for `seconds`. */
function loadArgs(pg: PgServer, seconds: number): string[] {
  const rate = RATE > 0 ? ["-R", String(RATE)] : [];
  return ["-h", pg.host, "-p", String(pg.port), "-U", "postgres", "-c", String(CLIENTS), "-j", "2", "-T", String(seconds), ...rate];
}

/**
 * Unmeasured pgbench before a measured run: lets every contender reach its steady state
 * first (for the safekeeper, V8 compiling its hot paths; pg_receivewal has nothing to
 * warm), like any benchmark's warm-up. Every set-up gets the same.
 */
async function warmUp(pg: PgServer, mode: string, env: Record<string, string> = {}): Promise<void> {
  if (WARMUP_S <= 0) return;
  const w = await runTool("pgbench", [...loadArgs(pg, WARMUP_S), "postgres"], {
    timeoutMs: (WARMUP_S + 120) * 1000,
    env,
  });
  if (w.code !== 0) throw new Error(`pgbench warm-up (${mode}) failed: ${w.stderr}`);
}

async function pgbenchRun(pg: PgServer, mode: string, env: Record<string, string> = {}): Promise<Result> {
  const logDir = await makeTempDir("pgbench-log");
  try {
    const r = await runTool(
      "pgbench",
      [...loadArgs(pg, DURATION_S), "-l", "--log-prefix", join(logDir, "tx"), "postgres"],
      { timeoutMs: (DURATION_S + 120) * 1000, env, cwd: logDir },
    );
    if (r.code !== 0) throw new Error(`pgbench (${mode}) failed: ${r.stderr}`);
    const out = r.stdout + r.stderr;
    const tps = Number(/tps = ([0-9.]+) \(without initial connection time\)/.exec(out)?.[1]);
    const lat: number[] = [];
    for (const f of await readdir(logDir)) {
      for (const line of (await readFile(join(logDir, f), "utf8")).split("\n")) {
        const us = line.split(" ")[2];
        if (us !== undefined && us !== "") lat.push(Number(us) / 1000);
      }
    }
    lat.sort((a, b) => a - b);
    return { mode, tps, p50Ms: percentile(lat, 50), p99Ms: percentile(lat, 99), transactions: lat.length };
  } finally {
    await removeTempDir(logDir);
  }
}

async function setSyncNames(pg: PgServer, names: string): Promise<void> {
  await pg.sql(`ALTER SYSTEM SET synchronous_standby_names = '${names}'; SELECT pg_reload_conf();`);
}

async function waitSync(pg: PgServer, app: string): Promise<void> {
  await waitFor(`${app} to be the synchronous standby`, async () => (await pg.sql(`SELECT count(*) FROM pg_stat_replication WHERE application_name = '${app}' AND sync_state = 'sync'`)) === "1", 30_000, 100);
}

async function runStrata(pg: PgServer, mode = "a: strata safekeeper", mainJs?: string, nodeArgs?: string[], walReceiver?: string): Promise<Result> {
  const dataDir = await makeTempDir("bench-sk");
  const pgPort = await freePort();
  const httpPort = await freePort();
  let child: ChildSafekeeper | undefined;
  try {
    child = await startChild({
      id: 1,
      dataDir,
      pgPort,
      httpPort,
      ...(mainJs !== undefined ? { mainJs } : {}),
      ...(nodeArgs !== undefined ? { nodeArgs } : {}),
      ...(walReceiver !== undefined ? { extraArgs: ["--wal-receiver", walReceiver] } : {}),
    });
    const r = await http(httpPort, "PUT", `/v1/tenant/${generateTenantId()}/timeline/${generateTimelineId()}/compute`, { connstr: pg.connString(), term: 1 });
    if (r.status !== 201) throw new Error(`register: ${r.status} ${r.text}`);
    await setSyncNames(pg, "sk_1");
    await waitSync(pg, "sk_1");
    await warmUp(pg, mode);
    const f0 = await fsyncCount(httpPort);
    const r2 = await withCpu(child.proc.pid, () => pgbenchRun(pg, mode));
    return { ...r2, fsyncs: (await fsyncCount(httpPort)) - f0 };
  } finally {
    await setSyncNames(pg, "");
    if (child) await stopChild(child);
    await pg.sql("SELECT pg_drop_replication_slot('sk_1')").catch(() => undefined);
    await removeTempDir(dataDir);
  }
}

async function runReceivewal(pg: PgServer): Promise<Result> {
  const dir = await makeTempDir("bench-rw");
  let proc: ChildProcess | undefined;
  try {
    await pg.sql("SELECT pg_create_physical_replication_slot('rw_bench', true)");
    proc = spawn(join(PG_BIN_DIR, "pg_receivewal"), ["-D", dir, "--slot", "rw_bench", "--synchronous", "--no-loop", "-d", `host=${pg.host} port=${pg.port} user=postgres application_name=sk_1`], {
      stdio: ["ignore", "ignore", "inherit"],
    });
    await setSyncNames(pg, "sk_1");
    await waitSync(pg, "sk_1");
    await warmUp(pg, "b");
    return await withCpu(proc.pid, () => pgbenchRun(pg, "b: pg_receivewal --synchronous"));
  } finally {
    await setSyncNames(pg, "");
    if (proc) {
      const exited = new Promise((res) => proc!.on("exit", res));
      proc.kill("SIGINT");
      await exited;
    }
    await pg.sql("SELECT pg_drop_replication_slot('rw_bench')").catch(() => undefined);
    await removeTempDir(dir);
  }
}

async function runAsync(pg: PgServer): Promise<Result> {
  await warmUp(pg, "c", { PGOPTIONS: "-c synchronous_commit=off" });
  return await pgbenchRun(pg, "c: asynchronous commit", { PGOPTIONS: "-c synchronous_commit=off" });
}

function fmt(r: Result): string {
  const perTx = (s: number) => ((s * 1e6) / r.transactions).toFixed(0);
  const cpu = r.standbyCpuS === undefined ? "" : `, standby CPU ${perTx(r.standbyCpuS.user + r.standbyCpuS.sys)} us/tx (user ${perTx(r.standbyCpuS.user)}, sys ${perTx(r.standbyCpuS.sys)})`;
  const fs = r.fsyncs === undefined ? "" : `, ${(r.fsyncs / r.transactions).toFixed(2)} fsyncs/tx`;
  return `${r.mode.padEnd(32)} ${r.tps.toFixed(0).padStart(7)} tps   p50 ${r.p50Ms.toFixed(2).padStart(7)} ms   p99 ${r.p99Ms.toFixed(2).padStart(7)} ms   (${r.transactions} tx${cpu}${fs})`;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  console.log(`pgbench -c ${CLIENTS} -j 2 -T ${DURATION_S}${RATE > 0 ? ` -R ${RATE}` : ""}, scale ${SCALE}, synchronous_commit=on, primary fsync=on, ${ROUNDS} round(s)`);
  const pg = await startPostgres({ settings: { fsync: true, synchronous_commit: "on", max_wal_size: "1GB", checkpoint_timeout: "30min" } });
  try {
    await pg.pgbench(["-i", "-s", String(SCALE), "-q"]);
    const rounds: Result[][] = [];
    const baseline: Result[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      if (BASELINE_MAIN !== undefined || BASELINE_NODE_ARGS !== undefined || BASELINE_WAL_RECEIVER !== undefined) {
        const label = BASELINE_WAL_RECEIVER !== undefined ? `a0: strata safekeeper (--wal-receiver ${BASELINE_WAL_RECEIVER})` : "a0: strata safekeeper (baseline)";
        const a0 = await runStrata(pg, label, BASELINE_MAIN, BASELINE_NODE_ARGS, BASELINE_WAL_RECEIVER);
        console.log(fmt(a0));
        baseline.push(a0);
      }
      // Who runs first alternates (with --order alternate): drift in the machine's load within a
      // round (the VM's disk and CPU vary over minutes) then favours neither contender.
      const bFirst = ORDER === "alternate" && i % 2 === 1;
      let b: Result | undefined;
      if (bFirst) {
        b = await runReceivewal(pg);
        console.log(fmt(b));
      }
      const a = await runStrata(pg);
      console.log(fmt(a));
      if (b === undefined) {
        b = await runReceivewal(pg);
        console.log(fmt(b));
      }
      const c = await runAsync(pg);
      console.log(fmt(c));
      rounds.push([a, b, c]);
      const a0 = baseline[i];
      console.log(
        `round ${i + 1}: a/b = ${(a.tps / b.tps).toFixed(2)}  a/c = ${(a.tps / c.tps).toFixed(2)}  (p50 a/b ${(a.p50Ms / b.p50Ms).toFixed(2)})` +
          (a0 !== undefined ? `  baseline a0/b = ${(a0.tps / b.tps).toFixed(2)}` : ""),
      );
    }
    if (ROUNDS > 1) {
      const m = (k: number) => median(rounds.map((r) => r[k]!.tps));
      console.log(`median: a ${m(0).toFixed(0)} tps, b ${m(1).toFixed(0)} tps, c ${m(2).toFixed(0)} tps; ratio of the medians a/b = ${(m(0) / m(1)).toFixed(2)}  a/c = ${(m(0) / m(2)).toFixed(2)}`);
      // The goal's figure: each round's a/b (both ran under that round's load), then their median.
      const ab = rounds.map((r) => r[0]!.tps / r[1]!.tps);
      console.log(`a/b per round: ${ab.map((x) => x.toFixed(2)).join(", ")}; median of the round ratios ${median(ab).toFixed(2)} (goal >= 1.0)`);
      if (baseline.length > 0) {
        const cpu = (r: Result) => ((r.standbyCpuS!.user + r.standbyCpuS!.sys) * 1e6) / r.transactions;
        console.log(
          `median baseline a0: ${median(baseline.map((r) => r.tps)).toFixed(0)} tps, ${median(baseline.map(cpu)).toFixed(0)} us/tx; a: ${median(rounds.map((r) => cpu(r[0]!))).toFixed(0)} us/tx; b: ${median(rounds.map((r) => cpu(r[1]!))).toFixed(0)} us/tx`,
        );
      }
    }
  } finally {
    await pg.destroy();
  }
}

await main();
