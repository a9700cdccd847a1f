/**
 * Collecting what it takes to reconstruct one version of a key.
 *
 * GetPage@LSN (DESIGN §4) walks the layer map newest to oldest: ask the map
 * which layer holds the newest version below the current bound, read that
 * layer's versions of the key down to the layer's floor, and continue below
 * the floor, until an image or a record that initializes the page (will-init)
 * is met. The output — an optional base image and the WAL records to apply on
 * it, oldest first — is the input of page reconstruction (redo), which is not
 * this module's business.
 *
 * "Version at LSN X" includes every version stored at an LSN <= X, so the
 * walk starts with the half-open bound X + 1.
 *
 * Where the walk can end:
 *   - "image":      a base image was found (`image` is set);
 *   - "will_init":  the oldest record initializes the page (no image needed);
 *   - "absent":     an image layer covering the key has no entry for it: the
 *                   key did not exist at that LSN. With no records the key
 *                   does not exist at X; records on top of nothing are
 *                   the caller's corrupt_data to report;
 *   - "history_end": this timeline's layers have nothing below `continueBelowLsn`.
 *                   A branch continues in its ancestor timeline (at
 *                   min(ancestor LSN, continueBelowLsn - 1)), placing the
 *                   ancestor's records before these; that step is the
 *                   timeline's, since the layer map knows only one timeline.
 *
 * The walk is a loop whose bound strictly decreases (the layer map's floors
 * are below their bound), so it terminates; a named step limit turns a
 * layer-map bug into an error instead of a hang.
 */
import { assert, StrataError } from "../../lib/errors.js";
import { formatLsn, LSN_MAX, type Lsn } from "../../lib/lsn.js";
import { formatKey, type Key } from "../key.js";
import { ImageLayerReader } from "./image_layer.js";
import { PersistentLayer, type Layer } from "./layer.js";
import type { ReadArena } from "./layer_file.js";
import type { LayerMap } from "./layer_map.js";
import type { LsnRange } from "./range.js";
import { decodeValue, type Value, type WalValue } from "./value.js";

/**
 * Most layers one walk may visit. A reconstruction that needs more than this
 * many layers means compaction has fallen hopelessly behind (it creates
 * images long before) or the map is broken.
 */
export const MAX_RECONSTRUCT_LAYER_VISITS = 100_000;

export type ReconstructStop = "image" | "will_init" | "absent" | "history_end";

export interface ReconstructData {
  readonly key: Key;
  readonly lsn: Lsn;
  readonly image?: { readonly lsn: Lsn; readonly bytes: Uint8Array };
  /** WAL records to apply on the image (or on nothing), oldest first. */
  readonly records: ReadonlyArray<{ readonly lsn: Lsn; readonly value: WalValue }>;
  readonly stop: ReconstructStop;
  /** The walk examined versions in [continueBelowLsn, lsn]; for "history_end", where an ancestor must continue. */
  readonly continueBelowLsn: Lsn;
  /** Layers read, newest first (diagnostics and metrics). */
  readonly layersVisited: readonly Layer[];
}

