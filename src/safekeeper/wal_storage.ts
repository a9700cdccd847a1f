/**
 * WalStorage — one timeline's WAL on a safekeeper's local disk.
 *
 * Place in the data flow: the WAL receiver (streaming from the compute, or
 * from a peer during recovery) calls `write` for every chunk of WAL and
 * `flush` when it is about to report its flush LSN; the WAL service calls
 * `read` to stream WAL to pageservers, standbys and peers; retention calls
 * `removeSegmentsBefore`; the endpoint-start protocol calls `truncate` to drop
 * WAL of a term that lost. The control file (control_file.ts) persists
 * `recoveryStartLsn` as its flush LSN hint.
 *
 * On disk it is exactly what PostgreSQL's own pg_wal holds, so pg_waldump,
 * pg_receivewal users and byte comparisons with the compute's pg_wal work:
 * * 16 MiB (the cluster's segment size) files named by XLogFileName with
 *   timeline 1 (`000000010000000000000003`); bytes at their LSN offset.
 * * The segment being written is `<name>.partial` and there is at most one;
 *   it is the newest. Every segment file is full-size: a new one is written
 *   as zeros under `<name>.tmp`, fsynced and renamed into place (as
 *   PostgreSQL's XLogFileInit does), so later writes never grow a file.
 *   The next segment's `.tmp` is prepared in the background once the
 *   current one is half full, so a commit crossing the boundary only waits
 *   for a rename; leftover `.tmp` files are removed on open.
 * * When a write fills a segment, the segment is fsynced, renamed to its
 *   final name and the directory fsynced, before anything else happens. So
 *   every file with a final name is complete and durable.
 * * Bytes of the partial segment beyond the write LSN are zero.
 *
 * LSNs: `writeLsn` is the end of the bytes written; `flushLsn` the end of the
 * bytes known durable — it only advances after the fsync that covers them
 * (flush(), or the fsync that completes a segment), never on a write alone.
 * Writes must be contiguous: `write(start)` requires start == writeLsn.
 * Rewriting WAL is `truncate(lsn)` followed by writes from lsn.
 * The flush LSN may lie inside a record (a walsender streams whatever its
 * server has flushed); that is what a standby reports to its primary. Where
 * a record boundary is needed — the start LSN of a new term, a base backup
 * point — use `flushRecordLsn`, the end of the last complete flushed record.
 * After a restart the flush LSN is always such a record end.
 *
 * Record boundaries: every written byte is also fed to a
 * RecordBoundaryTracker (record_boundaries.ts: page headers and record
 * lengths only — no decoding, no CRC, no copy; recovery on open still
 * decodes with CRC checks), which tells where complete records end (exactly: xlogreader's EndRecPtr,
 * not MAXALIGNed — PostgreSQL's own flush LSN, XLogInsertRecord's EndPos,
 * includes the padding after the last record, so it can lie up to 7 bytes
 * past the last record end we report). The storage always knows a record
 * boundary at or below the write and flush LSNs (`flushRecordLsn` is never
 * unknown, so nobody has to re-decode WAL to find it):
 * * while writing: the end of the last complete record the tracker decoded;
 * * after `truncate(at)`: `at` itself (callers truncate at record
 *   boundaries), until a record past it completes;
 * * after `open`: the end of the last complete record recovery decoded, or,
 *   if it decoded none, the hint itself — a record start, or after a
 *   truncation the exact (possibly unaligned) truncation point, which the
 *   timeline stores as the hint before truncating. So a restart right after
 *   a truncation at an unaligned record end reports that end exactly.
 *   Recovery decodes from the hint, or from the next record start after it
 *   when the hint is an unaligned record end.
 * The tracker resumes exactly where the next record starts (MAXALIGNed after
 * an unaligned record end, after the page header when that falls on a page
 * boundary), and is fed bytes from there even when a write starts earlier.
 * `recoveryStartLsn` is the start of the last complete record at or below
 * the flush LSN (or a point where WAL starts afresh: the timeline start, a
 * truncation point); stored in the control file, it is where recovery starts.
 * Invalid WAL from upstream does not stop writes (storage stores bytes); the
 * tracker stops advancing and restarts at the next segment start.
 *
 * Crash recovery (`open`): final segments are trusted whole. From the hint,
 * records are decoded (CRC-checked) through the final segments into the
 * partial one; the end of WAL is the end of the last complete valid record
 * (or the end of the last final segment, if later). Bytes after it in the
 * partial segment are a torn or unacknowledged tail: they are zeroed and the
 * file fsynced, so what we report after a restart is durable and valid.
 * A record the compute acknowledged was flushed before the ack, hence
 * complete on disk, hence found again.
 *
 * Failures: an I/O error in write/flush/truncate/remove leaves the on-disk
 * state unknown (after a failed fsync Linux may have dropped the dirty
 * pages), so the storage refuses further changes with io_error and must be
 * reopened, which runs recovery — PostgreSQL PANICs for the same reason.
 * Mutating calls are serialized; `read` runs concurrently with them.
 */
import { StrataError } from "../lib/errors.js";
import {
  formatLsn,
  lsn as toLsn,
  parseWalFileName,
  segmentNumber,
  segmentOffset,
  segmentStart,
  walFileName,
  XLOG_BLCKSZ,
  type Lsn,
} from "../lib/lsn.js";
import { WalStreamDecoder } from "../formats/wal/wal_stream_decoder.js";
import { RecordBoundaryTracker } from "./record_boundaries.js";
import { isValidWalSegSize, SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD } from "../formats/wal/xlog_page.js";
import { WalDecodeError } from "../formats/wal/xlog_record.js";
import { isNotFound, type DurableFile, type DurableFS } from "./durable_fs.js";
import { join } from "node:path";

