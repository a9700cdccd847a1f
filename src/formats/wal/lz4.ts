/**
 * LZ4 raw *block* format (not the frame format), as PostgreSQL 15 stores
 * full-page images with wal_compression = lz4: RestoreBlockImage calls
 * LZ4_decompress_safe(src, dst, bimg_len, BLCKSZ - hole_length) on a block
 * written by LZ4_compress_default — no magic, no length prefix, no checksum.
 *
 * Why hand-written (npm options evaluated, 2026-11):
 *   - `lz4js` (decompressBlock): no bounds checks — reading past the input
 *     yields `undefined`, back-references before the output start read as 0,
 *     so corrupt input silently produces garbage instead of an error;
 *     unmaintained since 2017.
 *   - `@foxglove/wasm-lz4`, `wasm-lz4`: decode LZ4 *frames* only, and need an
 *     asynchronous WebAssembly load before first use.
 *   - `lz4-napi`, `lz4-wasm-nodejs` (lz4_flex): expose the size-prepended
 *     block variant; usable only by re-framing every image, at the cost of a
 *     native/wasm binary per platform and opaque error messages.
 *   The block format is small and frozen (lz4_Block_format.md), images are at
 *   most 8 KiB, and a pure decoder keeps FPI restore synchronous, portable
 *   and precise about where corrupt data is.
 *
 * Format: a sequence of sequences. Each starts with a token byte: high nibble
 * = literal count, low nibble = match length - 4; a nibble of 15 continues in
 * following bytes (each added; a byte of 255 means "more follows"). Then the
 * literals, then (unless this was the last sequence, which ends the input) a
 * 2-byte little-endian offset (1..65535, back into the output) and the match
 * length continuation bytes. Matches may overlap their source (runs).
 *
 * Invariants: every read and write is bounds-checked against the input and
 * the caller's output capacity; offset 0 or one reaching before the output
 * start is corrupt; every loop consumes input or produces output, so corrupt
 * input terminates. We accept exactly the streams whose decoding is well
 * defined — the reference decoder additionally insists that the last five
 * bytes are literals and that no match starts in the last twelve bytes of
 * the output; those rules help its wild-copy speed tricks, not correctness,
 * and data that LZ4 wrote always satisfies them.
 *
 * `lz4CompressBlock` is the matching writer (greedy, one candidate per
 * 4-byte hash, respecting those end-of-block rules so the reference decoder
 * accepts its output too); used by tests.
 */
import { StrataError } from "../../lib/errors.js";

/** MINMATCH: shortest match. */
export const LZ4_MIN_MATCH = 4;
/** Largest back-reference distance (16-bit offset). */
export const LZ4_MAX_OFFSET = 0xffff;
/** LASTLITERALS: the last 5 bytes of a block are always literals. */
const LZ4_LAST_LITERALS = 5;
/** MFLIMIT: no match may start within the last 12 bytes of a block. */
const LZ4_MFLIMIT = 12;

function corrupt(detail: string, inPos: number, outPos: number): StrataError {
  return new StrataError("corrupt_data", `lz4: ${detail} (input offset ${inPos}, output offset ${outPos})`);
}

/**
 * Decodes one raw LZ4 block into at most `capacity` bytes, like
 * LZ4_decompress_safe. Returns the decoded bytes (length <= capacity). The
 * whole input must be consumed, ending with a literal-only sequence.
 */
