/**
 * StoreTimeline — a `ConsensusTimeline` over a timeline directory (control
 * file + WAL storage): the consensus primitives with nothing else around
 * them (no WAL receiver, no WAL service).
 *
 * It is the reference implementation of acceptor_state.ts's interface: the
 * deterministic simulation and the HTTP tests run the protocol against it on
 * real WalStorage/ControlFile code (over FaultyFS), and the safekeeper
 * service's per-timeline state provides the same operations.
 *
 * Invariants:
 * * All operations, reads included, run one at a time on one chain, so a
 *   vote's snapshot is exactly the WAL the voter holds when it stops
 *   accepting older terms, and a read never straddles a truncation.
 * * Term: `vote` fsyncs WAL already written, then persists a higher term
 *   before granting (so the vote's position covers every byte this
 *   safekeeper may later report as flushed); WAL (from a
 *   compute or a peer) is accepted only in the promised term, and from a
 *   compute only once this safekeeper's WAL has reached that term's start
 *   (its effective history ends with the term).
 * * Order of durability in `truncateAndSetHistory`: first the control
 *   file's flush LSN hint moves to the truncation point if it lies past it
 *   (else a crash right after the truncation leaves a hint pointing at WAL
 *   that is gone, which WAL recovery rejects as corrupt); then the
 *   truncation is made durable (WalStorage.truncate fsyncs); then the control
 *   file stores the new term and history.
 * * commit_lsn rises in memory (`setCommitLsn`) and reaches the control file
 *   only with `persistProgress` (lazily: the value is recomputed from peers
 *   after a restart, so storing every step would only cost fsyncs).
 * * After any storage error (or a simulated crash) the object is unusable:
 *   WalStorage refuses further changes and the owner reopens the timeline,
 *   which runs WAL recovery.
 *
 * Flush record LSN: WalStorage tracks the last complete flushed record
 * boundary incrementally, also across truncations and restarts, so a
 * snapshot never decodes WAL.
 */
import { StrataError } from "../../lib/errors.js";
import type { TenantId, TimelineId } from "../../lib/id.js";
import { formatLsn, lsnMax, type Lsn } from "../../lib/lsn.js";
import type { DurableFS } from "../durable_fs.js";
import { checkTermHistory, formatTermHistory, historyUpTo, lastTerm, type Term, type TermHistory } from "../term_history.js";
import { TimelineStore } from "../timeline_dir.js";
import { TermRefusedError, type AcceptorSnapshot, type ConsensusTimeline, type VoteResult } from "./acceptor_state.js";

export class StoreTimeline implements ConsensusTimeline {
  private chain: Promise<unknown> = Promise.resolve();
  private commit: Lsn;

  constructor(readonly store: TimelineStore) {
    this.commit = store.control.state.commitLsn;
  }

  static async open(fs: DurableFS, root: string, tenantId: TenantId, timelineId: TimelineId): Promise<StoreTimeline> {
    return new StoreTimeline(await TimelineStore.open(fs, root, tenantId, timelineId));
  }

  get tenantId(): TenantId {
    return this.store.tenantId;
  }

  get timelineId(): TimelineId {
    return this.store.timelineId;
  }

  snapshot(): Promise<AcceptorSnapshot> {
    return this.exclusive(() => this.snapshotNow());
  }

  vote(term: Term): Promise<VoteResult> {
    return this.exclusive(async () => {
      if (term <= this.store.control.state.term) return { granted: false, snapshot: await this.snapshotNow() };
      // WAL written but not yet fsynced would become durable — and be reported to its compute —
      // after this vote, yet be missing from the position the vote reports: the election could
      // then start the new term below an acknowledged commit. Make it durable first.
      if (this.store.wal.writeLsn !== this.store.wal.flushLsn) await this.store.wal.flush();
      await this.store.persistProgress((s) => ({ ...s, term }));
      return { granted: true, snapshot: await this.snapshotNow() };
    });
  }

  truncateAndSetHistory(term: Term, history: TermHistory, truncateLsn: Lsn): Promise<void> {
    return this.exclusive(async () => {
      const s = this.store.control.state;
      if (term < s.term) throw new TermRefusedError(`${this.describe()}: cannot join term ${term}, promised term ${s.term}`);
      checkTermHistory(history, "invalid_argument", `${this.describe()}: history for term ${term}`);
      if (lastTerm(history) !== term) throw new StrataError("invalid_argument", `${this.describe()}: history ${formatTermHistory(history)} does not end with term ${term}`);
      const wal = this.store.wal;
      if (truncateLsn > wal.writeLsn) {
        throw new StrataError("invalid_argument", `${this.describe()}: cannot truncate at ${formatLsn(truncateLsn)}, past the WAL end ${formatLsn(wal.writeLsn)}`);
      }
      if (truncateLsn < wal.writeLsn && s.flushLsnHint > truncateLsn) {
        // The stored recovery start lies in WAL about to go: after a crash between the
        // truncation and the store below, recovery would find it pointing past the WAL on
        // disk. Move it to the truncation point first: a record boundary, so decoding from
        // there finds the old WAL if the truncation never happened and nothing if it did.
        await this.store.control.persist((st) => ({ ...st, flushLsnHint: truncateLsn }));
      }
      await wal.truncate(truncateLsn);
      await this.store.persistProgress((st) => ({ ...st, term, termHistory: history }));
    });
  }