/** Timeline id in segment file names: strata timelines never switch PostgreSQL timelines. */
export const WAL_FILE_TIMELINE = 1;
export const PARTIAL_SUFFIX = ".partial";
/** Suffix of a segment being pre-allocated; leftovers are removed on open. */
export const SEGMENT_TEMP_SUFFIX = ".tmp";
/** Zero-fill buffer for pre-allocation and tail zeroing: big enough for few syscalls, small enough to keep around. */
const ZERO_CHUNK_BYTES = 1024 * 1024;
const ZEROS = new Uint8Array(ZERO_CHUNK_BYTES);
/** Open attempts of a read across a concurrent partial -> final rename: name, other name, name again. */
const READ_RENAME_ATTEMPTS = 3;
/** Read-back chunk when adopting an external writer's WAL (record tracking). */
const ADOPT_READ_BYTES = 1024 * 1024;
/** MAXALIGN: WAL records start at multiples of 8. */
const MAXALIGN = 8;

export interface WalStorageOptions {
  fs: DurableFS;
  /** The timeline's directory (created if missing). */
  dir: string;
  walSegSizeBytes: number;
  /** First LSN of the timeline's WAL: a segment start or a record start. */
  timelineStartLsn: Lsn;
  /** The control file's flush LSN hint (a previous `recoveryStartLsn`), or the timeline start. */
  flushLsnHint: Lsn;
  /** System identifier long page headers must carry, if known. */
  systemId?: bigint;
  /**
   * Zero-fill the next segment in the background once the current one is
   * half written (default true), so crossing a segment boundary does not
   * stall a commit for a 16 MiB write and fsync. Tests that count file
   * operations turn it off for determinism.
   */
  preallocateAhead?: boolean;
}

/**
 * A record boundary the storage knows: `endLsn` is the end of a complete
 * record (or a point where WAL starts afresh: the timeline start, a
 * truncation point); `recoveryStart` is where decoding can start to find
 * this boundary again or a later one — the record's own start, or for a
 * restart point the next record start at or after it.
 */
interface RecordBoundary {
  readonly recoveryStart: Lsn;
  readonly endLsn: Lsn;
}

/** The segment file an external writer appends to (WalStorage.beginExternalWrite). */
export interface ExternalSegment {
  readonly path: string;
  /** LSN of the segment's first byte. */
  readonly startLsn: Lsn;
  /** Where the writer continues. */
  readonly writeLsn: Lsn;
}

/** What recovery found on open (for logs and tests). */
export interface RecoveryReport {
  /** Where decoding started. */
  readonly decodeStartLsn: Lsn;
  /** Recovered end of WAL (writeLsn = flushLsn after open). */
  readonly endLsn: Lsn;
  readonly recordsDecoded: number;
  /** Non-zero bytes found and zeroed after the end in the partial segment. */
  readonly zeroedBytes: number;
  /** Why decoding stopped, if it hit invalid WAL (normal after a crash: a torn tail). */
  readonly stopReason: string | undefined;
}

export class WalStorage {
  readonly dir: string;
  readonly walSegSizeBytes: number;
  readonly timelineStartLsn: Lsn;
  private readonly fs: DurableFS;
  private readonly systemId: bigint | undefined;
  private readonly preallocateAhead: boolean;
  /** A zero-filled `<next>.tmp` being prepared in the background; resolves to false if that failed. */
  private prealloc: { segNo: bigint; done: Promise<boolean> } | undefined;

  private write_: Lsn;
  private flush_: Lsn;
  /** Lowest segment present on disk, if any. */
  private oldestSegNo: bigint | undefined;
  /** One past the last segment with a final name (== oldestSegNo when none). */
  private finalsEnd: bigint;
  private partial: { segNo: bigint; file: DurableFile; dirty: boolean } | undefined;

  private tracker: RecordBoundaryTracker | undefined;
  /** Last record boundary written / flushed (always known; see the header). */
  private lastWritten: RecordBoundary;
  private lastFlushed: RecordBoundary;

  private failure: unknown;
  private closed = false;
  /** A writer in another process appends to the partial segment (beginExternalWrite .. endExternalWrite). */
  private external = false;
  private chain: Promise<unknown> = Promise.resolve();
  /** Mutating calls queued or running (appendAndFlushNow runs only when there are none). */
  private pendingCalls = 0;
  private report: RecoveryReport | undefined;

  private constructor(opts: WalStorageOptions) {
    this.fs = opts.fs;
    this.dir = opts.dir;
    this.walSegSizeBytes = opts.walSegSizeBytes;
    this.timelineStartLsn = opts.timelineStartLsn;
    this.systemId = opts.systemId;
    this.preallocateAhead = opts.preallocateAhead ?? true;
    this.write_ = opts.timelineStartLsn;
    this.flush_ = opts.timelineStartLsn;
    // Replaced by recovery in open().
    this.lastWritten = { recoveryStart: opts.flushLsnHint, endLsn: opts.timelineStartLsn };
    this.lastFlushed = this.lastWritten;
    this.finalsEnd = segmentNumber(opts.timelineStartLsn, opts.walSegSizeBytes);
  }

  /** Opens (or creates) the WAL directory and recovers the end of WAL. */
  static async open(opts: WalStorageOptions): Promise<WalStorage> {
    if (!isValidWalSegSize(opts.walSegSizeBytes)) {
      throw new StrataError("invalid_argument", `Invalid WAL segment size ${opts.walSegSizeBytes}: must be a power of two from 1 MiB to 1 GiB`);
    }
    if (!isDecoderStart(opts.timelineStartLsn, opts.walSegSizeBytes)) {
      throw new StrataError("invalid_argument", `Timeline start ${formatLsn(opts.timelineStartLsn)} is neither a page boundary nor a MAXALIGNed record position`);
    }
    const s = new WalStorage(opts);
    await s.recover(opts.flushLsnHint);
    return s;
  }

  get writeLsn(): Lsn {
    return this.write_;
  }

  get flushLsn(): Lsn {
    return this.flush_;
  }

  /**
   * End of the last complete record at or below the flush LSN: a record
   * boundary (see the header for the exact rules after truncate and open).
   */
  get flushRecordLsn(): Lsn {
    return this.lastFlushed.endLsn;
  }

  /** Where recovery should start decoding: persist it as the control file's flush LSN hint. */
  get recoveryStartLsn(): Lsn {
    return this.lastFlushed.recoveryStart;
  }

  /** What the last open found. */
  get recovery(): RecoveryReport {
    return this.report!;
  }

