import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { lsn, type Lsn } from "../../lib/lsn.js";
import type { Key } from "../key.js";
import { DeltaLayerWriter } from "./delta_layer.js";
import { ImageLayerWriter } from "./image_layer.js";
import { InMemoryLayer } from "./inmemory_layer.js";
import { PersistentLayer, type Layer } from "./layer.js";
import type { LayerDesc } from "./layer_name.js";
import { LayerMap } from "./layer_map.js";
import { ReadArena } from "./layer_file.js";
import { collectReconstructData, collectReconstructDataRange, type ReconstructData } from "./reconstruct.js";
import { FULL_KEY_RANGE, keyRangeContains, LSN_UNBOUNDED, lsnRangeContains, type KeyRange, type LsnRange } from "./range.js";
import { assertCorrupt, Rng, withTempDir } from "./test_support.js";
import { isBase, type GetValuesOptions, type Value, type ValueEntry } from "./value.js";

/**
 * A synthetic history. Every version gets an id; a "page" is the list of ids
 * applied since its last base (image or will-init), so any reconstruction
 * mistake (a missed record, a wrong order, a stale image) changes the result.
 */
interface Version {
  key: Key;
  lsn: Lsn;
  id: number;
  value: Value;
}

const text = (s: string) => new TextEncoder().encode(s);
const untext = (b: Uint8Array) => new TextDecoder().decode(b);

function makeHistory(rng: Rng, keys: number, maxLsn: number): Version[] {
  const out: Version[] = [];
  let id = 0;
  for (let l = 1; l <= maxLsn; l++) {
    if (!rng.bool(0.4)) continue;
    const touched = new Set<number>();
    const n = 1 + rng.int(3);
    for (let i = 0; i < n; i++) touched.add(rng.int(keys));
    for (const kk of touched) {
      id++;
      const r = rng.next();
      const value: Value = r < 0.05
        ? { kind: "image", bytes: text(JSON.stringify([id])) }
        : { kind: "wal", willInit: r < 0.12, rec: text(String(id)), engine: "postgres" };
      out.push({ key: BigInt(kk) as Key, lsn: lsn(l), id, value });
    }
  }
  return out;
}

/** The page of `key` at `at`, by replaying the whole history: undefined if the key has no version yet. */
function materialize(history: Version[], key: Key, at: Lsn): number[] | undefined {
  let page: number[] | undefined;
  for (const v of history) {
    if (v.key !== key || v.lsn > at) continue;
    if (isBase(v.value)) page = [v.id];
    else (page ??= []).push(v.id);
  }
  return page;
}

function applyReconstruct(d: ReconstructData): number[] | undefined {
  let page: number[] | undefined = d.image === undefined ? undefined : (JSON.parse(untext(d.image.bytes)) as number[]);
  for (const r of d.records) {
    const id = Number(untext(r.value.rec));
    if (r.value.willInit) page = [id];
    else (page ??= []).push(id);
  }
  return page;
}

/** A layer holding exactly the history's versions inside its rectangle. */
class ModelLayer implements Layer {
  constructor(
    readonly desc: LayerDesc,
    private readonly entries: ValueEntry[],
  ) {}
  async getValues(key: Key, r: LsnRange, opts: GetValuesOptions = {}): Promise<ValueEntry[]> {
    const hits = this.entries.filter((e) => e.key === key && lsnRangeContains(r, e.lsn)).reverse();
    const i = opts.stopAtBase === true ? hits.findIndex((e) => isBase(e.value)) : -1;
    return i < 0 ? hits : hits.slice(0, i + 1);
  }
}

interface Plan {
  l0: LsnRange[];
  l1: Array<{ keyRange: KeyRange; lsnRange: LsnRange }>;
  images: Array<{ keyRange: KeyRange; lsn: Lsn }>;
  frozen: LsnRange;
  open: Lsn;
}