/** Collects the base image and WAL records for `key` as of `lsn`, walking `map` newest first. */
export async function collectReconstructData(map: LayerMap, key: Key, lsn: Lsn): Promise<ReconstructData> {
  assert(lsn < LSN_MAX, "cannot read at the maximum LSN");
  const newestFirst: Array<{ lsn: Lsn; value: WalValue }> = [];
  const visited: Layer[] = [];
  let end = (lsn + 1n) as Lsn;
  const done = (stop: ReconstructStop, image?: { lsn: Lsn; bytes: Uint8Array }): ReconstructData => ({
    key,
    lsn,
    ...(image === undefined ? {} : { image }),
    records: newestFirst.reverse(),
    stop,
    continueBelowLsn: end,
    layersVisited: visited,
  });
  for (let step = 0; step < MAX_RECONSTRUCT_LAYER_VISITS; step++) {
    const found = map.search(key, end);
    if (found === undefined) return done("history_end");
    if (!(found.lsnFloor < end)) throw new Error(`assertion failed: layer map floor ${formatLsn(found.lsnFloor)} not below ${formatLsn(end)}`); // message built only on failure
    visited.push(found.layer);
    const entries = await found.layer.getValues(key, { start: found.lsnFloor, end }, { stopAtBase: true });
    for (const e of entries) {
      if (e.value.kind === "image") {
        end = e.lsn;
        return done("image", { lsn: e.lsn, bytes: e.value.bytes });
      }
      newestFirst.push({ lsn: e.lsn, value: e.value });
      if (e.value.willInit) {
        end = e.lsn;
        return done("will_init");
      }
    }
    end = found.lsnFloor;
    // An image layer is authoritative for its whole key range: no entry means no key.
    if (found.layer.desc.kind === "image") return done("absent");
  }
  throw new Error(`assertion failed: reconstructing ${formatKey(key)} at ${formatLsn(lsn)} visited ${MAX_RECONSTRUCT_LAYER_VISITS} layers`);
}


// ------------------------------------------------------------ range reads

/**
 * Most keys one range read collects: the unit of a backup's read (a run of
 * consecutive pages). Bounds the memory of the per-key state and of the
 * values held until reconstruction (views into read-ahead buffers).
 */
export const MAX_RANGE_KEYS = 4096;

export interface RangeReadOptions {
  readonly arena?: ReadArena;
  /** Takes the images that need no replay as the scan meets them (see collectReconstructDataRange). */
  readonly onImage?: (i: number, bytes: Uint8Array) => void;
}

/** One key's result of a range read: collectReconstructData's, without the visited layer list. */
export interface RangeKeyData {
  readonly image: { readonly lsn: Lsn; readonly bytes: Uint8Array } | undefined;
  /** Oldest first. */
  readonly records: ReadonlyArray<{ readonly lsn: Lsn; readonly value: WalValue }>;
  readonly stop: ReconstructStop;
  readonly continueBelowLsn: Lsn;
  readonly layersVisited: number;
}

/** Byte offset of the low 32 bits of a key (block or SLRU page number) in an 18-byte entry key. */
const KEY_LOW32_OFFSET = 14;
/** Expected bytes of one value in a scan (a page image plus its tag and CRC), for read-ahead sizing. */
const SCAN_VALUE_BYTES_ESTIMATE = 8192 + 8;
const NO_RECORDS: ReadonlyArray<{ readonly lsn: Lsn; readonly value: WalValue }> = Object.freeze([]);

/**
 * collectReconstructData for `count` consecutive keys `firstKey + i` at once
 * (the relation pages of a backup, in file order). Same walk, same answers
 * per key, but the reads are shared: consecutive keys for which the layer map
 * answers the same layer and floor form a group, and the group is read with
 * one range scan of that layer file in key order (large sequential reads, no
 * B-tree descent or read call per key) instead of one point lookup per key.
 * Keys still unfinished after a group (no image or will-init record met)
 * continue below its floor in the next pass. Layers without a range scan
 * (in-memory layers) are read key by key.
 *
 * The keys must share their upper 14 bytes (one relation fork or SLRU
 * segment: only the block number varies), so an entry's key is its index.
 * With `opts.arena`, the values returned are views into the arena's
 * buffers: the caller must be done with them before it resets the arena.
 *
 * With `opts.onImage`, a key whose answer is an image of an image layer
 * with nothing newer on top (the whole key, no WAL records to replay) is
 * handed over at once, `onImage(i, bytes)` with a view valid only during
 * the call, and its RangeKeyData says stop "image" with `image` undefined.
 * Why: a backup copies the page into its output right after the scan read
 * and verified it, while it is still in the CPU cache, instead of holding a
 * view per page and copying a whole run's pages afterwards.
 */