  /** Lowest LSN still readable (start of the oldest segment, or the timeline start). */
  get oldestLsn(): Lsn {
    const start = this.oldestSegNo === undefined ? this.write_ : segmentStart(this.oldestSegNo, this.walSegSizeBytes);
    return start < this.timelineStartLsn ? this.timelineStartLsn : start;
  }

  // -------------------------------------------------------------------------
  // Writing
  // -------------------------------------------------------------------------

  /**
   * Appends `bytes` at `startLsn`, which must be the write LSN. The bytes are
   * in the OS's hands when this returns, not durable: call `flush`. A write
   * that completes a segment makes that segment durable (and final).
   */
  write(startLsn: Lsn, bytes: Uint8Array): Promise<void> {
    return this.exclusive(async () => {
      this.checkNotExternal("write");
      if (startLsn !== this.write_) {
        throw new StrataError(
          "invalid_argument",
          `WAL write at ${formatLsn(startLsn)} is not contiguous with the write LSN ${formatLsn(this.write_)} in ${this.dir}`,
        );
      }
      let pos = startLsn;
      let off = 0;
      while (off < bytes.length) {
        const segNo = segmentNumber(pos, this.walSegSizeBytes);
        const segOff = segmentOffset(pos, this.walSegSizeBytes);
        const n = Math.min(bytes.length - off, this.walSegSizeBytes - segOff);
        const piece = bytes.subarray(off, off + n);
        const p = await this.partialFor(segNo);
        await this.io(`write ${n} bytes at ${formatLsn(pos)} to`, p.file.path, () => p.file.write(piece, segOff));
        p.dirty = true;
        this.track(pos, piece);
        pos = toLsn(pos + BigInt(n));
        off += n;
        this.write_ = pos;
        await this.segmentWritten(segNo, segOff + n);
      }
    });
  }

  /**
   * `write` + `flush` without a single await, for the commit path: when no
   * other mutating call is in progress and the bytes go into the open
   * partial segment without filling it, and its file does small I/O inline
   * (DurableFile.writeAndSyncNow), they are written and fsynced before this
   * returns the new flush LSN. Otherwise it does nothing and returns
   * undefined: the caller uses `write` + `flush`, which handle every case
   * (segment creation and completion, errors with their messages). On an
   * I/O error the storage is poisoned as with every other call.
   * Why: each await of the general path is a promise and a microtask; per
   * commit batch they were most of the safekeeper's CPU (bench/safekeeper.ts).
   */
  appendAndFlushNow(startLsn: Lsn, bytes: Uint8Array): Lsn | undefined {
    if (this.pendingCalls > 0 || this.closed || this.external || this.failure !== undefined || startLsn !== this.write_ || bytes.length === 0) return undefined;
    const p = this.partial;
    if (p === undefined || p.file.writeAndSyncNow === undefined) return undefined;
    const segNo = segmentNumber(startLsn, this.walSegSizeBytes);
    const segOff = segmentOffset(startLsn, this.walSegSizeBytes);
    if (p.segNo !== segNo || segOff + bytes.length >= this.walSegSizeBytes) return undefined;
    let done: boolean;
    try {
      done = p.file.writeAndSyncNow(bytes, segOff);
    } catch (e) {
      const err = new StrataError("io_error", `Cannot write ${bytes.length} bytes at ${formatLsn(startLsn)} and fsync ${p.file.path}`, { cause: e });
      this.failure ??= err;
      throw err;
    }
    if (!done) return undefined;
    p.dirty = false; // the fsync covered every earlier write too
    this.track(startLsn, bytes);
    this.write_ = toLsn(startLsn + BigInt(bytes.length));
    this.markFlushed();
    if (segOff + bytes.length >= this.walSegSizeBytes / 2) this.startPrealloc(segNo + 1n);
    return this.flush_;
  }

  /**
   * Makes everything written durable (one fsync, however many writes came
   * before) and returns the new flush LSN.
   */
  flush(): Promise<Lsn> {
    return this.exclusive(async () => {
      await this.syncPartial();
      this.markFlushed();
      return this.flush_;
    });
  }

  private async syncPartial(): Promise<void> {
    const p = this.partial;
    if (p !== undefined && p.dirty) {
      await this.io("fsync", p.file.path, () => p.file.sync());
      p.dirty = false;
    }
  }

  /**
   * Drops all WAL at and after `at`: later segments are deleted, the tail of
   * the segment holding `at` is zeroed (a final segment becomes partial
   * again), everything is fsynced, and write and flush LSN become `at`.
   * `at` must be a record boundary (the end of a record, as term switch
   * points are) between the oldest retained WAL and the write LSN.
   */
  truncate(at: Lsn): Promise<void> {
    return this.exclusive(async () => {
      this.checkNotExternal("truncate");
      if (at > this.write_ || at < this.oldestLsn) {
        throw new StrataError(
          "invalid_argument",
          `Cannot truncate WAL in ${this.dir} at ${formatLsn(at)}: outside the stored range [${formatLsn(this.oldestLsn)}, ${formatLsn(this.write_)}]`,
        );
      }
      await this.dropPrealloc();
      if (at === this.write_) {
        // Nothing to drop; only make the write LSN the flush LSN as promised.
        await this.syncPartial();
        this.markFlushed();
        return;
      }
      const atSeg = segmentNumber(at, this.walSegSizeBytes);
      const atOff = segmentOffset(at, this.walSegSizeBytes);
      const lastSeg = this.partial?.segNo ?? this.finalsEnd - 1n;
      // Whole segments go first, newest first, so what remains is always a prefix.
      const firstDropped = atOff === 0 ? atSeg : atSeg + 1n;
      for (let seg = lastSeg; seg >= firstDropped && this.oldestSegNo !== undefined && seg >= this.oldestSegNo; seg--) {
        await this.dropSegment(seg);
      }
      await this.io("fsync directory", this.dir, () => this.fs.syncDir(this.dir));
      if (atOff !== 0) {
        if (this.partial === undefined) {
          // The segment holding `at` is final: make it the partial segment again.
          const from = this.segmentPath(atSeg, false);
          const to = this.segmentPath(atSeg, true);
          await this.io("rename", from, () => this.fs.rename(from, to));
          await this.io("fsync directory", this.dir, () => this.fs.syncDir(this.dir));
          const file = await this.io("open", to, () => this.fs.openFile(to, "readwrite"));
          this.partial = { segNo: atSeg, file, dirty: false };
          this.finalsEnd = atSeg;
        }
        const p = this.partial;
        const dataEnd = this.write_ >= segmentStart(atSeg + 1n, this.walSegSizeBytes) ? this.walSegSizeBytes : segmentOffset(this.write_, this.walSegSizeBytes);
        await this.zeroRange(p.file, atOff, dataEnd);
        await this.io("fsync", p.file.path, () => p.file.sync());
        p.dirty = false;
      }
      if (this.oldestSegNo !== undefined && this.oldestSegNo > (atOff === 0 ? atSeg - 1n : atSeg)) this.oldestSegNo = undefined;
      this.write_ = at;
      this.flush_ = at;
      // Record tracking restarts at `at`, a record boundary by contract: it is the last one known.
      this.tracker = this.newBoundaryTracker(decoderStartAtOrAfter(at, this.walSegSizeBytes));
      const known = [this.lastFlushed, this.lastWritten].find((b) => b.endLsn === at);
      // An unaligned `at` is a valid recovery start: recovery decodes from the next record start
      // after it, and when it finds nothing there, `at` itself is the exact end it reports.
      const boundary = known ?? { recoveryStart: at, endLsn: at };
      this.lastWritten = boundary;
      this.lastFlushed = boundary;
    });
  }

