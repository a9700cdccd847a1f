/**
 * Benchmark: strata's WAL decoder against pg_waldump on the same >= 256 MB of
 * real pgbench WAL.
 *
 *   node dist/bench/wal_decode.js [--mb N] [--cache DIR] [--regenerate] [--runs N]
 *
 * The WAL sample is generated once with a harness PostgreSQL server (pgbench
 * init at scale 10, a checkpoint so full-page images appear, then pgbench
 * runs until the target volume is written; progress printed) and cached as
 * segment files plus a `sample.json` manifest (default cache:
 * $STRATA_BENCH_CACHE or /tmp/strata-bench-cache/wal_decode). Timed:
 *
 * * strata, in memory: WalStreamDecoder over segments already read into RAM
 *   (decoding alone, every record fully decoded: blocks, images, data);
 * * strata, from files: WalFileReader over the directory (I/O included, like
 *   pg_waldump);
 * * pg_waldump over the same segments to /dev/null, and with --stats.
 *
 * Prints MB/s, records/s and the ratios. Runs on demand only, never in the
 * test suite.
 */
import { spawn } from "node:child_process";
import { copyFile, mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { startPostgres } from "../test/harness/pg_server.js";
import { PG_BIN_DIR } from "../test/harness/tools.js";
import { formatLsn, parseLsn, segmentNumber, segmentStart, walFileName, type Lsn } from "../src/lib/lsn.js";
import { WalFileReader } from "../src/formats/wal/wal_files.js";
import { WalStreamDecoder } from "../src/formats/wal/wal_stream_decoder.js";
import { WalDecodeError } from "../src/formats/wal/xlog_record.js";

interface Sample {
  startLsn: string;
  endLsn: string;
  walSegSizeBytes: number;
  segments: string[];
}

/** Bound on one pg_waldump run over the sample. */
const WALDUMP_TIMEOUT_MS = 600_000;

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function log(msg: string): void {
  process.stdout.write(msg + "\n");
}

async function generate(dir: string, targetBytes: number): Promise<Sample> {
  log(`generating a ${Math.round(targetBytes / 1e6)} MB WAL sample in ${dir} (pgbench on a temporary server)…`);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const pg = await startPostgres({
    walCompression: "off",
    settings: { wal_keep_size: "4GB", max_wal_size: "8GB", min_wal_size: "1GB", checkpoint_timeout: "1h" },
  });
  try {
    const startLsn = await pg.currentWalLsn();
    log(`  start LSN ${formatLsn(startLsn)}; pgbench -i -s 10`);
    await pg.pgbench(["-i", "-s", "10", "-q"], { timeoutMs: 600_000 });
    await pg.checkpoint();
    for (let round = 1; ; round++) {
      const now = await pg.currentWalLsn();
      const written = Number(now - startLsn);
      log(`  ${(written / 1e6).toFixed(0)} MB of WAL written`);
      if (written >= targetBytes) break;
      if (round > 200) throw new Error("pgbench does not produce WAL fast enough");
      await pg.pgbench(["-n", "-c", "4", "-j", "2", "-t", "3000"], { timeoutMs: 600_000 });
      if (round % 3 === 0) await pg.checkpoint(); // new full-page images, like a real server's checkpoints
    }
    const endLsn = await pg.currentWalLsn();
    await pg.stop();
    const segSize = 16 * 1024 * 1024;
    const names: string[] = [];
    for (let seg = segmentNumber(startLsn, segSize); seg <= segmentNumber(endLsn, segSize); seg++) {
      const name = walFileName(1, seg, segSize);
      await copyFile(join(pg.walDir, name), join(dir, name));
      names.push(name);
    }
    const sample: Sample = { startLsn: formatLsn(segmentStart(segmentNumber(startLsn, segSize), segSize)), endLsn: formatLsn(endLsn), walSegSizeBytes: segSize, segments: names };
    await writeFile(join(dir, "sample.json"), JSON.stringify(sample, null, 2));
    log(`  cached ${names.length} segments`);
    return sample;
  } finally {
    await pg.destroy();
  }
}

interface Timed<T> {
  value: T;
  /** Wall-clock time. */
  ms: number;
  /** CPU time of this process (all threads: JS, GC helpers, I/O). */
  cpuMs: number;
}

function time<T>(fn: () => T): Timed<T> {
  const c = process.cpuUsage();
  const t = process.hrtime.bigint();
  const value = fn();
  const u = process.cpuUsage(c);
  return { value, ms: Number(process.hrtime.bigint() - t) / 1e6, cpuMs: (u.user + u.system) / 1000 };
}

async function timeAsync<T>(fn: () => Promise<T>): Promise<Timed<T>> {
  const c = process.cpuUsage();
  const t = process.hrtime.bigint();
  const value = await fn();
  const u = process.cpuUsage(c);
  return { value, ms: Number(process.hrtime.bigint() - t) / 1e6, cpuMs: (u.user + u.system) / 1000 };
}

function decodeInMemory(segments: Uint8Array[], start: Lsn, segSize: number): { records: number; bytes: number } {
  const d = new WalStreamDecoder(start, { walSegSizeBytes: segSize });
  let records = 0;
  let bytes = 0;
  try {
    for (const seg of segments) {
      d.feed(seg);
      for (let r = d.next(); r !== undefined; r = d.next()) {
        records++;
        bytes += r.totalLength;
      }
    }
  } catch (e) {
    if (!(e instanceof WalDecodeError && e.endOfWal)) throw e;
  }
  return { records, bytes };
}

/**
 * Runs pg_waldump with its output to /dev/null under bash, whose `times`
 * builtin then reports the child's user and system CPU time. Wall time is
 * measured around it.
 */
function runWaldump(args: string[]): Promise<{ ms: number; cpuMs: number; code: number }> {
  return new Promise((resolve, reject) => {
    const t = process.hrtime.bigint();
    const script = `"$0" "$@" > /dev/null 2>&1; rc=$?; times; exit $rc`;
    const child = spawn("bash", ["-c", script, join(PG_BIN_DIR, "pg_waldump"), ...args], { stdio: ["ignore", "pipe", "ignore"] });
    let out = "";
    child.stdout.on("data", (b: Buffer) => (out += b.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), WALDUMP_TIMEOUT_MS);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      const ms = Number(process.hrtime.bigint() - t) / 1e6;
      // Second line of `times`: children's user and system time, e.g. "0m0.512s 0m0.041s".
      const line = out.trim().split("\n")[1] ?? "";
      const secs = [...line.matchAll(/(\d+)m([\d.]+)s/g)].map((m) => Number(m[1]) * 60 + Number(m[2]));
      resolve({ ms, cpuMs: (secs.reduce((a, b) => a + b, 0) || NaN) * 1000, code: code ?? -1 });
    });
  });
}

