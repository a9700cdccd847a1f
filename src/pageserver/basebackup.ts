/**
 * basebackup / fullbackup: the data directory of a timeline as of LSN X, as
 * a streamed tar that an unmodified PostgreSQL 15 starts from without
 * recovery (DESIGN §6, shared/notes/start-at-lsn.md).
 *
 *   page service / CLI export -> basebackup(reader, {lsn, full}) -> tar (gzip) stream
 *                                   | prepare: pg_control, checkpoint, directories, sizes (DatadirReader.get at X)
 *                                   | stream:  skeleton, config, SLRUs, 2PC, databases, relation pages,
 *                                   |          pg_wal segment(s), global/pg_control (last)
 *
 * What a backup holds:
 *   - the directory skeleton of an initdb'd cluster, PG_VERSION (root and
 *     every database), postgresql.conf (empty), postgresql.auto.conf,
 *     pg_hba.conf (trust from this host only) and pg_ident.conf
 *     (basebackup/layout.ts says why);
 *   - pg_xact and pg_multixact segment files from the SLRU keys, two-phase
 *     state files, relmapper files (global/ and per database);
 *   - with `full`, every relation fork as its 1 GiB segment files
 *     (pg_control's relseg_size), every page read at X through the reader
 *     with a bounded window of reads in flight (runs of up to 32
 *     consecutive pages, each run one tar write), written in file order, its
 *     page LSN checked (never above X) and, in a cluster with data
 *     checksums, its checksum computed as PostgreSQL does when it writes a
 *     page out. With a run reader (`readPageRun`, what the page service
 *     passes: getpage.ts scanRunReader) a run is 256 pages read at once by
 *     range scans of the layer files, written into a recycled 2 MiB buffer
 *     (basebackup/chunk_pool.ts) that the consumer gives back once the
 *     socket has taken it (`release`): fresh multi-MiB buffers cost more in
 *     page faults than reading and sending the pages (runs of a small
 *     file's tail get a buffer of their own size, so a queue of small
 *     chunks never pins the pool; `stats.chunksAllocated` shows whether
 *     the pool kept up);
 *   - a generated WAL segment holding a shutdown checkpoint at X and a
 *     generated global/pg_control in state "shut down" pointing at it
 *     (formats/wal/wal_synthesis.ts). pg_control is the archive's last
 *     member: a tar cut short cannot be started by mistake. The segment
 *     reads as a valid record chain from its first byte (NOOP filler
 *     records up to X, basebackup/wal_filler.ts), so a safekeeper, standby
 *     or pg_receivewal that starts at the segment start can follow the
 *     new compute's WAL; the checkpoint's xl_prev is then the last filler.
 * `basebackup` without `full` is everything but relation files (for a
 * compute that reads pages from the pageserver).
 *
 * The checkpoint's counters come from the checkpoint value ingest keeps up
 * to date (walingest.ts): next XID past every XID in the WAL below X, the
 * last NEXTOID, next multixact and member offset. PostgreSQL then reads the
 * clog page of nextXid at start-up (TrimCLOG) unless nextXid is the first
 * XID of a page, and likewise the multixact offsets and members pages
 * (TrimMultiXact). Those pages exist whenever the history came from a
 * real server; should one not, the backup extends the segment with zero
 * pages up to it (what ExtendCLOG/ZeroMultiXact*Page would have written:
 * a zero status means "never committed") instead of producing a cluster
 * that cannot start, and reports it in `summary.slruPagesAdded`.
 *
 * Not carried over: commit timestamps (pg_commit_ts stays empty; strata
 * stores no commit-timestamp SLRU), statistics, replication slots and
 * logical-decoding state. The checkpoint is always on PostgreSQL timeline 1
 * (DESIGN §6: every branch keeps timeline 1). The generated WAL segment is
 * built in memory (one 16 MiB buffer per backup in flight).
 *
 * Unlogged relations: a clean start does not reset them, so the backup does
 * what crash recovery would (ResetUnloggedRelations): a relation with an
 * init fork gets its init fork and a main fork that is a copy of it, and
 * none of its other forks. Whatever pages the history has for its main
 * fork (an imported data directory has some) are not served: unlogged data
 * does not survive a base backup, as in PostgreSQL's own pg_basebackup.
 *
 * The LSN: MAXALIGNed, at most last_record_lsn, at least the GC cutoff
 * (and the timeline's start): `checkBackupLsn` with the caller's `bounds`.
 * It must also be a record boundary of the WAL, which the key space cannot
 * tell: callers pass record ends (last_record_lsn, an ingested record's
 * end, a compute's flush position). An LSN at a WAL page boundary (a record
 * that ended exactly at a page end) is moved past that page's header, where
 * the next record would start: the state is the same. `timelineBackupLsn`
 * does all of this for a Timeline, waiting (bounded) for ingest.
 *
 * Which LSNs denote which state (the rule branches and backups share).
 * Ingest stores every version of a record at the record's MAXALIGNed end
 * (datadir.ts), so the state at an 8-aligned X is "every record whose end
 * is <= X": exactly the transactions whose commit records end at or before
 * X. Any aligned X outside a page header is therefore a consistent state,
 * even one in the middle of a record (pg_current_wal_lsn() can be a page
 * boundary inside a long record, when the WAL writer wrote whole pages):
 * the straddling record is simply not part of it, as if the server had
 * crashed there. The new compute's WAL starts at X with its own checkpoint.
 * `roundToRecordBoundary` turns other requests into such an X without
 * changing the state they denote: an unaligned LSN can only be a record's
 * exact end (records start MAXALIGNed), equivalent to the next multiple
 * of 8; an LSN inside a page header goes past the header. So a compute's
 * pg_current_wal_lsn() / pg_current_wal_flush_lsn() after a commit, and a
 * commit end from get_lsn_by_timestamp, are all valid backup and branch
 * points.
 *
 * Failure and cancellation: everything that can fail before the first byte
 * (bad LSN, missing pg_control or checkpoint, corrupt directories) fails
 * the returned promise, so a page service can answer with an error instead
 * of a truncated archive. Later failures (a page that cannot be
 * reconstructed, `signal` aborted, the consumer went away) destroy the
 * stream with the error and reject `finished`; no reads start after that.
 * Streaming starts at once and runs ahead of the consumer only as far as
 * the stream buffers allow (~2 MiB plus the prefetch window).
 */
