/**
 * WalStreamDecoder — turns a stream of raw WAL bytes into decoded records.
 *
 * Place in the data flow: the safekeeper's and pageserver's WAL receivers,
 * the `strata wal dump` tool and the segment-file reader (wal_files.ts) all
 * push bytes in whatever chunks they get them (`feed`) and pull complete
 * records (`next`). The decoder does no I/O and never waits: when the bytes
 * for the next record are not there yet, `next()` returns undefined.
 *
 * What the stream looks like (PostgreSQL 15, xlogreader.c is the model):
 * * Bytes start at `startLsn`, which is either a page boundary (a segment
 *   start as pg_receivewal asks for, or any page start) — the first bytes are
 *   then a page header — or a record start inside a page, as a walsender
 *   sends it: no page header precedes the first record.
 * * Every 8 KiB page starts with a header (validated like
 *   XLogReaderValidatePageHeader: magic, flags, pageaddr, long header at
 *   segment starts, segment size, timeline order, system identifier).
 * * Records are MAXALIGNed (8 bytes). A record may continue on following
 *   pages, even its 24-byte header may be split; each continuation page must
 *   carry XLP_FIRST_IS_CONTRECORD and an xlp_rem_len equal to what is still
 *   missing. XLP_FIRST_IS_OVERWRITE_CONTRECORD on such a page means the rest
 *   of the record was lost and replaced: the partial record is dropped and
 *   reading restarts on that page, as PostgreSQL does.
 * * After an XLOG_SWITCH record the rest of the segment is padding and is
 *   skipped unread.
 * * Starting at a page boundary whose page begins with the remainder of an
 *   earlier record, that remainder is skipped (XLogFindNextRecord's rule).
 *
 * Invariants and limits:
 * * Records are handed out with their start LSN and end LSN (just past the
 *   last byte; page headers in between count). Records that lie inside one
 *   page and one fed chunk are returned as views into that chunk (no copy):
 *   callers must not modify a chunk after feeding it. Only records that
 *   cross a page or chunk boundary are copied, each byte once, into a buffer
 *   that belongs to that record alone.
 * * xl_tot_len is capped (`maxRecordBytes`, default XLOG_RECORD_MAX_SIZE_BYTES)
 *   and a record's buffer grows as its bytes arrive, after its header was
 *   validated, so garbage lengths cannot make us allocate a gigabyte. The
 *   decoder holds at most the unconsumed fed chunks plus one partial record;
 *   callers bound memory by draining `next()` before feeding more.
 * * Every failure (bad page header, bad length, prev-link mismatch, CRC
 *   mismatch, malformed fragments, input ending mid-record on `end()`) is a
 *   `WalDecodeError` naming the record's LSN (or the page's, between
 *   records). After one, the decoder is failed for good: every later call
 *   throws the same error.
 * * Positions are kept as JavaScript numbers relative to `startLsn`
 *   (exact up to 2^53 bytes of stream, i.e. 8 PiB); LSNs are bigints only at
 *   the API.
 */
import { StrataError } from "../../lib/errors.js";
import { DEFAULT_WAL_SEG_SIZE_BYTES, formatLsn, XLOG_BLCKSZ, type Lsn } from "../../lib/lsn.js";
import type { DecodedRecord } from "./decoded_record.js";
import {
  isValidWalSegSize,
  parsePageHeader,
  pageHeaderSize,
  SIZE_OF_XLOG_LONG_PHD,
  SIZE_OF_XLOG_SHORT_PHD,
  validatePageHeader,
  XLP_FIRST_IS_CONTRECORD,
  XLP_FIRST_IS_OVERWRITE_CONTRECORD,
  XLP_LONG_HEADER,
  type XLogPageHeader,
} from "./xlog_page.js";
import {
  checkRecordCrcAt,
  decodeRecord,
  isValidRmgrId,
  parseRecordHeader,
  SIZE_OF_XLOG_RECORD,
  validateRecordHeader,
  WalDecodeError,
  XLOG_RECORD_MAX_SIZE_BYTES,
} from "./xlog_record.js";