  /**
   * Deletes whole final segments that end at or before `upTo` (retention:
   * WAL below both the backup LSN and the pageserver's remote-consistent
   * LSN). The partial segment is never removed. Returns how many went.
   */
  removeSegmentsBefore(upTo: Lsn): Promise<number> {
    return this.exclusive(async () => {
      const limit = segmentNumber(upTo, this.walSegSizeBytes); // segments below it end at or before upTo
      let removed = 0;
      while (this.oldestSegNo !== undefined && this.oldestSegNo < limit && this.oldestSegNo < this.finalsEnd) {
        const path = this.segmentPath(this.oldestSegNo, false);
        await this.io("remove", path, () => this.fs.unlink(path));
        removed++;
        this.oldestSegNo = this.oldestSegNo + 1n;
        if (this.oldestSegNo >= this.finalsEnd && this.partial === undefined) this.oldestSegNo = undefined;
      }
      if (removed > 0) await this.io("fsync directory", this.dir, () => this.fs.syncDir(this.dir));
      return removed;
    });
  }

  // -------------------------------------------------------------------------
  // A writer in another process (native_receiver.ts)
  // -------------------------------------------------------------------------

  /**
   * Gets the segment holding the write LSN ready for a writer in another
   * process — everything written so far is made durable, the partial
   * segment is created (full-size, as always) if the write LSN is at a
   * segment start — and returns its file. That writer may then append from
   * the write LSN up to the segment's end, fdatasyncing what it reports;
   * `adoptExternalWrite` takes its progress in. Until `endExternalWrite`,
   * `write`, `truncate` and `appendAndFlushNow` are refused here. Called
   * again after the writer filled the segment, it returns the next one.
   */
  beginExternalWrite(): Promise<ExternalSegment> {
    return this.exclusive(async () => {
      await this.syncPartial();
      this.markFlushed();
      const segNo = segmentNumber(this.write_, this.walSegSizeBytes);
      const p = await this.partialFor(segNo);
      this.external = true;
      return { path: p.file.path, startLsn: segmentStart(segNo, this.walSegSizeBytes), writeLsn: this.write_ };
    });
  }

  /**
   * The external writer wrote and fdatasynced WAL up to `flushLsn` (inside
   * the partial segment): the bytes are read back for the record tracker,
   * write and flush LSN move there, and a filled segment is completed
   * (fsync, final name, directory fsync) as `write` does. No-op at or below
   * the write LSN. Returns the flush LSN.
   */
  adoptExternalWrite(flushLsn: Lsn): Promise<Lsn> {
    return this.exclusive(async () => {
      if (!this.external) throw new Error("assertion failed: adoptExternalWrite without an external writer");
      await this.adoptLocked(flushLsn);
      return this.flush_;
    });
  }

  private async adoptLocked(flushLsn: Lsn): Promise<void> {
    if (flushLsn <= this.write_) return;
    const p = this.partial;
    const segNo = segmentNumber(this.write_, this.walSegSizeBytes);
    const segEnd = segmentStart(segNo + 1n, this.walSegSizeBytes);
    if (p === undefined || p.segNo !== segNo || flushLsn > segEnd) {
      throw new Error(`assertion failed: external write up to ${formatLsn(flushLsn)} is not inside the partial segment at ${formatLsn(this.write_)}`);
    }
    const buf = new Uint8Array(Math.min(ADOPT_READ_BYTES, Number(flushLsn - this.write_)));
    let pos = this.write_;
    while (pos < flushLsn) {
      const n = Math.min(buf.length, Number(flushLsn - pos));
      const off = segmentOffset(pos, this.walSegSizeBytes);
      const got = await this.io(`read back ${n} bytes at ${formatLsn(pos)} from`, p.file.path, () => p.file.read(buf.subarray(0, n), off));
      if (got !== n) throw this.corrupt(`${p.file.path} is shorter than ${off + n} bytes`);
      this.track(pos, buf.subarray(0, n));
      pos = toLsn(pos + BigInt(n));
    }
    this.write_ = flushLsn;
    this.markFlushed();
    await this.segmentWritten(segNo, Number(flushLsn - segmentStart(segNo, this.walSegSizeBytes)));
  }