import type { Readable } from "node:stream";
import { StrataError, assert } from "../lib/errors.js";
import { DEFAULT_WAL_SEG_SIZE_BYTES, formatLsn, lsn, lsnAlign, pageOffset, segmentOffset, XLOG_BLCKSZ, type Lsn } from "../lib/lsn.js";
import { requestContext, type RequestContext } from "../lib/tasks.js";
import { BLCKSZ, getPageChecksumField, getPageLsn, pageIsNew } from "../formats/page.js";
import { pageChecksum, setPageChecksum } from "../formats/page_checksum.js";
import { checkControlFileCompatible, encodeControlFile, parseControlFile, type ControlFileData } from "../formats/pg_control.js";
import { CLOG_XACTS_PER_PAGE } from "../formats/wal/rmgr/clog.js";
import { MULTIXACT_MEMBERGROUPS_PER_PAGE, MULTIXACT_MEMBERS_PER_MEMBERGROUP, MULTIXACT_MEMBERS_PER_PAGE, MULTIXACT_OFFSETS_PER_PAGE } from "../formats/wal/rmgr/multixact.js";
import { RELMAP_FILE_SIZE_BYTES } from "../formats/wal/rmgr/relmap.js";
import { SLRU_PAGES_PER_SEGMENT, slruPageInSegment, slruSegmentOf } from "../formats/wal/rmgr/slru.js";
import { parseCheckPoint, type CheckPoint } from "../formats/wal/rmgr/xlog.js";
import { SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD } from "../formats/wal/xlog_page.js";
import { nextInsertLsn, shutdownControlFile, synthesizeShutdownCheckpointWal, type SynthesizedWal } from "../formats/wal/wal_synthesis.js";
import {
  dbDirEntryOf,
  decodeDbDir,
  decodeRelDir,
  decodeRelSize,
  decodeSlruDir,
  decodeSlruSegSize,
  decodeTwoPhaseDir,
  relDirEntryOf,
  type DatadirReader,
} from "./datadir.js";
import {
  CHECKPOINT_KEY,
  CONTROLFILE_KEY,
  DBDIR_KEY,
  FORK_INIT,
  FORK_MAIN,
  SlruKind,
  TWOPHASE_DIR_KEY,
  relBlockKey,
  relDirKey,
  relSizeKey,
  relmapKey,
  slruBlockKey,
  slruDirKey,
  slruSegSizeKey,
  twoPhaseFileKey,
  type Key,
  type RelTag,
} from "./key.js";
import { GLOBAL_TABLESPACE_OID } from "./import_datadir.js";
import {
  CONFIG_FILES,
  PG_CONTROL_PATH,
  PG_VERSION_TEXT,
  RELMAP_FILE_NAME,
  SKELETON_DIRS,
  databaseDir,
  databaseParentDirs,
  relationFileName,
  slruSegmentPath,
  twoPhaseFilePath,
} from "./basebackup/layout.js";
import { ChunkPool } from "./basebackup/chunk_pool.js";
import { orderedPrefetch } from "./basebackup/prefetch.js";
import { TarWriter } from "./basebackup/tar_writer.js";
import { walFillerBefore } from "./basebackup/wal_filler.js";
import type { Timeline } from "./timeline.js";

// ------------------------------------------------------------------ limits

/**
 * Page reads in flight while streaming relation files. Each holds one 8 KiB
 * page (plus whatever redo it waits on): 128 pages = 1 MiB per backup, four
 * runs of RUN_PAGES, so the next runs are being read while one is written;
 * enough to keep a pool of redo processes and the layer files busy on a
 * small machine; more mostly adds memory.
 */
export const DEFAULT_PREFETCH_PAGES = 128;
/** Upper bound for the caller's `prefetchPages` (memory per backup: 8 KiB each). */
export const MAX_PREFETCH_PAGES = 1024;
/** Metadata reads (relation sizes) in flight while planning. */
const PLAN_READ_CONCURRENCY = 32;
/** Two-phase files larger than this are refused as corrupt (PostgreSQL's MaxAllocSize bounds real ones far lower in practice). */
const MAX_TWOPHASE_FILE_BYTES = 1 << 30;
/** The only timeline id strata computes use (DESIGN §6: branches keep PostgreSQL timeline 1). */
const COMPUTE_TIMELINE_ID = 1;

// ------------------------------------------------------------------ public types

/** The range a backup LSN must fall in, from the timeline. */
export interface BackupLsnBounds {
  /** Ingest has reached this LSN: a backup above it would miss records. */
  readonly lastRecordLsn: Lsn;
  /** History below this is gone (GC). */
  readonly gcCutoffLsn: Lsn;
  /** Where the timeline's own history starts (import/initdb LSN, or a branch point). */
  readonly minLsn?: Lsn;
}

