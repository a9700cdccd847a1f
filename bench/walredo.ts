/**
 * Benchmark and soak test of WAL redo through the TypeScript pool.
 *
 *   node dist/bench/walredo.js [--duration-ms N] [--repeat R] [--records 1,10] [--depth 1,8] [--processes 1,2,4]
 *                                                     throughput / latency matrix (or a part of it)
 *   node dist/bench/walredo.js --soak N [--processes P] [--depth D]
 *
 * Matrix: requests/s and p50/p99 latency (submit to reply, queueing included)
 * for single-record and 10-record reconstructions, at pipeline depths 1 and 8
 * (requests in flight per helper), with 1, 2 and 4 helpers. A reconstruction
 * is an empty heap page plus N synthetic but exact heap INSERT records (one
 * tuple each, offsets 1..N), built with strata's own WAL record encoder; the
 * first result of each shape is checked against a fresh replay, and every
 * result's length is checked.
 *
 * Soak: N single-record requests through one pool; every 10% it samples the
 * Node process (RSS, heap, open fds) and every helper (RSS as the helper
 * reports it, open fds from /proc/<pid>/fd) and finally says whether memory
 * and descriptors stayed flat: helpers' RSS and all descriptors compared
 * with the first 10% sample, Node's RSS as the peak of the second half of
 * the samples against the peak of the first (GC timing alone moves it by
 * tens of MB between samples).
 *
 * CPU per request (Node's own from process.cpuUsage, and the helpers' from
 * /proc/<pid>/stat), user and system, is printed too: on a shared machine it
 * says more than wall-clock rates. With --repeat R each case runs R times on
 * the same helpers and the line shows the best run (interference only adds).
 *
 * Runs on demand only, never in the test suite.
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { Registry } from "prom-client";
import { lsn, type Lsn } from "../src/lib/lsn.js";
import { initPage, setPageLsn } from "../src/formats/page.js";
import { encodeRecord } from "../src/formats/wal/xlog_record.js";
import { WalRedoMetrics } from "../src/walredo/metrics.js";
import { WalRedoPool } from "../src/walredo/pool.js";
import { redoRecordOf, type ApplyRequest, type RedoRecord } from "../src/walredo/protocol.js";
import { defaultWalRedoDir } from "../src/walredo/stub.js";

const REL = { spcOid: 1663, dbOid: 5, relNumber: 16384 };
/** Soak: growth allowed after the first sample (allocator noise, JIT, histogram buckets). */
const SOAK_NODE_RSS_GROWTH_LIMIT_BYTES = 32 * 1024 * 1024;
const SOAK_HELPER_RSS_GROWTH_LIMIT_KB = 2 * 1024;
/** USER_HZ on Linux. */
const CLOCK_TICKS_PER_SECOND = 100;

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

/** HEAP INSERT of one 40-byte tuple at `offnum` (xl_heap_insert + xl_heap_header + data). */
function heapInsert(at: Lsn, offnum: number): RedoRecord {
  const tupleData = new Uint8Array(16).fill(0x61);
  // xl_heap_header: t_infomask2 u16 (1 attribute), t_infomask u16 (HEAP_XMAX_INVALID), t_hoff u8 (24)
  const blockData = new Uint8Array(5 + tupleData.length);
  const dv = new DataView(blockData.buffer);
  dv.setUint16(0, 1, true);
  dv.setUint16(2, 0x0800, true);
  blockData[4] = 24;
  blockData.set(tupleData, 5);
  // xl_heap_insert: offnum u16, flags u8
  const mainData = new Uint8Array([offnum & 0xff, offnum >> 8, 0]);
  const raw = encodeRecord({ rmid: 10, info: 0x00, xid: 1000, prevLsn: lsn(0), mainData, blocks: [{ id: 0, forkNum: 0, rel: REL, blockNumber: 0, data: blockData }] });
  return redoRecordOf({ lsn: at, endLsn: lsn(at + BigInt(raw.length)), raw });
}

function makeRequest(nrecords: number): ApplyRequest {
  const base = initPage(0);
  setPageLsn(base, lsn(0x1000000));
  const records: RedoRecord[] = [];
  let at = 0x2000000n;
  for (let i = 1; i <= nrecords; i++) {
    const r = heapInsert(at as Lsn, i);
    records.push(r);
    at = r.endLsn;
  }
  return { target: { rel: REL, forkNum: 0, blockNumber: 0 }, basePage: base, records };
}

function newPool(processes: number, depth: number): WalRedoPool {
  return new WalRedoPool({
    tenantId: `bench-${processes}-${depth}`,
    dataChecksums: false,
    processes,
    pipelineDepth: depth,
    maxQueuedRequests: 100_000,
    baseDir: join(defaultWalRedoDir(), "bench"),
    metrics: new WalRedoMetrics(new Registry()),
  });
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

/** Warms every helper up: one request each, all in flight so every slot starts. */
async function warm(pool: WalRedoPool, req: ApplyRequest, processes: number): Promise<void> {
  for (let round = 0; round < 50 && pool.processes().length < processes; round++) {
    await Promise.all(Array.from({ length: processes * 64 }, () => pool.apply(req)));
  }
}

interface CpuSeconds {
  user: number;
  system: number;
}

/** CPU seconds a process has used, from /proc/<pid>/stat. */
async function cpuSeconds(pid: number): Promise<CpuSeconds> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[11], [12] are utime and stime (14th and 15th of the whole line), in clock ticks
  return { user: Number(fields[11]) / CLOCK_TICKS_PER_SECOND, system: Number(fields[12]) / CLOCK_TICKS_PER_SECOND };
}

