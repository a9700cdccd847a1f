/**
 * Time -> LSN: "which LSN should a branch at wall-clock time T start at?"
 * (get_lsn_by_timestamp, issue 6's branch-at-timestamp).
 *
 *   WalIngest (COMMIT / COMMIT PREPARED) -> LAST_COMMIT_KEY image at the record's end
 *   HTTP get_lsn_by_timestamp -> findLsnByTimestamp -> Timeline.get(LAST_COMMIT_KEY, L) probes
 *
 * The record of commits is one key of the pageserver's key space
 * (LAST_COMMIT_KEY, key.ts) whose value ingest rewrites at every COMMIT and
 * COMMIT PREPARED record: (commit timestamp, the version LSN of that record
 * = its MAXALIGNed end, xid). Reading it at LSN L through the normal read
 * path gives the last commit at or before L — on this timeline or, below
 * the branch point, on its ancestors — and it lives in layers like any
 * other value, so it survives restarts, is shared by branches, is uploaded
 * with the layers and kept by GC and image layers (compaction.ts lists it).
 * Cost: one 21-byte image per commit record. Aborts are not recorded: they
 * change no visible state. The value is strata's own, not a PostgreSQL file;
 * base backups read only the keys they name and never see it.
 *
 * Why not the GC's (time, last_record_lsn) samples (gc.ts LsnTimeHistory):
 * they are wall-clock times of the *pageserver*, kept in memory only, lost
 * at restart and absent for history that was imported or ingested late.
 * Commit timestamps are the compute's own clock, written in the WAL, and
 * are what a user means by "the database as of 12:03".
 *
 * The search. f(L) := the commit the key holds at L. f is a step function
 * of L that changes exactly at commit ends. Let T be the requested time.
 *   - no commit at the newest LSN (hi = last_record_lsn)      -> "nodata", lsn = hi
 *   - the newest commit has timestamp <= T                     -> "future", lsn = hi
 *   - the commit at the oldest readable LSN (lo) is after T    -> "past",   lsn = lo
 *   - else binary search keeping  ts(f(lo')) <= T (or f(lo') absent) and
 *     ts(f(hi')) > T; a probe after T moves hi' down to that commit's own
 *     end (the step's left edge). It stops when hi' = lo' + 1 and returns
 *     f(lo') -> "present", lsn = its end (raised to lo when the commit lies
 *     below the readable range — no commit lies in between, so the visible
 *     transactions are the same), or "past" when f(lo') is absent.
 * Probes: about log2(hi - lo), each one key read (~30 for 1 GiB of WAL).
 *
 * What it guarantees. PostgreSQL takes a commit's timestamp before it
 * inserts the commit record, so concurrent commits can reach the WAL in the
 * opposite order of their timestamps (by the time it takes to insert a
 * record: microseconds to milliseconds). Timestamps are therefore almost,
 * not strictly, non-decreasing in LSN order. The search always returns a
 * commit C with ts(C) <= T whose next commit in WAL order has a timestamp
 * > T (a "crossing"). When timestamps are non-decreasing in WAL order, C is
 * exactly the last commit at or before T; otherwise a branch at the result
 * may miss a commit stamped <= T that was inserted after one stamped > T,
 * or include one stamped slightly after T — only among commits whose
 * timestamps are within that reordering window of each other. Clock steps
 * on the compute (NTP jumps) can make the window larger.
 */
import { StrataError } from "../lib/errors.js";
import { formatLsn, lsnMax, type Lsn } from "../lib/lsn.js";
import type { RequestContext } from "../lib/tasks.js";
import type { DatadirReader } from "./datadir.js";
import { LAST_COMMIT_KEY } from "./key.js";

// ------------------------------------------------------------------ value format

/** Format version byte of the last-commit value. */
const LAST_COMMIT_FORMAT_VERSION = 1;
/** version (1) + commit timestamp (8) + end LSN (8) + xid (4). */
export const LAST_COMMIT_VALUE_BYTES = 21;

/** One commit record, as the last-commit value holds it. */
export interface CommitRecordInfo {
  /** PostgreSQL TimestampTz of the commit: microseconds since 2000-01-01 00:00 UTC. */
  readonly timestampUs: bigint;
  /** The version LSN of the commit record (its MAXALIGNed end): a branch there sees the transaction. */
  readonly endLsn: Lsn;
  readonly xid: number;
}

/**
 * The value's bytes (little-endian fields). Written byte by byte: ingest
 * encodes one per commit record, and a DataView over a fresh 21-byte array
 * (`out.buffer`) makes V8 move the array's storage off the heap first,
 * several times the cost of the encoding itself.
 */
export function encodeLastCommit(c: CommitRecordInfo): Uint8Array {
  const out = new Uint8Array(LAST_COMMIT_VALUE_BYTES);
  out[0] = LAST_COMMIT_FORMAT_VERSION;
  putU64LE(out, 1, BigInt.asUintN(64, c.timestampUs));
  putU64LE(out, 9, c.endLsn);
  putU32LE(out, 17, c.xid >>> 0);
  return out;
}

function putU32LE(out: Uint8Array, at: number, v: number): void {
  out[at] = v & 0xff;
  out[at + 1] = (v >>> 8) & 0xff;
  out[at + 2] = (v >>> 16) & 0xff;
  out[at + 3] = v >>> 24;
}

/** `v` in [0, 2^64). */
function putU64LE(out: Uint8Array, at: number, v: bigint): void {
  putU32LE(out, at, Number(v & 0xffff_ffffn));
  putU32LE(out, at + 4, Number(v >> 32n));
}

