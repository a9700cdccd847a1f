/**
 * The pageserver's key space: every piece of PostgreSQL state as one 18-byte key.
 *
 * DESIGN §4: keys are fixed-width and compared as bytes, so relation blocks,
 * relation sizes, directories, SLRU pages, two-phase state and pg_control all
 * live in one ordered space that layers partition by key range. We hold a key
 * as a 144-bit `bigint` (big-endian reading of the 18 bytes): comparison is
 * `<`, it works as a Map key, and ranges are plain `[start, end)` intervals.
 *
 * Layout (byte offsets; multi-byte fields big-endian so byte order = numeric
 * order):
 *
 *   [0]      namespace
 *   0x00 relation space:  [1..4] spcOid  [5..8] dbOid  [9..12] relNumber  [13] fork  [14..17] block
 *        - block of a relation fork:   relNumber ≥ 1, fork 0..3, block 0..0xFFFFFFFE
 *        - size of a relation fork:    block = 0xFFFFFFFF (sorts after the fork's blocks)
 *        - relmapper file of (spc,db): relNumber = 0, fork = 0, block = 0
 *        - relation directory of (spc,db): relNumber = 0, fork = 0, block = 1
 *      (relfilenode 0 is never a real relation, so these cannot collide.)
 *   0x01 database directory: all other bytes zero (one key).
 *   0x02 SLRU:            [1] kind (0 clog, 1 multixact offsets, 2 multixact members)
 *                         [2..5] segment number  [6..9] block within segment
 *        - block of a segment:         block 0..0xFFFFFFFE
 *        - size (blocks) of a segment: block = 0xFFFFFFFF
 *        - directory of a kind:        segment = 0xFFFFFFFF, block = 0xFFFFFFFF
 *   0x03 two-phase state: [1..4] xid; xid 0 (never a valid xid) is the directory.
 *   0x04 cluster files:   [1] 0 = pg_control, 1 = latest checkpoint,
 *                         2 = last commit (strata's own: commit timestamp and end
 *                         LSN of the newest COMMIT / COMMIT PREPARED record, for
 *                         get_lsn_by_timestamp; not a PostgreSQL file, base backups
 *                         never read it).
 *
 * Ordering puts a relation's blocks together (scans for base backups and
 * image layers are sequential) and keeps per-database metadata right before
 * the database's relations.
 */
import { StrataError } from "../lib/errors.js";

export type Key = bigint & { readonly __brand: "Key" };

export const KEY_SIZE_BYTES = 18;
export const KEY_MIN = 0n as Key;
/** One past the largest key: ranges are half-open, so [KEY_MIN, KEY_END) is everything. */
export const KEY_END = (1n << BigInt(KEY_SIZE_BYTES * 8)) as Key;

const NS_REL = 0x00;
const NS_DBDIR = 0x01;
const NS_SLRU = 0x02;
const NS_TWOPHASE = 0x03;
const NS_CLUSTER = 0x04;

const U32_MAX = 0xffffffff;
/** Block number reserved for "size of this fork/segment" keys (InvalidBlockNumber). */
const SIZE_BLOCK = U32_MAX;

export const FORK_MAIN = 0;
export const FORK_FSM = 1;
export const FORK_VM = 2;
export const FORK_INIT = 3;
const MAX_FORK = FORK_INIT;

export enum SlruKind {
  Clog = 0,
  MultiXactOffsets = 1,
  MultiXactMembers = 2,
}

export interface RelTag {
  spcOid: number;
  dbOid: number;
  relNumber: number;
  fork: number;
}

export type KeyInfo =
  | { kind: "rel_block"; rel: RelTag; blockNumber: number }
  | { kind: "rel_size"; rel: RelTag }
  | { kind: "relmap"; spcOid: number; dbOid: number }
  | { kind: "rel_dir"; spcOid: number; dbOid: number }
  | { kind: "db_dir" }
  | { kind: "slru_block"; slru: SlruKind; segNo: number; blockNumber: number }
  | { kind: "slru_seg_size"; slru: SlruKind; segNo: number }
  | { kind: "slru_dir"; slru: SlruKind }
  | { kind: "twophase_dir" }
  | { kind: "twophase_file"; xid: number }
  | { kind: "controlfile" }
  | { kind: "checkpoint" }
  | { kind: "last_commit" };

function u32(name: string, v: number): bigint {
  if (!Number.isInteger(v) || v < 0 || v > U32_MAX) {
    throw new StrataError("invalid_argument", `Cannot build key: ${name} ${v} is not a 32-bit unsigned integer`);
  }
  return BigInt(v);
}

/** Assembles a key from its namespace byte and the 17 bytes after it, given as (value, width) fields. */
function build(ns: number, fields: ReadonlyArray<readonly [bigint, number]>): Key {
  let k = BigInt(ns);
  let bytes = 1;
  for (const [v, width] of fields) {
    k = (k << BigInt(width * 8)) | v;
    bytes += width;
  }
  return (k << BigInt((KEY_SIZE_BYTES - bytes) * 8)) as Key;
}