/** CPU of all helpers together. */
async function helpersCpu(pids: readonly number[]): Promise<CpuSeconds> {
  const all = await Promise.all(pids.map(cpuSeconds));
  return { user: all.reduce((a, c) => a + c.user, 0), system: all.reduce((a, c) => a + c.system, 0) };
}

/** "total (user+system)" µs per request. */
function perRequest(userUs: number, systemUs: number): string {
  return `${(userUs + systemUs).toFixed(1).padStart(5)} (${userUs.toFixed(1)}+${systemUs.toFixed(1)})`.padEnd(19);
}

interface Measurement {
  requestsPerS: number;
  p50Ms: number;
  p99Ms: number;
  /** µs of CPU per request: Node (this process) and all helpers, user and system. */
  nodeUserUs: number;
  nodeSystemUs: number;
  helperUserUs: number;
  helperSystemUs: number;
}

/** One timed run: `depth` clients per helper, each with one request in flight. */
async function measure(pool: WalRedoPool, req: ApplyRequest, depth: number, processes: number, durationMs: number): Promise<Measurement> {
  const latencies: number[] = [];
  let done = 0;
  const pids = pool.processes().map((p) => p.pid);
  const helperCpu0 = await helpersCpu(pids);
  const nodeCpu0 = process.cpuUsage();
  const deadline = performance.now() + durationMs;
  const started = performance.now();
  const client = async () => {
    while (performance.now() < deadline) {
      const t0 = performance.now();
      const page = await pool.apply(req);
      latencies.push(performance.now() - t0);
      if (page.length !== 8192) throw new Error("short page");
      done++;
    }
  };
  await Promise.all(Array.from({ length: depth * processes }, client));
  const elapsedS = (performance.now() - started) / 1000;
  const nodeCpu = process.cpuUsage(nodeCpu0);
  const helperCpu1 = await helpersCpu(pids);
  const sorted = Float64Array.from(latencies).sort();
  return {
    requestsPerS: done / elapsedS,
    p50Ms: percentile(sorted, 0.5),
    p99Ms: percentile(sorted, 0.99),
    nodeUserUs: nodeCpu.user / done,
    nodeSystemUs: nodeCpu.system / done,
    helperUserUs: ((helperCpu1.user - helperCpu0.user) * 1e6) / done,
    helperSystemUs: ((helperCpu1.system - helperCpu0.system) * 1e6) / done,
  };
}

/**
 * One case of the matrix, `repeats` times on the same (warmed) helpers. The
 * line shows the best run — highest rate with its latencies, lowest CPU per
 * request — because on a shared machine interference only ever adds.
 */
async function runCase(nrecords: number, depth: number, processes: number, durationMs: number, repeats: number, expected: Uint8Array): Promise<string> {
  const pool = newPool(processes, depth);
  const req = makeRequest(nrecords);
  try {
    await warm(pool, req, processes);
    const first = await pool.apply(req);
    if (!Buffer.from(first).equals(Buffer.from(expected))) throw new Error("result differs from the reference replay");
    const runs: Measurement[] = [];
    for (let i = 0; i < repeats; i++) runs.push(await measure(pool, req, depth, processes, durationMs));
    const fastest = runs.reduce((a, b) => (b.requestsPerS > a.requestsPerS ? b : a));
    const leanestNode = runs.reduce((a, b) => (b.nodeUserUs + b.nodeSystemUs < a.nodeUserUs + a.nodeSystemUs ? b : a));
    const leanestHelper = runs.reduce((a, b) => (b.helperUserUs + b.helperSystemUs < a.helperUserUs + a.helperSystemUs ? b : a));
    const helpers = pool.processes().length;
    return [
      String(nrecords).padStart(7),
      String(depth).padStart(5),
      String(processes).padStart(9),
      String(helpers).padStart(7),
      Math.round(fastest.requestsPerS).toString().padStart(10),
      (fastest.p50Ms * 1000).toFixed(0).padStart(8),
      (fastest.p99Ms * 1000).toFixed(0).padStart(8),
      Math.round(fastest.requestsPerS * nrecords).toString().padStart(10),
      ` ${perRequest(leanestNode.nodeUserUs, leanestNode.nodeSystemUs)}`,
      perRequest(leanestHelper.helperUserUs, leanestHelper.helperSystemUs),
    ].join(" ");
  } finally {
    await pool.close();
  }
}

