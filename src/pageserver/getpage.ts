/**
 * The read path: GetPage@LSN and the datadir queries built on it.
 *
 *   page service / ingest / basebackup
 *        -> Timeline.prepareRead  (wait for last_record_lsn >= lsn, bounded; GC cutoff check)
 *        -> Timeline.collectVersions (layer map walk, newest first, across ancestors)
 *        -> materialize: newest cached version (page_cache.ts), else base image,
 *           then walredo's `reconstruct` (native records in TypeScript, the rest
 *           through the tenant's PostgreSQL redo pool), which stamps pd_lsn as
 *           PostgreSQL's redo does; the result is cached at its version LSN
 *           (not for scans: `scanReader`, used by fullbackup, reads every page
 *           once and would only evict the pages point reads reuse).
 *   fullbackup's range form, `scanRunReader`: a run of consecutive pages per
 *   call, collected with one range walk (layers/reconstruct.ts
 *   collectReconstructDataRange: a key-ordered scan per layer file instead of
 *   a B-tree lookup and a read per page), images copied straight from the
 *   read-ahead buffers (recycled per run) into the run as the scan verifies
 *   them (collectReconstructDataRange onImage), the pages that need redo rebuilt
 *   concurrently (native heap redo for bulk loads, else the redo pool's
 *   pipeline).
 *
 * Value formats of the non-page keys (sizes, directories) are datadir.ts's;
 * this module only reads them. Relation existence follows datadir.ts: a fork
 * exists at X iff its database is in the database directory and the fork is
 * in the database's relation directory at X.
 *
 * Errors: a key with WAL records that no page engine can replay, or records
 * without a base, is corrupt_data (the stored history is inconsistent); a
 * damaged layer surfaces as the layer reader's corrupt_data. Every failure
 * is counted (`read_errors_total{code}`) and returned to the one request;
 * the timeline keeps serving other keys.
 */
import { StrataError } from "../lib/errors.js";
import { formatLsn, type Lsn } from "../lib/lsn.js";
import { requestContext, type RequestContext } from "../lib/tasks.js";
import { BLCKSZ } from "../formats/page.js";
import { SLRU_PAGES_PER_SEGMENT } from "../formats/wal/rmgr/slru.js";
import { reconstruct, recyclePage, type RedoKey } from "../walredo/native_redo.js";
import type { WalRedoPool } from "../walredo/pool.js";
import {
  decodeDbDir, decodeRelDir, decodeRelSize, decodeSlruDir, decodeSlruSegSize, dbDirEntryId, dbDirEntryOf, redoInputOf, relDirEntryId, relDirEntryOf,
  type StoredRedoInput,
} from "./datadir.js";
import {
  DBDIR_KEY, decodeKey, formatKey, relDirKey, relSizeKey, slruBlockKey, slruDirKey, slruSegSizeKey, SlruKind, type Key, type RelTag,
} from "./key.js";
import { ReadArena } from "./layers/layer_file.js";
import { collectReconstructDataRange } from "./layers/reconstruct.js";
import type { CollectedVersions, Timeline } from "./timeline.js";

/** A context for reads the pageserver makes on its own behalf (image creation, metadata lookups). */
export function internalContext(signal: AbortSignal = new AbortController().signal): RequestContext {
  return requestContext("other", signal);
}

/** The redo engines' description of a page key; non-page keys cannot have WAL records. */
export function redoKeyOf(key: Key): RedoKey {
  const info = decodeKey(key);
  if (info.kind === "rel_block") {
    return { kind: "rel", rel: { spcOid: info.rel.spcOid, dbOid: info.rel.dbOid, relNumber: info.rel.relNumber }, forkNum: info.rel.fork, blockNumber: info.blockNumber };
  }
  if (info.kind === "slru_block") {
    const slru = info.slru === SlruKind.Clog ? "clog" : info.slru === SlruKind.MultiXactOffsets ? "multixact_offsets" : "multixact_members";
    return { kind: "slru", slru, pageno: info.segNo * SLRU_PAGES_PER_SEGMENT + info.blockNumber };
  }
  throw new StrataError("corrupt_data", `Key ${formatKey(key)} (${info.kind}) has WAL records stored, but only page keys can be replayed`);
}

