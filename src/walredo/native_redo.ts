/**
 * TypeScript-native redo, and `reconstruct`: the one entry point that turns a
 * base image plus WAL records into a page, choosing per record whether strata
 * applies it itself or hands it to PostgreSQL's redo (the helper pool).
 *
 * Place in the data flow: the pageserver's read path collects, for one key,
 * the newest image at or below the requested LSN and the records above it,
 * and calls `reconstruct(key, baseImage, records, { pool })`.
 *
 * What is native, and why (each exactly as PostgreSQL 15's redo does it):
 * - Full-page images: a record carrying an image with BKPIMAGE_APPLY for the
 *   target block restores it (RestoreBlockImage: decompress, re-insert the
 *   hole) and stamps pd_lsn with the record's end unless the page is new —
 *   what XLogReadBufferForRedoExtended does, whatever the record type; the
 *   redo routine never touches a restored page again. Init forks included.
 * - Visibility-map bit clearing: heap records clear VM bits of a VM page they
 *   do not reference (heap_xlog_insert & co. call visibilitymap_clear
 *   themselves; the rule table is heapVmClears in formats/wal/rmgr/heap.ts).
 *   A per-block helper never sees those records for the VM page, so they are
 *   applied here. pd_lsn is not changed (visibilitymap_clear does not either).
 *   A VM page that does not exist yet is PageInit'ed first, as vm_readbuf does.
 * - SLRU pages (no page header, no LSN): transaction status bits in pg_xact
 *   for COMMIT / ABORT (and *_PREPARED) of the top-level XID and its
 *   subtransactions, final states only (redo ends with every XID committed or
 *   aborted; SUB_COMMITTED is transient); CLOG ZEROPAGE; multixact offsets
 *   and members for CREATE_ID and the ZERO_*_PAGE records. CREATE_ID follows
 *   RecordNewMultiXact as of 15.18, which also records the *next* multixact's
 *   starting offset (older minor releases did not) — one more reason the
 *   helper pins the minor version.
 * - An explicit "zero page" input: the pageserver's relation-extension marker.
 * - Heap INSERT, MULTI_INSERT and the heap page of VISIBLE (the records of a
 *   bulk load), in heap_redo.ts, which declines whatever it does not model;
 *   engineFor still reports them as "helper" records (the helper is their
 *   authority and the fallback).
 * Everything else goes to the helper; consecutive helper records travel in
 * one request, starting from the current page.
 *
 * The key type: the pageserver's own key does not exist yet, so this module
 * defines the minimal target description it needs (`RedoKey`): a relation
 * block, or an SLRU page. The pageserver maps its keys onto it.
 *
 * Records that make no sense for the key (a heap record for a clog page, an
 * XACT record for a relation block) are an operating error ("invalid_argument"):
 * they mean the caller filed a record under the wrong key.
 */
import { StrataError } from "../lib/errors.js";
import { formatLsn, lsnAlign, type Lsn } from "../lib/lsn.js";
import { initPage, pageIsNew, setPageLsn } from "../formats/page.js";
import { setPageChecksum } from "../formats/page_checksum.js";
import type { BlockRef, DecodedRecord, RelFileNode } from "../formats/wal/decoded_record.js";
import { restoreFullPageImage } from "../formats/wal/fpi.js";
import { CLOG_ZEROPAGE, RM_CLOG_ID, TRANSACTION_STATUS_ABORTED, TRANSACTION_STATUS_COMMITTED, clogPageOf, parseClogRecord, setClogStatus } from "../formats/wal/rmgr/clog.js";
import { RM_HEAP2_ID, RM_HEAP_ID, VISIBILITYMAP_ALL_FROZEN, VISIBILITYMAP_ALL_VISIBLE, clearVmBits, heapVmClears, vmBlockOf } from "../formats/wal/rmgr/heap.js";
import {
  FIRST_MULTIXACT_ID,
  RM_MULTIXACT_ID,
  XLOG_MULTIXACT_CREATE_ID,
  XLOG_MULTIXACT_ZERO_MEM_PAGE,
  XLOG_MULTIXACT_ZERO_OFF_PAGE,
  multiXactMemberPageOf,
  multiXactOffsetPageOf,
  parseMultiXactRecord,
  setMultiXactMember,
  setMultiXactOffset,
} from "../formats/wal/rmgr/multixact.js";
import { SLRU_PAGE_SIZE_BYTES } from "../formats/wal/rmgr/slru.js";
import { RM_XACT_ID, XLOG_XACT_OPMASK, completedXid, parseXactRecord } from "../formats/wal/rmgr/xact.js";
import { applyHeapRecord, isNativeHeapRecord, type HeapRedoOptions } from "./heap_redo.js";
import type { WalRedoPool } from "./pool.js";
import { PAGE_SIZE_BYTES, redoRecordOf, type RedoRecord } from "./protocol.js";

