/**
 * WAL synthesis: the WAL segment(s) and pg_control that make an unmodified
 * PostgreSQL 15 start "as of" an LSN X with no recovery.
 *
 * Where it sits: `fullbackup` (pageserver) materializes every relation and
 * SLRU file as of X, then asks this module for `global/pg_control` and the
 * `pg_wal/` segment file(s). The server reads pg_control (state "shut down",
 * checkpoint at X), reads the XLOG_CHECKPOINT_SHUTDOWN record at X, sees
 * redo == X and no WAL after it, and starts writing its own WAL right after
 * the record. shared/notes/start-at-lsn.md records the experiment that proved
 * which bytes matter; the rules below are those facts.
 *
 * What is generated (per 16 MiB segment touched by the record):
 *  - the segment's first page always carries a valid long header (the reader
 *    validates page 0 whenever it opens a segment), even when X is later;
 *  - X's page carries a header with magic, timeline and page address; the
 *    bytes before X on that page are either the caller's original WAL
 *    (`prefix`; given from the segment start, the file is then
 *    byte-identical to the parent's up to X) or a filler so that a reader scanning from the page start (pg_waldump
 *    -s X, XLogFindNextRecord) reaches X: one XLOG_NOOP record when the gap
 *    is at least a record header (24 bytes), else (8 or 16 bytes) the page is
 *    marked XLP_FIRST_IS_CONTRECORD with xlp_rem_len = gap, which readers
 *    skip as the tail of an earlier record;
 *  - the 114-byte checkpoint record at X, continued onto following pages with
 *    XLP_FIRST_IS_CONTRECORD / xlp_rem_len, into the next segment if needed
 *    (laid out by WalWriter, the same code that writes any other WAL);
 *  - zeros everywhere else (end of WAL for the reader).
 *
 * pg_control (`shutdownControlFile`) gets state = shut down, checkPoint = X,
 * and a checkPointCopy identical to the record body (the server takes
 * nextXid/nextOid/multixact and the redo pointer from pg_control, not from
 * the record), minRecoveryPoint and backup fields cleared.
 *
 * Invariants the caller owns (not checkable here): X is a record boundary of
 * the source WAL, no data page is newer than X, and nextXid/nextMulti are
 * above everything used before X but within the existing clog/multixact
 * SLRU pages.
 *
 * Pure: takes values, returns byte images; writing files is the caller's job.
 */
import { StrataError } from "../../lib/errors.js";
import {
  formatLsn,
  lsn,
  lsnAlign,
  pageOffset,
  pageStart,
  segmentNumber,
  segmentOffset,
  segmentStart,
  walFileName,
  XLOG_BLCKSZ,
  type Lsn,
} from "../../lib/lsn.js";
import { DbState, type ControlFileData } from "../pg_control.js";
import { encodeCheckPoint, RM_XLOG_ID, XLOG_CHECKPOINT_SHUTDOWN, XLOG_NOOP, type CheckPoint } from "./rmgr/xlog.js";
import {
  isValidWalSegSize,
  makePageHeader,
  parsePageHeader,
  pageHeaderSize,
  SIZE_OF_XLOG_LONG_PHD,
  SIZE_OF_XLOG_SHORT_PHD,
  validatePageHeader,
  writePageHeader,
  XLP_BKP_REMOVABLE,
  XLP_FIRST_IS_CONTRECORD,
} from "./xlog_page.js";
import { encodeRecord, parseRecordHeader, SIZE_OF_XLOG_RECORD } from "./xlog_record.js";
import { WalWriter } from "./wal_writer.js";

/** MAXALIGN on x86_64: WAL records start at multiples of 8. */
const MAXALIGN_BYTES = 8;
/**
 * xlp_info extra bits on synthesized pages: XLP_BKP_REMOVABLE, as a running
 * server (not taking a base backup) writes every page.
 */
const PAGE_INFO = XLP_BKP_REMOVABLE;
/** Short main-data header (XLR_BLOCK_ID_DATA_SHORT + 1 length byte). */
const SHORT_DATA_HEADER_BYTES = 2;
/** Long main-data header (XLR_BLOCK_ID_DATA_LONG + 4 length bytes). */
const LONG_DATA_HEADER_BYTES = 5;
/** Main data up to this length uses the short header. */
const SHORT_DATA_MAX_BYTES = 255;

/** Checkpoint values for the synthesized record; `redo` is always X. */
export type ShutdownCheckpointFields = Omit<CheckPoint, "redo" | "oldestActiveXid"> & {
  /** Always 0 in a shutdown checkpoint; accepted for symmetry, must be 0 if given. */
  oldestActiveXid?: number;
};

