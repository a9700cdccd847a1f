/**
 * WAL ingest: turns each decoded PostgreSQL 15 WAL record into versions of
 * pageserver keys (DESIGN §4).
 *
 *   WAL receiver -> WalStreamDecoder -> WalIngest.ingestRecord -> DatadirModification
 *                                                                     -> DatadirWriter (Timeline)
 *
 * Every record of every resource manager PostgreSQL 15 writes ends in one of
 * three ways, decided in `ingestRecord`:
 *   1. **Stored per block.** For each block reference: a full-page image with
 *      BKPIMAGE_APPLY becomes an image (XLogReadBufferForRedoExtended restores
 *      such an image whatever the record type, and redo never touches the
 *      page again); otherwise the whole raw record becomes a `wal` value of
 *      that block, will-init when BKPBLOCK_WILL_INIT is set (heap INSERT+INIT,
 *      btree NEWROOT, sequences, ... all set it). walredo replays the record
 *      for exactly that block (it finds the block reference by rel/fork/block).
 *   2. **Interpreted.** Effects that are not page redo are computed here:
 *      relation creation, truncation and drop (also relations dropped at
 *      commit/abort), database create/drop, relmapper files, clog bits (as
 *      native records on clog pages), multixact offsets/members, SLRU page
 *      creation and truncation, visibility-map bits cleared by heap records,
 *      two-phase state files, checkpoints, counters, and the last commit
 *      (timestamp and end LSN of every COMMIT / COMMIT PREPARED, for
 *      get_lsn_by_timestamp: lsn_by_timestamp.ts).
 *   3. **Skipped deliberately**, each with its reason at the `skip` call.
 * An unknown resource manager or record type is a StrataError that stops the
 * ingest: never silent loss.
 *
 * Relation sizes follow redo: a reference to block B of a fork extends it to
 * B+1 blocks (XLogReadBufferExtended extends with zero pages). Newly
 * reachable blocks get a base at this LSN (see datadir.ts "Blocks"), so
 * versions left behind by an earlier truncation are never read.
 *
 * Counters for base backups: next XID (64-bit, epoch tracked as
 * AdvanceNextFullTransactionIdPastXid does), next OID (NEXTOID and shutdown
 * checkpoints, as xlog_redo), next multixact and member offset (CREATE_ID and
 * checkpoints, as MultiXactAdvanceNextMXact). Whenever they change, the
 * checkpoint value (CHECKPOINT_KEY) is rewritten with them, so "the
 * checkpoint at LSN X" always carries the counters as of X, also after a
 * pageserver restart (cost: one ~90-byte image per record that assigns a new
 * XID or OID).
 *
 * Caches: relation sizes and directories, SLRU and two-phase directories are
 * cached here (ingest is the only writer of those keys of its timeline), each
 * cache bounded; a failed record clears them all, since the batch was not
 * written. Relation sizes are looked up by numbers (RelSizeCache), not by
 * bigint keys, since every block reference of every record checks one.
 *
 * Two paths, one result. The general path (`ingestGeneral`) handles every
 * record: it reads state through the DatadirReader as needed, collects the
 * record's puts in a DatadirModification and hands them to the writer. The
 * fast path (`ingestFast`) takes the records that dominate a busy database's
 * WAL — block changes of relations whose size is cached (inside the fork or
 * extending it by one block), XLOG full-page images, and COMMIT / ABORT whose
 * clog pages exist — when the writer offers synchronous puts
 * (FastDatadirWriter: the Timeline's open in-memory layer): no promise, no
 * modification batch, no intermediate WAL value per record (the record is
 * written once, header and raw bytes straight into the layer's buffer), and
 * per block a slot from the fork's slot table (FastIngestTarget.forkSlots,
 * remembered per cached fork) instead of a bigint key. It stores exactly
 * what the general path would (walingest.test.ts compares the two on the
 * same records) and declines, before changing anything, whatever it does
 * not cover. `ingestRecord` returns undefined when the fast path took the
 * record, so callers await only the general path.
 *
 * Crash/cancel: a record's puts are handed to the writer only when the whole
 * record is interpreted, then finishRecord advances last_record_lsn, so an
 * interrupted record leaves nothing below last_record_lsn. CREATE DATABASE
 * (FILE_COPY) is the exception in size, not in kind: it hands its block
 * copies to the writer in chunks before the rest, all at the record's LSN,
 * above last_record_lsn. The writer must not make such versions durable
 * before finishRecord (the Timeline freezes layers only there), so after a
 * failure the timeline restarts ingest from its last durable record and the
 * partial copy is gone. The request context's signal is checked before each
 * record and between copy chunks; an aborted record counts as failed.
 */