export interface BasebackupOptions {
  /** X: the state of the backup (every version <= X), and where the new compute's WAL starts. */
  readonly lsn: Lsn;
  /** Start of the record that ends at X (the checkpoint's xl_prev); any value below X is accepted by PostgreSQL. */
  readonly prevRecordLsn?: Lsn;
  /** true: fullbackup, with every relation file. */
  readonly full: boolean;
  readonly gzip?: boolean | { readonly level?: number };
  readonly signal?: AbortSignal;
  /** Checked before anything is read (see checkBackupLsn). Omitted: only the LSN's alignment is checked. */
  readonly bounds?: BackupLsnBounds;
  /** Relation page reads in flight (default DEFAULT_PREFETCH_PAGES). */
  readonly prefetchPages?: number;
  /**
   * Reads the relation and SLRU pages at `lsn` (default `reader.get`). The
   * page service passes getpage.ts's scanReader: validated once, and the
   * pages it reads once do not evict the page cache.
   */
  readonly readPage?: BackupPageReader;
  /**
   * Reads a run of consecutive pages at `lsn` at once (getpage.ts
   * scanRunReader: range scans of the layer files). When given, relation
   * and SLRU pages are read through it in runs of RANGE_RUN_PAGES (and
   * `readPage` is not used); `prefetchPages` then does not apply.
   */
  readonly readPageRun?: BackupRunReader;
  /** Checkpoint, pg_control and tar member time (seconds since the epoch); default now. Fixed for reproducible archives. */
  readonly timeSeconds?: bigint;
  /** Context for reads (default: a "backup" context on `signal`). */
  readonly ctx?: RequestContext;
}

/** What the backup will hold, known before the first byte is streamed. */
export interface BasebackupSummary {
  readonly lsn: Lsn;
  /** Where the checkpoint record is placed (X, or X moved past a page header). */
  readonly checkpointLsn: Lsn;
  /** Where the started server writes its first record. */
  readonly walStartLsn: Lsn;
  readonly checkpoint: CheckPoint;
  readonly databases: number;
  /** Relation forks and bytes streamed (full only). */
  readonly relationForks: number;
  readonly relationBytes: number;
  readonly unloggedRelations: number;
  readonly slruSegments: number;
  /** Zero SLRU pages added so that nextXid/nextMulti/nextMultiOffset's pages exist (see header). */
  readonly slruPagesAdded: number;
  readonly twoPhaseFiles: number;
  readonly walSegments: readonly string[];
}

export interface BasebackupStats {
  readonly tarEntries: number;
  /** Bytes of member contents (without tar headers and padding; before gzip). */
  readonly contentBytes: number;
  /** Relation pages whose checksum was (re)computed on the way out (data checksums only). */
  readonly checksumsSet: number;
  /** Run buffers the backup allocated (0 without a chunk pool): about the window plus what the consumer holds when buffers are recycled. */
  readonly chunksAllocated: number;
}

export interface BasebackupStream {
  /** The tar (gzip) bytes; errors if the backup fails midway. */
  readonly stream: Readable;
  readonly summary: BasebackupSummary;
  /** Resolves when the last byte was handed to the stream; rejects with the failure (also reported on `stream`). */
  readonly finished: Promise<BasebackupStats>;
  /**
   * Gives a chunk read from `stream` back once the consumer is completely
   * done with it (e.g. the socket took it): page runs are written into
   * recycled buffers (basebackup/chunk_pool.ts). Optional for consumers
   * (a chunk never released is garbage collected); a no-op for chunks that
   * are not pooled.
   */
  readonly release: (chunk: Uint8Array) => void;
}

// ------------------------------------------------------------------ LSN checks

function headerBytesAt(x: Lsn, walSegSizeBytes: number): number {
  return segmentOffset(x, walSegSizeBytes) < XLOG_BLCKSZ ? SIZE_OF_XLOG_LONG_PHD : SIZE_OF_XLOG_SHORT_PHD;
}

/**
 * Validates a backup LSN against its alignment and the timeline's bounds,
 * with errors that say which rule and which values. Returns where the
 * checkpoint record goes: X itself, or past the page header when X is a
 * WAL page boundary.
 */
export function checkBackupLsn(x: Lsn, bounds?: BackupLsnBounds, walSegSizeBytes = DEFAULT_WAL_SEG_SIZE_BYTES): Lsn {
  if (x % 8n !== 0n) {
    throw new StrataError("invalid_argument", `Cannot take a base backup at ${formatLsn(x)}: not a record boundary (records start at multiples of 8)`);
  }
  if (bounds !== undefined) {
    if (x > bounds.lastRecordLsn) {
      throw new StrataError("invalid_argument", `Cannot take a base backup at ${formatLsn(x)}: WAL is ingested only up to ${formatLsn(bounds.lastRecordLsn)}`);
    }
    if (x < bounds.gcCutoffLsn) {
      throw new StrataError("invalid_argument", `Cannot take a base backup at ${formatLsn(x)}: below the GC cutoff ${formatLsn(bounds.gcCutoffLsn)}, that history is gone`);
    }
    if (bounds.minLsn !== undefined && x < bounds.minLsn) {
      throw new StrataError("invalid_argument", `Cannot take a base backup at ${formatLsn(x)}: the timeline's history starts at ${formatLsn(bounds.minLsn)}`);
    }
  }
  const off = pageOffset(x);
  const hdr = headerBytesAt(x, walSegSizeBytes);
  if (off === 0) return lsn(x + BigInt(hdr));
  if (off < hdr) {
    throw new StrataError("invalid_argument", `Cannot take a base backup at ${formatLsn(x)}: inside the ${hdr}-byte header of WAL page ${formatLsn(x - BigInt(off))}, not a record boundary`);
  }
  return x;
}

/**
 * Moves a requested LSN to the record boundary that denotes the same state
 * (see "Which LSNs" in the header): an unaligned LSN up to the next multiple
 * of 8, an LSN inside a WAL page header to the first byte after it. Record
 * boundaries come back unchanged.
 */
