/**
 * A Timeline with remote storage (local-directory backend), without
 * PostgreSQL: flushes upload layers and indexes; the disk-usage eviction
 * policy evicts the least recently read layers and reads download them
 * again; a request context that forbids downloads is refused; a timeline
 * loaded from the remote index alone (attach into an empty directory)
 * serves every version; GC's deletions go through the queue.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StrataError } from "../../lib/errors.js";
import { generateTenantId, generateTimelineId, type TenantId } from "../../lib/id.js";
import { lsn, type Lsn } from "../../lib/lsn.js";
import { createRegistry } from "../../lib/metrics.js";
import { silentLogger } from "../../lib/logging.js";
import { requestContext, TaskManager } from "../../lib/tasks.js";
import { LocalFsStorage } from "../../remote_storage/local_fs.js";
import { WalRedoManager } from "../../walredo/pool.js";
import { parseTenantConfig } from "../config.js";
import { internalContext } from "../getpage.js";
import { relBlockKey, type Key } from "../key.js";
import { PersistentLayer } from "../layers/layer.js";
import { Rng } from "../layers/test_support.js";
import { PageserverMetrics } from "../metrics.js";
import { MaterializedPageCache } from "../page_cache.js";
import { Timeline, type TimelineDeps } from "../timeline.js";
import { diskUsageEvictionPass } from "./eviction.js";
import { listTimelineObjects } from "./download.js";
import { RemoteMetrics } from "./metrics.js";
import { TenantRemote } from "./tenant_remote.js";

const REL = { spcOid: 1663, dbOid: 5, relNumber: 16384, fork: 0 };
const ctx = internalContext();

function makeDeps(tenantId: TenantId, storage: LocalFsStorage, generation: number, tasks: TaskManager): { deps: TimelineDeps; remote: TenantRemote; metrics: RemoteMetrics } {
  const registry = createRegistry({ defaultMetrics: false });
  const redo = new WalRedoManager();
  const metrics = RemoteMetrics.of(registry);
  const remote = new TenantRemote(storage, tenantId, generation, metrics, silentLogger());
  const conf = parseTenantConfig({ checkpointDistanceBytes: 64 * 1024, waitLsnTimeoutMs: 2000, gcPeriodMs: 0 });
  return {
    deps: {
      tenantId, conf: () => conf, tasks, log: silentLogger(), metrics: new PageserverMetrics(registry), pageCache: new MaterializedPageCache(0),
      redoPool: (s) => redo.pool(tenantId, s), remote,
    },
    remote,
    metrics,
  };
}

async function metric(m: { get(): Promise<{ values: Array<{ value: number }> }> }): Promise<number> {
  return (await m.get()).values.reduce((a, v) => a + v.value, 0);
}

test("timeline with remote storage: uploads, disk-usage eviction, on-demand download, download policy, restore from the index alone", { timeout: 60_000 }, async () => {
  const root = await mkdtemp(join(tmpdir(), "tlremote-"));
  const storage = new LocalFsStorage({ root: join(root, "remote") });
  const tasks = new TaskManager(silentLogger());
  const tasks2 = new TaskManager(silentLogger());
  const tenantId = generateTenantId();
  const id = generateTimelineId();
  const tdir = join(root, "ps1", "timelines");
  await mkdir(tdir, { recursive: true });
  const { deps, metrics } = makeDeps(tenantId, storage, 1, tasks);
  const tl = await Timeline.create(deps, join(tdir, id), id, { startLsn: lsn(0x100_0000) });
  tl.activate();
  let tl2: Timeline | undefined;
  try {
    const rng = new Rng(11);
    const history: Array<{ key: Key; lsn: Lsn; bytes: Uint8Array }> = [];
    for (let i = 0; i < 120; i++) {
      const end = (tl.lastRecordLsn + 8n * BigInt(1 + rng.int(100))) as Lsn;
      const key = relBlockKey(REL, rng.int(40));
      const bytes = rng.bytes(8192);
      await tl.put([{ key, lsn: end, value: { kind: "image", bytes } }]);
      tl.finishRecord(end, tl.lastRecordLsn);
      history.push({ key, lsn: end, bytes });
    }
    await tl.checkpoint();
    await tl.remote!.client.waitForQueueEmpty();
    assert.equal(tl.remoteConsistentLsn, tl.diskConsistentLsn);
    const layers = tl.layerInfos().length;
    assert.ok(layers >= 5, `layers ${layers}`);
    const checkAll = async (t: Timeline, c = ctx) => {
      for (const h of history) assert.deepEqual(await t.get(h.key, h.lsn, c), h.bytes, `key at ${h.lsn}`);
    };
    await checkAll(tl);

    // Disk-usage policy: limit at a third of what is resident.
    const resident = tl.remote!.residentBytes();
    const limit = Math.floor(resident / 3);
    const r = await diskUsageEvictionPass([tl], limit, { log: silentLogger(), metrics });
    assert.ok(r.evicted > 0 && tl.remote!.residentBytes() <= limit * 0.9 + 1, `evicted ${JSON.stringify(r)}, resident ${tl.remote!.residentBytes()} limit ${limit}`);
    assert.equal(await metric(metrics.evictions), r.evicted);
    const localFiles = (await readdir(tl.dir)).filter((n) => n.includes("__")).length;
    assert.equal(localFiles, layers - r.evicted, "evicted files are gone from disk");
    await checkAll(tl);
    const downloads = await metric(metrics.downloads);
    assert.ok(downloads >= 1, `downloads ${downloads}`);

    // A context that may not download is refused with a clear error.
    await diskUsageEvictionPass([tl], 1, { log: silentLogger(), metrics });
    assert.equal(tl.remote!.residentBytes(), 0);
    const noDownload = requestContext("page_service", new AbortController().signal, "error");
    await assert.rejects(tl.get(history[0]!.key, history[0]!.lsn, noDownload), (e: unknown) => e instanceof StrataError && e.code === "unavailable" && /not resident/.test(e.message));

    // Restore into an empty directory from the index alone (generation 2).
    const tenant2 = join(root, "ps2");
    const d2 = makeDeps(tenantId, storage, 2, tasks2); // its own task manager: same tenant/timeline ids as `tl`
    await d2.remote.prepare(tenant2);
    tl2 = await Timeline.load(d2.deps, join(tenant2, "timelines", id), id, () => undefined);
    assert.equal(tl2.state, "active", tl2.brokenReason);
    assert.equal(tl2.diskConsistentLsn, tl.diskConsistentLsn);
    assert.equal(tl2.remote!.residentBytes(), 0, "nothing downloaded before a read");
    tl2.activate();
    await checkAll(tl2);
    assert.ok(tl2.remote!.residentBytes() > 0);

    // GC on the restored timeline: its deletions go through the queue (index first, then the objects).
    await tl.shutdown();
    const before = await listTimelineObjects(storage, tenantId, id);
    const victim = tl2.layers.historicLayers().next().value as Parameters<Timeline["removeHistoricLayers"]>[0][number];
    await tl2.removeHistoricLayers([victim]);
    await tl2.remote!.client.waitForQueueEmpty();
    const after = await listTimelineObjects(storage, tenantId, id);
    assert.ok(before.includes(`${victim.fileName}-00000001`) && !after.includes(`${victim.fileName}-00000001`), "the removed layer is deleted remotely");
    assert.ok(after.includes("index_part.json-00000002"), "generation 2 wrote its own index");
    console.log(`${layers} layers; disk-usage eviction evicted ${r.evicted} (${r.bytes} bytes) to stay under ${limit}; ${downloads} on-demand downloads; restore from the index alone served ${history.length} versions`);
  } finally {
    await tl.shutdown();
    await tl2?.shutdown();
    await tasks.close(5_000);
    await tasks2.close(5_000);
    await rm(root, { recursive: true, force: true });
  }
});

test("two attachments at once (generations 1 and 2): the older one's writes and deletions never damage the newer one's state", { timeout: 60_000 }, async () => {
  const root = await mkdtemp(join(tmpdir(), "tlremote-gen-"));
  const storage = new LocalFsStorage({ root: join(root, "remote") });
  const tasksA = new TaskManager(silentLogger());
  const tasksB = new TaskManager(silentLogger());
  const tasksC = new TaskManager(silentLogger());
  const tenantId = generateTenantId();
  const id = generateTimelineId();
  const a = makeDeps(tenantId, storage, 1, tasksA);
  await mkdir(join(root, "a", "timelines"), { recursive: true });
  const tlA = await Timeline.create(a.deps, join(root, "a", "timelines", id), id, { startLsn: lsn(0x100_0000) });
  tlA.activate();
  let tlB: Timeline | undefined;
  let tlC: Timeline | undefined;
  const rng = new Rng(5);
  const write = async (tl: Timeline, n: number, marker: number) => {
    const out: Array<{ key: Key; lsn: Lsn; bytes: Uint8Array }> = [];
    for (let i = 0; i < n; i++) {
      const end = (tl.lastRecordLsn + 8n * BigInt(1 + rng.int(100))) as Lsn;
      const key = relBlockKey(REL, rng.int(30));
      const bytes = rng.bytes(8192);
      bytes[0] = marker;
      await tl.put([{ key, lsn: end, value: { kind: "image", bytes } }]);
      tl.finishRecord(end, tl.lastRecordLsn);
      out.push({ key, lsn: end, bytes });
    }
    await tl.checkpoint();
    await tl.remote!.client.waitForQueueEmpty();
    return out;
  };
  try {
    const common = await write(tlA, 60, 1);
    // Generation 2 attaches (pageserver B) while A keeps running.
    const b = makeDeps(tenantId, storage, 2, tasksB);
    await b.remote.prepare(join(root, "b"));
    tlB = await Timeline.load(b.deps, join(root, "b", "timelines", id), id, () => undefined);
    tlB.activate();
    const onB = await write(tlB, 60, 2);
    // A, now stale, writes more and removes every layer it has (as GC/compaction would).
    await write(tlA, 60, 3);
    await tlA.removeHistoricLayers([...tlA.layers.historicLayers()].filter((l): l is PersistentLayer => l instanceof PersistentLayer));
    await tlA.remote!.client.waitForQueueEmpty();
    assert.equal(tlA.remote!.client.stale, true, "A noticed the newer generation");
    assert.ok(tlA.remote!.client.stats.skippedDeletions > 0);
    // A third attachment (generation 3) sees B's state, intact.
    const c = makeDeps(tenantId, storage, 3, tasksC);
    await c.remote.prepare(join(root, "c"));
    tlC = await Timeline.load(c.deps, join(root, "c", "timelines", id), id, () => undefined);
    assert.equal(tlC.state, "active", tlC.brokenReason);
    assert.equal(tlC.diskConsistentLsn, tlB.diskConsistentLsn, "the newest index (generation 2) wins");
    for (const h of [...common, ...onB]) assert.deepEqual(await tlC.get(h.key, h.lsn, ctx), h.bytes);
    const objects = await listTimelineObjects(storage, tenantId, id);
    console.log(`generations 1 and 2 at once: A skipped ${tlA.remote!.client.stats.skippedDeletions} deletions as stale; generation 3 reads ${common.length + onB.length} versions of B's history intact; ${objects.length} objects remote`);
  } finally {
    await tlA.shutdown();
    await tlB?.shutdown();
    await tlC?.shutdown();
    for (const t of [tasksA, tasksB, tasksC]) await t.close(5_000);
    await rm(root, { recursive: true, force: true });
  }
});
