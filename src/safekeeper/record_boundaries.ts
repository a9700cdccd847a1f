/**
 * RecordBoundaryTracker — where WAL records end, found without decoding them.
 *
 * Place in the data flow: WalStorage feeds it every byte the safekeeper's
 * write path stores (WAL from the compute or a peer) and asks it for the end
 * of the last complete record (`flushRecordLsn`, consensus positions, solo
 * commit_lsn). It replaces full decoding (WalStreamDecoder: CRC, block
 * references, a copy of every record) on that path, which cost a large share
 * of the safekeeper's CPU per transaction; PostgreSQL's walreceiver does not
 * decode either. Crash recovery still decodes with CRC checks (WalStorage.open),
 * so what the tracker reports after a restart was validated.
 *
 * What it reads (PostgreSQL 15: access/xlog_internal.h, access/xlogrecord.h,
 * xlogreader.c is the model for the rules):
 * * every page header at an 8 KiB boundary: 40 bytes at a segment start, 24
 *   elsewhere; checked: magic and page address; used: the contrecord flags
 *   and xlp_rem_len;
 * * of each record only xl_tot_len (bytes 0..3), xl_info (16) and xl_rmid
 *   (17), gathered across chunk and page boundaries (the header may be split
 *   by a page header); the rest of the record is skipped by counting, page
 *   headers excluded;
 * * after a record: zero padding to the next MAXALIGN (8) boundary, or after
 *   XLOG_SWITCH the rest of the segment.
 * * Starting at a page boundary whose page begins with the tail of an earlier
 *   record (XLP_FIRST_IS_CONTRECORD), that tail is skipped and not reported
 *   (its start is unknown), as xlogreader's XLogFindNextRecord does.
 * * A page that lacks the contrecord flag while a record is unfinished:
 *   with XLP_FIRST_IS_OVERWRITE_CONTRECORD the unfinished record was
 *   abandoned by its server and a new one starts after the header; without,
 *   the stream is invalid.
 *
 * Invariants: no copy of fed data is kept (at most 20 page-header and 18
 * record-header bytes are gathered); work per chunk is O(records + pages),
 * not O(bytes). Positions are JS numbers (exact to 2^53). Failure is sticky:
 * after invalid bytes (bad magic or page address, impossible length, missing
 * contrecord) `failure` says why, with the LSN, and nothing more is reported;
 * WalStorage restarts tracking at the next segment start. No CRC: the
 * boundaries are those of the bytes as written.
 */
import { StrataError } from "../lib/errors.js";
import { formatLsn, lsn as toLsn, XLOG_BLCKSZ, type Lsn } from "../lib/lsn.js";
import {
  SIZE_OF_XLOG_LONG_PHD,
  SIZE_OF_XLOG_SHORT_PHD,
  XLOG_PAGE_MAGIC,
  XLP_FIRST_IS_CONTRECORD,
  XLP_FIRST_IS_OVERWRITE_CONTRECORD,
} from "../formats/wal/xlog_page.js";
import { SIZE_OF_XLOG_RECORD, XLOG_RECORD_MAX_SIZE_BYTES } from "../formats/wal/xlog_record.js";

/** RM_XLOG_ID and XLOG_SWITCH (catalog/pg_control.h): after it the rest of the segment is padding. */
const RM_XLOG_ID = 0;
const XLOG_SWITCH = 0x40;
/** Record header bytes the tracker needs: through xl_rmid (offset 17). */
const REC_HDR_NEEDED = 18;
/** Page header bytes it checks: magic, info, timeline, page address, xlp_rem_len. */
const PAGE_HDR_NEEDED = 20;
/** MAXALIGN: records start at multiples of 8. */
const MAXALIGN = 8;

const M_REC_HDR = 0;
const M_REC_BODY = 1;
const M_SKIP = 2;
const M_FAILED = 3;

