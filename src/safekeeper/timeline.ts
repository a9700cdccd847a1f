/**
 * Timeline — one tenant/timeline on a safekeeper: the state every other part
 * of the safekeeper reads and changes through one object.
 *
 * Place in the data flow:
 *
 *   compute --(wal_acceptor.ts)--> appendWalFromCompute / flush --+
 *   peer (consensus recovery) ---> appendWalFromPeer -------------+--> TimelineStore (control file + WalStorage)
 *   consensus ----> snapshot / vote / truncateAndSetHistory / appendWalFromPeer / readWal /
 *                   setCommitLsn / setPeerFlushLsns  (the ConsensusTimeline interface of
 *                   consensus/acceptor_state.ts, which this class implements)
 *   wal_service.ts <-- readCommittedWal / waitForServable / consumers' feedback
 *   http_api.ts    <-- getState / registerCompute
 *
 * What it holds: the persistent state of the control file (term, term
 * history, commit/backup/remote-consistent LSNs, identity), the WAL's write,
 * flush and flush-record LSNs, the pageserver's last feedback, the connected
 * consumers, the peers' flush LSNs (set by consensus) and the registered
 * compute (connection string and term, kept in `compute.json` next to the
 * control file so a restarted safekeeper reconnects on its own).
 *
 * Invariants:
 * * State changes (term, history, truncation, WAL appends, compute
 *   registration) run one at a time under a per-timeline async mutex; a
 *   change is durable before anyone sees it (ControlFile.persist stores
 *   before it swaps the in-memory state), so what callers read is what a
 *   restart would find. A term bump is persisted before bumpTerm returns.
 * * The term never decreases; WAL from a compute is accepted only when the
 *   compute's term is the timeline's term and the term history's last term
 *   (the fencing rule of DESIGN.md §3).
 * * commit_lsn never decreases. With `soloCommit` (this safekeeper is the
 *   only member of the timeline's safekeeper set) it follows the WAL's flush
 *   record LSN: every complete record fsynced here is on "a quorum of one".
 *   Otherwise consensus sets it (`setCommitLsn`). Consumers are served WAL
 *   only up to min(commit_lsn, flush LSN) (`servableLsn`): never WAL that
 *   could still be truncated, never WAL not on this disk.
 * * Truncation order (as consensus/store_timeline.ts): first the control
 *   file's flush LSN hint moves to the truncation point if it lies past it,
 *   then the WAL is truncated (durably), then the control file stores the
 *   term history. A vote fsyncs WAL already written before persisting the
 *   term, so the vote's position covers every byte later reported flushed.
 * * A compute's WAL is accepted only once the history up to the flush LSN
 *   ends with its term (this safekeeper's WAL reached the term's start).
 * * flushRecordLsn is exact and cheap: WalStorage tracks the last record
 *   boundary incrementally, through truncations and restarts.
 *
 * WAL offload (wal_backup.ts), when remote storage is configured
 * (`remoteWal`): the backup loop uploads complete segments below commit_lsn
 * and stores backup_lsn (`setBackupLsn`, fsynced before it returns);
 * retention then also keeps everything at and above backup_lsn, and reads
 * below the oldest local segment are served from remote storage (one
 * downloaded segment is kept in memory for the reads that follow).
 *
 * Persistence of progress: the control file's commit LSN and flush LSN hint
 * are stored at most every PROGRESS_PERSIST_INTERVAL_MS (and on close), not on
 * every fsync — they only speed up recovery; losing them loses nothing
 * (WAL recovery finds the real end, and solo commit is recomputed from it).
 *
 * Cancellation: nothing here runs on its own except the fire-and-forget
 * progress store, which `close()` awaits.
 */
import { EventEmitter } from "node:events";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { StrataError, assert } from "../lib/errors.js";
import { formatLsn, lsn as toLsn, parseLsn, segmentNumber, segmentOffset, segmentStart, type Lsn } from "../lib/lsn.js";
import type { TenantId, TimelineId } from "../lib/id.js";
import { errorFields, silentLogger } from "../lib/logging.js";
import type { TimelinePersistentState } from "./control_file.js";
import { isNotFound, writeFileAtomic, type DurableFS } from "./durable_fs.js";
import type { SafekeeperMetrics } from "./metrics.js";
import { appendTerm, checkTermHistory, formatTermHistory, historyUpTo, INVALID_TERM, lastLogTerm, lastTerm, term as toTerm, type Term, type TermHistory } from "./term_history.js";
import { TimelineStore, timelineDirPath } from "./timeline_dir.js";
import { initialProgress, type ReceiverEnd, type ReceiverProgress } from "./native_receiver.js";
import type { ExternalSegment } from "./wal_storage.js";
import { TermRefusedError, type AcceptorSnapshot, type ConsensusTimeline, type VoteResult } from "./consensus/acceptor_state.js";

/** File next to the control file holding the registered compute (JSON). */
export const COMPUTE_FILE_NAME = "compute.json";
/** How often, at most, progress LSNs are written to the control file (one atomic replace = 2 fsyncs). */
export const PROGRESS_PERSIST_INTERVAL_MS = 1_000;
/** Longest connection string accepted for a compute: conninfo strings are short; this bounds the file. */
export const MAX_CONNSTR_BYTES = 4096;

/** A compute registered for a term: the safekeeper pulls WAL from it (wal_acceptor.ts). */
export interface ComputeRegistration {
  /** libpq connection string (key=value or postgresql:// URI) of the compute. */
  readonly connstr: string;
  readonly term: Term;
  /**
   * Where WAL of this term starts, when the caller knows it (the LSN the
   * compute was started at). Without it the acceptor asks the compute's slot.
   */
  readonly startLsn: Lsn | undefined;
  /** ISO time of the registration. */
  readonly registeredAt: string;
}

export interface PageserverFeedbackState {
  readonly lastReceivedLsn: Lsn;
  readonly diskConsistentLsn: Lsn;
  readonly remoteConsistentLsn: Lsn;
  /** When it arrived (ISO). */
  readonly receivedAt: string;
}

export type ConsumerKind = "standby" | "pageserver";

/** A START_REPLICATION consumer connected to this timeline. */
export interface ConsumerState {
  readonly id: number;
  readonly kind: ConsumerKind;
  readonly applicationName: string;
  readonly remoteAddress: string;
  readonly startLsn: Lsn;
  readonly connectedAt: string;
  /** End of the WAL sent so far. */
  sentLsn: Lsn;
  /** From standby status updates. */
  writeLsn: Lsn | undefined;
  flushLsn: Lsn | undefined;
  applyLsn: Lsn | undefined;
  /** From hot standby feedback ('h'): 64-bit xmin (epoch << 32 | xid), 0 = none. */
  hotStandbyXmin: bigint | undefined;
  lastReplyAt: string | undefined;
}

