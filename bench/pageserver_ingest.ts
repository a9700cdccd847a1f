/**
 * Ingest benchmark of issue 5: the WAL rate the pageserver sustains on a
 * pgbench-generated WAL stream, next to the replay rate of an unmodified
 * PostgreSQL 15 hot standby fed the same WAL, in the same run.
 *
 *   node dist/bench/pageserver_ingest.js [--scale 10] [--transactions 20000] [--rounds 1] [--warmup 1]
 *        [--only pageserver|standby] [--keep-wal DIR] [--profile FILE] [--trace] [--checkpoint-distance-mb N] [--standby-in-process]
 *
 * (`--only` runs one contender, e.g. under `node --cpu-prof`. `--profile FILE`
 * writes a V8 CPU profile (.cpuprofile) of exactly the pageserver's timed
 * window of the last round, taken through node:inspector, so start-up,
 * module loading and the import are not in it. `--keep-wal DIR`
 * saves the generated base copy and WAL in DIR, or reuses them when DIR
 * already holds them, so repeated runs while tuning skip the pgbench phase;
 * the scale and transaction flags are then ignored. `--checkpoint-distance-mb`
 * overrides the tenant's checkpoint distance, for tuning experiments; by
 * default the pageserver runs with the tenant defaults. `--trace` prints
 * the layer pipeline (frozen / open layers, disk_consistent_lsn) as it
 * changes during ingest. The CPU time of the
 * main thread and of the flush worker thread is printed next to the
 * process's, each split into system time and minor page faults: ingest on
 * the one and layer flushes on the other run side by side, so on a quiet
 * machine the busier of the two is the critical path, and on this VM
 * system time is mostly first touches of memory, which user time does not
 * show.)
 *
 * Set-up: a primary is initdb'd and stopped cleanly; a copy of that data
 * directory is the common starting point of both contenders (the pageserver
 * imports it at the end of the shutdown checkpoint; the standby starts from
 * it). The primary then runs `pgbench -i -s <scale>` and `pgbench -c 4 -t …`
 * and is stopped; its pg_wal holds the WAL both must apply.
 *
 *   - standby: the base copy with standby.signal, hot_standby = on, the WAL
 *     segments placed in its pg_wal (recovery reads them from there, no
 *     restore_command process per segment). Timed from `pg_ctl start` until
 *     pg_last_wal_replay_lsn() reaches the primary's final shutdown
 *     checkpoint; the start-up cost is part of it (it is small next to the
 *     replay and the pageserver's time also includes opening the timeline).
 *   - pageserver: a timeline importing the base copy, then timed: read the
 *     segment files, decode (WalStreamDecoder), ingest every record
 *     (WalIngest), and flush everything to layer files (checkpoint) — the
 *     pageserver's equivalent of having applied the WAL durably.
 *
 * The contenders run one after the other, never concurrently (two cores).
 * Prints MB/s for both and the ratio pageserver / standby (goal >= 1.0).
 * A second, separately labelled figure and ratio give the time at which the
 * pageserver's last_record_lsn reached the end (every record ingested and
 * readable, the flush of the last layers still running): the equivalent of
 * the standby's replay LSN. The goal stays defined on the first figure.
 * Both sides run with the harness's fsync = off for PostgreSQL; the
 * pageserver fsyncs its layer files as in production, so the ratio is if
 * anything unfavourable to the pageserver.
 *
 * Fairness of the method (each point was measured on the test VM):
 *   - The standby runs in a helper process (this script with
 *     --standby-helper, started before the first round), not in this one.
 *     Its set-up and tear-down spawn processes (cp, chown, pg_ctl),
 *     and a fork of this process write-protects every page this process
 *     has written: afterwards each first write to such a page takes a
 *     copy-on-write fault. The pageserver's memory kept between rounds
 *     (the flush worker's buffers, the row arrays, V8's heap) thus cost
 *     ~15k faults, ~0.3 s of system CPU, in the pageserver round after each
 *     standby round — a cost of the benchmark's harness, not of ingest (a
 *     pageserver does not fork per WAL burst). The standby's timing is
 *     unchanged: it is measured inside the helper exactly as before.
 *     (`--standby-in-process` runs it in this process as before, to show
 *     the effect: compare the pageserver's faults and system time.)
 *   - Unmeasured warm-up rounds (`--warmup`, default 1) of both contenders
 *     come first: the pageserver is a long-running process and compiles its
 *     ingest and flush code once per process (V8's optimizing compiler, and
 *     the flush worker thread's start-up, ~0.3 s of CPU each), not per WAL
 *     burst; the standby's binaries and the WAL enter the page cache. The
 *     warm-up figures are printed, marked as not counted.
 *   - The order alternates: odd counted rounds run the standby first, even
 *     ones the pageserver, so neither always finds the page cache the
 *     other just freed. A summary gives the median and every round's ratios.
 */
