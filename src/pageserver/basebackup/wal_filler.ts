/**
 * Filler WAL for a base backup's generated segment: valid XLOG_NOOP records
 * from the first byte of X's segment up to X, where the checkpoint record
 * goes.
 *
 * Why: the synthesized segment (formats/wal/wal_synthesis.ts) needs only
 * page 0's header and X's page for PostgreSQL to start, and leaves the
 * pages in between zero. But a compute's WAL is consumed from *segment*
 * starts: a safekeeper creating a timeline for a new compute starts at the
 * beginning of the segment holding its first record, and so do
 * pg_receivewal and standbys. Reading zero pages there ends the WAL ("no
 * record"), so nothing after X would ever be accepted. With the filler,
 * the segment reads as one unbroken record chain (what pg_waldump shows:
 * NOOP, [NOOP,] CHECKPOINT_SHUTDOWN at X, then the compute's own WAL).
 *
 * Layout, P = the page holding X, h = its header size, tail = X - P - h
 * (record bytes on X's page before X):
 *   - X on the segment's first page: no filler here (the synthesizer's own
 *     one-record filler on that page already forms the chain);
 *   - tail >= 24: one NOOP from the segment's first record position ending
 *     exactly at P (the end of the previous page), then one NOOP of `tail`
 *     bytes from P + h to X;
 *   - tail of 8 or 16: one NOOP ending exactly at X, its last bytes on X's
 *     page as a continuation (XLP_FIRST_IS_CONTRECORD, rem_len = tail);
 *   - tail 0 (X right after P's header): one NOOP ending exactly at P, then
 *     P's header (no continuation).
 * Records are MAXALIGNed, page headers are 24 (40 on a segment's first
 * page) bytes, both multiples of 8, so the record lengths come out exact.
 * One NOOP may be nearly 16 MiB: PostgreSQL accepts records up to 1 GiB and
 * replays NOOP as nothing.
 *
 * Pure: values in, bytes out; one buffer of X's offset in its segment.
 * The big NOOP is never materialized: it is its 29-byte head (record
 * header and long data header) followed by zeros, so only the head and the
 * page headers are written into the (zero-filled) output, and its CRC runs
 * over a small reused zero buffer. Why: fresh memory costs a page fault per
 * 4 KiB on first touch (ms per MiB on the test VM), and building a
 * ~16 MiB record, copying it page by page and then into the segment touched
 * three times the segment's memory — a few tenths of a second of every
 * backup taken deep into a segment (CPU profiles of fullbackup).
 */
import { assert } from "../../lib/errors.js";
import { lsn, pageOffset, pageStart, segmentNumber, segmentStart, XLOG_BLCKSZ, type Lsn } from "../../lib/lsn.js";
import { RM_XLOG_ID, XLOG_NOOP } from "../../formats/wal/rmgr/xlog.js";
import { makePageHeader, SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD, writePageHeader, XLP_BKP_REMOVABLE } from "../../formats/wal/xlog_page.js";
import { encodeRecord, SIZE_OF_XLOG_RECORD, XLR_BLOCK_ID_DATA_LONG } from "../../formats/wal/xlog_record.js";
import { crc32c } from "../../formats/crc32c.js";

/** XLR_BLOCK_ID_DATA_SHORT + 1 length byte; and the long form's 1 + 4 bytes. */
const SHORT_DATA_HEADER_BYTES = 2;
const LONG_DATA_HEADER_BYTES = 5;
const SHORT_DATA_MAX_BYTES = 255;
/** The compute's PostgreSQL timeline (DESIGN §6: always 1). */
const FILLER_TLI = 1;

export interface WalFiller {
  /** The bytes of [segment start, X), page headers included. */
  readonly prefix: Uint8Array;
  /** Start of the last filler record: the checkpoint's xl_prev. */
  readonly lastRecordLsn: Lsn;
}