export function roundToRecordBoundary(x: Lsn, walSegSizeBytes = DEFAULT_WAL_SEG_SIZE_BYTES): Lsn {
  let y = lsnAlign(x, 8);
  const off = pageOffset(y);
  const hdr = headerBytesAt(y, walSegSizeBytes);
  if (off > 0 && off < hdr) y = lsn(y - BigInt(off) + BigInt(hdr));
  return y;
}

/**
 * The LSN, previous record and bounds of a backup of `tl`: its last record
 * when `requested` is undefined, else `requested` after waiting (bounded by
 * `timeoutMs`, default the tenant's wait_lsn_timeout) for ingest to reach it.
 */
export async function timelineBackupLsn(
  tl: Timeline,
  requested: Lsn | undefined,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<{ lsn: Lsn; prevRecordLsn: Lsn | undefined; bounds: BackupLsnBounds }> {
  let x: Lsn;
  if (requested === undefined) {
    x = tl.lastRecordLsn;
  } else {
    x = requested;
    await tl.waitForLsn(x, opts);
  }
  const prevRecordLsn = x === tl.lastRecordLsn ? tl.prevRecordLsn : undefined;
  const minLsn = tl.ancestor !== undefined ? tl.ancestorLsn : tl.initdbLsn;
  return { lsn: x, prevRecordLsn, bounds: { lastRecordLsn: tl.lastRecordLsn, gcCutoffLsn: tl.latestGcCutoffLsn, minLsn } };
}

// ------------------------------------------------------------------ plan

interface RelFilePlan {
  readonly dir: string;
  /** The fork whose pages are read (the init fork for an unlogged relation's main fork). */
  readonly source: RelTag;
  /** The fork named in the file. */
  readonly fork: number;
  readonly blocks: number;
}

interface DatabasePlan {
  readonly spcOid: number;
  readonly dbOid: number;
  readonly dir: string;
  readonly relmap: Uint8Array | undefined;
  readonly forks: RelFilePlan[];
}

interface SlruSegmentPlan {
  readonly kind: SlruKind;
  readonly segNo: number;
  readonly pages: number;
}

interface Plan {
  readonly cf: ControlFileData;
  readonly wal: SynthesizedWal;
  readonly controlFile: Uint8Array;
  readonly databases: DatabasePlan[];
  readonly slru: SlruSegmentPlan[];
  readonly slruPagesAdded: number;
  readonly twoPhase: Array<{ xid: number; bytes: Uint8Array }>;
  readonly relationForks: number;
  readonly relationBytes: number;
  readonly unlogged: number;
}

function corrupt(x: Lsn, what: string, why: string): StrataError {
  return new StrataError("corrupt_data", `Base backup at ${formatLsn(x)}: ${what}: ${why}`);
}

async function mapConcurrent<T, R>(items: readonly T[], fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for await (const r of orderedPrefetch(items, fn, PLAN_READ_CONCURRENCY)) out.push(r);
  return out;
}

/** The forks of one database to stream, with the unlogged-relation rule applied (see header). */
async function planRelations(reader: DatadirReader, x: Lsn, spcOid: number, dbOid: number, dir: string, ctx: RequestContext): Promise<{ forks: RelFilePlan[]; unlogged: number }> {
  const relDirBytes = await reader.get(relDirKey(spcOid, dbOid), x, ctx);
  if (relDirBytes === undefined) return { forks: [], unlogged: 0 };
  const entries = [...decodeRelDir(relDirBytes)].sort((a, b) => a - b).map(relDirEntryOf);
  const unlogged = new Set(entries.filter((e) => e.fork === FORK_INIT).map((e) => e.relNumber));
  const wanted = entries.filter((e) => !unlogged.has(e.relNumber) || e.fork === FORK_INIT);
  const sizes = await mapConcurrent(wanted, async (e) => {
    const tag: RelTag = { spcOid, dbOid, relNumber: e.relNumber, fork: e.fork };
    const v = await reader.get(relSizeKey(tag), x, ctx);
    if (v === undefined) throw corrupt(x, `relation ${spcOid}/${dbOid}/${e.relNumber} fork ${e.fork}`, "listed in its relation directory but has no size");
    const n = decodeRelSize(v);
    if (n === undefined) throw corrupt(x, `relation ${spcOid}/${dbOid}/${e.relNumber} fork ${e.fork}`, "listed in its relation directory but its size says dropped");
    return { tag, blocks: n };
  });
  const forks: RelFilePlan[] = [];
  for (const { tag, blocks } of sizes) {
    if (tag.fork === FORK_INIT) {
      // ResetUnloggedRelations: main := copy of init; FSM/VM dropped. Main sorts before init on disk; order is free in a tar.
      forks.push({ dir, source: tag, fork: FORK_MAIN, blocks });
    }
    forks.push({ dir, source: tag, fork: tag.fork, blocks });
  }
  forks.sort((a, b) => a.source.relNumber - b.source.relNumber || a.fork - b.fork);
  return { forks, unlogged: unlogged.size };
}

/**
 * The SLRU page PostgreSQL reads at start-up for a counter, if any:
 * TrimCLOG / TrimMultiXact read the page of the next value unless that
 * value is the first on its page.
 */
export function startupSlruPages(cp: Pick<CheckPoint, "nextXid" | "nextMulti" | "nextMultiOffset">): Array<{ kind: SlruKind; pageno: number; why: string }> {
  const out: Array<{ kind: SlruKind; pageno: number; why: string }> = [];
  const xid = Number(cp.nextXid & 0xffffffffn);
  if (xid % CLOG_XACTS_PER_PAGE !== 0) out.push({ kind: SlruKind.Clog, pageno: Math.floor(xid / CLOG_XACTS_PER_PAGE), why: `nextXid ${xid}` });
  if (cp.nextMulti % MULTIXACT_OFFSETS_PER_PAGE !== 0) {
    out.push({ kind: SlruKind.MultiXactOffsets, pageno: Math.floor(cp.nextMulti / MULTIXACT_OFFSETS_PER_PAGE), why: `nextMulti ${cp.nextMulti}` });
  }
  // MXOffsetToFlagsOffset(offset) != 0: the offset's member group is not the page's first
  if (Math.floor(cp.nextMultiOffset / MULTIXACT_MEMBERS_PER_MEMBERGROUP) % MULTIXACT_MEMBERGROUPS_PER_PAGE !== 0) {
    out.push({ kind: SlruKind.MultiXactMembers, pageno: Math.floor(cp.nextMultiOffset / MULTIXACT_MEMBERS_PER_PAGE), why: `nextMultiOffset ${cp.nextMultiOffset}` });
  }
  return out;
}

async function planSlru(reader: DatadirReader, x: Lsn, cp: CheckPoint, ctx: RequestContext): Promise<{ segments: SlruSegmentPlan[]; added: number }> {
  const sizes = new Map<SlruKind, Map<number, number>>();
  for (const kind of [SlruKind.Clog, SlruKind.MultiXactOffsets, SlruKind.MultiXactMembers]) {
    const dirBytes = await reader.get(slruDirKey(kind), x, ctx);
    const segs = dirBytes === undefined ? [] : [...decodeSlruDir(dirBytes)].sort((a, b) => a - b);
    const pages = await mapConcurrent(segs, async (segNo) => {
      const v = await reader.get(slruSegSizeKey(kind, segNo), x, ctx);
      if (v === undefined) throw corrupt(x, `SLRU ${SlruKind[kind]} segment ${segNo}`, "in the SLRU directory but has no size");
      const n = decodeSlruSegSize(v);
      if (n > SLRU_PAGES_PER_SEGMENT) throw corrupt(x, `SLRU ${SlruKind[kind]} segment ${segNo}`, `${n} pages, more than ${SLRU_PAGES_PER_SEGMENT}`);
      return n;
    });
    sizes.set(kind, new Map(segs.map((s, i) => [s, pages[i]!])));
  }
  let added = 0;
  for (const need of startupSlruPages(cp)) {
    const segs = sizes.get(need.kind)!;
    const segNo = slruSegmentOf(need.pageno);
    const have = segs.get(segNo) ?? 0;
    const want = slruPageInSegment(need.pageno) + 1;
    if (have < want) {
      segs.set(segNo, want);
      added += want - have;
    }
  }
  const segments: SlruSegmentPlan[] = [];
  for (const [kind, segs] of sizes) {
    for (const segNo of [...segs.keys()].sort((a, b) => a - b)) segments.push({ kind, segNo, pages: segs.get(segNo)! });
  }
  return { segments, added };
}

async function makePlan(reader: DatadirReader, x: Lsn, opts: BasebackupOptions, ctx: RequestContext): Promise<Plan> {
  const cfBytes = await reader.get(CONTROLFILE_KEY, x, ctx);
  if (cfBytes === undefined) {
    throw new StrataError("not_found", `Cannot take a base backup at ${formatLsn(x)}: the timeline has no pg_control there (nothing imported or bootstrapped at or below it)`);
  }
  const cf = parseControlFile(cfBytes);
  checkControlFileCompatible(cf);
  const placeAt = checkBackupLsn(x, opts.bounds, cf.xlogSegSize);
  const cpBytes = await reader.get(CHECKPOINT_KEY, x, ctx);
  if (cpBytes === undefined) throw new StrataError("not_found", `Cannot take a base backup at ${formatLsn(x)}: the timeline has no checkpoint there`);
  const stored = parseCheckPoint(cpBytes, `checkpoint value at ${formatLsn(x)}`);
  if (opts.prevRecordLsn !== undefined && opts.prevRecordLsn >= x) {
    throw new StrataError("invalid_argument", `Cannot take a base backup at ${formatLsn(x)}: previous record ${formatLsn(opts.prevRecordLsn)} is not below it`);
  }

  // databases, in (spc, db) order: base/* then global/ (any order extracts the same)
  const dbDirBytes = await reader.get(DBDIR_KEY, x, ctx);
  if (dbDirBytes === undefined) throw corrupt(x, "database directory", "missing while pg_control exists");
  const dbEntries = [...decodeDbDir(dbDirBytes)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)).map(dbDirEntryOf);
  if (!dbEntries.some((e) => e.spcOid === GLOBAL_TABLESPACE_OID && e.dbOid === 0)) throw corrupt(x, "database directory", "has no global tablespace (1664, 0)");
  const databases: DatabasePlan[] = [];
  let relationForks = 0;
  let relationBytes = 0;
  let unlogged = 0;
  for (const { spcOid, dbOid } of dbEntries) {
    const dir = databaseDir(spcOid, dbOid);
    const relmap = await reader.get(relmapKey(spcOid, dbOid), x, ctx);
    if (relmap !== undefined && relmap.length !== RELMAP_FILE_SIZE_BYTES) {
      throw corrupt(x, `relmapper file of ${spcOid}/${dbOid}`, `${relmap.length} bytes, expected ${RELMAP_FILE_SIZE_BYTES}`);
    }
    let forks: RelFilePlan[] = [];
    if (opts.full) {
      const r = await planRelations(reader, x, spcOid, dbOid, dir, ctx);
      forks = r.forks;
      unlogged += r.unlogged;
      relationForks += forks.length;
      for (const f of forks) relationBytes += f.blocks * BLCKSZ;
    }
    databases.push({ spcOid, dbOid, dir, relmap, forks });
  }

  // the checkpoint, WAL and pg_control
  const timeSeconds = opts.timeSeconds ?? BigInt(Math.floor(Date.now() / 1000));
  // NOOP records from the segment start to X (basebackup/wal_filler.ts): readers that start at the segment's first byte
  const filler = walFillerBefore(placeAt, cf.systemIdentifier, cf.xlogSegSize);
  const wal = synthesizeShutdownCheckpointWal({
    lsn: placeAt,
    checkpoint: {
      ...stored,
      thisTimeLineId: COMPUTE_TIMELINE_ID,
      prevTimeLineId: COMPUTE_TIMELINE_ID,
      time: timeSeconds,
      // the stored value may come from an online checkpoint; a shutdown one has no active XIDs
      oldestActiveXid: 0,
    },
    systemId: cf.systemIdentifier,
    walSegSizeBytes: cf.xlogSegSize,
    ...(filler !== undefined ? { prefix: filler.prefix, prevLsn: filler.lastRecordLsn } : opts.prevRecordLsn !== undefined ? { prevLsn: opts.prevRecordLsn } : {}),
  });
  const controlFile = encodeControlFile(shutdownControlFile(cf, placeAt, wal.checkpoint, timeSeconds));

  const slru = await planSlru(reader, x, wal.checkpoint, ctx);

  const twoPhase: Array<{ xid: number; bytes: Uint8Array }> = [];
  const tpDir = await reader.get(TWOPHASE_DIR_KEY, x, ctx);
  for (const xid of tpDir === undefined ? [] : [...decodeTwoPhaseDir(tpDir)].sort((a, b) => a - b)) {
    const bytes = await reader.get(twoPhaseFileKey(xid), x, ctx);
    if (bytes === undefined) throw corrupt(x, `two-phase state of xid ${xid}`, "in the two-phase directory but has no file");
    if (bytes.length > MAX_TWOPHASE_FILE_BYTES) throw corrupt(x, `two-phase state of xid ${xid}`, `${bytes.length} bytes`);
    twoPhase.push({ xid, bytes });
  }

  return { cf, wal, controlFile, databases, slru: slru.segments, slruPagesAdded: slru.added, twoPhase, relationForks, relationBytes, unlogged };
}