/** A snapshot of everything the timeline knows (for HTTP, consensus and tests). */
export interface TimelineState {
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  readonly systemId: bigint;
  readonly pgVersion: number;
  readonly walSegSizeBytes: number;
  readonly timelineStartLsn: Lsn;
  readonly term: Term;
  readonly termHistory: TermHistory;
  /** Oldest WAL still stored. */
  readonly oldestLsn: Lsn;
  readonly writeLsn: Lsn;
  readonly flushLsn: Lsn;
  /** End of the last complete record at or below the flush LSN (a record boundary). */
  readonly flushRecordLsn: Lsn;
  readonly commitLsn: Lsn;
  readonly backupLsn: Lsn;
  readonly remoteConsistentLsn: Lsn;
  readonly peerHorizonLsn: Lsn;
  readonly peerFlushLsns: ReadonlyMap<string, Lsn>;
  readonly pageserverFeedback: PageserverFeedbackState | undefined;
  readonly compute: ComputeRegistration | undefined;
  readonly computeConnected: boolean;
  readonly consumers: readonly ConsumerState[];
}

/** A request carried a term below the timeline's current term (HTTP 409). */
export class StaleTermError extends TermRefusedError {
  override name = "StaleTermError";
  constructor(
    readonly requestedTerm: Term,
    readonly currentTerm: Term,
    message: string,
  ) {
    super(message);
  }
}

/** Parameters of a new timeline. */
export interface TimelineCreateParams {
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  readonly systemId: bigint;
  readonly pgVersion: number;
  readonly walSegSizeBytes: number;
  /** First LSN of WAL: a segment start (best: standbys and pg_receivewal start there) or a record start. */
  readonly startLsn: Lsn;
}

export interface TimelineOptions {
  fs: DurableFS;
  /** The safekeeper's data directory (timelines live under <root>/<tenant>/<timeline>). */
  root: string;
  metrics: SafekeeperMetrics;
  log?: Logger;
  /** This safekeeper is the only member: commit_lsn follows its own flush record LSN. */
  soloCommit: boolean;
  /** Remote storage holds this safekeeper's offloaded WAL (wal_backup.ts): download one segment. */
  remoteWal?: { fetchSegment(tenantId: TenantId, timelineId: TimelineId, segNo: bigint, walSegSizeBytes: number): Promise<Uint8Array> };
}

/** Serializes async critical sections, FIFO. */
class AsyncMutex {
  private tail: Promise<unknown> = Promise.resolve();
  private pending = 0;
  /** Nobody holds or waits for the mutex: synchronous code may act as if it held it. */
  get idle(): boolean {
    return this.pending === 0;
  }
  run<T>(fn: () => Promise<T>): Promise<T> {
    this.pending++;
    const p = this.tail.then(fn).finally(() => {
      this.pending--;
    });
    this.tail = p.catch(() => undefined);
    return p;
  }
}

let nextConsumerId = 1;

/**
 * A writer in another process appending the compute's WAL to the open
 * partial segment (the native receiver; wal_acceptor.ts drives it). While
 * one is attached, each critical section that reads or changes WAL state
 * suspends it first (and adopts what it wrote), and resumes it afterwards —
 * or stops it for good when the section moved the term past the writer's
 * compute, or is about to write or truncate WAL itself.
 */
export interface ExternalWalWriter {
  /** Stops appending after its current cycle; resolves with its progress then. */
  suspend(): Promise<ReceiverProgress>;
  /** Appends again after `suspend`, into `segment` (the next one once a segment filled up). */
  resume(segment: ExternalSegment): void;
  /** Reports progress promptly once its flush LSN passes `lsn` (a WAL sender waits). */
  wantProgress(lsn: Lsn): void;
  /** Its progress right now (without pausing it). */
  progressNow(): Promise<ReceiverProgress>;
  /** Ends it (after its current cycle); resolves with how it ended. */
  stop(): Promise<ReceiverEnd>;
}

interface AttachedWriter {
  readonly term: Term;
  readonly writer: ExternalWalWriter;
  /** Its last progress counted into the metrics (its figures are totals). */
  seen: ReceiverProgress;
}

export class Timeline implements ConsensusTimeline {
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  /**
   * Events: "commit" (commit LSN advanced), "flush" (flush LSN advanced),
   * "term" (term changed), "compute" (registration changed). Listeners
   * must not throw.
   */
  readonly events = new EventEmitter();
  private readonly mutex = new AsyncMutex();
  private readonly log: Logger;
  private readonly labels: { tenant_id: string; timeline_id: string };
  /** Hot-path figures, plain fields the metrics read when scraped (SafekeeperMetrics.addTimeline). */
  private walReceivedBytes = 0;
  private fsyncs = 0;
  private commit: Lsn;
  private compute_: ComputeRegistration | undefined;
  private computeConnected_ = false;
  private feedback: PageserverFeedbackState | undefined;
  private peerFlush = new Map<string, Lsn>();
  private readonly consumers = new Map<number, ConsumerState>();
  private lastPersistMs = 0;
  private persisting: Promise<void> | undefined;
  private closed = false;
  /** The native receiver appending the compute's WAL, if one is attached. */
  private external: AttachedWriter | undefined;
  /** The flush LSN a progress report was last asked for (one request per position). */
  private progressWanted: Lsn | undefined;
  /** The last segment downloaded from remote storage for a consumer (one per timeline: 16 MiB). */
  private remoteSegment: { segNo: bigint; bytes: Promise<Uint8Array> } | undefined;

  private constructor(
    private readonly store: TimelineStore,
    private readonly opts: TimelineOptions,
    compute: ComputeRegistration | undefined,
  ) {
    this.tenantId = store.tenantId;
    this.timelineId = store.timelineId;
    this.log = (opts.log ?? silentLogger()).child({ tenant_id: this.tenantId, timeline_id: this.timelineId });
    this.labels = { tenant_id: this.tenantId, timeline_id: this.timelineId };
    opts.metrics.addTimeline({
      labels: this.labels,
      figures: () => ({ walReceivedBytes: this.walReceivedBytes, fsyncs: this.fsyncs, flushLsn: this.flushLsn, commitLsn: this.commit }),
    });
    this.compute_ = compute;
    this.events.setMaxListeners(0); // one listener per consumer connection
    const s = store.control.state;
    this.commit = s.commitLsn;
    if (opts.soloCommit) this.advanceSoloCommit();
    this.updateGauges();
  }

  /** Creates the timeline directory (invalid_argument if it exists) and opens it. */
  static async create(params: TimelineCreateParams, opts: TimelineOptions): Promise<Timeline> {
    const initial: TimelinePersistentState = {
      tenantId: params.tenantId,
      timelineId: params.timelineId,
      systemId: params.systemId,
      pgVersion: params.pgVersion,
      walSegSizeBytes: params.walSegSizeBytes,
      timelineStartLsn: params.startLsn,
      term: INVALID_TERM,
      termHistory: [],
      flushLsnHint: params.startLsn,
      commitLsn: params.startLsn,
      backupLsn: params.startLsn,
      remoteConsistentLsn: params.startLsn,
      peerHorizonLsn: params.startLsn,
    };
    const store = await TimelineStore.create(opts.fs, opts.root, initial);
    return new Timeline(store, opts, undefined);
  }

