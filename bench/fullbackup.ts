/**
 * Benchmark: fullbackup throughput of the pageserver next to pg_basebackup
 * from the original compute, in the same run on the same machine.
 *
 *   node dist/bench/fullbackup.js [--scale N] [--rounds R] [--compact [--fresh-rounds N]]
 *        [--warmup-rounds N] [--order alternate|ours-first|bb-first]
 *
 * One local deployment (`strata up`, one safekeeper) in a temp repo dir;
 * pgbench -i at `--scale` (default 10: ~160 MB; the issue's >= 1 GB is
 * `--scale 70`) on `main`, then, once the pageserver has ingested
 * everything (last_record_lsn >= the compute's insert LSN), alternately:
 *   (a) fullbackup at that LSN from the page service into a tar file
 *       (fetchBackupToFile: streamed, fsynced, renamed) — what every
 *       `strata endpoint start` and `strata timeline export` does;
 *   (b) `pg_basebackup -Ft -X none` from the running compute into a tar
 *       file (fsynced by pg_basebackup), after a CHECKPOINT so its own
 *       checkpoint is quick.
 * Prints bytes, seconds and MiB/s for each and the ratio a/b (goal >= 1.0).
 * Which of the two runs first alternates from round to round, and each
 * phase starts with `--warmup-rounds` unmeasured rounds: on this VM,
 * writing a GiB into page-cache memory the guest has not used lately costs
 * seconds of system CPU more than reusing memory the other run just freed,
 * so a fixed order, or the first round after the compaction claimed fresh
 * memory, charges the same side every time (see WARMUP_ROUNDS).
 * Before the first round and after the compaction, the bench waits for the
 * pageserver's remote-storage upload queue to drain (the deployment uploads
 * to a local directory), so a round measures the backup alone.
 *
 * `--compact`: after `--fresh-rounds` rounds on the layers as ingested,
 * wait for the compute to be quiet (no autovacuum worker, insert LSN still
 * for a few seconds) and for ingest to reach its insert LSN, force
 * compaction (L0 merge + image layers at that LSN) and run `--rounds` more.
 * Those back up at the images' LSN, the state a pageserver holds in steady
 * state (`--compacted-at-latest`: the latest LSN, with whatever the compute
 * wrote since replayed on the images; `--compacted-at-target`: the load's
 * end LSN, below the images). `--wal-stats` prints pg_waldump's record
 * statistics of the WAL written after the load and after the images.
 *
 * `--profile FILE` (run node with --experimental-websocket): CPU-profiles
 * the pageserver process during one fullbackup (the last round, or
 * `--profile-round N`) — SIGUSR1 opens its inspector on 127.0.0.1:9229,
 * the profile is taken over the DevTools protocol and written to FILE
 * (.cpuprofile, open in Chrome DevTools). Each round also prints the
 * pageserver's and the client's (this process's) CPU seconds for the
 * fullbackup and the compute's and pg_basebackup's for pg_basebackup (from
 * /proc: processes reaped by the postmaster and by this process), and the
 * ratio of CPU per byte, which a busy machine distorts far less than the
 * wall-clock figures: on two shared cores, throughput follows it.
 *
 * Runs on demand only, never in the test suite.
 */
import { performance } from "node:perf_hooks";
import { readFileSync } from "node:fs";
import { readdir, readFile, stat, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { cliJson, cliOk, lastLine, portOf, sqlAt, withRepo, type StatusJson } from "../test/cli_support.js";
import { makeTempDir, removeTempDir, runTool } from "../test/harness/tools.js";
import { fetchBackupToFile } from "../src/pageserver/backup_client.js";
import { formatLsn, parseLsn, type Lsn } from "../src/lib/lsn.js";
import { parseTenantId, parseTimelineId } from "../src/lib/id.js";

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}

const SCALE = arg("--scale", 10);
const ROUNDS = arg("--rounds", 2);
/** `--compact`: after `--fresh-rounds` rounds on the layers as ingested, force compaction and run `--rounds` more. */
const COMPACT = process.argv.includes("--compact");
const FRESH_ROUNDS = COMPACT ? arg("--fresh-rounds", 1) : ROUNDS;
/** Bound on the pageserver catching up after the load. */
const CATCHUP_TIMEOUT_MS = 3_600_000;
/** Bound on the pageserver's remote uploads draining before a round. */
const SETTLE_TIMEOUT_MS = 600_000;

