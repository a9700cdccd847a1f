/**
 * PostgreSQL's own LZ compression format ("pglz", src/common/pg_lzcompress.c),
 * used for full-page images when wal_compression = pglz (and for TOAST).
 *
 * No maintained library implements pglz, so the decoder is written here from
 * the format, with PostgreSQL 15's semantics:
 *
 *   The stream is a sequence of control bytes, each followed by up to eight
 *   items, one per control bit, least significant bit first:
 *     bit 0: a literal byte, copied to the output;
 *     bit 1: a match tag of 2 or 3 bytes —
 *       b0 = ((offset >> 4) & 0xF0) | (length - 3)   (low nibble 0x0F = "extended")
 *       b1 = offset & 0xFF
 *       b2 = length - 18                             (only when the nibble is 0x0F)
 *     so length is 3..273 and offset is 1..4095 bytes back into the output;
 *     overlapping matches repeat the last `offset` bytes (run-length coding).
 *   Decoding stops when either the input or the output (rawSize) is
 *   exhausted; a match is clipped at the end of the output, as PostgreSQL
 *   does. With `checkComplete` (what RestoreBlockImage asks for) both must be
 *   exhausted at the same time, else the data is corrupt.
 *
 * Invariants: every input read and every output write is bounds-checked; an
 * offset of 0 or one reaching before the output start is rejected (offset 0
 * would make PostgreSQL loop forever; we fail instead). The loops advance the
 * input or the output on every step, so corrupt input always terminates in
 * O(input + output) steps. Errors are `StrataError("corrupt_data")` with the
 * input and output offsets.
 *
 * `pglzCompress` is a writer of the same format, used by tests and anything
 * that must produce pglz data: a simple greedy matcher, so its output is a
 * valid pglz stream but not byte-identical to PostgreSQL's (PostgreSQL's
 * choice of matches, history size and give-up rules differ; they do not
 * affect decoding).
 */
import { StrataError } from "../../lib/errors.js";

/** Shortest match a tag can encode. */
export const PGLZ_MIN_MATCH = 3;
/** Longest match: 3 + 15 (nibble) + 255 (extension byte). */
export const PGLZ_MAX_MATCH = 273;
/** Largest back-reference distance: 12 bits. */
export const PGLZ_MAX_OFFSET = 0x0fff;

function corrupt(detail: string, inPos: number, outPos: number): StrataError {
  return new StrataError("corrupt_data", `pglz: ${detail} (input offset ${inPos}, output offset ${outPos})`);
}

/**
 * Decompresses `src` into at most `rawSize` bytes, as pglz_decompress does.
 * Returns the decompressed bytes (exactly `rawSize` of them when
 * `checkComplete`, possibly fewer otherwise).
 */
export function pglzDecompress(src: Uint8Array, rawSize: number, checkComplete: boolean): Uint8Array {
  if (!Number.isSafeInteger(rawSize) || rawSize < 0) {
    throw new StrataError("invalid_argument", `pglz: raw size ${rawSize} is not a non-negative integer`);
  }
  const dst = new Uint8Array(rawSize);
  const srcEnd = src.length;
  let sp = 0;
  let dp = 0;
  while (sp < srcEnd && dp < rawSize) {
    const ctrl = src[sp++] as number;
    for (let bit = 0; bit < 8 && sp < srcEnd && dp < rawSize; bit++) {
      if ((ctrl >> bit) & 1) {
        if (sp + 2 > srcEnd) throw corrupt("match tag cut off at end of input", sp, dp);
        const b0 = src[sp] as number;
        const b1 = src[sp + 1] as number;
        let len = (b0 & 0x0f) + PGLZ_MIN_MATCH;
        const off = ((b0 & 0xf0) << 4) | b1;
        sp += 2;
        if (len === 18) {
          if (sp >= srcEnd) throw corrupt("extended match length cut off at end of input", sp, dp);
          len += src[sp++] as number;
        }
        if (off === 0) throw corrupt("match offset 0", sp, dp);
        if (off > dp) throw corrupt(`match offset ${off} reaches before the start of the output`, sp, dp);
        len = Math.min(len, rawSize - dp);
        // Byte-wise copy: when off < len the source overlaps the bytes being
        // written, which is how pglz encodes runs.
        for (let i = 0; i < len; i++) dst[dp + i] = dst[dp - off + i] as number;
        dp += len;
      } else {
        dst[dp++] = src[sp++] as number;
      }
    }
  }
  if (checkComplete && (dp !== rawSize || sp !== srcEnd)) {
    throw corrupt(
      dp !== rawSize
        ? `input ended after ${dp} of ${rawSize} output bytes`
        : `${srcEnd - sp} input bytes left over after ${rawSize} output bytes`,
      sp,
      dp,
    );
  }
  return dp === rawSize ? dst : dst.subarray(0, dp);
}

/** How many earlier positions with the same 3-byte prefix the test compressor tries. */
const COMPRESS_CANDIDATES_PER_KEY = 16;

/**
 * Compresses `src` into a valid pglz stream (greedy longest match among the
 * last few positions with the same 3-byte prefix). Never fails; for
 * incompressible input the output is slightly larger than the input.
 */
export function pglzCompress(src: Uint8Array): Uint8Array {
  const out: number[] = [];
  const recent = new Map<number, number[]>();
  let ctrlPos = -1;
  let ctrlBit = 8;
  const startItem = (isMatch: boolean): void => {
    if (ctrlBit === 8) {
      ctrlPos = out.length;
      out.push(0);
      ctrlBit = 0;
    }
    if (isMatch) out[ctrlPos] = (out[ctrlPos] as number) | (1 << ctrlBit);
    ctrlBit++;
  };
  const remember = (pos: number): void => {
    if (pos + PGLZ_MIN_MATCH > src.length) return;
    const key = ((src[pos] as number) << 16) | ((src[pos + 1] as number) << 8) | (src[pos + 2] as number);
    let list = recent.get(key);
    if (list === undefined) recent.set(key, (list = []));
    list.push(pos);
    if (list.length > COMPRESS_CANDIDATES_PER_KEY) list.shift();
  };
  let pos = 0;
  while (pos < src.length) {
    let bestLen = 0;
    let bestOff = 0;
    if (pos + PGLZ_MIN_MATCH <= src.length) {
      const key = ((src[pos] as number) << 16) | ((src[pos + 1] as number) << 8) | (src[pos + 2] as number);
      const maxLen = Math.min(PGLZ_MAX_MATCH, src.length - pos);
      for (const cand of recent.get(key) ?? []) {
        const off = pos - cand;
        if (off > PGLZ_MAX_OFFSET) continue;
        let len = 0;
        while (len < maxLen && src[cand + len] === src[pos + len]) len++;
        if (len > bestLen) {
          bestLen = len;
          bestOff = off;
        }
      }
    }
    if (bestLen >= PGLZ_MIN_MATCH) {
      startItem(true);
      if (bestLen >= 18) {
        out.push(((bestOff & 0xf00) >> 4) | 0x0f, bestOff & 0xff, bestLen - 18);
      } else {
        out.push(((bestOff & 0xf00) >> 4) | (bestLen - PGLZ_MIN_MATCH), bestOff & 0xff);
      }
      for (let i = 0; i < bestLen; i++) remember(pos + i);
      pos += bestLen;
    } else {
      startItem(false);
      out.push(src[pos] as number);
      remember(pos);
      pos++;
    }
  }
  return Uint8Array.from(out);
}
