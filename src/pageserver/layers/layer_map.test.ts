import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../../lib/errors.js";
import { lsn, type Lsn } from "../../lib/lsn.js";
import { KEY_END, KEY_MIN, type Key } from "../key.js";
import type { Layer } from "./layer.js";
import type { LayerDesc } from "./layer_name.js";
import { LayerMap, type SearchResult } from "./layer_map.js";
import { FULL_KEY_RANGE, keyRangeContains, LSN_UNBOUNDED, type KeyRange, type LsnRange } from "./range.js";
import { Rng } from "./test_support.js";
import type { ValueEntry } from "./value.js";

/** A layer that is only a rectangle: enough for the map's queries. */
class RectLayer implements Layer {
  constructor(readonly desc: LayerDesc) {}
  async getValues(): Promise<ValueEntry[]> {
    return [];
  }
}

const k = (n: number) => BigInt(n) as Key;
const L = (n: number | bigint) => lsn(n);
const delta = (ks: number, ke: number, ls: number, le: number | bigint) =>
  new RectLayer({ kind: "delta", keyRange: { start: k(ks), end: ke < 0 ? KEY_END : k(ke) }, lsnRange: { start: L(ls), end: L(le) } });
const image = (ks: number, ke: number, at: number) =>
  new RectLayer({ kind: "image", keyRange: { start: k(ks), end: ke < 0 ? KEY_END : k(ke) }, lsnRange: { start: L(at), end: L(at + 1) } });

/** The rule of layer_map.ts, by scanning every layer. */
function bruteSearch(layers: Layer[], key: Key, end: Lsn): SearchResult | undefined {
  let img: Layer | undefined;
  let best: Layer | undefined;
  let bestEff = 0n;
  for (const l of layers) {
    if (!keyRangeContains(l.desc.keyRange, key) || l.desc.lsnRange.start >= end) continue;
    if (l.desc.kind === "image") {
      if (img === undefined || l.desc.lsnRange.start > img.desc.lsnRange.start) img = l;
      continue;
    }
    const eff = l.desc.lsnRange.end < end ? l.desc.lsnRange.end : end;
    if (best === undefined || eff > bestEff || (eff === bestEff && l.desc.lsnRange.start < best.desc.lsnRange.start)) {
      best = l;
      bestEff = eff;
    }
  }
  if (img !== undefined && (best === undefined || bestEff <= img.desc.lsnRange.start + 1n)) return { layer: img, lsnFloor: img.desc.lsnRange.start };
  if (best === undefined) return undefined;
  const s = best.desc.lsnRange.start;
  const floor = img === undefined || s > img.desc.lsnRange.start ? s : ((img.desc.lsnRange.start + 1n) as Lsn);
  return { layer: best, lsnFloor: floor };
}

/** What identifies an answer up to ties between equal rectangles. */
function sig(r: SearchResult | undefined, end: Lsn): string {
  if (r === undefined) return "none";
  const d = r.layer.desc;
  const eff = d.lsnRange.end < end ? d.lsnRange.end : end;
  return `${d.kind} start=${d.lsnRange.start} eff=${eff} floor=${r.lsnFloor}`;
}

test("hand-made cases: images cut deltas, floors, overlapping deltas, in-memory layers", () => {
  const m = new LayerMap();
  const d1 = delta(0, -1, 0, 100);
  const d2 = delta(0, -1, 100, 200);
  const img = image(0, 50, 150);
  const d3 = delta(0, 50, 0, 200); // compaction output overlapping d1 and d2 for keys < 50
  for (const l of [d1, d2, img]) m.insertHistoric(l);
  assert.deepEqual(m.search(k(10), L(250)), { layer: d2, lsnFloor: L(151) });
  assert.deepEqual(m.search(k(10), L(151)), { layer: img, lsnFloor: L(150) });
  assert.deepEqual(m.search(k(60), L(151)), { layer: d2, lsnFloor: L(100) });
  assert.deepEqual(m.search(k(60), L(100)), { layer: d1, lsnFloor: L(0) });
  assert.equal(m.search(k(60), L(0)), undefined);
  m.insertHistoric(d3);
  assert.deepEqual(m.search(k(10), L(120)), { layer: d3, lsnFloor: L(0) });
  assert.deepEqual(m.search(k(60), L(120)), { layer: d2, lsnFloor: L(100) });
  const frozen = new RectLayer({ kind: "delta", keyRange: FULL_KEY_RANGE, lsnRange: { start: L(200), end: L(300) } });
  const open = new RectLayer({ kind: "delta", keyRange: FULL_KEY_RANGE, lsnRange: { start: L(300), end: LSN_UNBOUNDED } });
  m.setOpenLayer(frozen);
  assert.equal(m.freezeOpenLayer(), frozen);
  m.setOpenLayer(open);
  assert.deepEqual(m.search(k(10), L(1000)), { layer: open, lsnFloor: L(300) });
  assert.deepEqual(m.search(k(10), L(300)), { layer: frozen, lsnFloor: L(200) });
  const flushed = delta(0, -1, 200, 300);
  m.replaceFrozen(frozen, flushed);
  assert.deepEqual(m.search(k(10), L(300)), { layer: flushed, lsnFloor: L(200) });
  assert.throws(() => m.insertHistoric(delta(0, -1, 200, 300)), (e: unknown) => e instanceof StrataError && e.code === "invalid_argument");
  m.replaceHistoric([d1, d2], [delta(0, -1, 0, 200)]);
  assert.equal(m.historicCount, 4);
  assert.throws(() => m.removeHistoric(d1), (e: unknown) => e instanceof StrataError && e.code === "not_found");
});