/** Level-0 chunks, some compacted into key-partitioned level-1 deltas (inputs sometimes kept), images, in-memory tail. */
function makePlan(rng: Rng, keys: number, maxLsn: number): Plan {
  const bounds = [1];
  while (bounds[bounds.length - 1]! < maxLsn - 200) bounds.push(bounds[bounds.length - 1]! + 40 + rng.int(160));
  const chunks: LsnRange[] = [];
  for (let i = 1; i < bounds.length; i++) chunks.push({ start: lsn(bounds[i - 1]!), end: lsn(bounds[i]!) });
  const cut = [0, 7, 19, 31, keys];
  const l1: Plan["l1"] = [];
  const l0: LsnRange[] = [];
  let i = 0;
  while (i < chunks.length) {
    const n = Math.min(chunks.length - i, 2 + rng.int(4));
    if (rng.bool(0.5)) {
      const lsnRange = { start: chunks[i]!.start, end: chunks[i + n - 1]!.end };
      for (let p = 1; p < cut.length; p++) l1.push({ keyRange: { start: BigInt(cut[p - 1]!) as Key, end: BigInt(cut[p]!) as Key }, lsnRange });
      if (rng.bool(0.3)) l0.push(...chunks.slice(i, i + n)); // inputs not yet removed: overlapping layers
    } else {
      l0.push(...chunks.slice(i, i + n));
    }
    i += n;
  }
  const images: Plan["images"] = [];
  for (let j = 0; j < 12; j++) {
    const p = 1 + rng.int(cut.length - 1);
    images.push({ keyRange: { start: BigInt(cut[p - 1]!) as Key, end: BigInt(cut[p]!) as Key }, lsn: lsn(1 + rng.int(bounds[bounds.length - 1]!)) });
  }
  const last = bounds[bounds.length - 1]!;
  const mid = last + 1 + rng.int(maxLsn - last - 1);
  return { l0, l1, images, frozen: { start: lsn(last), end: lsn(mid) }, open: lsn(mid) };
}

function entriesIn(history: Version[], keyRange: KeyRange, lsnRange: LsnRange): ValueEntry[] {
  return history
    .filter((v) => keyRangeContains(keyRange, v.key) && lsnRangeContains(lsnRange, v.lsn))
    .map((v) => ({ key: v.key, lsn: v.lsn, value: v.value }))
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.lsn < b.lsn ? -1 : a.lsn > b.lsn ? 1 : 0));
}

function imageEntries(history: Version[], keyRange: KeyRange, at: Lsn, keys: number): Array<{ key: Key; bytes: Uint8Array }> {
  const out: Array<{ key: Key; bytes: Uint8Array }> = [];
  for (let kk = 0; kk < keys; kk++) {
    const key = BigInt(kk) as Key;
    if (!keyRangeContains(keyRange, key)) continue;
    const page = materialize(history, key, at);
    if (page !== undefined) out.push({ key, bytes: text(JSON.stringify(page)) });
  }
  return out;
}

async function checkQueries(rng: Rng, map: LayerMap, history: Version[], keys: number, maxLsn: number, queries: number) {
  const stops = new Map<string, number>();
  for (let q = 0; q < queries; q++) {
    const key = BigInt(rng.int(keys + 2)) as Key;
    const at = lsn(rng.int(maxLsn + 20));
    const d = await collectReconstructData(map, key, at);
    stops.set(d.stop, (stops.get(d.stop) ?? 0) + 1);
    const expected = materialize(history, key, at);
    assert.deepEqual(applyReconstruct(d), expected, `key ${key} at ${at}: stop ${d.stop}`);
    for (let i = 1; i < d.records.length; i++) assert.ok(d.records[i - 1]!.lsn < d.records[i]!.lsn, "records oldest first");
    if (d.stop === "image") assert.ok(d.image !== undefined && d.continueBelowLsn === d.image.lsn);
    if (d.stop === "history_end") assert.ok(d.records.every((r) => !r.value.willInit) && d.image === undefined);
    if (expected === undefined) assert.ok(d.stop === "absent" || d.stop === "history_end");
  }
  return stops;
}

/**
 * Range reads answer exactly what per-key walks answer: same base image,
 * records, stop and floor for every key of random runs (some reaching past
 * the last key), with the reads shared per layer.
 */