  /**
   * The external writer is gone. `lastFlushLsn` is the last position it
   * reported durable (adopted first); if it may have written past it (it
   * died without a final report), pass `unknownTail`: the rest of the
   * partial segment is zeroed and fsynced, so bytes nobody acknowledged
   * cannot reappear after a restart as WAL. Returns the flush LSN.
   */
  endExternalWrite(lastFlushLsn: Lsn, unknownTail: boolean): Promise<Lsn> {
    return this.exclusive(async () => {
      if (!this.external) return this.flush_;
      this.external = false;
      await this.adoptLocked(lastFlushLsn);
      const p = this.partial;
      if (unknownTail && p !== undefined && p.segNo === segmentNumber(this.write_, this.walSegSizeBytes)) {
        await this.zeroRange(p.file, segmentOffset(this.write_, this.walSegSizeBytes), this.walSegSizeBytes);
        await this.io("fsync", p.file.path, () => p.file.sync());
      }
      return this.flush_;
    });
  }

  /** The external writer's fsync failed: the file's state is unknown, as after any failed fsync here. */
  failExternalWrite(cause: Error): void {
    this.failure ??= new StrataError("io_error", `The WAL receiver failed writing ${this.dir}: ${cause.message}`, { cause });
  }

  private checkNotExternal(what: string): void {
    if (this.external) throw new Error(`assertion failed: WAL ${what} in ${this.dir} while another process writes it`);
  }

  /** Closes the partial segment's file. Unflushed writes are not flushed. */
  close(): Promise<void> {
    return this.exclusive(async () => {
      this.closed = true;
      if (this.prealloc !== undefined) await this.prealloc.done; // its temp file is removed on the next open
      this.prealloc = undefined;
      const p = this.partial;
      this.partial = undefined;
      if (p !== undefined) await p.file.close().catch(() => undefined);
    }, true);
  }

  // -------------------------------------------------------------------------
  // Reading
  // -------------------------------------------------------------------------

  /**
   * One past the last complete segment: every segment below it that is
   * still on disk has its final name and is durable (WAL offload uploads
   * only those).
   */
  get completeSegmentsEnd(): bigint {
    return this.finalsEnd;
  }

  /**
   * The whole file of complete segment `segNo`, byte for byte (including
   * bytes before the timeline start in its first segment): what WAL offload
   * uploads. not_found when the segment is not a complete segment on disk.
   */
  async readCompleteSegment(segNo: bigint): Promise<Uint8Array> {
    if (segNo >= this.finalsEnd || this.oldestSegNo === undefined || segNo < this.oldestSegNo) {
      throw new StrataError("not_found", `WAL segment ${walFileName(WAL_FILE_TIMELINE, segNo, this.walSegSizeBytes)} is not a complete segment in ${this.dir}`);
    }
    const path = this.segmentPath(segNo, false);
    const f = await this.fs.openFile(path, "read").catch((e: unknown) => {
      throw new StrataError(isNotFound(e) ? "not_found" : "io_error", `Cannot open WAL segment ${path}`, { cause: e });
    });
    try {
      const buf = new Uint8Array(this.walSegSizeBytes);
      const got = await f.read(buf, 0);
      if (got !== this.walSegSizeBytes) throw this.corrupt(`segment ${path} has ${got} bytes, expected ${this.walSegSizeBytes}`);
      return buf;
    } finally {
      await f.close().catch(() => undefined);
    }
  }

  /**
   * Up to `maxBytes` of WAL from `startLsn`, not past `endLsn` (default: the
   * flush LSN — unflushed WAL is never served). Crosses segment boundaries.
   * Returns fewer bytes (possibly none) at the end; WAL removed by retention
   * is not_found.
   */
  async read(startLsn: Lsn, maxBytes: number, endLsn: Lsn = this.flush_): Promise<Uint8Array> {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new StrataError("invalid_argument", `Invalid WAL read size ${maxBytes}`);
    const limit = endLsn < this.flush_ ? endLsn : this.flush_;
    if (startLsn >= limit || maxBytes === 0) return new Uint8Array(0);
    if (startLsn < this.oldestLsn) {
      throw new StrataError("not_found", `WAL at ${formatLsn(startLsn)} in ${this.dir} was removed or never stored; oldest is ${formatLsn(this.oldestLsn)}`);
    }
    const total = Number(limit - startLsn < BigInt(maxBytes) ? limit - startLsn : BigInt(maxBytes));
    const out = new Uint8Array(total);
    let done = 0;
    while (done < total) {
      const at = toLsn(startLsn + BigInt(done));
      const segNo = segmentNumber(at, this.walSegSizeBytes);
      const segOff = segmentOffset(at, this.walSegSizeBytes);
      const n = Math.min(total - done, this.walSegSizeBytes - segOff);
      await this.readSegment(segNo, out.subarray(done, done + n), segOff, at);
      done += n;
    }
    return out;
  }

  /**
   * Reads from one segment. The partial segment is renamed when it fills up,
   * possibly while we open it, so a missing file is retried under the other
   * name, then the first again (rename is atomic: one of them exists at any
   * moment, but not necessarily at the moments we look).
   */
  private async readSegment(segNo: bigint, into: Uint8Array, segOff: number, at: Lsn): Promise<void> {
    const partialFirst = this.partial?.segNo === segNo;
    for (let attempt = 0; ; attempt++) {
      const path = this.segmentPath(segNo, attempt % 2 === 0 ? partialFirst : !partialFirst);
      let f: DurableFile;
      try {
        f = await this.fs.openFile(path, "read");
      } catch (e) {
        if (isNotFound(e) && attempt < READ_RENAME_ATTEMPTS - 1) continue;
        const code = isNotFound(e) ? "not_found" : "io_error";
        throw new StrataError(code, `Cannot read WAL at ${formatLsn(at)}: cannot open ${path}`, { cause: e });
      }
      try {
        const got = await f.read(into, segOff);
        if (got !== into.length) {
          throw new StrataError("corrupt_data", `WAL segment ${path} is shorter than ${segOff + into.length} bytes (reading ${formatLsn(at)})`);
        }
        return;
      } catch (e) {
        if (e instanceof StrataError) throw e;
        throw new StrataError("io_error", `Cannot read WAL at ${formatLsn(at)} from ${path}`, { cause: e });
      } finally {
        await f.close().catch(() => undefined);
      }
    }
  }

  // -------------------------------------------------------------------------
  // Segments
  // -------------------------------------------------------------------------

  private segmentPath(segNo: bigint, partial: boolean): string {
    return join(this.dir, walFileName(WAL_FILE_TIMELINE, segNo, this.walSegSizeBytes) + (partial ? PARTIAL_SUFFIX : ""));
  }