export function lz4DecompressBlock(src: Uint8Array, capacity: number): Uint8Array {
  if (!Number.isSafeInteger(capacity) || capacity < 0) {
    throw new StrataError("invalid_argument", `lz4: capacity ${capacity} is not a non-negative integer`);
  }
  const dst = new Uint8Array(capacity);
  const srcEnd = src.length;
  if (srcEnd === 0) throw corrupt("empty input (an LZ4 block has at least a token)", 0, 0);
  let sp = 0;
  let dp = 0;
  for (;;) {
    if (sp >= srcEnd) throw corrupt("input ended where a sequence token was expected", sp, dp);
    const token = src[sp++] as number;

    let litLen = token >> 4;
    if (litLen === 15) {
      for (;;) {
        if (sp >= srcEnd) throw corrupt("literal length cut off at end of input", sp, dp);
        const b = src[sp++] as number;
        litLen += b;
        if (b !== 255) break;
      }
    }
    if (litLen > srcEnd - sp) throw corrupt(`${litLen} literals but only ${srcEnd - sp} input bytes left`, sp, dp);
    if (litLen > capacity - dp) throw corrupt(`${litLen} literals overflow the ${capacity}-byte output`, sp, dp);
    dst.set(src.subarray(sp, sp + litLen), dp);
    sp += litLen;
    dp += litLen;

    if (sp === srcEnd) return dp === capacity ? dst : dst.subarray(0, dp);

    if (sp + 2 > srcEnd) throw corrupt("match offset cut off at end of input", sp, dp);
    const off = (src[sp] as number) | ((src[sp + 1] as number) << 8);
    sp += 2;
    if (off === 0) throw corrupt("match offset 0", sp, dp);
    if (off > dp) throw corrupt(`match offset ${off} reaches before the start of the output`, sp, dp);

    let matchLen = token & 0x0f;
    if (matchLen === 15) {
      for (;;) {
        if (sp >= srcEnd) throw corrupt("match length cut off at end of input", sp, dp);
        const b = src[sp++] as number;
        matchLen += b;
        if (b !== 255) break;
      }
    }
    matchLen += LZ4_MIN_MATCH;
    if (matchLen > capacity - dp) throw corrupt(`${matchLen}-byte match overflows the ${capacity}-byte output`, sp, dp);
    if (off >= matchLen) {
      dst.copyWithin(dp, dp - off, dp - off + matchLen);
    } else {
      // Overlapping match: byte by byte repeats the last `off` bytes.
      for (let i = 0; i < matchLen; i++) dst[dp + i] = dst[dp - off + i] as number;
    }
    dp += matchLen;
  }
}

function pushLength(out: number[], extra: number): void {
  let n = extra;
  while (n >= 255) {
    out.push(255);
    n -= 255;
  }
  out.push(n);
}

function emitSequence(out: number[], src: Uint8Array, litStart: number, litEnd: number, off: number, matchLen: number): void {
  const litLen = litEnd - litStart;
  const hasMatch = matchLen > 0;
  const m = hasMatch ? matchLen - LZ4_MIN_MATCH : 0;
  out.push((Math.min(litLen, 15) << 4) | Math.min(m, 15));
  if (litLen >= 15) pushLength(out, litLen - 15);
  for (let i = litStart; i < litEnd; i++) out.push(src[i] as number);
  if (!hasMatch) return;
  out.push(off & 0xff, off >> 8);
  if (m >= 15) pushLength(out, m - 15);
}

/** Compresses `src` into one raw LZ4 block (valid for LZ4_decompress_safe). */
export function lz4CompressBlock(src: Uint8Array): Uint8Array {
  const out: number[] = [];
  const table = new Map<number, number>();
  const n = src.length;
  const matchStartLimit = n - LZ4_MFLIMIT;
  const matchEndLimit = n - LZ4_LAST_LITERALS;
  const read32 = (p: number): number =>
    ((src[p] as number) | ((src[p + 1] as number) << 8) | ((src[p + 2] as number) << 16) | ((src[p + 3] as number) << 24)) >>> 0;
  let anchor = 0;
  let pos = 0;
  while (pos < matchStartLimit) {
    const key = read32(pos);
    const cand = table.get(key);
    table.set(key, pos);
    if (cand !== undefined && pos - cand <= LZ4_MAX_OFFSET && read32(cand) === key) {
      let len = LZ4_MIN_MATCH;
      while (pos + len < matchEndLimit && src[cand + len] === src[pos + len]) len++;
      emitSequence(out, src, anchor, pos, pos - cand, len);
      pos += len;
      anchor = pos;
    } else {
      pos++;
    }
  }
  emitSequence(out, src, anchor, n, 0, 0);
  return Uint8Array.from(out);
}