function relFields(spcOid: number, dbOid: number, relNumber: number, fork: number, block: number) {
  if (!Number.isInteger(fork) || fork < 0 || fork > MAX_FORK) {
    throw new StrataError("invalid_argument", `Cannot build key: fork ${fork} is not 0..${MAX_FORK}`);
  }
  return [
    [u32("spcOid", spcOid), 4],
    [u32("dbOid", dbOid), 4],
    [u32("relNumber", relNumber), 4],
    [BigInt(fork), 1],
    [u32("block", block), 4],
  ] as const;
}

function isU32(v: number): boolean {
  return (v >>> 0) === v;
}

/**
 * A relation-space key computed directly (ingest builds several per WAL
 * record): namespace 0 is the top byte, so the key is spc << 104 | db << 72 |
 * rel << 40 | fork << 32 | block, with fork and block combined exactly in a
 * double (< 2^40). Same value as build(NS_REL, relFields(...)).
 */
function relKey(spcOid: number, dbOid: number, relNumber: number, fork: number, block: number): Key {
  if (!isU32(spcOid) || !isU32(dbOid) || !isU32(relNumber) || !isU32(block) || !Number.isInteger(fork) || fork < 0 || fork > MAX_FORK) {
    return build(NS_REL, relFields(spcOid, dbOid, relNumber, fork, block)); // throws the precise error
  }
  return ((BigInt(spcOid) << 104n) | (BigInt(dbOid) << 72n) | (BigInt(relNumber) << 40n) | BigInt(fork * 0x1_0000_0000 + block)) as Key;
}

export function relBlockKey(rel: RelTag, blockNumber: number): Key {
  if (rel.relNumber === 0) throw new StrataError("invalid_argument", "Cannot build key: relNumber 0 is reserved");
  if (blockNumber === SIZE_BLOCK) throw new StrataError("invalid_argument", "Cannot build key: block 0xFFFFFFFF is InvalidBlockNumber");
  return relKey(rel.spcOid, rel.dbOid, rel.relNumber, rel.fork, blockNumber);
}

export function relSizeKey(rel: RelTag): Key {
  if (rel.relNumber === 0) throw new StrataError("invalid_argument", "Cannot build key: relNumber 0 is reserved");
  return relKey(rel.spcOid, rel.dbOid, rel.relNumber, rel.fork, SIZE_BLOCK);
}

export function relmapKey(spcOid: number, dbOid: number): Key {
  return relKey(spcOid, dbOid, 0, 0, 0);
}

export function relDirKey(spcOid: number, dbOid: number): Key {
  return relKey(spcOid, dbOid, 0, 0, 1);
}

export const DBDIR_KEY: Key = build(NS_DBDIR, []);

function slruFields(kind: SlruKind, segNo: number, block: number) {
  return [
    [BigInt(kind), 1],
    [u32("segNo", segNo), 4],
    [u32("block", block), 4],
  ] as const;
}

export function slruBlockKey(kind: SlruKind, segNo: number, blockNumber: number): Key {
  if (segNo === U32_MAX) throw new StrataError("invalid_argument", "Cannot build key: SLRU segment 0xFFFFFFFF is reserved");
  if (blockNumber === SIZE_BLOCK) throw new StrataError("invalid_argument", "Cannot build key: SLRU block 0xFFFFFFFF is reserved");
  return build(NS_SLRU, slruFields(kind, segNo, blockNumber));
}

export function slruSegSizeKey(kind: SlruKind, segNo: number): Key {
  if (segNo === U32_MAX) throw new StrataError("invalid_argument", "Cannot build key: SLRU segment 0xFFFFFFFF is reserved");
  return build(NS_SLRU, slruFields(kind, segNo, SIZE_BLOCK));
}

export function slruDirKey(kind: SlruKind): Key {
  return build(NS_SLRU, slruFields(kind, U32_MAX, SIZE_BLOCK));
}

export const TWOPHASE_DIR_KEY: Key = build(NS_TWOPHASE, [[0n, 4]]);

export function twoPhaseFileKey(xid: number): Key {
  if (xid === 0) throw new StrataError("invalid_argument", "Cannot build key: xid 0 is not a valid transaction id");
  return build(NS_TWOPHASE, [[u32("xid", xid), 4]]);
}

export const CONTROLFILE_KEY: Key = build(NS_CLUSTER, [[0n, 1]]);
export const CHECKPOINT_KEY: Key = build(NS_CLUSTER, [[1n, 1]]);
/** The last commit record ingested (lsn_by_timestamp.ts owns its value format). */
export const LAST_COMMIT_KEY: Key = build(NS_CLUSTER, [[2n, 1]]);

/** Reads `width` bytes starting at byte `offset` of the key. */
function field(k: Key, offset: number, width: number): number {
  const shift = BigInt((KEY_SIZE_BYTES - offset - width) * 8);
  return Number((k >> shift) & ((1n << BigInt(width * 8)) - 1n));
}

function isZeroFrom(k: Key, offset: number): boolean {
  return (k & ((1n << BigInt((KEY_SIZE_BYTES - offset) * 8)) - 1n)) === 0n;
}

function invalid(k: Key, why: string): StrataError {
  return new StrataError("corrupt_data", `Invalid key ${formatKey(k)}: ${why}`);
}

