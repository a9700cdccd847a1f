/**
 * WalWriter — lays complete WAL records into pages, the inverse of
 * WalStreamDecoder.
 *
 * It produces the byte stream PostgreSQL 15's XLogInsert / CopyXLogRecordToWAL
 * would: records start MAXALIGNed; every page begins with a header (the long
 * one at segment starts); a record that does not fit continues on the next
 * page, whose header carries XLP_FIRST_IS_CONTRECORD and xlp_rem_len (the
 * record header itself may be split); alignment gaps are zero.
 *
 * Used by WAL synthesis (generated segments for fullbackup) and by tests that
 * need WAL with every page-boundary shape. The output is a contiguous stream
 * starting at `startLsn`: if that is inside a page, no page header is written
 * for that first page (the caller owns the bytes before it), exactly what a
 * walsender streaming from a record start sends. Pure, in memory; `take()`
 * hands out what was produced so far.
 */
import { StrataError } from "../../lib/errors.js";
import { DEFAULT_WAL_SEG_SIZE_BYTES, formatLsn, XLOG_BLCKSZ, type Lsn } from "../../lib/lsn.js";
import { isValidWalSegSize, makePageHeader, SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD, writePageHeader, XLP_BKP_REMOVABLE } from "./xlog_page.js";
import { SIZE_OF_XLOG_RECORD } from "./xlog_record.js";

const MAXALIGN = 8;

export interface WalWriterOptions {
  /** Where the stream starts: a page boundary, or a MAXALIGNed position after a page header. */
  startLsn: Lsn;
  walSegSizeBytes?: number;
  /** Timeline written into page headers (default 1). */
  tli?: number;
  /** System identifier for long page headers (default 0). */
  systemId?: bigint;
  /** xlp_info bits added to every page (default XLP_BKP_REMOVABLE, as a server outside a base backup writes). */
  extraPageInfo?: number;
}

export class WalWriter {
  readonly startLsn: Lsn;
  readonly walSegSizeBytes: number;
  private readonly tli: number;
  private readonly systemId: bigint;
  private readonly extraPageInfo: number;
  private buf = new Uint8Array(64 * 1024);
  /** Bytes written into buf (stream position relative to startLsn). */
  private len = 0;
  /** Bytes already handed out by take(). */
  private taken = 0;

  constructor(opts: WalWriterOptions) {
    const seg = opts.walSegSizeBytes ?? DEFAULT_WAL_SEG_SIZE_BYTES;
    if (!isValidWalSegSize(seg)) throw new StrataError("invalid_argument", `Invalid WAL segment size ${seg}`);
    const pageOff = Number(opts.startLsn % BigInt(XLOG_BLCKSZ));
    if (opts.startLsn % BigInt(MAXALIGN) !== 0n || (pageOff !== 0 && pageOff < SIZE_OF_XLOG_SHORT_PHD)) {
      throw new StrataError("invalid_argument", `WalWriter cannot start at ${formatLsn(opts.startLsn)}`);
    }
    this.startLsn = opts.startLsn;
    this.walSegSizeBytes = seg;
    this.tli = opts.tli ?? 1;
    this.systemId = opts.systemId ?? 0n;
    this.extraPageInfo = opts.extraPageInfo ?? XLP_BKP_REMOVABLE;
  }

  /** LSN where the next record will start (page header not yet counted if at a page boundary). */
  get insertLsn(): Lsn {
    return (this.startLsn + BigInt(this.len)) as Lsn;
  }

  /** LSN the next appended record will get (past the page header if one is due). */
  get nextRecordLsn(): Lsn {
    const at = this.insertLsn;
    if (this.pageOffset() !== 0) return at;
    const long = at % BigInt(this.walSegSizeBytes) === 0n;
    return (at + BigInt(long ? SIZE_OF_XLOG_LONG_PHD : SIZE_OF_XLOG_SHORT_PHD)) as Lsn;
  }

  /**
   * Appends one complete record (as encodeRecord builds it; its xl_prev must
   * already be right) and returns where it landed: its LSN (after any page
   * header) and its end (just past its last byte).
   */
  appendRecord(record: Uint8Array): { lsn: Lsn; endLsn: Lsn } {
    if (record.length < SIZE_OF_XLOG_RECORD) throw new StrataError("invalid_argument", "appendRecord: shorter than a record header");
    if (this.pageOffset() === 0) this.writePageHeader(0);
    const lsn = this.insertLsn;
    let done = 0;
    while (done < record.length) {
      if (this.pageOffset() === 0) this.writePageHeader(record.length - done);
      const n = Math.min(record.length - done, XLOG_BLCKSZ - this.pageOffset());
      this.write(record.subarray(done, done + n));
      done += n;
    }
    const endLsn = this.insertLsn;
    const pad = (MAXALIGN - (this.len % MAXALIGN)) % MAXALIGN;
    if (pad > 0) this.write(new Uint8Array(pad));
    return { lsn, endLsn };
  }

  /**
   * Fills the rest of the current segment as PostgreSQL does after an
   * XLOG_SWITCH record: zeroed pages with ordinary headers.
   */
  padToSegmentEnd(): void {
    for (;;) {
      const segOff = Number(this.insertLsn % BigInt(this.walSegSizeBytes));
      if (segOff === 0) return;
      if (this.pageOffset() === 0) this.writePageHeader(0);
      this.write(new Uint8Array(XLOG_BLCKSZ - this.pageOffset()));
    }
  }

  /** The bytes produced since the previous take() (or since the start). */
  take(): Uint8Array {
    const out = this.buf.slice(this.taken, this.len);
    this.taken = this.len;
    return out;
  }

  private pageOffset(): number {
    return Number(this.insertLsn % BigInt(XLOG_BLCKSZ));
  }

  private writePageHeader(remLen: number): void {
    const hdr = makePageHeader({
      pageAddr: this.insertLsn,
      tli: this.tli,
      remLen,
      walSegSizeBytes: this.walSegSizeBytes,
      systemId: this.systemId,
      extraInfo: this.extraPageInfo,
    });
    this.reserve(SIZE_OF_XLOG_SHORT_PHD * 2);
    this.len += writePageHeader(this.buf, this.len, hdr);
  }

  private write(bytes: Uint8Array): void {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length;
    while (cap < this.len + n) cap *= 2;
    const grown = new Uint8Array(cap);
    grown.set(this.buf.subarray(0, this.len));
    this.buf = grown;
  }
}