function randomLayers(rng: Rng, n: number, keySpace: number, lsnSpace: number): Layer[] {
  // A few recurring key partitions plus arbitrary ranges, so groups hold several layers.
  const partitions: KeyRange[] = [FULL_KEY_RANGE];
  for (let i = 0; i < 6; i++) {
    const a = rng.int(keySpace);
    partitions.push({ start: k(a), end: k(a + 1 + rng.int(keySpace - a)) });
  }
  const out: Layer[] = [];
  const names = new Set<string>();
  while (out.length < n) {
    let kr: KeyRange;
    if (rng.bool(0.7)) kr = rng.pick(partitions);
    else {
      const a = rng.int(keySpace);
      kr = { start: k(a), end: k(a + 1 + rng.int(keySpace - a)) };
    }
    let desc: LayerDesc;
    if (rng.bool(0.3)) {
      const at = rng.int(lsnSpace);
      desc = { kind: "image", keyRange: kr, lsnRange: { start: L(at), end: L(at + 1) } };
    } else {
      const a = rng.int(lsnSpace);
      desc = { kind: "delta", keyRange: kr, lsnRange: { start: L(a), end: L(a + 1 + rng.int(lsnSpace / 4)) } };
    }
    const id = JSON.stringify(desc, (_, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
    if (names.has(id)) continue;
    names.add(id);
    out.push(new RectLayer(desc));
  }
  return out;
}

test("randomized: search agrees with a brute-force scan, before and after removals", () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    const rng = new Rng(seed);
    const layers = randomLayers(rng, 400, 100, 1000);
    const m = new LayerMap();
    for (const l of layers) m.insertHistoric(l);
    const all = [...layers];
    if (seed % 2 === 0) {
      const frozen = new RectLayer({ kind: "delta", keyRange: FULL_KEY_RANGE, lsnRange: { start: L(1000), end: L(1100) } });
      const open = new RectLayer({ kind: "delta", keyRange: FULL_KEY_RANGE, lsnRange: { start: L(1100), end: LSN_UNBOUNDED } });
      m.setOpenLayer(frozen);
      m.freezeOpenLayer();
      m.setOpenLayer(open);
      all.push(frozen, open);
    }
    const check = (list: Layer[]) => {
      for (let q = 0; q < 3000; q++) {
        const key = k(rng.int(110));
        const end = L(rng.int(1300));
        const got = m.search(key, end);
        assert.equal(sig(got, end), sig(bruteSearch(list, key, end), end), `seed ${seed} key ${key} end ${end}`);
        if (got !== undefined) {
          assert.ok(got.lsnFloor < end && keyRangeContains(got.layer.desc.keyRange, key));
        }
        // searchSpan: the same answer for every key below its span end (what a range read relies on)
        const { result, spanEnd } = m.searchSpan(key, end);
        assert.equal(sig(result, end), sig(got, end));
        assert.ok(spanEnd > key, `seed ${seed}: span end ${spanEnd} not above key ${key}`);
        for (let kk = key + 1n; kk < spanEnd && kk < key + 12n; kk++) {
          assert.equal(sig(bruteSearch(list, kk as Key, end), end), sig(got, end), `seed ${seed} key ${kk} inside the span of ${key} (end ${spanEnd}) at ${end}`);
        }
      }
    };
    check(all);
    for (let i = 0; i < 150; i++) {
      const victim = layers.splice(rng.int(layers.length), 1)[0]!;
      m.removeHistoric(victim);
      all.splice(all.indexOf(victim), 1);
    }
    check(all);
  }
});

