/**
 * CRC-32C (Castagnoli), the checksum PostgreSQL uses for WAL records,
 * pg_control and two-phase state files.
 *
 * The arithmetic is delegated to `@node-rs/crc32` (native, SSE4.2 where
 * available, ~6 GB/s): WAL decoding computes one CRC per record and is
 * bandwidth-bound, so a JavaScript table loop would be the bottleneck.
 *
 * Convention: `crc32c(data, previous)` returns the *finalized* CRC (bits
 * inverted, as PostgreSQL's FIN_CRC32C leaves them) and accepts a previous
 * finalized value to continue from, so
 * `crc32c(b, crc32c(a)) === crc32c(concat(a, b))`. PostgreSQL's
 * INIT / COMP* / FIN sequence over several pieces is therefore a chain of
 * calls starting from 0.
 *
 * The WAL record CRC is not computed over the bytes in order: PostgreSQL
 * covers everything after the 24-byte header first, then the header's first
 * 20 bytes (up to, not including, xl_crc). `xlogRecordCrc` does exactly that.
 */
import { crc32c as nativeCrc32c } from "@node-rs/crc32";

/**
 * Below this many bytes a table-driven JavaScript loop beats the native call:
 * crossing into the addon costs ~250 ns, about what the loop needs for a few
 * hundred bytes. Most WAL records are far shorter; full-page images longer.
 */
const NATIVE_MIN_BYTES = 256;

/**
 * Slicing-by-8 tables for the reflected Castagnoli polynomial 0x82F63B78
 * (also used by the layer writer's fused copy-and-checksum loop,
 * pageserver/layers/crc_copy.ts).
 */
export const CRC32C_TABLES: readonly Int32Array[] = (() => {
  const t: Int32Array[] = [];
  for (let k = 0; k < 8; k++) t.push(new Int32Array(256));
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let j = 0; j < 8; j++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[0]![i] = c;
  }
  for (let i = 0; i < 256; i++) {
    let c = t[0]![i]!;
    for (let k = 1; k < 8; k++) {
      c = t[0]![c & 0xff]! ^ (c >>> 8);
      t[k]![i] = c;
    }
  }
  return t;
})();
const [T0, T1, T2, T3, T4, T5, T6, T7] = CRC32C_TABLES as [Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array];

/** CRC-32C of `data`, continuing from a previous finalized CRC (0 to start). */
export function crc32c(data: Uint8Array, previous = 0): number {
  return crc32cRange(data, 0, data.length, previous);
}

/** CRC-32C of data[start, end), continuing from a previous finalized CRC; no subarray needed. */
export function crc32cRange(data: Uint8Array, start: number, end: number, previous = 0): number {
  const len = end - start;
  if (len >= NATIVE_MIN_BYTES) return nativeCrc32c(data.subarray(start, end), previous) >>> 0;
  let c = ~previous;
  let i = start;
  const end8 = start + (len & ~7);
  while (i < end8) {
    const a = c ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24));
    c =
      T7[a & 0xff]! ^
      T6[(a >>> 8) & 0xff]! ^
      T5[(a >>> 16) & 0xff]! ^
      T4[a >>> 24]! ^
      T3[data[i + 4]!]! ^
      T2[data[i + 5]!]! ^
      T1[data[i + 6]!]! ^
      T0[data[i + 7]!]!;
    i += 8;
  }
  while (i < end) c = T0[(c ^ data[i++]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** sizeof(XLogRecord): the fixed record header. */
const SIZE_OF_XLOG_RECORD = 24;
/** offsetof(XLogRecord, xl_crc): the header bytes the CRC covers. */
const XLOG_RECORD_CRC_OFFSET = 20;

/**
 * PostgreSQL's CRC of one WAL record held contiguously in `record`
 * (`record.length` must be xl_tot_len, at least the 24-byte header):
 * CRC over bytes [24, len), continued over bytes [0, 20).
 */
export function xlogRecordCrc(record: Uint8Array): number {
  return xlogRecordCrcAt(record, 0, record.length);
}

/** xlogRecordCrc of the record occupying buf[off, off + totalLength). */
export function xlogRecordCrcAt(buf: Uint8Array, off: number, totalLength: number): number {
  if (totalLength < SIZE_OF_XLOG_RECORD || off < 0 || off + totalLength > buf.length) {
    throw new RangeError(`xlogRecordCrc: record of ${totalLength} bytes at ${off} does not fit a ${buf.length}-byte buffer or its header`);
  }
  const body = crc32cRange(buf, off + SIZE_OF_XLOG_RECORD, off + totalLength, 0);
  return crc32cRange(buf, off, off + XLOG_RECORD_CRC_OFFSET, body);
}
