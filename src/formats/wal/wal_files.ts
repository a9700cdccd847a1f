/**
 * Reading WAL records from segment files on disk: one segment file, or a
 * directory of them (a `pg_wal/`, a safekeeper timeline directory, an archive).
 *
 * This is the I/O shell around the pure WalStreamDecoder: it finds the
 * segments, reads them in large chunks into fresh buffers (the decoder keeps
 * views into what it is fed, so buffers are never reused) and feeds them in
 * LSN order. It knows nothing of record formats.
 *
 * Conventions, following pg_waldump:
 * * The segment size comes from the first segment's long page header.
 * * A directory is read from the first segment of the chosen timeline (or the
 *   segment holding `start`) through consecutive segments until one is
 *   missing. A single file is read alone.
 * * Reading starts at a page boundary (the segment start, or the page holding
 *   `start`), so a record continued from earlier pages is skipped the way
 *   XLogFindNextRecord skips it; records before `start` are not returned.
 *   With `end`, only records that end at or before it are returned.
 *
 * How reading stops is reported in `summary` rather than thrown when it is a
 * normal end of available WAL: a zero record length where the next record
 * should be ("end_of_wal", what a live server's last segment looks like),
 * the end of the files after complete segments — possibly inside a record
 * that continues into a segment we do not have ("input_exhausted") — or
 * reaching `end`. Everything else (CRC mismatch, bad page header, a file
 * shorter than a segment ending inside a record) is thrown as WalDecodeError.
 */
