/**
 * RecordBoundaryTracker — finds where WAL records end without decoding them.
 *
 * Place in the data flow: the safekeeper's live write path (WalStorage)
 * needs only record boundaries (the end of the last complete record), not
 * record contents; PostgreSQL's walreceiver does not validate records
 * either. Full decoding with CRC (WalStreamDecoder) costs several times more
 * CPU than writing the bytes, so the write path uses this tracker and crash
 * recovery keeps the validating decoder.
 *
 * What it reads (PostgreSQL 15 layout, xlog_internal.h / xlogrecord.h):
 * * each page header (magic, info flags, pageaddr, xlp_rem_len) — 24 bytes,
 *   40 with XLP_LONG_HEADER at segment starts;
 * * of each record only xl_tot_len (bytes 0..3), xl_info (16) and xl_rmid
 *   (17) — the latter two to recognise XLOG_SWITCH, after which the rest of
 *   the segment is padding. The record header itself may be split by a page
 *   boundary. Everything else is skipped by counting.
 * * Records are MAXALIGNed; a start at a page boundary skips the remainder
 *   of an earlier record (xlp_rem_len), as the full decoder does.
 *
 * Invariants: no copies of fed data (at most 40 header bytes are gathered
 * when split across chunks); positions are JS numbers (exact to 2^53).
 * Checks are cheap sanity checks (magic, pageaddr, contrecord flag and
 * length, xl_tot_len range); on failure the tracker stops for good and
 * `failure` says why (a StrataError with the LSN). No CRC: the boundaries it
 * reports are those of bytes as written, not validated records.
 */
import { StrataError } from "../../lib/errors.js";
import { formatLsn, lsn as toLsn, XLOG_BLCKSZ, type Lsn } from "../../lib/lsn.js";
import {
  SIZE_OF_XLOG_LONG_PHD,
  SIZE_OF_XLOG_SHORT_PHD,
  XLOG_PAGE_MAGIC,
  XLP_FIRST_IS_CONTRECORD,
  XLP_FIRST_IS_OVERWRITE_CONTRECORD,
  XLP_LONG_HEADER,
} from "./xlog_page.js";
import { SIZE_OF_XLOG_RECORD, XLOG_RECORD_MAX_SIZE_BYTES } from "./xlog_record.js";

/** RM_XLOG_ID and XLOG_SWITCH (catalog/pg_control.h): after it the segment is padding. */
const RM_XLOG_ID = 0;
const XLOG_SWITCH = 0x40;
/** Bytes of the record header we need: through xl_rmid (offset 17). */
const REC_HDR_NEEDED = 18;
/** MAXALIGN: records start at multiples of 8. */
const MAXALIGN = 8;

const S_PAGE_HDR = 0;
const S_REC_HDR = 1;
const S_REC_BODY = 2;
const S_SKIP = 3;
const S_FAILED = 4;

export class RecordBoundaryTracker {
  readonly startLsn: Lsn;
  private readonly segSize: number;
  private pos: number;
  private state: number;
  /** State to return to after a page header, when inside a record. */
  private inRecord = false;
  private skippingContrecord: boolean;
  /** Skip target; `skipToPageHdr` when it is a page boundary whose header must be read. */
  private skipTo = 0;
  private readonly hdr = new Uint8Array(SIZE_OF_XLOG_LONG_PHD);
  private hdrGot = 0;
  private readonly rec = new Uint8Array(REC_HDR_NEEDED);
  private recGot = 0;
  private recStart = 0;
  private recLeft = 0;
  private recIsSwitch = false;
  private lastLsnNum = -1;
  private lastEndNum = -1;
  private count = 0;
  private fail_: StrataError | undefined;
  private readonly onRecord: ((lsn: number, endLsn: number) => void) | undefined;

  constructor(startLsn: Lsn, opts: { walSegSizeBytes: number; onRecord?: (lsn: number, endLsn: number) => void }) {
    this.startLsn = startLsn;
    this.segSize = opts.walSegSizeBytes;
    this.pos = Number(startLsn);
    this.onRecord = opts.onRecord;
    const atPage = this.pos % XLOG_BLCKSZ === 0;
    this.state = atPage ? S_PAGE_HDR : S_REC_HDR;
    this.skippingContrecord = atPage;
    if (!atPage) this.recStart = this.pos;
  }