async function checkRangeQueries(rng: Rng, map: LayerMap, keys: number, maxLsn: number, queries: number, arena?: ReadArena, withOnImage = false): Promise<Map<string, number>> {
  const stops = new Map<string, number>();
  for (let q = 0; q < queries; q++) {
    const first = rng.int(keys + 2);
    const count = 1 + rng.int(keys);
    const at = lsn(rng.int(maxLsn + 20));
    // onImage: images handed over during the scan (copied: the view is valid during the call only)
    const taken = new Map<number, Uint8Array>();
    const onImage = (i: number, bytes: Uint8Array) => {
      assert.ok(!taken.has(i), `image of index ${i} handed over twice`);
      taken.set(i, Uint8Array.from(bytes));
    };
    const got = await collectReconstructDataRange(map, BigInt(first) as Key, count, at, { ...(arena === undefined ? {} : { arena }), ...(withOnImage ? { onImage } : {}) });
    assert.equal(got.length, count);
    for (let i = 0; i < count; i++) {
      const key = BigInt(first + i) as Key;
      const want = await collectReconstructData(map, key, at);
      const g = got[i]!;
      stops.set(g.stop, (stops.get(g.stop) ?? 0) + 1);
      const where = `range ${first}+${count} at ${at}: key ${key}`;
      assert.equal(g.stop, want.stop, where);
      const t = taken.get(i);
      if (t !== undefined) {
        // taken: an image layer's image with nothing on top; the key's data then carries no image
        stops.set("image taken", (stops.get("image taken") ?? 0) + 1);
        assert.ok(want.image !== undefined && want.records.length === 0 && g.image === undefined, where);
        assert.deepEqual(t, Uint8Array.from(want.image.bytes), where);
      } else assert.deepEqual(g.image, want.image, where);
      assert.deepEqual(g.records, want.records, where);
      assert.equal(g.continueBelowLsn, want.continueBelowLsn, where);
      assert.equal(g.layersVisited, want.layersVisited.length, where);
    }
    arena?.reset();
  }
  return stops;
}

test("randomized histories: reconstruct data replays to the same page as a replay from scratch", async () => {
  const KEYS = 40;
  const MAX_LSN = 3000;
  for (const seed of [1, 2, 3, 4]) {
    const rng = new Rng(seed);
    const history = makeHistory(rng, KEYS, MAX_LSN);
    const plan = makePlan(rng, KEYS, MAX_LSN);
    const map = new LayerMap();
    for (const r of plan.l0) map.insertHistoric(new ModelLayer({ kind: "delta", keyRange: FULL_KEY_RANGE, lsnRange: r }, entriesIn(history, FULL_KEY_RANGE, r)));
    for (const p of plan.l1) map.insertHistoric(new ModelLayer({ kind: "delta", ...p }, entriesIn(history, p.keyRange, p.lsnRange)));
    for (const im of plan.images) {
      const desc: LayerDesc = { kind: "image", keyRange: im.keyRange, lsnRange: { start: im.lsn, end: lsn(im.lsn + 1n) } };
      const entries = imageEntries(history, im.keyRange, im.lsn, KEYS).map((e) => ({ key: e.key, lsn: im.lsn, value: { kind: "image" as const, bytes: e.bytes } }));
      try {
        map.insertHistoric(new ModelLayer(desc, entries));
      } catch {
        // the same image rectangle drawn twice
      }
    }
    map.setOpenLayer(new ModelLayer({ kind: "delta", keyRange: FULL_KEY_RANGE, lsnRange: plan.frozen }, entriesIn(history, FULL_KEY_RANGE, plan.frozen)));
    map.freezeOpenLayer();
    const openRange = { start: plan.open, end: LSN_UNBOUNDED };
    map.setOpenLayer(new ModelLayer({ kind: "delta", keyRange: FULL_KEY_RANGE, lsnRange: openRange }, entriesIn(history, FULL_KEY_RANGE, openRange)));
    const stops = await checkQueries(rng, map, history, KEYS, MAX_LSN, 3000);
    for (const s of ["image", "will_init", "history_end"]) assert.ok((stops.get(s) ?? 0) > 0, `seed ${seed}: no walk ended with ${s}: ${JSON.stringify([...stops])}`);
    const rangeStops = await checkRangeQueries(rng, map, KEYS, MAX_LSN, 200);
    for (const s of ["image", "will_init", "history_end"]) assert.ok((rangeStops.get(s) ?? 0) > 0, `seed ${seed}: no range walk ended with ${s}`);
  }
});