export async function collectReconstructDataRange(map: LayerMap, firstKey: Key, count: number, lsn: Lsn, opts: RangeReadOptions = {}): Promise<RangeKeyData[]> {
  assert(lsn < LSN_MAX, "cannot read at the maximum LSN");
  if (!(Number.isInteger(count) && count >= 1 && count <= MAX_RANGE_KEYS)) throw new Error(`assertion failed: range read of ${count} keys`);
  const lastKey = (firstKey + BigInt(count - 1)) as Key;
  // (messages built only on failure: this runs per run of a backup)
  if (firstKey >> 32n !== lastKey >> 32n) throw new Error(`assertion failed: range read ${formatKey(firstKey)}..${formatKey(lastKey)} crosses a 32-bit key boundary`);
  const base32 = Number(firstKey & 0xffffffffn);
  const st: RangeState = {
    out: new Array<RangeKeyData | undefined>(count).fill(undefined),
    end: new Array<Lsn>(count).fill((lsn + 1n) as Lsn),
    newestFirst: new Array<Array<{ lsn: Lsn; value: WalValue }> | undefined>(count).fill(undefined),
    visits: new Uint32Array(count),
  };

  let pending: number[] = Array.from({ length: count }, (_, i) => i);
  for (let step = 0; pending.length > 0; step++) {
    if (step >= MAX_RECONSTRUCT_LAYER_VISITS) {
      throw new Error(`assertion failed: range read at ${formatKey(firstKey)} at ${formatLsn(lsn)} visited ${MAX_RECONSTRUCT_LAYER_VISITS} layers`);
    }
    const next: number[] = [];
    let p = 0;
    while (p < pending.length) {
      const first = pending[p]!;
      const e0 = st.end[first]!;
      const firstAt = firstKey + BigInt(first);
      const { result: found, spanEnd } = map.searchSpan(firstAt as Key, e0);
      if (found === undefined) {
        finishKey(st, first, "history_end", undefined);
        p++;
        continue;
      }
      if (!(found.lsnFloor < e0)) throw new Error(`assertion failed: layer map floor ${formatLsn(found.lsnFloor)} not below ${formatLsn(e0)}`);
      // keys below spanEnd get the same answer from the layer map (LayerMap.searchSpan): one search per group, not per key
      const spanKeys = spanEnd - firstAt;
      const spanLast = first + (spanKeys < BigInt(count) ? Number(spanKeys) : count) - 1;
      let q = p + 1;
      while (q < pending.length && pending[q] === pending[q - 1]! + 1 && pending[q]! <= spanLast && st.end[pending[q]!] === e0) q++;
      // the group: indices [first, first + n), consecutive
      const n = q - p;
      p = q;
      for (let i = first; i < first + n; i++) st.visits[i]!++;
      await readGroup(st, found.layer, firstKey, base32, first, n, { start: found.lsnFloor, end: e0 }, opts);
      const isImageLayer = found.layer.desc.kind === "image";
      for (let i = first; i < first + n; i++) {
        if (st.out[i] !== undefined) continue;
        st.end[i] = found.lsnFloor;
        // An image layer is authoritative for its whole key range: no entry means no key.
        if (isImageLayer) finishKey(st, i, "absent", undefined);
        else next.push(i);
      }
    }
    pending = next;
  }
  // (the message built only on failure: this runs per key)
  const unfinished = st.out.indexOf(undefined);
  if (unfinished >= 0) throw new Error(`assertion failed: range read left key ${unfinished} unfinished`);
  return st.out as RangeKeyData[];
}

interface RangeState {
  readonly out: Array<RangeKeyData | undefined>;
  readonly end: Lsn[];
  readonly newestFirst: Array<Array<{ lsn: Lsn; value: WalValue }> | undefined>;
  readonly visits: Uint32Array;
}

function finishKey(st: RangeState, i: number, stop: ReconstructStop, image: { lsn: Lsn; bytes: Uint8Array } | undefined): void {
  const recs = st.newestFirst[i];
  st.out[i] = { image, records: recs === undefined ? NO_RECORDS : recs.reverse(), stop, continueBelowLsn: st.end[i]!, layersVisited: st.visits[i]! };
}