/** An XLOG_NOOP record of exactly `totalBytes` (a multiple of 8, >= 24). */
export function noopRecordOfLength(totalBytes: number, prevLsn: Lsn): Uint8Array {
  assert(totalBytes >= SIZE_OF_XLOG_RECORD && totalBytes % 8 === 0, `NOOP filler length ${totalBytes}`);
  const room = totalBytes - SIZE_OF_XLOG_RECORD;
  // A multiple of 8 never falls in the gap (255 + 2, 255 + 5] where neither data header form fits exactly.
  const data = room === 0 ? 0 : room - SHORT_DATA_HEADER_BYTES <= SHORT_DATA_MAX_BYTES ? room - SHORT_DATA_HEADER_BYTES : room - LONG_DATA_HEADER_BYTES;
  const rec = encodeRecord({ rmid: RM_XLOG_ID, info: XLOG_NOOP, prevLsn, mainData: new Uint8Array(data) });
  assert(rec.length === totalBytes, `NOOP filler of ${rec.length} bytes, wanted ${totalBytes}`);
  return rec;
}

/** Offset of xl_crc in the record header (after xl_tot_len, xl_xid, xl_prev, xl_info, xl_rmid and 2 padding bytes). */
const XL_CRC_OFFSET = 20;
/** A NOOP's bytes from here on are zeros when its data is longer than this: the head is the record header plus the long data header. */
const SPARSE_HEAD_BYTES = SIZE_OF_XLOG_RECORD + LONG_DATA_HEADER_BYTES;
/** NOOPs at least this long are laid out sparsely (head + zeros); shorter ones are encoded whole. */
const SPARSE_MIN_BYTES = 4096;
/** Zeros the sparse CRC runs over, piece by piece (one native call per piece). */
const ZEROS = new Uint8Array(64 * 1024);

/** A record to lay out: its first `head.length` bytes, then zeros up to `totalBytes`. */
interface SparseRecord {
  readonly head: Uint8Array;
  readonly totalBytes: number;
}

/**
 * An XLOG_NOOP record of exactly `totalBytes` (a multiple of 8, at least
 * SPARSE_MIN_BYTES) as its head; the rest of the record is zeros. The same
 * bytes as noopRecordOfLength (wal_filler.test.ts checks it), without
 * building them: encodeRecord lays out a long-form head, then the lengths
 * and the CRC (body, i.e. the data header and the zeros, then the first 20
 * header bytes) are set for the real size.
 */
export function sparseNoopRecord(totalBytes: number, prevLsn: Lsn): SparseRecord {
  assert(totalBytes >= SPARSE_MIN_BYTES && totalBytes % 8 === 0, `sparse NOOP filler length ${totalBytes}`);
  const dataBytes = totalBytes - SPARSE_HEAD_BYTES;
  const head = encodeRecord({ rmid: RM_XLOG_ID, info: XLOG_NOOP, prevLsn, mainData: new Uint8Array(SHORT_DATA_MAX_BYTES + 1) }).slice(0, SPARSE_HEAD_BYTES);
  assert(head[SIZE_OF_XLOG_RECORD] === XLR_BLOCK_ID_DATA_LONG, "sparse NOOP head has the long data header");
  const dv = new DataView(head.buffer, head.byteOffset, head.length);
  dv.setUint32(0, totalBytes, true);
  dv.setUint32(SIZE_OF_XLOG_RECORD + 1, dataBytes, true);
  let crc = crc32c(head.subarray(SIZE_OF_XLOG_RECORD));
  for (let left = dataBytes; left > 0; left -= ZEROS.length) crc = crc32c(left >= ZEROS.length ? ZEROS : ZEROS.subarray(0, left), crc);
  dv.setUint32(XL_CRC_OFFSET, crc32c(head.subarray(0, XL_CRC_OFFSET), crc), true);
  return { head, totalBytes };
}

/** A filler NOOP of exactly `totalBytes`, sparse when it is long. */
function fillerNoop(totalBytes: number, prevLsn: Lsn): SparseRecord {
  if (totalBytes >= SPARSE_MIN_BYTES) return sparseNoopRecord(totalBytes, prevLsn);
  const rec = noopRecordOfLength(totalBytes, prevLsn);
  return { head: rec, totalBytes };
}

