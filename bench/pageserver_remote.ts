/**
 * Benchmark: the pageserver's remote storage on s3rver (or `--backend local`).
 *
 *   node dist/bench/pageserver_remote.js [--mb 256] [--backend s3|local]
 *
 * A timeline (no PostgreSQL: 8 KiB page images under distinct keys, so the
 * layers hold `--mb` MiB) with remote storage through the real remote
 * timeline client:
 *   - upload throughput: from the flush until the upload queue is empty
 *     (layers + index durable), MiB/s;
 *   - level-0 compaction (as the background task would run it) and the
 *     re-upload of its output plus deletion of its inputs;
 *   - restore: a second timeline attached from the index alone into an empty
 *     directory — time to the index (prepare), time to the first page read
 *     (one on-demand layer download), time until every layer is downloaded
 *     (reading one key of each layer), download MiB/s.
 * The "≥ 1 GB tenant" is `--mb 1024`. Runs on demand only.
 */
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { generateTenantId, generateTimelineId, type TenantId } from "../src/lib/id.js";
import { lsn, type Lsn } from "../src/lib/lsn.js";
import { createRegistry } from "../src/lib/metrics.js";
import { silentLogger } from "../src/lib/logging.js";
import { TaskManager } from "../src/lib/tasks.js";
import { createRemoteStorage } from "../src/remote_storage/config.js";
import type { RemoteStorage } from "../src/remote_storage/remote_storage.js";
import { WalRedoManager } from "../src/walredo/pool.js";
import { parseTenantConfig } from "../src/pageserver/config.js";
import { internalContext } from "../src/pageserver/getpage.js";
import { relBlockKey, type Key } from "../src/pageserver/key.js";
import { compactLevel0 } from "../src/pageserver/compaction.js";
import { PageserverMetrics } from "../src/pageserver/metrics.js";
import { MaterializedPageCache } from "../src/pageserver/page_cache.js";
import { RemoteMetrics } from "../src/pageserver/remote/metrics.js";
import { TenantRemote } from "../src/pageserver/remote/tenant_remote.js";
import { Timeline, type TimelineDeps } from "../src/pageserver/timeline.js";
import { S3RVER_CREDENTIALS, startS3rver } from "../test/harness/s3rver.js";

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1]! : dflt;
}

const MB = Number(arg("--mb", "256"));
const BACKEND = arg("--backend", "s3");
const REL = { spcOid: 1663, dbOid: 5, relNumber: 16384, fork: 0 };

function deps(tenantId: TenantId, storage: RemoteStorage, generation: number, tasks: TaskManager): { deps: TimelineDeps; remote: TenantRemote } {
  const registry = createRegistry({ defaultMetrics: false });
  const redo = new WalRedoManager();
  const remote = new TenantRemote(storage, tenantId, generation, RemoteMetrics.of(registry), silentLogger());
  const conf = parseTenantConfig({ checkpointDistanceBytes: 64 * 1024 * 1024, gcPeriodMs: 0 });
  return {
    deps: { tenantId, conf: () => conf, tasks, log: silentLogger(), metrics: new PageserverMetrics(registry), pageCache: new MaterializedPageCache(0), redoPool: (s) => redo.pool(tenantId, s), remote },
    remote,
  };
}