function countError(tl: Timeline, e: unknown): void {
  const code = e instanceof StrataError ? e.code : "internal";
  tl.deps.metrics.readErrors.labels(code).inc();
}

/**
 * The value of `key` as of `lsn` after waiting for ingest (bounded), or
 * undefined when no version exists. Pages come back as fresh copies.
 */
export async function readValue(tl: Timeline, key: Key, lsn: Lsn, ctx: RequestContext): Promise<Uint8Array | undefined> {
  try {
    await tl.prepareRead(lsn, ctx);
    const v = await tl.collectVersions(key, lsn);
    if (!v.found) return undefined;
    return await materialize(tl, v);
  } catch (e) {
    countError(tl, e);
    throw e;
  }
}

/** A page (relation block or SLRU page) as of `lsn`; all zeros when the key has no version. */
export async function readPage(tl: Timeline, key: Key, lsn: Lsn, ctx: RequestContext): Promise<Uint8Array> {
  return (await readValue(tl, key, lsn, ctx)) ?? new Uint8Array(BLCKSZ);
}

/**
 * Turns collected versions into bytes: the newest cached materialization (or
 * the base image) plus replay of the records above it.
 */
export async function materialize(tl: Timeline, v: CollectedVersions, opts: MaterializeOptions = {}): Promise<Uint8Array> {
  const keep = opts.cache ?? true;
  const { key, records } = v;
  const cache = tl.deps.pageCache;
  const metrics = tl.deps.metrics;
  const n = records.length;
  if (n === 0) {
    if (v.image === undefined) throw new StrataError("internal", `No version of ${formatKey(key)} at ${formatLsn(v.lsn)} to materialize`);
    return new Uint8Array(v.image.bytes);
  }
  const newest = records[n - 1]!.lsn;
  const lookup = opts.lookup ?? true;
  const hit = lookup ? cache.get(tl.timelineId, key, newest) : undefined;
  if (hit !== undefined) {
    metrics.pageCacheHits.inc();
    return new Uint8Array(hit);
  }
  if (lookup) metrics.pageCacheMisses.inc();
  let base: Uint8Array | undefined = v.image?.bytes;
  let from = 0;
  for (let i = n - 2; lookup && i >= 0; i--) {
    const p = cache.peek(tl.timelineId, key, records[i]!.lsn);
    if (p !== undefined) {
      base = p;
      from = i + 1;
      break;
    }
  }
  const redoKey = opts.env?.redoKey ?? redoKeyOf(key);
  const inputs: StoredRedoInput[] = [];
  for (let i = from; i < n; i++) {
    const r = records[i]!;
    try {
      inputs.push(redoInputOf(r.value, "WAL value"));
    } catch (e) {
      // the message naming the key is built only on failure (this runs per record of every page read)
      if (!(e instanceof StrataError)) throw e;
      throw new StrataError(e.code, `WAL value of ${formatKey(key)} at ${formatLsn(r.lsn)}: ${e.message}`, { cause: e });
    }
  }
  const env = opts.env;
  const dataChecksums = redoKey.kind === "rel" ? (env !== undefined ? env.dataChecksums : await tl.clusterHasDataChecksums()) : false;
  const needsHelper = inputs.some((i) => i.kind === "wal");
  const pool = needsHelper ? (env !== undefined ? env.pool : await tl.redoPool()) : undefined;
  let page: Uint8Array;
  try {
    page = await reconstruct(redoKey, base, inputs, { ...(pool === undefined ? {} : { pool }), setChecksum: dataChecksums });
  } catch (e) {
    if (e instanceof StrataError && e.code === "invalid_argument") {
      throw new StrataError("corrupt_data", `Cannot reconstruct ${formatKey(key)} at ${formatLsn(v.lsn)}: ${e.message}`, { cause: e });
    }
    throw e;
  }
  metrics.redoCalls.inc();
  metrics.reconstructRecords.inc(inputs.length);
  // reconstruct returns a page of its own: only a cached one must be copied for the caller
  if (!keep) return page;
  cache.put(tl.timelineId, key, newest, page);
  return new Uint8Array(page);
}

