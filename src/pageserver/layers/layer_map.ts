/**
 * The layer map: the set of layers of one timeline, and the search that tells
 * GetPage which layer to read next.
 *
 * Contents: historic layers (delta and image files, immutable), the frozen
 * in-memory layers waiting to be flushed (oldest first), and the open
 * in-memory layer. In-memory layers cover every key and are always newer
 * than every historic layer.
 *
 * The central query is `search(key, endLsn)`: of the versions of `key` with
 * LSN < endLsn, which layer holds the newest, and down to which LSN (the
 * floor) is that layer authoritative? The caller reads that layer for
 * [floor, endLsn), then searches again below the floor, until it meets an
 * image or a will-init record. The rule:
 *
 *   - img   = the image layer covering `key` with the greatest LSN L < endLsn
 *   - delta = among delta layers covering `key` with start < endLsn, the one
 *             with the greatest effective end min(end, endLsn) (ties: the
 *             smallest start, i.e. the one covering the most history)
 *   - if img exists and delta's effective end <= L + 1 (it holds nothing
 *     newer than the image): answer img, floor L;
 *   - else answer delta, floor max(delta.start, L + 1) (or delta.start).
 *
 * Every answer's floor is < endLsn, so a walk always terminates. A delta
 * layer holds *every* version of the keys in its rectangle, so answering any
 * layer whose range reaches furthest up is correct even when layers overlap
 * (e.g. compaction's level-1 outputs next to the level-0 inputs they copy,
 * before the inputs are removed).
 *
 * Structure and complexity: historic layers are grouped by identical key
 * range (level-0 deltas all share the full range; compaction cuts a few
 * hundred partitions at most). Each group keeps its deltas sorted by end LSN
 * with a suffix-minimum of start LSNs, and its images sorted by LSN, rebuilt
 * lazily after changes. A search visits each group whose key range contains
 * the key (a linear pass over G groups, pruned by start) and does two binary
 * searches in each: O(G + G_k log n) for G groups, G_k of them containing the
 * key, n layers. With ~10k layers in ≲ 1000 key ranges that is a few
 * microseconds to tens of microseconds; an interval tree over groups would
 * make the pass logarithmic if partitioning ever gets that fine.
 * Modifications cost O(group size · log) at the next search.
 */
import { assert, StrataError } from "../../lib/errors.js";
import { lsnMax, type Lsn } from "../../lib/lsn.js";
import type { Key } from "../key.js";
import type { Layer } from "./layer.js";
import { formatLayerFileName } from "./layer_name.js";
import { keyRangesOverlap, lsnRangesOverlap, type KeyRange, type LsnRange } from "./range.js";

/** searchSpan's span end when no group boundary lies above the key: above every key (keys are 18 bytes). */
export const KEY_SPAN_UNBOUNDED: bigint = 1n << 144n;

export interface SearchResult {
  readonly layer: Layer;
  /** The layer holds every version of the key in [lsnFloor, endLsn) that exists. */
  readonly lsnFloor: Lsn;
}

interface Group {
  readonly keyRange: KeyRange;
  /** Sorted by (end asc, start desc) once rebuilt. */
  deltas: Layer[];
  /** sufMin[i] = index in [i, n) of the delta with the smallest start. */
  sufMin: number[];
  /** Sorted by LSN asc once rebuilt. */
  images: Layer[];
  dirty: boolean;
}

function rangeId(r: KeyRange): string {
  return `${r.start.toString(16)}-${r.end.toString(16)}`;
}