async function main(): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), "bench-remote-"));
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = "true";
  const s3 = BACKEND === "s3" ? await startS3rver({ buckets: ["bench"] }) : undefined;
  if (s3 !== undefined) {
    process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
  }
  const url = s3 !== undefined ? `s3://bench/ps?endpoint=${encodeURIComponent(s3.endpoint)}&region=us-east-1&force_path_style=true` : `file://${join(root, "remote")}`;
  const storage = createRemoteStorage(url);
  const tasks = new TaskManager(silentLogger());
  const tasks2 = new TaskManager(silentLogger());
  const tenantId = generateTenantId();
  const id = generateTimelineId();
  try {
    const a = deps(tenantId, storage, 1, tasks);
    await mkdir(join(root, "a", "timelines"), { recursive: true });
    const tl = await Timeline.create(a.deps, join(root, "a", "timelines", id), id, { startLsn: lsn(0x100_0000) });
    tl.activate();
    const pages = Math.floor((MB * 1024 * 1024) / 8192);
    const page = Buffer.alloc(8192);
    const firstKeys: Key[] = [];
    for (let i = 0; i < pages; i++) {
      page.writeUInt32LE(i, 0);
      page.writeUInt32LE(Math.imul(i, 2654435761) >>> 0, 100);
      const end = (tl.lastRecordLsn + 8192n) as Lsn;
      const key = relBlockKey(REL, i);
      await tl.put([{ key, lsn: end, value: { kind: "image", bytes: new Uint8Array(page) } }]);
      tl.finishRecord(end, tl.lastRecordLsn);
      if (i % Math.max(1, Math.floor(pages / 64)) === 0) firstKeys.push(key);
    }
    const t0 = performance.now();
    await tl.checkpoint();
    const tFlushed = performance.now();
    await tl.remote!.client.waitForQueueEmpty();
    const tUp = performance.now();
    const bytes = tl.remote!.client.stats.uploadedBytes;
    const layers = tl.layerInfos().length;
    console.log(`${BACKEND}: ${MB} MiB of pages in ${layers} layers; flush ${(tFlushed - t0).toFixed(0)} ms (uploads start during it); ${(bytes / 1048576).toFixed(1)} MiB durable remotely ${(tUp - t0).toFixed(0)} ms after the flush began (${(tUp - tFlushed).toFixed(0)} ms after it ended) = ${(bytes / 1048576 / ((tUp - t0) / 1000)).toFixed(1)} MiB/s end to end`);
    const at = tl.lastRecordLsn;
    // Compaction as the background task would do it: level-0 deltas (each spanning every key) merged
    // into key-partitioned ones, so a read downloads the partition it needs, not every layer.
    const c0 = performance.now();
    const l0 = await tl.withCompactionLock(() => compactLevel0(tl, { force: true }));
    await tl.remote!.client.waitForQueueEmpty();
    console.log(`${BACKEND}: compaction ${l0.inputs} -> ${l0.outputs} layers, re-uploaded and old ones deleted in ${(performance.now() - c0).toFixed(0)} ms`);
    await tl.shutdown();

    const b = deps(tenantId, storage, 2, tasks2);
    const r0 = performance.now();
    await b.remote.prepare(join(root, "b"));
    const tl2 = await Timeline.load(b.deps, join(root, "b", "timelines", id), id, () => undefined);
    tl2.activate();
    const rIndex = performance.now();
    await tl2.get(firstKeys[0]!, at, internalContext());
    const rFirst = performance.now();
    // One key per layer region, concurrently, until every layer is local.
    await Promise.all(firstKeys.map((k) => tl2.get(k, at, internalContext())));
    for (const l of tl2.remote!.allLayers()) if (l.residence?.resident !== true) await l.reader();
    const rAll = performance.now();
    const down = tl2.remote!.residentBytes();
    console.log(
      `${BACKEND}: restore from the index alone: index + load ${(rIndex - r0).toFixed(0)} ms; first page ${(rFirst - r0).toFixed(0)} ms; ` +
        `all ${tl2.remote!.allLayers().length} layers (${(down / 1048576).toFixed(1)} MiB) local after ${(rAll - r0).toFixed(0)} ms = ${(down / 1048576 / ((rAll - rIndex) / 1000)).toFixed(1)} MiB/s`,
    );
    await tl2.shutdown();
  } finally {
    await tasks.close(10_000);
    await tasks2.close(10_000);
    await storage.close();
    await s3?.stop();
    await rm(root, { recursive: true, force: true });
  }
}

await main();