test("randomized: image coverage gaps agree with a per-key brute force", () => {
  const rng = new Rng(77);
  const layers = randomLayers(rng, 300, 200, 1000);
  const m = new LayerMap();
  for (const l of layers) m.insertHistoric(l);
  for (let q = 0; q < 500; q++) {
    const a = rng.int(210);
    const range: KeyRange = { start: k(a), end: k(a + 1 + rng.int(60)) };
    const ls = rng.int(1000);
    const lsnRange: LsnRange = { start: L(ls), end: L(ls + 1 + rng.int(500)) };
    const gaps = m.imageCoverageGaps(range, lsnRange);
    for (let i = 1; i < gaps.length; i++) assert.ok(gaps[i - 1]!.end < gaps[i]!.start, "gaps sorted, disjoint, not adjacent");
    for (let key = range.start; key < range.end; key++) {
      const covered = layers.some(
        (l) => l.desc.kind === "image" && keyRangeContains(l.desc.keyRange, key as Key) && l.desc.lsnRange.start >= lsnRange.start && l.desc.lsnRange.start < lsnRange.end,
      );
      const inGap = gaps.some((g) => keyRangeContains(g, key as Key));
      assert.equal(inGap, !covered, `key ${key} range ${range.start}..${range.end} lsns ${ls}`);
    }
    assert.equal(m.isCoveredByImages(range, lsnRange), gaps.length === 0);
  }
  assert.deepEqual(new LayerMap().imageCoverageGaps({ start: KEY_MIN, end: KEY_END }, { start: L(0), end: L(10) }), [{ start: KEY_MIN, end: KEY_END }]);
  const overlapping = m.layersOverlapping({ start: k(10), end: k(20) }, { start: L(100), end: L(200) });
  const expected = layers.filter((l) => l.desc.keyRange.start < k(20) && k(10) < l.desc.keyRange.end && l.desc.lsnRange.start < L(200) && L(100) < l.desc.lsnRange.end);
  assert.equal(overlapping.length, expected.length);
  assert.ok(expected.every((l) => overlapping.includes(l)));
});

test("10k layers: 20k searches stay fast and agree with brute force on a sample", () => {
  const m = new LayerMap();
  const layers: Layer[] = [];
  const add = (l: Layer) => {
    layers.push(l);
    m.insertHistoric(l);
  };
  const PARTS = 100;
  const part = (i: number) => ({ start: k(i * 1000), end: i === PARTS - 1 ? KEY_END : k((i + 1) * 1000) });
  // 4000 level-1 deltas (100 partitions x 40 LSN ranges), 1000 images (100 x 10), 5000 level-0 deltas above them.
  for (let j = 0; j < 40; j++) for (let i = 0; i < PARTS; i++) add(new RectLayer({ kind: "delta", keyRange: part(i), lsnRange: { start: L(j * 1000), end: L((j + 1) * 1000) } }));
  for (let j = 0; j < 10; j++) for (let i = 0; i < PARTS; i++) add(new RectLayer({ kind: "image", keyRange: part(i), lsnRange: { start: L(j * 4000 + 500), end: L(j * 4000 + 501) } }));
  for (let j = 0; j < 5000; j++) add(new RectLayer({ kind: "delta", keyRange: FULL_KEY_RANGE, lsnRange: { start: L(40000 + j * 10), end: L(40000 + (j + 1) * 10) } }));
  assert.equal(m.historicCount, 10000);
  const rng = new Rng(3);
  const t0 = performance.now();
  for (let q = 0; q < 20000; q++) {
    const key = k(rng.int(PARTS * 1000));
    const end = L(rng.int(100000));
    const got = m.search(key, end);
    if (q % 100 === 0) assert.equal(sig(got, end), sig(bruteSearch(layers, key, end), end));
  }
  const ms = performance.now() - t0;
  // Generous bound for a loaded 2-core machine; typically well under a second (brute force included).
  assert.ok(ms < 10000, `20k searches took ${ms.toFixed(0)} ms`);
  console.log(`layer map: 10k layers, 20k searches (+200 brute-force checks) in ${ms.toFixed(0)} ms`);
});