const mib = (bytes: number, ms: number) => bytes / 1048576 / (ms / 1000);

/** Pages the pageserver reconstructed from WAL so far (strata_pageserver_redo_calls_total; any reader, background work included). */
async function redoCalls(httpPort: number): Promise<number> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    const m = /^strata_pageserver_redo_calls_total (\S+)$/m.exec(text);
    return m === null ? 0 : Number(m[1]);
  } catch {
    return 0;
  }
}

/** CPU seconds (user + system) the process has used so far, from /proc (0 where unavailable): the figure a loaded machine does not distort. */
function pageserverCpuSeconds(pid: number | null): number {
  if (pid === null) return 0;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return 0;
  }
}
/** CPU seconds of `pid` and its reaped children (utime + stime + cutime + cstime; "self": the children only), from /proc (0 where unavailable). */
function cpuWithChildrenSeconds(pid: number | "self"): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return ((pid === "self" ? 0 : Number(f[11]) + Number(f[12])) + Number(f[13]) + Number(f[14])) / 100;
  } catch {
    return 0;
  }
}
/** The compute's postmaster pid (its first postmaster.pid line), or null. */
async function postmasterPid(connstr: string): Promise<number | null> {
  try {
    const dir = await sqlAt(connstr, "SHOW data_directory");
    return Number((await readFile(join(dir, "postmaster.pid"), "utf8")).split("\n")[0]);
  } catch {
    return null;
  }
}
const profIdx = process.argv.indexOf("--profile");
const PROFILE_FILE = profIdx >= 0 ? process.argv[profIdx + 1] : undefined;
/** `--profile-round N`: profile round N only (default: the last round). */
const PROFILE_ROUND = arg("--profile-round", 0);
/** `--order ours-first|bb-first|alternate` (default): which of the two backups runs first in a round. */
const orderIdx = process.argv.indexOf("--order");
/**
 * `--warmup-rounds N` (default 1): unmeasured rounds (both backups, printed, left out of the
 * ratios) before the as-ingested rounds and again after the compaction. On this VM the first
 * GiB written into page-cache memory the guest has not used lately costs 2-3 s of system CPU
 * more than memory another run just freed (host-side faults: the same 1 GiB written twice in a
 * row cost 3.4 s and then 0.5 s of system time), and the compaction just claimed ~2.5 GiB of
 * fresh page cache: whichever backup runs first after it pays, whatever its own cost.
 */
const WARMUP_ROUNDS = arg("--warmup-rounds", 1);
const ORDER = orderIdx >= 0 ? process.argv[orderIdx + 1]! : "alternate";
if (!["ours-first", "bb-first", "alternate"].includes(ORDER)) throw new Error(`--order must be ours-first, bb-first or alternate, not ${ORDER}`);

/** A DevTools-protocol session with a process whose inspector SIGUSR1 opened (see header). */
async function inspect(pid: number): Promise<{ call: (method: string, params?: object) => Promise<unknown>; close: () => void }> {
  process.kill(pid, "SIGUSR1");
  let url: string | undefined;
  for (let i = 0; i < 50 && url === undefined; i++) {
    await new Promise((r) => setTimeout(r, 200));
    try {
      const list = (await (await fetch("http://127.0.0.1:9229/json/list")).json()) as Array<{ webSocketDebuggerUrl: string }>;
      url = list[0]?.webSocketDebuggerUrl;
    } catch {
      // not listening yet
    }
  }
  if (url === undefined) throw new Error("pageserver inspector did not open on 127.0.0.1:9229");
  const WS = (globalThis as unknown as { WebSocket?: new (u: string) => { onopen: unknown; onmessage: unknown; onerror: unknown; send: (s: string) => void; close: () => void } }).WebSocket;
  if (WS === undefined) throw new Error("--profile needs node --experimental-websocket");
  const ws = new WS(url);
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = reject;
  });
  let next = 1;
  const pending = new Map<number, (v: unknown) => void>();
  ws.onmessage = (ev: { data: string }) => {
    const m = JSON.parse(ev.data) as { id?: number; result?: unknown };
    if (m.id !== undefined) pending.get(m.id)?.(m.result);
  };
  return {
    call: (method, params = {}) =>
      new Promise((resolve) => {
        const id = next++;
        pending.set(id, resolve);
        ws.send(JSON.stringify({ id, method, params }));
      }),
    close: () => ws.close(),
  };
}