export interface MaterializeOptions {
  /**
   * false: do not keep the result in the page cache (a scan that reads
   * every page once, e.g. a fullbackup, would only evict the pages point
   * reads reuse). Cache hits are still used. Default true.
   */
  readonly cache?: boolean;
  /**
   * false: do not look in the page cache either (a backup's range reads:
   * with native heap redo a page is cheaper to rebuild than a cache probe
   * per version costs, and a scan rarely hits). Default true.
   */
  readonly lookup?: boolean;
  /** Looked up once by a caller materializing many pages (a backup's runs) instead of per page. */
  readonly env?: { readonly redoKey: RedoKey; readonly dataChecksums: boolean; readonly pool: WalRedoPool };
}

/**
 * A page reader for a scan at one LSN (fullbackup): `lsn` is validated
 * (prepareRead) on the first read and again, cheaply, before every read (a GC
 * or shutdown during a long scan still fails the read), and pages are read
 * without filling the page cache. Same results and errors as readValue.
 * Callers run the scan inside the timeline's read context (runWithReadContext)
 * so that layer downloads see it.
 */
export function scanReader(tl: Timeline, lsn: Lsn, ctx: RequestContext): (key: Key) => Promise<Uint8Array | undefined> {
  let checked = false;
  return async (key) => {
    try {
      const recheck = !checked || tl.state !== "active" || tl.lastRecordLsn < lsn || lsn < tl.latestGcCutoffLsn || (tl.ancestor !== undefined && lsn < tl.ancestor.latestGcCutoffLsn);
      if (recheck) {
        await tl.prepareRead(lsn, ctx);
        checked = true;
      }
      const v = await tl.collectVersions(key, lsn);
      if (!v.found) return undefined;
      return await materialize(tl, v, { cache: false });
    } catch (e) {
      countError(tl, e);
      throw e;
    }
  };
}

/**
 * Reads `count` consecutive pages starting at `firstKey` (one relation fork
 * or SLRU segment) as of one LSN into `out` (page i at i * BLCKSZ) and
 * returns a flag per page: 1 = written, 0 = the key has no version (the
 * caller's zeros; `out` is left untouched there).
 */
export type PageRunReader = (firstKey: Key, count: number, out: Uint8Array) => Promise<Uint8Array>;

/**
 * scanReader's range form (fullbackup): the pages of a run are collected
 * with one range walk (reconstruct.ts collectReconstructDataRange: a range
 * scan per layer in key order instead of a lookup per page), images are
 * copied straight from the layer's read-ahead buffer into `out`, and the
 * pages that need redo are reconstructed concurrently (the walredo pool
 * pipelines them). Keys whose history continues in an ancestor timeline
 * are read key by key. Same results and errors as scanReader per page.
 */