import { StrataError, assert } from "../lib/errors.js";
import { formatLsn, type Lsn } from "../lib/lsn.js";
import type { RequestContext } from "../lib/tasks.js";
import { crc32c } from "../formats/crc32c.js";
import { initPage, pageIsAllZero, pageIsNew } from "../formats/page.js";
import { encodeControlFile, parseControlFile } from "../formats/pg_control.js";
import type { BlockRef, DecodedRecord, RelFileNode } from "../formats/wal/decoded_record.js";
import { restoreBlockImageForRedo } from "../formats/wal/fpi.js";
import {
  RM_BRIN_ID,
  RM_BTREE_ID,
  RM_CLOG_ID,
  RM_COMMIT_TS_ID,
  RM_DBASE_ID,
  RM_GENERIC_ID,
  RM_GIN_ID,
  RM_GIST_ID,
  RM_HASH_ID,
  RM_HEAP2_ID,
  RM_HEAP_ID,
  RM_LOGICALMSG_ID,
  RM_MULTIXACT_ID,
  RM_RELMAP_ID,
  RM_REPLORIGIN_ID,
  RM_SEQ_ID,
  RM_SMGR_ID,
  RM_SPGIST_ID,
  RM_STANDBY_ID,
  RM_TBLSPC_ID,
  RM_XACT_ID,
  RM_XLOG_ID,
  identifyRecord,
  rmgrName,
} from "../formats/wal/rmgr_names.js";
import { CLOG_XACTS_PER_PAGE, TRANSACTION_STATUS_ABORTED, TRANSACTION_STATUS_COMMITTED, clogPageOf, parseClogRecord, setClogStatus } from "../formats/wal/rmgr/clog.js";
import { parseDbaseRecord } from "../formats/wal/rmgr/dbase.js";
import { heapVmClears, vmBlockOf, type VmClear } from "../formats/wal/rmgr/heap.js";
import {
  FIRST_MULTIXACT_ID,
  MULTIXACT_MEMBERS_PER_PAGE,
  MULTIXACT_OFFSETS_PER_PAGE,
  multiXactMemberPageOf,
  multiXactOffsetPageOf,
  parseMultiXactRecord,
} from "../formats/wal/rmgr/multixact.js";
import { RELMAP_FILE_SIZE_BYTES, parseRelmapRecord } from "../formats/wal/rmgr/relmap.js";
import { SLRU_PAGES_PER_SEGMENT, SLRU_PAGE_SIZE_BYTES, slruPageInSegment, slruSegmentOf } from "../formats/wal/rmgr/slru.js";
import { parseSmgrRecord, type SmgrTruncate } from "../formats/wal/rmgr/smgr.js";
import { completedXid, parseXactRecord, type XactCompletion } from "../formats/wal/rmgr/xact.js";
import { encodeCheckPoint, parseCheckPoint, parseXlogRecord, type CheckPoint } from "../formats/wal/rmgr/xlog.js";
import {
  DatadirModification,
  ZERO_PAGE_VALUE,
  dbDirEntryId,
  decodeDbDir,
  decodeRelDir,
  decodeRelSize,
  decodeSlruDir,
  decodeSlruSegSize,
  decodeTwoPhaseDir,
  encodeDbDir,
  encodeRelDir,
  encodeRelSize,
  encodeSlruDir,
  encodeSlruSegSize,
  encodeTwoPhaseDir,
  recordVersionLsn,
  relDirEntryId,
  relDirEntryOf,
  walRecordValue,
  writeWalValueHeader,
  WAL_VALUE_HEADER_BYTES,
  type DatadirPut,
  type DatadirReader,
  type DatadirWriter,
} from "./datadir.js";
import {
  CHECKPOINT_KEY,
  CONTROLFILE_KEY,
  DBDIR_KEY,
  FORK_FSM,
  LAST_COMMIT_KEY,
  FORK_MAIN,
  FORK_VM,
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
import type { RedoEngine, Value } from "./layers/value.js";
import { encodeLastCommit } from "./lsn_by_timestamp.js";

// ------------------------------------------------------------------ limits

/** Cached relation sizes before the cache is dropped and reloaded (each entry ~100 bytes). */
export const MAX_CACHED_REL_SIZES = 200_000;
/** Cached relation directories (one per database; each holds that database's forks). */
export const MAX_CACHED_REL_DIRS = 1_000;
/**
 * Blocks copied per writer.put while CREATE DATABASE (FILE_COPY) copies a
 * database: bounds the memory of one copy step to ~8 MiB of images.
 */
export const DBASE_COPY_CHUNK_BLOCKS = 1024;

// ------------------------------------------------------------------ PostgreSQL constants

/** FirstNormalTransactionId: XIDs below are special (invalid, bootstrap, frozen). */
const FIRST_NORMAL_XID = 3;
/** FSM page geometry (fsm_internals.h with BLCKSZ 8192): NodesPerPage = BLCKSZ - MAXALIGN(header) - offsetof(fp_nodes). */
const FSM_NODES_PER_PAGE = 8192 - 24 - 4;
const FSM_NON_LEAF_NODES_PER_PAGE = 8192 / 2 - 1;
const FSM_SLOTS_PER_PAGE = FSM_NODES_PER_PAGE - FSM_NON_LEAF_NODES_PER_PAGE;
/** FSM_TREE_DEPTH: 3 levels when SlotsPerFSMPage >= 1626 (it is 4069). */
const FSM_TREE_DEPTH = 3;
/** Offset of fp_nodes within an FSM page: page header (24, MAXALIGNed) + int fp_next_slot. */
const FSM_NODES_OFFSET = 24 + 4;
/** Visibility map geometry (visibilitymap.c): MAPSIZE bytes after the page header, 4 heap blocks per byte. */
const VM_PAGE_HEADER_BYTES = 24;
const VM_MAPSIZE_BYTES = 8192 - VM_PAGE_HEADER_BYTES;
const VM_HEAPBLOCKS_PER_BYTE = 4;
const VM_BITS_PER_HEAPBLOCK = 2;
const VM_HEAPBLOCKS_PER_PAGE = VM_MAPSIZE_BYTES * VM_HEAPBLOCKS_PER_BYTE;

const FORKS = [0, 1, 2, 3] as const;

// ------------------------------------------------------------------ the fast path (see "Fast path" in the class)

/** How a (rmid, info) pair can be ingested synchronously; computed once per pair from identifyRecord. */
const FAST_UNKNOWN = 0;
/** Stored per block only (index AMs, sequences, generic WAL). */
const FAST_BLOCKS = 1;
/** Stored per block, plus the VM bits it clears (HEAP / HEAP2 records that are not skipped). */
const FAST_HEAP = 2;
/** XLOG FPI / FPI_FOR_HINT: every block must carry an image to apply. */
const FAST_FPI = 3;
/** XACT COMMIT / ABORT: clog pages, last commit. */
const FAST_XACT = 4;
/** Anything else: the general (async) path. */
const FAST_NEVER = 5;
const fastKinds = new Uint8Array(256 * 256);

function fastKindOf(rmid: number, info: number): number {
  const i = (rmid << 8) | info;
  let k = fastKinds[i]!;
  if (k !== FAST_UNKNOWN) return k;
  const name = identifyRecord(rmid, info);
  k = FAST_NEVER;
  if (name !== undefined) {
    switch (rmid) {
      case RM_HEAP_ID:
        if (name !== "TRUNCATE") k = FAST_HEAP;
        break;
      case RM_HEAP2_ID:
        if (name !== "REWRITE" && name !== "NEW_CID") k = FAST_HEAP;
        break;
      case RM_XLOG_ID:
        if (name === "FPI" || name === "FPI_FOR_HINT") k = FAST_FPI;
        break;
      case RM_XACT_ID:
        if (name === "COMMIT" || name === "ABORT") k = FAST_XACT;
        break;
      default:
        if (BLOCK_ONLY_RMIDS.has(rmid)) k = FAST_BLOCKS;
        break;
    }
  }
  fastKinds[i] = k;
  return k;
}

/**
 * Index AMs, sequences and generic WAL change only the blocks they
 * reference: their records are stored per block and replayed by
 * PostgreSQL's redo, on both paths.
 */
const BLOCK_ONLY_RMIDS: ReadonlySet<number> = new Set([RM_BTREE_ID, RM_HASH_ID, RM_GIN_ID, RM_GIST_ID, RM_SEQ_ID, RM_SPGIST_ID, RM_BRIN_ID, RM_GENERIC_ID]);

/** Offsets of the counters in an encoded CheckPoint (encodeCheckPoint: nextXid, nextOid, nextMulti, nextMultiOffset). */
const CHECKPOINT_NEXT_XID_OFFSET = 24;
const CHECKPOINT_NEXT_OID_OFFSET = 32;
const CHECKPOINT_NEXT_MULTI_OFFSET = 36;
const CHECKPOINT_NEXT_MULTI_OFFSET_OFFSET = 40;

/** Block references a record may have on the fast path (XLR_MAX_BLOCK_ID + 1); more goes the general way. */
const MAX_FAST_BLOCKS = 33;

/** A cached relation fork size (RelSizeCache). */
interface RelSizeEntry {
  readonly spcOid: number;
  readonly dbOid: number;
  readonly relNumber: number;
  readonly fork: number;
  /** Blocks, or -1 when the fork is known not to exist (dropped or never created). */
  blocks: number;
  /** The fork's slot table and its size key's slot in `slotTarget`, for the target they were taken from. */
  forkSlots: ForkSlotTable | undefined;
  sizeSlot: number;
  slotTarget: FastIngestTarget | undefined;
}

/**
 * Relation fork sizes ingest has read or written, looked up by numbers
 * (relation number first, then a short scan for tablespace, database and
 * fork) rather than by bigint keys: the fast path checks one per block
 * reference of every record. Bounded by MAX_CACHED_REL_SIZES entries.
 */
class RelSizeCache {
  private readonly byRel = new Map<number, RelSizeEntry[]>();
  private count = 0;

  get size(): number {
    return this.count;
  }

  find(spcOid: number, dbOid: number, relNumber: number, fork: number): RelSizeEntry | undefined {
    const list = this.byRel.get(relNumber);
    if (list === undefined) return undefined;
    for (let i = 0; i < list.length; i++) {
      const e = list[i]!;
      if (e.fork === fork && e.dbOid === dbOid && e.spcOid === spcOid) return e;
    }
    return undefined;
  }

  /** Caches `blocks` (undefined: known absent) for the fork; drops everything first when full. */
  set(tag: RelTag, blocks: number | undefined): void {
    const e = this.find(tag.spcOid, tag.dbOid, tag.relNumber, tag.fork);
    if (e !== undefined) {
      e.blocks = blocks ?? -1;
      return;
    }
    if (this.count >= MAX_CACHED_REL_SIZES) this.clear();
    const entry: RelSizeEntry = {
      spcOid: tag.spcOid,
      dbOid: tag.dbOid,
      relNumber: tag.relNumber,
      fork: tag.fork,
      blocks: blocks ?? -1,
      forkSlots: undefined,
      sizeSlot: -1,
      slotTarget: undefined,
    };
    const list = this.byRel.get(tag.relNumber);
    if (list === undefined) this.byRel.set(tag.relNumber, [entry]);
    else list.push(entry);
    this.count++;
  }

  /** Forgets the sizes of one database's forks. */
  forgetDb(spcOid: number, dbOid: number): void {
    for (const [rel, list] of this.byRel) {
      const kept = list.filter((e) => e.spcOid !== spcOid || e.dbOid !== dbOid);
      this.count -= list.length - kept.length;
      if (kept.length === 0) this.byRel.delete(rel);
      else if (kept.length !== list.length) this.byRel.set(rel, kept);
    }
  }

  clear(): void {
    this.byRel.clear();
    this.count = 0;
  }
}

/** recordVersionLsn with one bigint instead of several (every record; LSNs below 2^53 are exact numbers). */
function versionLsnOf(rec: DecodedRecord): Lsn {
  const end = Number(rec.endLsn);
  return end < Number.MAX_SAFE_INTEGER - 8 ? (BigInt(Math.ceil(end / 8) * 8) as Lsn) : recordVersionLsn(rec);
}

/** Index of `slot` in slots[0, n), or -1. */
function indexOfSlot(slots: number[], n: number, slot: number): number {
  for (let i = 0; i < n; i++) if (slots[i] === slot) return i;
  return -1;
}

/** Points the fork's remembered slots at `target` (forgetting those of the previous target). */
function useSlotTarget(e: RelSizeEntry, target: FastIngestTarget): void {
  e.forkSlots = target.forkSlots(e.spcOid, e.dbOid, e.relNumber, e.fork);
  e.sizeSlot = -1;
  e.slotTarget = target;
}

/** The target's slot for block `blk` of a cached fork, through the fork's slot table (no bigint key, no Map lookup). */
function cachedBlockSlot(e: RelSizeEntry, blk: number, target: FastIngestTarget): number {
  if (e.slotTarget !== target || e.forkSlots === undefined) useSlotTarget(e, target);
  return e.forkSlots!.slotOf(blk);
}

/** The target's slot for the fork's size key, remembered on the fork (a fork grows block by block during loads). */
function relSizeSlot(e: RelSizeEntry, target: FastIngestTarget): number {
  if (e.slotTarget !== target || e.forkSlots === undefined) useSlotTarget(e, target);
  if (e.sizeSlot < 0) e.sizeSlot = target.slotOf(relSizeKey(e));
  return e.sizeSlot;
}

// ------------------------------------------------------------------ public types

/**
 * Where WAL ingest's fast path puts the versions of one record: synchronous
 * puts at the record's version LSN (the Timeline hands out its open
 * in-memory layer). `putWal` stores a WAL value whose record bytes are
 * `head ++ body` without concatenating them. Every put copies what it keeps
 * before it returns: the fast path reuses `head` and its image pages.
 */
export interface FastIngestTarget {
  put(key: Key, lsn: Lsn, value: Value): void;
  putWal(key: Key, lsn: Lsn, willInit: boolean, engine: RedoEngine | undefined, head: Uint8Array, body: Uint8Array): void;
  /**
   * A number standing for `key` in this target (registering the key if
   * new), valid as long as the target is: putAt / putWalAt take it instead
   * of the key. Ingest remembers them per relation fork and block number.
   */
  slotOf(key: Key): number;
  putAt(slot: number, lsn: Lsn, value: Value): void;
  putWalAt(slot: number, lsn: Lsn, willInit: boolean, engine: RedoEngine | undefined, head: Uint8Array, body: Uint8Array): void;
  /**
   * The slots of one relation fork's blocks: `slotOf(blk)` equals
   * slotOf(relBlockKey(fork, blk)) for every valid block number, without
   * building the key. Valid as long as the target is.
   */
  forkSlots(spcOid: number, dbOid: number, relNumber: number, fork: number): ForkSlotTable;
}

/** FastIngestTarget.forkSlots: block number -> slot of one relation fork. */
export interface ForkSlotTable {
  slotOf(blk: number): number;
}

/** A DatadirWriter that can take a record's puts synchronously (the Timeline). */
export interface FastDatadirWriter extends DatadirWriter {
  /**
   * The target for the puts of one record at `lsn` when they can be taken
   * right now without waiting (no back-pressure, timeline active, `lsn`
   * above last_record_lsn), else undefined: ingest then takes the general
   * path, whose `put` waits or reports the error.
   */
  fastIngestTarget(lsn: Lsn): FastIngestTarget | undefined;
}

function isFastWriter(w: DatadirWriter): w is FastDatadirWriter {
  return typeof (w as Partial<FastDatadirWriter>).fastIngestTarget === "function";
}

/** The counters a base backup's checkpoint needs (DESIGN §6). */
export interface IngestCounters {
  /** FullTransactionId: epoch << 32 | xid. */
  readonly nextFullXid: bigint;
  readonly nextOid: number;
  readonly nextMulti: number;
  readonly nextMultiOffset: number;
}

export interface WalIngestOptions {
  /**
   * LSN of the state the first record applies to: the timeline's
   * last_record_lsn (after an import, the import LSN). Ingest reads existing
   * state at the last LSN it finished, never above, so a reader that waits
   * for an LSN to be ingested (Timeline.get) cannot wait on ingest itself.
   */
  readonly startLsn: Lsn;
}

/** What happened to records, by outcome (metrics and tests). */
export interface IngestStats {
  records: number;
  /** Block versions stored as images / WAL records. */
  images: number;
  walValues: number;
  /** Records skipped deliberately, by "Rmgr/TYPE". */
  skipped: Record<string, number>;
}

// ------------------------------------------------------------------ helpers

function relTag(rel: RelFileNode, fork: number): RelTag {
  return { spcOid: rel.spcOid, dbOid: rel.dbOid, relNumber: rel.relNumber, fork };
}

function describeRecord(rec: DecodedRecord): string {
  return `${rmgrName(rec.rmid)}/${identifyRecord(rec.rmid, rec.info) ?? `0x${rec.info.toString(16)}`} at ${formatLsn(rec.lsn)}`;
}

/** Sets the next full XID and its low 32 bits together. */
function setNextFullXid(c: { nextFullXid: bigint; nextXid32: number }, v: bigint): void {
  c.nextFullXid = v;
  c.nextXid32 = Number(v & 0xffffffffn);
}

function isNormalXid(xid: number): boolean {
  return xid >= FIRST_NORMAL_XID;
}

/** TransactionIdFollowsOrEquals. */
function xidFollowsOrEquals(a: number, b: number): boolean {
  if (!isNormalXid(a) || !isNormalXid(b)) return a >= b;
  return ((a - b) | 0) >= 0;
}

/** TransactionIdPrecedes. */
function xidPrecedes(a: number, b: number): boolean {
  if (!isNormalXid(a) || !isNormalXid(b)) return a < b;
  return ((a - b) | 0) < 0;
}

/** MultiXactIdPrecedes / MultiXactOffsetPrecedes: modulo-2^32 comparison. */
function u32Precedes(a: number, b: number): boolean {
  return ((a - b) | 0) < 0;
}

/** SlruMayDeleteSegment with a PagePrecedes function. */
function mayDeleteSegment(segpage: number, cutoffPage: number, precedes: (a: number, b: number) => boolean): boolean {
  return precedes(segpage, cutoffPage) && precedes(segpage + SLRU_PAGES_PER_SEGMENT - 1, cutoffPage);
}

function clogPagePrecedes(p1: number, p2: number): boolean {
  const x1 = (p1 * CLOG_XACTS_PER_PAGE + FIRST_NORMAL_XID + 1) >>> 0;
  const x2 = (p2 * CLOG_XACTS_PER_PAGE + FIRST_NORMAL_XID + 1) >>> 0;
  return xidPrecedes(x1, x2) && xidPrecedes(x1, (x2 + CLOG_XACTS_PER_PAGE - 1) >>> 0);
}

function multiOffsetPagePrecedes(p1: number, p2: number): boolean {
  const m1 = (p1 * MULTIXACT_OFFSETS_PER_PAGE + FIRST_MULTIXACT_ID + 1) >>> 0;
  const m2 = (p2 * MULTIXACT_OFFSETS_PER_PAGE + FIRST_MULTIXACT_ID + 1) >>> 0;
  return u32Precedes(m1, m2) && u32Precedes(m1, (m2 + MULTIXACT_OFFSETS_PER_PAGE - 1) >>> 0);
}

/** FSM block holding heap block `heapBlock`'s leaf slot, and the slot (fsm_get_location + fsm_logical_to_physical). */
function fsmLocation(heapBlock: number): { logPage: number; slot: number } {
  return { logPage: Math.floor(heapBlock / FSM_SLOTS_PER_PAGE), slot: heapBlock % FSM_SLOTS_PER_PAGE };
}

/** fsm_logical_to_physical for a bottom-level (leaf) page. */
export function fsmLeafToPhysical(logPage: number): number {
  let leafno = logPage;
  let pages = 0;
  for (let l = 0; l < FSM_TREE_DEPTH; l++) {
    pages += leafno + 1;
    leafno = Math.floor(leafno / FSM_SLOTS_PER_PAGE);
  }
  return pages - 1;
}

/** fsm_truncate_avail: zero leaf slots >= nslots and rebuild the inner nodes (in place). */
export function fsmTruncateAvail(page: Uint8Array, nslots: number): void {
  const nodes = page.subarray(FSM_NODES_OFFSET, FSM_NODES_OFFSET + FSM_NODES_PER_PAGE);
  let changed = false;
  for (let i = FSM_NON_LEAF_NODES_PER_PAGE + nslots; i < FSM_NODES_PER_PAGE; i++) {
    if (nodes[i] !== 0) changed = true;
    nodes[i] = 0;
  }
  if (!changed) return;
  for (let n = FSM_NON_LEAF_NODES_PER_PAGE - 1; n >= 0; n--) {
    const l = 2 * n + 1;
    const r = l + 1;
    let v = 0;
    if (l < FSM_NODES_PER_PAGE) v = nodes[l]!;
    if (r < FSM_NODES_PER_PAGE) v = Math.max(v, nodes[r]!);
    nodes[n] = v;
  }
}

/** The VM part of visibilitymap_prepare_truncate: clear bits of heap blocks >= nheapblocks on their VM page (in place). */
export function vmTruncatePage(page: Uint8Array, nheapblocks: number): void {
  const inPage = nheapblocks % VM_HEAPBLOCKS_PER_PAGE;
  const truncByte = Math.floor(inPage / VM_HEAPBLOCKS_PER_BYTE);
  const truncOffset = (inPage % VM_HEAPBLOCKS_PER_BYTE) * VM_BITS_PER_HEAPBLOCK;
  const map = page.subarray(VM_PAGE_HEADER_BYTES, VM_PAGE_HEADER_BYTES + VM_MAPSIZE_BYTES);
  map.fill(0, truncByte + 1);
  map[truncByte] = map[truncByte]! & ((1 << truncOffset) - 1);
}

// ------------------------------------------------------------------ WalIngest

interface SlruState {
  dir?: Set<number>;
  segSizes: Map<number, number>;
}

/** Ingests decoded WAL records into a timeline. One instance per timeline; records in order, one at a time. */
export class WalIngest {
  readonly stats: IngestStats = { records: 0, images: 0, walValues: 0, skipped: {} };

  /** nextXid32 is nextFullXid's low 32 bits, kept beside it (advanceXid runs for nearly every record). */
  private counters?: { nextFullXid: bigint; nextXid32: number; nextOid: number; nextMulti: number; nextMultiOffset: number; checkpoint: CheckPoint };
  private countersChanged = false;
  private lastLsn: Lsn;
  private busy = false;
  /** The writer, when it takes puts synchronously (see "Fast path"). */
  private readonly fastWriter: FastDatadirWriter | undefined;
  /** Scratch of the fast path: the WAL value header of the record being stored, and its per-block work. */
  private readonly walHead = new Uint8Array(WAL_VALUE_HEADER_BYTES);
  private readonly fastEntries: RelSizeEntry[] = [];
  private readonly fastImages: Array<Uint8Array | undefined> = [];
  private readonly fastPages: Uint8Array[] = [];
  private readonly fastKeys: Key[] = [];
  private readonly fastSlots: number[] = [];
  /** fastCheckpointValue's value (an image whose bytes it patches) and the checkpoint it encodes. */
  private fastCheckpoint: { kind: "image"; bytes: Uint8Array } | undefined;
  private fastCheckpointOf: CheckPoint | undefined;
  /** Slots of the checkpoint and last-commit keys in `constSlotTarget` (one of each per transaction). */
  private constSlotTarget: FastIngestTarget | undefined;
  private checkpointSlot = -1;
  private lastCommitSlot = -1;
  /** Per fast key: 1 when the record extends its fork by that block (stored will-init, as touchBlock does). */
  private readonly fastExtends = new Uint8Array(2 * MAX_FAST_BLOCKS + 2);
  /** Forks the record extends by one block, and their new sizes (applied only once the record qualifies). */
  private readonly growForks: RelSizeEntry[] = [];
  private readonly growSizes: number[] = [];
  private growCount = 0;

  // caches (see header); "known absent" is cached too
  private relSizes = new RelSizeCache();
  private relDirs = new Map<Key, Set<number>>();
  private dbDir?: Set<bigint>;
  private twoPhaseDir?: Set<number>;
  private slru = new Map<SlruKind, SlruState>();
  /** The offsets page a CREATE_ID created implicitly (RecordNewMultiXact's pre_initialized_offsets_page). */
  private preInitializedOffsetsPage = -1;

  constructor(
    private readonly reader: DatadirReader,
    private readonly writer: DatadirWriter,
    opts: WalIngestOptions,
  ) {
    this.lastLsn = opts.startLsn;
    this.fastWriter = isFastWriter(writer) ? writer : undefined;
  }

  /** Counters as of the last ingested record; undefined before the first record. */
  get ingestCounters(): IngestCounters | undefined {
    if (!this.counters) return undefined;
    const { nextFullXid, nextOid, nextMulti, nextMultiOffset } = this.counters;
    return { nextFullXid, nextOid, nextMulti, nextMultiOffset };
  }

  /**
   * Interprets one record and writes its versions at the record's MAXALIGNed
   * end. Returns undefined when the record was ingested synchronously (the
   * fast path: most records of a busy database), else a promise to await
   * before the next record; a failure is always a rejected promise.
   */
  ingestRecord(rec: DecodedRecord, ctx: RequestContext): Promise<void> | undefined {
    try {
      if (this.ingestFast(rec, ctx)) return undefined;
    } catch (err) {
      return Promise.reject(err);
    }
    return this.ingestGeneral(rec, ctx);
  }

  /** The general path: any record, reading state through the reader as needed. */
  private async ingestGeneral(rec: DecodedRecord, ctx: RequestContext): Promise<void> {
    assert(!this.busy, "WalIngest.ingestRecord called concurrently");
    if (rec.lsn < this.lastLsn) {
      throw new StrataError("invalid_argument", `WAL ingest: record at ${formatLsn(rec.lsn)} is below the last ingested LSN ${formatLsn(this.lastLsn)}`);
    }
    ctx.signal.throwIfAborted();
    this.busy = true;
    const versionLsn = recordVersionLsn(rec);
    const mod = new DatadirModification(this.reader, this.lastLsn, versionLsn, ctx);
    try {
      if (!this.counters) await this.loadCounters(mod);
      await this.dispatch(rec, mod);
      if (this.countersChanged) this.putCheckpoint(mod);
      await mod.commit(this.writer);
      this.writer.finishRecord(versionLsn, rec.lsn);
      this.lastLsn = versionLsn;
      this.stats.records++;
    } catch (err) {
      this.clearCaches();
      throw err;
    } finally {
      this.busy = false;
      this.countersChanged = false;
    }
  }

  // ---------------------------------------------------------------- fast path
  //
  // Most records of a busy database change blocks of relations whose size is
  // cached and lie inside them (or commit transactions whose clog pages
  // exist): nothing has to be read, so they can be ingested without a
  // promise, a DatadirModification or an intermediate value per record. The
  // fast path does exactly what the general path would do for such a record
  // (same versions, counters, stats), and declines — before changing any
  // state — whenever something is not cached, the record is of another kind,
  // or the writer cannot take puts right now. Everything that can fail
  // (parsing the body, restoring images) happens before the first put, so a
  // failure leaves nothing behind, as on the general path.

  /** Ingests `rec` synchronously if it qualifies; false when the general path must. */
  private ingestFast(rec: DecodedRecord, ctx: RequestContext): boolean {
    const fw = this.fastWriter;
    if (fw === undefined || this.counters === undefined) return false;
    const kind = fastKindOf(rec.rmid, rec.info);
    if (kind === FAST_NEVER) return false;
    assert(!this.busy, "WalIngest.ingestRecord called concurrently");
    if (rec.lsn < this.lastLsn) return false; // the general path reports it
    ctx.signal.throwIfAborted();
    try {
      return kind === FAST_XACT ? this.fastXact(rec, fw) : this.fastBlocks(rec, kind, fw);
    } catch (err) {
      this.clearCaches();
      throw err;
    } finally {
      this.countersChanged = false;
    }
  }

  /**
   * Whether block `blk` of the cached fork `e` can be stored on the fast
   * path: 0 when it lies inside the fork, 1 when it is the block right after
   * its end (the record extends the fork by one: touchBlock's case without a
   * gap; the new size is noted in growForks / growSizes, counting earlier
   * blocks of the same record), -1 otherwise (not cached, dropped, a gap).
   */
  private fastReach(e: RelSizeEntry | undefined, blk: number): number {
    if (e === undefined || e.blocks < 0) return -1;
    let g = 0;
    while (g < this.growCount && this.growForks[g] !== e) g++;
    const size = g < this.growCount ? this.growSizes[g]! : e.blocks;
    if (blk < size) return 0;
    if (blk !== size || blk >= 0xfffffffe) return -1;
    if (g === this.growCount) {
      this.growForks[g] = e;
      this.growCount++;
    }
    this.growSizes[g] = blk + 1;
    return 1;
  }

  /** FAST_BLOCKS / FAST_HEAP / FAST_FPI: every block (and VM page) cached, inside its fork or right after its end. */
  private fastBlocks(rec: DecodedRecord, kind: number, fw: FastDatadirWriter): boolean {
    const blocks = rec.blocks;
    const n = blocks.length;
    if (n > MAX_FAST_BLOCKS) return false;
    const versionLsn = versionLsnOf(rec);
    const target = fw.fastIngestTarget(versionLsn);
    if (target === undefined) return false;
    const images = this.fastImages;
    const slots = this.fastSlots; // [0, nslots) are this record's (no array resizing per record)
    const ext = this.fastExtends;
    let nslots = 0;
    this.growCount = 0;
    for (let i = 0; i < n; i++) {
      const b = blocks[i]!;
      const e = this.relSizes.find(b.rel.spcOid, b.rel.dbOid, b.rel.relNumber, b.forkNum);
      const reach = this.fastReach(e, b.blockNumber);
      if (reach < 0) return false;
      const slot = cachedBlockSlot(e!, b.blockNumber, target);
      if (indexOfSlot(slots, nslots, slot) >= 0) return false; // one block twice: the general path's batch merges them
      slots[nslots++] = slot;
      ext[i] = reach;
      const apply = b.image?.apply === true;
      if (kind === FAST_FPI && !apply) return false; // the general path reports it
      // (into a scratch page per block reference: the put below copies it)
      images[i] = apply ? restoreBlockImageForRedo(rec, b.id, (this.fastPages[i] ??= new Uint8Array(8192))) : undefined;
    }
    if (kind === FAST_HEAP) {
      const clears: VmClear[] = heapVmClears(rec);
      for (let j = 0; j < clears.length; j++) {
        const c = clears[j]!;
        const e = this.relSizes.find(c.rel.spcOid, c.rel.dbOid, c.rel.relNumber, FORK_VM);
        const vmBlk = vmBlockOf(c.heapBlock);
        if (e === undefined || e.blocks < 0) return false;
        const slot = cachedBlockSlot(e, vmBlk, target);
        const seen = indexOfSlot(slots, nslots, slot);
        // a VM page that is also a block reference of the record: the general path sorts it out
        if (seen >= 0 && seen < n) return false;
        if (seen >= 0) continue; // several clears on one VM page: one record value applies them all
        const reach = this.fastReach(e, vmBlk);
        if (reach < 0) return false;
        ext[nslots] = reach;
        slots[nslots++] = slot;
      }
    }

    // From here on nothing declines or fails (but the writer's own checks).
    if (isNormalXid(rec.xid)) this.advanceXid(rec.xid);
    for (let g = 0; g < this.growCount; g++) {
      const e = this.growForks[g]!;
      const size = this.growSizes[g]!;
      e.blocks = size;
      target.putAt(relSizeSlot(e, target), versionLsn, { kind: "image", bytes: encodeRelSize(size) });
    }
    const head = this.walHead;
    writeWalValueHeader(rec, head);
    for (let i = 0; i < n; i++) {
      const img = images[i];
      if (img !== undefined) {
        target.putAt(slots[i]!, versionLsn, { kind: "image", bytes: img });
        images[i] = undefined;
        this.stats.images++;
      } else {
        target.putWalAt(slots[i]!, versionLsn, blocks[i]!.willInit || ext[i] === 1, "postgres", head, rec.raw);
        this.stats.walValues++;
      }
    }
    for (let j = n; j < nslots; j++) {
      target.putWalAt(slots[j]!, versionLsn, ext[j] === 1, "native", head, rec.raw);
      this.stats.walValues++;
    }
    this.finishFast(rec, versionLsn, target, fw);
    return true;
  }

  /** FAST_XACT: COMMIT / ABORT dropping no relation, every clog page of its XIDs known to exist. */
  private fastXact(rec: DecodedRecord, fw: FastDatadirWriter): boolean {
    const body = parseXactRecord(rec);
    if ((body.type !== "COMMIT" && body.type !== "ABORT") || body.droppedRels.length > 0) return false;
    const clog = this.slru.get(SlruKind.Clog);
    if (clog?.dir === undefined) return false;
    const xid = completedXid(rec.xid, body);
    const keys = this.fastKeys; // [0, nkeys) are this record's
    let nkeys = 0;
    let lastPage = -1;
    for (let i = -1; i < body.subxacts.length; i++) {
      const pageno = clogPageOf(i < 0 ? xid : body.subxacts[i]!);
      if (pageno === lastPage) continue; // (subxacts are usually on the page of their top XID)
      lastPage = pageno;
      const seg = slruSegmentOf(pageno);
      const blk = slruPageInSegment(pageno);
      const size = clog.segSizes.get(seg);
      if (!clog.dir.has(seg) || size === undefined || !(blk < size)) return false;
      const key = slruBlockKey(SlruKind.Clog, seg, blk);
      let seen = false;
      for (let k = 0; k < nkeys; k++) if (keys[k] === key) seen = true;
      if (!seen) keys[nkeys++] = key;
    }
    const versionLsn = versionLsnOf(rec);
    const target = fw.fastIngestTarget(versionLsn);
    if (target === undefined) return false;

    if (isNormalXid(rec.xid)) this.advanceXid(rec.xid);
    if (isNormalXid(xid)) this.advanceXid(xid);
    for (const x of body.subxacts) if (isNormalXid(x)) this.advanceXid(x);
    const head = this.walHead;
    writeWalValueHeader(rec, head);
    // (clog values are not counted in stats.walValues, as on the general path)
    for (let k = 0; k < nkeys; k++) target.putWal(keys[k]!, versionLsn, false, "native", head, rec.raw);
    if (body.type === "COMMIT") {
      const value: Value = { kind: "image", bytes: encodeLastCommit({ timestampUs: body.xactTime, endLsn: versionLsn, xid }) };
      target.putAt(this.constSlot(LAST_COMMIT_KEY, target), versionLsn, value);
    }
    this.finishFast(rec, versionLsn, target, fw);
    return true;
  }

  /** The target's slot for CHECKPOINT_KEY or LAST_COMMIT_KEY, remembered per target. */
  private constSlot(key: Key, target: FastIngestTarget): number {
    if (this.constSlotTarget !== target) {
      this.constSlotTarget = target;
      this.checkpointSlot = -1;
      this.lastCommitSlot = -1;
    }
    if (key === CHECKPOINT_KEY) {
      if (this.checkpointSlot < 0) this.checkpointSlot = target.slotOf(key);
      return this.checkpointSlot;
    }
    if (this.lastCommitSlot < 0) this.lastCommitSlot = target.slotOf(key);
    return this.lastCommitSlot;
  }

  /** The checkpoint value when counters changed, then publishes the record. */
  private finishFast(rec: DecodedRecord, versionLsn: Lsn, target: FastIngestTarget, fw: FastDatadirWriter): void {
    if (this.countersChanged) target.putAt(this.constSlot(CHECKPOINT_KEY, target), versionLsn, this.fastCheckpointValue());
    fw.finishRecord(versionLsn, rec.lsn);
    this.lastLsn = versionLsn;
    this.stats.records++;
  }

  private clearCaches(): void {
    this.relSizes.clear();
    this.relDirs.clear();
    this.dbDir = undefined;
    this.twoPhaseDir = undefined;
    this.slru.clear();
    this.counters = undefined;
    this.preInitializedOffsetsPage = -1;
  }

  // ---------------------------------------------------------------- dispatch

  private async dispatch(rec: DecodedRecord, mod: DatadirModification): Promise<void> {
    const typeName = rec.rmid === RM_GENERIC_ID ? "Generic" : identifyRecord(rec.rmid, rec.info);
    if (typeName === undefined) {
      throw new StrataError("unsupported", `WAL ingest: unknown record type: rmgr ${rec.rmid} (${rmgrName(rec.rmid)}) info 0x${rec.info.toString(16)} at ${formatLsn(rec.lsn)}`);
    }
    if (isNormalXid(rec.xid)) this.advanceXid(rec.xid);

    switch (rec.rmid) {
      case RM_XLOG_ID:
        return this.ingestXlog(rec, mod);
      case RM_XACT_ID:
        return this.ingestXact(rec, mod);
      case RM_SMGR_ID:
        return this.ingestSmgr(rec, mod);
      case RM_CLOG_ID:
        return this.ingestClog(rec, mod);
      case RM_DBASE_ID:
        return this.ingestDbase(rec, mod);
      case RM_TBLSPC_ID:
        // CREATE/DROP TABLESPACE make or remove a directory and symlink.
        // Relations carry their tablespace in every key, so nothing is lost;
        // base backups with non-default tablespaces are not supported.
        return this.skip(rec, typeName);
      case RM_MULTIXACT_ID:
        return this.ingestMultixact(rec, mod);
      case RM_RELMAP_ID:
        return this.ingestRelmap(rec, mod);
      case RM_STANDBY_ID:
        // LOCK / RUNNING_XACTS / INVALIDATIONS only drive a hot standby's
        // lock table, snapshots and caches; they change no stored state.
        return this.skip(rec, typeName);
      case RM_HEAP_ID:
      case RM_HEAP2_ID:
        return this.ingestHeap(rec, mod, typeName);
      case RM_BTREE_ID:
      case RM_HASH_ID:
      case RM_GIN_ID:
      case RM_GIST_ID:
      case RM_SEQ_ID:
      case RM_SPGIST_ID:
      case RM_BRIN_ID:
      case RM_GENERIC_ID:
        // BLOCK_ONLY_RMIDS (kept in step with these cases).
        return this.storeBlocks(rec, mod);
      case RM_COMMIT_TS_ID:
        // Commit timestamps (track_commit_timestamp = on) live in an SLRU
        // strata does not store; refusing is better than silently serving a
        // pg_commit_ts that misses them.
        throw new StrataError("unsupported", `WAL ingest: ${describeRecord(rec)}: track_commit_timestamp is not supported`);
      case RM_REPLORIGIN_ID:
        // Replication origin progress is logical-replication state kept in
        // pg_logical/replorigin_checkpoint, not part of the pages strata
        // serves; a compute started from a base backup starts without origins.
        return this.skip(rec, typeName);
      case RM_LOGICALMSG_ID:
        // pg_logical_emit_message: only for logical decoding; no redo effect.
        return this.skip(rec, typeName);
      default:
        throw new StrataError("unsupported", `WAL ingest: unknown resource manager ${rec.rmid} at ${formatLsn(rec.lsn)}`);
    }
  }

  private skip(rec: DecodedRecord, typeName: string): void {
    if (rec.blocks.length > 0) {
      throw new StrataError("corrupt_data", `WAL ingest: ${describeRecord(rec)} is skipped but references ${rec.blocks.length} block(s)`);
    }
    const k = `${rmgrName(rec.rmid)}/${typeName}`;
    this.stats.skipped[k] = (this.stats.skipped[k] ?? 0) + 1;
  }

  // ---------------------------------------------------------------- blocks

  /** Stores every block reference of `rec` (image or record). */
  private async storeBlocks(rec: DecodedRecord, mod: DatadirModification): Promise<void> {
    for (const b of rec.blocks) {
      const tag = relTag(b.rel, b.forkNum);
      // the common case (cached, inside the fork) without a promise per block
      const extended = this.blockInsideCached(tag, b.blockNumber) ? false : await this.touchBlock(tag, b.blockNumber, mod);
      this.storeBlock(rec, b, tag, extended, mod);
    }
  }

  private storeBlock(rec: DecodedRecord, b: BlockRef, tag: RelTag, extended: boolean, mod: DatadirModification): void {
    const key = relBlockKey(tag, b.blockNumber);
    if (b.image?.apply) {
      mod.put(key, { kind: "image", bytes: restoreBlockImageForRedo(rec, b.id) });
      this.stats.images++;
    } else {
      mod.put(key, walRecordValue(rec, b.willInit || extended, "postgres"));
      this.stats.walValues++;
    }
  }

  /**
   * Makes block `blk` of the fork reachable as redo does: the fork exists
   * (added to its rel dir, and the database to the db dir), and its size is
   * at least blk + 1. Blocks between the old end and `blk` get the zero-page
   * marker. Returns true when `blk` itself was beyond the end (its page
   * before this record is a zero page).
   */
  /** True when the caches say the fork exists and `blk` is inside it (touchBlock would change nothing). */
  private blockInsideCached(tag: RelTag, blk: number): boolean {
    // A cached size of an existing fork implies its rel dir entry (sizes are
    // cached only for forks in the cached dir, and dropped with it).
    const e = this.relSizes.find(tag.spcOid, tag.dbOid, tag.relNumber, tag.fork);
    return e !== undefined && blk < e.blocks;
  }

  private async touchBlock(tag: RelTag, blk: number, mod: DatadirModification): Promise<boolean> {
    await this.ensureRelExists(tag, mod);
    const size = (await this.getRelSize(tag, mod)) ?? 0;
    if (blk < size) return false;
    for (let gap = size; gap < blk; gap++) mod.put(relBlockKey(tag, gap), ZERO_PAGE_VALUE);
    this.setRelSize(tag, blk + 1, mod);
    return true;
  }

  // ---------------------------------------------------------------- heap

  private async ingestHeap(rec: DecodedRecord, mod: DatadirModification, typeName: string): Promise<void> {
    if (rec.rmid === RM_HEAP2_ID && (typeName === "REWRITE" || typeName === "NEW_CID")) {
      // REWRITE writes pg_logical/mappings files for logical decoding of a
      // table rewrite; NEW_CID records command ids for logical decoding.
      // Neither changes a page (heap2_redo ignores NEW_CID, REWRITE is
      // handled by logical decoding only).
      return this.skip(rec, typeName);
    }
    if (rec.rmid === RM_HEAP_ID && typeName === "TRUNCATE") {
      // Logged for logical decoding; the storage change itself arrives as
      // SMGR records and relfilenode swaps at commit. heap_redo ignores it.
      return this.skip(rec, typeName);
    }
    await this.storeBlocks(rec, mod);
    // VM bits cleared as a side effect (visibilitymap_clear in heap redo)
    for (const c of heapVmClears(rec)) {
      const tag = relTag(c.rel, FORK_VM);
      const vmBlk = vmBlockOf(c.heapBlock);
      const key = relBlockKey(tag, vmBlk);
      if (mod.has(key)) continue; // one record value per page applies all of its clears
      const extended = this.blockInsideCached(tag, vmBlk) ? false : await this.touchBlock(tag, vmBlk, mod);
      mod.put(key, walRecordValue(rec, extended, "native"));
      this.stats.walValues++;
    }
  }

  // ---------------------------------------------------------------- XLOG

  private async ingestXlog(rec: DecodedRecord, mod: DatadirModification): Promise<void> {
    const body = parseXlogRecord(rec);
    const c = this.counters!;
    switch (body.type) {
      case "FPI":
      case "FPI_FOR_HINT":
        // xlog_redo requires every block to be restored from its image
        for (const b of rec.blocks) {
          if (!b.image?.apply) throw new StrataError("corrupt_data", `WAL ingest: ${describeRecord(rec)}: block reference ${b.id} has no image to apply`);
        }
        return this.storeBlocks(rec, mod);
      case "CHECKPOINT_SHUTDOWN":
      case "CHECKPOINT_ONLINE": {
        const cp = body.checkpoint;
        if (body.type === "CHECKPOINT_SHUTDOWN") {
          // xlog_redo: a shutdown checkpoint sets the counters outright
          setNextFullXid(c, cp.nextXid);
          c.nextOid = cp.nextOid;
          c.nextMulti = cp.nextMulti;
          c.nextMultiOffset = cp.nextMultiOffset;
        } else {
          // an online checkpoint's values can be older than records before
          // it: XIDs only move forward, nextOid is not replayed from it
          if (cp.nextXid > c.nextFullXid) setNextFullXid(c, cp.nextXid);
          this.advanceMulti(cp.nextMulti, cp.nextMultiOffset);
        }
        c.checkpoint = cp;
        this.countersChanged = true;
        return;
      }
      case "NEXTOID":
        c.nextOid = body.nextOid;
        this.countersChanged = true;
        return;
      case "PARAMETER_CHANGE": {
        // xlog_redo copies these into pg_control; keep our copy in step
        const bytes = await mod.get(CONTROLFILE_KEY);
        if (bytes === undefined) return; // nothing to update before an import stored pg_control
        const cf = parseControlFile(bytes);
        const p = body.params;
        Object.assign(cf, {
          maxConnections: p.maxConnections,
          maxWorkerProcesses: p.maxWorkerProcesses,
          maxWalSenders: p.maxWalSenders,
          maxPreparedXacts: p.maxPreparedXacts,
          maxLocksPerXact: p.maxLocksPerXact,
          walLevel: p.walLevel,
          walLogHints: p.walLogHints,
          trackCommitTimestamp: p.trackCommitTimestamp,
        });
        mod.put(CONTROLFILE_KEY, { kind: "image", bytes: encodeControlFile(cf) });
        return;
      }
      case "NOOP": // written only by tests and extensions; no effect
      case "SWITCH": // the rest of the segment is padding; the decoder skips it
      case "BACKUP_END": // marks the end of an online backup for a recovering server
      case "RESTORE_POINT": // a named target for point-in-time recovery; no state
      case "FPW_CHANGE": // full_page_writes toggled; matters only to a recovering server's backup logic
      case "END_OF_RECOVERY": // timeline switch at promotion; strata computes always run on timeline 1
      case "OVERWRITE_CONTRECORD": // an abandoned partial record; the decoder has already dealt with it
        return this.skip(rec, body.type);
    }
  }

  private putCheckpoint(mod: DatadirModification): void {
    mod.put(CHECKPOINT_KEY, this.checkpointValue());
  }

  /** The checkpoint value carrying the current counters. */
  /**
   * checkpointValue for the fast path, whose target copies a value before
   * the put returns: one value object and buffer, re-encoded only when the
   * checkpoint itself changed, else with just the four counters patched
   * (nearly every transaction assigns an XID, so this runs per transaction).
   */
  private fastCheckpointValue(): Value {
    const c = this.counters!;
    if (this.fastCheckpointOf !== c.checkpoint || this.fastCheckpoint === undefined) {
      this.fastCheckpointOf = c.checkpoint;
      this.fastCheckpoint = { kind: "image", bytes: encodeCheckPoint(c.checkpoint) };
    }
    const bytes = this.fastCheckpoint.bytes;
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    // (CheckPoint field offsets, as encodeCheckPoint writes them)
    v.setBigUint64(CHECKPOINT_NEXT_XID_OFFSET, c.nextFullXid, true);
    v.setUint32(CHECKPOINT_NEXT_OID_OFFSET, c.nextOid, true);
    v.setUint32(CHECKPOINT_NEXT_MULTI_OFFSET, c.nextMulti, true);
    v.setUint32(CHECKPOINT_NEXT_MULTI_OFFSET_OFFSET, c.nextMultiOffset, true);
    return this.fastCheckpoint;
  }

  private checkpointValue(): Value {
    const c = this.counters!;
    const cp: CheckPoint = { ...c.checkpoint, nextXid: c.nextFullXid, nextOid: c.nextOid, nextMulti: c.nextMulti, nextMultiOffset: c.nextMultiOffset };
    return { kind: "image", bytes: encodeCheckPoint(cp) };
  }

  private async loadCounters(mod: DatadirModification): Promise<void> {
    if (this.counters) return;
    const bytes = await mod.get(CHECKPOINT_KEY);
    if (bytes === undefined) {
      throw new StrataError("invalid_argument", `WAL ingest at ${formatLsn(mod.lsn)}: the timeline has no checkpoint (import a data directory first)`);
    }
    const cp = parseCheckPoint(bytes, `checkpoint value at ${formatLsn(mod.readLsn)}`);
    this.counters = {
      nextFullXid: cp.nextXid,
      nextXid32: Number(cp.nextXid & 0xffffffffn),
      nextOid: cp.nextOid,
      nextMulti: cp.nextMulti,
      nextMultiOffset: cp.nextMultiOffset,
      checkpoint: cp,
    };
  }

  /** AdvanceNextFullTransactionIdPastXid. */
  private advanceXid(xid: number): void {
    const c = this.counters!;
    const nextXid = c.nextXid32;
    if (!xidFollowsOrEquals(xid, nextXid)) return;
    let next = (xid + 1) >>> 0;
    if (next < FIRST_NORMAL_XID) next = FIRST_NORMAL_XID; // TransactionIdAdvance skips special XIDs
    let epoch = c.nextFullXid >> 32n;
    if (next < nextXid) epoch++;
    setNextFullXid(c, (epoch << 32n) | BigInt(next));
    this.countersChanged = true;
  }

  /** MultiXactAdvanceNextMXact. */
  private advanceMulti(minMulti: number, minOffset: number): void {
    const c = this.counters!;
    if (u32Precedes(c.nextMulti, minMulti)) {
      c.nextMulti = minMulti;
      this.countersChanged = true;
    }
    if (u32Precedes(c.nextMultiOffset, minOffset)) {
      c.nextMultiOffset = minOffset;
      this.countersChanged = true;
    }
  }

  // ---------------------------------------------------------------- XACT

  private async ingestXact(rec: DecodedRecord, mod: DatadirModification): Promise<void> {
    const body = parseXactRecord(rec);
    switch (body.type) {
      case "COMMIT":
      case "ABORT":
      case "COMMIT_PREPARED":
      case "ABORT_PREPARED":
        return this.ingestXactCompletion(rec, body, mod);
      case "PREPARE": {
        this.advanceXid(body.xid);
        for (const x of body.subxacts) this.advanceXid(x);
        // The pg_twophase file is the record's main data plus its CRC-32C
        // (RecreateTwoPhaseFile writes exactly that at checkpoint).
        const file = new Uint8Array(rec.mainData.length + 4);
        file.set(rec.mainData);
        new DataView(file.buffer).setUint32(rec.mainData.length, crc32c(rec.mainData), true);
        mod.put(twoPhaseFileKey(body.xid), { kind: "image", bytes: file });
        const dir = await this.getTwoPhaseDir(mod);
        dir.add(body.xid);
        mod.put(TWOPHASE_DIR_KEY, { kind: "image", bytes: encodeTwoPhaseDir(dir) });
        return;
      }
      case "ASSIGNMENT":
        // Only tells a hot standby which subtransactions belong together;
        // their XIDs still count for nextXid.
        this.advanceXid(body.xtop);
        for (const x of body.subxacts) this.advanceXid(x);
        return this.skip(rec, "ASSIGNMENT");
      case "INVALIDATION":
        // Cache invalidations for a hot standby's backends; no stored state.
        return this.skip(rec, "INVALIDATION");
    }
  }

  private async ingestXactCompletion(rec: DecodedRecord, body: XactCompletion, mod: DatadirModification): Promise<void> {
    const xid = completedXid(rec.xid, body);
    const xids = [xid, ...body.subxacts];
    for (const x of xids) if (isNormalXid(x)) this.advanceXid(x);
    const status = body.type.startsWith("COMMIT") ? TRANSACTION_STATUS_COMMITTED : TRANSACTION_STATUS_ABORTED;

    // clog: the record on every clog page holding one of the XIDs
    const pages = new Map<number, number[]>();
    for (const x of xids) {
      const p = clogPageOf(x);
      const list = pages.get(p);
      if (list) list.push(x);
      else pages.set(p, [x]);
    }
    for (const [pageno, onPage] of pages) {
      const key = slruBlockKey(SlruKind.Clog, slruSegmentOf(pageno), slruPageInSegment(pageno));
      if (await this.ensureSlruPage(SlruKind.Clog, pageno, mod)) {
        // Redo reads a missing clog page as zeros (SlruPhysicalReadPage in
        // recovery) and writes it: store that page whole.
        const page = new Uint8Array(SLRU_PAGE_SIZE_BYTES);
        for (const x of onPage) setClogStatus(page, x, status);
        mod.put(key, { kind: "image", bytes: page });
      } else {
        mod.put(key, walRecordValue(rec, false, "native"));
      }
    }

    // relations dropped at commit, or whose creation the abort undoes
    for (const rel of body.droppedRels) await this.dropRelation(rel, mod);

    // the record of commits for get_lsn_by_timestamp (lsn_by_timestamp.ts); aborts change no visible state
    if (status === TRANSACTION_STATUS_COMMITTED) {
      mod.put(LAST_COMMIT_KEY, { kind: "image", bytes: encodeLastCommit({ timestampUs: body.xactTime, endLsn: mod.lsn, xid }) });
    }

    if (body.type === "COMMIT_PREPARED" || body.type === "ABORT_PREPARED") {
      const dir = await this.getTwoPhaseDir(mod);
      if (dir.delete(xid)) mod.put(TWOPHASE_DIR_KEY, { kind: "image", bytes: encodeTwoPhaseDir(dir) });
    }
  }

  // ---------------------------------------------------------------- SMGR

  private async ingestSmgr(rec: DecodedRecord, mod: DatadirModification): Promise<void> {
    const body = parseSmgrRecord(rec);
    if (body.type === "CREATE") {
      await this.ensureRelExists(relTag(body.rel, body.forkNum), mod);
      return;
    }
    await this.ingestSmgrTruncate(body, mod);
  }

  private async ingestSmgrTruncate(t: SmgrTruncate, mod: DatadirModification): Promise<void> {
    const main = relTag(t.rel, FORK_MAIN);
    // smgr_redo creates the main fork if it does not exist
    await this.ensureRelExists(main, mod);
    if (t.truncateHeap) {
      const size = (await this.getRelSize(main, mod)) ?? 0;
      // mdtruncate in recovery ignores a truncation to a larger size
      if (t.blkno < size) this.setRelSize(main, t.blkno, mod);
    }
    if (t.truncateFsm) {
      const fsm = relTag(t.rel, FORK_FSM);
      const size = await this.getRelSize(fsm, mod);
      if (size !== undefined) {
        const { logPage, slot } = fsmLocation(t.blkno);
        let newSize: number | undefined;
        if (slot > 0) {
          const phys = fsmLeafToPhysical(logPage);
          if (phys < size) {
            // FreeSpaceMapPrepareTruncateRel: zero the tail of the last remaining leaf page
            const page = await this.readBlockForUpdate(fsm, phys, mod);
            fsmTruncateAvail(page, slot);
            mod.put(relBlockKey(fsm, phys), { kind: "image", bytes: page });
            this.stats.images++;
            newSize = phys + 1;
          }
        } else {
          newSize = fsmLeafToPhysical(logPage);
        }
        if (newSize !== undefined && newSize < size) this.setRelSize(fsm, newSize, mod);
      }
    }
    if (t.truncateVm) {
      const vm = relTag(t.rel, FORK_VM);
      const size = await this.getRelSize(vm, mod);
      if (size !== undefined) {
        const truncBlock = vmBlockOf(t.blkno);
        let newSize: number | undefined;
        if (t.blkno % VM_HEAPBLOCKS_PER_PAGE !== 0) {
          if (truncBlock < size) {
            // visibilitymap_prepare_truncate: clear the bits of the removed heap blocks on the last page
            const page = await this.readBlockForUpdate(vm, truncBlock, mod);
            vmTruncatePage(page, t.blkno);
            mod.put(relBlockKey(vm, truncBlock), { kind: "image", bytes: page });
            this.stats.images++;
            newSize = truncBlock + 1;
          }
        } else {
          newSize = truncBlock;
        }
        if (newSize !== undefined && newSize < size) this.setRelSize(vm, newSize, mod);
      }
    }
  }

  /**
   * The current page of an FSM/VM block, as fsm_readbuf / vm_readbuf return
   * it: a page that is new (all zeros) is PageInit'ed first. A copy.
   */
  private async readBlockForUpdate(tag: RelTag, blk: number, mod: DatadirModification): Promise<Uint8Array> {
    const key = relBlockKey(tag, blk);
    if (mod.has(key)) {
      throw new StrataError("internal", `WAL ingest: block ${blk} of ${tag.relNumber} fork ${tag.fork} changed twice in one record`);
    }
    const bytes = await mod.get(key);
    if (bytes === undefined || pageIsNew(bytes)) return initPage(0);
    if (bytes.length !== 8192) throw new StrataError("corrupt_data", `WAL ingest: block ${blk} of relation ${tag.relNumber} fork ${tag.fork} is ${bytes.length} bytes`);
    return new Uint8Array(bytes);
  }

  // ---------------------------------------------------------------- relations

  private async ensureRelExists(tag: RelTag, mod: DatadirModification): Promise<void> {
    const dir = await this.getRelDir(tag.spcOid, tag.dbOid, mod);
    const id = relDirEntryId(tag.relNumber, tag.fork);
    if (dir.has(id)) return;
    await this.ensureDb(tag.spcOid, tag.dbOid, mod);
    dir.add(id);
    mod.put(relDirKey(tag.spcOid, tag.dbOid), { kind: "image", bytes: encodeRelDir(dir) });
    this.setRelSize(tag, 0, mod);
  }

  /** Removes every fork of `rel` from its rel dir and marks its sizes dropped. */
  private async dropRelation(rel: RelFileNode, mod: DatadirModification): Promise<void> {
    const dir = await this.getRelDir(rel.spcOid, rel.dbOid, mod);
    let changed = false;
    for (const fork of FORKS) {
      if (!dir.delete(relDirEntryId(rel.relNumber, fork))) continue;
      changed = true;
      this.setRelSize(relTag(rel, fork), undefined, mod);
    }
    if (changed) mod.put(relDirKey(rel.spcOid, rel.dbOid), { kind: "image", bytes: encodeRelDir(dir) });
  }

  private async getRelSize(tag: RelTag, mod: DatadirModification): Promise<number | undefined> {
    const cached = this.relSizes.find(tag.spcOid, tag.dbOid, tag.relNumber, tag.fork);
    if (cached !== undefined) return cached.blocks < 0 ? undefined : cached.blocks;
    const key = relSizeKey(tag);
    const dir = await this.getRelDir(tag.spcOid, tag.dbOid, mod);
    let size: number | undefined;
    if (dir.has(relDirEntryId(tag.relNumber, tag.fork))) {
      const bytes = await mod.get(key);
      if (bytes === undefined) {
        throw new StrataError("corrupt_data", `WAL ingest: relation ${tag.spcOid}/${tag.dbOid}/${tag.relNumber} fork ${tag.fork} is in its directory but has no size`);
      }
      size = decodeRelSize(bytes);
    }
    this.relSizes.set(tag, size);
    return size;
  }

  private setRelSize(tag: RelTag, blocks: number | undefined, mod: DatadirModification): void {
    this.relSizes.set(tag, blocks);
    mod.put(relSizeKey(tag), { kind: "image", bytes: encodeRelSize(blocks) });
  }

  private async getRelDir(spcOid: number, dbOid: number, mod: DatadirModification): Promise<Set<number>> {
    const key = relDirKey(spcOid, dbOid);
    const cached = this.relDirs.get(key);
    if (cached) return cached;
    const bytes = await mod.get(key);
    const dir = bytes === undefined ? new Set<number>() : decodeRelDir(bytes);
    if (this.relDirs.size >= MAX_CACHED_REL_DIRS) {
      // sizes are cached on the strength of the rel dir: drop both together
      this.relDirs.clear();
      this.relSizes.clear();
    }
    this.relDirs.set(key, dir);
    return dir;
  }

  private async getDbDir(mod: DatadirModification): Promise<Set<bigint>> {
    if (!this.dbDir) {
      const bytes = await mod.get(DBDIR_KEY);
      this.dbDir = bytes === undefined ? new Set() : decodeDbDir(bytes);
    }
    return this.dbDir;
  }

  private async ensureDb(spcOid: number, dbOid: number, mod: DatadirModification): Promise<void> {
    const dbs = await this.getDbDir(mod);
    const id = dbDirEntryId(spcOid, dbOid);
    if (dbs.has(id)) return;
    dbs.add(id);
    mod.put(DBDIR_KEY, { kind: "image", bytes: encodeDbDir(dbs) });
  }

  // ---------------------------------------------------------------- DBASE

  private async ingestDbase(rec: DecodedRecord, mod: DatadirModification): Promise<void> {
    const body = parseDbaseRecord(rec);
    switch (body.type) {
      case "CREATE_WAL_LOG":
        // The new database's pages arrive as FPIs, its relations as SMGR
        // CREATE records and its relmapper file as a RELMAP record: only the
        // directory entry (and an empty rel dir) is created here.
        await this.createDb(body.tablespaceId, body.dbId, mod);
        return;
      case "CREATE_FILE_COPY":
        await this.copyDb(body.srcTablespaceId, body.srcDbId, body.tablespaceId, body.dbId, mod);
        return;
      case "DROP":
        for (const spc of body.tablespaceIds) await this.dropDb(spc, body.dbId, mod);
        return;
    }
  }

  private async createDb(spcOid: number, dbOid: number, mod: DatadirModification): Promise<Set<number>> {
    await this.ensureDb(spcOid, dbOid, mod);
    const dir = new Set<number>();
    this.forgetDbCaches(spcOid, dbOid);
    this.relDirs.set(relDirKey(spcOid, dbOid), dir);
    mod.put(relDirKey(spcOid, dbOid), { kind: "image", bytes: encodeRelDir(dir) });
    return dir;
  }

  /** Drops cached sizes of one database (its rel dir is being replaced). */
  private forgetDbCaches(spcOid: number, dbOid: number): void {
    this.relSizes.forgetDb(spcOid, dbOid);
  }

  /**
   * CREATE DATABASE ... STRATEGY FILE_COPY: dbase_redo copies the source
   * database's directory (every relation file and the relmapper file) as of
   * this record. Copies every block as an image (the zero-page marker for an
   * all-zero block), in chunks written straight to the writer.
   */
  private async copyDb(srcSpc: number, srcDb: number, dstSpc: number, dstDb: number, mod: DatadirModification): Promise<void> {
    const srcDir = new Set(await this.getRelDir(srcSpc, srcDb, mod));
    const srcSizes: Array<[number, number]> = [];
    for (const id of srcDir) {
      const e = relDirEntryOf(id);
      const size = await this.getRelSize({ spcOid: srcSpc, dbOid: srcDb, relNumber: e.relNumber, fork: e.fork }, mod);
      srcSizes.push([id, size ?? 0]);
    }
    const relmap = await mod.get(relmapKey(srcSpc, srcDb));
    const dstDir = await this.createDb(dstSpc, dstDb, mod);
    let chunk: DatadirPut[] = [];
    for (const [id, size] of srcSizes) {
      const e = relDirEntryOf(id);
      const src: RelTag = { spcOid: srcSpc, dbOid: srcDb, relNumber: e.relNumber, fork: e.fork };
      const dst: RelTag = { spcOid: dstSpc, dbOid: dstDb, relNumber: e.relNumber, fork: e.fork };
      dstDir.add(id);
      this.setRelSize(dst, size, mod);
      for (let blk = 0; blk < size; blk++) {
        const bytes = await mod.get(relBlockKey(src, blk));
        const zero = bytes === undefined || pageIsAllZero(bytes);
        chunk.push({ key: relBlockKey(dst, blk), lsn: mod.lsn, value: zero ? ZERO_PAGE_VALUE : { kind: "image", bytes } });
        this.stats.images++;
        if (chunk.length >= DBASE_COPY_CHUNK_BLOCKS) {
          mod.signal.throwIfAborted();
          await this.writer.put(chunk);
          chunk = [];
        }
      }
    }
    if (chunk.length > 0) await this.writer.put(chunk);
    mod.put(relDirKey(dstSpc, dstDb), { kind: "image", bytes: encodeRelDir(dstDir) });
    if (relmap !== undefined) mod.put(relmapKey(dstSpc, dstDb), { kind: "image", bytes: relmap });
  }

  private async dropDb(spcOid: number, dbOid: number, mod: DatadirModification): Promise<void> {
    const dbs = await this.getDbDir(mod);
    if (dbs.delete(dbDirEntryId(spcOid, dbOid))) mod.put(DBDIR_KEY, { kind: "image", bytes: encodeDbDir(dbs) });
    const dir = await this.getRelDir(spcOid, dbOid, mod);
    for (const id of dir) {
      const e = relDirEntryOf(id);
      this.setRelSize({ spcOid, dbOid, relNumber: e.relNumber, fork: e.fork }, undefined, mod);
    }
    dir.clear();
    mod.put(relDirKey(spcOid, dbOid), { kind: "image", bytes: encodeRelDir(dir) });
  }

  // ---------------------------------------------------------------- RELMAP

  private async ingestRelmap(rec: DecodedRecord, mod: DatadirModification): Promise<void> {
    const body = parseRelmapRecord(rec);
    if (body.nbytes !== RELMAP_FILE_SIZE_BYTES || body.data.length !== RELMAP_FILE_SIZE_BYTES) {
      throw new StrataError("corrupt_data", `WAL ingest: ${describeRecord(rec)}: relmapper file of ${body.nbytes} bytes, expected ${RELMAP_FILE_SIZE_BYTES}`);
    }
    // relmap_redo writes the file into the database's directory (creating
    // nothing else): the database itself must already be known.
    await this.ensureDb(body.tsId, body.dbId, mod);
    mod.put(relmapKey(body.tsId, body.dbId), { kind: "image", bytes: new Uint8Array(body.data) });
  }

  // ---------------------------------------------------------------- SLRUs

  private slruState(kind: SlruKind): SlruState {
    let s = this.slru.get(kind);
    if (!s) {
      s = { segSizes: new Map() };
      this.slru.set(kind, s);
    }
    return s;
  }

  private async getSlruDir(kind: SlruKind, mod: DatadirModification): Promise<Set<number>> {
    const s = this.slruState(kind);
    if (!s.dir) {
      const bytes = await mod.get(slruDirKey(kind));
      s.dir = bytes === undefined ? new Set() : decodeSlruDir(bytes);
    }
    return s.dir;
  }

  private async getSlruSegSize(kind: SlruKind, seg: number, mod: DatadirModification): Promise<number> {
    const s = this.slruState(kind);
    const cached = s.segSizes.get(seg);
    if (cached !== undefined) return cached;
    const dir = await this.getSlruDir(kind, mod);
    let size = 0;
    if (dir.has(seg)) {
      const bytes = await mod.get(slruSegSizeKey(kind, seg));
      if (bytes === undefined) throw new StrataError("corrupt_data", `WAL ingest: SLRU ${SlruKind[kind]} segment ${seg} is in its directory but has no size`);
      size = decodeSlruSegSize(bytes);
    }
    s.segSizes.set(seg, size);
    return size;
  }

  /** Makes SLRU page `pageno` exist (segment in the dir, size covering it). True if it did not exist. */
  private async ensureSlruPage(kind: SlruKind, pageno: number, mod: DatadirModification): Promise<boolean> {
    const seg = slruSegmentOf(pageno);
    const blk = slruPageInSegment(pageno);
    const dir = await this.getSlruDir(kind, mod);
    const size = await this.getSlruSegSize(kind, seg, mod);
    if (dir.has(seg) && blk < size) return false;
    if (!dir.has(seg)) {
      dir.add(seg);
      mod.put(slruDirKey(kind), { kind: "image", bytes: encodeSlruDir(dir) });
    }
    const newSize = Math.max(size, blk + 1);
    this.slruState(kind).segSizes.set(seg, newSize);
    mod.put(slruSegSizeKey(kind, seg), { kind: "image", bytes: encodeSlruSegSize(newSize) });
    return true;
  }

  private async slruPageExists(kind: SlruKind, pageno: number, mod: DatadirModification): Promise<boolean> {
    const seg = slruSegmentOf(pageno);
    const dir = await this.getSlruDir(kind, mod);
    return dir.has(seg) && slruPageInSegment(pageno) < (await this.getSlruSegSize(kind, seg, mod));
  }

  /** Removes segments (SlruInternalDeleteSegment) whose pages all precede the cutoff. */
  private async truncateSlru(kind: SlruKind, shouldDelete: (seg: number) => boolean, mod: DatadirModification): Promise<void> {
    const dir = await this.getSlruDir(kind, mod);
    let changed = false;
    for (const seg of [...dir]) {
      if (!shouldDelete(seg)) continue;
      dir.delete(seg);
      this.slruState(kind).segSizes.delete(seg);
      changed = true;
    }
    if (changed) mod.put(slruDirKey(kind), { kind: "image", bytes: encodeSlruDir(dir) });
  }

  private putSlruRecord(kind: SlruKind, pageno: number, rec: DecodedRecord, willInit: boolean, mod: DatadirModification): void {
    mod.put(slruBlockKey(kind, slruSegmentOf(pageno), slruPageInSegment(pageno)), walRecordValue(rec, willInit, "native"));
    this.stats.walValues++;
  }

  private async ingestClog(rec: DecodedRecord, mod: DatadirModification): Promise<void> {
    const body = parseClogRecord(rec);
    if (body.type === "ZEROPAGE") {
      await this.ensureSlruPage(SlruKind.Clog, body.pageno, mod);
      this.putSlruRecord(SlruKind.Clog, body.pageno, rec, true, mod);
      return;
    }
    // clog_redo TRUNCATE: SimpleLruTruncate(pageno) deletes segments wholly before the cutoff
    const cutoff = body.pageno;
    await this.truncateSlru(SlruKind.Clog, (seg) => mayDeleteSegment(seg * SLRU_PAGES_PER_SEGMENT, cutoff, clogPagePrecedes), mod);
  }

  private async ingestMultixact(rec: DecodedRecord, mod: DatadirModification): Promise<void> {
    const body = parseMultiXactRecord(rec);
    switch (body.type) {
      case "ZERO_OFF_PAGE": {
        // multixact_redo skips it when the previous CREATE_ID already created the page
        const skip = this.preInitializedOffsetsPage === body.pageno;
        this.preInitializedOffsetsPage = -1;
        if (skip) return;
        await this.ensureSlruPage(SlruKind.MultiXactOffsets, body.pageno, mod);
        this.putSlruRecord(SlruKind.MultiXactOffsets, body.pageno, rec, true, mod);
        return;
      }
      case "ZERO_MEM_PAGE":
        await this.ensureSlruPage(SlruKind.MultiXactMembers, body.pageno, mod);
        this.putSlruRecord(SlruKind.MultiXactMembers, body.pageno, rec, true, mod);
        return;
      case "CREATE_ID": {
        this.preInitializedOffsetsPage = -1;
        const ownPage = multiXactOffsetPageOf(body.mid);
        let next = (body.mid + 1) >>> 0;
        if (next < FIRST_MULTIXACT_ID) next = FIRST_MULTIXACT_ID;
        const nextPage = multiXactOffsetPageOf(next);
        this.putSlruRecord(SlruKind.MultiXactOffsets, ownPage, rec, false, mod);
        if (nextPage !== ownPage) {
          // RecordNewMultiXact writes the next multixact's offset too; WAL of
          // older minor releases did not zero that page first, then redo
          // creates it here (the native engine starts from a zero page).
          if (!(await this.slruPageExists(SlruKind.MultiXactOffsets, nextPage, mod))) {
            await this.ensureSlruPage(SlruKind.MultiXactOffsets, nextPage, mod);
            this.preInitializedOffsetsPage = nextPage;
          }
          this.putSlruRecord(SlruKind.MultiXactOffsets, nextPage, rec, false, mod);
        }
        const memberPages = new Set<number>();
        body.members.forEach((_, i) => memberPages.add(multiXactMemberPageOf((body.moff + i) >>> 0)));
        for (const p of memberPages) this.putSlruRecord(SlruKind.MultiXactMembers, p, rec, false, mod);
        this.advanceMulti((body.mid + 1) >>> 0, (body.moff + body.members.length) >>> 0);
        // multixact_redo: nextXid past every member XID
        for (const m of body.members) if (isNormalXid(m.xid)) this.advanceXid(m.xid);
        return;
      }
      case "TRUNCATE_ID": {
        // PerformMembersTruncation: delete member segments [start, end), wrapping
        const maxSeg = slruSegmentOf(Math.floor(0xffffffff / MULTIXACT_MEMBERS_PER_PAGE));
        const memberSeg = (off: number) => slruSegmentOf(multiXactMemberPageOf(off));
        const startSeg = memberSeg(body.startTruncMemb);
        const endSeg = memberSeg(body.endTruncMemb);
        const doomed = new Set<number>();
        for (let seg = startSeg, n = 0; seg !== endSeg && n <= maxSeg; seg = seg === maxSeg ? 0 : seg + 1, n++) doomed.add(seg);
        await this.truncateSlru(SlruKind.MultiXactMembers, (seg) => doomed.has(seg), mod);
        // PerformOffsetsTruncation: SimpleLruTruncate at the page of PreviousMultiXactId(endTruncOff)
        let prev = (body.endTruncOff - 1) >>> 0;
        if (prev < FIRST_MULTIXACT_ID) prev = 0xffffffff;
        const cutoff = multiXactOffsetPageOf(prev);
        await this.truncateSlru(SlruKind.MultiXactOffsets, (seg) => mayDeleteSegment(seg * SLRU_PAGES_PER_SEGMENT, cutoff, multiOffsetPagePrecedes), mod);
        return;
      }
    }
  }

  // ---------------------------------------------------------------- two-phase

  private async getTwoPhaseDir(mod: DatadirModification): Promise<Set<number>> {
    if (!this.twoPhaseDir) {
      const bytes = await mod.get(TWOPHASE_DIR_KEY);
      this.twoPhaseDir = bytes === undefined ? new Set() : decodeTwoPhaseDir(bytes);
    }
    return this.twoPhaseDir;
  }
}
