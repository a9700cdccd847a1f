/**
 * Compaction, first version ("compaction lite"): image layer creation.
 *
 * Why: GetPage walks versions newest to oldest until it meets an image or a
 * will-init record. Level-0 delta layers pile up at every flush, so without
 * images a hot page's chain — and the layers visited to collect it — grow
 * without bound. An image layer materializes every key of a key range at one
 * LSN, so reads at or above it stop there (and GC may later drop what lies
 * below).
 *
 * How:
 *   1. The key space at LSN L is enumerated from the datadir structure
 *      (datadir.ts): database directory -> relmapper files, relation
 *      directories -> relation sizes -> blocks; SLRU directories -> segment
 *      sizes -> pages; the two-phase directory -> files; pg_control and the
 *      checkpoint. Keys of dropped relations are not in it, so an image layer
 *      also records their absence (an image layer is authoritative for its
 *      key range: no entry = no key).
 *   2. The sorted keys are cut into partitions of about
 *      compactionTargetSizeBytes; together the partitions' ranges tile the
 *      whole key space [KEY_MIN, KEY_END).
 *   3. A partition gets a new image layer at L when at least
 *      imageCreationThreshold delta layers overlapping it lie above its
 *      newest image (or when forced, e.g. by the HTTP trigger).
 *   4. Every key is read at L through the normal read path (so the bytes are
 *      exactly what GetPage serves) and streamed into an ImageLayerWriter,
 *      which writes a temp file, fsyncs, renames and fsyncs the directory;
 *      then the layer joins the layer map.
 *
 * L defaults to disk_consistent_lsn: an image above it would be deleted at
 * the next start-up as a "future" layer. Crash safety: a crash mid-write
 * leaves a `.tmp` file (removed at load); a finished image is just another
 * layer. Cancellation: the signal is checked between keys; the partial file
 * is removed.
 *
 * Level-0 merging (`compactLevel0`, below) re-cuts the level-0 deltas by
 * key range so a read visits one file per merged LSN span instead of one per
 * flush.
 */
import { unlink } from "node:fs/promises";
import { StrataError } from "../lib/errors.js";
import { formatLsn, type Lsn } from "../lib/lsn.js";
import { BLCKSZ } from "../formats/page.js";
import { decodeTwoPhaseDir } from "./datadir.js";
import { internalContext, listDatabases, listRelations, listSlruSegments, slruSegmentPages } from "./getpage.js";
import {
  CHECKPOINT_KEY, CONTROLFILE_KEY, DBDIR_KEY, KEY_END, KEY_MIN, LAST_COMMIT_KEY, relBlockKey, relDirKey, relmapKey, relSizeKey, slruBlockKey, slruDirKey, slruSegSizeKey, SlruKind,
  TWOPHASE_DIR_KEY, twoPhaseFileKey, type Key,
} from "./key.js";
import { decodeRelSize } from "./datadir.js";
import { DeltaLayerReader, DeltaLayerWriter, type EncodedEntry } from "./layers/delta_layer.js";
import { ImageLayerWriter } from "./layers/image_layer.js";
import { PersistentLayer } from "./layers/layer.js";
import { formatLayerFileName } from "./layers/layer_name.js";
import type { KeyRange } from "./layers/range.js";
import type { Timeline } from "./timeline.js";

/** Keys read concurrently while materializing (redo requests in flight per image layer). */
const MATERIALIZE_CONCURRENCY = 16;