  /** The open partial segment `segNo`, pre-allocating it if it is the next one. */
  private async partialFor(segNo: bigint): Promise<{ segNo: bigint; file: DurableFile; dirty: boolean }> {
    if (this.partial !== undefined) {
      if (this.partial.segNo !== segNo) throw new Error(`assertion failed: write to segment ${segNo} while ${this.partial.segNo} is partial`);
      return this.partial;
    }
    const tmp = this.tempSegmentPath(segNo);
    const target = this.segmentPath(segNo, true);
    let ready = false;
    if (this.prealloc?.segNo === segNo) {
      ready = await this.prealloc.done;
      this.prealloc = undefined;
    } else {
      await this.dropPrealloc();
    }
    if (!ready) {
      const f = await this.io("create", tmp, () => this.fs.openFile(tmp, "create"));
      try {
        await this.zeroRange(f, 0, this.walSegSizeBytes);
        await this.io("fsync", tmp, () => f.sync());
      } finally {
        await f.close().catch(() => undefined);
      }
    }
    await this.io("rename", tmp, () => this.fs.rename(tmp, target));
    await this.io("fsync directory", this.dir, () => this.fs.syncDir(this.dir));
    const file = await this.io("open", target, () => this.fs.openFile(target, "readwrite"));
    this.partial = { segNo, file, dirty: false };
    if (this.oldestSegNo === undefined) this.oldestSegNo = segNo;
    return this.partial;
  }

  private tempSegmentPath(segNo: bigint): string {
    return this.segmentPath(segNo, false) + SEGMENT_TEMP_SUFFIX;
  }

  /** Starts zero-filling `<segNo>.tmp` in the background, unless already under way. */
  private startPrealloc(segNo: bigint): void {
    if (!this.preallocateAhead || this.prealloc !== undefined) return;
    const path = this.tempSegmentPath(segNo);
    const run = async (): Promise<boolean> => {
      // Not yet part of the WAL: a failure here only means the foreground creates the file itself.
      try {
        const f = await this.fs.openFile(path, "create");
        try {
          for (let o = 0; o < this.walSegSizeBytes; o += ZERO_CHUNK_BYTES) {
            await f.write(ZEROS.subarray(0, Math.min(ZERO_CHUNK_BYTES, this.walSegSizeBytes - o)), o);
          }
          await f.sync();
        } finally {
          await f.close();
        }
        return true;
      } catch {
        return false;
      }
    };
    this.prealloc = { segNo, done: run() };
  }

  /** Waits for a background pre-allocation and removes its file (after a truncate it may be the wrong segment). */
  private async dropPrealloc(): Promise<void> {
    const p = this.prealloc;
    if (p === undefined) return;
    this.prealloc = undefined;
    await p.done;
    await this.fs.unlink(this.tempSegmentPath(p.segNo)).catch(() => undefined);
  }

  /**
   * Bytes of segment `segNo` are in place up to offset `endOff`: a filled
   * segment is completed; past its half, the next one is prepared.
   */
  private async segmentWritten(segNo: bigint, endOff: number): Promise<void> {
    if (endOff === this.walSegSizeBytes) await this.completeSegment();
    else if (endOff >= this.walSegSizeBytes / 2) this.startPrealloc(segNo + 1n);
  }

  /** The partial segment is full: fsync, give it its final name, fsync the directory. */
  private async completeSegment(): Promise<void> {
    const p = this.partial!;
    await this.io("fsync", p.file.path, () => p.file.sync());
    await p.file.close().catch(() => undefined);
    this.partial = undefined;
    const to = this.segmentPath(p.segNo, false);
    await this.io("rename", p.file.path, () => this.fs.rename(p.file.path, to));
    await this.io("fsync directory", this.dir, () => this.fs.syncDir(this.dir));
    this.finalsEnd = p.segNo + 1n;
    // Every byte below the write LSN is now in fsynced files.
    this.markFlushed();
  }

  private async dropSegment(segNo: bigint): Promise<void> {
    if (this.partial?.segNo === segNo) {
      const p = this.partial;
      this.partial = undefined;
      await p.file.close().catch(() => undefined);
      await this.io("remove", p.file.path, () => this.fs.unlink(p.file.path));
    } else {
      const path = this.segmentPath(segNo, false);
      await this.io("remove", path, () => this.fs.unlink(path));
      if (this.finalsEnd > segNo) this.finalsEnd = segNo;
    }
  }

  private async zeroRange(f: DurableFile, from: number, to: number): Promise<void> {
    for (let o = from; o < to; o += ZERO_CHUNK_BYTES) {
      const n = Math.min(ZERO_CHUNK_BYTES, to - o);
      await this.io("zero-fill", f.path, () => f.write(ZEROS.subarray(0, n), o));
    }
  }

  private markFlushed(): void {
    this.flush_ = this.write_;
    this.lastFlushed = this.lastWritten;
  }

  // -------------------------------------------------------------------------
  // Record tracking
  // -------------------------------------------------------------------------

  /** The validating decoder (CRC checks), used by crash recovery on open. */
  private newDecoder(start: Lsn): WalStreamDecoder {
    return new WalStreamDecoder(start, { walSegSizeBytes: this.walSegSizeBytes, ...(this.systemId !== undefined ? { systemId: this.systemId } : {}) });
  }

  /** The write path's tracker: record boundaries only. */
  private newBoundaryTracker(start: Lsn): RecordBoundaryTracker {
    return new RecordBoundaryTracker(start, { walSegSizeBytes: this.walSegSizeBytes });
  }

