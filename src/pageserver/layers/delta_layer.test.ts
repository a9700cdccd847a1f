import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readdir, readFile, truncate, appendFile, writeFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { StrataError } from "../../lib/errors.js";
import { lsn, type Lsn } from "../../lib/lsn.js";
import { formatKey, KEY_END, keyToBytes, relBlockKey, type Key } from "../key.js";
import { DeltaLayerReader, DeltaLayerWriter } from "./delta_layer.js";
import { ImageLayerReader } from "./image_layer.js";
import { HEADER_SIZE_BYTES, readKey, writeKey, type DeltaVersionBatch } from "./layer_file.js";
import { IndexPageCache } from "./page_cache.js";
import type { KeyRange, LsnRange } from "./range.js";
import { assertCorrupt, Rng, withTempDir } from "./test_support.js";
import { encodeValue, isBase, type Value, type ValueEntry } from "./value.js";

const cmp = (a: bigint, b: bigint) => (a < b ? -1 : a > b ? 1 : 0);

function randomValue(rng: Rng): Value {
  const r = rng.next();
  if (r < 0.1) return { kind: "image", bytes: rng.bytes(8192) };
  if (r < 0.15) return { kind: "image", bytes: rng.bytes(rng.int(40)) };
  return { kind: "wal", willInit: rng.bool(0.1), rec: rng.bytes(rng.int(300)), ...(rng.bool() ? { engine: rng.bool() ? "postgres" : "native" } : {}) };
}

/** A sorted model of (key, lsn, value) entries inside keyRange x lsnRange. */
export function makeEntries(rng: Rng, n: number, keyCount: number, keyRange: KeyRange, lsnRange: LsnRange, valueOf = randomValue): ValueEntry[] {
  const span = keyRange.end - keyRange.start;
  const keys = new Set<bigint>();
  while (keys.size < keyCount) keys.add(keyRange.start + (BigInt(Math.floor(rng.next() * 2 ** 52)) * span) / 2n ** 52n);
  const keyList = [...keys] as Key[];
  const lspan = Number(lsnRange.end - lsnRange.start);
  const seen = new Set<string>();
  const out: ValueEntry[] = [];
  while (out.length < n) {
    const key = rng.pick(keyList);
    const l = (lsnRange.start + BigInt(rng.int(lspan))) as Lsn;
    const id = `${key}/${l}`;
    if (seen.has(id)) continue;
    seen.add(id);
    out.push({ key, lsn: l, value: valueOf(rng) });
  }
  return out.sort((a, b) => cmp(a.key, b.key) || cmp(a.lsn, b.lsn));
}

function modelGet(entries: ValueEntry[], key: Key, r: LsnRange, stopAtBase = false): ValueEntry[] {
  const hits = entries.filter((e) => e.key === key && e.lsn >= r.start && e.lsn < r.end).reverse();
  if (!stopAtBase) return hits;
  const i = hits.findIndex((e) => isBase(e.value));
  return i < 0 ? hits : hits.slice(0, i + 1);
}

