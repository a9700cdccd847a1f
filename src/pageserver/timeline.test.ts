import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm, writeFile, readFile, open } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StrataError } from "../lib/errors.js";
import { generateTenantId, generateTimelineId, type TimelineId } from "../lib/id.js";
import { lsn, type Lsn } from "../lib/lsn.js";
import { createRegistry } from "../lib/metrics.js";
import { silentLogger } from "../lib/logging.js";
import { TaskManager } from "../lib/tasks.js";
import { WalRedoManager } from "../walredo/pool.js";
import { parseTenantConfig, type TenantConfig } from "./config.js";
import { ZERO_PAGE_VALUE } from "./datadir.js";
import { internalContext } from "./getpage.js";
import { relBlockKey, type Key } from "./key.js";
import { PageserverMetrics } from "./metrics.js";
import { MaterializedPageCache } from "./page_cache.js";
import { BULK_INGEST_BYTES_PER_SEC, BULK_LAYER_BYTES, Timeline, type TimelineDeps } from "./timeline.js";
import { Rng } from "./layers/test_support.js";

const REL = { spcOid: 1663, dbOid: 5, relNumber: 16384, fork: 0 };
const ctx = internalContext();

function makeDeps(conf: Partial<TenantConfig> = {}): TimelineDeps & { tasks: TaskManager } {
  const tenantConf = parseTenantConfig({ checkpointDistanceBytes: 64 * 1024, waitLsnTimeoutMs: 2000, ...conf });
  const redo = new WalRedoManager();
  const tenantId = generateTenantId();
  return {
    tenantId,
    conf: () => tenantConf,
    tasks: new TaskManager(),
    log: silentLogger(),
    metrics: new PageserverMetrics(createRegistry({ defaultMetrics: false })),
    pageCache: new MaterializedPageCache(256),
    redoPool: (s) => redo.pool(tenantId, s),
  };
}

function page(rng: Rng): Uint8Array {
  return rng.bytes(8192);
}

/** Ingests `n` records each putting a page image for a random block of 0..blocks-1; returns the history. */
async function ingest(tl: Timeline, rng: Rng, n: number, blocks: number, history: Map<Key, Array<{ lsn: Lsn; bytes: Uint8Array }>>): Promise<void> {
  for (let i = 0; i < n; i++) {
    const end = (tl.lastRecordLsn + 8n * BigInt(1 + rng.int(200))) as Lsn;
    const key = relBlockKey(REL, rng.int(blocks));
    const bytes = page(rng);
    await tl.put([{ key, lsn: end, value: { kind: "image", bytes } }]);
    tl.finishRecord(end, tl.lastRecordLsn);
    let h = history.get(key);
    if (h === undefined) history.set(key, (h = []));
    h.push({ lsn: end, bytes });
  }
}

function expectedAt(history: Map<Key, Array<{ lsn: Lsn; bytes: Uint8Array }>>, key: Key, at: Lsn): Uint8Array | undefined {
  let best: Uint8Array | undefined;
  for (const v of history.get(key) ?? []) if (v.lsn <= at) best = v.bytes;
  return best;
}

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "strata-tl-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test("ingest, freeze at the checkpoint distance, flush to delta files, read every version back", async () => {
  await withDir(async (root) => {
    const deps = makeDeps();
    const id = generateTimelineId();
    const tl = await Timeline.create(deps, join(root, id), id, { startLsn: lsn(0x100_0000) });
    tl.activate();
    const rng = new Rng(7);
    const history = new Map<Key, Array<{ lsn: Lsn; bytes: Uint8Array }>>();
    await ingest(tl, rng, 200, 20, history);
    await tl.checkpoint();
    assert.equal(tl.diskConsistentLsn, tl.lastRecordLsn);
    const files = (await readdir(tl.dir)).filter((f) => f !== "metadata");
    assert.ok(files.length >= 20, `expected many delta files at 64 KiB distance, got ${files.length}`);
    assert.ok(files.every((f) => !f.endsWith(".tmp")), "no ephemeral files remain after the flush");
    // Every key at many LSNs.
    for (let probe = 0; probe < 300; probe++) {
      const key = relBlockKey(REL, rng.int(20));
      const at = (lsn(0x100_0000) + BigInt(rng.int(Number(tl.lastRecordLsn - lsn(0x100_0000)) + 1))) as Lsn;
      const want = expectedAt(history, key, at);
      const got = await tl.get(key, at, ctx);
      assert.deepEqual(got, want, `key block at ${at}`);
    }
    await tl.shutdown();
    await deps.tasks.close(1000);
  });
});

