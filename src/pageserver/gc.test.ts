import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateTenantId, generateTimelineId } from "../lib/id.js";
import { formatLsn, lsn, type Lsn } from "../lib/lsn.js";
import { createRegistry } from "../lib/metrics.js";
import { silentLogger } from "../lib/logging.js";
import { TaskManager } from "../lib/tasks.js";
import { WalRedoManager } from "../walredo/pool.js";
import { parseTenantConfig, type TenantConfig } from "./config.js";
import { computeGcCutoff, gcTimeline, LSN_TIME_MAX_SAMPLES, LsnTimeHistory, pitrCutoffFromCommits } from "./gc.js";
import { internalContext } from "./getpage.js";
import { LAST_COMMIT_KEY, relBlockKey, type Key } from "./key.js";
import { encodeLastCommit } from "./lsn_by_timestamp.js";
import { ImageLayerWriter } from "./layers/image_layer.js";
import { PersistentLayer } from "./layers/layer.js";
import { FULL_KEY_RANGE } from "./layers/range.js";
import { Rng } from "./layers/test_support.js";
import { PageserverMetrics } from "./metrics.js";
import { MaterializedPageCache } from "./page_cache.js";
import { Timeline, type TimelineDeps } from "./timeline.js";

const REL = { spcOid: 1663, dbOid: 5, relNumber: 16384, fork: 0 };
const ctx = internalContext();
type History = Map<Key, Array<{ lsn: Lsn; bytes: Uint8Array }>>;

function makeDeps(conf: TenantConfig): TimelineDeps {
  const redo = new WalRedoManager();
  const tenantId = generateTenantId();
  return {
    tenantId,
    conf: () => conf,
    tasks: new TaskManager(),
    log: silentLogger(),
    metrics: new PageserverMetrics(createRegistry({ defaultMetrics: false })),
    pageCache: new MaterializedPageCache(256),
    redoPool: (s) => redo.pool(tenantId, s),
  };
}

async function ingest(tl: Timeline, rng: Rng, n: number, blocks: number, history: History): Promise<void> {
  for (let i = 0; i < n; i++) {
    const end = (tl.lastRecordLsn + 8n * BigInt(1 + rng.int(200))) as Lsn;
    const key = relBlockKey(REL, rng.int(blocks));
    const bytes = rng.bytes(8192);
    await tl.put([{ key, lsn: end, value: { kind: "image", bytes } }]);
    tl.finishRecord(end, tl.lastRecordLsn);
    let h = history.get(key);
    if (h === undefined) history.set(key, (h = []));
    h.push({ lsn: end, bytes });
  }
}

function expectedAt(history: History, key: Key, at: Lsn): Uint8Array | undefined {
  let best: Uint8Array | undefined;
  for (const v of history.get(key) ?? []) if (v.lsn <= at) best = v.bytes;
  return best;
}

/** Flushes, then writes an image layer of every key over the whole key space at disk_consistent_lsn. */
async function checkpointWithImage(tl: Timeline, history: History): Promise<Lsn> {
  await tl.checkpoint();
  const at = tl.diskConsistentLsn;
  const w = await ImageLayerWriter.create({ dir: tl.dir, keyRange: FULL_KEY_RANGE, lsn: at });
  for (const key of [...history.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))) {
    const v = await tl.get(key, at, ctx);
    if (v !== undefined) await w.put(key, v);
  }
  const done = await w.finish();
  tl.replaceHistoricLayers([], [{ layer: new PersistentLayer(tl.dir, done.desc), sizeBytes: done.header.fileSizeBytes }]);
  return at;
}