export function scanRunReader(tl: Timeline, lsn: Lsn, ctx: RequestContext): PageRunReader {
  let checked = false;
  // read-ahead buffers recycled from run to run (layer_file.ts ReadArena): one arena per run in flight
  const arenas: ReadArena[] = [];
  return async (firstKey, count, out) => {
    const arena = arenas.pop() ?? new ReadArena();
    try {
      const recheck = !checked || tl.state !== "active" || tl.lastRecordLsn < lsn || lsn < tl.latestGcCutoffLsn || (tl.ancestor !== undefined && lsn < tl.ancestor.latestGcCutoffLsn);
      if (recheck) {
        await tl.prepareRead(lsn, ctx);
        checked = true;
      }
      if (out.length < count * BLCKSZ) throw new StrataError("internal", `Page run buffer of ${out.length} bytes for ${count} pages`);
      const present = new Uint8Array(count);
      const put = (i: number, page: Uint8Array): void => {
        if (page.length !== BLCKSZ) throw new StrataError("corrupt_data", `Value of ${formatKey((firstKey + BigInt(i)) as Key)} at ${formatLsn(lsn)} is ${page.length} bytes, expected a ${BLCKSZ}-byte page`);
        out.set(page, i * BLCKSZ);
        present[i] = 1;
      };
      // images that need no replay go into `out` as the scan verifies them (still in cache); the rest below
      const data = await tl.withLocalRead((map) => collectReconstructDataRange(map, firstKey, count, lsn, { arena, onImage: put }));
      const redo: Array<Promise<void>> = [];
      // per run, not per page: the cluster's checksum setting, the redo pool (its helpers start lazily), the key's redo description
      let shared: { dataChecksums: boolean; pool: WalRedoPool; first: RedoKey } | undefined;
      if (data.some((d) => d.records.length > 0)) shared = { dataChecksums: await tl.clusterHasDataChecksums(), pool: await tl.redoPool(), first: redoKeyOf(firstKey) };
      for (let i = 0; i < count; i++) {
        const d = data[i]!;
        if (d.records.length === 0 && d.stop !== "history_end") {
          // the common case (an image, or no version): no per-page key or closure
          if (d.image !== undefined) put(i, d.image.bytes);
          continue;
        }
        const key = (firstKey + BigInt(i)) as Key;
        if (d.stop === "history_end" && tl.ancestor !== undefined) {
          redo.push(
            tl.collectVersions(key, lsn).then(async (v) => {
              if (v.found) put(i, await materialize(tl, v, { cache: false }));
            }),
          );
          continue;
        }
        if (d.records.length === 0) {
          if (d.image !== undefined) put(i, d.image.bytes);
          continue;
        }
        const v: CollectedVersions = { key, lsn, ...(d.image === undefined ? {} : { image: d.image }), records: d.records, found: true, layersVisited: d.layersVisited };
        const f = shared!.first;
        const redoKey: RedoKey = f.kind === "rel" ? { ...f, blockNumber: f.blockNumber + i } : { ...f, pageno: f.pageno + i };
        const env = { redoKey, dataChecksums: shared!.dataChecksums, pool: shared!.pool };
        redo.push(
          materialize(tl, v, { cache: false, lookup: false, env }).then((page) => {
            put(i, page);
            recyclePage(page); // copied into the run; this read held the only reference (cache: false)
          }),
        );
      }
      await Promise.all(redo);
      // every page is in `out` and every reconstruction is done: nothing refers to the arena's buffers any more
      arena.reset();
      if (arenas.length < MAX_IDLE_ARENAS) arenas.push(arena);
      return present;
    } catch (e) {
      // (an arena whose run failed is dropped: a reconstruction may still hold views into it)
      countError(tl, e);
      throw e;
    }
  };
}

/** Arenas a run reader keeps between runs: the backup's runs in flight, plus slack. */
const MAX_IDLE_ARENAS = 8;

// ------------------------------------------------------------ datadir queries

/** The (spc, db) pairs of the database directory at `lsn` (empty before bootstrap). */
export async function listDatabases(tl: Timeline, lsn: Lsn, ctx: RequestContext): Promise<Array<{ spcOid: number; dbOid: number }>> {
  const v = await tl.get(DBDIR_KEY, lsn, ctx);
  if (v === undefined) return [];
  return [...decodeDbDir(v)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)).map(dbDirEntryOf);
}

async function dbExists(tl: Timeline, spcOid: number, dbOid: number, lsn: Lsn, ctx: RequestContext): Promise<boolean> {
  const v = await tl.get(DBDIR_KEY, lsn, ctx);
  return v !== undefined && decodeDbDir(v).has(dbDirEntryId(spcOid, dbOid));
}