  /** Opens an existing timeline (runs WAL recovery); not_found if missing. */
  static async open(tenantId: TenantId, timelineId: TimelineId, opts: TimelineOptions): Promise<Timeline> {
    const store = await TimelineStore.open(opts.fs, opts.root, tenantId, timelineId);
    let compute: ComputeRegistration | undefined;
    try {
      compute = await loadComputeFile(opts.fs, join(store.dir, COMPUTE_FILE_NAME));
    } catch (e) {
      await store.close();
      throw e;
    }
    const tl = new Timeline(store, opts, compute);
    if (opts.soloCommit) tl.advanceSoloCommit();
    const r = store.wal.recovery;
    tl.log.info(
      { end_lsn: formatLsn(r.endLsn), records: r.recordsDecoded, zeroed_bytes: r.zeroedBytes, stop_reason: r.stopReason, term: String(tl.term) },
      "timeline opened",
    );
    return tl;
  }

  get dir(): string {
    return this.store.dir;
  }

  private get control(): TimelinePersistentState {
    return this.store.control.state;
  }

  get systemId(): bigint {
    return this.control.systemId;
  }
  get pgVersion(): number {
    return this.control.pgVersion;
  }
  get walSegSizeBytes(): number {
    return this.control.walSegSizeBytes;
  }
  get timelineStartLsn(): Lsn {
    return this.control.timelineStartLsn;
  }
  get term(): Term {
    return this.control.term;
  }
  get termHistory(): TermHistory {
    return this.control.termHistory;
  }
  get writeLsn(): Lsn {
    return this.store.wal.writeLsn;
  }
  get flushLsn(): Lsn {
    return this.store.wal.flushLsn;
  }
  /** End of the last complete flushed record (a record boundary; WalStorage tracks it incrementally). */
  get flushRecordLsn(): Lsn {
    return this.store.wal.flushRecordLsn;
  }
  get oldestLsn(): Lsn {
    return this.store.wal.oldestLsn;
  }
  /**
   * Oldest LSN consumers can be served: with remote storage, everything
   * from the timeline start (offloaded segments are downloaded on demand).
   */
  get oldestServableLsn(): Lsn {
    return this.opts.remoteWal !== undefined ? this.timelineStartLsn : this.oldestLsn;
  }
  /** End of the WAL offloaded to remote storage (the timeline start until the first upload). */
  get backupLsn(): Lsn {
    return this.control.backupLsn;
  }
  /** One past the last complete local segment. */
  get completeSegmentsEnd(): bigint {
    return this.store.wal.completeSegmentsEnd;
  }
  /** The whole file of a complete local segment (for offload). */
  readCompleteSegment(segNo: bigint): Promise<Uint8Array> {
    return this.store.wal.readCompleteSegment(segNo);
  }
  /** The WAL flush latency histogram's bounds (seconds), for a writer in another process to count by. */
  get fsyncBucketBounds(): readonly number[] {
    return this.opts.metrics.fsyncSeconds.bucketBounds;
  }
  get commitLsn(): Lsn {
    return this.commit;
  }
  /** How far consumers may be served: min(commit LSN, flush LSN). */
  get servableLsn(): Lsn {
    return this.commit < this.flushLsn ? this.commit : this.flushLsn;
  }
  get compute(): ComputeRegistration | undefined {
    return this.compute_;
  }
  get isClosed(): boolean {
    return this.closed;
  }

  getState(): TimelineState {
    const c = this.control;
    return {
      tenantId: c.tenantId,
      timelineId: c.timelineId,
      systemId: c.systemId,
      pgVersion: c.pgVersion,
      walSegSizeBytes: c.walSegSizeBytes,
      timelineStartLsn: c.timelineStartLsn,
      term: c.term,
      termHistory: c.termHistory,
      oldestLsn: this.oldestLsn,
      writeLsn: this.writeLsn,
      flushLsn: this.flushLsn,
      flushRecordLsn: this.flushRecordLsn,
      commitLsn: this.commit,
      backupLsn: c.backupLsn,
      remoteConsistentLsn: c.remoteConsistentLsn,
      peerHorizonLsn: c.peerHorizonLsn,
      peerFlushLsns: new Map(this.peerFlush),
      pageserverFeedback: this.feedback,
      compute: this.compute_,
      computeConnected: this.computeConnected_,
      consumers: [...this.consumers.values()].map((x) => ({ ...x })),
    };
  }

  // -------------------------------------------------------------------------
  // Terms and history (the consensus-facing surface)
  // -------------------------------------------------------------------------

  /**
   * Raises the term to `t` and persists it before returning. A lower term is
   * refused with StaleTermError; the same term is a no-op. Returns the term.
   */
  bumpTerm(t: Term): Promise<Term> {
    return this.exclusive(false, async () => {
      this.checkOpen();
      if (t < this.term) throw this.stale(t, "bump the term");
      if (t > this.term) await this.persistTerm(t);
      return this.term;
    });
  }

  /**
   * The consensus-relevant state, read under the mutex (no truncation or
   * term change in between). A native receiver attached keeps appending
   * meanwhile — peers poll this ten times a second, and pausing the commit
   * loop for each poll would stall commits — so the flush LSN may trail its
   * fsyncs by up to its report interval: a lower flush LSN is always a safe
   * report (commit_lsn.ts); a vote suspends the receiver and is exact.
   */
  snapshot(): Promise<AcceptorSnapshot> {
    return this.mutex.run(() => Promise.resolve(this.snapshotNow()));
  }

  private snapshotNow(): AcceptorSnapshot {
    return {
      term: this.term,
      termHistory: this.termHistory,
      flushLsn: this.flushLsn,
      flushRecordLsn: this.flushRecordLsn,
      commitLsn: this.commit,
      timelineStartLsn: this.timelineStartLsn,
    };
  }

  /**
   * A vote for term `t`: granted (and `t` persisted before answering) only
   * when `t` is above the current term, so one safekeeper never votes twice
   * in a term, even across restarts. The snapshot is taken in the same
   * critical section: no WAL of an older term is appended after it.
   */
  vote(t: Term): Promise<VoteResult> {
    return this.exclusive(false, async () => {
      this.checkOpen();
      const granted = t > this.term;
      if (granted) {
        // WAL written but not yet fsynced would become durable — and be reported to its
        // compute — after this vote, yet be missing from the position the vote reports.
        // Make it durable first.
        if (this.writeLsn !== this.flushLsn) await this.flushLocked();
        await this.persistTerm(t);
      }
      return { granted, snapshot: this.snapshotNow() };
    });
  }