export interface SynthesizeShutdownCheckpointOptions {
  /** X: where the checkpoint record goes. MAXALIGNed, not inside a page header. */
  lsn: Lsn;
  checkpoint: ShutdownCheckpointFields;
  /** pg_control's system identifier (goes into every long page header). */
  systemId: bigint;
  walSegSizeBytes: number;
  /**
   * xl_prev of the checkpoint record (must be < X). Default: the last record
   * in `prefix`, else 0 (any value below X satisfies the server, which reads
   * the record by random access). With a NOOP filler the checkpoint points to
   * the filler and this value becomes the filler's xl_prev.
   */
  prevLsn?: Lsn;
  /**
   * Original WAL bytes ending at X, copied verbatim: at least X's page up to
   * X (starting with that page's own header), at most X's segment from its
   * first byte (then the file is byte-identical to the source up to X).
   * Must start at a page boundary.
   */
  prefix?: Uint8Array;
}

export interface SynthesizedSegment {
  /** File name in pg_wal (timeline from checkpoint.thisTimeLineId). */
  name: string;
  segNo: bigint;
  /** The whole segment file: walSegSizeBytes bytes. */
  bytes: Uint8Array;
}

export interface SynthesizedWal {
  /** One segment, or two when the record crosses a segment boundary. */
  segments: SynthesizedSegment[];
  /** X. */
  recordLsn: Lsn;
  /** Byte just past the record (not aligned; page headers in between counted). */
  endLsn: Lsn;
  /** The complete CheckPoint the record carries (redo = X), for pg_control. */
  checkpoint: CheckPoint;
  /** xl_prev written into the record. */
  prevLsn: Lsn;
  /** The record as contiguous bytes (114). */
  record: Uint8Array;
  /** How the bytes before X on its page were filled. */
  gapFill: "prefix" | "noop" | "contrecord" | "none";
}

function invalid(message: string): never {
  throw new StrataError("invalid_argument", message);
}

/** Header size of the page at `pageAddr`: long on a segment's first page. */
function headerSizeAt(pageAddr: Lsn, walSegSizeBytes: number): number {
  return segmentOffset(pageAddr, walSegSizeBytes) === 0 ? SIZE_OF_XLOG_LONG_PHD : SIZE_OF_XLOG_SHORT_PHD;
}

/** The full CheckPoint a shutdown checkpoint at `x` carries. */
export function shutdownCheckPoint(x: Lsn, fields: ShutdownCheckpointFields): CheckPoint {
  if (fields.oldestActiveXid !== undefined && fields.oldestActiveXid !== 0) {
    invalid(`A shutdown checkpoint has oldestActiveXid 0, got ${fields.oldestActiveXid}`);
  }
  return { ...fields, redo: x, oldestActiveXid: 0 };
}

/** An XLOG_NOOP record whose MAXALIGNed size is exactly `gapBytes` (>= 24, multiple of 8). */
function noopRecord(gapBytes: number, prevLsn: Lsn): Uint8Array {
  let dataBytes = 0;
  if (gapBytes > SIZE_OF_XLOG_RECORD) {
    // Payload + its data header fill the gap exactly (the gap is a multiple of 8, so is the record).
    const room = gapBytes - SIZE_OF_XLOG_RECORD;
    dataBytes = room - SHORT_DATA_HEADER_BYTES <= SHORT_DATA_MAX_BYTES ? room - SHORT_DATA_HEADER_BYTES : room - LONG_DATA_HEADER_BYTES;
  }
  const rec = encodeRecord({ rmid: RM_XLOG_ID, info: XLOG_NOOP, prevLsn, mainData: new Uint8Array(dataBytes) });
  if (alignUp(rec.length) !== gapBytes) {
    throw new Error(`assertion failed: NOOP filler of ${rec.length} bytes does not fill a ${gapBytes}-byte gap`);
  }
  return rec;
}

function alignUp(n: number): number {
  return Math.ceil(n / MAXALIGN_BYTES) * MAXALIGN_BYTES;
}

/**
 * Finds the start of the last record that begins in `prefix` (X's page up to
 * X), walking from the first record start after the page header and any
 * continuation. Returns undefined when no record starts on the page before X.
 */