/** Fork numbers (common/relpath.h). */
export const MAIN_FORKNUM = 0;
export const VISIBILITYMAP_FORKNUM = 2;
export const INIT_FORKNUM = 3;

/** The page `reconstruct` produces. Minimal until the pageserver's key type exists. */
export type RedoKey =
  | { readonly kind: "rel"; readonly rel: RelFileNode; readonly forkNum: number; readonly blockNumber: number }
  | { readonly kind: "slru"; readonly slru: "clog" | "multixact_offsets" | "multixact_members"; readonly pageno: number };

/** One input of a reconstruction: a WAL record, or the pageserver's "this page is zeros from here" marker. */
export type RedoInput = { readonly kind: "wal"; readonly record: DecodedRecord } | { readonly kind: "zeroPage" };

export type Engine = "native" | "helper" | "zero";

export interface ReconstructOptions {
  /** Needed when any record goes to the helper. */
  readonly pool?: WalRedoPool;
  /** Stamp pd_checksum on the result (relation pages of clusters with data checksums). */
  readonly setChecksum?: boolean;
  /**
   * The cluster WAL-logs hint bits (data checksums; the helper's stub mirrors
   * that setting): heap VISIBLE then bumps pd_lsn. Default: `setChecksum`.
   */
  readonly hintBitsLogged?: boolean;
  /**
   * Replay heap INSERT / MULTI_INSERT / VISIBLE (heap page) in TypeScript
   * (heap_redo.ts) instead of the helper. Default true; false forces the
   * helper (tests compare the two).
   */
  readonly nativeHeap?: boolean;
}

const XLOG_XACT_COMMIT = 0x00;
const XLOG_XACT_ABORT = 0x20;
const XLOG_XACT_COMMIT_PREPARED = 0x30;
const XLOG_XACT_ABORT_PREPARED = 0x40;
const COMPLETION_OPS = new Set([XLOG_XACT_COMMIT, XLOG_XACT_ABORT, XLOG_XACT_COMMIT_PREPARED, XLOG_XACT_ABORT_PREPARED]);

function describeKey(key: RedoKey): string {
  return key.kind === "rel" ? `rel ${key.rel.spcOid}/${key.rel.dbOid}/${key.rel.relNumber} fork ${key.forkNum} blk ${key.blockNumber}` : `${key.slru} page ${key.pageno}`;
}

function misfiled(key: RedoKey, record: DecodedRecord, why: string): StrataError {
  return new StrataError("invalid_argument", `reconstruct ${describeKey(key)}: record at ${formatLsn(record.lsn)} (rmgr ${record.rmid}, info 0x${record.info.toString(16)}) ${why}`);
}

function sameRel(a: RelFileNode, b: RelFileNode): boolean {
  return a.spcOid === b.spcOid && a.dbOid === b.dbOid && a.relNumber === b.relNumber;
}

function targetBlock(key: RedoKey & { kind: "rel" }, record: DecodedRecord): BlockRef | undefined {
  return record.blocks.find((b) => b.forkNum === key.forkNum && b.blockNumber === key.blockNumber && sameRel(b.rel, key.rel));
}

