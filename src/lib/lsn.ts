/**
 * LSN — a position in the write-ahead log.
 *
 * PostgreSQL's XLogRecPtr is an unsigned 64-bit byte offset into the
 * conceptually infinite WAL stream. We represent it as a branded `bigint` so
 * an LSN can never be confused with a length, a block number or a plain
 * number, and so arithmetic is exact across the full 64-bit range (JavaScript
 * numbers lose precision above 2^53).
 *
 * Text form is PostgreSQL's `X/Y`: the high and low 32-bit halves in
 * upper-case hex without leading zeros (`0/16B3748`). Parsing accepts either
 * case. Arithmetic helpers check for overflow and underflow: an LSN outside
 * [0, 2^64) is a bug, not a value.
 *
 * Segment and page math follow xlog_internal.h: WAL is cut into segments of
 * `walSegSizeBytes` (16 MiB by default) and pages of XLOG_BLCKSZ (8 KiB).
 */

export type Lsn = bigint & { readonly __brand: "Lsn" };

export const LSN_MAX = (1n << 64n) - 1n;
/** InvalidXLogRecPtr. */
export const INVALID_LSN = 0n as Lsn;
/** XLOG_BLCKSZ: size of a WAL page. */
export const XLOG_BLCKSZ = 8192;
/** Default WAL segment size (initdb --wal-segsize default). */
export const DEFAULT_WAL_SEG_SIZE_BYTES = 16 * 1024 * 1024;

export class LsnError extends Error {
  override name = "LsnError";
}

/** Makes an LSN from a bigint or a safe integer, checking the 64-bit range. */
export function lsn(value: bigint | number): Lsn {
  let v: bigint;
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new LsnError(`Cannot make LSN from ${value}: not a safe integer`);
    v = BigInt(value);
  } else {
    v = value;
  }
  if (v < 0n || v > LSN_MAX) throw new LsnError(`Cannot make LSN from ${v}: outside [0, 2^64)`);
  return v as Lsn;
}

const LSN_TEXT = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

/** Parses PostgreSQL's `X/Y` form. */
export function parseLsn(text: string): Lsn {
  if (!text.includes("/")) throw new LsnError(`Cannot parse LSN "${text}": missing "/"`);
  const m = LSN_TEXT.exec(text);
  if (!m) throw new LsnError(`Cannot parse LSN "${text}": expected X/Y with 1-8 hex digits each`);
  return ((BigInt("0x" + m[1]) << 32n) | BigInt("0x" + m[2])) as Lsn;
}

/** Formats as PostgreSQL does: `%X/%X`. */
export function formatLsn(l: Lsn | bigint): string {
  const hi = (l >> 32n) & 0xffffffffn;
  const lo = l & 0xffffffffn;
  return `${hi.toString(16).toUpperCase()}/${lo.toString(16).toUpperCase()}`;
}

/** l + delta, checked. */
export function lsnAdd(l: Lsn, delta: bigint | number): Lsn {
  return lsn(l + BigInt(delta));
}

/** a - b as a byte count; throws if b > a. */
export function lsnDiff(a: Lsn, b: Lsn): bigint {
  if (b > a) throw new LsnError(`Cannot subtract ${formatLsn(b)} from ${formatLsn(a)}: result negative`);
  return a - b;
}

export function lsnMax(a: Lsn, b: Lsn): Lsn {
  return a > b ? a : b;
}
export function lsnMin(a: Lsn, b: Lsn): Lsn {
  return a < b ? a : b;
}

/** Rounds up to a multiple of `align` (a power of two), e.g. MAXALIGN = 8. */
export function lsnAlign(l: Lsn, align = 8): Lsn {
  const a = BigInt(align);
  return lsn((l + a - 1n) & ~(a - 1n));
}

/** XLogSegNo containing `l` (XLByteToSeg). */
export function segmentNumber(l: Lsn, walSegSizeBytes = DEFAULT_WAL_SEG_SIZE_BYTES): bigint {
  return l / BigInt(walSegSizeBytes);
}

/** Offset of `l` inside its segment (XLogSegmentOffset). */
export function segmentOffset(l: Lsn, walSegSizeBytes = DEFAULT_WAL_SEG_SIZE_BYTES): number {
  return Number(l % BigInt(walSegSizeBytes));
}

/** First LSN of segment `segNo` (XLogSegNoOffsetToRecPtr with offset 0). */
export function segmentStart(segNo: bigint, walSegSizeBytes = DEFAULT_WAL_SEG_SIZE_BYTES): Lsn {
  return lsn(segNo * BigInt(walSegSizeBytes));
}

/** Offset of `l` inside its 8 KiB WAL page. */
export function pageOffset(l: Lsn): number {
  return Number(l % BigInt(XLOG_BLCKSZ));
}

/** Start of the WAL page containing `l`. */
export function pageStart(l: Lsn): Lsn {
  return (l - (l % BigInt(XLOG_BLCKSZ))) as Lsn;
}

/**
 * WAL file name for (timeline, segment): 24 upper-case hex digits,
 * `TTTTTTTTXXXXXXXXYYYYYYYY` as XLogFileName writes it.
 */
export function walFileName(timeline: number, segNo: bigint, walSegSizeBytes = DEFAULT_WAL_SEG_SIZE_BYTES): string {
  const segsPerXlogId = 0x100000000n / BigInt(walSegSizeBytes);
  const hex8 = (v: bigint | number) => v.toString(16).toUpperCase().padStart(8, "0");
  return hex8(timeline) + hex8(segNo / segsPerXlogId) + hex8(segNo % segsPerXlogId);
}

/** Parses a WAL file name (optionally with `.partial`) into timeline and segment number. */
export function parseWalFileName(
  name: string,
  walSegSizeBytes = DEFAULT_WAL_SEG_SIZE_BYTES,
): { timeline: number; segNo: bigint; partial: boolean } {
  const m = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$/.exec(name);
  if (!m) throw new LsnError(`Cannot parse WAL file name "${name}": expected 24 upper-case hex digits`);
  const segsPerXlogId = 0x100000000n / BigInt(walSegSizeBytes);
  const low = BigInt("0x" + m[3]);
  if (low >= segsPerXlogId) throw new LsnError(`Cannot parse WAL file name "${name}": segment part out of range`);
  return {
    timeline: Number.parseInt(m[1]!, 16),
    segNo: BigInt("0x" + m[2]) * segsPerXlogId + low,
    partial: m[4] !== undefined,
  };
}