// ------------------------------------------------------------------ streaming

/**
 * A run of consecutive pages of one file (relation segment or SLRU
 * segment), fetched together and handed to the tar as one chunk: the unit
 * of the prefetch window. Per-page work in the stream (one generator step,
 * one tar write) was a large share of a fullbackup's CPU at 8 KiB; per run
 * it is 1/RUN_PAGES of that. Runs never cross a file boundary.
 */
interface PageRun {
  /** Key of page `first + i` (block number in the fork / page number in the SLRU segment). */
  readonly keyOf: (n: number) => Key;
  readonly first: number;
  readonly count: number;
  /** Relation pages: page LSN and checksum rules apply (block numbers are the fork's). */
  readonly rel: boolean;
  /** Describes page `n` for errors (built only on failure). */
  readonly what: (n: number) => string;
}

/** Pages per run: 32 x 8 KiB = 256 KiB, the tar writer's coalescing size, so a run is written as it is. */
const RUN_PAGES = 32;

/** Hands out exactly `n` items of a shared iterator (the runs of one file). */
async function* take<T>(src: AsyncIterator<T>, n: number): AsyncGenerator<T> {
  for (let i = 0; i < n; i++) {
    const r = await src.next();
    assert(!r.done, "page stream ended before its file");
    yield r.value;
  }
}