  /**
   * Joins term `t` with the elected `history` (endpoint start, recovery):
   * drops WAL at and after `truncateLsn` (durably; no-op when it is the
   * write LSN), then persists `t` and `history` together. A term below the
   * current one is refused (TermRefusedError). `truncateLsn` must be a record
   * boundary within the stored WAL; with soloCommit it may not drop
   * committed WAL.
   */
  truncateAndSetHistory(t: Term, history: TermHistory, truncateLsn: Lsn): Promise<void> {
    return this.exclusive(true, async () => {
      this.checkOpen();
      if (t < this.term) throw this.stale(t, "set the term history");
      checkTermHistory(history, "invalid_argument", `Term history for ${this.tenantId}/${this.timelineId}`);
      if (lastTerm(history) > t) throw new StrataError("invalid_argument", `Term history ${formatTermHistory(history)} goes past term ${t}`);
      if (this.opts.soloCommit && truncateLsn < this.commit) {
        throw new StrataError("invalid_argument", `Cannot truncate WAL at ${formatLsn(truncateLsn)}: below the commit LSN ${formatLsn(this.commit)}`);
      }
      if (truncateLsn > this.writeLsn) {
        throw new StrataError("invalid_argument", `Cannot truncate WAL at ${formatLsn(truncateLsn)}: past the write LSN ${formatLsn(this.writeLsn)}`);
      }
      if (truncateLsn < this.writeLsn) await this.truncateLocked(truncateLsn);
      else if (this.writeLsn !== this.flushLsn) await this.flushLocked();
      const termChanged = t !== this.term;
      await this.store.persistProgress((s) => ({ ...s, term: t, termHistory: history }));
      this.log.info({ at: formatLsn(truncateLsn), history: formatTermHistory(history), term: String(t) }, "WAL truncated, term history set");
      if (termChanged) this.events.emit("term", t);
      this.events.emit("flush", this.flushLsn);
      this.updateGauges();
    });
  }

  /**
   * Makes WAL of `computeTerm` start at `startLsn` if the history does not
   * have that term yet (the single-safekeeper endpoint start: the compute's
   * term is new here). On an empty timeline the term starts at the timeline
   * start. Otherwise WAL after `startLsn` (of an older term) is truncated.
   * Returns where streaming from the compute must begin (the write LSN).
   */
  beginComputeTerm(computeTerm: Term, startLsn: Lsn | undefined): Promise<Lsn> {
    return this.exclusive(true, async () => {
      this.checkOpen();
      if (computeTerm !== this.term) throw this.stale(computeTerm, "stream WAL");
      // Anything written but not flushed (an earlier connection) is made durable first: streaming resumes after it.
      if (this.writeLsn !== this.flushLsn) await this.flushLocked();
      if (lastTerm(this.termHistory) === computeTerm) {
        // Joined the term, but the WAL here must also reach the term's start (recovery from a
        // peer may still be fetching it): a compute never streams into a gap.
        this.checkCaughtUp(computeTerm);
        return this.writeLsn;
      }
      if (!this.opts.soloCommit) {
        // With peers the endpoint-start protocol (consensus) establishes the term's start and WAL.
        throw new StrataError("unavailable", `Term ${computeTerm} has not been joined on ${this.tenantId}/${this.timelineId} yet (history ${formatTermHistory(this.termHistory)}); waiting for consensus`);
      }
      const empty = this.writeLsn === this.timelineStartLsn;
      let at: Lsn;
      if (empty) {
        at = this.timelineStartLsn;
      } else {
        if (startLsn === undefined) {
          throw new StrataError("invalid_argument", `Term ${computeTerm} is new on ${this.tenantId}/${this.timelineId}, which holds WAL up to ${formatLsn(this.flushLsn)}: the start LSN of the compute is needed`);
        }
        if (startLsn > this.flushLsn) {
          throw new StrataError("invalid_argument", `Compute of term ${computeTerm} starts at ${formatLsn(startLsn)}, after the end of WAL here (${formatLsn(this.flushLsn)}): WAL in between is missing`);
        }
        if (startLsn < this.commit) {
          throw new StrataError("invalid_argument", `Compute of term ${computeTerm} starts at ${formatLsn(startLsn)}, before the commit LSN ${formatLsn(this.commit)}: committed WAL would be lost`);
        }
        if (startLsn < this.oldestLsn) {
          throw new StrataError("invalid_argument", `Compute of term ${computeTerm} starts at ${formatLsn(startLsn)}, before the oldest WAL kept (${formatLsn(this.oldestLsn)})`);
        }
        at = startLsn;
        if (at < this.writeLsn) await this.truncateLocked(at);
      }
      const history = appendTerm(historyUpTo(this.termHistory, at), computeTerm, at);
      await this.store.persistProgress((s) => ({ ...s, termHistory: history }));
      this.log.info({ term: String(computeTerm), at: formatLsn(at), history: formatTermHistory(history) }, "compute term begins");
      this.events.emit("flush", this.flushLsn);
      this.updateGauges();
      return this.writeLsn;
    });
  }

  /** The peers' flush LSNs as consensus last learned them (shown in the HTTP status). */
  setPeerFlushLsns(peers: ReadonlyMap<string, Lsn>): void {
    this.peerFlush = new Map(peers);
  }

  /**
   * WAL retention: the LSN below which whole segments may be removed. It is
   * the *persisted* remote-consistent LSN (the pageserver reported that WAL's
   * effect durable in remote storage, and we stored that report), capped by
   * commit_lsn and by every known peer's flush LSN (a lagging peer may still
   * catch up from us), and — when remote storage is configured — by the
   * backup LSN (WAL not yet offloaded stays). A timeline whose pageserver
   * reports nothing keeps all its WAL.
   */
  retentionHorizonLsn(): Lsn {
    let h = this.store.control.state.remoteConsistentLsn;
    if (this.commit < h) h = this.commit;
    if (this.opts.remoteWal !== undefined && this.control.backupLsn < h) h = this.control.backupLsn;
    for (const f of this.peerFlush.values()) if (f < h) h = f;
    return h;
  }

  /** Removes the WAL segments that end at or below the retention horizon; returns how many. */
  removeOldWal(): Promise<number> {
    return this.mutex.run(async () => {
      if (this.closed) return 0;
      const removed = await this.store.wal.removeSegmentsBefore(this.retentionHorizonLsn());
      if (removed > 0) this.log.info({ removed, horizon: formatLsn(this.retentionHorizonLsn()) }, "removed WAL segments below the retention horizon");
      return removed;
    });
  }

  /** Stores a higher backup LSN (WAL offloaded below it) in the control file, fsynced, before returning. */
  setBackupLsn(l: Lsn): Promise<void> {
    return this.mutex.run(async () => {
      this.checkOpen();
      if (l <= this.control.backupLsn) return;
      await this.store.persistProgress((s) => ({ ...s, backupLsn: l }));
      this.opts.metrics.backupLsn.set(this.labels, Number(l));
    });
  }