test("LsnTimeHistory: newest sample at or before a time; rate-limited; bounded", () => {
  const h = new LsnTimeHistory();
  assert.equal(h.lsnAt(1_000_000), undefined);
  h.record(10_000, lsn(0x100));
  h.record(10_500, lsn(0x180)); // within the interval: dropped
  h.record(11_000, lsn(0x200));
  h.record(15_000, lsn(0x300));
  assert.equal(h.size, 3);
  assert.equal(h.lsnAt(9_999), undefined);
  assert.equal(h.lsnAt(10_000), lsn(0x100));
  assert.equal(h.lsnAt(12_000), lsn(0x200));
  assert.equal(h.lsnAt(99_000), lsn(0x300));
  const big = new LsnTimeHistory();
  for (let i = 0; i < 10 * LSN_TIME_MAX_SAMPLES; i++) big.record(i * 1000, lsn(BigInt(i * 8)));
  assert.ok(big.size <= LSN_TIME_MAX_SAMPLES + 1, `${big.size} samples`);
  // Thinning only ever answers an older (smaller) LSN, never a newer one.
  for (const t of [5_000, 1_234_000, 9_000_000]) {
    const got = big.lsnAt(t)!;
    assert.ok(got <= BigInt((t / 1000) * 8), `at ${t}: ${got}`);
  }
  assert.equal(big.lsnAt((10 * LSN_TIME_MAX_SAMPLES - 1) * 1000), lsn(BigInt((10 * LSN_TIME_MAX_SAMPLES - 1) * 8)));
});