  appendWalFromPeer(term: Term, startLsn: Lsn, bytes: Uint8Array): Promise<Lsn> {
    return this.exclusive(async () => {
      const s = this.store.control.state;
      if (term !== s.term) throw new TermRefusedError(`${this.describe()}: WAL from a peer for term ${term} refused, promised term ${s.term}`);
      if (lastTerm(s.termHistory) !== term) throw new StrataError("invalid_argument", `${this.describe()}: WAL for term ${term} before joining its history`);
      return await this.append(startLsn, bytes);
    });
  }

  /**
   * Writes WAL streamed by the compute of `term` (not yet durable: see
   * flushForCompute); returns the write LSN. Refused unless `term` is the
   * promised term and this safekeeper has joined it (its WAL reached the
   * term's start).
   */
  writeWalFromCompute(term: Term, startLsn: Lsn, bytes: Uint8Array): Promise<Lsn> {
    return this.exclusive(async () => {
      this.checkComputeTerm(term);
      const wal = this.store.wal;
      if (startLsn !== wal.writeLsn) {
        throw new StrataError("invalid_argument", `${this.describe()}: WAL at ${formatLsn(startLsn)} is not contiguous with the WAL end ${formatLsn(wal.writeLsn)}`);
      }
      await wal.write(startLsn, bytes);
      return wal.writeLsn;
    });
  }

  /**
   * Makes the compute's WAL durable and returns the flush LSN to report to
   * it — refused once a newer term was promised (a vote flushes first, so
   * nothing this compute wrote is missing from the vote's position, but its
   * flush LSN is no longer this compute's to count).
   */
  flushForCompute(term: Term): Promise<Lsn> {
    return this.exclusive(async () => {
      const s = this.store.control.state;
      if (term !== s.term) throw new TermRefusedError(`${this.describe()}: flush for term ${term} refused, promised term ${s.term}`);
      return await this.store.wal.flush();
    });
  }

  /** writeWalFromCompute + flushForCompute in one step (tests). */
  appendWalFromCompute(term: Term, startLsn: Lsn, bytes: Uint8Array): Promise<Lsn> {
    return this.exclusive(async () => {
      this.checkComputeTerm(term);
      return await this.append(startLsn, bytes);
    });
  }

  private checkComputeTerm(term: Term): void {
    const s = this.store.control.state;
    if (term !== s.term) throw new TermRefusedError(`${this.describe()}: WAL of term ${term} refused, promised term ${s.term}`);
    const h = historyUpTo(s.termHistory, this.store.wal.flushLsn);
    if (lastTerm(h) !== term) throw new StrataError("unavailable", `${this.describe()}: not yet caught up to the start of term ${term} (history ${formatTermHistory(s.termHistory)}, flush ${formatLsn(this.store.wal.flushLsn)})`);
  }

  readWal(startLsn: Lsn, maxBytes: number, endLsn: Lsn): Promise<Uint8Array> {
    return this.exclusive(() => this.store.wal.read(startLsn, maxBytes, endLsn));
  }

  setCommitLsn(commitLsn: Lsn): void {
    if (commitLsn > this.commit) this.commit = commitLsn;
  }

  get commitLsn(): Lsn {
    return this.commit;
  }

  /** Stores commit_lsn and the flush LSN hint (lazy progress persistence). */
  persistProgress(): Promise<boolean> {
    return this.exclusive(() => this.store.persistProgress((s) => ({ ...s, commitLsn: lsnMax(s.commitLsn, this.commit) })));
  }

  close(): Promise<void> {
    return this.exclusive(() => this.store.close());
  }

  private async append(startLsn: Lsn, bytes: Uint8Array): Promise<Lsn> {
    const wal = this.store.wal;
    if (startLsn !== wal.writeLsn) {
      throw new StrataError("invalid_argument", `${this.describe()}: WAL at ${formatLsn(startLsn)} is not contiguous with the WAL end ${formatLsn(wal.writeLsn)}`);
    }
    await wal.write(startLsn, bytes);
    return await wal.flush();
  }

  private async snapshotNow(): Promise<AcceptorSnapshot> {
    const s = this.store.control.state;
    return {
      term: s.term,
      termHistory: s.termHistory,
      flushLsn: this.store.wal.flushLsn,
      flushRecordLsn: this.store.wal.flushRecordLsn,
      commitLsn: lsnMax(this.commit, s.commitLsn),
      timelineStartLsn: s.timelineStartLsn,
    };
  }

  private describe(): string {
    return `timeline ${this.store.tenantId}/${this.store.timelineId}`;
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn);
    this.chain = p.catch(() => undefined);
    return p;
  }
}