/** The fastest wall time and the smallest CPU time over several runs. */
function best<T extends { ms: number; cpuMs: number }>(xs: T[]): T {
  const first = xs[0]!;
  return { ...first, ms: Math.min(...xs.map((x) => x.ms)), cpuMs: Math.min(...xs.map((x) => x.cpuMs)) };
}

async function main(): Promise<void> {
  const targetMb = Number(arg("--mb") ?? "256");
  const runs = Number(arg("--runs") ?? "3");
  const dir = arg("--cache") ?? join(process.env.STRATA_BENCH_CACHE ?? "/tmp/strata-bench-cache", "wal_decode");
  let sample: Sample | undefined;
  if (!process.argv.includes("--regenerate") && existsSync(join(dir, "sample.json"))) {
    sample = JSON.parse(await readFile(join(dir, "sample.json"), "utf8")) as Sample;
    const present = new Set(await readdir(dir));
    if (!sample.segments.every((s) => present.has(s)) || sample.segments.length * sample.walSegSizeBytes < targetMb * 1e6) sample = undefined;
    else log(`reusing the cached WAL sample in ${dir} (${sample.segments.length} segments)`);
  }
  sample ??= await generate(dir, targetMb * 1e6);
  const start = parseLsn(sample.startLsn);
  const segSize = sample.walSegSizeBytes;
  const walBytes = Number(parseLsn(sample.endLsn) - start);
  log(`sample: ${formatLsn(start)} .. ${sample.endLsn} = ${(walBytes / 1e6).toFixed(1)} MB of WAL in ${sample.segments.length} segments`);

  const segments: Uint8Array[] = [];
  for (const s of sample.segments) segments.push(new Uint8Array(await readFile(join(dir, s))));

  const mem = [];
  for (let i = 0; i < runs; i++) mem.push(time(() => decodeInMemory(segments, start, segSize)));
  const m = best(mem);
  const files = [];
  for (let i = 0; i < runs; i++) {
    files.push(
      await timeAsync(async () => {
        const reader = await WalFileReader.open(dir, { start });
        let n = 0;
        for await (const batch of reader.batches()) n += batch.length;
        return n;
      }),
    );
  }
  const f = best(files);
  const dumps = [];
  for (let i = 0; i < runs; i++) dumps.push(await runWaldump(["-p", dir, "-s", formatLsn(start)]));
  const wd = best(dumps);
  const stats = [];
  for (let i = 0; i < runs; i++) stats.push(await runWaldump(["--stats", "-p", dir, "-s", formatLsn(start)]));
  const ws = best(stats);

  const mbps = (ms: number): string => (walBytes / 1e6 / (ms / 1000)).toFixed(0).padStart(6);
  const row = (label: string, r: { ms: number; cpuMs: number }): string =>
    `${label.padEnd(31)} wall ${r.ms.toFixed(0).padStart(6)} ms ${mbps(r.ms)} MB/s   cpu ${r.cpuMs.toFixed(0).padStart(6)} ms ${mbps(r.cpuMs)} MB/s`;
  const recs = m.value.records;
  log("");
  log(`records: ${recs} (${(m.value.bytes / 1e6).toFixed(1)} MB of record bytes; ${f.value} via WalFileReader)`);
  log(row("strata decoder, in memory", m) + `   ${((recs / m.cpuMs) * 1000).toFixed(0)} records/cpu-s`);
  log(row("strata WalFileReader (files)", f));
  log(row("pg_waldump > /dev/null", wd) + `   (exit ${wd.code}: it reports the end of WAL as an error)`);
  log(row("pg_waldump --stats", ws));
  log(`strata (files) vs pg_waldump > /dev/null:  ${(wd.ms / f.ms).toFixed(2)}x by wall time, ${(wd.cpuMs / f.cpuMs).toFixed(2)}x by CPU time`);
  log(`strata (files) vs pg_waldump --stats:      ${(ws.ms / f.ms).toFixed(2)}x by wall time, ${(ws.cpuMs / f.cpuMs).toFixed(2)}x by CPU time`);
  log(`(best of ${runs} runs each; above 1x means strata is faster. On a shared machine trust CPU time over wall time.)`);
}

await main();