/** RM_XLOG_ID and XLOG_SWITCH (catalog/pg_control.h). */
const RM_XLOG_ID = 0;
const XLOG_SWITCH = 0x40;
/** MAXIMUM_ALIGNOF on every platform PostgreSQL 15 ships for in Debian. */
const MAXALIGN = 8;
/**
 * First allocation for a record being reassembled: two pages, which is all
 * PostgreSQL reads before it has cross-checked xl_tot_len against the next
 * page's xlp_rem_len. The buffer doubles (up to xl_tot_len) as bytes arrive.
 */
const ASSEMBLY_INITIAL_BYTES = 2 * XLOG_BLCKSZ;
/**
 * Records up to this size that must be reassembled are carved out of shared
 * slabs of SLAB_BYTES instead of getting an allocation each: most records
 * crossing a page are a few KiB, and one allocation (zero-filled, later
 * collected) per record dominated decoding time. A slab region is handed out
 * once and never reused; the price is that a record kept alive keeps its
 * slab (at most SLAB_BYTES) alive.
 *
 * With `recycleRecordBuffers` (callers that are done with a record before
 * they ask for the next one, like the pageserver's ingest, which copies what
 * it keeps) the decoder alternates between two slabs and reuses them instead
 * of allocating a fresh one per SLAB_BYTES of reassembled records: fresh
 * memory is zero-filled and, on a VM whose host reclaims free guest pages,
 * costs a page fault per 4 KiB on first touch — for a WAL stream of mostly
 * page-crossing records that was a large part of decoding.
 */
const SLAB_RECORD_MAX_BYTES = 64 * 1024;
const SLAB_BYTES = 1024 * 1024;
/** Compact the chunk queue once this many consumed slots accumulate at its head. */
const CHUNK_QUEUE_COMPACT_AT = 256;

export interface WalStreamDecoderOptions {
  /** WAL segment size of the cluster (initdb --wal-segsize); default 16 MiB. */
  walSegSizeBytes?: number;
  /**
   * System identifier long page headers must carry. When absent the first long
   * header seen sets it, and later ones must agree.
   */
  systemId?: bigint;
  /** Cap on xl_tot_len; default XLOG_RECORD_MAX_SIZE_BYTES. */
  maxRecordBytes?: number;
  /**
   * The caller uses each record only until its next call to `next()` (or
   * copies what it keeps): reassembled records may then live in buffers the
   * decoder reuses (see SLAB_BYTES). Records that are views of fed chunks
   * are unaffected (the caller owns the chunks). Default false: records stay
   * valid for as long as they are referenced.
   */
  recycleRecordBuffers?: boolean;
}

const S_PAGE_HEADER = 0;
const S_RECORD_START = 1;
const S_RECORD_BODY = 2;
const S_SKIP = 3;
const S_FAILED = 4;

export class WalStreamDecoder {
  readonly startLsn: Lsn;
  readonly walSegSizeBytes: number;
  private readonly maxRecordBytes: number;
  private systemId: bigint | undefined;

  // Input: fed chunks not yet consumed; chunks[head][headOff] is the byte at `pos`.
  private chunks: Uint8Array[] = [];
  private head = 0;
  private headOff = 0;
  private avail = 0;
  /** Stream position of the next unconsumed byte, relative to startLsn. */
  private pos = 0;
  private readonly startPageOff: number;
  /** startLsn as a double (exact below 2^53, which real LSNs are). */
  private readonly startNum: number;
  private readonly startSegOff: number;
  private scratch = new Uint8Array(SIZE_OF_XLOG_LONG_PHD);

  private state: number;
  private error: WalDecodeError | undefined;
  /** Target of S_SKIP (relative position). */
  private skipTo = 0;
  /** Starting at a page boundary: skip a continued record's remainder first. */
  private skippingContrecord: boolean;
  private lastTli: number | undefined;

  /** Previous record's LSN as two 32-bit halves; undefined until one was decoded. */
  private havePrev = false;
  private prevLo = 0;
  private prevHi = 0;
  private prevLsn: Lsn | undefined;