import { appendFile, cp, mkdir, open, readFile, readdir, rm, writeFile, type FileHandle } from "node:fs/promises";
import { Session } from "node:inspector/promises";
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync, writeSync } from "node:fs";
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseControlFile } from "../src/formats/pg_control.js";
import { WalStreamDecoder } from "../src/formats/wal/wal_stream_decoder.js";
import type { DecodedRecord } from "../src/formats/wal/decoded_record.js";
import { generateTenantId, generateTimelineId } from "../src/lib/id.js";
import { formatLsn, lsnAlign, parseLsn, segmentNumber, segmentOffset, walFileName, type Lsn } from "../src/lib/lsn.js";
import { createLogger } from "../src/lib/logging.js";
import { createRegistry } from "../src/lib/metrics.js";
import { defaultPageserverConfig } from "../src/pageserver/config.js";
import { internalContext } from "../src/pageserver/getpage.js";
import { importDatadir } from "../src/pageserver/import_datadir.js";
import { Pageserver } from "../src/pageserver/pageserver.js";
import { WalIngest } from "../src/pageserver/walingest.js";
import { PgClient } from "../src/wire/client.js";
import { PgServer, startPostgres } from "../test/harness/pg_server.js";
import { freePort } from "../test/harness/ports.js";
import { makeTempDir, pgUser, runProgram } from "../test/harness/tools.js";
import { readWal } from "../test/pageserver_support.js";

function flag(name: string, dflt: number): number {
  const args = process.argv.slice(2);
  const i = args.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = Number(args[i + 1]);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`--${name} needs a positive number, got ${args[i + 1]}`);
  return v;
}