  /** Feeds written bytes to the record tracker (which keeps no reference to them). */
  private track(start: Lsn, bytes: Uint8Array): void {
    if (this.tracker === undefined) {
      // After invalid WAL: resynchronize at the next segment start.
      if (segmentOffset(start, this.walSegSizeBytes) !== 0) return;
      this.tracker = this.newBoundaryTracker(start);
    }
    const t = this.tracker;
    const feedFrom = t.feedLsn;
    const end = start + BigInt(bytes.length);
    if (end <= feedFrom) return; // alignment padding before the record the tracker starts at
    if (feedFrom < start) throw new Error(`assertion failed: record tracker expects ${formatLsn(feedFrom)} but write starts at ${formatLsn(start)}`);
    const before = t.recordCount;
    t.feed(feedFrom === start ? bytes : bytes.subarray(Number(feedFrom - start)));
    if (t.recordCount !== before) this.lastWritten = { recoveryStart: t.lastRecordLsn!, endLsn: t.lastRecordEndLsn! };
    if (t.failure !== undefined) this.tracker = undefined;
  }

  // -------------------------------------------------------------------------
  // Recovery
  // -------------------------------------------------------------------------

  private async recover(hintIn: Lsn): Promise<void> {
    await this.io("create directory", this.dir, () => this.fs.mkdir(this.dir));
    const names = await this.io("list", this.dir, () => this.fs.readdir(this.dir));
    const finals: bigint[] = [];
    let partialSeg: bigint | undefined;
    for (const name of names) {
      if (name.endsWith(SEGMENT_TEMP_SUFFIX) && isWalName(name.slice(0, -SEGMENT_TEMP_SUFFIX.length))) {
        const path = join(this.dir, name);
        await this.io("remove", path, () => this.fs.unlink(path));
        continue;
      }
      if (!isWalName(name)) continue;
      const parsed = parseWalFileName(name, this.walSegSizeBytes);
      if (parsed.timeline !== WAL_FILE_TIMELINE) continue;
      if (parsed.partial) {
        if (partialSeg !== undefined) throw this.corrupt(`two partial segments (${partialSeg} and ${parsed.segNo})`);
        partialSeg = parsed.segNo;
      } else {
        finals.push(parsed.segNo);
      }
    }
    finals.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (let i = 1; i < finals.length; i++) {
      if (finals[i] !== finals[i - 1]! + 1n) throw this.corrupt(`segment ${finals[i - 1]! + 1n} is missing between ${finals[i - 1]} and ${finals[i]}`);
    }
    const lastFinal = finals[finals.length - 1];
    if (partialSeg !== undefined && lastFinal !== undefined && partialSeg !== lastFinal + 1n) {
      throw this.corrupt(`partial segment ${partialSeg} does not follow the last complete segment ${lastFinal}`);
    }
    this.oldestSegNo = finals[0] ?? partialSeg;
    this.finalsEnd = lastFinal !== undefined ? lastFinal + 1n : (partialSeg ?? segmentNumber(this.timelineStartLsn, this.walSegSizeBytes));
    const trustedEnd = lastFinal !== undefined ? segmentStart(lastFinal + 1n, this.walSegSizeBytes) : undefined;

    // Where to start decoding: the hint, but never before the timeline or the oldest file.
    let start = hintIn > this.timelineStartLsn ? hintIn : this.timelineStartLsn;
    if (this.oldestSegNo !== undefined) {
      const oldest = segmentStart(this.oldestSegNo, this.walSegSizeBytes);
      if (start < oldest) start = oldest;
    }
    // A record start, or an exact record end (a truncation point): never inside a page header.
    if (isInsidePageHeader(start, this.walSegSizeBytes)) throw this.corrupt(`flush LSN hint ${formatLsn(start)} lies inside a page header`);
    const decodeStart = isDecoderStart(start, this.walSegSizeBytes) ? start : decoderStartAtOrAfter(start, this.walSegSizeBytes);
    const haveUpTo = partialSeg !== undefined ? partialSeg + 1n : this.finalsEnd;
    // A timeline that starts mid-segment (a branch point, an initdb end) and holds no WAL yet is empty, not
    // damaged: its first write creates the partial segment (zeros before the start). (issue 6: computes on branches)
    const emptyMidSegmentStart = this.oldestSegNo === undefined && start === this.timelineStartLsn;
    if (segmentNumber(start, this.walSegSizeBytes) >= haveUpTo && segmentOffset(start, this.walSegSizeBytes) !== 0 && !emptyMidSegmentStart) {
      throw this.corrupt(`flush LSN hint ${formatLsn(start)} points past the WAL on disk`);
    }
    if (this.oldestSegNo === undefined && start > this.timelineStartLsn) {
      throw this.corrupt(`no WAL segments, but the flush LSN hint is ${formatLsn(start)}, past the timeline start`);
    }

    // Decode from `start` through the final segments into the partial one.
    let decoder = this.newDecoder(decodeStart);
    let last: RecordBoundary | undefined;
    let next: Lsn = decodeStart;
    let records = 0;
    let stopReason: string | undefined;
    let partialBytes: Uint8Array | undefined;
    for (let seg = segmentNumber(decodeStart, this.walSegSizeBytes); seg < haveUpTo; seg++) {
      const isPartial = seg === partialSeg;
      const path = this.segmentPath(seg, isPartial);
      const bytes = await this.readWholeSegment(path);
      if (isPartial) partialBytes = bytes;
      const segStartLsn = segmentStart(seg, this.walSegSizeBytes);
      if (isPartial && decoder.failure !== undefined) {
        // Invalid WAL inside trusted final segments: decode the partial segment on its own.
        decoder = this.newDecoder(segStartLsn);
      }
      if (decoder.failure !== undefined) continue;
      const from = decoder.feedLsn > segStartLsn ? Number(decoder.feedLsn - segStartLsn) : 0;
      if (from >= bytes.length) continue;
      decoder.feed(bytes.subarray(from));
      try {
        for (let r = decoder.next(); r !== undefined; r = decoder.next()) {
          last = { recoveryStart: r.lsn, endLsn: r.endLsn };
          next = decoder.nextRecordLsn;
          records++;
        }
      } catch (e) {
        if (!(e instanceof WalDecodeError)) throw e;
        stopReason = e.message;
        if (isPartial) break;
      }
    }

    let end: Lsn = last?.endLsn ?? start;
    if (trustedEnd !== undefined && trustedEnd > end) end = trustedEnd;
    if (partialSeg !== undefined && end < segmentStart(partialSeg, this.walSegSizeBytes)) {
      // Cannot happen with the checks above; a bug rather than bad data.
      throw new Error(`assertion failed: recovered end ${formatLsn(end)} is before the partial segment ${partialSeg}`);
    }

    // Zero the torn tail of the partial segment and make what we keep durable.
    let zeroed = 0;
    if (partialSeg !== undefined) {
      const path = this.segmentPath(partialSeg, true);
      partialBytes ??= await this.readWholeSegment(path);
      const file = await this.io("open", path, () => this.fs.openFile(path, "readwrite"));
      this.partial = { segNo: partialSeg, file, dirty: false };
      const keep = end >= segmentStart(partialSeg + 1n, this.walSegSizeBytes) ? this.walSegSizeBytes : segmentOffset(end, this.walSegSizeBytes);
      let lastNonZero = partialBytes.length - 1;
      while (lastNonZero >= keep && partialBytes[lastNonZero] === 0) lastNonZero--;
      if (lastNonZero >= keep) {
        for (let i = keep; i <= lastNonZero; i++) if (partialBytes[i] !== 0) zeroed++;
        await this.zeroRange(file, keep, lastNonZero + 1);
      }
      // Also covers WAL the previous process wrote but never fsynced.
      await this.io("fsync", path, () => file.sync());
      await this.io("fsync directory", this.dir, () => this.fs.syncDir(this.dir));
    }
    this.write_ = end;
    this.flush_ = end;
    if (this.partial !== undefined && segmentOffset(end, this.walSegSizeBytes) === 0 && end > segmentStart(this.partial.segNo, this.walSegSizeBytes)) {
      // Crashed between filling a segment and renaming it.
      await this.completeSegment();
    }

    // Record tracking resumes at the next record start; feed it what lies between.
    // No record decoded: `start` is a record start (the hint) or where WAL starts afresh.
    this.lastWritten = last ?? { recoveryStart: start, endLsn: start };
    this.lastFlushed = this.lastWritten;
    const trackFrom = last !== undefined ? next : start;
    this.tracker = this.newBoundaryTracker(isDecoderStart(trackFrom, this.walSegSizeBytes) ? trackFrom : decoderStartAtOrAfter(trackFrom, this.walSegSizeBytes));
    if (this.tracker.startLsn < end) {
      const between = await this.read(this.tracker.startLsn, Number(end - this.tracker.startLsn));
      this.track(this.tracker.startLsn, between);
    }
    this.report = { decodeStartLsn: start, endLsn: end, recordsDecoded: records, zeroedBytes: zeroed, stopReason };
  }