/** Decodes a key into what it names; keys that no constructor can produce are corrupt_data. */
export function decodeKey(k: Key): KeyInfo {
  if (k < 0n || k >= KEY_END) throw new StrataError("corrupt_data", `Invalid key: ${k} is outside the 18-byte key space`);
  const ns = field(k, 0, 1);
  switch (ns) {
    case NS_REL: {
      const spcOid = field(k, 1, 4);
      const dbOid = field(k, 5, 4);
      const relNumber = field(k, 9, 4);
      const fork = field(k, 13, 1);
      const block = field(k, 14, 4);
      if (fork > MAX_FORK) throw invalid(k, `fork ${fork}`);
      if (relNumber === 0) {
        if (fork === 0 && block === 0) return { kind: "relmap", spcOid, dbOid };
        if (fork === 0 && block === 1) return { kind: "rel_dir", spcOid, dbOid };
        throw invalid(k, "relNumber 0 with a block other than relmap/rel_dir");
      }
      const rel = { spcOid, dbOid, relNumber, fork };
      return block === SIZE_BLOCK ? { kind: "rel_size", rel } : { kind: "rel_block", rel, blockNumber: block };
    }
    case NS_DBDIR:
      if (!isZeroFrom(k, 1)) throw invalid(k, "database directory key with non-zero fields");
      return { kind: "db_dir" };
    case NS_SLRU: {
      const slru = field(k, 1, 1);
      if (slru > SlruKind.MultiXactMembers) throw invalid(k, `SLRU kind ${slru}`);
      if (!isZeroFrom(k, 10)) throw invalid(k, "SLRU key with non-zero trailing bytes");
      const segNo = field(k, 2, 4);
      const block = field(k, 6, 4);
      if (segNo === U32_MAX) {
        if (block === SIZE_BLOCK) return { kind: "slru_dir", slru };
        throw invalid(k, "reserved SLRU segment number");
      }
      return block === SIZE_BLOCK ? { kind: "slru_seg_size", slru, segNo } : { kind: "slru_block", slru, segNo, blockNumber: block };
    }
    case NS_TWOPHASE: {
      if (!isZeroFrom(k, 5)) throw invalid(k, "two-phase key with non-zero trailing bytes");
      const xid = field(k, 1, 4);
      return xid === 0 ? { kind: "twophase_dir" } : { kind: "twophase_file", xid };
    }
    case NS_CLUSTER: {
      if (!isZeroFrom(k, 2)) throw invalid(k, "cluster-file key with non-zero trailing bytes");
      const which = field(k, 1, 1);
      if (which === 0) return { kind: "controlfile" };
      if (which === 1) return { kind: "checkpoint" };
      if (which === 2) return { kind: "last_commit" };
      throw invalid(k, `cluster file ${which}`);
    }
    default:
      throw invalid(k, `namespace 0x${ns.toString(16)}`);
  }
}

/** The 18 bytes of a key. */
export function keyToBytes(k: Key, out: Uint8Array = new Uint8Array(KEY_SIZE_BYTES), offset = 0): Uint8Array {
  let v: bigint = k;
  for (let i = KEY_SIZE_BYTES - 1; i >= 0; i--) {
    out[offset + i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

export function keyFromBytes(bytes: Uint8Array, offset = 0): Key {
  if (offset < 0 || offset + KEY_SIZE_BYTES > bytes.length) {
    throw new StrataError("truncated", `Cannot read key at offset ${offset}: only ${bytes.length} bytes`);
  }
  let v = 0n;
  for (let i = 0; i < KEY_SIZE_BYTES; i++) v = (v << 8n) | BigInt(bytes[offset + i]!);
  return v as Key;
}

/** 36 upper-case hex digits: the form used in layer file names. */
export function formatKey(k: Key | bigint): string {
  return k.toString(16).toUpperCase().padStart(KEY_SIZE_BYTES * 2, "0");
}

export function parseKey(text: string): Key {
  if (!/^[0-9A-Fa-f]{36}$/.test(text)) throw new StrataError("invalid_argument", `Cannot parse key "${text}": expected 36 hex digits`);
  return BigInt("0x" + text) as Key;
}

/** The next key in byte order (for building half-open ranges around one key). */
export function keyNext(k: Key): Key {
  if (k + 1n > KEY_END) throw new StrataError("invalid_argument", "Cannot step past the end of the key space");
  return (k + 1n) as Key;
}

/** All keys of one relation fork, blocks and size key: [first block, size key + 1). */
export function relKeyRange(rel: RelTag): { start: Key; end: Key } {
  return { start: build(NS_REL, relFields(rel.spcOid, rel.dbOid, rel.relNumber, rel.fork, 0)), end: keyNext(relSizeKey(rel)) };
}

/** All keys of one database (relmap, rel dir, every relation): [relmap key, next db). */
export function dbKeyRange(spcOid: number, dbOid: number): { start: Key; end: Key } {
  const start = relmapKey(spcOid, dbOid);
  const end = (start + (1n << BigInt(9 * 8))) as Key; // bump dbOid (bytes 5..8) by one
  return { start, end };
}