/** Decodes a stored last-commit value (bytes from a layer file: corrupt_data when malformed). */
export function decodeLastCommit(bytes: Uint8Array): CommitRecordInfo {
  if (bytes.length !== LAST_COMMIT_VALUE_BYTES) {
    throw new StrataError("corrupt_data", `Cannot decode last-commit value: ${bytes.length} bytes, expected ${LAST_COMMIT_VALUE_BYTES}`);
  }
  if (bytes[0] !== LAST_COMMIT_FORMAT_VERSION) {
    throw new StrataError("corrupt_data", `Cannot decode last-commit value: format version ${bytes[0]}, expected ${LAST_COMMIT_FORMAT_VERSION}`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { timestampUs: v.getBigInt64(1, true), endLsn: v.getBigUint64(9, true) as Lsn, xid: v.getUint32(17, true) };
}

// ------------------------------------------------------------------ timestamps

/** Seconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC). */
const PG_EPOCH_UNIX_SECONDS = 946_684_800n;
const RFC3339 = /^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$/;

/** Parses an RFC 3339 timestamp ("2026-11-29T07:03:00.123456Z") to a PostgreSQL TimestampTz (µs, digits past µs truncated). */
export function parseRfc3339ToPgMicros(text: string): bigint {
  const m = RFC3339.exec(text);
  if (m === null) throw new StrataError("invalid_argument", `Cannot parse timestamp "${text}": expected RFC 3339, e.g. "2026-11-29T07:03:00.123456Z"`);
  const zone = m[4]!.toUpperCase();
  const ms = Date.parse(`${m[1]}T${m[2]}${zone}`);
  if (!Number.isFinite(ms)) throw new StrataError("invalid_argument", `Cannot parse timestamp "${text}": not a valid date and time`);
  const fracUs = BigInt((m[3] ?? "").padEnd(6, "0").slice(0, 6));
  return (BigInt(ms) / 1000n - PG_EPOCH_UNIX_SECONDS) * 1_000_000n + fracUs;
}

/** RFC 3339 in UTC with microseconds, for a PostgreSQL TimestampTz. */
export function formatPgMicrosRfc3339(us: bigint): string {
  const unixUs = us + PG_EPOCH_UNIX_SECONDS * 1_000_000n;
  const secs = unixUs >= 0n ? unixUs / 1_000_000n : -((-unixUs + 999_999n) / 1_000_000n);
  const frac = unixUs - secs * 1_000_000n;
  const base = new Date(Number(secs) * 1000).toISOString().slice(0, 19);
  return `${base}.${frac.toString().padStart(6, "0")}Z`;
}

// ------------------------------------------------------------------ search

export type LsnForTimestampKind = "present" | "past" | "future" | "nodata";

export interface LsnForTimestamp {
  readonly kind: LsnForTimestampKind;
  readonly lsn: Lsn;
  /** The commit the answer is based on: the one found (present) or the newest (future). */
  readonly commit: CommitRecordInfo | undefined;
  /** Key reads the search made. */
  readonly probes: number;
}

export interface LsnSearchRange {
  /** Oldest LSN the timeline can still be read (and branched) at: max(GC cutoff, its initial LSN). */
  readonly lo: Lsn;
  /** Newest: last_record_lsn. */
  readonly hi: Lsn;
}

/** The commit the last-commit key holds at `at`, or undefined before the first commit. */
export async function lastCommitAt(reader: DatadirReader, at: Lsn, ctx: RequestContext): Promise<CommitRecordInfo | undefined> {
  const v = await reader.get(LAST_COMMIT_KEY, at, ctx);
  return v === undefined ? undefined : decodeLastCommit(v);
}

/**
 * The LSN for time `timestampUs` (PostgreSQL TimestampTz) within `range`
 * (see the module header for the rule and what it guarantees).
 */
export async function findLsnByTimestamp(reader: DatadirReader, timestampUs: bigint, range: LsnSearchRange, ctx: RequestContext): Promise<LsnForTimestamp> {
  if (range.lo > range.hi) {
    throw new StrataError("invalid_argument", `Cannot search commits: the readable range ${formatLsn(range.lo)}..${formatLsn(range.hi)} is empty`);
  }
  let probes = 0;
  const probe = async (at: Lsn) => {
    ctx.signal.throwIfAborted();
    probes++;
    return lastCommitAt(reader, at, ctx);
  };
  const newest = await probe(range.hi);
  if (newest === undefined) return { kind: "nodata", lsn: range.hi, commit: undefined, probes };
  if (newest.timestampUs <= timestampUs) return { kind: "future", lsn: range.hi, commit: newest, probes };
  const oldest = await probe(range.lo);
  if (oldest !== undefined && oldest.timestampUs > timestampUs) return { kind: "past", lsn: range.lo, commit: undefined, probes };

  // ts(f(lo)) <= T (or absent), ts(f(hi)) > T
  let lo: bigint = range.lo;
  let loCommit = oldest;
  let hi: bigint = newest.endLsn < range.hi && newest.endLsn > lo ? newest.endLsn : range.hi;
  while (hi - lo > 1n) {
    const mid = (lo + hi) >> 1n;
    const c = await probe(mid as Lsn);
    if (c === undefined || c.timestampUs <= timestampUs) {
      lo = mid;
      loCommit = c;
    } else {
      // f is constant on [c.endLsn, mid]: the crossing is at or below c's own end
      hi = c.endLsn > lo && c.endLsn < hi ? c.endLsn : mid;
    }
  }
  if (loCommit === undefined) return { kind: "past", lsn: range.lo, commit: undefined, probes };
  return { kind: "present", lsn: lsnMax(loCommit.endLsn, range.lo), commit: loCommit, probes };
}
