/**
 * The data directory as keys: the contract between WAL ingest (walingest.ts,
 * import_datadir.ts) and the timeline that stores and reads versions.
 *
 * Place in the data flow:
 *
 *   WAL receiver -> WalIngest -> DatadirModification -> DatadirWriter (Timeline) -> layers
 *                         \---- DatadirReader (Timeline.get) <---------------/
 *
 * This module owns
 *   - the two interfaces the timeline implements (`DatadirReader`, `DatadirWriter`);
 *   - the byte formats of every non-page value (relation sizes, relation and
 *     database directories, SLRU directories and segment sizes, the two-phase
 *     directory); relmapper files, two-phase files, pg_control and the
 *     checkpoint are stored as PostgreSQL's own bytes;
 *   - the encoding of a WAL record stored as a `wal` value (`walRecordValue`,
 *     `redoInputOf`) and of the "zero page" marker;
 *   - `DatadirModification`: the puts of one WAL record, with an overlay so
 *     reads inside the record see its own earlier puts.
 *
 * Conventions every reader relies on:
 *   - **Version LSN.** All puts of one WAL record carry the record's
 *     MAXALIGNed end (what redo stamps into pd_lsn, and where the next record
 *     may begin): "the state as of LSN X" = every version with LSN <= X.
 *   - **Small objects are written whole.** A relation directory, the database
 *     directory, an SLRU directory, a relation size... is one image value,
 *     rewritten in full at every change. Simple and always readable without
 *     redo; the cost is O(entries) bytes per change (a database with 10k
 *     relations rewrites ~50 KB per CREATE TABLE), acceptable because DDL is
 *     rare next to page writes. Page cache and compaction keep reads cheap.
 *   - **Existence.** A relation fork exists at X iff its (relNumber, fork) is
 *     in the relation directory of its (spc, db) at X, and that (spc, db) is
 *     in the database directory. A dropped fork is removed from the rel dir
 *     and its size key is set to `REL_SIZE_DROPPED` (decodeRelSize returns
 *     undefined); its blocks are left in place, unreachable. A database that
 *     is not in the database directory has no relations, whatever its rel dir
 *     key says. The global tablespace (1664, 0) is listed in the database
 *     directory like a database.
 *   - **Blocks.** A block B < size of a fork that has no version reads as an
 *     all-zero page (PostgreSQL extends files with zero pages). Blocks that
 *     became unreachable through truncation may keep old versions; whenever
 *     ingest extends a fork again it writes a base for every newly reachable
 *     block (the zero-page marker for gap blocks, and the extending record is
 *     stored will-init: redo's XLogReadBufferExtended extends with zero pages
 *     before applying it), so stale versions are never read.
 *   - **SLRU.** A segment exists iff it is in its kind's SLRU directory; its
 *     length in pages is the segment size key. Pages are 8 KiB without header.
 *   - **Two-phase.** A prepared transaction exists iff its xid is in the
 *     two-phase directory; its file is PostgreSQL's pg_twophase file bytes
 *     (state data + CRC-32C).
 *
 * Every decoder here reads bytes that come from layer files: malformed input
 * is a `StrataError("corrupt_data")`, never an assert.
 */
import { StrataError, assert } from "../lib/errors.js";
import { formatLsn, lsn, lsnAlign, type Lsn } from "../lib/lsn.js";
import type { RequestContext } from "../lib/tasks.js";
import type { DecodedRecord } from "../formats/wal/decoded_record.js";
import { decodeRecord } from "../formats/wal/xlog_record.js";
import { formatKey, type Key } from "./key.js";
import type { RedoEngine, Value, WalValue } from "./layers/value.js";

// ------------------------------------------------------------------ interfaces

/** Read side of a timeline, as ingest needs it. Implemented by the Timeline. */
export interface DatadirReader {
  /** Value of `key` as of `lsn` (reconstructed bytes), or undefined if the key has no version. */
  get(key: Key, lsn: Lsn, ctx: RequestContext): Promise<Uint8Array | undefined>;
}

export interface DatadirPut {
  readonly key: Key;
  readonly lsn: Lsn;
  readonly value: Value;
}