test("waitForLsn wakes on ingest, times out, and honours cancellation", async () => {
  await withDir(async (root) => {
    const deps = makeDeps();
    const id = generateTimelineId();
    const tl = await Timeline.create(deps, join(root, id), id, { startLsn: lsn(0x1000) });
    const waiting = tl.waitForLsn(lsn(0x2000), { timeoutMs: 5000 });
    tl.finishRecord(lsn(0x1800));
    tl.finishRecord(lsn(0x2000));
    await waiting;
    await assert.rejects(tl.waitForLsn(lsn(0x3000), { timeoutMs: 50 }), (e: unknown) => e instanceof StrataError && e.code === "timeout" && e.message.includes("0/3000"));
    const ac = new AbortController();
    const p = tl.waitForLsn(lsn(0x3000), { timeoutMs: 5000, signal: ac.signal });
    ac.abort();
    await assert.rejects(p, (e: unknown) => e instanceof StrataError && e.code === "cancelled");
    // A read above last_record_lsn waits (bounded) too.
    await assert.rejects(tl.get(relBlockKey(REL, 0), lsn(0x9000), ctx), (e: unknown) => e instanceof StrataError && e.code === "timeout");
    await tl.shutdown();
  });
});

test("reload resumes at disk_consistent_lsn; temp files and layers above it are removed", async () => {
  await withDir(async (root) => {
    const deps = makeDeps();
    const id = generateTimelineId();
    const dir = join(root, id);
    const tl = await Timeline.create(deps, dir, id, { startLsn: lsn(0x100_0000) });
    const rng = new Rng(11);
    const history = new Map<Key, Array<{ lsn: Lsn; bytes: Uint8Array }>>();
    await ingest(tl, rng, 60, 10, history);
    await tl.checkpoint();
    const flushedAt = tl.diskConsistentLsn;
    await ingest(tl, rng, 5, 10, new Map()); // stays in the open layer: lost by the "crash"
    assert.ok(tl.lastRecordLsn > flushedAt);
    await tl.shutdown(); // no flush: like a crash for on-disk state
    // Leftovers of a crash: a temp file, and a layer file beyond disk_consistent_lsn.
    await writeFile(join(dir, "something.ABCD1234.tmp"), "x");
    const files = (await readdir(dir)).filter((f) => f !== "metadata" && !f.endsWith(".tmp"));
    const src = files[0]!;
    const future = src.replace(/__([0-9A-F]{16})-([0-9A-F]{16})$/, `__${(flushedAt + 1n).toString(16).toUpperCase().padStart(16, "0")}-${(flushedAt + 0x100n).toString(16).toUpperCase().padStart(16, "0")}`);
    await writeFile(join(dir, future), await readFile(join(dir, src)));

    const deps2 = makeDeps();
    const re = await Timeline.load(deps2, dir, id, () => undefined);
    assert.equal(re.state, "active");
    assert.equal(re.diskConsistentLsn, flushedAt);
    assert.equal(re.lastRecordLsn, flushedAt);
    const after = await readdir(dir);
    assert.ok(!after.some((f) => f.endsWith(".tmp")), "temp file removed");
    assert.ok(!after.includes(future), "future layer removed");
    for (const [key] of history) assert.deepEqual(await re.get(key, flushedAt, ctx), expectedAt(history, key, flushedAt));
    // Ingest resumes above disk_consistent_lsn.
    await ingest(re, rng, 10, 10, history);
    await re.checkpoint();
    for (const [key] of history) assert.deepEqual(await re.get(key, re.lastRecordLsn, ctx), expectedAt(history, key, re.lastRecordLsn));
    await re.shutdown();
  });
});

test("a damaged metadata file makes the timeline Broken with the reason", async () => {
  await withDir(async (root) => {
    const deps = makeDeps();
    const id = generateTimelineId();
    const dir = join(root, id);
    const tl = await Timeline.create(deps, dir, id, { startLsn: lsn(0x1000) });
    await tl.shutdown();
    const fh = await open(join(dir, "metadata"), "r+");
    await fh.write(Buffer.from([0xff]), 0, 1, 12);
    await fh.close();
    const re = await Timeline.load(makeDeps(), dir, id, () => undefined);
    assert.equal(re.state, "broken");
    assert.match(re.brokenReason ?? "", /CRC mismatch/);
    await assert.rejects(re.get(relBlockKey(REL, 0), lsn(0x1000), ctx), (e: unknown) => e instanceof StrataError && e.code === "unavailable");
  });
});