/** Every key that exists at `lsn`, sorted. */
export async function collectKeyspace(tl: Timeline, lsn: Lsn, signal?: AbortSignal): Promise<Key[]> {
  const ctx = internalContext(signal);
  const keys: Key[] = [DBDIR_KEY, CONTROLFILE_KEY, CHECKPOINT_KEY];
  // The last-commit value (lsn_by_timestamp.ts) must be in every image that covers its key, or a read
  // stopping at such an image would lose the commit history below it once GC removes the deltas.
  if ((await tl.get(LAST_COMMIT_KEY, lsn, ctx)) !== undefined) keys.push(LAST_COMMIT_KEY);
  for (const { spcOid, dbOid } of await listDatabases(tl, lsn, ctx)) {
    if ((await tl.get(relmapKey(spcOid, dbOid), lsn, ctx)) !== undefined) keys.push(relmapKey(spcOid, dbOid));
    if ((await tl.get(relDirKey(spcOid, dbOid), lsn, ctx)) === undefined) continue;
    keys.push(relDirKey(spcOid, dbOid));
    for (const rel of await listRelations(tl, spcOid, dbOid, lsn, ctx)) {
      signal?.throwIfAborted();
      const v = await tl.get(relSizeKey(rel), lsn, ctx);
      if (v === undefined) continue;
      keys.push(relSizeKey(rel));
      const n = decodeRelSize(v) ?? 0;
      for (let b = 0; b < n; b++) keys.push(relBlockKey(rel, b));
    }
  }
  for (const kind of [SlruKind.Clog, SlruKind.MultiXactOffsets, SlruKind.MultiXactMembers]) {
    if ((await tl.get(slruDirKey(kind), lsn, ctx)) === undefined) continue;
    keys.push(slruDirKey(kind));
    for (const seg of await listSlruSegments(tl, kind, lsn, ctx)) {
      keys.push(slruSegSizeKey(kind, seg));
      const pages = await slruSegmentPages(tl, kind, seg, lsn, ctx);
      for (let p = 0; p < pages; p++) keys.push(slruBlockKey(kind, seg, p));
    }
  }
  const twophase = await tl.get(TWOPHASE_DIR_KEY, lsn, ctx);
  if (twophase !== undefined) {
    keys.push(TWOPHASE_DIR_KEY);
    for (const xid of decodeTwoPhaseDir(twophase)) keys.push(twoPhaseFileKey(xid));
  }
  keys.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return keys.filter((k, i) => i === 0 || keys[i - 1] !== k);
}

export interface KeyPartition {
  readonly range: KeyRange;
  readonly keys: readonly Key[];
}

/** Cuts sorted keys into partitions of about `targetBytes` (counted as pages) tiling [KEY_MIN, KEY_END). */
export function partitionKeyspace(keys: readonly Key[], targetBytes: number): KeyPartition[] {
  const perPart = Math.max(1, Math.floor(targetBytes / BLCKSZ));
  const parts: KeyPartition[] = [];
  for (let i = 0; i < keys.length; i += perPart) {
    const slice = keys.slice(i, i + perPart);
    const start = parts.length === 0 ? KEY_MIN : slice[0]!;
    const end = i + perPart < keys.length ? keys[i + perPart]! : KEY_END;
    parts.push({ range: { start, end }, keys: slice });
  }
  if (parts.length === 0) parts.push({ range: { start: KEY_MIN, end: KEY_END }, keys: [] });
  return parts;
}

export interface ImageCreationResult {
  readonly lsn: string;
  readonly partitions: number;
  readonly layers: number;
  readonly keys: number;
  readonly bytes: number;
}

/** Delta layers overlapping `range` above the newest image at or below `lsn` that covers all of it. */
function deltasAboveImage(tl: Timeline, range: KeyRange, lsn: Lsn): number {
  let newestImage = -1n;
  for (const l of tl.layers.layersOverlapping(range, { start: 0n as Lsn, end: (lsn + 1n) as Lsn })) {
    if (l.desc.kind === "image" && l.desc.keyRange.start <= range.start && l.desc.keyRange.end >= range.end && l.desc.lsnRange.start > newestImage) {
      newestImage = l.desc.lsnRange.start;
    }
  }
  let n = 0;
  for (const l of tl.layers.layersOverlapping(range, { start: (newestImage + 1n) as Lsn, end: (lsn + 1n) as Lsn })) if (l.desc.kind === "delta") n++;
  return n;
}

/**
 * Creates image layers at `lsn` (default disk_consistent_lsn) for the key
 * partitions that need one (or all, with `force`).
 */
