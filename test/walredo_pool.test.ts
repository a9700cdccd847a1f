/**
 * WalRedoPool and WalRedoManager against real helpers: lazy start and growth,
 * pipelining, back-pressure, per-request errors, recovery from killed and hung
 * helpers (retry once, alone), a request that kills every helper it touches,
 * shutdown through an AbortSignal, start-up failures, tenant isolation and
 * metrics. Fault injection uses the helper's test hooks (sleep, abort) and
 * real signals (SIGKILL, SIGSTOP).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { Registry } from "prom-client";
import { StrataError } from "../src/lib/errors.js";
import { WalRedoMetrics } from "../src/walredo/metrics.js";
import { WalRedoError, WalRedoProcessError } from "../src/walredo/process.js";
import { WalRedoManager, WalRedoPool, type WalRedoPoolOptions } from "../src/walredo/pool.js";
import { TestHookOp } from "../src/walredo/protocol.js";
import { defaultWalRedoDir } from "../src/walredo/stub.js";
import { REL, RecordLayout, corruptRecord, fpiRecord, samplePage, type SyntheticRecord } from "./walredo_fixtures.js";

const BASE_DIR = join(defaultWalRedoDir(), "pool-tests");

function newPool(opts: Partial<WalRedoPoolOptions> = {}): { pool: WalRedoPool; registry: Registry } {
  const registry = new Registry();
  const pool = new WalRedoPool({ tenantId: "t1", dataChecksums: false, baseDir: BASE_DIR, metrics: new WalRedoMetrics(registry), testHooks: true, ...opts });
  return { pool, registry };
}

async function withPool<T>(opts: Partial<WalRedoPoolOptions>, fn: (pool: WalRedoPool, registry: Registry) => Promise<T>): Promise<T> {
  const { pool, registry } = newPool(opts);
  try {
    return await fn(pool, registry);
  } finally {
    await pool.close();
  }
}

function records(n: number, seed = 0): SyntheticRecord[] {
  const layout = new RecordLayout();
  return Array.from({ length: n }, (_, i) => fpiRecord(layout, samplePage(seed + i, 1 + (i % 15)), { blockNumber: i }));
}

const applyOne = (pool: WalRedoPool, r: SyntheticRecord, i: number) => pool.apply({ target: { rel: REL, forkNum: 0, blockNumber: i }, records: [r] });

async function metric(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  const values = (m?.values ?? []) as { value: number; labels: Record<string, string | number>; metricName?: string }[];
  return values
    .filter((v) => (v.metricName === undefined || v.metricName === name || v.metricName === `${name}_count`) && Object.entries(labels).every(([k, x]) => v.labels[k] === x))
    .reduce((a, v) => a + v.value, 0);
}

test("helpers start lazily and grow only while all are busy; results are correct under load", async () => {
  await withPool({ processes: 2, pipelineDepth: 4 }, async (pool, registry) => {
    assert.equal(pool.processes().length, 0, "no helper before the first request");
    const recs = records(200);
    assert.deepEqual(await applyOne(pool, recs[0]!, 0), recs[0]!.expected);
    assert.equal(pool.processes().length, 1);
    // keep the first helper busy long enough for the second to start
    const slow = pool.testHook(TestHookOp.sleepMs, 1500);
    const pages = await Promise.all(recs.map((r, i) => applyOne(pool, r, i)));
    pages.forEach((p, i) => assert.deepEqual(p, recs[i]!.expected, `request ${i}`));
    assert.equal(pool.processes().length, 2, "a second helper under load");
    await slow;
    assert.equal(await metric(registry, "strata_walredo_requests_total", { kind: "apply", result: "ok" }), 201);
    assert.equal(await metric(registry, "strata_walredo_requests_total", { kind: "test", result: "ok" }), 1);
    assert.equal(await metric(registry, "strata_walredo_records_total"), 201);
    assert.equal(await metric(registry, "strata_walredo_processes"), 2);
    const hist = (await registry.getMetricsAsJSON()).find((x) => x.name === "strata_walredo_request_duration_seconds");
    const count = (hist?.values as { metricName?: string; value: number }[]).filter((v) => v.metricName === "strata_walredo_request_duration_seconds_count").reduce((n, v) => n + v.value, 0);
    assert.equal(count, 202);
  });
});

test("long record chains are split into chained requests", async () => {
  await withPool({ maxRequestRecordBytes: 2_000 }, async (pool) => {
    const layout = new RecordLayout();
    const chain = Array.from({ length: 6 }, (_, i) => fpiRecord(layout, samplePage(i, 20), { blockNumber: 4 }));
    const page = await pool.apply({ target: { rel: REL, forkNum: 0, blockNumber: 4 }, records: chain });
    assert.deepEqual(page, chain[5]!.expected);
    const [s] = await pool.stats();
    assert.ok(s!.requests! >= 3, `chain sent as ${s!.requests} requests`);
    assert.equal(s!.records, 6);
  });
});

test("an error reply fails only that request; the helper keeps serving", async () => {
  await withPool({}, async (pool, registry) => {
    const recs = records(3);
    const bad = pool.apply({ target: { rel: REL, forkNum: 0, blockNumber: 1 }, records: [corruptRecord(recs[1]!)] });
    const good = [applyOne(pool, recs[0]!, 0), applyOne(pool, recs[2]!, 2)];
    await assert.rejects(bad, (e: unknown) => e instanceof WalRedoError && e.code === "corrupt_data" && /incorrect CRC/.test(e.message));
    assert.deepEqual(await good[0], recs[0]!.expected);
    assert.deepEqual(await good[1], recs[2]!.expected);
    assert.equal(await metric(registry, "strata_walredo_restarts_total"), 0);
    assert.equal(await metric(registry, "strata_walredo_errors_total", { code: "corrupt_data" }), 1);
  });
});

test("a full queue rejects with 'unavailable' (back-pressure)", async () => {
  await withPool({ pipelineDepth: 1, maxQueuedRequests: 3 }, async (pool) => {
    const recs = records(5);
    const sleeping = pool.testHook(TestHookOp.sleepMs, 300);
    await new Promise((r) => setTimeout(r, 50)); // let the helper start and take it
    while (pool.processes().length === 0) await new Promise((r) => setTimeout(r, 20));
    const queued = recs.slice(0, 3).map((r, i) => applyOne(pool, r, i));
    await assert.rejects(applyOne(pool, recs[3]!, 3), (e: unknown) => e instanceof StrataError && e.code === "unavailable" && /queued requests \(limit 3\)/.test(e.message));
    await sleeping;
    const pages = await Promise.all(queued);
    pages.forEach((p, i) => assert.deepEqual(p, recs[i]!.expected));
  });
});

test("killing a helper mid-request: in-flight requests are retried once on a new helper and succeed", async () => {
  await withPool({ pipelineDepth: 8 }, async (pool, registry) => {
    await pool.stats(); // start the helper
    const pid = pool.processes()[0]!.pid;
    const recs = records(7);
    const slow = pool.testHook(TestHookOp.sleepMs, 200);
    const inFlight = recs.map((r, i) => applyOne(pool, r, i));
    assert.equal(pool.processes()[0]!.inFlight, 8);
    pool.processInSlot(0)!.kill("test: kill mid-request");
    await slow;
    const pages = await Promise.all(inFlight);
    pages.forEach((p, i) => assert.deepEqual(p, recs[i]!.expected));
    assert.notEqual(pool.processes()[0]!.pid, pid, "a new helper took over");
    assert.equal(await metric(registry, "strata_walredo_restarts_total", { reason: "died" }), 1);
  });
});

test("a hung helper (SIGSTOP) is killed after the request timeout and its requests are retried", async () => {
  await withPool({ pipelineDepth: 4, requestTimeoutMs: 1500 }, async (pool, registry) => {
    await pool.stats();
    const proc = pool.processInSlot(0)!;
    proc.signal("SIGSTOP");
    const recs = records(4);
    const started = Date.now();
    const pages = await Promise.all(recs.map((r, i) => applyOne(pool, r, i)));
    pages.forEach((p, i) => assert.deepEqual(p, recs[i]!.expected));
    assert.ok(Date.now() - started >= 1400, "waited for the timeout");
    assert.equal(proc.alive, false);
    assert.equal(await metric(registry, "strata_walredo_restarts_total", { reason: "timeout" }), 1);
  });
});

test("a request that kills every helper fails after one retry; requests beside it succeed", async () => {
  await withPool({ pipelineDepth: 8 }, async (pool, registry) => {
    const recs = records(6);
    const before = recs.slice(0, 3).map((r, i) => applyOne(pool, r, i));
    const poison = pool.testHook(TestHookOp.abort);
    const after = recs.slice(3).map((r, i) => applyOne(pool, r, i + 3));
    const err = await poison.then(
      () => assert.fail("poison request succeeded"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof WalRedoProcessError, String(err));
    assert.match(err.message, /the helper ended twice while running it/);
    assert.match(err.message, /SIGABRT/);
    const pages = await Promise.all([...before, ...after]);
    pages.forEach((p, i) => assert.deepEqual(p, recs[i]!.expected));
    assert.equal(await metric(registry, "strata_walredo_restarts_total"), 2);
    assert.equal(await metric(registry, "strata_walredo_requests_total", { kind: "test", result: "process_failure" }), 1);
    // the pool still works
    assert.deepEqual(await applyOne(pool, recs[0]!, 0), recs[0]!.expected);
  });
});

test("aborting the shutdown signal: queued requests are cancelled, in-flight ones finish, helpers exit, stubs are removed", async () => {
  const ac = new AbortController();
  const { pool } = newPool({ pipelineDepth: 1, signal: ac.signal, processes: 1 });
  const recs = records(3);
  const slow = pool.testHook(TestHookOp.sleepMs, 300);
  while (pool.processes().length === 0) await new Promise((r) => setTimeout(r, 10));
  const stubs = (await readdir(join(BASE_DIR, "stubs"))).length;
  const queued = Promise.allSettled(recs.map((r, i) => applyOne(pool, r, i)));
  ac.abort();
  await slow; // in flight: completes
  for (const q of await queued) {
    assert.equal(q.status, "rejected");
    if (q.status === "rejected") assert.ok(q.reason instanceof StrataError && q.reason.code === "cancelled", String(q.reason));
  }
  await pool.close();
  assert.equal(pool.processes().length, 0);
  assert.equal((await readdir(join(BASE_DIR, "stubs"))).length, stubs - 1, "the pool's stub directory is gone");
  await assert.rejects(applyOne(pool, recs[0]!, 0), (e: unknown) => e instanceof StrataError && e.code === "cancelled");
});

test("a helper that cannot start fails requests promptly with the reason", async () => {
  await withPool({ extensionPath: "/nonexistent/strata_walredo.so", requestTimeoutMs: 20_000 }, async (pool) => {
    const started = Date.now();
    const recs = records(1);
    await assert.rejects(applyOne(pool, recs[0]!, 0), (e: unknown) => e instanceof StrataError && /no helper could be started.*nonexistent/s.test(e.message));
    assert.ok(Date.now() - started < 10_000, "failed without waiting for the request timeout");
  });
});

test("tenants never share helpers; a tenant's checksum setting is fixed", async () => {
  const registry = new Registry();
  const mgr = new WalRedoManager({ baseDir: BASE_DIR, metrics: new WalRedoMetrics(registry), processes: 2, pipelineDepth: 2 });
  try {
    const a = mgr.pool("tenant-a", { dataChecksums: false });
    const b = mgr.pool("tenant-b", { dataChecksums: true });
    assert.equal(mgr.pool("tenant-a", { dataChecksums: false }), a);
    assert.throws(() => mgr.pool("tenant-b", { dataChecksums: false }), /data checksums/);
    const recs = records(40);
    await Promise.all(recs.flatMap((r, i) => [applyOne(a, r, i), applyOne(b, r, i)]));
    const pidsA = new Set(a.processes().map((p) => p.pid));
    const pidsB = new Set(b.processes().map((p) => p.pid));
    assert.ok(pidsA.size >= 1 && pidsB.size >= 1);
    for (const pid of pidsA) assert.ok(!pidsB.has(pid), `helper ${pid} served both tenants`);
    const statsB = await b.stats();
    assert.ok(statsB.every((s) => pidsB.has(s.pid)));
    // checksums follow the tenant: b's pages come back stamped
    const pageB = await b.apply({ target: { rel: REL, forkNum: 0, blockNumber: 0 }, records: [recs[0]!], setChecksum: true });
    assert.notEqual(new DataView(pageB.buffer, pageB.byteOffset).getUint16(8, true), 0);
    await mgr.detach("tenant-a");
    assert.equal(a.processes().length, 0);
  } finally {
    await mgr.close();
  }
  assert.ok(existsSync(BASE_DIR));
});