async function matrix(durationMs: number, repeats: number): Promise<void> {
  const refPool = newPool(1, 1);
  const expected = new Map<number, Uint8Array>();
  try {
    for (const n of [1, 10]) expected.set(n, await refPool.apply(makeRequest(n)));
  } finally {
    await refPool.close();
  }
  console.log(`walredo pool benchmark: ${durationMs} ms per run, ${repeats === 1 ? "one run per case" : `best of ${repeats} runs per case`}; latency = submit to reply`);
  console.log("CPU per request in µs: total (user+system); helpers' CPU from /proc/<pid>/stat (10 ms ticks), all helpers together");
  console.log("records depth processes running      req/s  p50(µs)  p99(µs)  records/s  node CPU µs/req     helpers CPU µs/req");
  const only = (name: string, all: number[]) => (arg(name) ? arg(name)!.split(",").map(Number) : all);
  for (const n of only("--records", [1, 10])) {
    for (const depth of only("--depth", [1, 8])) {
      for (const processes of only("--processes", [1, 2, 4])) {
        console.log(await runCase(n, depth, processes, durationMs, repeats, expected.get(n)!));
      }
    }
  }
}

async function openFds(pid: number | "self"): Promise<number> {
  return (await readdir(`/proc/${pid}/fd`)).length;
}

async function soak(total: number, processes: number, depth: number): Promise<void> {
  const pool = newPool(processes, depth);
  const req = makeRequest(1);
  const samples: { done: number; nodeRss: number; heap: number; nodeFds: number; helperRssKb: number[]; helperFds: number[]; helperRequests: number[] }[] = [];
  try {
    await warm(pool, req, processes);
    let done = 0;
    const step = Math.max(1, Math.floor(total / 10));
    const started = performance.now();
    let nextSampleAt = step;
    const sample = async (at: number) => {
      const stats = await pool.stats();
      const mem = process.memoryUsage();
      samples.push({
        done: at,
        nodeRss: mem.rss,
        heap: mem.heapUsed,
        nodeFds: await openFds("self"),
        helperRssKb: stats.map((s) => s.rss_kb ?? -1),
        helperFds: await Promise.all(stats.map((s) => openFds(s.pid))),
        helperRequests: stats.map((s) => s.requests ?? -1),
      });
      const s = samples[samples.length - 1]!;
      console.log(
        `${String(s.done).padStart(9)} req  node rss ${(s.nodeRss / 2 ** 20).toFixed(1)} MB heap ${(s.heap / 2 ** 20).toFixed(1)} MB fds ${s.nodeFds}  helpers rss ${s.helperRssKb.map((k) => (k / 1024).toFixed(1)).join("/")} MB fds ${s.helperFds.join("/")}`,
      );
    };
    await sample(0);
    const client = async () => {
      while (done < total) {
        done++;
        await pool.apply(req);
        if (done >= nextSampleAt && done < total) {
          const at = nextSampleAt;
          nextSampleAt += step;
          await sample(at);
        }
      }
    };
    await Promise.all(Array.from({ length: depth * processes }, client));
    const elapsedS = (performance.now() - started) / 1000;
    if (global.gc) global.gc();
    await sample(total);
    // Node's RSS swings by tens of MB with the timing of garbage collections
    // (pages and read chunks are external memory, freed only by a GC), so one
    // sample against another says little; a leak raises the peak instead.
    // Peak of the second half vs peak of the first (after the warm-up sample).
    const measured = samples.slice(1);
    const half = Math.ceil(measured.length / 2);
    const firstHalf = measured.slice(0, half);
    const secondHalf = measured.slice(half);
    const peak = (list: typeof samples) => Math.max(...list.map((x) => x.nodeRss));
    const nodeGrowth = secondHalf.length > 0 ? peak(secondHalf) - peak(firstHalf) : 0;
    const a = measured[0] ?? samples[0]!;
    const b = samples[samples.length - 1]!;
    const helperGrowth = Math.max(...b.helperRssKb.map((k, i) => k - (a.helperRssKb[i] ?? k)));
    const fdsFlat = b.nodeFds <= a.nodeFds && b.helperFds.every((f, i) => f <= (a.helperFds[i] ?? f));
    const ok = nodeGrowth < SOAK_NODE_RSS_GROWTH_LIMIT_BYTES && helperGrowth < SOAK_HELPER_RSS_GROWTH_LIMIT_KB && fdsFlat;
    console.log(
      `soak: ${total} requests in ${elapsedS.toFixed(1)} s (${Math.round(total / elapsedS)} req/s); node rss peak, second half vs first: ${(nodeGrowth / 2 ** 20).toFixed(1)} MB; helper rss since the first 10%: ${(helperGrowth / 1024).toFixed(1)} MB; fds ${fdsFlat ? "flat" : "GREW"} -> ${ok ? "FLAT" : "NOT FLAT"}`,
    );
    if (!ok) process.exitCode = 1;
  } finally {
    await pool.close();
  }
}

const soakCount = arg("--soak");
if (soakCount) {
  await soak(Number(soakCount), Number(arg("--processes") ?? 2), Number(arg("--depth") ?? 8));
} else {
  await matrix(Number(arg("--duration-ms") ?? 2000), Number(arg("--repeat") ?? 1));
}