  // The record being reassembled (S_RECORD_BODY, or a page header inside it).
  private assembling = false;
  private recPos = 0;
  private recTotLen = 0;
  private recGot = 0;
  private recHeaderChecked = false;
  private recBuf: Uint8Array = new Uint8Array(0);
  private slab: Uint8Array = new Uint8Array(0);
  private slabUsed = 0;
  /** With recycleRecordBuffers: the slab used before the current one, taken again when the current one is full. */
  private spareSlab: Uint8Array | undefined;
  private readonly recycle: boolean;

  private nextRecordPos = 0;

  constructor(startLsn: Lsn, opts: WalStreamDecoderOptions = {}) {
    const seg = opts.walSegSizeBytes ?? DEFAULT_WAL_SEG_SIZE_BYTES;
    if (!isValidWalSegSize(seg)) {
      throw new StrataError("invalid_argument", `Invalid WAL segment size ${seg}: must be a power of two from 1 MiB to 1 GiB`);
    }
    const pageOff = Number(startLsn % BigInt(XLOG_BLCKSZ));
    if (startLsn % BigInt(MAXALIGN) !== 0n || (pageOff !== 0 && pageOff < SIZE_OF_XLOG_SHORT_PHD)) {
      throw new StrataError(
        "invalid_argument",
        `Cannot start decoding WAL at ${formatLsn(startLsn)}: not a page boundary nor a MAXALIGNed record position after the page header`,
      );
    }
    this.startLsn = startLsn;
    this.walSegSizeBytes = seg;
    this.maxRecordBytes = opts.maxRecordBytes ?? XLOG_RECORD_MAX_SIZE_BYTES;
    this.systemId = opts.systemId;
    this.recycle = opts.recycleRecordBuffers === true;
    this.startPageOff = pageOff;
    this.startNum = Number(startLsn);
    this.startSegOff = Number(startLsn % BigInt(seg));
    this.state = pageOff === 0 ? S_PAGE_HEADER : S_RECORD_START;
    this.skippingContrecord = pageOff === 0;
  }

  /**
   * Appends WAL bytes that continue the stream. The decoder keeps a reference
   * to `chunk` (no copy) and may hand out records that view it.
   */
  feed(chunk: Uint8Array): void {
    if (this.error) throw this.error;
    if (chunk.length === 0) return;
    // Views of a Node Buffer are Buffers, whose subarray() is several times
    // slower than a plain Uint8Array's; records are views, so normalize once.
    if (chunk.constructor !== Uint8Array) chunk = new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (this.head === this.chunks.length) {
      this.chunks.length = 0;
      this.head = 0;
    } else if (this.head >= CHUNK_QUEUE_COMPACT_AT) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
    this.chunks.push(chunk);
    this.avail += chunk.length;
  }

  /** LSN of the next byte `feed` expects. */
  get feedLsn(): Lsn {
    return this.lsnAt(this.pos + this.avail);
  }

  /** LSN of the next byte the decoder will look at. */
  get position(): Lsn {
    return this.lsnAt(this.pos);
  }

  /** Where the next record starts: after the last decoded one (MAXALIGNed, or the next segment after a switch). */
  get nextRecordLsn(): Lsn {
    return this.lsnAt(this.nextRecordPos);
  }

  /** LSN of the last record decoded, if any. */
  get lastRecordLsn(): Lsn | undefined {
    return this.prevLsn;
  }

  /** Bytes fed but not yet consumed. */
  get bufferedBytes(): number {
    return this.avail;
  }

  /** The error the decoder failed with, if it did. */
  get failure(): WalDecodeError | undefined {
    return this.error;
  }

  /** The records that can be decoded from the bytes fed so far. */
  *records(): IterableIterator<DecodedRecord> {
    for (let r = this.next(); r !== undefined; r = this.next()) yield r;
  }