test("a corrupted byte in a layer file is reported as corrupt_data, never served", async () => {
  await withDir(async (root) => {
    const deps = makeDeps({ checkpointDistanceBytes: 1024 * 1024 });
    const id = generateTimelineId();
    const dir = join(root, id);
    const tl = await Timeline.create(deps, dir, id, { startLsn: lsn(0x100_0000) });
    const rng = new Rng(3);
    const history = new Map<Key, Array<{ lsn: Lsn; bytes: Uint8Array }>>();
    await ingest(tl, rng, 8, 4, history);
    await tl.checkpoint();
    await tl.shutdown();
    const [file] = (await readdir(dir)).filter((f) => f !== "metadata");
    // Flip one byte in the middle of the values region.
    const fh = await open(join(dir, file!), "r+");
    const { size } = await fh.stat();
    const off = Math.floor(size / 3);
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, off);
    b[0] = b[0]! ^ 0x10;
    await fh.write(b, 0, 1, off);
    await fh.close();
    const re = await Timeline.load(makeDeps(), dir, id, () => undefined);
    let corrupt = 0;
    let ok = 0;
    for (const [key, versions] of history) for (const version of versions) {
      try {
        const got = await re.get(key, version.lsn, ctx);
        assert.deepEqual(got, version.bytes, "a served value must be the right one");
        ok++;
      } catch (e) {
        assert.ok(e instanceof StrataError && e.code === "corrupt_data", String(e));
        assert.ok(e.message.includes(file!), e.message);
        corrupt++;
      }
    }
    assert.ok(corrupt >= 1, `corruption detected (ok=${ok})`);
    await re.shutdown();
  });
});

test("branch: O(1) creation, reads at or below the branch point go to the ancestor", async () => {
  await withDir(async (root) => {
    const deps = makeDeps();
    const pid = generateTimelineId();
    const parent = await Timeline.create(deps, join(root, pid), pid, { startLsn: lsn(0x100_0000) });
    const rng = new Rng(5);
    const ph = new Map<Key, Array<{ lsn: Lsn; bytes: Uint8Array }>>();
    await ingest(parent, rng, 40, 6, ph);
    const branchAt = parent.lastRecordLsn;
    await ingest(parent, rng, 40, 6, ph);
    const cid = generateTimelineId();
    const child = await Timeline.create(deps, join(root, cid), cid, { ancestor: { timeline: parent, lsn: branchAt } });
    assert.equal(child.lastRecordLsn, branchAt);
    assert.deepEqual((await readdir(child.dir)).sort(), ["metadata"]);
    const ch = new Map<Key, Array<{ lsn: Lsn; bytes: Uint8Array }>>();
    for (const [k, v] of ph) ch.set(k, v.filter((x) => x.lsn <= branchAt));
    await ingest(child, rng, 30, 6, ch);
    await child.checkpoint();
    await parent.checkpoint();
    for (let b = 0; b < 6; b++) {
      const key = relBlockKey(REL, b);
      for (const at of [branchAt, child.lastRecordLsn]) assert.deepEqual(await child.get(key, at, ctx), expectedAt(ch, key, at));
      assert.deepEqual(await parent.get(key, parent.lastRecordLsn, ctx), expectedAt(ph, key, parent.lastRecordLsn));
    }
    await assert.rejects(Timeline.create(deps, join(root, "x"), generateTimelineId() as TimelineId, { ancestor: { timeline: parent, lsn: (parent.lastRecordLsn + 8n) as Lsn } }), /last record ends/);
    // Reload both: the child finds its ancestor.
    await child.shutdown();
    await parent.shutdown();
    const p2 = await Timeline.load(makeDeps(), parent.dir, pid, () => undefined);
    const c2 = await Timeline.load(makeDeps(), child.dir, cid, (x) => (x === pid ? p2 : undefined));
    assert.equal(c2.state, "active");
    for (let b = 0; b < 6; b++) assert.deepEqual(await c2.get(relBlockKey(REL, b), c2.lastRecordLsn, ctx), expectedAt(ch, relBlockKey(REL, b), c2.lastRecordLsn));
    const orphan = await Timeline.load(makeDeps(), child.dir, cid, () => undefined);
    assert.equal(orphan.state, "broken");
    assert.match(orphan.brokenReason ?? "", /ancestor timeline .* is missing/);
    await c2.shutdown();
    await p2.shutdown();
    await orphan.shutdown();
  });
});

