/**
 * Key and LSN ranges: the two axes of every layer.
 *
 * A layer covers a rectangle of (key, LSN) space. Both axes use half-open
 * `[start, end)` ranges everywhere in strata's layer code: a range contains
 * `start` and excludes `end`, adjacent ranges share a bound, and an empty
 * range (start == end) is never a valid layer extent. Keeping one convention
 * removes the off-by-one questions that closed ranges invite when layers are
 * split and merged by compaction.
 *
 * A version of a key stored "at LSN l" is visible to a read at LSN X exactly
 * when l <= X; reads therefore search the half-open range [.., X + 1).
 */
import type { Key } from "../key.js";
import { formatKey, KEY_END, KEY_MIN } from "../key.js";
import { StrataError } from "../../lib/errors.js";
import type { Lsn } from "../../lib/lsn.js";
import { formatLsn, LSN_MAX } from "../../lib/lsn.js";

export interface KeyRange {
  readonly start: Key;
  readonly end: Key;
}

export interface LsnRange {
  readonly start: Lsn;
  readonly end: Lsn;
}

/** Every key: [KEY_MIN, KEY_END). Level-0 delta layers cover this range. */
export const FULL_KEY_RANGE: KeyRange = { start: KEY_MIN, end: KEY_END };

export function keyRangeContains(r: KeyRange, k: Key): boolean {
  return r.start <= k && k < r.end;
}

export function keyRangesOverlap(a: KeyRange, b: KeyRange): boolean {
  return a.start < b.end && b.start < a.end;
}

export function lsnRangeContains(r: LsnRange, l: Lsn): boolean {
  return r.start <= l && l < r.end;
}

export function lsnRangesOverlap(a: LsnRange, b: LsnRange): boolean {
  return a.start < b.end && b.start < a.end;
}

export function formatKeyRange(r: KeyRange): string {
  return `[${formatKey(r.start)}, ${r.end === KEY_END ? "END" : formatKey(r.end)})`;
}

export function formatLsnRange(r: LsnRange): string {
  return `[${formatLsn(r.start)}, ${formatLsn(r.end)})`;
}

/**
 * The all-ones 18-byte key. It is outside every namespace of the key space
 * (namespaces are 0x00..0x04), so no stored entry ever has it. That frees its
 * encoding to stand for KEY_END (2^144, which needs a 19th byte) when a range
 * *end* is written into a file name or a layer header.
 */
export const ALL_ONES_KEY = (KEY_END - 1n) as Key;

/** Maps a range end to the 18-byte value stored for it (KEY_END -> all ones). */
export function encodeKeyRangeEnd(end: Key): Key {
  if (end === KEY_END) return ALL_ONES_KEY;
  if (end === ALL_ONES_KEY || end > KEY_END || end < KEY_MIN) {
    throw new StrataError("invalid_argument", `Key range end ${end.toString(16)} cannot be encoded: use KEY_END for "to the end"`);
  }
  return end;
}

/** Inverse of encodeKeyRangeEnd. */
export function decodeKeyRangeEnd(stored: Key): Key {
  return stored === ALL_ONES_KEY ? KEY_END : stored;
}

/** End bound of the open in-memory layer's LSN range, which grows as WAL arrives: "no end yet". */
export const LSN_UNBOUNDED = LSN_MAX as Lsn;