/** Write side of a timeline. Implemented by the Timeline. */
export interface DatadirWriter {
  /** Applies a batch of puts at `lsn` (all puts of one WAL record, in order); lsn = the record's end LSN. */
  put(entries: ReadonlyArray<DatadirPut>): Promise<void>;
  /** Advances last_record_lsn after a record is fully ingested. */
  finishRecord(endLsn: Lsn, prevRecordLsn: Lsn): void;
}

/** The LSN at which the versions a record produces are stored (see header). */
export function recordVersionLsn(rec: Pick<DecodedRecord, "endLsn">): Lsn {
  return lsnAlign(rec.endLsn, 8);
}

// ------------------------------------------------------------------ format helpers

/** Format version byte at the start of every directory/size value written here. */
const DIR_FORMAT_VERSION = 1;

/**
 * Most entries one directory value may hold when decoded. PostgreSQL has no
 * hard limit on relations per database; 2^24 forks (~16M) is far beyond any
 * real catalog and keeps a corrupt count from allocating gigabytes.
 */
export const MAX_DIR_ENTRIES = 1 << 24;

function corrupt(what: string, why: string): StrataError {
  return new StrataError("corrupt_data", `Cannot decode ${what}: ${why}`);
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function checkU32(v: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new StrataError("invalid_argument", `Cannot encode ${what}: ${v} is not a 32-bit unsigned integer`);
  }
}

/** Header + count, validated against the exact length `entryBytes * count`. */
function readDirHeader(bytes: Uint8Array, entryBytes: number, what: string): number {
  if (bytes.length < 5) throw corrupt(what, `${bytes.length} bytes is shorter than the 5-byte header`);
  if (bytes[0] !== DIR_FORMAT_VERSION) throw corrupt(what, `format version ${bytes[0]}, expected ${DIR_FORMAT_VERSION}`);
  const count = view(bytes).getUint32(1, true);
  if (count > MAX_DIR_ENTRIES) throw corrupt(what, `${count} entries exceeds the limit of ${MAX_DIR_ENTRIES}`);
  const want = 5 + count * entryBytes;
  if (bytes.length !== want) throw corrupt(what, `${bytes.length} bytes, expected ${want} for ${count} entries`);
  return count;
}

function writeDirHeader(count: number, entryBytes: number): { out: Uint8Array; v: DataView } {
  const out = new Uint8Array(5 + count * entryBytes);
  out[0] = DIR_FORMAT_VERSION;
  const v = view(out);
  v.setUint32(1, count, true);
  return { out, v };
}

// ------------------------------------------------------------------ relation size

/** Size-key value of a dropped relation fork: decodeRelSize returns undefined. */
export const REL_SIZE_DROPPED = 0xffffffff;
const REL_SIZE_BYTES = 5;

/** Relation fork size in blocks: [version u8][u32 LE blocks], blocks = REL_SIZE_DROPPED when dropped. */
export function encodeRelSize(blocks: number | undefined): Uint8Array {
  const n = blocks ?? REL_SIZE_DROPPED;
  checkU32(n, "relation size");
  const out = new Uint8Array(REL_SIZE_BYTES);
  out[0] = DIR_FORMAT_VERSION;
  view(out).setUint32(1, n, true);
  return out;
}

/** Blocks of a relation fork, or undefined when the value marks the fork dropped. */
export function decodeRelSize(bytes: Uint8Array): number | undefined {
  if (bytes.length !== REL_SIZE_BYTES) throw corrupt("relation size", `${bytes.length} bytes, expected ${REL_SIZE_BYTES}`);
  if (bytes[0] !== DIR_FORMAT_VERSION) throw corrupt("relation size", `format version ${bytes[0]}`);
  const n = view(bytes).getUint32(1, true);
  return n === REL_SIZE_DROPPED ? undefined : n;
}

// ------------------------------------------------------------------ relation directory

export interface RelDirEntry {
  readonly relNumber: number;
  readonly fork: number;
}

/** Map key of a (relNumber, fork) pair inside a RelDir set. */
export function relDirEntryId(relNumber: number, fork: number): number {
  // relNumber < 2^32, fork < 4: fits in 2^34 < 2^53
  return relNumber * 4 + fork;
}

export function relDirEntryOf(id: number): RelDirEntry {
  return { relNumber: Math.floor(id / 4), fork: id % 4 };
}