test("zero-page marker reads as zeros; a missing block reads as zeros through getPage", async () => {
  await withDir(async (root) => {
    const deps = makeDeps();
    const id = generateTimelineId();
    const tl = await Timeline.create(deps, join(root, id), id, { startLsn: lsn(0x1000) });
    await tl.put([{ key: relBlockKey(REL, 3), lsn: lsn(0x1008), value: ZERO_PAGE_VALUE }]);
    tl.finishRecord(lsn(0x1008));
    assert.deepEqual(await tl.getPage(relBlockKey(REL, 3), lsn(0x1008), ctx), new Uint8Array(8192));
    assert.deepEqual(await tl.getPage(relBlockKey(REL, 4), lsn(0x1008), ctx), new Uint8Array(8192));
    assert.equal(await tl.get(relBlockKey(REL, 4), lsn(0x1008), ctx), undefined);
    await tl.shutdown();
  });
});

test("level-0 merge: fewer files, same versions; a crash mid-merge is repaired at load", async () => {
  const { compactLevel0 } = await import("./compaction.js");
  const { copyFile, unlink } = await import("node:fs/promises");
  await withDir(async (root) => {
    const deps = makeDeps({ compactionTargetSizeBytes: 256 * 1024 });
    const id = generateTimelineId();
    const dir = join(root, id);
    const tl = await Timeline.create(deps, dir, id, { startLsn: lsn(0x100_0000) });
    const rng = new Rng(21);
    const history = new Map<Key, Array<{ lsn: Lsn; bytes: Uint8Array }>>();
    await ingest(tl, rng, 150, 40, history);
    await tl.checkpoint();
    const l0Files = (await readdir(dir)).filter((f) => f !== "metadata");
    assert.ok(l0Files.length >= 10, `${l0Files.length} level-0 files`);
    // Keep copies of the inputs to fake a crash before their deletion.
    await mkdirP(join(root, "saved"));
    for (const f of l0Files) await copyFile(join(dir, f), join(root, "saved", f));
    const res = await compactLevel0(tl, { force: true });
    assert.equal(res.inputs, l0Files.length);
    assert.ok(res.outputs >= 2 && res.outputs < l0Files.length, JSON.stringify(res));
    const check = async (t: Timeline) => {
      for (const [key, versions] of history) for (const v of versions) assert.deepEqual(await t.get(key, v.lsn, ctx), v.bytes);
    };
    await check(tl);
    await tl.shutdown();
    const l1Files = (await readdir(dir)).filter((f) => f !== "metadata");
    assert.equal(l1Files.length, res.outputs, "inputs deleted once unread");

    // Crash after the outputs were durable, before the inputs were deleted: outputs win.
    for (const f of l0Files) await copyFile(join(root, "saved", f), join(dir, f));
    let re = await Timeline.load(makeDeps(), dir, id, () => undefined);
    assert.deepEqual((await readdir(dir)).filter((f) => f !== "metadata").sort(), [...l1Files].sort());
    await check(re);
    await re.shutdown();

    // Crash in the middle of writing outputs (one missing): the partial outputs go, inputs stay.
    for (const f of l0Files) await copyFile(join(root, "saved", f), join(dir, f));
    await unlink(join(dir, l1Files[0]!));
    re = await Timeline.load(makeDeps(), dir, id, () => undefined);
    assert.deepEqual((await readdir(dir)).filter((f) => f !== "metadata").sort(), [...l0Files].sort());
    await check(re);
    await re.shutdown();
  });
});

async function mkdirP(p: string): Promise<void> {
  const { mkdir } = await import("node:fs/promises");
  await mkdir(p, { recursive: true });
}