  /**
   * Declares the end of the input. Returns normally when the stream stopped
   * between records (or inside skipped padding); throws a "truncated"
   * WalDecodeError when it stopped inside a page header or a record. Call it
   * after `next()` returned undefined.
   */
  end(): void {
    if (this.error) throw this.error;
    const midRecord = this.assembling || (this.state === S_RECORD_START && this.avail > 0);
    if (midRecord) {
      const at = this.lsnAt(this.assembling ? this.recPos : this.pos);
      this.fail(new WalDecodeError("truncated", at, `WAL input ends in the middle of the record at ${formatLsn(at)}`));
    }
    if (this.state === S_PAGE_HEADER && this.avail > 0) {
      const at = this.lsnAt(this.pos);
      this.fail(new WalDecodeError("truncated", at, `WAL input ends in the middle of the page header at ${formatLsn(at)}`));
    }
  }

  /**
   * The next complete record, or undefined when more input is needed. Throws
   * WalDecodeError on invalid WAL (and forever after).
   */
  next(): DecodedRecord | undefined {
    for (;;) {
      switch (this.state) {
        case S_RECORD_START: {
          const r = this.readRecordStart();
          if (r !== null) return r;
          break;
        }
        case S_PAGE_HEADER:
          if (!this.readPageHeader()) return undefined;
          break;
        case S_RECORD_BODY: {
          const r = this.readRecordBody();
          if (r !== null) return r;
          break;
        }
        case S_SKIP:
          if (!this.skip()) return undefined;
          break;
        default:
          throw this.error ?? new Error("assertion failed: WalStreamDecoder in failed state without an error");
      }
    }
  }

  // ---------------------------------------------------------------------
  // States
  // ---------------------------------------------------------------------

  /**
   * At a record start inside a page. Returns the record (fast path: whole
   * record in the current page and chunk), undefined when more input is
   * needed, or null after switching to another state.
   */
  private readRecordStart(): DecodedRecord | undefined | null {
    const pageOff = this.pageOffsetAt(this.pos);
    const leftOnPage = XLOG_BLCKSZ - pageOff;
    if (leftOnPage >= SIZE_OF_XLOG_RECORD) {
      if (this.avail < SIZE_OF_XLOG_RECORD) return undefined;
      const chunk = this.chunks[this.head]!;
      const off = this.headOff;
      let hdr: Uint8Array;
      let hdrOff: number;
      if (chunk.length - off >= SIZE_OF_XLOG_RECORD) {
        hdr = chunk;
        hdrOff = off;
      } else {
        hdr = this.peek(SIZE_OF_XLOG_RECORD);
        hdrOff = 0;
      }
      const totLen = u32(hdr, hdrOff);
      this.checkHeader(hdr, hdrOff, this.pos);
      if (totLen <= leftOnPage && chunk.length - off >= totLen) {
        // Fast path: the whole record is contiguous in the current chunk.
        const raw = chunk.subarray(off, off + totLen);
        const recPos = this.pos;
        this.consume(totLen);
        return this.finishRecord(raw, recPos);
      }
      this.beginAssembly(totLen, true);
      return null;
    }
    // The header is split by the page end; xl_tot_len is on this page
    // (records are MAXALIGNed and at least 8 bytes of the page are left).
    if (this.avail < 4) return undefined;
    const b = this.peek(4);
    const totLen = u32(b, 0);
    if (totLen < SIZE_OF_XLOG_RECORD || totLen > this.maxRecordBytes) {
      this.failHeader({ totalLength: totLen, xid: 0, prevLsn: 0n as Lsn, info: 0, rmid: 0, crc: 0 }, this.pos);
    }
    this.beginAssembly(totLen, false);
    return null;
  }

  private beginAssembly(totLen: number, headerChecked: boolean): void {
    this.assembling = true;
    this.recPos = this.pos;
    this.recTotLen = totLen;
    this.recGot = 0;
    this.recHeaderChecked = headerChecked;
    this.recBuf = totLen <= SLAB_RECORD_MAX_BYTES ? this.slabAlloc(totLen) : new Uint8Array(ASSEMBLY_INITIAL_BYTES);
    this.state = S_RECORD_BODY;
  }