/** Runs of `runPages` covering pages [from, from + n). */
function* runsOf(keyOf: (n: number) => Key, from: number, n: number, rel: boolean, what: (n: number) => string, runPages: number): Generator<PageRun> {
  for (let i = 0; i < n; i += runPages) yield { keyOf, first: from + i, count: Math.min(runPages, n - i), rel, what };
}

function* relationPageRuns(plan: Plan, runPages: number): Generator<PageRun> {
  const segBlocks = plan.cf.relsegSize;
  for (const db of plan.databases) {
    for (const f of db.forks) {
      const keyOf = (b: number) => relBlockKey(f.source, b);
      const what = (b: number) => `block ${b} of ${f.dir}/${relationFileName(f.source.relNumber, f.source.fork, 0)}`;
      for (let k = 0; k * segBlocks < f.blocks; k++) yield* runsOf(keyOf, k * segBlocks, Math.min(segBlocks, f.blocks - k * segBlocks), true, what, runPages);
    }
  }
}

function* slruPageRuns(plan: Plan, runPages: number): Generator<PageRun> {
  for (const s of plan.slru) {
    yield* runsOf((p) => slruBlockKey(s.kind, s.segNo, p), 0, s.pages, false, (p) => `page ${p} of ${slruSegmentPath(s.kind, s.segNo)}`, runPages);
  }
}

/** Reads one page of a backup at X: a value's bytes, or undefined when the key has no version. */
export type BackupPageReader = (key: Key) => Promise<Uint8Array | undefined>;

/**
 * Reads `count` consecutive pages from `firstKey` at X into `out` (page i at
 * i * BLCKSZ); returns a flag per page, 0 where the key has no version (out
 * untouched there). getpage.ts PageRunReader.
 */
export type BackupRunReader = (firstKey: Key, count: number, out: Uint8Array) => Promise<Uint8Array>;

/**
 * Pages per run with a run reader: 256 x 8 KiB = 2 MiB, one range scan per
 * layer and run. Larger runs amortize the per-run walk; this keeps the
 * memory of RANGE_RUN_WINDOW runs in flight (plus their read-ahead) near
 * 12 MiB per backup.
 */