  private async readWholeSegment(path: string): Promise<Uint8Array> {
    const f = await this.io("open", path, () => this.fs.openFile(path, "read"));
    try {
      const buf = new Uint8Array(this.walSegSizeBytes);
      const got = await this.io("read", path, () => f.read(buf, 0));
      if (got !== this.walSegSizeBytes) throw this.corrupt(`segment ${path} has ${got} bytes, expected ${this.walSegSizeBytes}`);
      return buf;
    } finally {
      await f.close().catch(() => undefined);
    }
  }

  // -------------------------------------------------------------------------
  // Plumbing
  // -------------------------------------------------------------------------

  private corrupt(what: string): StrataError {
    return new StrataError("corrupt_data", `WAL directory ${this.dir}: ${what}`);
  }

  /** Runs a file-system call; any failure poisons the storage (state on disk unknown). */
  private async io<T>(what: string, path: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      const err = e instanceof StrataError ? e : new StrataError(isNotFound(e) ? "not_found" : "io_error", `Cannot ${what} ${path}`, { cause: e });
      this.failure ??= err;
      throw err;
    }
  }

  /** Serializes mutating calls; refuses them after a failure or close. */
  private exclusive<T>(fn: () => Promise<T>, allowWhenFailed = false): Promise<T> {
    const run = async (): Promise<T> => {
      if (this.closed) throw new StrataError("unavailable", `WAL storage ${this.dir} is closed`);
      if (this.failure !== undefined && !allowWhenFailed) {
        throw new StrataError("io_error", `WAL storage ${this.dir} failed earlier and must be reopened`, { cause: this.failure });
      }
      return await fn();
    };
    this.pendingCalls++;
    const p = this.chain.then(run).finally(() => {
      this.pendingCalls--;
    });
    this.chain = p.catch(() => undefined);
    return p;
  }
}

/** True when `at` lies within a page header (where no record starts or ends). */
function isInsidePageHeader(at: Lsn, walSegSizeBytes: number): boolean {
  const pageOff = Number(at % BigInt(XLOG_BLCKSZ));
  const headerBytes = Number(at % BigInt(walSegSizeBytes)) < XLOG_BLCKSZ ? SIZE_OF_XLOG_LONG_PHD : SIZE_OF_XLOG_SHORT_PHD;
  return pageOff !== 0 && pageOff < headerBytes;
}

function isWalName(name: string): boolean {
  return /^[0-9A-F]{24}(\.partial)?$/.test(name);
}

/** True when a WalStreamDecoder may start at `at`: a page boundary, or MAXALIGNed past the page header. */
function isDecoderStart(at: Lsn, walSegSizeBytes: number): boolean {
  const pageOff = Number(at % BigInt(XLOG_BLCKSZ));
  if (pageOff === 0) return true;
  const headerBytes = Number(at % BigInt(walSegSizeBytes)) < XLOG_BLCKSZ ? SIZE_OF_XLOG_LONG_PHD : SIZE_OF_XLOG_SHORT_PHD;
  return at % BigInt(MAXALIGN) === 0n && pageOff >= headerBytes;
}

/**
 * The first position at or after `at` where decoding can start: `at`
 * MAXALIGNed (the next record after a record ending at `at`), or the next
 * page boundary if that falls inside a page header.
 */
export function decoderStartAtOrAfter(at: Lsn, walSegSizeBytes: number): Lsn {
  const aligned = toLsn((at + BigInt(MAXALIGN - 1)) & ~BigInt(MAXALIGN - 1));
  if (isDecoderStart(aligned, walSegSizeBytes)) return aligned;
  const page = BigInt(XLOG_BLCKSZ);
  return toLsn(((aligned + page - 1n) / page) * page);
}