/** Record bytes a record starting right after the segment's long header needs to end exactly at `end` (page headers crossed excluded). */
function recordBytesUntil(segStart: Lsn, end: Lsn): number {
  const span = Number(end - segStart);
  const pagesCrossed = Math.ceil(span / XLOG_BLCKSZ) - 1; // page starts strictly inside (segStart, end)
  return span - SIZE_OF_XLOG_LONG_PHD - pagesCrossed * SIZE_OF_XLOG_SHORT_PHD;
}

/**
 * Lays `records` one after another from the segment's first record
 * position into `out` (= the segment's first `out.length` bytes), page
 * headers included, each record MAXALIGNed, as PostgreSQL's WAL insertion
 * does. A page that starts while a record continues gets XLP_FIRST_IS_CONTRECORD
 * with the remaining length. Returns the records' LSNs and the insert position.
 * `out` must be zero-filled: a record's bytes past its head are left as they are.
 */
function layOut(out: Uint8Array, segStart: Lsn, records: readonly SparseRecord[], systemId: bigint, walSegSizeBytes: number): { lsns: Lsn[]; end: number } {
  let pos = 0;
  const header = (remLen: number) => {
    pos += writePageHeader(out, pos, makePageHeader({ pageAddr: lsn(segStart + BigInt(pos)), tli: FILLER_TLI, remLen, walSegSizeBytes, systemId, extraInfo: XLP_BKP_REMOVABLE }));
  };
  const lsns: Lsn[] = [];
  for (const { head, totalBytes } of records) {
    if (pos % XLOG_BLCKSZ === 0) header(0);
    lsns.push(lsn(segStart + BigInt(pos)));
    for (let done = 0; done < totalBytes; ) {
      if (pos % XLOG_BLCKSZ === 0) header(totalBytes - done);
      const n = Math.min(totalBytes - done, XLOG_BLCKSZ - (pos % XLOG_BLCKSZ));
      if (done < head.length) out.set(head.subarray(done, Math.min(done + n, head.length)), pos);
      pos += n;
      done += n;
    }
    pos = Math.ceil(pos / 8) * 8;
  }
  return { lsns, end: pos };
}

/**
 * The filler for a checkpoint at `x` (MAXALIGNed, not inside a page
 * header), or undefined when `x` is on its segment's first page.
 */
export function walFillerBefore(x: Lsn, systemId: bigint, walSegSizeBytes: number): WalFiller | undefined {
  const segStart = segmentStart(segmentNumber(x, walSegSizeBytes), walSegSizeBytes);
  const p = pageStart(x);
  if (p === segStart) return undefined;
  const tail = pageOffset(x) - SIZE_OF_XLOG_SHORT_PHD;
  assert(tail >= 0 && tail % 8 === 0, "filler: X inside a page header or unaligned");
  const total = Number(x - segStart);
  const out = new Uint8Array(total);
  const bigEnd = tail === 8 || tail === 16 ? x : p;
  const big = fillerNoop(recordBytesUntil(segStart, bigEnd), lsn(0));
  // the second NOOP's xl_prev is the first's LSN: right after the long header
  const records = tail >= SIZE_OF_XLOG_RECORD ? [big, fillerNoop(tail, lsn(segStart + BigInt(SIZE_OF_XLOG_LONG_PHD)))] : [big];
  const { lsns, end } = layOut(out, segStart, records, systemId, walSegSizeBytes);
  if (tail === 0) {
    // the record ended exactly at P: X's page header, no continuation
    assert(end === total - SIZE_OF_XLOG_SHORT_PHD, "filler: first record ends at X's page");
    writePageHeader(out, end, makePageHeader({ pageAddr: p, tli: FILLER_TLI, remLen: 0, walSegSizeBytes, systemId, extraInfo: XLP_BKP_REMOVABLE }));
  } else {
    assert(end === total, `filler covers ${end} bytes, wanted ${total}`);
  }
  return { prefix: out, lastRecordLsn: lsns.at(-1)! };
}
