import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readlinkSync } from "node:fs";
import { mkdir, readdir, readFile } from "node:fs/promises";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { StrataError } from "../../lib/errors.js";
import { lsn, LSN_MAX, type Lsn } from "../../lib/lsn.js";
import { formatKey, KEY_END, KEY_MIN, relBlockKey, relDirKey, relmapKey, relSizeKey, slruBlockKey, SlruKind, type Key } from "../key.js";
import { DeltaLayerReader } from "./delta_layer.js";
import { DEFAULT_INMEMORY_WRITE_BUFFER_BYTES, InMemoryLayer, KEPT_WRITE_BUFFERS, MAX_INFLIGHT_WRITES } from "./inmemory_layer.js";
import { parseLayerFileName } from "./layer_name.js";
import { Rng, withTempDir } from "./test_support.js";
import { isBase, type Value, type ValueEntry } from "./value.js";

const START = lsn(0x3000000);

function randomValue(rng: Rng): Value {
  return rng.bool(0.1)
    ? { kind: "image", bytes: rng.bytes(8192) }
    : { kind: "wal", willInit: rng.bool(0.1), rec: rng.bytes(rng.int(200)), ...(rng.bool(0.5) ? { engine: "postgres" as const } : {}) };
}

/** Puts in LSN order (several keys per LSN), as ingest does; returns the model in (key, LSN) order. */
function fill(layer: InMemoryLayer, rng: Rng, n: number, keyCount: number): ValueEntry[] {
  const model: ValueEntry[] = [];
  let l = START;
  let atLsn = new Set<bigint>();
  while (model.length < n) {
    if (rng.bool(0.6)) {
      l = lsn(l + BigInt(1 + rng.int(200)));
      atLsn = new Set();
    }
    const key = BigInt(1 + rng.int(keyCount)) as Key;
    if (atLsn.has(key)) continue;
    atLsn.add(key);
    const value = randomValue(rng);
    layer.put(key, l, value);
    model.push({ key, lsn: l, value });
  }
  return model.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.lsn < b.lsn ? -1 : 1));
}

/** Every entry of the delta layer file at `path`, in its order. */
async function readDelta(path: string): Promise<ValueEntry[]> {
  const r = await DeltaLayerReader.open(path);
  try {
    const out: ValueEntry[] = [];
    for await (const e of r.iterate()) out.push(e);
    return out;
  } finally {
    await r.close();
  }
}

function modelGet(model: ValueEntry[], key: Key, start: Lsn, end: Lsn, stopAtBase = false): ValueEntry[] {
  const hits = model.filter((e) => e.key === key && e.lsn >= start && e.lsn < end).reverse();
  const i = stopAtBase ? hits.findIndex((e) => isBase(e.value)) : -1;
  return i < 0 ? hits : hits.slice(0, i + 1);
}

test("in-memory layer: reads match the model while open (buffer and file) and after freezing; flush writes an equal delta", async () => {
  await withTempDir(async (dir) => {
    const rng = new Rng(21);
    const layer = InMemoryLayer.create({ dir, startLsn: START, writeBufferBytes: 16 * 1024 });
    try {
      const model = fill(layer, rng, 3000, 150);
      assert.equal(layer.entries, 3000);
      assert.equal(layer.keyCount, new Set(model.map((e) => e.key)).size);
      assert.ok(layer.sizeBytes > layer.valueBytes);
      assert.deepEqual(layer.desc.lsnRange, { start: START, end: LSN_MAX });
      const maxLsn = model.reduce((m, e) => (e.lsn > m ? e.lsn : m), START);
      const check = async (q: number) => {
        for (let i = 0; i < q; i++) {
          const key = BigInt(1 + rng.int(160)) as Key;
          const a = lsn(START + BigInt(rng.int(Number(maxLsn - START) + 10)));
          const b = lsn(a + BigInt(rng.int(Number(maxLsn - START))));
          const stopAtBase = rng.bool(0.3);
          assert.deepEqual(await layer.getValues(key, { start: a, end: b }, { stopAtBase }), modelGet(model, key, a, b, stopAtBase));
        }
      };
      await check(400);
      const invalid = (e: unknown) => e instanceof StrataError && e.code === "invalid_argument";
      assert.throws(() => layer.put(1n as Key, lsn(START - 1n), randomValue(rng)), invalid);
      assert.throws(() => layer.put(1n as Key, lsn(maxLsn - 1n), randomValue(rng)), invalid);
      const dupKey = model.find((e) => e.lsn === maxLsn)!.key;
      assert.throws(() => layer.put(dupKey, maxLsn, randomValue(rng)), invalid);
      await assert.rejects(layer.writeDeltaLayer(dir), invalid);
      assert.throws(() => layer.freeze(maxLsn), invalid);
      const end = lsn(maxLsn + 1n);
      layer.freeze(end);
      assert.ok(layer.frozen);
      assert.deepEqual(layer.desc.lsnRange, { start: START, end });
      assert.throws(() => layer.put(1n as Key, lsn(end + 5n), randomValue(rng)), invalid);
      assert.throws(() => layer.freeze(lsn(end + 5n)), invalid);
      await check(400);

      const ac = new AbortController();
      ac.abort();
      await assert.rejects(layer.writeDeltaLayer(dir, { signal: ac.signal }), (e: unknown) => e instanceof StrataError && e.code === "cancelled");
      assert.equal((await readdir(dir)).filter((n) => !n.startsWith("ephemeral-")).length, 0, "a cancelled flush leaves no file");
      const written = await layer.writeDeltaLayer(dir, { indexPageSizeBytes: 1024 });
      assert.deepEqual(parseLayerFileName(written.name), { kind: "delta", keyRange: { start: KEY_MIN, end: KEY_END }, lsnRange: { start: START, end } });
      const flushed = await readDelta(written.path);
      assert.deepEqual(flushed, model);
    } finally {
      layer.close();
    }
    // Only the flushed delta remains; the ephemeral file is gone.
    const names = await readdir(dir);
    assert.equal(names.length, 1);
    assert.ok(!names[0]!.includes("ephemeral"));
  });
});