const RANGE_RUN_PAGES = 256;
/** Runs read ahead of the tar with a run reader: the next runs' redo overlaps sending this one. */
const RANGE_RUN_WINDOW = 3;
/**
 * Pooled run buffers beyond the window: those the tar and the socket still
 * hold (the pack's buffer, the tar output's OUTPUT_HIGH_WATER_MARK_CHUNKS,
 * the chunk being sent, the socket's queue). Fewer, and runs at the peak
 * found no idle buffer and allocated fresh memory (BasebackupStats
 * chunksAllocated).
 */
const POOL_SLACK_CHUNKS = 8;
/**
 * Runs shorter than this many pages (the tail of a small relation file)
 * get a buffer of their own size, not a pooled 2 MiB one: a small chunk
 * may wait in the tar's queues behind many others, and each pooled one
 * would pin a whole pool buffer meanwhile (a catalog of small files then
 * drained the pool and every run allocated 2 MiB).
 */
const POOLED_RUN_MIN_PAGES = 32;

async function streamBackup(reader: DatadirReader, x: Lsn, plan: Plan, tar: TarWriter, opts: BasebackupOptions, ctx: RequestContext, stats: { checksumsSet: number }, pool: ChunkPool | undefined): Promise<void> {
  const signal = ctx.signal;
  const prefetch = opts.prefetchPages ?? DEFAULT_PREFETCH_PAGES;
  // the window holds `prefetch` pages in flight: runs of up to RUN_PAGES, at least one run
  const readRun = opts.readPageRun;
  const runPages = readRun !== undefined ? RANGE_RUN_PAGES : Math.min(RUN_PAGES, prefetch);
  const window = readRun !== undefined ? RANGE_RUN_WINDOW : Math.max(1, Math.floor(prefetch / runPages));
  const checksums = plan.cf.dataChecksumVersion !== 0;
  const readPage: BackupPageReader = opts.readPage ?? ((key) => reader.get(key, x, ctx));
  // x's halves as numbers: the page LSN check below runs per page, without a view or BigInts (pd_lsn: xlogid, xrecoff, little-endian)
  const xHi = Number(x >> 32n);
  const xLo = Number(x & 0xffffffffn);
  /** The page LSN and checksum rules on page i of a run already in `out` (see fetchRun). */
  const checkRunPage = (run: PageRun, out: Buffer, i: number): void => {
    const n = run.first + i;
    const at = i * BLCKSZ;
    const hi = out.readUInt32LE(at);
    if (hi > xHi || (hi === xHi && out.readUInt32LE(at + 4) > xLo)) {
      const page = out.subarray(at, at + BLCKSZ);
      throw corrupt(x, run.what(n), `page LSN ${formatLsn(getPageLsn(page))} is above the backup LSN`);
    }
    if (!checksums) return;
    const page = out.subarray(at, at + BLCKSZ);
    if (!pageIsNew(page) && pageChecksum(page, n) !== getPageChecksumField(page)) {
      setPageChecksum(page, n);
      stats.checksumsSet++;
    }
  };
  const fetchRunRange = async (run: PageRun, readRun: BackupRunReader): Promise<Uint8Array> => {
    signal.throwIfAborted();
    const out = pool !== undefined && run.count >= POOLED_RUN_MIN_PAGES ? pool.acquire(run.count * BLCKSZ) : Buffer.allocUnsafe(run.count * BLCKSZ);
    let present: Uint8Array;
    try {
      present = await readRun(run.keyOf(run.first), run.count, out);
    } catch (e) {
      pool?.release(out);
      throw e;
    }
    for (let i = 0; i < run.count; i++) {
      if (present[i] !== 1) out.fill(0, i * BLCKSZ, (i + 1) * BLCKSZ); // no version: zeros
      else if (run.rel) checkRunPage(run, out, i);
    }
    return out;
  };
  const fetchRun = async (run: PageRun): Promise<Uint8Array> => {
    if (readRun !== undefined) return fetchRunRange(run, readRun);
    signal.throwIfAborted();
    const out = Buffer.alloc(run.count * BLCKSZ); // zeroed: pages without a version stay zeros
    const one = async (i: number): Promise<void> => {
      const n = run.first + i;
      const page = await readPage(run.keyOf(n));
      if (page === undefined) return; // no version: zeros
      if (page.length !== BLCKSZ) throw corrupt(x, run.what(n), `${page.length} bytes, expected ${BLCKSZ}`);
      if (run.rel && getPageLsn(page) > x) throw corrupt(x, run.what(n), `page LSN ${formatLsn(getPageLsn(page))} is above the backup LSN`);
      out.set(page, i * BLCKSZ);
      // PostgreSQL computes a page's checksum when it writes the page out
      // (FlushBuffer), never in memory: full-page images in WAL, and so the
      // images ingest stores, carry a stale one. Writing the file is our
      // "write out", so the checksum is computed here, as the server would,
      // on the archive's copy (the reader's buffer may be shared, a cache).
      if (run.rel && checksums && !pageIsNew(page) && pageChecksum(page, n) !== getPageChecksumField(page)) {
        setPageChecksum(out.subarray(i * BLCKSZ, (i + 1) * BLCKSZ), n);
        stats.checksumsSet++;
      }
    };
    const reads: Array<Promise<void>> = [];
    for (let i = 0; i < run.count; i++) reads.push(one(i));
    await Promise.all(reads);
    return out;
  };
  const runsIn = (pages: number) => Math.ceil(pages / runPages);

  for (const d of SKELETON_DIRS) await tar.dir(d);
  for (const [name, text] of CONFIG_FILES) await tar.file(name, text);

  const slruRuns = orderedPrefetch(slruPageRuns(plan, runPages), fetchRun, window);
  try {
    for (const s of plan.slru) await tar.fileFrom(slruSegmentPath(s.kind, s.segNo), s.pages * BLCKSZ, take(slruRuns, runsIn(s.pages)));
  } finally {
    await slruRuns.return();
  }

  for (const t of plan.twoPhase) await tar.file(twoPhaseFilePath(t.xid), t.bytes);

  const relRuns = orderedPrefetch(relationPageRuns(plan, runPages), fetchRun, window);
  const segBlocks = plan.cf.relsegSize;
  const dirsMade = new Set<string>();
  try {
    for (const db of plan.databases) {
      signal.throwIfAborted();
      for (const p of databaseParentDirs(db.spcOid)) {
        if (dirsMade.has(p)) continue;
        dirsMade.add(p);
        await tar.dir(p);
      }
      if (db.spcOid !== GLOBAL_TABLESPACE_OID) {
        await tar.dir(db.dir);
        await tar.file(`${db.dir}/PG_VERSION`, PG_VERSION_TEXT);
      }
      if (db.relmap !== undefined) await tar.file(`${db.dir}/${RELMAP_FILE_NAME}`, db.relmap);
      for (const f of db.forks) {
        // segment files: [k * segBlocks, (k+1) * segBlocks); an empty fork is one empty file
        const segments = Math.max(1, Math.ceil(f.blocks / segBlocks));
        for (let k = 0; k < segments; k++) {
          const n = Math.min(segBlocks, f.blocks - k * segBlocks);
          await tar.fileFrom(`${db.dir}/${relationFileName(f.source.relNumber, f.fork, k)}`, n * BLCKSZ, take(relRuns, runsIn(n)));
        }
      }
    }
  } finally {
    await relRuns.return();
  }

  for (const seg of plan.wal.segments) await tar.file(`pg_wal/${seg.name}`, seg.bytes);
  await tar.file(PG_CONTROL_PATH, plan.controlFile);
  tar.finish();
}