export async function createImageLayers(tl: Timeline, opts: { lsn?: Lsn; force?: boolean; signal?: AbortSignal } = {}): Promise<ImageCreationResult> {
  const lsn = opts.lsn ?? tl.diskConsistentLsn;
  if (lsn > tl.lastRecordLsn) throw new StrataError("invalid_argument", `Cannot create image layers at ${formatLsn(lsn)}: above last_record_lsn ${formatLsn(tl.lastRecordLsn)}`);
  const conf = tl.deps.conf();
  const keys = await collectKeyspace(tl, lsn, opts.signal);
  const parts = partitionKeyspace(keys, conf.compactionTargetSizeBytes);
  const ctx = internalContext(opts.signal);
  let layers = 0;
  let written = 0;
  let bytes = 0;
  for (const part of parts) {
    if (opts.force !== true && deltasAboveImage(tl, part.range, lsn) < conf.imageCreationThreshold) continue;
    const desc = { kind: "image" as const, keyRange: part.range, lsnRange: { start: lsn, end: (lsn + 1n) as Lsn } };
    if (tl.layers.getHistoric(formatLayerFileName(desc)) !== undefined) continue;
    const writer = await ImageLayerWriter.create({ dir: tl.dir, keyRange: part.range, lsn });
    try {
      for (let i = 0; i < part.keys.length; i += MATERIALIZE_CONCURRENCY) {
        opts.signal?.throwIfAborted();
        const batch = part.keys.slice(i, i + MATERIALIZE_CONCURRENCY);
        const values = await Promise.all(batch.map((k) => tl.get(k, lsn, ctx)));
        for (let j = 0; j < batch.length; j++) {
          const v = values[j];
          if (v !== undefined) await writer.put(batch[j]!, v);
        }
      }
      const done = await writer.finish();
      const layer = new PersistentLayer(tl.dir, done.desc, tl.deps.indexCache === undefined ? {} : { cache: tl.deps.indexCache });
      tl.replaceHistoricLayers([], [{ layer, sizeBytes: done.header.fileSizeBytes }]);
      layers++;
      written += done.header.entryCount;
      bytes += done.header.fileSizeBytes;
      tl.deps.metrics.imageLayersCreated.inc();
    } catch (e) {
      await writer.abort();
      throw e;
    }
  }
  if (layers > 0) tl.log.info({ lsn: formatLsn(lsn), layers, keys: written, bytes }, "created image layers");
  return { lsn: formatLsn(lsn), partitions: parts.length, layers, keys: written, bytes };
}

// ------------------------------------------------------------ level-0 delta merging

export interface L0CompactionResult {
  readonly inputs: number;
  readonly outputs: number;
  readonly entries: number;
  readonly bytes: number;
}

function isLevel0(desc: { kind: string; keyRange: KeyRange }): boolean {
  return desc.kind === "delta" && desc.keyRange.start === KEY_MIN && desc.keyRange.end === KEY_END;
}

/** A k-way merge of delta layers' entries in (key, LSN) order (k is small: the L0 count). */
async function* mergeDeltas(readers: readonly DeltaLayerReader[]): AsyncGenerator<EncodedEntry> {
  const its = readers.map((r) => r.iterateEncoded());
  const heads: Array<EncodedEntry | undefined> = [];
  for (const it of its) heads.push((await it.next()).value ?? undefined);
  for (;;) {
    let best = -1;
    for (let i = 0; i < heads.length; i++) {
      const h = heads[i];
      if (h === undefined) continue;
      const b = best < 0 ? undefined : heads[best]!;
      if (b === undefined || h.key < b.key || (h.key === b.key && h.lsn < b.lsn)) best = i;
    }
    if (best < 0) return;
    yield heads[best]!;
    heads[best] = (await its[best]!.next()).value ?? undefined;
  }
}

/**
 * Merges the level-0 delta layers (each covers every key, one flush's LSN
 * range) into level-1 deltas cut by key range, each about
 * compactionTargetSizeBytes, together covering [first L0 start, last L0 end)
 * for the whole key space. A read of one key then opens one L1 file for that
 * LSN span instead of every L0.
 *
 * Two passes over the merged stream: the first finds the key boundaries (a
 * layer's name fixes its key range before it is written), the second writes.
 * Outputs are durable before the inputs leave the layer map and are deleted
 * (deferred until no read uses them). A crash in between leaves both; the
 * timeline's load resolves it (`resolveInterruptedCompaction`): complete
 * outputs win, an incomplete set of outputs is deleted.
 */