/**
 * The forks of one (spc, db): [version][u32 count] then per entry
 * [u32 relNumber][u8 fork], sorted by (relNumber, fork).
 */
export function encodeRelDir(entries: Iterable<number>): Uint8Array {
  const ids = [...entries].sort((a, b) => a - b);
  const { out, v } = writeDirHeader(ids.length, 5);
  let pos = 5;
  for (const id of ids) {
    const e = relDirEntryOf(id);
    checkU32(e.relNumber, "relation number");
    v.setUint32(pos, e.relNumber, true);
    out[pos + 4] = e.fork;
    pos += 5;
  }
  return out;
}

/** Set of relDirEntryId values. */
export function decodeRelDir(bytes: Uint8Array): Set<number> {
  const count = readDirHeader(bytes, 5, "relation directory");
  const v = view(bytes);
  const out = new Set<number>();
  for (let i = 0, pos = 5; i < count; i++, pos += 5) {
    const rel = v.getUint32(pos, true);
    const fork = bytes[pos + 4]!;
    if (fork > 3) throw corrupt("relation directory", `entry ${i} has fork ${fork}`);
    if (rel === 0) throw corrupt("relation directory", `entry ${i} has relation number 0`);
    out.add(relDirEntryId(rel, fork));
  }
  return out;
}

// ------------------------------------------------------------------ database directory

export interface DbDirEntry {
  readonly spcOid: number;
  readonly dbOid: number;
}

export function dbDirEntryId(spcOid: number, dbOid: number): bigint {
  return (BigInt(spcOid) << 32n) | BigInt(dbOid);
}

export function dbDirEntryOf(id: bigint): DbDirEntry {
  return { spcOid: Number(id >> 32n), dbOid: Number(id & 0xffffffffn) };
}

/** (spc, db) pairs: [version][u32 count] then [u32 spc][u32 db] sorted. */
export function encodeDbDir(entries: Iterable<bigint>): Uint8Array {
  const ids = [...entries].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const { out, v } = writeDirHeader(ids.length, 8);
  let pos = 5;
  for (const id of ids) {
    const e = dbDirEntryOf(id);
    v.setUint32(pos, e.spcOid, true);
    v.setUint32(pos + 4, e.dbOid, true);
    pos += 8;
  }
  return out;
}

export function decodeDbDir(bytes: Uint8Array): Set<bigint> {
  const count = readDirHeader(bytes, 8, "database directory");
  const v = view(bytes);
  const out = new Set<bigint>();
  for (let i = 0, pos = 5; i < count; i++, pos += 8) out.add(dbDirEntryId(v.getUint32(pos, true), v.getUint32(pos + 4, true)));
  return out;
}

// ------------------------------------------------------------------ u32 sets (SLRU dir, two-phase dir)

function encodeU32Set(entries: Iterable<number>, what: string): Uint8Array {
  const ids = [...entries].sort((a, b) => a - b);
  const { out, v } = writeDirHeader(ids.length, 4);
  ids.forEach((id, i) => {
    checkU32(id, what);
    v.setUint32(5 + 4 * i, id, true);
  });
  return out;
}

function decodeU32Set(bytes: Uint8Array, what: string): Set<number> {
  const count = readDirHeader(bytes, 4, what);
  const v = view(bytes);
  const out = new Set<number>();
  for (let i = 0; i < count; i++) out.add(v.getUint32(5 + 4 * i, true));
  return out;
}

/** Segment numbers of one SLRU kind. */
export function encodeSlruDir(segments: Iterable<number>): Uint8Array {
  return encodeU32Set(segments, "SLRU segment number");
}
export function decodeSlruDir(bytes: Uint8Array): Set<number> {
  return decodeU32Set(bytes, "SLRU directory");
}

/** XIDs of the prepared transactions. */
export function encodeTwoPhaseDir(xids: Iterable<number>): Uint8Array {
  return encodeU32Set(xids, "two-phase xid");
}
export function decodeTwoPhaseDir(bytes: Uint8Array): Set<number> {
  return decodeU32Set(bytes, "two-phase directory");
}

/** SLRU segment length in pages: same encoding as a relation size (never "dropped"). */
export function encodeSlruSegSize(pages: number): Uint8Array {
  return encodeRelSize(pages);
}
export function decodeSlruSegSize(bytes: Uint8Array): number {
  const n = decodeRelSize(bytes);
  if (n === undefined) throw corrupt("SLRU segment size", "holds the dropped marker");
  return n;
}