test("write-behind: values in flight are read from their buffers; flush and close wait for the writes; the delta holds every value", async () => {
  await withTempDir(async (dir) => {
    const layer = InMemoryLayer.create({ dir, startLsn: START }); // default buffers (the pooled size)
    try {
      const model = fill(layer, new Rng(5), 1500, 100); // ~1.3 MiB of values, no yield: several buffers in flight
      const inFlight = layer.writesInFlight;
      assert.ok(inFlight >= 2 && inFlight <= MAX_INFLIGHT_WRITES, `${inFlight} writes in flight`);
      // getValues reads synchronously (the promise is settled before any write completion can run)
      const keys = [...new Set(model.map((e) => e.key))];
      const reads = keys.map((key) => layer.getValues(key, { start: START, end: LSN_MAX as Lsn }));
      assert.equal(layer.writesInFlight, inFlight, "no completion ran meanwhile");
      for (let i = 0; i < keys.length; i++) assert.deepEqual(await reads[i], modelGet(model, keys[i]!, START, LSN_MAX as Lsn));
      const end = lsn(model.reduce((m, e) => (e.lsn > m ? e.lsn : m), START) + 1n);
      layer.freeze(end); // hands the last buffer to the thread pool too
      const written = await layer.writeDeltaLayer(dir);
      assert.equal(layer.writesInFlight, 0);
      const flushed = await readDelta(written.path);
      assert.deepEqual(flushed, model);
    } finally {
      layer.close();
    }
  });
  // close() with writes in flight: the descriptor is closed only after the last one completed
  await withTempDir(async (dir) => {
    const layer = InMemoryLayer.create({ dir, startLsn: START });
    fill(layer, new Rng(6), 1500, 100);
    assert.ok(layer.writesInFlight > 0);
    const name = layer.path.slice(layer.path.lastIndexOf("/") + 1);
    layer.close();
    assert.deepEqual(await readdir(dir), [], "the name goes at once");
    await layer.writesSettled();
    assert.equal(layer.writesInFlight, 0);
    await new Promise((r) => setTimeout(r, 50)); // the close itself runs on the thread pool
    if (existsSync("/proc/self/fd")) {
      const open = readdirSync("/proc/self/fd").map((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`);
        } catch {
          return "";
        }
      });
      assert.ok(!open.some((target) => target.includes(name)), "the ephemeral file's descriptor is closed");
    }
  });
});

test("in-memory layer keeps values out of the JavaScript heap (64 MiB of pages, bounded growth)", async () => {
  setFlagsFromString("--expose-gc");
  const v8gc = runInNewContext("gc") as () => void;
  // ArrayBuffer backing stores are released after a collection, on a later tick: collect a few times.
  const gc = async () => {
    for (let i = 0; i < 3; i++) {
      v8gc();
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  await withTempDir(async (dir) => {
    const layer = InMemoryLayer.create({ dir, startLsn: START });
    try {
      const page = new Uint8Array(8192);
      await gc();
      const before = process.memoryUsage();
      const n = 8192; // 64 MiB of images
      for (let i = 0; i < n; i++) {
        page[0] = i & 0xff;
        page[1] = i >> 8;
        layer.put(BigInt(i % 1024) as Key, lsn(START + BigInt(i)), { kind: "image", bytes: page });
      }
      await gc();
      const after = process.memoryUsage();
      const grownBytes = after.heapUsed + after.arrayBuffers + after.external - (before.heapUsed + before.arrayBuffers + before.external);
      assert.ok(layer.valueBytes >= n * 8192);
      // (plus the process's kept write-behind buffers: a constant, whatever the layer's size)
      const keptBytes = KEPT_WRITE_BUFFERS * DEFAULT_INMEMORY_WRITE_BUFFER_BYTES;
      assert.ok(grownBytes < 8 * 1024 * 1024 + keptBytes, `heap grew by ${grownBytes} bytes for ${layer.valueBytes} bytes of values`);
      const got = await layer.getValues(5n as Key, { start: START, end: LSN_MAX as Lsn });
      assert.equal(got.length, 8);
      const newest = got[0]!;
      assert.equal(newest.lsn, lsn(START + 7n * 1024n + 5n));
      assert.ok(newest.value.kind === "image" && newest.value.bytes[0] === ((7 * 1024 + 5) & 0xff) && newest.value.bytes[1] === (7 * 1024 + 5) >> 8);
    } finally {
      layer.close();
    }
  });
});

test("flush groups: any group and read-window size writes the same delta layer (grouped sweep, direct reads, per-value keys)", async () => {
  await withTempDir(async (dir) => {
    const layer = InMemoryLayer.create({ dir, startLsn: START, writeBufferBytes: 4096 });
    try {
      const model = fill(layer, new Rng(99), 3000, 150);
      layer.freeze(lsn(layer.lastPutLsn! + 1n));
      // 9000-byte groups: a key with two 8 KiB images exceeds a group (read value by value);
      // a 100-byte window is smaller than most values (read directly into the group buffer).
      // ({} reads the whole file at once, whole-file mode; the small groups sweep the file in key groups.)
      const configs = [{}, { groupBytes: 20_000, readChunkBytes: 4096 }, { groupBytes: 9000, readChunkBytes: 100 }, { groupBytes: 1 << 20, readChunkBytes: 777 }];
      let first: Buffer | undefined;
      for (const [i, cfg] of configs.entries()) {
        const sub = `${dir}/out${i}`;
        await mkdir(sub);
        const written = await layer.writeDeltaLayer(sub, cfg);
        const bytes = await readFile(written.path);
        first ??= bytes;
        assert.ok(bytes.equals(first), `config ${JSON.stringify(cfg)} writes the same bytes as the default`);
        const flushed = await readDelta(written.path);
        assert.deepEqual(flushed, model, `config ${JSON.stringify(cfg)}`);
      }
    } finally {
      layer.close();
    }
  });
});

test("putWal / putWalAt store head ++ body as put would; one record under several keys is written once; slots stand for keys", async () => {
  await withTempDir(async (dir) => {
    const a = InMemoryLayer.create({ dir, startLsn: START, writeBufferBytes: 4096 });
    const b = InMemoryLayer.create({ dir, startLsn: START, writeBufferBytes: 4096 });
    try {
      const rng = new Rng(3);
      const head = new Uint8Array(12);
      const model: ValueEntry[] = [];
      let l = START;
      for (let i = 0; i < 400; i++) {
        l = lsn(l + BigInt(1 + rng.int(50)));
        const body = rng.bytes(rng.int(i % 50 === 0 ? 9000 : 300)); // some larger than the write buffer
        head.set(rng.bytes(12));
        const engine = rng.pick([undefined, "postgres", "native"] as const);
        const keys = [...new Set([1 + rng.int(30), 1 + rng.int(30)])].map((k) => BigInt(k) as Key); // one record, one or two blocks
        for (const key of keys) {
          const willInit = rng.bool(0.2);
          const value: Value = { kind: "wal", willInit, rec: new Uint8Array([...head, ...body]), ...(engine === undefined ? {} : { engine }) };
          a.putWalAt(a.slotOf(key), l, willInit, engine, head, body);
          b.put(key, l, value);
          model.push({ key, lsn: l, value });
        }
        head.fill(0xaa); // the caller may reuse its header buffer at once
      }
      assert.ok(a.valueBytes < b.valueBytes, "records put under two keys with the same flags share their bytes");
      for (let k = 1; k <= 30; k++) {
        const key = BigInt(k) as Key;
        assert.deepEqual(await a.getValues(key, { start: START, end: LSN_MAX as Lsn }), await b.getValues(key, { start: START, end: LSN_MAX as Lsn }));
      }
      a.freeze(lsn(l + 1n));
      const written = await a.writeDeltaLayer(dir);
      const flushed = await readDelta(written.path);
      model.sort((x, y) => (x.key < y.key ? -1 : x.key > y.key ? 1 : x.lsn < y.lsn ? -1 : 1));
      assert.deepEqual(flushed, model);
      // a duplicate (key, LSN) through a slot is refused like through a key
      const l2 = lsn(l + 10n);
      b.putWalAt(b.slotOf(1n as Key), l2, false, undefined, head, new Uint8Array(1));
      assert.throws(() => b.putWalAt(b.slotOf(1n as Key), l2, false, undefined, head, new Uint8Array(1)), (e: unknown) => e instanceof StrataError && e.code === "invalid_argument");
      assert.throws(() => a.slotOf(999n as Key), (e: unknown) => e instanceof StrataError && e.code === "invalid_argument", "frozen");
    } finally {
      a.close();
      b.close();
    }
  });
});

test("relation-block slots by fork table equal slots by key; other keys keep their own; reads and the flush see both", async () => {
  await withTempDir(async (dir) => {
    const layer = InMemoryLayer.create({ dir, startLsn: START });
    try {
      const rng = new Rng(17);
      const tags = [
        { spcOid: 1663, dbOid: 5, relNumber: 16384, fork: 0 },
        { spcOid: 1663, dbOid: 5, relNumber: 16384, fork: 2 },
        { spcOid: 1664, dbOid: 0, relNumber: 16384, fork: 0 }, // same relation number, other tablespace
        { spcOid: 0xffffffff, dbOid: 0xffffffff, relNumber: 0xffffffff, fork: 3 },
      ];
      // blocks in the dense table and beyond it (1 << 20 and up), including the largest valid block
      const blocks = [0, 1, 63, 64, 1000, (1 << 20) - 1, 1 << 20, 0xfffffffe];
      const others = [relSizeKey(tags[0]!), relmapKey(1663, 5), relDirKey(1663, 5), slruBlockKey(SlruKind.Clog, 0, 3), 5n as Key, (KEY_END - 1n) as Key];
      const model: ValueEntry[] = [];
      let l = START;
      for (let round = 0; round < 3; round++) {
        for (const tag of tags) {
          for (const blk of blocks) {
            l = lsn(l + 8n);
            const key = relBlockKey(tag, blk);
            const viaTable = layer.forkSlots(tag.spcOid, tag.dbOid, tag.relNumber, tag.fork).slotOf(blk);
            assert.equal(layer.slotOf(key), viaTable, `slot of ${formatKey(key)}`);
            const value: Value = { kind: "image", bytes: rng.bytes(1 + rng.int(20)) };
            // alternate between the two ways in, so each finds what the other created
            layer.putAt(rng.bool() ? viaTable : layer.slotOf(key), l, value);
            model.push({ key, lsn: l, value });
          }
        }
        for (const key of others) {
          l = lsn(l + 8n);
          const value: Value = { kind: "image", bytes: rng.bytes(3) };
          layer.putAt(layer.slotOf(key), l, value);
          model.push({ key, lsn: l, value });
        }
      }
      assert.equal(layer.keyCount, tags.length * blocks.length + others.length);
      for (const key of new Set(model.map((e) => e.key))) {
        const want = model.filter((e) => e.key === key).reverse();
        assert.deepEqual(await layer.getValues(key, { start: START, end: LSN_MAX as Lsn }), want, formatKey(key));
      }
      assert.deepEqual(await layer.getValues(relBlockKey(tags[0]!, 2), { start: START, end: LSN_MAX as Lsn }), [], "a block never put");
      layer.freeze(lsn(l + 1n));
      const written = await layer.writeDeltaLayer(dir);
      const flushed = await readDelta(written.path);
      model.sort((x, y) => (x.key < y.key ? -1 : x.key > y.key ? 1 : x.lsn < y.lsn ? -1 : 1));
      assert.deepEqual(flushed, model);
    } finally {
      layer.close();
    }
  });
});

test("fork slot tables: a block kept in the Map stays found after the dense table grows over it; memory follows the keys", async () => {
  await withTempDir(async (dir) => {
    const layer = InMemoryLayer.create({ dir, startLsn: START });
    try {
      const tag = { spcOid: 1663, dbOid: 5, relNumber: 16400, fork: 0 };
      const table = layer.forkSlots(tag.spcOid, tag.dbOid, tag.relNumber, tag.fork);
      const far = table.slotOf(5000); // beyond the initial dense cover: kept in the Map
      const slots = new Map<number, number>([[5000, far]]);
      for (let b = 0; b < 600; b++) slots.set(b * 9, table.slotOf(b * 9)); // 600 keys: the dense cover grows past 5000
      for (const [b, s] of slots) {
        assert.equal(table.slotOf(b), s, `block ${b}`);
        assert.equal(layer.slotOf(relBlockKey(tag, b)), s, `block ${b} by key`);
      }
      assert.equal(layer.keyCount, slots.size);
      assert.equal(table.find(1), -1);
    } finally {
      layer.close();
    }
  });
});