export async function compactLevel0(tl: Timeline, opts: { force?: boolean; signal?: AbortSignal } = {}): Promise<L0CompactionResult> {
  const conf = tl.deps.conf();
  const l0 = [...tl.layers.historicLayers()].filter((l) => isLevel0(l.desc)).sort((a, b) => (a.desc.lsnRange.start < b.desc.lsnRange.start ? -1 : 1));
  const none = { inputs: 0, outputs: 0, entries: 0, bytes: 0 };
  if (l0.length < 2 || (opts.force !== true && l0.length < conf.compactionThreshold)) return none;
  for (let i = 1; i < l0.length; i++) {
    if (l0[i]!.desc.lsnRange.start < l0[i - 1]!.desc.lsnRange.end) return none; // overlapping L0s: leave them alone
  }
  const lsnRange = { start: l0[0]!.desc.lsnRange.start, end: l0.at(-1)!.desc.lsnRange.end };
  const readers: DeltaLayerReader[] = [];
  // Inputs are pinned for the whole merge: eviction must not close a file being scanned.
  const releases: Array<() => void> = [];
  try {
    for (const l of l0) {
      const { reader: r, release } = await (l as PersistentLayer).pin();
      releases.push(release);
      if (!(r instanceof DeltaLayerReader)) throw new StrataError("internal", `Level-0 layer ${(l as PersistentLayer).fileName} is not a delta layer`);
      readers.push(r);
    }
    // Pass 1: boundaries at the first key whose versions start after targetBytes of entries.
    const bounds: Key[] = [];
    let acc = 0;
    let lastKey: Key | undefined;
    for await (const e of mergeDeltas(readers)) {
      opts.signal?.throwIfAborted();
      if (e.key !== lastKey && acc >= conf.compactionTargetSizeBytes) {
        bounds.push(e.key);
        acc = 0;
      }
      lastKey = e.key;
      acc += e.encoded.length + 26;
    }
    const ranges: KeyRange[] = [];
    let start: Key = KEY_MIN;
    for (const b of bounds) {
      ranges.push({ start, end: b });
      start = b;
    }
    ranges.push({ start, end: KEY_END });
    // Pass 2: write.
    const outputs: Array<{ layer: PersistentLayer; sizeBytes: number }> = [];
    let entries = 0;
    let bytes = 0;
    let ri = 0;
    let writer = await DeltaLayerWriter.create({ dir: tl.dir, keyRange: ranges[0]!, lsnRange });
    const written: string[] = [];
    try {
      const finish = async () => {
        const done = await writer.finish();
        written.push(done.path);
        outputs.push({ layer: new PersistentLayer(tl.dir, done.desc, tl.deps.indexCache === undefined ? {} : { cache: tl.deps.indexCache }), sizeBytes: done.header.fileSizeBytes });
        entries += done.header.entryCount;
        bytes += done.header.fileSizeBytes;
      };
      for await (const e of mergeDeltas(readers)) {
        opts.signal?.throwIfAborted();
        while (e.key >= ranges[ri]!.end) {
          await finish();
          ri++;
          writer = await DeltaLayerWriter.create({ dir: tl.dir, keyRange: ranges[ri]!, lsnRange });
        }
        await writer.putEncoded(e.key, e.lsn, e.encoded);
      }
      await finish();
      // Ranges after the last key (none normally) still need files so the outputs tile the key space.
      for (ri++; ri < ranges.length; ri++) {
        writer = await DeltaLayerWriter.create({ dir: tl.dir, keyRange: ranges[ri]!, lsnRange });
        await finish();
      }
    } catch (e) {
      await writer.abort();
      for (const p of written) await unlink(p).catch(() => undefined);
      throw e;
    }
    tl.replaceHistoricLayers(l0 as PersistentLayer[], outputs);
    tl.log.info({ inputs: l0.length, outputs: outputs.length, entries, bytes, lsn_range: `${formatLsn(lsnRange.start)}..${formatLsn(lsnRange.end)}` }, "merged level-0 delta layers");
    return { inputs: l0.length, outputs: outputs.length, entries, bytes };
  } finally {
    for (const release of releases) release();
  }
}

/**
 * Start-up repair after a crash inside compactLevel0. For each LSN range of
 * level-1 deltas that contains level-0 deltas: if the level-1 deltas of that
 * range tile the whole key space the merge finished — the level-0 inputs are
 * deleted; otherwise the merge was cut short — its outputs are deleted.
 * Returns the file names to delete.
 */
export function resolveInterruptedCompaction(descs: ReadonlyArray<{ name: string; desc: { kind: string; keyRange: KeyRange; lsnRange: { start: bigint; end: bigint } } }>): string[] {
  const l0 = descs.filter((d) => isLevel0(d.desc));
  const l1 = descs.filter((d) => d.desc.kind === "delta" && !isLevel0(d.desc));
  const groups = new Map<string, typeof l1>();
  for (const d of l1) {
    const id = `${d.desc.lsnRange.start}-${d.desc.lsnRange.end}`;
    groups.set(id, [...(groups.get(id) ?? []), d]);
  }
  const doomed: string[] = [];
  for (const g of groups.values()) {
    const { start, end } = g[0]!.desc.lsnRange;
    const inside = l0.filter((d) => d.desc.lsnRange.start >= start && d.desc.lsnRange.end <= end);
    if (inside.length === 0) continue;
    const sorted = [...g].sort((a, b) => (a.desc.keyRange.start < b.desc.keyRange.start ? -1 : 1));
    let cur: bigint = KEY_MIN;
    for (const d of sorted) if (d.desc.keyRange.start === cur) cur = d.desc.keyRange.end;
    if (cur === KEY_END) doomed.push(...inside.map((d) => d.name));
    else doomed.push(...g.map((d) => d.name));
  }
  return doomed;
}