  private slabAlloc(n: number): Uint8Array {
    if (this.slab.length - this.slabUsed < n) {
      if (this.recycle) {
        // Every record in the spare slab was handed out at least a slab's
        // worth of records ago (a record is at most SLAB_RECORD_MAX_BYTES):
        // the caller is done with them (see recycleRecordBuffers).
        const next = this.spareSlab ?? new Uint8Array(SLAB_BYTES);
        this.spareSlab = this.slab.length === SLAB_BYTES ? this.slab : undefined;
        this.slab = next;
      } else {
        this.slab = new Uint8Array(SLAB_BYTES);
      }
      this.slabUsed = 0;
    }
    const out = this.slab.subarray(this.slabUsed, this.slabUsed + n);
    this.slabUsed += (n + 7) & ~7;
    return out;
  }

  /** Copies the record's bytes as they arrive; null when switching state. */
  private readRecordBody(): DecodedRecord | undefined | null {
    while (this.recGot < this.recTotLen) {
      const pageOff = this.pageOffsetAt(this.pos);
      if (pageOff === 0) {
        this.state = S_PAGE_HEADER;
        return null;
      }
      if (this.avail === 0) return undefined;
      const chunk = this.chunks[this.head]!;
      const n = Math.min(this.recTotLen - this.recGot, XLOG_BLCKSZ - pageOff, chunk.length - this.headOff);
      this.ensureCapacity(this.recGot + n);
      this.recBuf.set(chunk.subarray(this.headOff, this.headOff + n), this.recGot);
      this.recGot += n;
      this.consume(n);
      if (!this.recHeaderChecked && this.recGot >= SIZE_OF_XLOG_RECORD) {
        this.checkHeader(this.recBuf, 0, this.recPos);
        this.recHeaderChecked = true;
      }
    }
    const raw = this.recBuf.length === this.recTotLen ? this.recBuf : this.recBuf.subarray(0, this.recTotLen);
    this.assembling = false;
    this.recBuf = new Uint8Array(0);
    return this.finishRecord(raw, this.recPos);
  }

  private ensureCapacity(needed: number): void {
    if (needed <= this.recBuf.length) return;
    let cap = Math.max(this.recBuf.length, 1);
    while (cap < needed) cap *= 2;
    const grown = new Uint8Array(Math.min(cap, this.recTotLen));
    grown.set(this.recBuf.subarray(0, this.recGot));
    this.recBuf = grown;
  }

  /** At a page boundary. Returns false when more input is needed. */
  private readPageHeader(): boolean {
    if (this.avail < SIZE_OF_XLOG_SHORT_PHD) return false;
    let bytes = this.peek(SIZE_OF_XLOG_SHORT_PHD);
    const info = bytes[2]! | (bytes[3]! << 8);
    if ((info & XLP_LONG_HEADER) !== 0) {
      if (this.avail < SIZE_OF_XLOG_LONG_PHD) return false;
      bytes = this.peek(SIZE_OF_XLOG_LONG_PHD);
    }
    const pageLsn = this.lsnAt(this.pos);
    const hdr = parsePageHeader(bytes, 0);
    this.validatePage(hdr, pageLsn);
    const hdrSize = pageHeaderSize(hdr.info);
    this.consume(hdrSize);

    if (this.skippingContrecord) {
      if ((hdr.info & XLP_FIRST_IS_CONTRECORD) !== 0) {
        const rest = alignUp(hdr.remLen);
        if (rest >= XLOG_BLCKSZ - hdrSize) {
          this.skipTo = this.pos - hdrSize + XLOG_BLCKSZ; // the next page; its header tells the rest
          this.state = S_SKIP;
          return true;
        }
        this.skippingContrecord = false;
        this.skipTo = this.pos + rest;
        this.nextRecordPos = this.skipTo;
        this.state = S_SKIP;
        return true;
      }
      this.skippingContrecord = false;
      this.nextRecordPos = this.pos;
      this.state = S_RECORD_START;
      return true;
    }

    if (this.assembling) {
      const recLsn = this.lsnAt(this.recPos);
      if ((hdr.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD) !== 0) {
        // The rest of the record was never written; PostgreSQL wrote a new
        // record here instead. Drop the partial one and read on from here.
        this.assembling = false;
        this.recBuf = new Uint8Array(0);
      } else {
        if ((hdr.info & XLP_FIRST_IS_CONTRECORD) === 0) {
          this.fail(
            new WalDecodeError("corrupt_data", recLsn, `There is no contrecord flag at ${formatLsn(pageLsn)} (record at ${formatLsn(recLsn)})`),
          );
        }
        const missing = this.recTotLen - this.recGot;
        if (hdr.remLen === 0 || hdr.remLen !== missing) {
          this.fail(
            new WalDecodeError(
              "corrupt_data",
              recLsn,
              `Invalid contrecord length ${hdr.remLen} (expected ${missing}) at ${formatLsn(pageLsn)} (record at ${formatLsn(recLsn)})`,
            ),
          );
        }
        this.state = S_RECORD_BODY;
        return true;
      }
    }
    if ((hdr.info & XLP_FIRST_IS_CONTRECORD) !== 0) {
      const at = this.lsnAt(this.pos);
      this.fail(new WalDecodeError("corrupt_data", at, `Contrecord is requested by ${formatLsn(at)}: the page continues a record that was not started`));
    }
    this.nextRecordPos = this.pos;
    this.state = S_RECORD_START;
    return true;
  }