/** Bound on the compute becoming quiet (no autovacuum worker, no WAL written) before the compaction. */
const QUIET_TIMEOUT_MS = 900_000;
/** The compute counts as quiet once its insert LSN has not moved for this long with no autovacuum worker running. */
const QUIET_FOR_MS = 5_000;

/**
 * Waits (bounded) until the compute writes no more WAL on its own: no
 * autovacuum worker running and the insert LSN unchanged for QUIET_FOR_MS.
 * Returns that insert LSN.
 */
async function quiesce(connstr: string): Promise<Lsn> {
  const t0 = performance.now();
  let last = "";
  let since = performance.now();
  for (;;) {
    const row = await sqlAt(connstr, "SELECT pg_current_wal_insert_lsn() || ' ' || (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker')");
    const [lsnText, workers] = row.split(" ");
    if (lsnText !== last || workers !== "0") {
      last = lsnText!;
      since = performance.now();
    } else if (performance.now() - since >= QUIET_FOR_MS) {
      console.log(`compute quiet after ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      return parseLsn(last);
    }
    if (performance.now() - t0 > QUIET_TIMEOUT_MS) throw new Error(`compute still writing WAL after ${QUIET_TIMEOUT_MS} ms`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** `--wal-stats`: what the compute wrote in [from, to) (pg_waldump --stats=record on its pg_wal): the WAL a backup at `to` replays on images at `from`. */
async function printWalStats(connstr: string, from: Lsn, to: Lsn): Promise<void> {
  const dir = await sqlAt(connstr, "SHOW data_directory");
  const r = await runTool("pg_waldump", ["-p", join(dir, "pg_wal"), "-s", formatLsn(from), "-e", formatLsn(to), "--stats=record"], { timeoutMs: 120_000 });
  console.log(`WAL ${formatLsn(from)}..${formatLsn(to)}:\n${(r.stdout + r.stderr).split("\n").filter((l) => !/\s0 \(\s*0\.00\)/.test(l)).slice(0, 40).join("\n")}`);
}

await withRepo(async (repo) => {
  const main = lastLine(await cliOk(repo, ["up", "--safekeepers", "1", "--quiet"]));
  const t0 = performance.now();
  const init = await runTool("pgbench", ["-i", "-s", String(SCALE), "-q", main], { timeoutMs: CATCHUP_TIMEOUT_MS });
  if (init.code !== 0) throw new Error(init.stderr);
  console.log(`pgbench -i -s ${SCALE}: ${((performance.now() - t0) / 1000).toFixed(1)} s, database ${await sqlAt(main, "SELECT pg_size_pretty(pg_database_size('postgres'))")}`);
  const target = parseLsn(await sqlAt(main, "SELECT pg_current_wal_insert_lsn()"));
  const deadline = Date.now() + CATCHUP_TIMEOUT_MS;
  let s: StatusJson;
  for (;;) {
    s = await cliJson<StatusJson>(repo, ["status"]);
    const tl = s.tenants[0]!.timelines.find((t) => t.branch === "main")!;
    if (parseLsn(tl.last_record_lsn!) >= target) break;
    if (Date.now() > deadline) throw new Error("pageserver did not catch up");
    await new Promise((r) => setTimeout(r, 500));
  }
  const tenantId = parseTenantId(s.tenants[0]!.id);
  const timelineId = parseTimelineId(s.tenants[0]!.timelines.find((t) => t.branch === "main")!.id);
  console.log(`pageserver caught up with ${s.tenants[0]!.timelines[0]!.last_record_lsn} after ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  /** Waits (bounded) until ingest has reached `lsn`. */
  const waitForIngest = async (lsn: Lsn): Promise<void> => {
    const until = Date.now() + CATCHUP_TIMEOUT_MS;
    for (;;) {
      const st = await cliJson<StatusJson>(repo, ["status"]);
      if (parseLsn(st.tenants[0]!.timelines.find((tl) => tl.branch === "main")!.last_record_lsn!) >= lsn) return;
      if (Date.now() > until) throw new Error(`pageserver did not reach ${formatLsn(lsn)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  const out = await makeTempDir("bench-fullbackup");
  const prof = PROFILE_FILE !== undefined && s.pageserver.pid !== null ? await inspect(s.pageserver.pid) : undefined;
  const lastRound = FRESH_ROUNDS + (COMPACT ? ROUNDS : 0);
  const profileRound = PROFILE_ROUND > 0 ? PROFILE_ROUND : lastRound;
  if (prof !== undefined) await prof.call("Profiler.enable");
  try {
    const ratios: number[] = [];
    const freshRatios: number[] = [];
    const cpuRatios: number[] = [];
    // `at`: the backup LSN, or "latest" (the pageserver's last_record_lsn). Not an optional parameter:
    // a default would also replace an explicit `undefined`, which once sent every "latest" round to `target`.
    const measure = async (round: number, label: string, at: Lsn | "latest"): Promise<void> => {
      // Which runs first alternates (ORDER): on this VM, writing a GiB into page-cache memory the
      // guest has not touched for a while costs seconds of system CPU more than reusing what the
      // other run just freed, so a fixed order hands that cost to the same side every round.
      const oursFirst = ORDER === "ours-first" || (ORDER === "alternate" && round % 2 === 1);
      const ours = oursFirst ? await fullbackupRun(round, at) : undefined;
      const theirs = await pgBasebackupRun();
      report(round, label, ours ?? (await fullbackupRun(round, at)), theirs, oursFirst);
    };
    const fullbackupRun = async (round: number, at: Lsn | "latest") => {
      const tar = join(out, "full.tar");
      if (prof !== undefined && round === profileRound) {
        await prof.call("Profiler.setSamplingInterval", { interval: 500 });
        await prof.call("Profiler.start");
      }
      const cpu0 = pageserverCpuSeconds(s.pageserver.pid);
      const client0 = process.cpuUsage();
      const redo0 = await redoCalls(s.pageserver.http_port);
      const t = performance.now();
      // Phases of the fetch: first byte (the pageserver's set-up), last byte (the stream), then the file's fsync + rename.
      let firstByteMs = 0;
      let lastByteMs = 0;
      const onProgress = () => {
        lastByteMs = performance.now() - t;
        if (firstByteMs === 0) firstByteMs = lastByteMs;
      };
      const fb = await fetchBackupToFile({ host: "127.0.0.1", port: s.pageserver.pg_port, tenantId, timelineId, ...(at === "latest" ? {} : { lsn: at }), full: true, onProgress }, tar);
      const fbMs = performance.now() - t;
      const fbCpu = pageserverCpuSeconds(s.pageserver.pid) - cpu0;
      const fbClient = process.cpuUsage(client0);
      const fbClientCpu = (fbClient.user + fbClient.system) / 1e6;
      const fbRedo = (await redoCalls(s.pageserver.http_port)) - redo0;
      // the pageserver's own account of the backup (its "backup sent" log line): run buffers it had to allocate
      const sent = (await readFile(join(s.pageserver.datadir, "..", "pageserver.log"), "utf8").catch(() => "")).split("\n").filter((l) => l.includes('"backup sent"')).at(-1);
      const chunks = sent === undefined ? "?" : (/"chunks_allocated":(\d+)/.exec(sent)?.[1] ?? "?");
      await rm(tar, { force: true });
      if (prof !== undefined && round === profileRound) {
        const r = (await prof.call("Profiler.stop")) as { profile: unknown };
        await writeFile(PROFILE_FILE!, JSON.stringify(r.profile));
        prof.close();
        console.log(`pageserver CPU profile written to ${PROFILE_FILE}`);
      }
      const load = (await readFile("/proc/loadavg", "utf8").catch(() => "? ")).split(" ")[0]!;
      return { fb, fbMs, fbCpu, fbClientCpu, fbRedo, chunks, firstByteMs, lastByteMs, load };
    };
    const pgBasebackupRun = async () => {
      await sqlAt(main, "CHECKPOINT");
      const bbDir = join(out, "bb");
      // pg_basebackup's CPU: the compute's side (its walsender, reaped by the postmaster) and the client (reaped by this process)
      const pm = await postmasterPid(main);
      const bbServer0 = pm === null ? 0 : cpuWithChildrenSeconds(pm);
      const bbClient0 = cpuWithChildrenSeconds("self");
      const t = performance.now();
      const bb = await runTool("pg_basebackup", ["-h", "127.0.0.1", "-p", String(portOf(main)), "-U", "postgres", "-D", bbDir, "-Ft", "-X", "none", "--checkpoint=fast"], { timeoutMs: CATCHUP_TIMEOUT_MS });
      const bbMs = performance.now() - t;
      const bbServerCpu = pm === null ? 0 : cpuWithChildrenSeconds(pm) - bbServer0;
      const bbClientCpu = cpuWithChildrenSeconds("self") - bbClient0;
      if (bb.code !== 0) throw new Error(`pg_basebackup: ${bb.stderr}`);
      let bbBytes = 0;
      for (const f of await readdir(bbDir)) bbBytes += (await stat(join(bbDir, f))).size;
      await rm(bbDir, { recursive: true, force: true });
      return { bbBytes, bbMs, bbServerCpu, bbClientCpu };
    };
    const report = (round: number, label: string, a: Awaited<ReturnType<typeof fullbackupRun>>, b: Awaited<ReturnType<typeof pgBasebackupRun>>, oursFirst: boolean): void => {
      const { fb, fbMs, fbCpu, fbClientCpu, fbRedo, chunks, firstByteMs, lastByteMs, load } = a;
      const { bbBytes, bbMs, bbServerCpu, bbClientCpu } = b;
      const ratio = mib(fb.bytes, fbMs) / mib(bbBytes, bbMs);
      if (!label.includes("warm-up")) (label.startsWith("as ingested") ? freshRatios : ratios).push(ratio);
      // CPU per byte, pg_basebackup's over ours (> 1: the fullbackup needs less CPU per byte): what a shared, busy machine's wall clock follows
      const cpuRatio = (bbServerCpu + bbClientCpu) / bbBytes / ((fbCpu + fbClientCpu) / fb.bytes);
      if (!label.includes("warm-up")) cpuRatios.push(cpuRatio);
      console.log(
        `round ${round} (${label}, ${oursFirst ? "fullbackup first" : "pg_basebackup first"}): fullbackup ${(fb.bytes / 1048576).toFixed(1)} MiB in ${(fbMs / 1000).toFixed(2)} s = ${mib(fb.bytes, fbMs).toFixed(1)} MiB/s ` +
          `(first byte ${(firstByteMs / 1000).toFixed(2)} s, last byte ${(lastByteMs / 1000).toFixed(2)} s, fsync ${((fbMs - lastByteMs) / 1000).toFixed(2)} s; ` +
          `pageserver CPU ${fbCpu.toFixed(2)} s, client CPU ${fbClientCpu.toFixed(2)} s, pages replayed ${fbRedo}, run buffers allocated ${chunks}, load ${load}); ` +
          `pg_basebackup ${(bbBytes / 1048576).toFixed(1)} MiB in ${(bbMs / 1000).toFixed(2)} s = ${mib(bbBytes, bbMs).toFixed(1)} MiB/s ` +
          `(compute CPU ${bbServerCpu.toFixed(2)} s, client CPU ${bbClientCpu.toFixed(2)} s); ratio ${ratio.toFixed(2)}, CPU per MiB ratio ${cpuRatio.toFixed(2)}`,
      );
    };
    /**
     * Waits (bounded) until the pageserver has uploaded everything queued to remote storage:
     * a backup round then measures the backup, not the upload of the layers the load or the
     * compaction just wrote running beside it — as pg_basebackup runs after its CHECKPOINT ended.
     */
    const settle = async (): Promise<void> => {
      const t = performance.now();
      const url = `http://127.0.0.1:${s.pageserver.http_port}/v1/tenant/${s.tenants[0]!.id}/timeline/${timelineId}`;
      for (;;) {
        const detail = (await (await fetch(url)).json()) as { remote?: { queue_depth?: number } | null };
        const depth = detail.remote?.queue_depth ?? 0;
        if (depth === 0) break;
        if (performance.now() - t > SETTLE_TIMEOUT_MS) throw new Error(`remote uploads still queued (${depth}) after ${SETTLE_TIMEOUT_MS} ms`);
        await new Promise((r) => setTimeout(r, 200));
      }
      console.log(`remote uploads settled after ${((performance.now() - t) / 1000).toFixed(1)} s`);
    };
    let round = 0;
    await settle();
    for (let i = 0; i < WARMUP_ROUNDS && FRESH_ROUNDS > 0; i++) await measure(++round, "as ingested, warm-up", target);
    for (let i = 0; i < FRESH_ROUNDS; i++) await measure(++round, "as ingested", target);
    if (COMPACT) {
      // The state a pageserver holds in steady state: the compute is quiet (the load's own
      // VACUUM and any autovacuum/autoanalyze it triggered are done), ingest has reached the
      // compute's insert LSN, and compaction has merged the L0 deltas and written image layers
      // at that LSN — the pageserver's counterpart of the CHECKPOINT before pg_basebackup.
      // (Earlier runs that replayed ~36k pages "after compaction" backed up at `target` — the
      // old `measure` default parameter replaced an explicit "latest" — below images written at
      // a later LSN: round 1's CHECKPOINT and pg_basebackup write WAL after the load. The wait
      // keeps WAL the compute writes on its own, autovacuum or checkpoints, from landing between
      // the images and the backup LSN.)
      const quiet = await quiesce(main);
      await waitForIngest(quiet);
      console.log(`compute quiet at ${formatLsn(quiet)}, ingested`);
      if (process.argv.includes("--wal-stats") && quiet > target) await printWalStats(main, target, quiet);
      const t = performance.now();
      const r = await fetch(`http://127.0.0.1:${s.pageserver.http_port}/v1/tenant/${s.tenants[0]!.id}/timeline/${timelineId}/compact`, {
        method: "PUT",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ force: true }),
      });
      if (!r.ok) throw new Error(`compact: HTTP ${r.status} ${await r.text()}`);
      const compacted = (await r.json()) as { images?: { lsn?: string } };
      console.log(`forced compaction (L0 merge + image layers) took ${((performance.now() - t) / 1000).toFixed(1)} s: ${JSON.stringify(compacted).slice(0, 300)}`);
      // Default: back up at the images' LSN (an LSN the compute reached: the end of a record
      // ingest received). `--compacted-at-latest`: the latest LSN, as `strata endpoint start`
      // and pg_basebackup do (WAL the compute wrote since, if any, is replayed on the images);
      // `--compacted-at-target`: the load's end, below the images (deltas replayed).
      const imageLsn = parseLsn(compacted.images?.lsn ?? formatLsn(target));
      const at = process.argv.includes("--compacted-at-target") ? target : process.argv.includes("--compacted-at-latest") ? "latest" : imageLsn;
      console.log(`after-compaction rounds back up at ${at === "latest" ? "the latest LSN" : formatLsn(at)} (images at ${formatLsn(imageLsn)})`);
      await settle();
      for (let i = 0; i < WARMUP_ROUNDS; i++) await measure(++round, "after compaction, warm-up", at);
      for (let i = 0; i < ROUNDS; i++) {
        const before = parseLsn(await sqlAt(main, "SELECT pg_current_wal_insert_lsn()"));
        await measure(++round, "after compaction", at);
        if (process.argv.includes("--wal-stats") && before > imageLsn) await printWalStats(main, imageLsn, before);
      }
    }
    const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor((xs.length - 1) / 2)]!;
    const list = (xs: number[]) => `${xs.map((r) => r.toFixed(2)).join(", ")}${xs.length > 0 ? ` (median ${median(xs).toFixed(2)})` : ""}`;
    if (freshRatios.length > 0) console.log(`fullbackup / pg_basebackup throughput ratio, layers as ingested: ${list(freshRatios)}`);
    if (COMPACT) console.log(`fullbackup / pg_basebackup throughput ratio, after compaction (steady state): ${list(ratios)} (goal >= 1.0)`);
    console.log(`pg_basebackup / fullbackup CPU-per-byte ratio (both sides of each, measured rounds): ${list(cpuRatios)}`);
  } finally {
    await removeTempDir(out);
  }
});
