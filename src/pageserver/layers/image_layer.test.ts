import { test } from "node:test";
import assert from "node:assert/strict";
import { readdir, readFile, writeFile, truncate } from "node:fs/promises";
import { join } from "node:path";
import { StrataError } from "../../lib/errors.js";
import { lsn, LSN_MAX, type Lsn } from "../../lib/lsn.js";
import { KEY_END, KEY_MIN, type Key } from "../key.js";
import { DeltaLayerReader } from "./delta_layer.js";
import { ImageLayerReader, ImageLayerWriter } from "./image_layer.js";
import { HEADER_SIZE_BYTES } from "./layer_file.js";
import { parseLayerFileName } from "./layer_name.js";
import { IndexPageCache } from "./page_cache.js";
import type { KeyRange } from "./range.js";
import { assertCorrupt, Rng, withTempDir } from "./test_support.js";

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

function makeImages(rng: Rng, n: number, range: KeyRange): Array<{ key: Key; bytes: Uint8Array }> {
  const keys = new Set<bigint>();
  const span = Number(range.end - range.start);
  while (keys.size < n) keys.add(range.start + BigInt(rng.int(span)));
  return [...keys]
    .sort((a, b) => (a < b ? -1 : 1))
    .map((k) => ({ key: k as Key, bytes: rng.bytes(rng.bool(0.7) ? 8192 : rng.int(64)) }));
}

const KR: KeyRange = { start: 1000n as Key, end: 1_000_000n as Key };
const AT = lsn(0x2a0000);

async function writeImage(dir: string, images: Array<{ key: Key; bytes: Uint8Array }>, keyRange = KR, pageSize?: number, generation?: number) {
  const w = await ImageLayerWriter.create({
    dir, keyRange, lsn: AT,
    ...(pageSize === undefined ? {} : { indexPageSizeBytes: pageSize }),
    ...(generation === undefined ? {} : { generation }),
  });
  for (const i of images) await w.put(i.key, i.bytes);
  return w.finish();
}

test("image layer: present keys return their image, absent keys nothing, iteration is in key order", async () => {
  await withTempDir(async (dir) => {
    const rng = new Rng(11);
    const images = makeImages(rng, 1500, KR);
    const written = await writeImage(dir, images, KR, 256, 3);
    assert.ok(written.header.indexDepth >= 3);
    assert.deepEqual(parseLayerFileName(written.name), { kind: "image", keyRange: KR, lsnRange: { start: AT, end: lsn(AT + 1n) }, generation: 3 });
    const r = await ImageLayerReader.open(written.path, { cache: new IndexPageCache(32) });
    try {
      assert.equal(r.lsn, AT);
      assert.equal(r.desc.generation, 3);
      const present = new Map(images.map((i) => [i.key as bigint, i.bytes]));
      for (let q = 0; q < 1500; q++) {
        const key = (rng.bool(0.6) ? rng.pick(images).key : KR.start - 5n + BigInt(rng.int(Number(KR.end - KR.start) + 10))) as Key;
        assert.deepEqual(await r.getImage(key), present.get(key), `key ${key}`);
      }
      const k = images[7]!;
      assert.deepEqual(await r.getValues(k.key, { start: AT, end: lsn(AT + 1n) }), [{ key: k.key, lsn: AT, value: { kind: "image", bytes: k.bytes } }]);
      assert.deepEqual(await r.getValues(k.key, { start: lsn(0), end: AT }), []);
      assert.deepEqual(await r.getValues(k.key, { start: lsn(AT + 1n), end: lsn(AT + 9n) }), []);
      const all = await collect(r.iterate());
      assert.deepEqual(all.map((e) => [e.key, e.value.kind === "image" ? e.value.bytes : null]), images.map((i) => [i.key, i.bytes]));
      const sub = { start: images[100]!.key, end: images[200]!.key };
      assert.equal((await collect(r.iterate(sub))).length, 100);
    } finally {
      await r.close();
    }
  });
});

test("image writer refuses unsorted and out-of-range keys, an image at the maximum LSN, and reopening as delta", async () => {
  await withTempDir(async (dir) => {
    const w = await ImageLayerWriter.create({ dir, keyRange: KR, lsn: AT });
    const invalid = (e: unknown) => e instanceof StrataError && e.code === "invalid_argument";
    await w.put(5000n as Key, new Uint8Array(1));
    await assert.rejects(w.put(5000n as Key, new Uint8Array(1)), invalid);
    await assert.rejects(w.put(10n as Key, new Uint8Array(1)), invalid);
    await assert.rejects(w.put(KR.end, new Uint8Array(1)), invalid);
    await w.abort();
    assert.deepEqual(await readdir(dir), []);
    await assert.rejects(ImageLayerWriter.create({ dir, keyRange: KR, lsn: LSN_MAX as Lsn }), invalid);
    const full = await writeImage(dir, [{ key: KEY_MIN, bytes: new Uint8Array(3) }], { start: KEY_MIN, end: KEY_END });
    const fr = await ImageLayerReader.open(full.path);
    assert.equal(fr.desc.keyRange.end, KEY_END);
    await fr.close();
    await assertCorrupt(() => DeltaLayerReader.open(full.path), full.path, "image opened as delta");
  });
});

test("image layer corruption: sampled single-byte flips and truncations are corrupt_data", async () => {
  await withTempDir(async (dir) => {
    const rng = new Rng(12);
    const images = makeImages(rng, 40, KR).map((i) => ({ key: i.key, bytes: i.bytes.subarray(0, 50) }));
    const written = await writeImage(dir, images, KR, 256);
    const original = await readFile(written.path);
    const target = join(dir, "victim");
    const readAll = async () => {
      const r = await ImageLayerReader.open(target, { cache: new IndexPageCache(16) });
      try {
        await collect(r.iterate());
      } finally {
        await r.close();
      }
    };
    let n = 0;
    for (let pos = 0; pos < original.length; pos += pos < HEADER_SIZE_BYTES ? 1 : 13) {
      const damaged = Buffer.from(original);
      damaged[pos] = damaged[pos]! ^ (1 + rng.int(255));
      await writeFile(target, damaged);
      await assertCorrupt(readAll, target, `byte ${pos}`);
      n++;
    }
    assert.ok(n > 300);
    for (const len of [0, HEADER_SIZE_BYTES, original.length - 1]) {
      await writeFile(target, original);
      await truncate(target, len);
      await assertCorrupt(() => ImageLayerReader.open(target), target, `truncated to ${len}`);
    }
  });
});