function lastRecordInPrefix(prefix: Uint8Array, pageAddr: Lsn, walSegSizeBytes: number): Lsn | undefined {
  const hdr = parsePageHeader(prefix, 0);
  let pos = pageHeaderSize(hdr.info);
  if ((hdr.info & XLP_FIRST_IS_CONTRECORD) !== 0) pos += alignUp(hdr.remLen);
  let last: Lsn | undefined;
  while (pos + SIZE_OF_XLOG_RECORD <= prefix.length) {
    const rec = parseRecordHeader(prefix, pos);
    if (rec.totalLength < SIZE_OF_XLOG_RECORD) {
      throw new StrataError(
        "corrupt_data",
        `WAL prefix before ${formatLsn(lsn(pageAddr + BigInt(prefix.length)))} has an invalid record length ${rec.totalLength} ` +
          `at ${formatLsn(lsn(pageAddr + BigInt(pos)))} (segment offset ${segmentOffset(pageAddr, walSegSizeBytes) + pos})`,
      );
    }
    last = lsn(pageAddr + BigInt(pos));
    pos += alignUp(rec.totalLength);
  }
  if (pos !== prefix.length) {
    throw new StrataError(
      "invalid_argument",
      `X = ${formatLsn(lsn(pageAddr + BigInt(prefix.length)))} is not a record boundary of the WAL prefix ` +
        `(the record chain on page ${formatLsn(pageAddr)} reaches ${formatLsn(lsn(pageAddr + BigInt(pos)))})`,
    );
  }
  return last;
}

/**
 * Builds the WAL segment image(s) holding an XLOG_CHECKPOINT_SHUTDOWN record
 * at `opts.lsn` (see the module comment for the exact layout).
 */
