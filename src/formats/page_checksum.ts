/**
 * PostgreSQL's data page checksum (pg_checksum_page, storage/checksum_impl.h).
 *
 * With `initdb --data-checksums` every page written to a relation file
 * carries a 16-bit checksum in pd_checksum. The pageserver must verify pages
 * it receives from outside and stamp the pages it materializes for a compute
 * (a checksummed compute rejects a page whose checksum is wrong).
 *
 * The algorithm: the 8 KiB page is read as 2048 native (little-endian)
 * uint32 words arranged as 64 rows of 32 columns; 32 independent FNV-1a-like
 * lanes each hash one column (`x = sum ^ word; sum = x * FNV_PRIME ^ (x >>> 17)`),
 * starting from fixed per-lane offsets, then two extra rounds with zero
 * words; the lanes are XOR-folded, the block number is XORed in (so a page
 * written to the wrong block fails), and the result is reduced to
 * `(value % 65535) + 1` (never 0). pd_checksum itself counts as zero.
 *
 * Performance: no allocation per call. An aligned input is read through a
 * Uint32Array view; an unaligned one is first copied into one module-level
 * scratch page. Lanes live in a preallocated Uint32Array.
 *
 * Only defined for initialized pages (PageIsNew is false); PostgreSQL never
 * checksums all-zero pages and neither do callers of this module.
 */
import { StrataError } from "../lib/errors.js";

const PAGE_BYTES = 8192;
/** N_SUMS: parallel lanes (chosen by PostgreSQL so compilers vectorize the loop). */
const N_SUMS = 32;
const ROWS = PAGE_BYTES / (4 * N_SUMS);
/** FNV-1a's 32-bit prime. */
const FNV_PRIME = 16777619;
/** Word index of bytes 8..11: pd_checksum (low half in little-endian) and pd_flags. */
const CHECKSUM_WORD = 2;

/** checksumBaseOffsets: each lane's starting value, fixed by PostgreSQL. */
const BASE_OFFSETS = Uint32Array.from([
  0x5b1f36e9, 0xb8525960, 0x02ab50aa, 0x1de66d2a, 0x79ff467a, 0x9bb9f8a3, 0x217e7cd2, 0x83e13d2c,
  0xf8d4474f, 0xe39eb970, 0x42c6ae16, 0x993216fa, 0x7b093b5d, 0x98daff3c, 0xf718902a, 0x0b1c9cdb,
  0xe58f764b, 0x187636bc, 0x5d7b3bb1, 0xe73de7de, 0x92bec979, 0xcca6c0b2, 0x304a0979, 0x85aa43d4,
  0x783125bb, 0x6ca8eaa2, 0xe407eac6, 0x4b5cfc3e, 0x9fbf8c76, 0x15ca20be, 0xf2ca9fd3, 0x959bd756,
]);

// The words are native-endian in PostgreSQL; typed arrays are native-endian
// in JavaScript. Both are little-endian on every platform strata supports;
// refuse to compute wrong checksums anywhere else.
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

const lanes = new Uint32Array(N_SUMS);
const scratch = new Uint8Array(PAGE_BYTES);
const scratchWords = new Uint32Array(scratch.buffer);

function wordsOf(page: Uint8Array): Uint32Array {
  if (page.byteOffset % 4 === 0) return new Uint32Array(page.buffer, page.byteOffset, PAGE_BYTES / 4);
  scratch.set(page);
  return scratchWords;
}

/** pg_checksum_page: the value pd_checksum must hold for `page` at `blockNumber`. */
export function pageChecksum(page: Uint8Array, blockNumber: number): number {
  if (!HOST_IS_LITTLE_ENDIAN) throw new StrataError("unsupported", "Page checksums need a little-endian host");
  if (page.byteLength !== PAGE_BYTES) {
    throw new StrataError("invalid_argument", `Cannot checksum a page of ${page.byteLength} bytes (expected ${PAGE_BYTES})`);
  }
  if (!Number.isInteger(blockNumber) || blockNumber < 0 || blockNumber > 0xffffffff) {
    throw new StrataError("invalid_argument", `Cannot checksum page: block number ${blockNumber} is not a uint32`);
  }
  const words = wordsOf(page);
  lanes.set(BASE_OFFSETS);
  for (let row = 0; row < ROWS; row++) {
    const base = row * N_SUMS;
    for (let j = 0; j < N_SUMS; j++) {
      let w = words[base + j]!;
      if (base + j === CHECKSUM_WORD) w &= 0xffff0000; // pd_checksum counts as 0
      const x = lanes[j]! ^ w;
      lanes[j] = Math.imul(x, FNV_PRIME) ^ (x >>> 17);
    }
  }
  // Two rounds of zero words for extra mixing.
  for (let round = 0; round < 2; round++) {
    for (let j = 0; j < N_SUMS; j++) {
      const x = lanes[j]!;
      lanes[j] = Math.imul(x, FNV_PRIME) ^ (x >>> 17);
    }
  }
  let folded = 0;
  for (let j = 0; j < N_SUMS; j++) folded ^= lanes[j]!;
  const mixed = (folded ^ blockNumber) >>> 0;
  return (mixed % 65535) + 1;
}

/** Computes and stores pd_checksum; returns it. */
export function setPageChecksum(page: Uint8Array, blockNumber: number): number {
  const c = pageChecksum(page, blockNumber);
  page[8] = c & 0xff;
  page[9] = c >>> 8;
  return c;
}

/** True when pd_checksum matches the computed checksum. */
export function verifyPageChecksum(page: Uint8Array, blockNumber: number): boolean {
  const stored = (page[8] ?? 0) | ((page[9] ?? 0) << 8);
  return pageChecksum(page, blockNumber) === stored;
}