function cmpBig(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function rebuild(g: Group): void {
  g.deltas.sort((a, b) => cmpBig(a.desc.lsnRange.end, b.desc.lsnRange.end) || cmpBig(b.desc.lsnRange.start, a.desc.lsnRange.start));
  g.images.sort((a, b) => cmpBig(a.desc.lsnRange.start, b.desc.lsnRange.start));
  const n = g.deltas.length;
  g.sufMin = new Array<number>(n);
  for (let i = n - 1; i >= 0; i--) {
    const next = i + 1 < n ? g.sufMin[i + 1]! : i;
    g.sufMin[i] = g.deltas[i]!.desc.lsnRange.start <= g.deltas[next]!.desc.lsnRange.start ? i : next;
  }
  g.dirty = false;
}

/** Running best candidates of one search. */
class Candidates {
  img: Layer | undefined;
  imgLsn = 0n;
  delta: Layer | undefined;
  deltaEff = 0n;
  deltaStart = 0n;

  constructor(private readonly endLsn: Lsn) {}

  considerDelta(layer: Layer): void {
    const { start, end } = layer.desc.lsnRange;
    if (start >= this.endLsn) return;
    const eff = end < this.endLsn ? end : this.endLsn;
    if (this.delta === undefined || eff > this.deltaEff || (eff === this.deltaEff && start < this.deltaStart)) {
      this.delta = layer;
      this.deltaEff = eff;
      this.deltaStart = start;
    }
  }

  considerImage(layer: Layer): void {
    const l = layer.desc.lsnRange.start;
    if (l >= this.endLsn) return;
    if (this.img === undefined || l > this.imgLsn) {
      this.img = layer;
      this.imgLsn = l;
    }
  }

  result(): SearchResult | undefined {
    if (this.img !== undefined && (this.delta === undefined || this.deltaEff <= this.imgLsn + 1n)) {
      return { layer: this.img, lsnFloor: this.imgLsn as Lsn };
    }
    if (this.delta === undefined) return undefined;
    const floor = this.img === undefined ? this.deltaStart : lsnMax(this.deltaStart as Lsn, (this.imgLsn + 1n) as Lsn);
    return { layer: this.delta, lsnFloor: floor as Lsn };
  }
}

export class LayerMap {
  private readonly groups = new Map<string, Group>();
  /** Groups sorted by key range start (then end); rebuilt when a group is added or removed. */
  private groupList: Group[] = [];
  private groupListDirty = false;
  /** File name -> layer, for uniqueness and lookups. */
  private readonly historic = new Map<string, Layer>();
  private open: Layer | undefined;
  private readonly frozen: Layer[] = [];

  get openLayer(): Layer | undefined {
    return this.open;
  }

  /** Frozen in-memory layers, oldest first. */
  get frozenLayers(): readonly Layer[] {
    return this.frozen;
  }

  get historicCount(): number {
    return this.historic.size;
  }

  historicLayers(): IterableIterator<Layer> {
    return this.historic.values();
  }

  getHistoric(fileName: string): Layer | undefined {
    return this.historic.get(fileName);
  }

  /** Installs a new open in-memory layer; there must be none. */
  setOpenLayer(layer: Layer): void {
    assert(this.open === undefined, "an open in-memory layer already exists");
    assert(layer.desc.kind === "delta", "in-memory layers are deltas");
    this.open = layer;
  }

  /** Moves the open layer (already frozen by its owner) to the frozen list. */
  freezeOpenLayer(): Layer {
    const l = this.open;
    assert(l !== undefined, "no open in-memory layer to freeze");
    this.open = undefined;
    this.frozen.push(l);
    return l;
  }

  /** A flush finished: the oldest frozen layer is replaced by the delta file written from it. */
  replaceFrozen(frozen: Layer, flushed: Layer): void {
    assert(this.frozen[0] === frozen, "frozen layers are flushed oldest first");
    this.insertHistoric(flushed);
    this.frozen.shift();
  }

  insertHistoric(layer: Layer): void {
    const name = formatLayerFileName(layer.desc);
    if (this.historic.has(name)) throw new StrataError("invalid_argument", `Layer map already holds ${name}`);
    this.historic.set(name, layer);
    const id = rangeId(layer.desc.keyRange);
    let g = this.groups.get(id);
    if (g === undefined) {
      g = { keyRange: layer.desc.keyRange, deltas: [], sufMin: [], images: [], dirty: true };
      this.groups.set(id, g);
      this.groupListDirty = true;
    }
    (layer.desc.kind === "delta" ? g.deltas : g.images).push(layer);
    g.dirty = true;
  }

  removeHistoric(layer: Layer): void {
    const name = formatLayerFileName(layer.desc);
    if (this.historic.get(name) !== layer) throw new StrataError("not_found", `Layer map does not hold ${name}`);
    this.historic.delete(name);
    const id = rangeId(layer.desc.keyRange);
    const g = this.groups.get(id)!;
    const list = layer.desc.kind === "delta" ? g.deltas : g.images;
    list.splice(list.indexOf(layer), 1);
    g.dirty = true;
    if (g.deltas.length === 0 && g.images.length === 0) {
      this.groups.delete(id);
      this.groupListDirty = true;
    }
  }

  /** Compaction/GC: swaps layers in one step so no search sees a half-applied change. */
  replaceHistoric(remove: readonly Layer[], add: readonly Layer[]): void {
    for (const l of add) {
      const name = formatLayerFileName(l.desc);
      if (this.historic.has(name) && !remove.includes(this.historic.get(name)!)) {
        throw new StrataError("invalid_argument", `Layer map already holds ${name}`);
      }
    }
    for (const l of remove) this.removeHistoric(l);
    for (const l of add) this.insertHistoric(l);
  }

  private sortedGroups(): Group[] {
    if (this.groupListDirty) {
      this.groupList = [...this.groups.values()].sort(
        (a, b) => cmpBig(a.keyRange.start, b.keyRange.start) || cmpBig(a.keyRange.end, b.keyRange.end),
      );
      this.groupListDirty = false;
    }
    return this.groupList;
  }

  /** The layer holding the newest version of `key` below `endLsn`, and its floor (see the module comment). */
  search(key: Key, endLsn: Lsn): SearchResult | undefined {
    return this.searchSpan(key, endLsn).result;
  }

  /**
   * `search(key, endLsn)`, plus `spanEnd`: every key in [key, spanEnd) gets
   * the same answer. Why: a range read (reconstruct.ts
   * collectReconstructDataRange) groups consecutive keys by their answer, and
   * one search per group replaces one per key. The answer depends only on
   * the set of groups whose key range contains the key (in-memory layers
   * cover every key), and that set changes only at a group's start or end:
   * spanEnd is the nearest such boundary above `key` (KEY_SPAN_UNBOUNDED
   * when there is none).
   */
  searchSpan(key: Key, endLsn: Lsn): { result: SearchResult | undefined; spanEnd: bigint } {
    const c = new Candidates(endLsn);
    if (this.open !== undefined) c.considerDelta(this.open);
    for (const f of this.frozen) c.considerDelta(f);
    const groups = this.sortedGroups();
    // Groups with start > key cannot contain it: binary search the cut.
    let lo = 0;
    let hi = groups.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (groups[mid]!.keyRange.start <= key) lo = mid + 1;
      else hi = mid;
    }
    // the next group start above the key (groups are sorted by start), then the nearest end of a containing group
    let spanEnd: bigint = lo < groups.length ? groups[lo]!.keyRange.start : KEY_SPAN_UNBOUNDED;
    for (let gi = 0; gi < lo; gi++) {
      const g = groups[gi]!;
      if (key >= g.keyRange.end) continue;
      if (g.keyRange.end < spanEnd) spanEnd = g.keyRange.end;
      if (g.dirty) rebuild(g);
      this.searchGroup(g, endLsn, c);
    }
    return { result: c.result(), spanEnd };
  }

  private searchGroup(g: Group, endLsn: Lsn, c: Candidates): void {
    // Images: the last with LSN < endLsn.
    let lo = 0;
    let hi = g.images.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (g.images[mid]!.desc.lsnRange.start < endLsn) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0) c.considerImage(g.images[lo - 1]!);
    // Deltas: i = first with end >= endLsn. A straddler (start < endLsn <= end) has the
    // maximal effective end; the one with the smallest start is sufMin[i]. Otherwise the
    // best is the last delta ending below endLsn (smallest start among equal ends).
    lo = 0;
    hi = g.deltas.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (g.deltas[mid]!.desc.lsnRange.end < endLsn) lo = mid + 1;
      else hi = mid;
    }
    if (lo < g.deltas.length) {
      const s = g.deltas[g.sufMin[lo]!]!;
      if (s.desc.lsnRange.start < endLsn) {
        c.considerDelta(s);
        return;
      }
    }
    if (lo > 0) c.considerDelta(g.deltas[lo - 1]!);
  }

  /** Historic layers intersecting a key range x LSN range (linear; for compaction and GC planning). */
  layersOverlapping(keyRange: KeyRange, lsnRange: LsnRange): Layer[] {
    const out: Layer[] = [];
    for (const g of this.sortedGroups()) {
      if (!keyRangesOverlap(g.keyRange, keyRange)) continue;
      for (const l of g.deltas) if (lsnRangesOverlap(l.desc.lsnRange, lsnRange)) out.push(l);
      for (const l of g.images) if (lsnRangesOverlap(l.desc.lsnRange, lsnRange)) out.push(l);
    }
    return out;
  }

  /**
   * The parts of `keyRange` NOT covered by any image layer whose LSN lies in
   * `lsnRange`, as sorted disjoint ranges; empty means fully covered. E.g.
   * GC asks whether a delta's key range has an image at or above its end and
   * at or below the cutoff; compaction asks where images are missing.
   */
  imageCoverageGaps(keyRange: KeyRange, lsnRange: LsnRange): KeyRange[] {
    const covering: KeyRange[] = [];
    for (const g of this.sortedGroups()) {
      if (!keyRangesOverlap(g.keyRange, keyRange)) continue;
      if (g.images.some((l) => lsnRangesOverlap(l.desc.lsnRange, lsnRange))) covering.push(g.keyRange);
    }
    // groupList is sorted by start: sweep.
    const gaps: KeyRange[] = [];
    let cur = keyRange.start;
    for (const r of covering) {
      if (cur >= keyRange.end) break;
      if (r.start > cur) gaps.push({ start: cur, end: r.start < keyRange.end ? r.start : keyRange.end });
      if (r.end > cur) cur = r.end;
    }
    if (cur < keyRange.end) gaps.push({ start: cur, end: keyRange.end });
    return gaps;
  }

  /** Whether an image layer with LSN in `lsnRange` covers every key of `keyRange`. */
  isCoveredByImages(keyRange: KeyRange, lsnRange: LsnRange): boolean {
    return this.imageCoverageGaps(keyRange, lsnRange).length === 0;
  }
}