/** The relation forks of one database at `lsn`, sorted. */
export async function listRelations(tl: Timeline, spcOid: number, dbOid: number, lsn: Lsn, ctx: RequestContext): Promise<RelTag[]> {
  if (!(await dbExists(tl, spcOid, dbOid, lsn, ctx))) return [];
  const v = await tl.get(relDirKey(spcOid, dbOid), lsn, ctx);
  if (v === undefined) return [];
  return [...decodeRelDir(v)].sort((a, b) => a - b).map((id) => ({ spcOid, dbOid, ...relDirEntryOf(id) }));
}

/** Whether the relation fork exists at `lsn`. */
export async function relExists(tl: Timeline, rel: RelTag, lsn: Lsn, ctx: RequestContext): Promise<boolean> {
  if (!(await dbExists(tl, rel.spcOid, rel.dbOid, lsn, ctx))) return false;
  const v = await tl.get(relDirKey(rel.spcOid, rel.dbOid), lsn, ctx);
  return v !== undefined && decodeRelDir(v).has(relDirEntryId(rel.relNumber, rel.fork));
}

/** Blocks of the relation fork at `lsn`; not_found when it does not exist. */
export async function relSize(tl: Timeline, rel: RelTag, lsn: Lsn, ctx: RequestContext): Promise<number> {
  if (!(await relExists(tl, rel, lsn, ctx))) {
    throw new StrataError("not_found", `Relation ${rel.spcOid}/${rel.dbOid}/${rel.relNumber} fork ${rel.fork} does not exist at ${formatLsn(lsn)}`);
  }
  const v = await tl.get(relSizeKey(rel), lsn, ctx);
  const n = v === undefined ? 0 : decodeRelSize(v);
  return n ?? 0;
}

/** Bytes of all relation forks of a database at `lsn` (pg_database_size's relation part). */
export async function dbSizeBytes(tl: Timeline, spcOid: number, dbOid: number, lsn: Lsn, ctx: RequestContext): Promise<bigint> {
  let total = 0n;
  for (const rel of await listRelations(tl, spcOid, dbOid, lsn, ctx)) {
    const v = await tl.get(relSizeKey(rel), lsn, ctx);
    total += BigInt(v === undefined ? 0 : (decodeRelSize(v) ?? 0)) * BigInt(BLCKSZ);
  }
  return total;
}

/** Segment numbers of an SLRU at `lsn`. */
export async function listSlruSegments(tl: Timeline, kind: SlruKind, lsn: Lsn, ctx: RequestContext): Promise<number[]> {
  const v = await tl.get(slruDirKey(kind), lsn, ctx);
  return v === undefined ? [] : [...decodeSlruDir(v)].sort((a, b) => a - b);
}

/** Pages of one SLRU segment at `lsn`; not_found when the segment does not exist. */
export async function slruSegmentPages(tl: Timeline, kind: SlruKind, segNo: number, lsn: Lsn, ctx: RequestContext): Promise<number> {
  const dir = await tl.get(slruDirKey(kind), lsn, ctx);
  if (dir === undefined || !decodeSlruDir(dir).has(segNo)) {
    throw new StrataError("not_found", `SLRU ${SlruKind[kind]} segment ${segNo} does not exist at ${formatLsn(lsn)}`);
  }
  const v = await tl.get(slruSegSizeKey(kind, segNo), lsn, ctx);
  return v === undefined ? 0 : decodeSlruSegSize(v);
}

/** The contents of one SLRU segment at `lsn` (its pages concatenated, as the file in pg_xact etc.). */
export async function readSlruSegment(tl: Timeline, kind: SlruKind, segNo: number, lsn: Lsn, ctx: RequestContext): Promise<Uint8Array> {
  const pages = await slruSegmentPages(tl, kind, segNo, lsn, ctx);
  const out = new Uint8Array(pages * BLCKSZ);
  for (let p = 0; p < pages; p++) out.set(await tl.getPage(slruBlockKey(kind, segNo, p), lsn, ctx), p * BLCKSZ);
  return out;
}