test("GC cutoff: min of horizon and PITR terms; unknown PITR time keeps everything; never moves back", async () => {
  const root = await mkdtemp(join(tmpdir(), "strata-gc-"));
  try {
    const conf = parseTenantConfig({ gcHorizonBytes: 0x1000, pitrIntervalMs: 60_000 });
    const id = generateTimelineId();
    const tl = await Timeline.create(makeDeps(conf), join(root, id), id, { startLsn: lsn(0x10_0000) });
    tl.finishRecord(lsn(0x10_8000));
    // Samples are taken at Date.now(): nothing is 60 s old yet, so PITR keeps everything.
    const now = Date.now();
    let c = computeGcCutoff(tl, now);
    assert.equal(c.horizonCutoff, lsn(0x10_7000));
    assert.equal(c.pitrCutoff, undefined);
    assert.equal(c.cutoff, 0n);
    // A minute later the first sample is old enough: the PITR term is the sample's LSN, below the horizon term.
    c = computeGcCutoff(tl, now + 61_000);
    assert.equal(c.pitrCutoff, lsn(0x10_8000));
    assert.equal(c.cutoff, lsn(0x10_7000));
    conf.pitrIntervalMs = 0;
    conf.gcHorizonBytes = 0x10_0000_0000;
    c = computeGcCutoff(tl, now);
    assert.equal(c.cutoff, 0n, "a horizon longer than the history keeps everything");
    await tl.setGcCutoff(lsn(0x10_2000));
    assert.equal(computeGcCutoff(tl, now).cutoff, lsn(0x10_2000), "never below the persisted cutoff");
    await tl.shutdown();
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test("without (time, LSN) samples that old (a restart), the PITR term comes from commit timestamps", async () => {
  const root = await mkdtemp(join(tmpdir(), "strata-gc-"));
  try {
    const conf = parseTenantConfig({ gcHorizonBytes: 0x100, pitrIntervalMs: 60_000 });
    const id = generateTimelineId();
    const tl = await Timeline.create(makeDeps(conf), join(root, id), id, { startLsn: lsn(0x10_0000) });
    const now = Date.now();
    const pgUs = (ms: number) => (BigInt(ms) - 946_684_800_000n) * 1000n;
    for (const [at, agoMs, xid] of [[0x10_1000, 120_000, 10], [0x10_4000, 90_000, 11], [0x10_7000, 10_000, 12]] as const) {
      await tl.put([{ key: LAST_COMMIT_KEY, lsn: lsn(at), value: { kind: "image", bytes: encodeLastCommit({ timestampUs: pgUs(now - agoMs), endLsn: lsn(at), xid }) } }]);
      tl.finishRecord(lsn(at));
    }
    tl.finishRecord(lsn(0x10_8000));
    assert.equal(computeGcCutoff(tl, now).pitrCutoff, undefined, "no sample is a minute old");
    assert.equal(await pitrCutoffFromCommits(tl, now - 60_000), lsn(0x10_4000), "the last commit a minute ago");
    assert.equal(await pitrCutoffFromCommits(tl, now - 5_000), lsn(0x10_7000), "all commits older: the newest");
    assert.equal(await pitrCutoffFromCommits(tl, now - 200_000), undefined, "before every commit: keep everything");
    const r = await gcTimeline(tl, [], { nowMs: now });
    assert.equal(r.cutoff, "0/104000", "min(horizon 0/107F00, commits 0/104000)");
    assert.equal(tl.latestGcCutoffLsn, lsn(0x10_4000));
    conf.pitrIntervalMs = 200_000;
    assert.equal((await gcTimeline(tl, [], { nowMs: now })).cutoff, "0/104000", "no commit that old: the cutoff stays");
    await tl.shutdown();
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test("GC removes covered layers wholly below the cutoff, keeps reads at/above it and a child's branch point, refuses reads below", async () => {
  const root = await mkdtemp(join(tmpdir(), "strata-gc-"));
  try {
    const conf = parseTenantConfig({ checkpointDistanceBytes: 64 * 1024, waitLsnTimeoutMs: 2000, pitrIntervalMs: 0, gcPeriodMs: 0 });
    const deps = makeDeps(conf);
    const id = generateTimelineId();
    const dir = join(root, id);
    const tl = await Timeline.create(deps, dir, id, { startLsn: lsn(0x100_0000) });
    const rng = new Rng(5);
    const history: History = new Map();
    const BLOCKS = 30;

    // Phase 1: deltas, a branch point inside them, an image at L1.
    await ingest(tl, rng, 20, BLOCKS, history);
    const branchAt = tl.lastRecordLsn;
    await ingest(tl, rng, 60, BLOCKS, history);
    const l1 = await checkpointWithImage(tl, history);
    // Phase 2: more deltas, image at L2.
    await ingest(tl, rng, 80, BLOCKS, history);
    const l2 = await checkpointWithImage(tl, history);
    // Phase 3: deltas above L2.
    await ingest(tl, rng, 80, BLOCKS, history);
    await tl.checkpoint();
    const last = tl.lastRecordLsn;

    const childId = generateTimelineId();
    const child = await Timeline.create(deps, join(root, childId), childId, { ancestor: { timeline: tl, lsn: branchAt } });

    // Cutoff a little above L2 via the horizon: last - horizon = L2 + 0x100.
    const cutoff = (l2 + 0x100n) as Lsn;
    conf.gcHorizonBytes = Number(last - cutoff);

    // Reads at and above the cutoff before GC (every version LSN >= cutoff, plus the cutoff and the end).
    const probeLsns = new Set<Lsn>([cutoff, last]);
    for (const vs of history.values()) for (const v of vs) if (v.lsn >= cutoff) probeLsns.add(v.lsn);
    const before = new Map<string, Uint8Array | undefined>();
    for (const at of probeLsns) for (const key of history.keys()) before.set(`${key}@${at}`, await tl.get(key, at, ctx));

    const layersBefore = [...tl.layers.historicLayers()];
    // What the rules say must go: the image at L1 (L2 covers it), and the deltas holding nothing newer
    // than L2 that start above the branch point (those at or below it serve the child's reads).
    const expectRemoved = layersBefore
      .filter((l) => (l.desc.kind === "image" ? l.desc.lsnRange.start === l1 : l.desc.lsnRange.end - 1n <= l2 && l.desc.lsnRange.start > branchAt))
      .map((l) => (l as PersistentLayer).fileName)
      .sort();
    assert.ok(expectRemoved.length >= 3, `expected several removable layers, got ${expectRemoved.length}`);
    const keptBelowBranch = layersBefore.filter((l) => l.desc.kind === "delta" && l.desc.lsnRange.start <= branchAt);
    assert.ok(keptBelowBranch.length >= 1);

    const res = await gcTimeline(tl, [branchAt]);
    assert.equal(res.cutoff, formatLsn(cutoff));
    assert.deepEqual(res.removedFiles, expectRemoved);
    assert.equal(res.layersRemoved, expectRemoved.length);
    assert.ok(res.bytesRemoved > 0);
    assert.equal(tl.latestGcCutoffLsn, cutoff);
    const files = await readdir(dir);
    for (const f of expectRemoved) assert.ok(!files.includes(f), `${f} deleted`);
    assert.equal(files.filter((f) => f !== "metadata").length, layersBefore.length - expectRemoved.length);

    // Same bytes at and above the cutoff.
    for (const at of probeLsns) for (const key of history.keys()) assert.deepEqual(await tl.get(key, at, ctx), before.get(`${key}@${at}`), `${key}@${at}`);
    // And they equal the reference history.
    for (const key of history.keys()) assert.deepEqual(await tl.get(key, cutoff, ctx), expectedAt(history, key, cutoff));
    // Below the cutoff: refused with a clear error.
    await assert.rejects(tl.get(relBlockKey(REL, 0), (cutoff - 8n) as Lsn, ctx), /below the GC cutoff/);
    await assert.rejects(tl.get(relBlockKey(REL, 0), l1, ctx), /below the GC cutoff/);
    // A branch below the cutoff is refused too.
    const late = generateTimelineId();
    await assert.rejects(Timeline.create(deps, join(root, late), late, { ancestor: { timeline: tl, lsn: l1 } }), /below its GC cutoff/);
    // The child's branch point stays readable.
    for (const key of history.keys()) assert.deepEqual(await child.get(key, branchAt, ctx), expectedAt(history, key, branchAt), `child ${key}`);

    // A second pass removes nothing more; the cutoff survives a restart.
    const again = await gcTimeline(tl, [branchAt]);
    assert.equal(again.layersRemoved, 0);
    await child.shutdown();
    await tl.shutdown();
    const re = await Timeline.load(makeDeps(conf), dir, id, () => undefined);
    assert.equal(re.latestGcCutoffLsn, cutoff);
    for (const key of history.keys()) assert.deepEqual(await re.get(key, last, ctx), expectedAt(history, key, last));
    await assert.rejects(re.get(relBlockKey(REL, 0), branchAt, ctx), /below the GC cutoff/);
    await re.shutdown();
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test("GC without children drops everything below the newest covering image", async () => {
  const root = await mkdtemp(join(tmpdir(), "strata-gc-"));
  try {
    const conf = parseTenantConfig({ checkpointDistanceBytes: 64 * 1024, waitLsnTimeoutMs: 2000, pitrIntervalMs: 0 });
    const id = generateTimelineId();
    const tl = await Timeline.create(makeDeps(conf), join(root, id), id, { startLsn: lsn(0x100_0000) });
    const rng = new Rng(9);
    const history: History = new Map();
    await ingest(tl, rng, 60, 20, history);
    const img = await checkpointWithImage(tl, history);
    await ingest(tl, rng, 30, 20, history);
    await tl.checkpoint();
    // Cutoff just above the image: the delta frozen at the image's LSN ends at img + 1, so it is wholly below.
    conf.gcHorizonBytes = Number(tl.lastRecordLsn - img) - 8;
    const res = await gcTimeline(tl, []);
    const left = [...tl.layers.historicLayers()];
    assert.ok(res.layersRemoved >= 2);
    // Only the image and the deltas above it remain.
    for (const l of left) assert.ok(l.desc.kind === "image" ? l.desc.lsnRange.start === img : l.desc.lsnRange.end - 1n > img, JSON.stringify(l.desc.lsnRange, (_k, v: unknown) => (typeof v === "bigint" ? v.toString(16) : v)));
    for (const key of history.keys()) assert.deepEqual(await tl.get(key, tl.lastRecordLsn, ctx), expectedAt(history, key, tl.lastRecordLsn));
    await tl.shutdown();
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test("GC through the HTTP trigger (PUT .../do_gc) and the tenant's background task", async () => {
  const { TenantManager } = await import("./tenant_manager.js");
  const { buildHttpApi } = await import("./http_api.js");
  const root = await mkdtemp(join(tmpdir(), "strata-gc-"));
  const tasks = new TaskManager();
  const registry = createRegistry({ defaultMetrics: false });
  const tm = new TenantManager({ dataDir: root, tasks, log: silentLogger(), metrics: new PageserverMetrics(registry), redo: new WalRedoManager(), pageCachePages: 64 });
  const app = buildHttpApi(
    { tenants: tm, timelineReady: () => undefined, timelineGone: async () => undefined, walReceiverStatus: () => undefined, importDatadir: async () => ({ lsn: lsn(0) }) },
    { log: silentLogger(), registry },
  );
  try {
    await tm.loadAll();
    const t = await tm.createTenant(generateTenantId(), { checkpointDistanceBytes: 64 * 1024, pitrIntervalMs: 0, gcPeriodMs: 0, waitLsnTimeoutMs: 2000 });
    t.activate(); // as the API does at creation: starts the (idle, gcPeriodMs = 0) GC task
    const tl = await t.createTimeline(generateTimelineId());
    const rng = new Rng(11);
    const history: History = new Map();
    await ingest(tl, rng, 50, 20, history);
    const img = await checkpointWithImage(tl, history);
    await ingest(tl, rng, 30, 20, history);
    await tl.checkpoint();
    const base = `/v1/tenant/${t.tenantId}/timeline/${tl.timelineId}`;
    const patch = await app.inject({ method: "PATCH", url: `/v1/tenant/${t.tenantId}/config`, payload: { gcHorizonBytes: Number(tl.lastRecordLsn - img) - 8 } });
    assert.equal(patch.statusCode, 200, patch.body);
    const layers = tl.layers.historicCount;
    const res = await app.inject({ method: "PUT", url: `${base}/do_gc` });
    assert.equal(res.statusCode, 200, res.body);
    const body = JSON.parse(res.body) as { cutoff: string; layersRemoved: number; layersTotal: number };
    assert.equal(body.cutoff, formatLsn(img + 8n));
    assert.equal(body.layersTotal, layers);
    assert.ok(body.layersRemoved >= 2, res.body);
    const detail = JSON.parse((await app.inject({ method: "GET", url: base })).body) as { latest_gc_cutoff_lsn: string };
    assert.equal(detail.latest_gc_cutoff_lsn, formatLsn(img + 8n));
    assert.equal((await app.inject({ method: "PUT", url: `/v1/tenant/${t.tenantId}/timeline/${generateTimelineId()}/do_gc` })).statusCode, 404);

    // Background: more history with a new image, then a short period makes the task collect it.
    await ingest(tl, rng, 30, 20, history);
    const img2 = await checkpointWithImage(tl, history);
    await ingest(tl, rng, 10, 20, history);
    await tl.checkpoint();
    await t.updateConfig({ gcHorizonBytes: Number(tl.lastRecordLsn - img2) - 8, gcPeriodMs: 100 });
    const deadline = Date.now() + 10_000;
    while (tl.latestGcCutoffLsn !== img2 + 8n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(tl.latestGcCutoffLsn, img2 + 8n, "the background task advanced the cutoff");
    for (const key of history.keys()) assert.deepEqual(await tl.get(key, tl.lastRecordLsn, ctx), expectedAt(history, key, tl.lastRecordLsn));
  } finally {
    await app.close();
    await tm.shutdown();
    await tasks.close(5000);
    await rm(root, { recursive: true, force: true });
  }
});