// ------------------------------------------------------------------ WAL record values

/** Bytes in front of the raw record in a stored WAL value: u64 start LSN + u32 (end - start). */
export const WAL_VALUE_HEADER_BYTES = 12;

/**
 * A WAL record stored as a version of one key. The value carries the whole
 * raw record (redo replays it for the key's block: the redo engines match the
 * block reference by rel/fork/block, or derive the SLRU/VM page from the
 * body), preceded by its start LSN and the distance to its MAXALIGNed end,
 * so `redoInputOf` can rebuild the DecodedRecord without outside context.
 */
export function walRecordValue(rec: Pick<DecodedRecord, "lsn" | "endLsn" | "raw">, willInit: boolean, engine?: RedoEngine): WalValue {
  let out: Uint8Array;
  if (rec.raw === lastWalValue.raw && rec.lsn === lastWalValue.lsn && rec.endLsn === lastWalValue.endLsn) {
    // The same record stored for another of its blocks: the bytes are equal and values are never mutated.
    out = lastWalValue.out;
  } else {
    const end = recordVersionLsn(rec);
    const span = end - rec.lsn;
    // (messages built only on failure: this runs for every stored record)
    if (!(span > 0n && span <= 0xffffffffn)) assert(false, `record at ${formatLsn(rec.lsn)} spans ${span} bytes`);
    out = new Uint8Array(WAL_VALUE_HEADER_BYTES + rec.raw.length);
    const v = view(out);
    v.setBigUint64(0, rec.lsn, true);
    v.setUint32(8, Number(span), true);
    out.set(rec.raw, WAL_VALUE_HEADER_BYTES);
    lastWalValue = { raw: rec.raw, lsn: rec.lsn, endLsn: rec.endLsn, out };
  }
  return engine === undefined ? { kind: "wal", willInit, rec: out } : { kind: "wal", willInit, rec: out, engine };
}

/**
 * Writes the WAL_VALUE_HEADER_BYTES header walRecordValue puts in front of
 * the raw record into out[0, 12): what a writer that appends header and raw
 * record straight into its own buffer (InMemoryLayer.putWal, on WAL ingest's
 * fast path) needs, without a per-record copy of the record. Numbers instead
 * of bigints while the LSNs are below 2^53 (every real LSN).
 */
export function writeWalValueHeader(rec: Pick<DecodedRecord, "lsn" | "endLsn">, out: Uint8Array): void {
  const start = Number(rec.lsn);
  const end = Number(rec.endLsn);
  if (end > Number.MAX_SAFE_INTEGER - 8) {
    const span = recordVersionLsn(rec) - rec.lsn;
    if (!(span > 0n && span <= 0xffffffffn)) assert(false, `record at ${formatLsn(rec.lsn)} spans ${span} bytes`);
    const v = view(out);
    v.setBigUint64(0, rec.lsn, true);
    v.setUint32(8, Number(span), true);
    return;
  }
  const span = Math.ceil(end / 8) * 8 - start;
  if (!(span > 0 && span <= 0xffffffff)) assert(false, `record at ${formatLsn(rec.lsn)} spans ${span} bytes`);
  const hi = Math.floor(start / 0x1_0000_0000);
  putU32le(out, 0, start - hi * 0x1_0000_0000);
  putU32le(out, 4, hi);
  putU32le(out, 8, span);
}

function putU32le(out: Uint8Array, off: number, v: number): void {
  out[off] = v & 0xff;
  out[off + 1] = (v >>> 8) & 0xff;
  out[off + 2] = (v >>> 16) & 0xff;
  out[off + 3] = (v >>> 24) & 0xff;
}

/**
 * The last record walRecordValue encoded: a record touching several blocks is
 * stored once per block, and this spares a copy of it per block. Only the
 * newest is kept (holding one record's bytes).
 */
let lastWalValue: { raw: Uint8Array; lsn: Lsn; endLsn: Lsn; out: Uint8Array } = { raw: new Uint8Array(0), lsn: 0n as Lsn, endLsn: 0n as Lsn, out: new Uint8Array(0) };