export class RecordBoundaryTracker {
  readonly startLsn: Lsn;
  private readonly segSize: number;
  private pos: number;
  private mode: number = M_REC_HDR;
  /** Gathering a page header (at pos - hdrGot) before continuing in `mode`. */
  private inPageHeader = false;
  private hdrGot = 0;
  private hdrSize = 0;
  private readonly hdr = new Uint8Array(PAGE_HDR_NEEDED);
  /** The first page header may introduce the tail of a record that began before startLsn. */
  private atStartPage: boolean;
  private readonly rec = new Uint8Array(REC_HDR_NEEDED);
  private recGot = 0;
  private recStart = 0;
  /** Record bytes still to skip (page headers not counted). */
  private recLeft = 0;
  private recIsSwitch = false;
  /** The record being skipped is the tail of one that began before startLsn: not reported. */
  private recUnreported = false;
  private skipTo = 0;
  private lastStart = -1;
  private lastEnd = -1;
  private count = 0;
  private fail_: StrataError | undefined;

  /** `startLsn`: a page boundary, or a MAXALIGNed record start past the page header. */
  constructor(startLsn: Lsn, opts: { walSegSizeBytes: number }) {
    const pageOff = Number(startLsn % BigInt(XLOG_BLCKSZ));
    if (startLsn % BigInt(MAXALIGN) !== 0n || (pageOff !== 0 && pageOff < SIZE_OF_XLOG_SHORT_PHD)) {
      throw new StrataError("invalid_argument", `Cannot track WAL records from ${formatLsn(startLsn)}: not a page boundary nor a MAXALIGNed record position after the page header`);
    }
    this.startLsn = startLsn;
    this.segSize = opts.walSegSizeBytes;
    this.pos = Number(startLsn);
    this.atStartPage = pageOff === 0;
  }

  /** LSN of the next byte `feed` expects. */
  get feedLsn(): Lsn {
    return toLsn(BigInt(this.pos));
  }

  get failure(): StrataError | undefined {
    return this.fail_;
  }

  /** Complete records seen so far. */
  get recordCount(): number {
    return this.count;
  }

  /** Start of the last complete record, if any. */
  get lastRecordLsn(): Lsn | undefined {
    return this.lastStart < 0 ? undefined : toLsn(BigInt(this.lastStart));
  }

  /** End of the last complete record (just past its last byte), if any. */
  get lastRecordEndLsn(): Lsn | undefined {
    return this.lastEnd < 0 ? undefined : toLsn(BigInt(this.lastEnd));
  }

  /** Consumes the next bytes of the stream (the tracker keeps no reference to them). */
  feed(bytes: Uint8Array): void {
    const n = bytes.length;
    let i = 0;
    while (i < n) {
      if (this.mode === M_FAILED) {
        this.pos += n - i;
        return;
      }
      if (this.mode === M_SKIP) {
        const take = Math.min(n - i, this.skipTo - this.pos);
        i += take;
        this.pos += take;
        if (this.pos === this.skipTo) this.mode = M_REC_HDR;
        continue;
      }
      const pageOff = this.pos % XLOG_BLCKSZ;
      if (pageOff === 0 && !this.inPageHeader) {
        this.inPageHeader = true;
        this.hdrGot = 0;
        this.hdrSize = this.pos % this.segSize === 0 ? SIZE_OF_XLOG_LONG_PHD : SIZE_OF_XLOG_SHORT_PHD;
      }
      if (this.inPageHeader) {
        const take = Math.min(n - i, this.hdrSize - this.hdrGot);
        for (let k = 0; k < take && this.hdrGot + k < PAGE_HDR_NEEDED; k++) this.hdr[this.hdrGot + k] = bytes[i + k]!;
        this.hdrGot += take;
        i += take;
        this.pos += take;
        if (this.hdrGot === this.hdrSize) {
          this.inPageHeader = false;
          this.pageHeaderDone();
        }
        continue;
      }
      const toPageEnd = XLOG_BLCKSZ - pageOff;
      if (this.mode === M_REC_BODY) {
        const take = Math.min(n - i, this.recLeft, toPageEnd);
        i += take;
        this.pos += take;
        this.recLeft -= take;
        if (this.recLeft === 0) this.finishRecord();
        continue;
      }
      // M_REC_HDR: gather xl_tot_len .. xl_rmid.
      if (this.recGot === 0) this.recStart = this.pos;
      const take = Math.min(n - i, REC_HDR_NEEDED - this.recGot, toPageEnd);
      for (let k = 0; k < take; k++) this.rec[this.recGot + k] = bytes[i + k]!;
      this.recGot += take;
      i += take;
      this.pos += take;
      if (this.recGot === REC_HDR_NEEDED) this.beginRecord();
    }
  }