export function synthesizeShutdownCheckpointWal(opts: SynthesizeShutdownCheckpointOptions): SynthesizedWal {
  const x = opts.lsn;
  const seg = opts.walSegSizeBytes;
  if (!isValidWalSegSize(seg)) invalid(`Invalid WAL segment size ${seg}: must be a power of two in [1 MiB, 1 GiB]`);
  if (x % BigInt(MAXALIGN_BYTES) !== 0n) invalid(`Cannot place a checkpoint at ${formatLsn(x)}: not MAXALIGNed (8 bytes)`);
  const xPage = pageStart(x);
  const xHeaderBytes = headerSizeAt(xPage, seg);
  const gapStart = xHeaderBytes;
  if (pageOffset(x) < xHeaderBytes) {
    invalid(`Cannot place a checkpoint at ${formatLsn(x)}: inside the ${xHeaderBytes}-byte page header of ${formatLsn(xPage)}`);
  }
  const tli = opts.checkpoint.thisTimeLineId;
  if (!Number.isInteger(tli) || tli < 1 || tli > 0xffffffff) invalid(`Invalid timeline ${tli}`);
  if (opts.prevLsn !== undefined && opts.prevLsn >= x) {
    invalid(`xl_prev ${formatLsn(opts.prevLsn)} must be below the checkpoint LSN ${formatLsn(x)}`);
  }

  const segments = new Map<bigint, Uint8Array>();
  const headerFor = (pageAddr: Lsn, remLen: number) =>
    makePageHeader({ pageAddr, tli, remLen, walSegSizeBytes: seg, systemId: opts.systemId, extraInfo: PAGE_INFO });
  const segmentImage = (segNo: bigint): Uint8Array => {
    let img = segments.get(segNo);
    if (!img) {
      img = new Uint8Array(seg);
      // Page 0 always has a valid long header; a continuation or prefix overwrites it below.
      writePageHeader(img, 0, headerFor(segmentStart(segNo, seg), 0));
      segments.set(segNo, img);
    }
    return img;
  };
  /** Copies `bytes` to `at`, splitting at segment boundaries. */
  const write = (at: Lsn, bytes: Uint8Array): void => {
    let done = 0;
    while (done < bytes.length) {
      const pos = lsn(at + BigInt(done));
      const off = segmentOffset(pos, seg);
      const n = Math.min(bytes.length - done, seg - off);
      segmentImage(segmentNumber(pos, seg)).set(bytes.subarray(done, done + n), off);
      done += n;
    }
  };
  const putPageHeader = (pageAddr: Lsn, remLen: number): void => {
    writePageHeader(segmentImage(segmentNumber(pageAddr, seg)), segmentOffset(pageAddr, seg), headerFor(pageAddr, remLen));
  };

  // 1. X's page: header and the bytes before X.
  const gapBytes = pageOffset(x) - gapStart;
  let prevLsn = opts.prevLsn;
  let gapFill: SynthesizedWal["gapFill"];
  let noopAt: Lsn | undefined;
  if (opts.prefix !== undefined) {
    const prefix = opts.prefix;
    const prefixStart = x - BigInt(prefix.length);
    if (prefix.length < pageOffset(x) || prefixStart % BigInt(XLOG_BLCKSZ) !== 0n || segmentStart(segmentNumber(x, seg), seg) > prefixStart) {
      invalid(
        `WAL prefix of ${prefix.length} bytes before ${formatLsn(x)} must start at a page boundary of the same segment ` +
          `and cover at least the ${pageOffset(x)} bytes of page ${formatLsn(xPage)} before X`,
      );
    }
    const ownPage = prefix.subarray(Number(xPage - prefixStart));
    const hdr = parsePageHeader(ownPage, 0);
    validatePageHeader(hdr, xPage, { walSegSizeBytes: seg, systemId: opts.systemId });
    if (hdr.tli !== tli) {
      invalid(`WAL prefix page ${formatLsn(xPage)} is on timeline ${hdr.tli}, the checkpoint on ${tli}`);
    }
    prevLsn ??= lastRecordInPrefix(ownPage, xPage, seg);
    if (prevLsn === undefined) {
      invalid(`No record starts on page ${formatLsn(xPage)} before ${formatLsn(x)}: pass prevLsn`);
    }
    write(lsn(prefixStart), prefix);
    gapFill = "prefix";
  } else if (gapBytes >= SIZE_OF_XLOG_RECORD) {
    putPageHeader(xPage, 0);
    noopAt = lsn(xPage + BigInt(gapStart));
    gapFill = "noop";
  } else if (gapBytes > 0) {
    putPageHeader(xPage, gapBytes); // sets XLP_FIRST_IS_CONTRECORD: readers skip the gap
    gapFill = "contrecord";
  } else {
    putPageHeader(xPage, 0);
    gapFill = "none";
  }

  // 2. The records, laid out by WalWriter (continuation headers across pages and segments).
  const writer = new WalWriter({ startLsn: noopAt ?? x, walSegSizeBytes: seg, tli, systemId: opts.systemId, extraPageInfo: PAGE_INFO });
  if (noopAt !== undefined) {
    // The filler takes the caller's xl_prev (if below it); the checkpoint chains to the filler.
    const fillerPrev = opts.prevLsn !== undefined && opts.prevLsn < noopAt ? opts.prevLsn : lsn(0);
    writer.appendRecord(noopRecord(gapBytes, fillerPrev));
    prevLsn = noopAt;
  }
  prevLsn ??= lsn(0);
  const checkpoint = shutdownCheckPoint(x, opts.checkpoint);
  const record = encodeRecord({
    rmid: RM_XLOG_ID,
    info: XLOG_CHECKPOINT_SHUTDOWN,
    xid: 0,
    prevLsn,
    mainData: encodeCheckPoint(checkpoint),
  });
  const placed = writer.appendRecord(record);
  if (placed.lsn !== x) throw new Error(`assertion failed: checkpoint landed at ${formatLsn(placed.lsn)}, not ${formatLsn(x)}`);
  write(writer.startLsn, writer.take());
  const pos = placed.endLsn;

  const out: SynthesizedSegment[] = [...segments.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([segNo, bytes]) => ({ name: walFileName(tli, segNo, seg), segNo, bytes }));
  return { segments: out, recordLsn: x, endLsn: pos, checkpoint, prevLsn, record, gapFill };
}

/**
 * The pg_control that goes with a synthesized shutdown checkpoint: `template`
 * (the source cluster's control file: system id, settings, nonce) with the
 * state, checkpoint location and checkpoint copy of `checkpoint`, recovery and
 * backup fields cleared. `timeSeconds` defaults to the checkpoint's time.
 */
export function shutdownControlFile(template: ControlFileData, checkpointLsn: Lsn, checkpoint: CheckPoint, timeSeconds?: bigint): ControlFileData {
  if (checkpoint.redo !== checkpointLsn) {
    invalid(`A shutdown checkpoint's redo (${formatLsn(checkpoint.redo)}) must equal its location (${formatLsn(checkpointLsn)})`);
  }
  return {
    ...template,
    state: DbState.shutdowned,
    time: timeSeconds ?? checkpoint.time,
    checkPoint: checkpointLsn,
    checkPointCopy: { ...checkpoint },
    minRecoveryPoint: lsn(0),
    minRecoveryPointTli: 0,
    backupStartPoint: lsn(0),
    backupEndPoint: lsn(0),
    backupEndRequired: false,
  };
}

/** Where PostgreSQL will insert its next record after the synthesized one (MAXALIGN of the end). */
export function nextInsertLsn(w: SynthesizedWal): Lsn {
  return lsnAlign(w.endLsn, MAXALIGN_BYTES);
}