/** Applies one version of key i (versions come newest first); true when the key is finished. */
function takeVersion(st: RangeState, i: number, l: Lsn, value: Value): boolean {
  if (value.kind === "image") {
    st.end[i] = l;
    finishKey(st, i, "image", { lsn: l, bytes: value.bytes });
    return true;
  }
  (st.newestFirst[i] ??= []).push({ lsn: l, value });
  if (value.willInit) {
    st.end[i] = l;
    finishKey(st, i, "will_init", undefined);
    return true;
  }
  return false;
}

/**
 * Reads the versions of keys `firstKey + [lo, lo + n)` in `layer` for
 * `lsnRange` and applies them (newest first per key, down to the first
 * base, like getValues with stopAtBase) to the range state.
 */
async function readGroup(st: RangeState, layer: Layer, firstKey: Key, base32: number, lo: number, n: number, lsnRange: LsnRange, opts: RangeReadOptions): Promise<void> {
  const arena = opts.arena;
  const keyRange = { start: (firstKey + BigInt(lo)) as Key, end: (firstKey + BigInt(lo + n)) as Key };
  if (!(layer instanceof PersistentLayer)) {
    for (let g = 0; g < n; g++) {
      for (const e of await layer.getValues((keyRange.start + BigInt(g)) as Key, lsnRange, { stopAtBase: true })) {
        if (takeVersion(st, lo + g, e.lsn, e.value)) break;
      }
    }
    return;
  }
  const { reader, release } = await layer.pin();
  try {
    const indexOf = (page: Buffer, slot: number): number => {
      const i = page.readUInt32BE(slot + KEY_LOW32_OFFSET) - base32;
      assert(i >= lo && i < lo + n, "range scan returned a key outside its range");
      return i;
    };
    if (reader instanceof ImageLayerReader) {
      const l = reader.lsn;
      if (l >= lsnRange.start && l < lsnRange.end) {
        const onImage = opts.onImage;
        reader.scanImagesSync(keyRange, (page, slot, bytes) => {
          const i = indexOf(page, slot);
          st.end[i] = l;
          if (onImage !== undefined && st.newestFirst[i] === undefined) {
            onImage(i, bytes);
            finishKey(st, i, "image", undefined);
          } else {
            finishKey(st, i, "image", { lsn: l, bytes });
          }
        }, n, arena);
      }
      return;
    }
    // Deltas come oldest first per key: keep them encoded, decode newest first down to the first base.
    const encoded: Array<Array<{ lsn: Lsn; bytes: Uint8Array }> | undefined> = new Array<Array<{ lsn: Lsn; bytes: Uint8Array }> | undefined>(n).fill(undefined);
    reader.scanEncodedSync(keyRange, lsnRange, (page, slot, l, bytes) => {
      (encoded[indexOf(page, slot) - lo] ??= []).push({ lsn: l, bytes });
    }, { expectedValueBytes: n * SCAN_VALUE_BYTES_ESTIMATE, ...(arena === undefined ? {} : { arena }) });
    const where = `layer file ${reader.path}`;
    for (let g = 0; g < n; g++) {
      const vs = encoded[g];
      if (vs === undefined) continue;
      for (let k = vs.length - 1; k >= 0; k--) {
        const { lsn: l, bytes } = vs[k]!;
        let value: Value;
        try {
          value = decodeValue(bytes, where);
        } catch (e) {
          // the message with the entry is built only on failure (this runs per value)
          if (!(e instanceof StrataError)) throw e;
          throw new StrataError(e.code, `Layer file ${reader.path}: entry (${formatKey((keyRange.start + BigInt(g)) as Key)}, ${formatLsn(l)}): ${e.message}`, { cause: e });
        }
        if (takeVersion(st, lo + g, l, value)) break;
      }
    }
  } finally {
    release();
  }
}