/** Which engine applies `input` to the page of `key`. */
export function engineFor(key: RedoKey, input: RedoInput): Engine {
  if (input.kind === "zeroPage") return "zero";
  const record = input.record;
  if (key.kind === "slru") {
    const op = record.info & 0xf0;
    if (key.slru === "clog") {
      if (record.rmid === RM_CLOG_ID && op === CLOG_ZEROPAGE) return "native";
      if (record.rmid === RM_XACT_ID && COMPLETION_OPS.has(record.info & XLOG_XACT_OPMASK)) return "native";
    } else if (record.rmid === RM_MULTIXACT_ID) {
      if (op === XLOG_MULTIXACT_CREATE_ID) return "native";
      if (op === (key.slru === "multixact_offsets" ? XLOG_MULTIXACT_ZERO_OFF_PAGE : XLOG_MULTIXACT_ZERO_MEM_PAGE)) return "native";
    }
    throw misfiled(key, record, "does not change this SLRU page");
  }
  const block = targetBlock(key, record);
  if (block?.image?.apply) return "native";
  if (block) return "helper";
  if (key.forkNum === VISIBILITYMAP_FORKNUM && (record.rmid === RM_HEAP_ID || record.rmid === RM_HEAP2_ID)) return "native";
  if (record.rmid === RM_XACT_ID || record.rmid === RM_CLOG_ID || record.rmid === RM_MULTIXACT_ID) {
    throw misfiled(key, record, "changes SLRU pages, not relation blocks");
  }
  // A record that does not reference the block: the helper replays it and
  // leaves the page as it was, as PostgreSQL would.
  return "helper";
}

// ------------------------------------------------------------ native steps

function applyImage(key: RedoKey & { kind: "rel" }, record: DecodedRecord, block: BlockRef): Uint8Array {
  const page = restoreFullPageImage(block.image!, { lsn: record.lsn, blockId: block.id });
  if (page.length !== PAGE_SIZE_BYTES) throw misfiled(key, record, `carries an image of ${page.length} bytes`);
  if (!pageIsNew(page)) setPageLsn(page, lsnAlign(record.endLsn, 8) as Lsn);
  return page;
}

function applyVmClears(key: RedoKey & { kind: "rel" }, page: Uint8Array | undefined, record: DecodedRecord): Uint8Array {
  let vm = page;
  for (const c of heapVmClears(record)) {
    if (!sameRel(c.rel, key.rel) || vmBlockOf(c.heapBlock) !== key.blockNumber) continue;
    // vm_readbuf initializes a page that does not exist yet (or is still all zeros)
    if (!vm || pageIsNew(vm)) vm = initPage(0);
    const flags = (c.clearAllVisible ? VISIBILITYMAP_ALL_VISIBLE : 0) | (c.clearAllFrozen ? VISIBILITYMAP_ALL_FROZEN : 0);
    clearVmBits(vm, c.heapBlock, flags);
  }
  return requirePage(key, vm, record);
}

function applyClog(key: RedoKey & { kind: "slru" }, page: Uint8Array | undefined, record: DecodedRecord): Uint8Array {
  if (record.rmid === RM_CLOG_ID) {
    const body = parseClogRecord(record);
    if (body.type !== "ZEROPAGE") throw misfiled(key, record, "does not change this SLRU page");
    return body.pageno === key.pageno ? new Uint8Array(SLRU_PAGE_SIZE_BYTES) : requirePage(key, page, record);
  }
  const body = parseXactRecord(record);
  if (body.type !== "COMMIT" && body.type !== "COMMIT_PREPARED" && body.type !== "ABORT" && body.type !== "ABORT_PREPARED") {
    throw misfiled(key, record, "is not a commit or abort");
  }
  const status = body.type.startsWith("COMMIT") ? TRANSACTION_STATUS_COMMITTED : TRANSACTION_STATUS_ABORTED;
  const xids = [completedXid(record.xid, body), ...body.subxacts].filter((x) => clogPageOf(x) === key.pageno);
  if (xids.length === 0) return requirePage(key, page, record);
  const out = new Uint8Array(requirePage(key, page, record));
  for (const xid of xids) setClogStatus(out, xid, status);
  return out;
}