  private validatePage(hdr: XLogPageHeader, pageLsn: Lsn): void {
    try {
      validatePageHeader(hdr, pageLsn, {
        walSegSizeBytes: this.walSegSizeBytes,
        ...(this.systemId !== undefined ? { systemId: this.systemId } : {}),
        ...(this.lastTli !== undefined ? { previousTli: this.lastTli } : {}),
      });
    } catch (e) {
      const at = this.assembling ? this.lsnAt(this.recPos) : pageLsn;
      const msg = e instanceof Error ? e.message : String(e);
      const suffix = this.assembling ? ` (inside the record at ${formatLsn(at)})` : "";
      this.fail(new WalDecodeError("corrupt_data", at, msg + suffix, { cause: e }));
    }
    this.lastTli = hdr.tli;
    if (hdr.long && this.systemId === undefined) this.systemId = hdr.long.systemId;
  }

  private skip(): boolean {
    const n = Math.min(this.avail, this.skipTo - this.pos);
    if (n > 0) this.consume(n);
    if (this.pos < this.skipTo) return false;
    this.state = this.pageOffsetAt(this.pos) === 0 ? S_PAGE_HEADER : S_RECORD_START;
    return true;
  }

  // ---------------------------------------------------------------------
  // Records
  // ---------------------------------------------------------------------

  /** ValidXLogRecordHeader on the 24 bytes at hdr[off], for the record at relative position recPos. */
  private checkHeader(hdr: Uint8Array, off: number, recPos: number): void {
    const totLen = u32(hdr, off);
    const rmid = hdr[off + 17]!;
    const prevLo = u32(hdr, off + 8);
    const prevHi = u32(hdr, off + 12);
    let ok = totLen >= SIZE_OF_XLOG_RECORD && totLen <= this.maxRecordBytes && isValidRmgrId(rmid);
    if (ok) {
      // Sequential reading: the prev-link must name the record just decoded.
      // The first record (random access) only needs a prev-link below itself.
      ok = this.havePrev ? prevLo === this.prevLo && prevHi === this.prevHi : this.prevBelow(prevLo, prevHi, recPos);
    }
    if (!ok) this.failHeader(parseRecordHeader(hdr, off), recPos);
  }

  /** Exact 64-bit "xl_prev < record LSN". */
  private prevBelow(prevLo: number, prevHi: number, recPos: number): boolean {
    return ((BigInt(prevHi) << 32n) | BigInt(prevLo)) < this.startLsn + BigInt(recPos);
  }

  private failHeader(hdr: ReturnType<typeof parseRecordHeader>, recPos: number): never {
    try {
      validateRecordHeader(hdr, this.lsnAt(recPos), this.prevLsn, this.maxRecordBytes);
    } catch (e) {
      if (e instanceof WalDecodeError) this.fail(e);
      throw e;
    }
    throw new Error("assertion failed: record header rejected by the fast check but accepted by validateRecordHeader");
  }