/** Like flag() but 0 is allowed. */
function flagOrZero(name: string): number {
  const args = process.argv.slice(2);
  const v = Number(args[args.indexOf(`--${name}`) + 1]);
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${name} needs a number >= 0, got ${args[args.indexOf(`--${name}`) + 1]}`);
  return v;
}

const scale = flag("scale", 10);
const transactions = flag("transactions", 20_000);
const rounds = flag("rounds", 1);
/** Unmeasured rounds of both contenders before the counted ones (header: why). */
const warmupRounds = process.argv.includes("--warmup") ? Math.floor(flagOrZero("warmup")) : 1;
const keepIdx = process.argv.indexOf("--keep-wal");
const keepDir = keepIdx >= 0 ? process.argv[keepIdx + 1] : undefined;
if (keepIdx >= 0 && keepDir === undefined) throw new Error("--keep-wal needs a directory");
const onlyIdx = process.argv.indexOf("--only");
const only = onlyIdx >= 0 ? process.argv[onlyIdx + 1] : undefined;
if (only !== undefined && only !== "pageserver" && only !== "standby") throw new Error(`--only takes pageserver or standby, got ${only}`);
const cdIdx = process.argv.indexOf("--checkpoint-distance-mb");
/** Tenant checkpoint distance override (tuning experiments); default: the tenant default. */
const checkpointDistanceMb = cdIdx >= 0 ? flag("checkpoint-distance-mb", 256) : undefined;
const profileIdx = process.argv.indexOf("--profile");
const profileFile = profileIdx >= 0 ? process.argv[profileIdx + 1] : undefined;
if (profileIdx >= 0 && profileFile === undefined) throw new Error("--profile needs a file name");
/** Poll interval of the standby's replay position: small next to a replay of seconds. */
const REPLAY_POLL_MS = 20;
/** `--trace`: print the layer pipeline's state (frozen / open layers, disk_consistent_lsn) whenever it changes during ingest. */
const TRACE = process.argv.includes("--trace");
/** WAL read size of the pageserver contender: about what a WAL receiver's messages add up to between yields. */
const READ_CHUNK_BYTES = 1024 * 1024;
/** Bound on one standby replay. */
const REPLAY_TIMEOUT_MS = 600_000;

/** USER_HZ of Linux /proc times: 100 on every architecture Node runs on. */
const CLOCK_TICKS_PER_SECOND = 100;

/** CPU seconds of one thread, split: user (JavaScript, memcpy, CRC) and system (the kernel: page faults, page cache, fsync). */
interface ThreadCpu {
  user: number;
  sys: number;
  /** Minor page faults: first touches of memory (fresh or handed back to the host), the usual cause of system time here. */
  faults: number;
  /** Seconds on a CPU from /proc's schedstat (nanosecond resolution; user + sys come in 10 ms ticks). */
  onCpu: number;
}

/**
 * CPU seconds of every thread of this process, by thread id (Linux /proc;
 * empty elsewhere). The difference of two readings tells how the ingest's
 * CPU splits between the main thread (ingest: with the flush on a worker
 * thread, its CPU is the critical path on a quiet machine, and unlike
 * wall-clock time it does not depend on what else the shared machine runs),
 * the flush worker (the busiest other thread during ingest) and the rest
 * (libuv's file I/O pool, GC helpers). System time is reported apart: on
 * this VM writing into page-cache memory the guest has not touched recently
 * costs seconds of system CPU per GiB, which user time does not show.
 */
function threadCpuSeconds(): Map<number, ThreadCpu> {
  const out = new Map<number, ThreadCpu>();
  try {
    for (const tid of readdirSync("/proc/self/task")) {
      try {
        const stat = readFileSync(`/proc/self/task/${tid}/stat`, "utf8");
        // Fields after the ")" that ends the command name: state is field 3, utime 14, stime 15.
        const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        // schedstat's first field: nanoseconds on a CPU (exact, where stat counts 10 ms ticks)
        const onCpuNs = Number(readFileSync(`/proc/self/task/${tid}/schedstat`, "utf8").split(" ")[0]);
        out.set(Number(tid), { user: Number(f[11]) / CLOCK_TICKS_PER_SECOND, sys: Number(f[12]) / CLOCK_TICKS_PER_SECOND, faults: Number(f[7]), onCpu: onCpuNs / 1e9 });
      } catch {
        // the thread exited meanwhile
      }
    }
  } catch {
    // not Linux
  }
  return out;
}

interface ThreadSplit {
  main: ThreadCpu | undefined;
  /** The busiest thread other than the main one: the flush worker. */
  worker: ThreadCpu;
  /** All other threads together. */
  rest: ThreadCpu;
}

/** From two threadCpuSeconds readings: main thread, busiest other thread, all others together. */
function splitThreadCpu(before: Map<number, ThreadCpu>, after: Map<number, ThreadCpu>): ThreadSplit {
  const used: ThreadCpu[] = [];
  let main: ThreadCpu | undefined;
  for (const [tid, t] of after) {
    const b = before.get(tid);
    const d = { user: t.user - (b?.user ?? 0), sys: t.sys - (b?.sys ?? 0), faults: t.faults - (b?.faults ?? 0), onCpu: t.onCpu - (b?.onCpu ?? 0) };
    if (tid === process.pid) main = d;
    else used.push(d);
  }
  used.sort((a, b) => b.onCpu - a.onCpu);
  const rest = { user: 0, sys: 0, faults: 0, onCpu: 0 };
  for (const t of used.slice(1)) {
    rest.user += t.user;
    rest.sys += t.sys;
    rest.faults += t.faults;
    rest.onCpu += t.onCpu;
  }
  return { main, worker: used[0] ?? { user: 0, sys: 0, faults: 0, onCpu: 0 }, rest };
}

/** "0.572 s (sys 0.12, 3.1k faults)": on-CPU time, then the system share (ticks) and minor faults. */
function fmtCpu(t: ThreadCpu): string {
  return `${t.onCpu.toFixed(3)} s (sys ${t.sys.toFixed(2)}, ${(t.faults / 1000).toFixed(1)}k faults)`;
}

async function copyAsIs(from: string, to: string): Promise<void> {
  // cp -a keeps the owner (the PostgreSQL user when we run as root) and modes.
  const r = await runProgram("/bin/cp", ["-a", from, to]);
  if (r.code !== 0) throw new Error(`cp -a ${from} ${to} failed: ${r.stderr}`);
}

/**
 * CPU seconds of the standby's startup process (the one that replays WAL:
 * the critical path of the standby, as the main thread is the pageserver's)
 * and of all its server processes, from /proc (undefined elsewhere).
 */
function standbyCpuSeconds(dataDir: string): { startup: number; startupSys: number; all: number } | undefined {
  try {
    const postmaster = Number(readFileSync(join(dataDir, "postmaster.pid"), "utf8").split("\n")[0]);
    const sysOf = (stat: string): number => Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[12]) / CLOCK_TICKS_PER_SECOND;
    const cpuOf = (stat: string): number => {
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS_PER_SECOND;
    };
    let all = cpuOf(readFileSync(`/proc/${postmaster}/stat`, "utf8"));
    let startup = 0;
    let startupSys = 0;
    for (const pid of readdirSync("/proc")) {
      if (!/^[0-9]+$/.test(pid)) continue;
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
        // Field 4 (ppid) is the second after the command name.
        if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) !== postmaster) continue;
        const cpu = cpuOf(stat);
        all += cpu;
        if (readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("startup")) {
          startup += cpu;
          startupSys += sysOf(stat);
        }
      } catch {
        // exited meanwhile
      }
    }
    return { startup, startupSys, all };
  } catch {
    return undefined;
  }
}

async function standbyReplay(baseDir: string, walDir: string, endLsn: Lsn): Promise<{ ms: number; cpu: { startup: number; startupSys: number; all: number } | undefined }> {
  const dir = await makeTempDir("standby");
  const dataDir = join(dir, "data");
  await copyAsIs(baseDir, dataDir);
  for (const name of await readdir(walDir)) {
    if (/^[0-9A-F]{24}$/.test(name)) await copyAsIs(join(walDir, name), join(dataDir, "pg_wal", name));
  }
  await writeFile(join(dataDir, "standby.signal"), "");
  await appendFile(join(dataDir, "postgresql.conf"), "\n# bench: standby replaying pg_wal\nhot_standby = on\nprimary_conninfo = ''\nrestore_command = ''\n");
  const user = pgUser();
  if (user) await runProgram("/bin/chown", ["-R", `${user.uid}:${user.gid}`, dataDir]);
  const standby = new PgServer(dir, dataDir, await freePort());
  try {
    const t0 = performance.now();
    await standby.start();
    // One connection for the polling (a psql process per poll would compete for the two cores).
    const client = await PgClient.connect({ host: standby.host, port: standby.port, user: "postgres" });
    try {
      const deadline = Date.now() + REPLAY_TIMEOUT_MS;
      for (;;) {
        const [res] = await client.simpleQuery("SELECT pg_last_wal_replay_lsn()");
        const replayed = parseLsn(res!.rows[0]![0]!);
        if (replayed >= endLsn) break;
        if (Date.now() > deadline) throw new Error(`standby replay stuck at ${formatLsn(replayed)}, want ${formatLsn(endLsn)}`);
        await new Promise((r) => setTimeout(r, REPLAY_POLL_MS));
      }
      const ms = performance.now() - t0;
      return { ms, cpu: standbyCpuSeconds(dataDir) };
    } finally {
      await client.close();
    }
  } finally {
    await standby.destroy();
  }
}

interface PageserverResult {
  ms: number; readableMs: number; cpuMs: number; sysMs: number; threads: ThreadSplit; flushMs: number; records: number; layers: number;
  frozenAtEnd: number; pendingWalMb: number;
}

async function pageserverIngest(
  baseDir: string,
  walDir: string,
  importLsn: Lsn,
  endLsn: Lsn,
  profile?: Session,
): Promise<PageserverResult> {
  const dataDir = await makeTempDir("psingest");
  const config = { ...defaultPageserverConfig(dataDir), listenPgPort: 0, listenHttpPort: 0 };
  const ps = await Pageserver.start({ config, log: createLogger({ component: "bench", level: "warn" }), registry: createRegistry({ defaultMetrics: false }) });
  try {
    const tenant = await ps.tenants.createTenant(
      generateTenantId(),
      checkpointDistanceMb === undefined ? undefined : { checkpointDistanceBytes: Math.round(checkpointDistanceMb * 1024 * 1024) },
    );
    const tl = await tenant.createTimeline(generateTimelineId());
    await importDatadir(baseDir, importLsn, tl);
    const ctx = internalContext();
    if (profile !== undefined) await profile.post("Profiler.start");
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    const threads0 = threadCpuSeconds();
    const ingest = new WalIngest(tl, tl, { startLsn: tl.lastRecordLsn });
    const decoder = new WalStreamDecoder(importLsn, { recycleRecordBuffers: true }); // as the WAL receiver does
    let records = 0;
    let seg = segmentNumber(importLsn);
    let offset = segmentOffset(importLsn);
    const names = new Set(await readdir(walDir));
    // Segments are read in READ_CHUNK_BYTES pieces, as a WAL receiver gets
    // the stream in messages, with one read ahead: the next piece is read
    // (by the thread pool) while this one is decoded and ingested, as WAL
    // keeps arriving on a receiver's socket. Three buffers take turns: a
    // fresh buffer per piece would mostly measure first-touch page faults. A
    // buffer is refilled only when the decoder no longer holds bytes of it
    // (it keeps views of what it was fed): all that is still buffered must
    // lie in the two pieces fed last, else a fresh buffer is used.
    const ring = [Buffer.allocUnsafe(READ_CHUNK_BYTES), Buffer.allocUnsafe(READ_CHUNK_BYTES), Buffer.allocUnsafe(READ_CHUNK_BYTES)];
    let turn = 0;
    let fedLast = 0;
    let fedBefore = 0;
    let fh: FileHandle | undefined;
    const pickBuffer = (): Buffer => {
      const buf = ring[turn++ % ring.length]!;
      return decoder.bufferedBytes > fedLast + fedBefore ? Buffer.allocUnsafe(READ_CHUNK_BYTES) : buf;
    };
    /** Reads the next piece of WAL into `buf` (0 bytes: no more segments). One call in flight at a time. */
    const readNext = async (buf: Buffer): Promise<{ buf: Buffer; n: number }> => {
      for (;;) {
        if (fh === undefined) {
          const name = walFileName(1, seg);
          if (!names.has(name)) return { buf, n: 0 };
          fh = await open(join(walDir, name), "r");
        }
        const { bytesRead } = await fh.read(buf, 0, buf.length, offset);
        if (bytesRead > 0) {
          offset += bytesRead;
          return { buf, n: bytesRead };
        }
        await fh.close();
        fh = undefined;
        seg++;
        offset = 0;
      }
    };
    let ahead = readNext(pickBuffer());
    let lastSig = "";
    let readWaitMs = 0;
    try {
      outer: for (;;) {
        const tw = TRACE ? performance.now() : 0;
        const { buf, n } = await ahead;
        if (TRACE) {
          const w = performance.now() - tw;
          readWaitMs += w;
          if (w > 2) console.log(`    read wait ${w.toFixed(1)} ms at ${(tw - t0).toFixed(0)} ms`);
        }
        if (n === 0) break;
        if (TRACE) {
          const g = tl.gaugeSource();
          const sig = `${g.layerCounts.frozen}/${g.layerCounts.open} dc=${formatLsn(g.diskConsistentLsn)}`;
          if (sig !== lastSig) console.log(`  t=${(performance.now() - t0).toFixed(0)} ms lsn=${formatLsn(g.lastRecordLsn)} frozen/open=${sig}`);
          lastSig = sig;
        }
        decoder.feed(buf.subarray(0, n));
        fedBefore = fedLast;
        fedLast = n;
        ahead = readNext(pickBuffer());
        for (;;) {
          let r: DecodedRecord | undefined;
          try {
            r = decoder.next();
          } catch (e) {
            if ((e as { endOfWal?: boolean }).endOfWal === true) break outer;
            throw e;
          }
          if (r === undefined) break;
          if (r.lsn > endLsn) break outer;
          const pending = ingest.ingestRecord(r, ctx);
          if (pending !== undefined) await pending;
          records++;
        }
      }
    } finally {
      await ahead.catch(() => undefined); // the read ahead past the end
      await fh?.close();
    }
    const tFlush = performance.now();
    if (TRACE) console.log(`  ingest done at ${(tFlush - t0).toFixed(0)} ms; waited ${readWaitMs.toFixed(0)} ms for WAL reads`);
    // What the final flush has left to do: frozen layers still queued, and WAL not yet in layer files.
    const atEnd = tl.gaugeSource();
    const pendingWalMb = Number(atEnd.lastRecordLsn - atEnd.diskConsistentLsn) / 1e6;
    await tl.checkpoint();
    const tEnd = performance.now();
    const ms = tEnd - t0;
    const cpu = process.cpuUsage(cpu0);
    const threadSplit = splitThreadCpu(threads0, threadCpuSeconds());
    if (profile !== undefined) {
      const { profile: p } = await profile.post("Profiler.stop");
      await writeFile(profileFile!, JSON.stringify(p));
    }
    if (tl.lastRecordLsn <= endLsn) throw new Error(`pageserver ingested up to ${formatLsn(tl.lastRecordLsn)}, want past ${formatLsn(endLsn)}`);
    return {
      ms, readableMs: tFlush - t0, cpuMs: (cpu.user + cpu.system) / 1000, sysMs: cpu.system / 1000, threads: threadSplit,
      flushMs: tEnd - tFlush, records, layers: tl.layerInfos().length, frozenAtEnd: atEnd.layerCounts.frozen, pendingWalMb,
    };
  } finally {
    await ps.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

/** The flag that turns this script into the standby helper process (header: why the standby runs in its own process). */
const STANDBY_HELPER_FLAG = "--standby-helper";
/** File descriptor of the helper's replies (stdout stays free for whatever the harness prints). */
const HELPER_REPLY_FD = 3;
/** Bound on the helper's answer: one replay plus its set-up (copies, start, stop). */
const HELPER_REPLY_TIMEOUT_MS = REPLAY_TIMEOUT_MS + 120_000;

type StandbyResult = Awaited<ReturnType<typeof standbyReplay>>;
type HelperReply = ({ ok: true } & StandbyResult) | { ok: false; error: string };

/**
 * The helper process's loop: one replay request per line on stdin
 * ({ base, wal, endLsn }), one JSON reply per line on HELPER_REPLY_FD.
 */
async function runStandbyHelper(): Promise<void> {
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line.trim() === "") continue;
    const req = JSON.parse(line) as { base: string; wal: string; endLsn: string };
    let reply: HelperReply;
    try {
      reply = { ok: true, ...(await standbyReplay(req.base, req.wal, parseLsn(req.endLsn))) };
    } catch (e) {
      reply = { ok: false, error: (e as Error).stack ?? String(e) };
    }
    writeSync(HELPER_REPLY_FD, `${JSON.stringify(reply)}\n`);
  }
}

/**
 * The standby contender, run by a helper process started before the first
 * round (header: the copies, pg_ctl and client of the standby fork
 * processes; forked from this process, every page this process had written
 * would take a copy-on-write fault afterwards, which the pageserver's next
 * round would pay for).
 */
class StandbyHelper {
  private readonly replies: AsyncIterator<string>;

  private constructor(private readonly child: ChildProcess) {
    const out = child.stdio[HELPER_REPLY_FD] as Readable;
    this.replies = createInterface({ input: out })[Symbol.asyncIterator]();
  }

  static start(): StandbyHelper {
    const child = spawn(process.execPath, [process.argv[1]!, STANDBY_HELPER_FLAG], { stdio: ["pipe", "inherit", "inherit", "pipe"] });
    return new StandbyHelper(child);
  }

  async replay(base: string, wal: string, endLsn: Lsn): Promise<StandbyResult> {
    this.child.stdin!.write(`${JSON.stringify({ base, wal, endLsn: formatLsn(endLsn) })}\n`);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`standby helper gave no answer in ${HELPER_REPLY_TIMEOUT_MS} ms`)), HELPER_REPLY_TIMEOUT_MS);
    });
    try {
      const next = await Promise.race([this.replies.next(), timeout]);
      if (next.done === true) throw new Error("standby helper exited");
      const reply = JSON.parse(next.value) as HelperReply;
      if (!reply.ok) throw new Error(`standby helper: ${reply.error}`);
      return { ms: reply.ms, cpu: reply.cpu };
    } finally {
      clearTimeout(timer);
    }
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.child.stdin!.end();
    await exited;
  }
}

/** The standby contender run in this process (`--standby-in-process`: the method before the helper, for comparison). */
const inProcessStandby = {
  replay: standbyReplay,
  stop: async (): Promise<void> => undefined,
};

function median(v: readonly number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

interface Workload {
  readonly base: string;
  readonly walCopy: string;
  readonly importLsn: Lsn;
  readonly endLsn: Lsn;
}

/** Runs the primary, pgbench and leaves the common base copy and the WAL in `work`. */
async function generateWorkload(work: string): Promise<Workload> {
  const pg = await startPostgres({ settings: { max_wal_size: "8GB", checkpoint_timeout: "1h", wal_keep_size: "8GB", autovacuum: false } });
  try {
    await pg.stop("fast");
    const cf = parseControlFile(new Uint8Array(await readFile(join(pg.dataDir, "global", "pg_control"))));
    const first = await readWal(pg.walDir, cf.checkPoint, (cf.checkPoint + 1n) as Lsn, 1);
    const importLsn = lsnAlign(first[0]!.endLsn, 8);
    const base = join(work, "base");
    await copyAsIs(pg.dataDir, base);
    await pg.start();
    const tg = performance.now();
    await pg.pgbench(["-i", "-s", String(scale), "-q"], { timeoutMs: 1_800_000 });
    await pg.pgbench(["-c", "4", "-j", "2", "-t", String(Math.ceil(transactions / 4)), "-n"], { timeoutMs: 1_800_000 });
    await pg.stop("fast");
    const cf2 = parseControlFile(new Uint8Array(await readFile(join(pg.dataDir, "global", "pg_control"))));
    const endLsn = cf2.checkPoint;
    console.log(`workload: pgbench -s ${scale}, ${transactions} transactions, generated in ${((performance.now() - tg) / 1000).toFixed(1)} s`);
    const walCopy = join(work, "wal");
    await cp(pg.walDir, walCopy, { recursive: true });
    return { base, walCopy, importLsn, endLsn };
  } finally {
    await pg.destroy();
  }
}

const KEPT_META = "workload.json";

async function main(): Promise<void> {
  if (keepDir !== undefined) await mkdir(keepDir, { recursive: true });
  const work = keepDir ?? (await makeTempDir("ingestbench"));
  try {
    let w: Workload;
    const kept = keepDir === undefined ? undefined : await readFile(join(keepDir, KEPT_META), "utf8").catch(() => undefined);
    if (kept !== undefined) {
      const m = JSON.parse(kept) as { importLsn: string; endLsn: string };
      w = { base: join(work, "base"), walCopy: join(work, "wal"), importLsn: parseLsn(m.importLsn), endLsn: parseLsn(m.endLsn) };
      console.log(`workload: reused from ${work}`);
    } else {
      w = await generateWorkload(work);
      if (keepDir !== undefined) await writeFile(join(keepDir, KEPT_META), JSON.stringify({ importLsn: formatLsn(w.importLsn), endLsn: formatLsn(w.endLsn) }));
    }
    const { base, walCopy, importLsn, endLsn } = w;
    const walMb = Number(endLsn - importLsn) / 1e6;
    console.log(`WAL: ${walMb.toFixed(1)} MB (${formatLsn(importLsn)}..${formatLsn(endLsn)})`);

    const helper = only === "pageserver" ? undefined : process.argv.includes("--standby-in-process") ? inProcessStandby : StandbyHelper.start();
    try {
      const durable: number[] = [];
      const readable: number[] = [];
      const total = warmupRounds + rounds;
      for (let i = 1; i <= total; i++) {
        const warm = i <= warmupRounds;
        const round = warm ? `warm-up ${i}` : `round ${i - warmupRounds}`;
        // Odd rounds: standby first; even rounds: pageserver first (header: fairness).
        const standbyFirst = (i - warmupRounds) % 2 === 1 || warm;
        let sbRate: number | undefined;
        let ps: PageserverResult | undefined;
        const runStandby = async (): Promise<void> => {
          if (helper === undefined) return;
          const sb = await helper.replay(base, walCopy, endLsn);
          sbRate = walMb / (sb.ms / 1000);
          console.log(
            `${round}: hot standby replay: ${(sb.ms / 1000).toFixed(2)} s = ${sbRate.toFixed(1)} MB/s (start-up included` +
              `${sb.cpu === undefined ? "" : `; CPU: startup process ${sb.cpu.startup.toFixed(2)} s (sys ${sb.cpu.startupSys.toFixed(2)}), all server processes ${sb.cpu.all.toFixed(2)} s`})`,
          );
        };
        const runPageserver = async (): Promise<void> => {
          if (only === "standby") return;
          let session: Session | undefined;
          if (profileFile !== undefined && i === total) {
            session = new Session();
            session.connect();
            await session.post("Profiler.enable");
          }
          ps = await pageserverIngest(base, walCopy, importLsn, endLsn, session);
          session?.disconnect();
          const rate = walMb / (ps.ms / 1000);
          console.log(
            `${round}: pageserver ingest: ${(ps.ms / 1000).toFixed(2)} s = ${rate.toFixed(1)} MB/s, ${(ps.records / (ps.ms / 1000)).toFixed(0)} records/s, ` +
              `${ps.layers} layer files (read + decode + ingest + flush; final flush ${(ps.flushMs / 1000).toFixed(2)} s ` +
              `for ${ps.pendingWalMb.toFixed(1)} MB of WAL in ${ps.frozenAtEnd} frozen + the open layer; ` +
              `process CPU ${(ps.cpuMs / 1000).toFixed(2)} s (sys ${(ps.sysMs / 1000).toFixed(2)}) all threads` +
              `${ps.threads.main === undefined ? "" : `, main thread ${fmtCpu(ps.threads.main)}, flush worker ${fmtCpu(ps.threads.worker)}, other threads ${fmtCpu(ps.threads.rest)}`}: ` +
              `the figures to compare on a busy machine)`,
          );
          console.log(
            `${round}: pageserver readable (second figure): last_record_lsn at the end after ${(ps.readableMs / 1000).toFixed(2)} s = ${(walMb / (ps.readableMs / 1000)).toFixed(1)} MB/s ` +
              `(every record ingested and served, not yet all in layer files: what the standby's replay LSN means)`,
          );
        };
        if (standbyFirst) {
          await runStandby();
          await runPageserver();
        } else {
          await runPageserver();
          await runStandby();
        }
        if (sbRate !== undefined && ps !== undefined) {
          const r = walMb / (ps.ms / 1000) / sbRate;
          const rr = walMb / (ps.readableMs / 1000) / sbRate;
          const note = warm ? " (warm-up: not counted)" : "";
          console.log(`${round}: ratio pageserver / standby = ${r.toFixed(2)} (durable in layer files; goal >= 1.0)${note}`);
          console.log(`${round}: ratio readable / standby = ${rr.toFixed(2)} (second figure: last_record_lsn, like the standby's replay LSN)${note}`);
          if (!warm) {
            durable.push(r);
            readable.push(rr);
          }
        }
      }
      if (durable.length > 0) {
        const fmt = (v: number[]): string => `median ${median(v).toFixed(2)} (${v.map((x) => x.toFixed(2)).join(", ")})`;
        console.log(`summary over ${durable.length} rounds: ratio pageserver / standby ${fmt(durable)}; readable / standby ${fmt(readable)}`);
      }
    } finally {
      await helper?.stop();
    }
  } finally {
    if (keepDir === undefined) await rm(work, { recursive: true, force: true });
  }
}

if (process.argv.includes(STANDBY_HELPER_FLAG)) await runStandbyHelper();
else await main();