function applyMultixact(key: RedoKey & { kind: "slru" }, page: Uint8Array | undefined, record: DecodedRecord): Uint8Array {
  const body = parseMultiXactRecord(record);
  switch (body.type) {
    case "ZERO_OFF_PAGE":
    case "ZERO_MEM_PAGE":
      return body.pageno === key.pageno ? new Uint8Array(SLRU_PAGE_SIZE_BYTES) : requirePage(key, page, record);
    case "CREATE_ID": {
      if (key.slru === "multixact_offsets") {
        // RecordNewMultiXact (15.18) also writes where the *next* multixact's
        // members start, skipping offset 0 like GetNewMultiXactId; in
        // recovery it zeroes that entry's page first if it does not exist yet.
        let next = (body.mid + 1) >>> 0;
        if (next < FIRST_MULTIXACT_ID) next = FIRST_MULTIXACT_ID;
        let nextOffset = (body.moff + body.members.length) >>> 0;
        if (nextOffset === 0) nextOffset = 1;
        const ownHere = multiXactOffsetPageOf(body.mid) === key.pageno;
        const nextHere = multiXactOffsetPageOf(next) === key.pageno;
        if (!ownHere && !nextHere) return requirePage(key, page, record);
        const out = new Uint8Array(!ownHere && !page ? new Uint8Array(SLRU_PAGE_SIZE_BYTES) : requirePage(key, page, record));
        if (ownHere) setMultiXactOffset(out, body.mid, body.moff);
        if (nextHere) setMultiXactOffset(out, next, nextOffset);
        return out;
      }
      let out: Uint8Array | undefined;
      body.members.forEach((m, i) => {
        // member offsets are u32 and wrap around
        const offset = (body.moff + i) >>> 0;
        if (multiXactMemberPageOf(offset) !== key.pageno) return;
        out ??= new Uint8Array(requirePage(key, page, record));
        setMultiXactMember(out, offset, m);
      });
      return out ?? requirePage(key, page, record);
    }
    default:
      throw misfiled(key, record, "does not change this SLRU page");
  }
}

function requirePage(key: RedoKey, page: Uint8Array | undefined, record: DecodedRecord): Uint8Array {
  if (!page) throw new StrataError("invalid_argument", `reconstruct ${describeKey(key)}: record at ${formatLsn(record.lsn)} needs the page, but there is no base image and nothing initialized it`);
  return page;
}

/** Applies one native record to the page (never modifies `page` in place). */
export function applyNative(key: RedoKey, page: Uint8Array | undefined, record: DecodedRecord): Uint8Array {
  if (key.kind === "slru") return key.slru === "clog" ? applyClog(key, page, record) : applyMultixact(key, page, record);
  const block = targetBlock(key, record);
  if (block?.image?.apply) return applyImage(key, record, block);
  return applyVmClears(key, page ? new Uint8Array(page) : undefined, record);
}

// ------------------------------------------------------------ reconstruct

function checkBase(key: RedoKey, base: Uint8Array | undefined): void {
  const want = key.kind === "slru" ? SLRU_PAGE_SIZE_BYTES : PAGE_SIZE_BYTES;
  if (base && base.length !== want) throw new StrataError("invalid_argument", `reconstruct ${describeKey(key)}: base image is ${base.length} bytes, expected ${want}`);
}

/**
 * The page of `key` after applying `inputs` (in LSN order) to `baseImage`
 * (absent when the first input initializes the page).
 */