  private finishRecord(raw: Uint8Array, recPos: number): DecodedRecord {
    const at = this.lsnAt(recPos);
    const endPos = this.pos;
    let rec: DecodedRecord;
    try {
      checkRecordCrcAt(raw, 0, raw.length, at);
      rec = decodeRecord(raw, at, this.lsnAt(endPos), this.havePrev ? { verifyCrc: false, prevLsn: this.prevLsn! } : NO_CRC);
    } catch (e) {
      if (e instanceof WalDecodeError) this.fail(e);
      throw e;
    }
    this.havePrev = true;
    const abs = this.startNum + recPos;
    if (abs <= Number.MAX_SAFE_INTEGER) {
      this.prevLo = abs % 4294967296;
      this.prevHi = (abs - this.prevLo) / 4294967296;
    } else {
      this.prevLo = Number(at & 0xffffffffn);
      this.prevHi = Number(at >> 32n);
    }
    this.prevLsn = at;

    // startLsn is MAXALIGNed, so aligning the relative position aligns the LSN.
    let next = alignUp(endPos);
    if (rec.rmid === RM_XLOG_ID && (rec.info & 0xf0) === XLOG_SWITCH) {
      const segOff = (this.startSegOff + next) % this.walSegSizeBytes;
      if (segOff !== 0) next += this.walSegSizeBytes - segOff;
    }
    this.nextRecordPos = next;
    if (next > this.pos) {
      this.skipTo = next;
      this.state = S_SKIP;
      // Most records are followed by a few padding bytes in the same chunk.
      const chunk = this.chunks[this.head];
      if (chunk !== undefined && chunk.length - this.headOff >= next - this.pos) this.skip();
    } else {
      this.state = this.pageOffsetAt(this.pos) === 0 ? S_PAGE_HEADER : S_RECORD_START;
    }
    return rec;
  }

  // ---------------------------------------------------------------------
  // Input buffer
  // ---------------------------------------------------------------------

  /** The next n (<= 40) bytes, contiguous, without consuming them. Needs avail >= n. */
  private peek(n: number): Uint8Array {
    const chunk = this.chunks[this.head]!;
    if (chunk.length - this.headOff >= n) return chunk.subarray(this.headOff, this.headOff + n);
    const out = this.scratch.length >= n ? this.scratch : (this.scratch = new Uint8Array(n));
    let got = 0;
    let i = this.head;
    let off = this.headOff;
    while (got < n) {
      const c = this.chunks[i]!;
      const take = Math.min(n - got, c.length - off);
      out.set(c.subarray(off, off + take), got);
      got += take;
      i++;
      off = 0;
    }
    return out.subarray(0, n);
  }

  private consume(n: number): void {
    this.pos += n;
    this.avail -= n;
    while (n > 0) {
      const chunk = this.chunks[this.head]!;
      const left = chunk.length - this.headOff;
      if (left > n) {
        this.headOff += n;
        return;
      }
      n -= left;
      this.chunks[this.head] = EMPTY;
      this.head++;
      this.headOff = 0;
    }
  }

  // ---------------------------------------------------------------------
  // Helpers
  // ---------------------------------------------------------------------

  private lsnAt(relPos: number): Lsn {
    const abs = this.startNum + relPos;
    // One bigint conversion when the double is exact (every real LSN).
    return (abs <= Number.MAX_SAFE_INTEGER ? BigInt(abs) : this.startLsn + BigInt(relPos)) as Lsn;
  }

  private pageOffsetAt(relPos: number): number {
    return (this.startPageOff + relPos) % XLOG_BLCKSZ;
  }

  private fail(e: WalDecodeError): never {
    this.error = e;
    this.state = S_FAILED;
    this.chunks = [];
    this.head = 0;
    this.headOff = 0;
    this.avail = 0;
    this.recBuf = new Uint8Array(0);
    throw e;
  }
}

const EMPTY = new Uint8Array(0);
const NO_CRC = { verifyCrc: false } as const;

function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function alignUp(n: number): number {
  const r = n % MAXALIGN;
  return r === 0 ? n : n + MAXALIGN - r;
}