  /** LSN just past the last byte fed. */
  get feedLsn(): Lsn {
    return toLsn(BigInt(this.pos));
  }

  get failure(): StrataError | undefined {
    return this.fail_;
  }

  /** Records completed so far. */
  get recordCount(): number {
    return this.count;
  }

  /** The last complete record, if any. */
  get lastRecord(): { lsn: Lsn; endLsn: Lsn } | undefined {
    if (this.lastEndNum < 0) return undefined;
    return { lsn: toLsn(BigInt(this.lastLsnNum)), endLsn: toLsn(BigInt(this.lastEndNum)) };
  }

  /** Consumes the next bytes of the stream. After a failure it does nothing. */
  feed(bytes: Uint8Array): void {
    const n = bytes.length;
    let i = 0;
    while (i < n) {
      const st = this.state;
      if (st === S_FAILED) {
        this.pos += n - i;
        return;
      }
      if (st === S_SKIP) {
        const take = Math.min(n - i, this.skipTo - this.pos);
        i += take;
        this.pos += take;
        if (this.pos === this.skipTo) this.afterSkip();
        continue;
      }
      if (st === S_REC_BODY) {
        const toPage = XLOG_BLCKSZ - (this.pos % XLOG_BLCKSZ);
        const take = Math.min(n - i, this.recLeft, toPage);
        i += take;
        this.pos += take;
        this.recLeft -= take;
        if (this.recLeft === 0) this.finishRecord();
        else if (take === toPage) this.enterPageHeader(true);
        continue;
      }
      if (st === S_REC_HDR) {
        const toPage = XLOG_BLCKSZ - (this.pos % XLOG_BLCKSZ);
        if (this.recGot === 0 && toPage >= REC_HDR_NEEDED && n - i >= REC_HDR_NEEDED) {
          // Fast path: the header lies in this chunk and page.
          const totLen = (bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24)) >>> 0;
          if (!this.beginRecord(totLen, bytes[i + 16]!, bytes[i + 17]!)) continue;
          this.state = S_REC_BODY;
          const take = Math.min(n - i, this.recLeft, toPage);
          i += take;
          this.pos += take;
          this.recLeft -= take;
          if (this.recLeft === 0) this.finishRecord();
          else if (take === toPage) this.enterPageHeader(true);
          continue;
        }
        if (this.recGot === 0) this.recStart = this.pos;
        const take = Math.min(n - i, REC_HDR_NEEDED - this.recGot, toPage);
        this.rec.set(bytes.subarray(i, i + take), this.recGot);
        this.recGot += take;
        i += take;
        this.pos += take;
        if (this.recGot === REC_HDR_NEEDED) {
          const r = this.rec;
          const totLen = (r[0]! | (r[1]! << 8) | (r[2]! << 16) | (r[3]! << 24)) >>> 0;
          this.recGot = 0;
          if (!this.beginRecord(totLen, r[16]!, r[17]!, this.recStart)) continue;
          // recLeft counts from the record start; the header bytes are consumed already.
          this.recLeft -= REC_HDR_NEEDED;
          if (this.recLeft === 0) this.finishRecord();
          else if (this.pos % XLOG_BLCKSZ === 0) this.enterPageHeader(true);
          else this.state = S_REC_BODY;
        } else if (take === toPage) {
          this.enterPageHeader(true);
        }
        continue;
      }
      // S_PAGE_HDR
      const need = this.hdrGot < SIZE_OF_XLOG_SHORT_PHD ? SIZE_OF_XLOG_SHORT_PHD : SIZE_OF_XLOG_LONG_PHD;
      const take = Math.min(n - i, need - this.hdrGot);
      this.hdr.set(bytes.subarray(i, i + take), this.hdrGot);
      this.hdrGot += take;
      i += take;
      this.pos += take;
      if (this.hdrGot < need) continue;
      const info = this.hdr[2]! | (this.hdr[3]! << 8);
      if (need === SIZE_OF_XLOG_SHORT_PHD && (info & XLP_LONG_HEADER) !== 0) continue; // read the long part
      this.pageHeaderDone(info);
    }
  }

  private enterPageHeader(inRecord: boolean): void {
    this.inRecord = inRecord;
    this.hdrGot = 0;
    this.state = S_PAGE_HDR;
  }

  private fail(at: number, why: string): void {
    this.fail_ = new StrataError("corrupt_data", `${why} at ${formatLsn(toLsn(BigInt(at)))}`);
    this.state = S_FAILED;
  }

  private pageHeaderDone(info: number): void {
    const h = this.hdr;
    const hdrSize = this.hdrGot;
    const pageLsn = this.pos - hdrSize;
    this.hdrGot = 0;
    const magic = h[0]! | (h[1]! << 8);
    if (magic !== XLOG_PAGE_MAGIC) return this.fail(pageLsn, `Invalid WAL page magic 0x${magic.toString(16)}`);
    const addrLo = (h[8]! | (h[9]! << 8) | (h[10]! << 16) | (h[11]! << 24)) >>> 0;
    const addrHi = (h[12]! | (h[13]! << 8) | (h[14]! << 16) | (h[15]! << 24)) >>> 0;
    if (addrHi * 4294967296 + addrLo !== pageLsn) return this.fail(pageLsn, `Unexpected page address ${addrHi.toString(16)}/${addrLo.toString(16)}`);
    const remLen = (h[16]! | (h[17]! << 8) | (h[18]! << 16) | (h[19]! << 24)) >>> 0;
    const contrec = (info & XLP_FIRST_IS_CONTRECORD) !== 0;
    if (this.skippingContrecord) {
      if (contrec) {
        const rest = alignUp(remLen);
        if (rest >= XLOG_BLCKSZ - hdrSize) {
          this.skipTo = pageLsn + XLOG_BLCKSZ; // header of the next page tells the rest
          this.state = S_SKIP;
          return;
        }
        this.skippingContrecord = false;
        this.skipTo = this.pos + rest;
        this.state = S_SKIP;
        if (rest === 0) this.afterSkip();
        return;
      }
      this.skippingContrecord = false;
      this.recGot = 0;
      this.state = S_REC_HDR;
      return;
    }
    if (this.inRecord) {
      this.inRecord = false;
      if ((info & XLP_FIRST_IS_OVERWRITE_CONTRECORD) !== 0) {
        this.recGot = 0;
        this.state = S_REC_HDR;
        return;
      }
      if (!contrec) return this.fail(pageLsn, `There is no contrecord flag (record at ${formatLsn(toLsn(BigInt(this.recStart)))})`);
      const missing = this.recGot > 0 ? -1 : this.recLeft;
      if (remLen === 0 || (missing >= 0 && remLen !== missing)) return this.fail(pageLsn, `Invalid contrecord length ${remLen} (expected ${missing})`);
      this.state = this.recGot > 0 ? S_REC_HDR : S_REC_BODY;
      return;
    }
    if (contrec) return this.fail(pageLsn, "Contrecord is requested but no record was started");
    this.recGot = 0;
    this.state = S_REC_HDR;
  }

  /** Validates a record header; sets recLeft to the bytes left counting from `from` (default this.pos). */
  private beginRecord(totLen: number, info: number, rmid: number, start = this.pos): boolean {
    if (totLen < SIZE_OF_XLOG_RECORD || totLen > XLOG_RECORD_MAX_SIZE_BYTES) {
      this.fail(start, `Invalid record length ${totLen}`);
      return false;
    }
    this.recStart = start;
    this.recLeft = totLen;
    this.recIsSwitch = rmid === RM_XLOG_ID && (info & 0xf0) === XLOG_SWITCH;
    return true;
  }

  private finishRecord(): void {
    this.lastLsnNum = this.recStart;
    this.lastEndNum = this.pos;
    this.count++;
    if (this.onRecord !== undefined) this.onRecord(this.recStart, this.pos);
    let next = alignUp(this.pos);
    if (this.recIsSwitch) {
      const segOff = next % this.segSize;
      if (segOff !== 0) next += this.segSize - segOff;
    }
    if (next > this.pos) {
      this.skipTo = next;
      this.state = S_SKIP;
    } else {
      this.afterSkip();
    }
  }

  private afterSkip(): void {
    if (this.pos % XLOG_BLCKSZ === 0) {
      this.enterPageHeader(false);
    } else {
      this.recGot = 0;
      this.state = S_REC_HDR;
    }
  }
}

function alignUp(x: number): number {
  return Math.ceil(x / MAXALIGN) * MAXALIGN;
}