test("the same over real files: flushed in-memory layers, level-1 deltas, image files, and the open in-memory layer", async () => {
  await withTempDir(async (dir) => {
    const KEYS = 40;
    const MAX_LSN = 2000;
    const rng = new Rng(8);
    const history = makeHistory(rng, KEYS, MAX_LSN);
    const plan = makePlan(rng, KEYS, MAX_LSN);
    const map = new LayerMap();
    // Level 0: ingest each chunk into an in-memory layer, freeze, flush, and replace it by the file.
    const l0 = [...plan.l0].sort((a, b) => (a.start < b.start ? -1 : 1)).filter((r, i, all) => i === 0 || r.start !== all[i - 1]!.start);
    for (const r of l0) {
      const mem = InMemoryLayer.create({ dir, startLsn: r.start, writeBufferBytes: 4096 });
      for (const v of history) if (lsnRangeContains(r, v.lsn)) mem.put(v.key, v.lsn, v.value);
      mem.freeze(r.end);
      map.setOpenLayer(mem);
      map.freezeOpenLayer();
      const written = await mem.writeDeltaLayer(dir, { indexPageSizeBytes: 512 });
      map.replaceFrozen(mem, new PersistentLayer(dir, written.desc));
      mem.close();
    }
    // Level 1: key-partitioned deltas written directly.
    for (const p of plan.l1) {
      const w = await DeltaLayerWriter.create({ dir, keyRange: p.keyRange, lsnRange: p.lsnRange, indexPageSizeBytes: 256 });
      for (const e of entriesIn(history, p.keyRange, p.lsnRange)) await w.put(e.key, e.lsn, e.value);
      map.insertHistoric(new PersistentLayer(dir, (await w.finish()).desc));
    }
    for (const im of plan.images) {
      const w = await ImageLayerWriter.create({ dir, keyRange: im.keyRange, lsn: im.lsn, indexPageSizeBytes: 256 });
      for (const e of imageEntries(history, im.keyRange, im.lsn, KEYS)) await w.put(e.key, e.bytes);
      const written = await w.finish();
      // The plan may draw the same rectangle twice (same name, same content): keep one.
      if (map.getHistoric(written.name) === undefined) map.insertHistoric(new PersistentLayer(dir, written.desc));
    }
    const open = InMemoryLayer.create({ dir, startLsn: plan.frozen.start });
    for (const v of history) if (v.lsn >= plan.frozen.start) open.put(v.key, v.lsn, v.value);
    map.setOpenLayer(open);
    try {
      const stops = await checkQueries(rng, map, history, KEYS, MAX_LSN, 1500);
      assert.ok((stops.get("image") ?? 0) > 0 && (stops.get("will_init") ?? 0) > 0);
      // range reads over the files (scans of deep, small-page indexes), with and without recycled read-ahead buffers
      const rangeStops = await checkRangeQueries(rng, map, KEYS, MAX_LSN, 150);
      assert.ok((rangeStops.get("image") ?? 0) > 0 && (rangeStops.get("will_init") ?? 0) > 0 && (rangeStops.get("absent") ?? 0) + (rangeStops.get("history_end") ?? 0) > 0);
      await checkRangeQueries(rng, map, KEYS, MAX_LSN, 150, new ReadArena());
      // and with images handed over during the scan (what a backup's run reader does), some of them taken
      const takenStops = await checkRangeQueries(rng, map, KEYS, MAX_LSN, 150, new ReadArena(), true);
      assert.ok((takenStops.get("image taken") ?? 0) > 0 && (takenStops.get("image") ?? 0) > (takenStops.get("image taken") ?? 0));
    } finally {
      open.close();
      for (const l of map.historicLayers()) await (l as PersistentLayer).close();
    }
  });
});

test("a range read (a fullbackup's page run) over an image layer with a flipped byte in a page is corrupt_data naming the file and offset", async () => {
  await withTempDir(async (dir) => {
    const KEYS = 300;
    const w = await ImageLayerWriter.create({ dir, keyRange: { start: 0n as Key, end: BigInt(KEYS) as Key }, lsn: lsn(100) });
    for (let k = 0; k < KEYS; k++) await w.put(BigInt(k) as Key, new Uint8Array(8192).fill(k & 0xff));
    const written = await w.finish();
    const path = join(dir, written.name);
    // flip one byte in the middle of the page of key 200 (values follow the 128-byte header, 8192 + 4 bytes each, leaves interleaved)
    const bytes = await readFile(path);
    const target = Buffer.alloc(8192, 200);
    const at = bytes.indexOf(target);
    assert.ok(at > 0, "page of key 200 found in the file");
    bytes[at + 4000] = bytes[at + 4000]! ^ 0x10;
    await writeFile(path, bytes);
    const map = new LayerMap();
    const layer = new PersistentLayer(dir, written.desc);
    map.insertHistoric(layer);
    try {
      // the pages before the damage read fine; a run that covers it fails, with and without recycled buffers
      const ok = await collectReconstructDataRange(map, 0n as Key, 150, lsn(100));
      assert.equal(ok.filter((d) => d.stop === "image").length, 150);
      await assertCorrupt(() => collectReconstructDataRange(map, 128n as Key, 128, lsn(100)), path, "range read");
      await assertCorrupt(() => collectReconstructDataRange(map, 0n as Key, 256, lsn(100), { arena: new ReadArena() }), path, "range read with an arena");
    } finally {
      await layer.close();
    }
  });
});
