/**
 * The upload queue's ordering rules under injected storage failures
 * (deterministic: seeded fault injection and seeded workloads).
 *
 * An auditing storage (a LocalFsStorage subclass, below the fault injector,
 * so it sees what really reached storage) checks at every step:
 *   - an index is uploaded only when every layer it lists exists remotely;
 *   - a deletion never removes an object the newest durable index lists;
 * and at the end: the newest index lists exactly the timeline's layers with
 * correct sizes and checksums, remote_consistent_lsn is the last
 * disk_consistent_lsn, deleted layers are gone, local files of removed
 * layers were unlinked after (not before) their upload.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateTenantId, generateTimelineId } from "../../lib/id.js";
import { lsn, type Lsn } from "../../lib/lsn.js";
import { silentLogger } from "../../lib/logging.js";
import { seededRandom } from "../../lib/prng.js";
import { TaskManager } from "../../lib/tasks.js";
import { crc32c } from "../../formats/crc32c.js";
import { FaultInjectingRemoteStorage } from "../../remote_storage/fault_injection.js";
import { LocalFsStorage } from "../../remote_storage/local_fs.js";
import type { RemotePath } from "../../remote_storage/remote_path.js";
import type { UploadBody, UploadOptions, RemoteOpOptions } from "../../remote_storage/remote_storage.js";
import { downloadBytes } from "../../remote_storage/remote_storage.js";
import { KEY_END, KEY_MIN } from "../key.js";
import { formatLayerFileName } from "../layers/layer_name.js";
import type { TimelineMetadata } from "../metadata.js";
import { crcHex, downloadNewestIndex, listTimelineObjects } from "./download.js";
import { parseIndexPart, parseRemoteObjectName, pickNewestIndex, remoteLayerPath } from "./index_part.js";
import { RemoteTimelineClient } from "./remote_timeline_client.js";

class AuditedStorage extends LocalFsStorage {
  readonly violations: string[] = [];
  indexUploads = 0;
  deletedPaths = 0;

  override async upload(path: RemotePath, body: UploadBody, opts?: UploadOptions): Promise<void> {
    if (path.includes("/index_part.json-")) {
      // Check before the index becomes visible: every listed layer is already durable.
      const bytes = body instanceof Uint8Array ? body : undefined;
      assert.ok(bytes !== undefined, "indexes are uploaded from bytes");
      const ix = parseIndexPart(bytes);
      const dir = path.slice(0, path.lastIndexOf("/"));
      for (const [name, m] of ix.layers) {
        const layerPath = `${dir}/${name}-${m.generation.toString(16).padStart(8, "0")}` as RemotePath;
        if (!(await super.exists(layerPath))) this.violations.push(`index ${path} lists ${name} before it exists`);
      }
      this.indexUploads++;
    }
    return super.upload(path, body, opts);
  }

  override async deleteMany(paths: readonly RemotePath[], opts?: RemoteOpOptions): Promise<void> {
    if (paths.length > 0) {
      const first = paths[0]!;
      const dir = first.slice(0, first.lastIndexOf("/") + 1);
      const names = [];
      for await (const page of super.list(dir as never)) names.push(...page.objects.map((o) => o.path.slice(dir.length)));
      const gen = pickNewestIndex(names, 0xffffffff);
      if (gen !== undefined) {
        const ix = parseIndexPart(await downloadBytes(this, `${dir}index_part.json-${gen.toString(16).padStart(8, "0")}` as RemotePath));
        for (const p of paths) {
          const parsed = parseRemoteObjectName(p.slice(dir.length));
          if (parsed?.kind === "layer" && ix.layers.get(parsed.layerFileName)?.generation === parsed.generation) this.violations.push(`deleting ${p} while the durable index lists it`);
        }
      }
      this.deletedPaths += paths.length;
    }
    return super.deleteMany(paths, opts);
  }
}

function layerName(i: number): string {
  return formatLayerFileName({ kind: "delta", keyRange: { start: KEY_MIN, end: KEY_END }, lsnRange: { start: lsn(BigInt(0x1000 * i + 8)), end: lsn(BigInt(0x1000 * (i + 1) + 1)) } });
}

function metaAt(disk: Lsn): TimelineMetadata {
  return { diskConsistentLsn: disk, prevRecordLsn: undefined, ancestorTimelineId: undefined, ancestorLsn: 0n as Lsn, latestGcCutoffLsn: 0n as Lsn, initdbLsn: lsn(8n), pgVersion: 15 };
}

async function runScenario(seed: number): Promise<{ uploads: number; indexes: number; deletions: number; injected: number; failedAttempts: number }> {
  const root = await mkdtemp(join(tmpdir(), "rtc-"));
  const localDir = join(root, "local");
  await mkdir(localDir);
  const audited = new AuditedStorage({ root: join(root, "remote") });
  const storage = new FaultInjectingRemoteStorage(audited, { seed });
  storage.addRule({ ops: ["upload", "deleteMany", "list"], fraction: 0.25, error: "transient" });
  storage.addRule({ ops: ["upload"], fraction: 0.1, error: "transient", when: "after" }); // lost answers: retried uploads are idempotent
  storage.addRule({ fraction: 0.2, delayMs: 3 });
  const tasks = new TaskManager(silentLogger());
  const tenantId = generateTenantId();
  const timelineId = generateTimelineId();
  const client = new RemoteTimelineClient({
    storage, tenantId, timelineId, generation: 1, localDir, tasks, log: silentLogger(), retryBaseMs: 1, retryMaxMs: 20, random: seededRandom(seed + 1000),
  });
  client.start();
  const rnd = seededRandom(seed);
  const live = new Map<string, Buffer>();
  const removed = new Set<string>();
  let next = 1;
  let disk = lsn(8n);
  try {
    for (let step = 0; step < 40; step++) {
      const r = rnd();
      if (r < 0.6 || live.size < 3) {
        // flush: a new layer file, then an index covering it
        const name = layerName(next++);
        const bytes = Buffer.alloc(100 + Math.floor(rnd() * 5000), step);
        await writeFile(join(localDir, name), bytes);
        live.set(name, bytes);
        disk = lsn(BigInt(0x1000 * next));
        client.scheduleLayerUpload(name, bytes.length);
        client.scheduleIndexUpload(metaAt(disk));
      } else {
        // compaction: two layers out, one in
        const victims = [...live.keys()].slice(0, 2);
        const name = layerName(next++);
        const bytes = Buffer.alloc(200, 0xee);
        await writeFile(join(localDir, name), bytes);
        live.set(name, bytes);
        disk = lsn(BigInt(0x1000 * next));
        client.scheduleLayerUpload(name, bytes.length);
        for (const v of victims) {
          live.delete(v);
          removed.add(v);
        }
        client.scheduleLayerDeletion(victims, metaAt(disk));
        for (const v of victims) if (!client.unlinkAfterUpload(v, join(localDir, v))) await rm(join(localDir, v));
      }
      if (rnd() < 0.2) await new Promise((res) => setTimeout(res, 5));
    }
    await client.waitForQueueEmpty();
    assert.deepEqual(audited.violations, [], `seed ${seed}`);
    const ix = await downloadNewestIndex(audited, tenantId, timelineId, 1);
    assert.ok(ix !== undefined);
    assert.deepEqual([...ix.layers.keys()].sort(), [...live.keys()].sort(), `seed ${seed}: index lists exactly the live layers`);
    for (const [name, m] of ix.layers) {
      const bytes = await downloadBytes(audited, remoteLayerPath(tenantId, timelineId, name, m.generation));
      assert.equal(m.fileSizeBytes, bytes.length);
      assert.equal(m.checksumCrc32c, crcHex(crc32c(bytes)));
      assert.deepEqual(bytes, live.get(name));
    }
    assert.equal(client.remoteConsistentLsn, disk);
    const objects = await listTimelineObjects(audited, tenantId, timelineId);
    for (const n of removed) assert.ok(!objects.includes(`${n}-00000001`), `seed ${seed}: removed layer ${n} deleted remotely`);
    // Local files of removed layers are gone (unlinked after their upload), live ones remain.
    const local = new Set(await readdir(localDir));
    for (const n of removed) assert.ok(!local.has(n), `local ${n} unlinked`);
    for (const n of live.keys()) assert.ok(local.has(n));
    return { uploads: client.stats.layersUploaded, indexes: client.stats.indexesUploaded, deletions: client.stats.deletions, injected: storage.injected, failedAttempts: client.stats.failedAttempts };
  } finally {
    await client.shutdown();
    await tasks.close(5_000);
    await rm(root, { recursive: true, force: true });
  }
}

test("upload queue ordering under random storage failures (seeds 1..5)", { timeout: 60_000 }, async () => {
  let total = { uploads: 0, indexes: 0, deletions: 0, injected: 0, failedAttempts: 0 };
  for (let seed = 1; seed <= 5; seed++) {
    const r = await runScenario(seed);
    assert.ok(r.injected > 0 && r.failedAttempts > 0, `seed ${seed} injected failures`);
    total = { uploads: total.uploads + r.uploads, indexes: total.indexes + r.indexes, deletions: total.deletions + r.deletions, injected: total.injected + r.injected, failedAttempts: total.failedAttempts + r.failedAttempts };
  }
  console.log(`5 seeds: ${total.uploads} layer uploads, ${total.indexes} index uploads, ${total.deletions} deletions, ${total.injected} injected faults, ${total.failedAttempts} failed attempts retried; no ordering violation`);
});

test("storage down: remote_consistent_lsn stalls, then resumes; nothing is lost", { timeout: 30_000 }, async () => {
  const root = await mkdtemp(join(tmpdir(), "rtc-down-"));
  const localDir = join(root, "local");
  await mkdir(localDir);
  const inner = new LocalFsStorage({ root: join(root, "remote") });
  const storage = new FaultInjectingRemoteStorage(inner, { seed: 7 });
  const tasks = new TaskManager(silentLogger());
  const tenantId = generateTenantId();
  const timelineId = generateTimelineId();
  const client = new RemoteTimelineClient({ storage, tenantId, timelineId, generation: 1, localDir, tasks, log: silentLogger(), retryBaseMs: 5, retryMaxMs: 50 });
  client.start();
  try {
    const a = layerName(1);
    await writeFile(join(localDir, a), Buffer.alloc(1000, 1));
    client.scheduleLayerUpload(a, 1000);
    client.scheduleIndexUpload(metaAt(lsn(0x2000n)));
    await client.waitForQueueEmpty();
    assert.equal(client.remoteConsistentLsn, lsn(0x2000n));
    const down = storage.addRule({ error: "transient" }); // everything fails
    const b = layerName(2);
    await writeFile(join(localDir, b), Buffer.alloc(2000, 2));
    client.scheduleLayerUpload(b, 2000);
    client.scheduleIndexUpload(metaAt(lsn(0x3000n)));
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(client.remoteConsistentLsn, lsn(0x2000n), "stalled while storage is down");
    assert.ok(client.stats.failedAttempts >= 3, `failed attempts ${client.stats.failedAttempts}`);
    assert.equal(client.queueDepth, 2);
    storage.removeRule(down);
    await client.waitForQueueEmpty();
    assert.equal(client.remoteConsistentLsn, lsn(0x3000n), "resumed");
    const ix = await downloadNewestIndex(inner, tenantId, timelineId, 1);
    assert.deepEqual([...ix!.layers.keys()].sort(), [a, b].sort());
    console.log(`storage down 500 ms: ${down.hits} calls failed, remote_consistent_lsn held at 0/2000, then advanced to 0/3000`);
  } finally {
    await client.shutdown();
    await tasks.close(5_000);
    await rm(root, { recursive: true, force: true });
  }
});

test("generations: a stale attachment never deletes or overwrites the newer one's objects", { timeout: 30_000 }, async () => {
  const root = await mkdtemp(join(tmpdir(), "rtc-gen-"));
  const storage = new LocalFsStorage({ root: join(root, "remote") });
  const tasks = new TaskManager(silentLogger());
  const tenantId = generateTenantId();
  const timelineId = generateTimelineId();
  const dirs = [join(root, "ps1"), join(root, "ps2")];
  for (const d of dirs) await mkdir(d);
  const old = new RemoteTimelineClient({ storage, tenantId, timelineId, generation: 1, localDir: dirs[0]!, tasks, log: silentLogger(), retryBaseMs: 1 });
  old.start();
  try {
    const a = layerName(1);
    for (const d of dirs) await writeFile(join(d, a), Buffer.alloc(500, 1));
    old.scheduleLayerUpload(a, 500);
    old.scheduleIndexUpload(metaAt(lsn(0x2000n)));
    await old.waitForQueueEmpty();
    // A newer attachment (generation 2) starts from the newest index and uploads its own.
    const ix1 = await downloadNewestIndex(storage, tenantId, timelineId, 2);
    const neu = new RemoteTimelineClient({ storage, tenantId, timelineId, generation: 2, localDir: dirs[1]!, tasks, log: silentLogger(), retryBaseMs: 1, index: ix1! });
    neu.start();
    const b = layerName(2);
    await writeFile(join(dirs[1]!, b), Buffer.alloc(600, 2));
    neu.scheduleLayerUpload(b, 600);
    neu.scheduleIndexUpload(metaAt(lsn(0x3000n)));
    await neu.waitForQueueEmpty();
    // The stale one keeps working: it compacts `a` away and writes more.
    const c = layerName(3);
    await writeFile(join(dirs[0]!, c), Buffer.alloc(700, 3));
    old.scheduleLayerUpload(c, 700);
    old.scheduleLayerDeletion([a], metaAt(lsn(0x4000n)));
    await old.waitForQueueEmpty();
    assert.equal(old.stale, true);
    assert.equal(old.stats.skippedDeletions, 1);
    const names = await listTimelineObjects(storage, tenantId, timelineId);
    assert.ok(names.includes(`${a}-00000001`), "layer a (referenced by generation 2) survives the stale deletion");
    const newest = await downloadNewestIndex(storage, tenantId, timelineId, 0xffffffff);
    assert.equal(newest!.generation, 2, "the newest index is still generation 2's");
    assert.deepEqual([...newest!.layers.keys()].sort(), [a, b].sort());
    assert.equal(newest!.layers.get(a)!.generation, 1);
    await neu.shutdown();
  } finally {
    await old.shutdown();
    await tasks.close(5_000);
    await rm(root, { recursive: true, force: true });
  }
});