import { open, readdir, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { StrataError } from "../../lib/errors.js";
import { formatLsn, lsn, pageStart, parseWalFileName, segmentNumber, segmentStart, walFileName, type Lsn } from "../../lib/lsn.js";
import type { DecodedRecord } from "./decoded_record.js";
import { WalStreamDecoder } from "./wal_stream_decoder.js";
import { isValidWalSegSize, parsePageHeader, SIZE_OF_XLOG_LONG_PHD, XLP_LONG_HEADER } from "./xlog_page.js";
import { WalDecodeError } from "./xlog_record.js";

/**
 * Bytes per read(). Large enough that syscalls are negligible next to
 * decoding; small enough that a reader holds little memory beyond what the
 * records it hands out keep alive.
 */
const READ_CHUNK_BYTES = 4 * 1024 * 1024;

/**
 * Records per batch. Small enough that a consumer's records die young (a
 * batch of thousands would survive scavenges and be promoted, which costs
 * more GC than the decoding); large enough to amortize an async step.
 */
const BATCH_MAX_RECORDS = 256;

export interface WalSegmentFile {
  readonly path: string;
  readonly timeline: number;
  readonly segNo: bigint;
}

export interface WalReadOptions {
  /** First LSN of interest (records starting before it are skipped). */
  start?: Lsn;
  /** Stop at this LSN: records ending after it are not returned. */
  end?: Lsn;
  /** Timeline to read from a directory (default: the timeline of the first segment found). */
  timeline?: number;
  signal?: AbortSignal;
}

export type WalReadStop = "end_of_wal" | "input_exhausted" | "end_lsn_reached";

export interface WalReadSummary {
  readonly reason: WalReadStop;
  /** LSN where reading stopped: where the next record would start. */
  readonly stopLsn: Lsn;
  /** For "end_of_wal": the decoder's message (e.g. "Invalid record length at …: wanted 24, got 0"). */
  readonly detail?: string;
  /** For "input_exhausted": a record that started but continues past the available files. */
  readonly incompleteRecordLsn?: Lsn;
  readonly recordsRead: number;
}

/** Lists the WAL segment files in `dir` (24-hex-digit names), sorted by timeline then segment. */
export async function listWalSegments(dir: string, walSegSizeBytes: number): Promise<WalSegmentFile[]> {
  const names = await readdir(dir);
  const out: WalSegmentFile[] = [];
  for (const name of names) {
    if (!/^[0-9A-F]{24}$/.test(name)) continue;
    const p = parseWalFileName(name, walSegSizeBytes);
    out.push({ path: join(dir, name), timeline: p.timeline, segNo: p.segNo });
  }
  out.sort((a, b) => a.timeline - b.timeline || (a.segNo < b.segNo ? -1 : a.segNo > b.segNo ? 1 : 0));
  return out;
}

/** Reads the segment size from a segment file's long page header. */
export async function readSegmentSize(path: string): Promise<number> {
  const fh = await open(path, "r");
  try {
    const buf = Buffer.alloc(SIZE_OF_XLOG_LONG_PHD);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    if (bytesRead < SIZE_OF_XLOG_LONG_PHD) {
      throw new StrataError("truncated", `WAL segment file ${path} is too short (${bytesRead} bytes) for a long page header`);
    }
    const hdr = parsePageHeader(buf);
    if ((hdr.info & XLP_LONG_HEADER) === 0 || !hdr.long) {
      throw new StrataError("corrupt_data", `WAL segment file ${path} does not start with a long page header`);
    }
    if (!isValidWalSegSize(hdr.long.segSizeBytes)) {
      throw new StrataError("corrupt_data", `WAL segment file ${path}: invalid segment size ${hdr.long.segSizeBytes} in its long page header`);
    }
    return hdr.long.segSizeBytes;
  } finally {
    await fh.close();
  }
}

/**
 * Reads records from a segment file or a directory. Iterate `records()`;
 * afterwards `summary` says how reading stopped.
 */
export class WalFileReader {
  private summaryValue: WalReadSummary | undefined;
  private constructor(
    readonly segments: readonly WalSegmentFile[],
    readonly walSegSizeBytes: number,
    private readonly opts: WalReadOptions,
  ) {}

  /** How reading ended; set once `records()` has finished without throwing. */
  get summary(): WalReadSummary | undefined {
    return this.summaryValue;
  }

  /** First LSN the reader will decode from (a page boundary). */
  get readStartLsn(): Lsn {
    const first = this.segments[0]!;
    const segStart = segmentStart(first.segNo, this.walSegSizeBytes);
    const start = this.opts.start;
    return start !== undefined && start > segStart ? pageStart(start) : segStart;
  }

  static async open(path: string, opts: WalReadOptions = {}): Promise<WalFileReader> {
    const st = await stat(path).catch((e: unknown) => {
      throw new StrataError("not_found", `Cannot read WAL from ${path}: ${(e as Error).message}`, { cause: e });
    });
    let segments: WalSegmentFile[];
    let segSize: number;
    if (st.isDirectory()) {
      const probe = await listWalSegments(path, 16 * 1024 * 1024).catch(() => [] as WalSegmentFile[]);
      if (probe.length === 0) throw new StrataError("not_found", `No WAL segment files (24 hex digits) in directory ${path}`);
      segSize = await readSegmentSize(probe[0]!.path);
      const all = await listWalSegments(path, segSize);
      const timeline = opts.timeline ?? all[0]!.timeline;
      const onTimeline = all.filter((s) => s.timeline === timeline);
      if (onTimeline.length === 0) throw new StrataError("not_found", `No WAL segments of timeline ${timeline} in ${path}`);
      const firstSeg = opts.start !== undefined ? segmentNumber(opts.start, segSize) : onTimeline[0]!.segNo;
      segments = [];
      for (let seg = firstSeg; ; seg++) {
        const s = onTimeline.find((x) => x.segNo === seg);
        if (!s) break;
        segments.push(s);
      }
      if (segments.length === 0) {
        throw new StrataError(
          "not_found",
          `WAL segment ${walFileName(timeline, firstSeg, segSize)} holding ${formatLsn(opts.start ?? lsn(0))} is not in ${path}`,
        );
      }
    } else {
      segSize = await readSegmentSize(path);
      let parsed: ReturnType<typeof parseWalFileName>;
      try {
        parsed = parseWalFileName(basename(path), segSize);
      } catch (e) {
        throw new StrataError("invalid_argument", `Cannot tell the LSN of WAL file ${path}: ${(e as Error).message}`, { cause: e });
      }
      segments = [{ path, timeline: parsed.timeline, segNo: parsed.segNo }];
      if (opts.start !== undefined && segmentNumber(opts.start, segSize) !== parsed.segNo) {
        throw new StrataError("invalid_argument", `Start LSN ${formatLsn(opts.start)} is not inside file ${path}`);
      }
    }
    return new WalFileReader(segments, segSize, opts);
  }

  /** The records one at a time (convenient; `batches()` is cheaper for large volumes). */
  async *records(): AsyncGenerator<DecodedRecord, void, undefined> {
    for await (const batch of this.batches()) yield* batch;
  }

  /**
   * The records in batches, one per read chunk (several MiB of WAL): an
   * async iteration step costs about a microsecond, as much as decoding a
   * small record, so bulk consumers should not pay it per record.
   */
  async *batches(): AsyncGenerator<DecodedRecord[], void, undefined> {
    const { start, end, signal } = this.opts;
    const from = this.readStartLsn;
    const decoder = new WalStreamDecoder(from, { walSegSizeBytes: this.walSegSizeBytes });
    let count = 0;
    let endedShort = false;
    const stop = (reason: WalReadStop, extra: Partial<WalReadSummary> = {}): void => {
      this.summaryValue = { reason, stopLsn: decoder.nextRecordLsn, recordsRead: count, ...extra };
    };
    for (const seg of this.segments) {
      const segBase = segmentStart(seg.segNo, this.walSegSizeBytes);
      let fileOff = Number(lsn(from > segBase ? from - segBase : 0n));
      const fh = await open(seg.path, "r");
      try {
        for (;;) {
          signal?.throwIfAborted();
          const want = Math.min(READ_CHUNK_BYTES, this.walSegSizeBytes - fileOff);
          if (want <= 0) break;
          const buf = Buffer.allocUnsafe(want);
          const { bytesRead } = await fh.read(buf, 0, want, fileOff);
          if (bytesRead === 0) {
            endedShort = true;
            break;
          }
          fileOff += bytesRead;
          decoder.feed(bytesRead === want ? buf : buf.subarray(0, bytesRead));
          const batch: DecodedRecord[] = [];
          let finished = false;
          try {
            for (let r = decoder.next(); r !== undefined; r = decoder.next()) {
              if (end !== undefined && r.endLsn > end) {
                stop("end_lsn_reached");
                finished = true;
                break;
              }
              if (start !== undefined && r.lsn < start) continue;
              count++;
              batch.push(r);
              if (batch.length >= BATCH_MAX_RECORDS) {
                yield batch.splice(0);
              }
            }
          } catch (e) {
            if (!(e instanceof WalDecodeError && e.endOfWal)) {
              // Hand out the good records first; the error comes with the next step.
              if (batch.length > 0) yield batch;
              throw e;
            }
            this.summaryValue = { reason: "end_of_wal", stopLsn: e.lsn, detail: e.message, recordsRead: count };
            finished = true;
          }
          if (batch.length > 0) yield batch;
          if (finished) return;
          if (end !== undefined && decoder.feedLsn >= end && decoder.nextRecordLsn >= end) {
            stop("end_lsn_reached");
            return;
          }
        }
      } finally {
        await fh.close();
      }
      if (endedShort) break;
    }
    if (endedShort) {
      decoder.end(); // throws "truncated" when the short file ends inside a record
      stop("input_exhausted");
      return;
    }
    try {
      decoder.end();
      stop("input_exhausted");
    } catch (e) {
      if (!(e instanceof WalDecodeError) || e.code !== "truncated") throw e;
      stop("input_exhausted", { incompleteRecordLsn: e.lsn });
    }
  }
}