test("bulk ingest freezes layers early at BULK_LAYER_BYTES; WAL at streaming pace does not", async () => {
  await withDir(async (root) => {
    const deps = makeDeps({ checkpointDistanceBytes: 256 * 1024 * 1024 });
    const id = generateTimelineId();
    const tl = await Timeline.create(deps, join(root, id), id, { startLsn: lsn(0x100_0000) });
    tl.activate();
    try {
      const rng = new Rng(3);
      const bytes = page(rng);
      const pages = (mib: number) => Math.ceil((mib * 1024 * 1024) / 8192);
      const putPages = async (n: number, pauseEvery = 0, pauseMs = 0) => {
        for (let i = 0; i < n; i++) {
          const end = (tl.lastRecordLsn + 8200n) as Lsn;
          await tl.put([{ key: relBlockKey(REL, i % 5000), lsn: end, value: { kind: "image", bytes } }]);
          tl.finishRecord(end, tl.lastRecordLsn);
          if (pauseEvery > 0 && i % pauseEvery === pauseEvery - 1) await new Promise((r) => setTimeout(r, pauseMs));
        }
      };
      const deltas = async () => (await readdir(tl.dir)).filter((f) => f !== "metadata" && !f.startsWith("ephemeral-")).length;
      // Bulk: 72 MiB as fast as this machine puts them (hundreds of MiB/s) -> frozen at ~32 MiB twice.
      assert.ok(BULK_LAYER_BYTES === 32 * 1024 * 1024 && BULK_INGEST_BYTES_PER_SEC <= 16 * 1024 * 1024);
      await putPages(pages(72));
      await tl.checkpoint();
      assert.equal(tl.diskConsistentLsn, tl.lastRecordLsn);
      assert.equal(await deltas(), 3, "two early-frozen bulk layers and the rest");
      // Streaming pace: 40 MiB at ~10 MiB/s (1 MiB, then 100 ms) -> one layer, up to the checkpoint.
      await putPages(pages(40), pages(1), 100);
      await tl.checkpoint();
      assert.equal(await deltas(), 4, "WAL below the bulk pace stays in one layer");
    } finally {
      await tl.shutdown();
      await deps.tasks.close(1000);
    }
    // Early freezes stop once compactionThreshold level-0 layers exist: 104 MiB -> 32 + 32 + 40.
    const deps2 = makeDeps({ checkpointDistanceBytes: 256 * 1024 * 1024, compactionThreshold: 2 });
    const id2 = generateTimelineId();
    const tl2 = await Timeline.create(deps2, join(root, id2), id2, { startLsn: lsn(0x100_0000) });
    tl2.activate();
    try {
      const bytes = page(new Rng(4));
      for (let i = 0; i < Math.ceil((104 * 1024 * 1024) / 8192); i++) {
        const end = (tl2.lastRecordLsn + 8200n) as Lsn;
        await tl2.put([{ key: relBlockKey(REL, i % 5000), lsn: end, value: { kind: "image", bytes } }]);
        tl2.finishRecord(end, tl2.lastRecordLsn);
      }
      await tl2.checkpoint();
      const names = (await readdir(tl2.dir)).filter((f) => f !== "metadata" && !f.startsWith("ephemeral-"));
      assert.equal(names.length, 3, names.join(", "));
    } finally {
      await tl2.shutdown();
      await deps2.tasks.close(1000);
    }
  });
});

test("a flush that fails on the flush worker marks the timeline broken with the reason; disk_consistent_lsn stays", async () => {
  await withDir(async (root) => {
    const deps = makeDeps();
    const id = generateTimelineId();
    const tl = await Timeline.create(deps, join(root, id), id, { startLsn: lsn(0x100_0000) });
    tl.activate();
    try {
      const rng = new Rng(9);
      await ingest(tl, rng, 20, 5, new Map());
      await tl.checkpoint();
      const durable = tl.diskConsistentLsn;
      assert.equal(durable, tl.lastRecordLsn);
      await ingest(tl, rng, 5, 5, new Map());
      // The layer file cannot be created: its directory is gone (the ephemeral file stays open).
      await rm(tl.dir, { recursive: true, force: true });
      await assert.rejects(tl.checkpoint(), (e: unknown) => e instanceof StrataError && e.code === "io_error");
      assert.equal(tl.state, "broken");
      assert.match(tl.brokenReason ?? "", /flush of in-memory layer at .* failed: Cannot create layer file/);
      assert.equal(tl.diskConsistentLsn, durable);
    } finally {
      await tl.shutdown();
      await deps.tasks.close(1000);
    }
  });
});