export async function reconstruct(key: RedoKey, baseImage: Uint8Array | undefined, inputs: readonly (RedoInput | DecodedRecord)[], opts: ReconstructOptions = {}): Promise<Uint8Array> {
  checkBase(key, baseImage);
  let page: Uint8Array | undefined = baseImage ? new Uint8Array(baseImage) : undefined;
  let helperBatch: RedoRecord[] = [];

  const flushHelper = async () => {
    if (helperBatch.length === 0 || key.kind !== "rel") return;
    if (!opts.pool) throw new StrataError("invalid_argument", `reconstruct ${describeKey(key)}: records need PostgreSQL's redo but no walredo pool was given`);
    page = await opts.pool.apply({ target: { rel: key.rel, forkNum: key.forkNum, blockNumber: key.blockNumber }, records: helperBatch, ...(page ? { basePage: page } : {}) });
    helperBatch = [];
  };

  const heapOpts: HeapRedoOptions = { hintBitsLogged: opts.hintBitsLogged ?? opts.setChecksum ?? false };
  let scratch: Uint8Array | undefined;
  try {
  for (const raw of inputs) {
    const input: RedoInput = "kind" in raw ? raw : { kind: "wal", record: raw };
    // heap inserts of a bulk load first: native when heap_redo.ts models the record (it declines anything
    // else; engineFor calls them "helper" records, which they are for everything but these routines)
    const block = key.kind === "rel" && opts.nativeHeap !== false && input.kind === "wal" && (input.record.rmid === RM_HEAP_ID || input.record.rmid === RM_HEAP2_ID)
      ? targetBlock(key, input.record)
      : undefined;
    const engine = block !== undefined && block.image?.apply !== true ? "helper" : engineFor(key, input);
    if (engine === "helper" && input.kind === "wal") {
      if (block !== undefined && isNativeHeapRecord(input.record, block)) {
        if (helperBatch.length > 0) await flushHelper();
        // into a scratch page, then swap: no allocation per record (`page` is always this function's own copy)
        const next = applyHeapRecord(page, input.record, block, heapOpts, (scratch ??= takePage()));
        if (next !== undefined) {
          scratch = page;
          page = next;
          continue;
        }
      }
      helperBatch.push(redoRecordOf(input.record));
      continue;
    }
    await flushHelper();
    if (engine === "zero") {
      page = new Uint8Array(key.kind === "slru" ? SLRU_PAGE_SIZE_BYTES : PAGE_SIZE_BYTES);
    } else if (input.kind === "wal") {
      page = applyNative(key, page, input.record);
    }
  }
  await flushHelper();
  } finally {
    if (scratch !== undefined) recyclePage(scratch);
  }
  if (!page) throw new StrataError("invalid_argument", `reconstruct ${describeKey(key)}: no base image and no records`);
  if (opts.setChecksum && key.kind === "rel" && !pageIsNew(page)) setPageChecksum(page, key.blockNumber);
  return page;
}

/**
 * Recycled 8 KiB pages: reconstruct's scratch pages, and pages callers are
 * done with (recyclePage). A bulk-load page is two native records, and a
 * fresh zero-filled page per record (allocated outside the JS heap) made
 * allocation and GC a large share of a backup's CPU. Bounded; the contents
 * of a taken page are undefined (heap_redo.ts overwrites every byte).
 */
const freePages: Uint8Array[] = [];
/** 256 x 8 KiB = 2 MiB kept at most: enough for every reconstruction of a backup's runs in flight. */
const MAX_FREE_PAGES = 256;

function takePage(): Uint8Array {
  return freePages.pop() ?? new Uint8Array(PAGE_SIZE_BYTES);
}

/**
 * Hands a page that `reconstruct` returned back for reuse. The caller must
 * hold the only reference and not touch it afterwards. Pages that are views
 * into larger buffers are ignored.
 */
export function recyclePage(page: Uint8Array): void {
  if (page.byteOffset !== 0 || page.byteLength !== PAGE_SIZE_BYTES || page.buffer.byteLength !== PAGE_SIZE_BYTES) return;
  if (freePages.length < MAX_FREE_PAGES) freePages.push(page);
}