  private fail(at: number, why: string): void {
    this.fail_ = new StrataError("corrupt_data", `${why} at ${formatLsn(toLsn(BigInt(at)))}`);
    this.mode = M_FAILED;
  }

  private beginRecord(): void {
    const r = this.rec;
    const totLen = (r[0]! | (r[1]! << 8) | (r[2]! << 16) | (r[3]! << 24)) >>> 0;
    if (totLen < SIZE_OF_XLOG_RECORD || totLen > XLOG_RECORD_MAX_SIZE_BYTES) return this.fail(this.recStart, `Invalid record length ${totLen}`);
    this.recIsSwitch = r[17] === RM_XLOG_ID && (r[16]! & 0xf0) === XLOG_SWITCH;
    this.recLeft = totLen - REC_HDR_NEEDED;
    this.recGot = 0;
    this.mode = M_REC_BODY;
  }

  private pageHeaderDone(): void {
    const h = this.hdr;
    const pageLsn = this.pos - this.hdrSize;
    const magic = h[0]! | (h[1]! << 8);
    if (magic !== XLOG_PAGE_MAGIC) return this.fail(pageLsn, `Invalid WAL page magic 0x${magic.toString(16)}`);
    const info = h[2]! | (h[3]! << 8);
    const addrLo = (h[8]! | (h[9]! << 8) | (h[10]! << 16) | (h[11]! << 24)) >>> 0;
    const addrHi = (h[12]! | (h[13]! << 8) | (h[14]! << 16) | (h[15]! << 24)) >>> 0;
    if (addrHi * 4294967296 + addrLo !== pageLsn) return this.fail(pageLsn, `Unexpected page address ${addrHi.toString(16).toUpperCase()}/${addrLo.toString(16).toUpperCase()}`);
    const remLen = (h[16]! | (h[17]! << 8) | (h[18]! << 16) | (h[19]! << 24)) >>> 0;
    const contrec = (info & XLP_FIRST_IS_CONTRECORD) !== 0;
    if (this.atStartPage) {
      this.atStartPage = false;
      if (contrec) {
        // The tail of a record that began before the start: skip it, unreported.
        if (remLen === 0) return this.fail(pageLsn, "Contrecord flag with a zero remaining length");
        this.recUnreported = true;
        this.recStart = -1;
        this.recLeft = remLen;
        this.mode = M_REC_BODY;
      }
      return;
    }
    const inRecord = this.mode === M_REC_BODY || this.recGot > 0;
    if (!inRecord) {
      if (contrec) return this.fail(pageLsn, "Contrecord flag on a page where no record continues");
      return;
    }
    if (!contrec) {
      if ((info & XLP_FIRST_IS_OVERWRITE_CONTRECORD) !== 0) {
        // The server abandoned the unfinished record; a new one starts here.
        this.recGot = 0;
        this.recUnreported = false;
        this.mode = M_REC_HDR;
        return;
      }
      return this.fail(pageLsn, `There is no contrecord flag (record at ${this.recStart < 0 ? "before the start" : formatLsn(toLsn(BigInt(this.recStart)))})`);
    }
    // xlp_rem_len is what is left of the record: check it where we know the record's length.
    if (this.mode === M_REC_BODY) {
      if (remLen !== this.recLeft) return this.fail(pageLsn, `Invalid contrecord length ${remLen} (expected ${this.recLeft})`);
    } else if (this.recGot >= 4) {
      const r = this.rec;
      const left = ((r[0]! | (r[1]! << 8) | (r[2]! << 16) | (r[3]! << 24)) >>> 0) - this.recGot;
      if (remLen !== left) return this.fail(pageLsn, `Invalid contrecord length ${remLen} (expected ${left})`);
    }
  }

  private finishRecord(): void {
    if (this.recUnreported) {
      this.recUnreported = false;
    } else {
      this.lastStart = this.recStart;
      this.lastEnd = this.pos;
      this.count++;
    }
    let next = Math.ceil(this.pos / MAXALIGN) * MAXALIGN;
    if (this.recIsSwitch) {
      const segOff = next % this.segSize;
      if (segOff !== 0) next += this.segSize - segOff;
      this.recIsSwitch = false;
    }
    this.recGot = 0;
    if (next > this.pos) {
      this.skipTo = next;
      this.mode = M_SKIP;
    } else {
      this.mode = M_REC_HDR;
    }
  }
}