async function writeDelta(dir: string, entries: ValueEntry[], keyRange: KeyRange, lsnRange: LsnRange, pageSize?: number) {
  const w = await DeltaLayerWriter.create({ dir, keyRange, lsnRange, ...(pageSize === undefined ? {} : { indexPageSizeBytes: pageSize }) });
  for (const e of entries) await w.put(e.key, e.lsn, e.value);
  return w.finish();
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

const REL = { spcOid: 1663, dbOid: 5, relNumber: 16384, fork: 0 };
const KR: KeyRange = { start: relBlockKey(REL, 0), end: relBlockKey(REL, 1_000_000) };
const LR: LsnRange = { start: lsn(0x1000000), end: lsn(0x1100000) };

test("random entries: lookups on a deep index (256-byte pages) match the model", async () => {
  await withTempDir(async (dir) => {
    const rng = new Rng(42);
    const entries = makeEntries(rng, 4000, 300, KR, LR);
    const written = await writeDelta(dir, entries, KR, LR, 256);
    assert.ok(written.header.indexDepth >= 4, `depth ${written.header.indexDepth}`);
    assert.equal(written.header.entryCount, 4000);
    assert.deepEqual(await readdir(dir), [written.name]);
    const cache = new IndexPageCache(64);
    const r = await DeltaLayerReader.open(written.path, { cache });
    try {
      assert.equal(r.entryCount, 4000);
      assert.deepEqual(r.desc, { kind: "delta", keyRange: KR, lsnRange: LR });
      const keys = [...new Set(entries.map((e) => e.key))];
      for (let q = 0; q < 1000; q++) {
        const key = rng.bool(0.85) ? rng.pick(keys) : ((KR.start + BigInt(rng.int(2 ** 30))) as Key);
        const a = LR.start - 10n + BigInt(rng.int(Number(LR.end - LR.start) + 20));
        const b = a + BigInt(rng.int(Number(LR.end - LR.start) / 2));
        const range = { start: lsn(a), end: lsn(b) };
        const stopAtBase = rng.bool(0.3);
        assert.deepEqual(await r.getValues(key, range, { stopAtBase }), modelGet(entries, key, range, stopAtBase), `query ${q}`);
      }
      assert.ok(cache.hits > cache.misses, `cache hits ${cache.hits} misses ${cache.misses}`);
      // Full and partial iteration.
      assert.deepEqual(await collect(r.iterate()), entries);
      const sub = { start: keys[50]!, end: keys[120]! };
      assert.deepEqual(await collect(r.iterate(sub)), entries.filter((e) => e.key >= sub.start && e.key < sub.end));
      assert.deepEqual(await collect(r.iterate({ start: KEY_END, end: KEY_END })), []);
    } finally {
      await r.close();
    }
  });
});

test("default 8 KiB pages: 20k small entries give a two-level index; every entry is found", async () => {
  await withTempDir(async (dir) => {
    const rng = new Rng(7);
    const tiny = (g: Rng): Value => ({ kind: "wal", willInit: false, rec: g.bytes(g.int(12)) });
    const entries = makeEntries(rng, 20000, 4000, KR, LR, tiny);
    const written = await writeDelta(dir, entries, KR, LR);
    assert.equal(written.header.indexDepth, 2);
    const r = await DeltaLayerReader.open(written.path);
    try {
      const byKey = new Map<bigint, ValueEntry[]>();
      for (const e of entries) byKey.set(e.key, [...(byKey.get(e.key) ?? []), e]);
      const allKeys = [...byKey.keys()] as Key[];
      for (let q = 0; q < 1000; q++) {
        const key = rng.pick(allKeys);
        assert.deepEqual(await r.getValues(key, LR), [...byKey.get(key)!].reverse());
      }
    } finally {
      await r.close();
    }
  });
});

test("an empty delta layer is valid and answers nothing", async () => {
  await withTempDir(async (dir) => {
    const written = await writeDelta(dir, [], KR, LR);
    const r = await DeltaLayerReader.open(written.path);
    assert.equal(r.entryCount, 0);
    assert.deepEqual(await r.getValues(KR.start, LR), []);
    assert.deepEqual(await collect(r.iterate()), []);
    await r.close();
  });
});

test("the writer refuses unsorted, duplicate and out-of-range entries; abort leaves nothing", async () => {
  await withTempDir(async (dir) => {
    const w = await DeltaLayerWriter.create({ dir, keyRange: KR, lsnRange: LR });
    const v: Value = { kind: "wal", willInit: false, rec: new Uint8Array(3) };
    const k = (KR.start + 10n) as Key;
    await w.put(k, lsn(LR.start + 5n), v);
    const invalid = (e: unknown) => e instanceof StrataError && e.code === "invalid_argument";
    await assert.rejects(w.put(k, lsn(LR.start + 5n), v), invalid);
    await assert.rejects(w.put(k, lsn(LR.start + 4n), v), invalid);
    await assert.rejects(w.put((k - 1n) as Key, lsn(LR.start + 9n), v), invalid);
    await assert.rejects(w.put(KR.end, lsn(LR.start + 9n), v), invalid);
    await assert.rejects(w.put(k, LR.end, v), invalid);
    // Until finish() the final name does not exist: only a .tmp file.
    const names = await readdir(dir);
    assert.equal(names.length, 1);
    assert.ok(names[0]!.endsWith(".tmp"));
    await w.abort();
    assert.deepEqual(await readdir(dir), []);
  });
});

test("every sampled single-byte corruption (header, index pages, values) is detected as corrupt_data", async () => {
  await withTempDir(async (dir) => {
    const rng = new Rng(99);
    const entries = makeEntries(rng, 60, 12, KR, LR, (g) => ({ kind: "wal", willInit: g.bool(0.2), rec: g.bytes(g.int(40)) }));
    const written = await writeDelta(dir, entries, KR, LR, 256);
    const original = await readFile(written.path);
    const target = join(dir, "victim");
    // All header bytes, then every 11th byte of the rest (index pages and values alike).
    const positions: number[] = [];
    for (let i = 0; i < original.length; i++) if (i < HEADER_SIZE_BYTES || i % 11 === 0) positions.push(i);
    // A full iteration reads every index page and every value, so every byte is checked.
    const readAll = async () => {
      const r = await DeltaLayerReader.open(target, { cache: new IndexPageCache(16) });
      try {
        await collect(r.iterate());
      } finally {
        await r.close();
      }
    };
    await writeFile(target, original);
    await readAll(); // the pristine copy reads fine
    for (const pos of positions) {
      const damaged = Buffer.from(original);
      damaged[pos] = damaged[pos]! ^ (1 + rng.int(255));
      await writeFile(target, damaged);
      await assertCorrupt(readAll, target, `byte ${pos} of ${original.length}`);
    }
    assert.ok(positions.length > 500, `${positions.length} positions`);
    // Point lookups never serve damaged data: each either fails with corrupt_data or returns
    // exactly the model's answer, and together they notice every damaged byte.
    for (const pos of positions.filter((_, i) => i % 4 === 0)) {
      const damaged = Buffer.from(original);
      damaged[pos] = damaged[pos]! ^ 0x5a;
      await writeFile(target, damaged);
      let detected = 0;
      let r: DeltaLayerReader;
      try {
        r = await DeltaLayerReader.open(target, { cache: new IndexPageCache(16) });
      } catch (e) {
        assert.ok(e instanceof StrataError && e.code === "corrupt_data");
        continue;
      }
      for (const key of new Set(entries.map((e) => e.key))) {
        try {
          assert.deepEqual(await r.getValues(key, LR), modelGet(entries, key, LR), `byte ${pos}: wrong data served`);
        } catch (err) {
          if (!(err instanceof StrataError)) throw err;
          assert.equal(err.code, "corrupt_data");
          detected++;
        }
      }
      await r.close();
      assert.ok(detected > 0, `byte ${pos}: no lookup noticed the damage`);
    }
  });
});

test("truncated or extended files and the wrong layer kind are rejected at open", async () => {
  await withTempDir(async (dir) => {
    const rng = new Rng(5);
    const entries = makeEntries(rng, 200, 30, KR, LR);
    const written = await writeDelta(dir, entries, KR, LR, 512);
    const original = await readFile(written.path);
    const target = join(dir, "victim");
    for (const len of [0, 1, 100, HEADER_SIZE_BYTES - 1, HEADER_SIZE_BYTES, HEADER_SIZE_BYTES + 1, original.length >> 1, original.length - 1]) {
      await writeFile(target, original);
      await truncate(target, len);
      assert.equal((await stat(target)).size, len);
      await assertCorrupt(() => DeltaLayerReader.open(target), target, `truncated to ${len}`);
    }
    await writeFile(target, original);
    await appendFile(target, Buffer.from([0]));
    await assertCorrupt(() => DeltaLayerReader.open(target), target, "extended by one byte");
    await assertCorrupt(() => ImageLayerReader.open(written.path), written.path, "opened as image");
    await assert.rejects(DeltaLayerReader.open(join(dir, "missing")), (e: unknown) => e instanceof StrataError && e.code === "not_found");
  });
});

test("values crossing the 1 MiB output buffer (and larger than it) round-trip; putEncoded awaits only when it must", async () => {
  await withTempDir(async (dir) => {
    const rng = new Rng(77);
    // Sizes chosen to land on and across output-buffer boundaries: tiny, page-sized, 300 KiB, 1 MiB + 1, 2.5 MiB.
    const sizes = [1, 8193, 300 * 1024, 1024 * 1024 + 1, 5, 2.5 * 1024 * 1024, 700 * 1024, 12, 1024 * 1024 - 4, 3];
    const entries: Array<{ key: Key; lsn: Lsn; encoded: Uint8Array }> = [];
    for (let i = 0; i < 400; i++) {
      const encoded = encodeValue({ kind: "image", bytes: rng.bytes(i < sizes.length * 4 ? sizes[i % sizes.length]! : rng.int(200)) });
      // Several versions per key, so the writer's reuse of a key's bytes is exercised too.
      entries.push({ key: relBlockKey(REL, Math.floor(i / 3)), lsn: (LR.start + BigInt(i % 3)) as Lsn, encoded });
    }
    const w = await DeltaLayerWriter.create({ dir, keyRange: KR, lsnRange: LR });
    let pendingCount = 0;
    for (const e of entries) {
      const pending = w.putEncoded(e.key, e.lsn, e.encoded);
      if (pending !== undefined) {
        pendingCount++;
        await pending;
      }
    }
    assert.ok(pendingCount > 0 && pendingCount < entries.length / 4, `awaited ${pendingCount} of ${entries.length} puts`);
    const written = await w.finish();
    const r = await DeltaLayerReader.open(written.path, { cache: new IndexPageCache(64) });
    try {
      const got = await collect(r.iterateEncoded());
      assert.equal(got.length, entries.length);
      got.forEach((g, i) => {
        assert.equal(g.key, entries[i]!.key);
        assert.equal(g.lsn, entries[i]!.lsn);
        assert.ok(Buffer.from(g.encoded).equals(entries[i]!.encoded), `value ${i}`);
      });
      const versions = await r.getValues(entries[5]!.key, LR);
      assert.equal(versions.length, 3);
    } finally {
      await r.close();
    }
  });
});

test("writeKey writes the same 18 bytes as keyToBytes, for extreme and random keys", () => {
  const rng = new Rng(5);
  const keys: bigint[] = [0n, 1n, KEY_END - 1n, 1n << 128n, (1n << 64n) - 1n, 1n << 64n];
  for (let i = 0; i < 500; i++) keys.push(BigInt("0x" + Buffer.from(rng.bytes(18)).toString("hex")));
  const b = Buffer.alloc(20, 0xaa);
  for (const k of keys) {
    writeKey(b, 1, k as Key);
    assert.deepEqual(b.subarray(1, 19), Buffer.from(keyToBytes(k as Key)), formatKey(k));
    assert.equal(b[0], 0xaa);
    assert.equal(b[19], 0xaa);
    assert.equal(readKey(b, 1), k);
  }
});

test("putEncodedAtNumber writes the same file as putEncoded and refuses LSNs outside the range or inexact", async () => {
  await withTempDir(async (dir) => {
    const rng = new Rng(5);
    const entries = makeEntries(rng, 500, 40, KR, LR);
    const files: Buffer[] = [];
    for (const byNumber of [false, true]) {
      const sub = join(dir, byNumber ? "num" : "big");
      await mkdir(sub);
      const w = await DeltaLayerWriter.create({ dir: sub, keyRange: KR, lsnRange: LR });
      for (const e of entries) {
        const enc = encodeValue(e.value);
        const p = byNumber ? w.putEncodedAtNumber(e.key, Number(e.lsn), enc) : w.putEncoded(e.key, e.lsn, enc);
        if (p !== undefined) await p;
      }
      files.push(await readFile((await w.finish()).path));
    }
    assert.ok(files[0]!.equals(files[1]!), "same bytes");
    const w = await DeltaLayerWriter.create({ dir, keyRange: KR, lsnRange: LR });
    const invalid = (f: () => unknown) => assert.throws(f, (e: unknown) => e instanceof StrataError && e.code === "invalid_argument");
    const k = (KR.start + 1n) as Key;
    invalid(() => w.putEncodedAtNumber(k, Number(LR.end), new Uint8Array([1])));
    invalid(() => w.putEncodedAtNumber(k, Number(LR.start) - 1, new Uint8Array([1])));
    invalid(() => w.putEncodedAtNumber(k, Number(LR.start) + 0.5, new Uint8Array([1])));
    await w.abort();
  });
});

/** Groups sorted entries by key into one DeltaVersionBatch (values laid out in a shared buffer) plus each key's [from, to). */
function batchOf(entries: ReadonlyArray<{ key: Key; lsn: Lsn; encoded: Uint8Array }>): { batch: DeltaVersionBatch; runs: Array<{ key: Key; from: number; to: number }> } {
  const total = entries.reduce((a, e) => a + e.encoded.length + 3, 0);
  const src = new Uint8Array(total);
  const batch: DeltaVersionBatch = { src, lsn: new Float64Array(entries.length), at: new Int32Array(entries.length), len: new Int32Array(entries.length) };
  const runs: Array<{ key: Key; from: number; to: number }> = [];
  let at = 0;
  entries.forEach((e, i) => {
    at += 3; // gaps between values, as in a flush's value buffer
    src.set(e.encoded, at);
    batch.lsn[i] = Number(e.lsn);
    batch.at[i] = at;
    batch.len[i] = e.encoded.length;
    at += e.encoded.length;
    const last = runs[runs.length - 1];
    if (last !== undefined && last.key === e.key) last.to = i + 1;
    else runs.push({ key: e.key, from: i, to: i + 1 });
  });
  return { batch, runs };
}

test("putVersions (a key's versions in one call) writes byte-for-byte the file putEncoded writes, across buffers and leaves", async () => {
  await withTempDir(async (dir) => {
    const rng = new Rng(8);
    // Small values (the common case), page images, and values around and above the 1 MiB output buffer;
    // 256-byte index pages give many leaves, so leaves fill at every position of the output buffer.
    const sizes = [1, 64, 65, 255, 256, 8192, 300 * 1024, 1024 * 1024 + 1, 1024 * 1024 - 4, 2.5 * 1024 * 1024];
    const entries: Array<{ key: Key; lsn: Lsn; encoded: Uint8Array }> = [];
    let keyNo = 0;
    while (entries.length < 6000) {
      const versions = 1 + rng.int(rng.bool(0.1) ? 60 : 4);
      let l = LR.start + BigInt(rng.int(100));
      for (let v = 0; v < versions; v++) {
        const size = rng.bool(0.01) ? sizes[rng.int(sizes.length)]! : rng.int(200);
        entries.push({ key: relBlockKey(REL, keyNo), lsn: l as Lsn, encoded: encodeValue({ kind: "image", bytes: rng.bytes(size) }) });
        l += BigInt(1 + rng.int(500));
      }
      keyNo += 1 + rng.int(3);
    }
    for (const pageSize of [256, 8192]) {
      const files: Buffer[] = [];
      for (const batched of [false, true]) {
        const sub = join(dir, `${pageSize}-${batched}`);
        await mkdir(sub);
        const w = await DeltaLayerWriter.create({ dir: sub, keyRange: KR, lsnRange: LR, indexPageSizeBytes: pageSize });
        if (batched) {
          const { batch, runs } = batchOf(entries);
          for (const r of runs) {
            const p = w.putVersions(r.key, batch, r.from, r.to);
            if (p !== undefined) await p;
          }
        } else {
          for (const e of entries) {
            const p = w.putEncoded(e.key, e.lsn, e.encoded);
            if (p !== undefined) await p;
          }
        }
        const written = await w.finish();
        assert.equal(written.header.entryCount, entries.length);
        files.push(await readFile(written.path));
      }
      assert.ok(files[0]!.equals(files[1]!), `page size ${pageSize}: the batched file differs`);
    }
  });
});

test("putVersions refuses versions out of order, duplicate, inexact or outside the LSN range, and keys out of order", async () => {
  await withTempDir(async (dir) => {
    const k1 = relBlockKey(REL, 10);
    const k0 = relBlockKey(REL, 9);
    const base = Number(LR.start);
    const mk = (lsns: number[]): DeltaVersionBatch => ({ src: new Uint8Array(8), lsn: Float64Array.from(lsns), at: new Int32Array(lsns.length), len: new Int32Array(lsns.length).fill(1) });
    const invalid = (f: () => unknown) => assert.throws(f, (e: unknown) => e instanceof StrataError && e.code === "invalid_argument");
    const w = await DeltaLayerWriter.create({ dir, keyRange: KR, lsnRange: LR });
    invalid(() => w.putVersions(k1, mk([base + 5, base + 4]), 0, 2)); // descending
    invalid(() => w.putVersions(k1, mk([base + 5, base + 5]), 0, 2)); // duplicate
    invalid(() => w.putVersions(k1, mk([base + 0.5]), 0, 1)); // inexact
    invalid(() => w.putVersions(k1, mk([Number(LR.end)]), 0, 1)); // outside the layer's LSN range
    invalid(() => w.putVersions(k1, mk([base - 1]), 0, 1));
    invalid(() => w.putVersions(KR.end, mk([base]), 0, 1)); // outside the key range
    assert.equal(w.putVersions(k1, mk([base + 5, base + 6]), 0, 2), undefined);
    invalid(() => w.putVersions(k1, mk([base + 6]), 0, 1)); // not after the last entry of the same key
    invalid(() => w.putVersions(k0, mk([base + 7]), 0, 1)); // a smaller key
    assert.equal(w.putVersions(k1, mk([base + 7]), 0, 1), undefined); // the same key, later LSN: fine
    assert.equal(w.entries, 3);
    const written = await w.finish();
    const r = await DeltaLayerReader.open(written.path);
    try {
      assert.deepEqual((await collect(r.iterateEncoded())).map((e) => [e.key, e.lsn]), [[k1, lsn(base + 5)], [k1, lsn(base + 6)], [k1, lsn(base + 7)]]);
    } finally {
      await r.close();
    }
  });
});