  /** Resolves when commit_lsn passes `after`, after `timeoutMs`, or when `signal` aborts. */
  waitForCommit(after: Lsn, timeoutMs: number, signal: AbortSignal): Promise<void> {
    if (this.commit > after || this.closed || signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.events.off("commit", check);
        this.events.off("closed", done);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const check = () => {
        if (this.commit > after) done();
        else this.wantProgress();
      };
      this.wantProgress();
      const timer = setTimeout(done, timeoutMs);
      this.events.on("commit", check);
      this.events.once("closed", done);
      signal.addEventListener("abort", done, { once: true });
    });
  }

  /** Advances commit_lsn (never lowers it) and wakes WAL senders. */
  setCommitLsn(l: Lsn): void {
    if (l <= this.commit) return;
    this.commit = l;
    this.events.emit("commit", l);
    this.maybePersistProgress();
  }

  // -------------------------------------------------------------------------
  // WAL
  // -------------------------------------------------------------------------

  /**
   * Writes WAL the compute of `computeTerm` sent, at `startLsn` (must be the
   * write LSN). Refused with StaleTermError once the term has moved on.
   * Not durable until `flush`.
   */
  appendWalFromCompute(computeTerm: Term, startLsn: Lsn, bytes: Uint8Array): Promise<void> {
    return this.exclusive(true, async () => {
      this.checkOpen();
      this.checkComputeMayAppend(computeTerm);
      await this.writeLocked(startLsn, bytes);
    });
  }

  /**
   * appendWalFromCompute and flush in one critical section (the WAL
   * acceptor's group commit: one write and one fsync per batch); returns
   * the flush LSN.
   */
  appendAndFlushFromCompute(computeTerm: Term, startLsn: Lsn, bytes: Uint8Array): Promise<Lsn> {
    return this.exclusive(true, async () => {
      this.checkOpen();
      this.checkComputeMayAppend(computeTerm);
      await this.writeLocked(startLsn, bytes);
      return await this.flushLocked();
    });
  }

  /**
   * appendAndFlushFromCompute done synchronously when nothing else holds or
   * waits for the mutex and the storage can (WalStorage.appendAndFlushNow):
   * same checks, same errors, same effects, returns the flush LSN; returns
   * undefined, having done nothing, when the caller must use
   * appendAndFlushFromCompute. Running to completion without yielding is
   * what makes skipping the mutex safe. `durable` runs as soon as the WAL
   * is fsynced, before the timeline's own bookkeeping (metrics, waking
   * WAL senders and peers): the compute's commits wait for the status
   * update it sends, so nothing else belongs in front of it.
   */
  appendAndFlushFromComputeNow(computeTerm: Term, startLsn: Lsn, bytes: Uint8Array, durable?: (flushLsn: Lsn) => void): Lsn | undefined {
    if (!this.mutex.idle || this.closed) return undefined;
    this.checkComputeMayAppend(computeTerm);
    const before = this.flushLsn;
    const t0 = performance.now();
    const l = this.store.wal.appendAndFlushNow(startLsn, bytes);
    if (l === undefined) return undefined;
    const t1 = performance.now();
    try {
      durable?.(l);
    } finally {
      this.walReceivedBytes += bytes.length;
      this.flushed(before, l, t0, t1);
    }
    return l;
  }

  /**
   * Appends WAL fetched from a peer safekeeper (recovery of a lagging member,
   * after truncateAndSetHistory) at `startLsn` (the write LSN) and makes it
   * durable; returns the flush LSN. Refused once a term above `t` was promised.
   */
  appendWalFromPeer(t: Term, startLsn: Lsn, bytes: Uint8Array): Promise<Lsn> {
    return this.exclusive(true, async () => {
      this.checkOpen();
      if (t < this.term) throw this.stale(t, "append WAL from a peer");
      await this.writeLocked(startLsn, bytes);
      return await this.flushLocked();
    });
  }

  /**
   * The fencing rule for a compute's WAL: its term is the timeline's term and
   * the term history's last one (else StaleTermError), and this safekeeper
   * has caught up to the term's start.
   */
  private checkComputeMayAppend(computeTerm: Term): void {
    if (computeTerm !== this.term || lastTerm(this.termHistory) !== computeTerm) throw this.stale(computeTerm, "append WAL");
    this.checkCaughtUp(computeTerm);
  }

  /** WAL of `t` from its compute only once this safekeeper's flushed WAL reached the term's start. */
  private checkCaughtUp(t: Term): void {
    // lastLogTerm(h, l) is lastTerm(historyUpTo(h, l)) without the copy (this runs for every commit batch).
    if (lastLogTerm(this.termHistory, this.flushLsn) !== t) {
      throw new StrataError(
        "unavailable",
        `${this.tenantId}/${this.timelineId} has not yet caught up to the start of term ${t} (history ${formatTermHistory(this.termHistory)}, flush ${formatLsn(this.flushLsn)})`,
      );
    }
  }

  /**
   * Drops WAL at and after `at` durably. The control file's flush LSN hint
   * (where WAL recovery starts) is moved to `at` first when it lies past it:
   * otherwise a crash right after the truncation leaves a hint pointing at
   * WAL that is gone, which recovery rejects. `at` is a record boundary, so
   * decoding from there (from the next record start, if `at` is an
   * unaligned record end) finds the old WAL if the truncation never happened
   * and nothing if it did — and then `at` is the exact end WAL recovery reports.
   */
  private async truncateLocked(at: Lsn): Promise<void> {
    const wal = this.store.wal;
    if (this.control.flushLsnHint > at) await this.store.control.persist((s) => ({ ...s, flushLsnHint: at }));
    await wal.truncate(at);
  }

  private async writeLocked(startLsn: Lsn, bytes: Uint8Array): Promise<void> {
    await this.store.wal.write(startLsn, bytes);
    this.walReceivedBytes += bytes.length;
  }

  /** fsyncs everything written; returns the flush LSN. Advances solo commit and wakes waiters. */
  flush(): Promise<Lsn> {
    return this.exclusive(false, async () => {
      this.checkOpen();
      return await this.flushLocked();
    });
  }

  private async flushLocked(): Promise<Lsn> {
    const before = this.flushLsn;
    const t0 = performance.now();
    const l = await this.store.wal.flush();
    this.flushed(before, l, t0);
    return l;
  }

  /** After an fsync that started at `t0` and moved the flush LSN from `before` to `l`: metrics, solo commit, waiters. */
  private flushed(before: Lsn, l: Lsn, t0: number, t1 = performance.now()): void {
    this.opts.metrics.fsyncSeconds.observe((t1 - t0) / 1000);
    this.fsyncs++;
    this.advanced(before, l);
  }

  /** The flush LSN moved from `before` to `l`: wake waiters, solo commit, lazy progress store. */
  private advanced(before: Lsn, l: Lsn): void {
    if (l !== before) {
      this.progressWanted = undefined;
      this.events.emit("flush", l);
      if (this.opts.soloCommit) this.advanceSoloCommit();
      this.maybePersistProgress();
    }
  }

  /**
   * Up to `maxBytes` of flushed WAL from `startLsn`, not past `endLsn`, read
   * under the mutex so no truncation interleaves (consensus: a donor's reads).
   */
  readWal(startLsn: Lsn, maxBytes: number, endLsn: Lsn): Promise<Uint8Array> {
    return this.mutex.run(async () => {
      this.checkOpen();
      return await this.store.wal.read(startLsn, maxBytes, endLsn);
    });
  }

  /**
   * The same without the mutex, for WAL senders: they read only below the
   * servable LSN, which is below commit_lsn and so never truncated, and must
   * not wait behind the acceptor's fsyncs. WAL older than the oldest local
   * segment comes from remote storage when it is configured (at most up to
   * the end of that segment per call).
   */
  async readCommittedWal(startLsn: Lsn, maxBytes: number, endLsn: Lsn): Promise<Uint8Array> {
    if (startLsn >= this.oldestLsn || this.opts.remoteWal === undefined || startLsn < this.timelineStartLsn) {
      try {
        return await this.store.wal.read(startLsn, maxBytes, endLsn);
      } catch (e) {
        // Retention may remove the segment between the check and the read: then it is offloaded.
        const removed = e instanceof StrataError && e.code === "not_found" && this.opts.remoteWal !== undefined && startLsn < this.oldestLsn;
        if (!removed) throw e;
      }
    }
    const remote = this.opts.remoteWal;
    if (remote === undefined) throw new Error("assertion failed: remote WAL read without remote storage");
    const seg = this.walSegSizeBytes;
    const segNo = segmentNumber(startLsn, seg);
    if (segmentStart(segNo + 1n, seg) > this.backupLsn) {
      throw new StrataError("not_found", `WAL at ${formatLsn(startLsn)} of ${this.tenantId}/${this.timelineId} is neither local (oldest ${formatLsn(this.oldestLsn)}) nor offloaded (backup LSN ${formatLsn(this.backupLsn)})`);
    }
    let cached = this.remoteSegment;
    if (cached === undefined || cached.segNo !== segNo) {
      const bytes = remote.fetchSegment(this.tenantId, this.timelineId, segNo, seg);
      cached = { segNo, bytes };
      this.remoteSegment = cached;
      this.opts.metrics.remoteWalDownloads.inc(this.labels);
      this.log.info({ segment_lsn: formatLsn(segmentStart(segNo, seg)) }, "serving WAL older than the local segments from remote storage");
      bytes.catch(() => {
        if (this.remoteSegment === cached) this.remoteSegment = undefined; // the next read tries again
      });
    }
    const bytes = await cached.bytes;
    const off = segmentOffset(startLsn, seg);
    const limit = endLsn < this.flushLsn ? endLsn : this.flushLsn;
    const n = Math.max(0, Math.min(maxBytes, seg - off, Number(limit - startLsn)));
    return bytes.slice(off, off + n);
  }

  /**
   * Resolves when the servable LSN passes `after`, after `timeoutMs`, or when
   * `signal` aborts (all resolve; the caller re-reads the state).
   */
  waitForServable(after: Lsn, timeoutMs: number, signal?: AbortSignal): Promise<void> {
    if (this.servableLsn > after || this.closed || signal?.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.events.off("commit", check);
        this.events.off("flush", check);
        this.events.off("closed", done);
        signal?.removeEventListener("abort", done);
        resolve();
      };
      const check = () => {
        if (this.servableLsn > after) done();
        else this.wantProgress();
      };
      this.wantProgress();
      const timer = setTimeout(done, timeoutMs);
      this.events.on("commit", check);
      this.events.on("flush", check);
      this.events.once("closed", done);
      signal?.addEventListener("abort", done, { once: true });
    });
  }

  // -------------------------------------------------------------------------
  // The native receiver (an external WAL writer)
  // -------------------------------------------------------------------------

  /**
   * Attaches a writer in another process for the compute of `computeTerm`
   * (same fencing checks as appendWalFromCompute): the segment holding the
   * write LSN is prepared (WalStorage.beginExternalWrite) and `start`
   * launches the writer on it. The writer appends until a critical section
   * suspends or stops it, or it ends (`externalWriterEnded`).
   */
  attachExternalWriter(computeTerm: Term, start: (segment: ExternalSegment) => ExternalWalWriter): Promise<ExternalSegment> {
    return this.exclusive(true, async () => {
      this.checkOpen();
      this.checkComputeMayAppend(computeTerm);
      const wal = this.store.wal;
      const segment = await wal.beginExternalWrite();
      let writer: ExternalWalWriter;
      try {
        writer = start(segment);
      } catch (e) {
        await wal.endExternalWrite(segment.writeLsn, false);
        throw e;
      }
      this.external = { term: computeTerm, writer, seen: initialProgress(segment.writeLsn, this.fsyncBucketBounds.length) };
      return segment;
    });
  }

  /** Progress `writer` reported: its WAL up to the flush LSN is adopted (record tracking, segment completion) and announced. */
  async externalProgress(writer: ExternalWalWriter, p: ReceiverProgress): Promise<void> {
    const ext = this.external;
    if (ext?.writer !== writer) return;
    await this.adoptExternal(ext, p);
  }

  /**
   * With a native receiver attached, takes in its progress right now (one
   * report round trip, the commit loop is not paused): for status reads
   * that must not trail the commits (HTTP timeline status).
   */
  async refreshExternal(): Promise<void> {
    const ext = this.external;
    if (ext === undefined) return;
    const p = await ext.writer.progressNow();
    if (this.external === ext) await this.adoptExternal(ext, p);
  }

  /** `writer` ended (its process exited): detaches it, adopting its last reported WAL. */
  externalWriterEnded(writer: ExternalWalWriter): Promise<void> {
    return this.mutex.run(async () => {
      const ext = this.external;
      if (ext?.writer === writer) await this.detachExternalLocked(ext);
    });
  }

  /**
   * A writer stopped at a segment's end: an empty critical section completes
   * that segment (adopting the writer's WAL on suspend) and resumes it on
   * the next one; a writer no longer attached is left alone.
   */
  continueExternalWriter(writer: ExternalWalWriter): Promise<void> {
    if (this.external?.writer !== writer) return Promise.resolve();
    return this.exclusive(false, () => Promise.resolve());
  }

  private async adoptExternal(ext: AttachedWriter, p: ReceiverProgress): Promise<void> {
    this.countExternal(ext, p);
    const before = this.flushLsn;
    const l = await this.store.wal.adoptExternalWrite(p.flushLsn);
    this.advanced(before, l);
  }

  /** Adds what the writer did since its last report to the metrics (its figures are totals). */
  private countExternal(ext: AttachedWriter, p: ReceiverProgress): void {
    const seen = ext.seen;
    if (p.fsyncs <= seen.fsyncs && p.bytesWritten <= seen.bytesWritten) return;
    const m = this.opts.metrics.fsyncSeconds;
    if (p.bucketCounts.length === seen.bucketCounts.length) {
      m.addCounts(
        p.bucketCounts.map((c, i) => c - seen.bucketCounts[i]!),
        p.fsyncSeconds - seen.fsyncSeconds,
      );
    }
    this.fsyncs += p.fsyncs - seen.fsyncs;
    this.walReceivedBytes += p.bytesWritten - seen.bytesWritten;
    ext.seen = p;
  }

  /** Stops the writer, adopts its final WAL and ends the storage's external write. Under the mutex. */
  private async detachExternalLocked(ext: AttachedWriter): Promise<void> {
    const end = await ext.writer.stop();
    this.external = undefined;
    this.progressWanted = undefined;
    this.countExternal(ext, end.progress);
    const wal = this.store.wal;
    if (end.reason === "io") wal.failExternalWrite(new Error(end.detail.toString("utf8")));
    const before = this.flushLsn;
    // A receiver that died without its final report may have written (even fsynced) past what it
    // reported: that tail is zeroed; the compute resends it from the flush LSN.
    const l = await wal.endExternalWrite(end.progress.flushLsn, end.reason === "crashed");
    this.advanced(before, l);
    this.log.info({ reason: end.reason, flush_lsn: formatLsn(l) }, "WAL receiver detached");
  }

  /** A WAL sender waits: ask the external writer, if any, to report its next flush promptly. */
  private wantProgress(): void {
    const ext = this.external;
    if (ext === undefined) return;
    const at = this.flushLsn;
    if (this.progressWanted === at) return;
    this.progressWanted = at;
    ext.writer.wantProgress(at);
  }

  /**
   * The timeline's critical section. With an external writer attached, it
   * is suspended first (its WAL adopted) and resumed afterwards; it is
   * stopped and detached instead when `writesWal` (the section writes or
   * truncates WAL itself) or when its compute's term is no longer the
   * timeline's (fencing: after a term change it never appends again).
   */
  private exclusive<T>(writesWal: boolean, fn: () => Promise<T>): Promise<T> {
    return this.mutex.run(async () => {
      const ext = this.external;
      if (ext === undefined) return await fn();
      if (writesWal || !this.externalMayAppend(ext)) {
        await this.detachExternalLocked(ext);
        return await fn();
      }
      try {
        await this.adoptExternal(ext, await ext.writer.suspend());
      } catch (e) {
        await this.detachExternalLocked(ext).catch(() => undefined);
        throw e;
      }
      try {
        return await fn();
      } finally {
        if (this.external === ext) await this.resumeExternalLocked(ext);
      }
    });
  }

  /** After a critical section: the suspended writer goes on, or is detached if it may no longer append. */
  private async resumeExternalLocked(ext: AttachedWriter): Promise<void> {
    if (this.externalMayAppend(ext)) {
      try {
        ext.writer.resume(await this.store.wal.beginExternalWrite());
        return;
      } catch (e) {
        this.log.warn(errorFields(e), "cannot resume the WAL receiver");
      }
    }
    await this.detachExternalLocked(ext);
  }

  private externalMayAppend(ext: AttachedWriter): boolean {
    return !this.closed && ext.term === this.term && lastTerm(this.termHistory) === ext.term;
  }

  private advanceSoloCommit(): void {
    const r = this.flushRecordLsn;
    if (r > this.commit) {
      this.commit = r;
      this.events.emit("commit", r);
    }
  }

  // -------------------------------------------------------------------------
  // Compute registration
  // -------------------------------------------------------------------------

  /**
   * Registers the compute that WAL of `reg.term` comes from. A term below
   * the timeline's term is refused (StaleTermError: fencing); a higher one
   * raises the timeline's term first (persisted). Re-registering the same
   * term is allowed only with the same connection string (idempotent).
   */
  registerCompute(reg: Omit<ComputeRegistration, "registeredAt">): Promise<ComputeRegistration> {
    return this.exclusive(false, async () => {
      this.checkOpen();
      if (Buffer.byteLength(reg.connstr) > MAX_CONNSTR_BYTES) {
        throw new StrataError("invalid_argument", `Compute connection string is ${Buffer.byteLength(reg.connstr)} bytes, more than ${MAX_CONNSTR_BYTES}`);
      }
      if (reg.term === INVALID_TERM) throw new StrataError("invalid_argument", "Compute term must be at least 1");
      if (reg.term < this.term) throw this.stale(reg.term, "register a compute");
      const prev = this.compute_;
      if (prev !== undefined && prev.term === reg.term) {
        if (prev.connstr !== reg.connstr) {
          throw new StaleTermError(reg.term, this.term, `Term ${reg.term} of ${this.tenantId}/${this.timelineId} already belongs to another compute; start the new compute with a higher term`);
        }
        return prev;
      }
      if (reg.term > this.term) await this.persistTerm(reg.term);
      const next: ComputeRegistration = { ...reg, registeredAt: new Date().toISOString() };
      await storeComputeFile(this.opts.fs, join(this.store.dir, COMPUTE_FILE_NAME), next);
      this.compute_ = next;
      this.log.info({ term: String(reg.term), start_lsn: reg.startLsn === undefined ? undefined : formatLsn(reg.startLsn) }, "compute registered");
      this.events.emit("compute", next);
      return next;
    });
  }

  /** Set by the WAL acceptor while it streams from the compute. */
  setComputeConnected(connected: boolean): void {
    this.computeConnected_ = connected;
    this.opts.metrics.computeConnected.set(this.labels, connected ? 1 : 0);
  }

  // -------------------------------------------------------------------------
  // Consumers and their feedback
  // -------------------------------------------------------------------------

  /** Registers a START_REPLICATION consumer; call the returned function when it disconnects. */
  addConsumer(c: Pick<ConsumerState, "kind" | "applicationName" | "remoteAddress" | "startLsn">): { state: ConsumerState; remove: () => void } {
    const state: ConsumerState = {
      ...c,
      id: nextConsumerId++,
      connectedAt: new Date().toISOString(),
      sentLsn: c.startLsn,
      writeLsn: undefined,
      flushLsn: undefined,
      applyLsn: undefined,
      hotStandbyXmin: undefined,
      lastReplyAt: undefined,
    };
    this.consumers.set(state.id, state);
    const consumerLabel = `${c.applicationName || c.kind}#${state.id}`;
    return {
      state,
      remove: () => {
        this.consumers.delete(state.id);
        this.opts.metrics.consumerLagBytes.remove({ ...this.labels, consumer: consumerLabel });
      },
    };
  }

  /** A standby status update from consumer `c`. */
  recordStandbyReply(c: ConsumerState, u: { writeLsn: Lsn; flushLsn: Lsn; applyLsn: Lsn }): void {
    c.writeLsn = u.writeLsn;
    c.flushLsn = u.flushLsn;
    c.applyLsn = u.applyLsn;
    c.lastReplyAt = new Date().toISOString();
    const lag = this.commit > u.flushLsn ? Number(this.commit - u.flushLsn) : 0;
    this.opts.metrics.consumerLagBytes.set({ ...this.labels, consumer: `${c.applicationName || c.kind}#${c.id}` }, lag);
  }

  recordHotStandbyFeedback(c: ConsumerState, xmin: bigint): void {
    c.hotStandbyXmin = xmin;
    c.lastReplyAt = new Date().toISOString();
  }

  /**
   * The pageserver's feedback: kept as reported (the latest), and its
   * remote-consistent LSN — WAL below it is safe in remote storage — is
   * persisted (lazily) as the control file's remote-consistent LSN, which
   * only advances.
   */
  recordPageserverFeedback(fb: { lastReceivedLsn: Lsn; diskConsistentLsn: Lsn; remoteConsistentLsn: Lsn }): void {
    this.feedback = { ...fb, receivedAt: new Date().toISOString() };
    if (fb.remoteConsistentLsn > this.control.remoteConsistentLsn && fb.remoteConsistentLsn <= this.flushLsn) {
      this.pendingRemoteConsistent = fb.remoteConsistentLsn;
      this.maybePersistProgress();
    }
  }
  private pendingRemoteConsistent: Lsn | undefined;

  // -------------------------------------------------------------------------
  // Persistence and lifecycle
  // -------------------------------------------------------------------------

  private async persistTerm(t: Term): Promise<void> {
    await this.store.control.persist((s) => ({ ...s, term: t }));
    this.log.info({ term: String(t) }, "term raised");
    this.opts.metrics.term.set(this.labels, Number(t));
    this.events.emit("term", t);
  }

  /** Stores progress LSNs if the last store is older than PROGRESS_PERSIST_INTERVAL_MS (fire and forget). */
  private maybePersistProgress(): void {
    if (this.persisting !== undefined || this.closed) return;
    const now = performance.now(); // monotonic, and cheaper than Date.now() on every fsync
    if (now - this.lastPersistMs < PROGRESS_PERSIST_INTERVAL_MS) return;
    this.lastPersistMs = now;
    this.persisting = this.persistProgressNow()
      .catch((e: unknown) => this.log.warn(errorFields(e), "cannot store timeline progress"))
      .finally(() => {
        this.persisting = undefined;
      });
  }

  /** Stores commit, remote-consistent LSN and the flush LSN hint now (under the mutex). */
  persistProgressNow(): Promise<void> {
    return this.mutex.run(async () => {
      if (this.closed) return;
      const commit = this.commit;
      const rc = this.pendingRemoteConsistent;
      await this.store.persistProgress((s) => ({
        ...s,
        commitLsn: commit > s.commitLsn ? commit : s.commitLsn,
        remoteConsistentLsn: rc !== undefined && rc > s.remoteConsistentLsn ? rc : s.remoteConsistentLsn,
      }));
    });
  }

  private updateGauges(): void {
    const m = this.opts.metrics;
    m.term.set(this.labels, Number(this.term));
    m.backupLsn.set(this.labels, Number(this.control.backupLsn));
  }

  private stale(t: Term, what: string): StaleTermError {
    return new StaleTermError(t, this.term, `Cannot ${what} for term ${t} on ${this.tenantId}/${this.timelineId}: the current term is ${this.term}`);
  }

  private checkOpen(): void {
    if (this.closed) throw new StrataError("unavailable", `Timeline ${this.tenantId}/${this.timelineId} is shut down`);
  }

  /** Stores progress and closes the WAL. Waiters are released. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.persisting;
    await this.persistProgressNow().catch((e: unknown) => this.log.warn(errorFields(e), "cannot store timeline progress on close"));
    await this.mutex.run(async () => {
      if (this.external !== undefined) await this.detachExternalLocked(this.external).catch((e: unknown) => this.log.warn(errorFields(e), "WAL receiver did not end cleanly on close"));
      this.closed = true;
      this.remoteSegment = undefined;
      await this.store.close();
    });
    this.events.emit("closed");
  }

  /** Closes the timeline and removes its directory. */
  async delete(): Promise<void> {
    await this.close();
    const dir = timelineDirPath(this.opts.root, this.tenantId, this.timelineId);
    assert(dir === this.store.dir, "timeline directory path mismatch");
    await rm(dir, { recursive: true, force: true });
    await this.opts.fs.syncDir(join(this.opts.root, this.tenantId)).catch(() => undefined);
    this.opts.metrics.forgetTimeline(this.tenantId, this.timelineId);
  }
}

