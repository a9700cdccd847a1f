/**
 * CRC-32C helpers for the layer writer's flush path (layer_file.ts
 * `addDeltaVersions`): the same checksum as formats/crc32c.ts (finalized
 * values, `previous` continues a finalized CRC), shaped for its hot loop.
 *
 *   - `copyWithCrc32c` copies a value into the output buffer and checksums
 *     it in the same pass. A flush writes hundreds of thousands of small
 *     values (WAL records of ~100 bytes) per layer; reading each byte once
 *     instead of twice, and sparing the native copy call (and the view it
 *     needs) per value, is most of what the loop can still save. Spans of at
 *     least NATIVE_SPAN_BYTES go to the native CRC and a native copy, which
 *     win there.
 *   - `crc32cU64` checksums a 64-bit big-endian number given as two 32-bit
 *     halves (an entry key's LSN) without writing it to memory first.
 *
 * Tables: formats/crc32c.ts's slicing-by-8 tables. Pure functions, no state; bounds are the caller's (it
 * checked that [start, end) lies in `src` and the copy fits `dst`).
 */
import { crc32c, CRC32C_TABLES } from "../../formats/crc32c.js";

/** From this span on, the native CRC (SSE4.2) plus a native copy beat the fused JavaScript loop. */
const NATIVE_SPAN_BYTES = 256;

const [T0, T1, T2, T3, T4, T5, T6, T7] = CRC32C_TABLES as [Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array];

/**
 * Copies src[start, end) to dst[at, at + end - start) and returns the CRC-32C
 * of those bytes continuing from the finalized CRC `previous`.
 */
export function copyWithCrc32c(src: Uint8Array, start: number, end: number, dst: Uint8Array, at: number, previous: number): number {
  const len = end - start;
  if (len >= NATIVE_SPAN_BYTES) {
    const span = src.subarray(start, end);
    dst.set(span, at);
    return crc32c(span, previous);
  }
  let c = ~previous;
  let i = start;
  let o = at;
  const end8 = start + (len & ~7);
  while (i < end8) {
    const b0 = src[i]!;
    const b1 = src[i + 1]!;
    const b2 = src[i + 2]!;
    const b3 = src[i + 3]!;
    const b4 = src[i + 4]!;
    const b5 = src[i + 5]!;
    const b6 = src[i + 6]!;
    const b7 = src[i + 7]!;
    dst[o] = b0;
    dst[o + 1] = b1;
    dst[o + 2] = b2;
    dst[o + 3] = b3;
    dst[o + 4] = b4;
    dst[o + 5] = b5;
    dst[o + 6] = b6;
    dst[o + 7] = b7;
    const a = c ^ (b0 | (b1 << 8) | (b2 << 16) | (b3 << 24));
    c = T7[a & 0xff]! ^ T6[(a >>> 8) & 0xff]! ^ T5[(a >>> 16) & 0xff]! ^ T4[a >>> 24]! ^ T3[b4]! ^ T2[b5]! ^ T1[b6]! ^ T0[b7]!;
    i += 8;
    o += 8;
  }
  while (i < end) {
    const b = src[i++]!;
    dst[o++] = b;
    c = T0[(c ^ b) & 0xff]! ^ (c >>> 8);
  }
  return ~c >>> 0;
}

/**
 * CRC-32C of the 8 bytes of `hi * 2^32 + lo` in big-endian order (hi and lo
 * unsigned 32-bit), continuing from the finalized CRC `previous`.
 */
export function crc32cU64(hi: number, lo: number, previous: number): number {
  // bytes in order: hi's most significant first; slicing-by-8 takes the first four little-endian
  const first = ((hi >>> 24) | ((hi >>> 8) & 0xff00) | ((hi & 0xff00) << 8) | (hi << 24)) ^ ~previous;
  const c = T7[first & 0xff]! ^ T6[(first >>> 8) & 0xff]! ^ T5[(first >>> 16) & 0xff]! ^ T4[first >>> 24]! ^
    T3[lo >>> 24]! ^ T2[(lo >>> 16) & 0xff]! ^ T1[(lo >>> 8) & 0xff]! ^ T0[lo & 0xff]!;
  return ~c >>> 0;
}
