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
 * written.
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
import { heapVmClears, vmBlockOf } from "../formats/wal/rmgr/heap.js";
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

// ------------------------------------------------------------------ public types

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

  private counters?: { nextFullXid: bigint; nextOid: number; nextMulti: number; nextMultiOffset: number; checkpoint: CheckPoint };
  private countersChanged = false;
  private lastLsn: Lsn;
  private busy = false;

  // caches (see header); undefined entries are "known absent"
  private relSizes = new Map<Key, number | undefined>();
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
  }

  /** Counters as of the last ingested record; undefined before the first record. */
  get ingestCounters(): IngestCounters | undefined {
    if (!this.counters) return undefined;
    const { nextFullXid, nextOid, nextMulti, nextMultiOffset } = this.counters;
    return { nextFullXid, nextOid, nextMulti, nextMultiOffset };
  }

  /** Interprets one record and writes its versions at the record's MAXALIGNed end. */
  async ingestRecord(rec: DecodedRecord, ctx: RequestContext): Promise<void> {
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
        // Index AMs, sequences and generic WAL change only the blocks they
        // reference: stored per block, replayed by PostgreSQL's redo.
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
    const dir = this.relDirs.get(relDirKey(tag.spcOid, tag.dbOid));
    if (!dir?.has(relDirEntryId(tag.relNumber, tag.fork))) return false;
    const size = this.relSizes.get(relSizeKey(tag));
    return size !== undefined && blk < size;
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
          c.nextFullXid = cp.nextXid;
          c.nextOid = cp.nextOid;
          c.nextMulti = cp.nextMulti;
          c.nextMultiOffset = cp.nextMultiOffset;
        } else {
          // an online checkpoint's values can be older than records before
          // it: XIDs only move forward, nextOid is not replayed from it
          if (cp.nextXid > c.nextFullXid) c.nextFullXid = cp.nextXid;
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
    const c = this.counters!;
    const cp: CheckPoint = { ...c.checkpoint, nextXid: c.nextFullXid, nextOid: c.nextOid, nextMulti: c.nextMulti, nextMultiOffset: c.nextMultiOffset };
    mod.put(CHECKPOINT_KEY, { kind: "image", bytes: encodeCheckPoint(cp) });
  }

  private async loadCounters(mod: DatadirModification): Promise<void> {
    if (this.counters) return;
    const bytes = await mod.get(CHECKPOINT_KEY);
    if (bytes === undefined) {
      throw new StrataError("invalid_argument", `WAL ingest at ${formatLsn(mod.lsn)}: the timeline has no checkpoint (import a data directory first)`);
    }
    const cp = parseCheckPoint(bytes, `checkpoint value at ${formatLsn(mod.readLsn)}`);
    this.counters = { nextFullXid: cp.nextXid, nextOid: cp.nextOid, nextMulti: cp.nextMulti, nextMultiOffset: cp.nextMultiOffset, checkpoint: cp };
  }

  /** AdvanceNextFullTransactionIdPastXid. */
  private advanceXid(xid: number): void {
    const c = this.counters!;
    const nextXid = Number(c.nextFullXid & 0xffffffffn);
    if (!xidFollowsOrEquals(xid, nextXid)) return;
    let next = (xid + 1) >>> 0;
    if (next < FIRST_NORMAL_XID) next = FIRST_NORMAL_XID; // TransactionIdAdvance skips special XIDs
    let epoch = c.nextFullXid >> 32n;
    if (next < nextXid) epoch++;
    c.nextFullXid = (epoch << 32n) | BigInt(next);
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
    const key = relSizeKey(tag);
    if (this.relSizes.has(key)) return this.relSizes.get(key);
    const dir = await this.getRelDir(tag.spcOid, tag.dbOid, mod);
    let size: number | undefined;
    if (dir.has(relDirEntryId(tag.relNumber, tag.fork))) {
      const bytes = await mod.get(key);
      if (bytes === undefined) {
        throw new StrataError("corrupt_data", `WAL ingest: relation ${tag.spcOid}/${tag.dbOid}/${tag.relNumber} fork ${tag.fork} is in its directory but has no size`);
      }
      size = decodeRelSize(bytes);
    }
    if (this.relSizes.size >= MAX_CACHED_REL_SIZES) this.relSizes.clear();
    this.relSizes.set(key, size);
    return size;
  }

  private setRelSize(tag: RelTag, blocks: number | undefined, mod: DatadirModification): void {
    const key = relSizeKey(tag);
    if (this.relSizes.size >= MAX_CACHED_REL_SIZES) this.relSizes.clear();
    this.relSizes.set(key, blocks);
    mod.put(key, { kind: "image", bytes: encodeRelSize(blocks) });
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
    for (const key of [...this.relSizes.keys()]) {
      // relSizeKey layout: namespace(1) spc(4) db(4) ...: compare the (spc, db) bytes
      const shift = BigInt((18 - 9) * 8);
      const sd = (key >> shift) & 0xffffffffffffffffn;
      if (sd === dbDirEntryId(spcOid, dbOid)) this.relSizes.delete(key);
    }
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