// ---------------------------------------------------------------------------
// compute.json: { "connstr": ..., "term": "<decimal>", "start_lsn": "X/Y" | null, "registered_at": ISO }
// ---------------------------------------------------------------------------

async function storeComputeFile(fs: DurableFS, path: string, reg: ComputeRegistration): Promise<void> {
  const doc = {
    connstr: reg.connstr,
    term: reg.term.toString(),
    start_lsn: reg.startLsn === undefined ? null : formatLsn(reg.startLsn),
    registered_at: reg.registeredAt,
  };
  try {
    await writeFileAtomic(fs, path, Buffer.from(JSON.stringify(doc, null, 2) + "\n"));
  } catch (e) {
    throw new StrataError("io_error", `Cannot store compute registration ${path}`, { cause: e });
  }
}

async function loadComputeFile(fs: DurableFS, path: string): Promise<ComputeRegistration | undefined> {
  let bytes: Uint8Array;
  try {
    bytes = await fs.readFile(path);
  } catch (e) {
    if (isNotFound(e)) return undefined;
    throw new StrataError("io_error", `Cannot read compute registration ${path}`, { cause: e });
  }
  const bad = (why: string, cause?: unknown) => new StrataError("corrupt_data", `Compute registration ${path} is corrupt: ${why}`, { cause });
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString("utf8"));
  } catch (e) {
    throw bad("not JSON", e);
  }
  const d = doc as { connstr?: unknown; term?: unknown; start_lsn?: unknown; registered_at?: unknown };
  if (typeof d.connstr !== "string" || typeof d.term !== "string" || !/^[0-9]{1,20}$/.test(d.term) || typeof d.registered_at !== "string") {
    throw bad("missing or mistyped fields");
  }
  let startLsn: Lsn | undefined;
  if (d.start_lsn !== null && d.start_lsn !== undefined) {
    if (typeof d.start_lsn !== "string") throw bad("start_lsn is not a string");
    try {
      startLsn = toLsn(parseLsn(d.start_lsn));
    } catch (e) {
      throw bad("start_lsn", e);
    }
  }
  let t: Term;
  try {
    t = toTerm(BigInt(d.term));
  } catch (e) {
    throw bad("term", e);
  }
  return { connstr: d.connstr, term: t, startLsn, registeredAt: d.registered_at };
}