/**
 * Prepares a base backup of the state at `opts.lsn` and returns its tar
 * stream (see the module header). Rejects before streaming when the LSN or
 * the stored state cannot make a startable backup.
 */
export async function basebackup(reader: DatadirReader, opts: BasebackupOptions): Promise<BasebackupStream> {
  const x = opts.lsn;
  const signal = opts.signal ?? opts.ctx?.signal ?? new AbortController().signal;
  const ctx = opts.ctx ?? requestContext("backup", signal);
  signal.throwIfAborted();
  if (opts.prefetchPages !== undefined && (!Number.isInteger(opts.prefetchPages) || opts.prefetchPages < 1 || opts.prefetchPages > MAX_PREFETCH_PAGES)) {
    throw new StrataError("invalid_argument", `Base backup prefetch of ${opts.prefetchPages} pages is outside 1..${MAX_PREFETCH_PAGES}`);
  }
  // alignment and bounds first: a bad request reads nothing (re-checked with the cluster's segment size in makePlan)
  checkBackupLsn(x, opts.bounds);
  const plan = await makePlan(reader, x, opts, ctx);
  // Pooled run buffers only where chunks reach the consumer as they are (not through gzip, which holds them while it compresses).
  const pool = opts.readPageRun !== undefined && !opts.gzip ? new ChunkPool(RANGE_RUN_PAGES * BLCKSZ, RANGE_RUN_WINDOW + POOL_SLACK_CHUNKS) : undefined;
  const tar = new TarWriter({
    mtime: new Date(Number(plan.wal.checkpoint.time) * 1000),
    ...(opts.gzip !== undefined ? { gzip: opts.gzip } : {}),
    ...(pool === undefined ? {} : { release: (chunk: Uint8Array) => pool.release(chunk) }),
  });
  const onAbort = () => tar.abort(new StrataError("cancelled", `Base backup at ${formatLsn(x)} cancelled`, { cause: signal.reason }));
  signal.addEventListener("abort", onAbort, { once: true });
  const stats = { checksumsSet: 0 };
  const finished = streamBackup(reader, x, plan, tar, opts, ctx, stats, pool).then(
    (): BasebackupStats => {
      signal.removeEventListener("abort", onAbort);
      return { tarEntries: tar.entries, contentBytes: tar.contentBytes, checksumsSet: stats.checksumsSet, chunksAllocated: pool?.allocated ?? 0 };
    },
    (e: unknown) => {
      signal.removeEventListener("abort", onAbort);
      const err = e instanceof Error ? e : new StrataError("internal", String(e));
      tar.abort(err);
      throw err;
    },
  );
  // The stream carries the error to its consumer (pipeline, async iteration,
  // an 'error' listener) and `finished` to the caller. A stream nobody
  // observes (the caller gave up on it) must not crash the process when it
  // fails later: both get a no-op handler.
  finished.catch(() => undefined);
  tar.output.on("error", () => undefined);

  const summary: BasebackupSummary = {
    lsn: x,
    checkpointLsn: plan.wal.recordLsn,
    walStartLsn: nextInsertLsn(plan.wal),
    checkpoint: plan.wal.checkpoint,
    databases: plan.databases.length,
    relationForks: plan.relationForks,
    relationBytes: plan.relationBytes,
    unloggedRelations: plan.unlogged,
    slruSegments: plan.slru.length,
    slruPagesAdded: plan.slruPagesAdded,
    twoPhaseFiles: plan.twoPhase.length,
    walSegments: plan.wal.segments.map((s) => s.name),
  };
  return { stream: tar.output, summary, finished, release: pool === undefined ? () => undefined : (chunk) => pool.release(chunk) };
}