/**
 * The zero-page marker: "this block is an all-zero page from this LSN on".
 * A will-init WAL value with an empty body (a real record is never empty).
 * 2 bytes stored instead of an 8 KiB image, for blocks that become reachable
 * again when a fork is extended over a gap.
 */
export const ZERO_PAGE_VALUE: WalValue = { kind: "wal", willInit: true, rec: new Uint8Array(0), engine: "native" };

export function isZeroPageMarker(v: Value): boolean {
  return v.kind === "wal" && v.rec.length === 0;
}

/** What walredo's `reconstruct` takes for a stored WAL value. */
export type StoredRedoInput = { readonly kind: "wal"; readonly record: DecodedRecord } | { readonly kind: "zeroPage" };

/**
 * Turns a stored WAL value back into reconstruct's input. `where` names the
 * key and version for error messages. The record's CRC is checked again:
 * layer files have their own checksums, but this is cheap next to redo and
 * catches a value filed under the wrong encoding.
 */
export function redoInputOf(v: WalValue, where = "WAL value"): StoredRedoInput {
  if (v.rec.length === 0) return { kind: "zeroPage" };
  if (v.rec.length < WAL_VALUE_HEADER_BYTES) throw corrupt(where, `${v.rec.length} bytes is shorter than the ${WAL_VALUE_HEADER_BYTES}-byte header`);
  const dv = view(v.rec);
  const start = lsn(dv.getBigUint64(0, true));
  const span = dv.getUint32(8, true);
  if (span === 0) throw corrupt(where, "record end equals its start");
  const end = lsn(start + BigInt(span));
  const raw = v.rec.subarray(WAL_VALUE_HEADER_BYTES);
  return { kind: "wal", record: decodeRecord(raw, start, end) };
}

// ------------------------------------------------------------------ modification batch

/** How many distinct keys one record's batch may touch before it is refused (a runaway guard). */
export const MAX_BATCH_KEYS = 4_000_000;

/**
 * The puts of one WAL record (or one import step), applied together. Reads
 * through `get` see this batch's own earlier puts first (only images can be
 * read back: metadata keys are always written as images), then the reader at
 * `readLsn` (the LSN before this batch). A key put twice keeps its first
 * position and its last value, because a timeline cannot hold two versions
 * of one key at one LSN.
 */
export class DatadirModification {
  private readonly pending = new Map<Key, Value>();

  constructor(
    private readonly reader: DatadirReader,
    /** Versions below this batch: reads of keys the batch has not put go here. */
    readonly readLsn: Lsn,
    /** The LSN all puts of this batch carry. */
    readonly lsn: Lsn,
    private readonly ctx: RequestContext,
  ) {
    if (lsn < readLsn) assert(false, `batch at ${formatLsn(lsn)} reads above itself at ${formatLsn(readLsn)}`);
  }

  get size(): number {
    return this.pending.size;
  }

  /** The request's cancellation signal (long interpretations check it between steps). */
  get signal(): AbortSignal {
    return this.ctx.signal;
  }

  has(key: Key): boolean {
    return this.pending.has(key);
  }

  put(key: Key, value: Value): void {
    if (!this.pending.has(key) && this.pending.size >= MAX_BATCH_KEYS) {
      throw new StrataError("invalid_argument", `Batch at ${formatLsn(this.lsn)} would touch more than ${MAX_BATCH_KEYS} keys`);
    }
    this.pending.set(key, value);
  }

  /** The value of `key` including this batch's puts. A pending WAL value cannot be read back (a bug). */
  async get(key: Key): Promise<Uint8Array | undefined> {
    const p = this.pending.get(key);
    if (p !== undefined) {
      if (p.kind === "image") return p.bytes;
      throw new Error(`assertion failed: batch at ${formatLsn(this.lsn)} reads back WAL value of ${formatKey(key)}`);
    }
    return this.reader.get(key, this.readLsn, this.ctx);
  }

  /** The batch as puts, in first-put order. */
  entries(): DatadirPut[] {
    const out: DatadirPut[] = [];
    for (const [key, value] of this.pending) out.push({ key, lsn: this.lsn, value });
    return out;
  }

  /** Hands the batch to the writer (nothing when empty) and forgets it. */
  async commit(writer: DatadirWriter): Promise<void> {
    if (this.pending.size > 0) await writer.put(this.entries());
    this.pending.clear();
  }
}
