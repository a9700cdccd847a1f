/**
 * The WAL receiver: streams a timeline's committed WAL from a safekeeper
 * into the timeline.
 *
 *   safekeeper WAL service --START_REPLICATION--> WalReceiver -> WalStreamDecoder
 *        -> WalIngest.ingestRecord -> Timeline (put / finishRecord)
 *        <-- 'z' PageserverFeedback (last received, disk-consistent, remote-consistent LSNs)
 *
 * One receiver per active timeline, run as a TaskManager task of kind
 * wal_receiver owned by the tenant/timeline; cancelling the task closes the
 * connection.
 *
 * Choosing a safekeeper: every attempt connects to each configured
 * safekeeper (bounded connect timeout), asks IDENTIFY_SYSTEM for its
 * servable position (commit LSN), and streams from the one that is furthest
 * ahead; the others' connections are closed. Safekeepers only serve WAL up
 * to commit_lsn (DESIGN §3), so whatever we receive is committed on a quorum.
 * The tenant and timeline travel in the startup packet's options
 * (`-c tenant_id=... -c timeline_id=...`, see src/safekeeper/wal_service.ts).
 *
 * Streaming starts at last_record_lsn (a record boundary: ingest publishes
 * MAXALIGNed record ends), with a fresh decoder and WalIngest each time, so a
 * reconnect — or a restart, where last_record_lsn = disk_consistent_lsn —
 * resumes exactly where the timeline's state ends. Records arrive and are
 * ingested strictly in order; while one is being ingested the stream is not
 * read, so TCP flow control is the back-pressure.
 *
 * Feedback: every FEEDBACK_INTERVAL_MS, and whenever the safekeeper asks in
 * a keepalive, the receiver sends last received / disk-consistent /
 * remote-consistent LSNs. The remote-consistent LSN is the disk_consistent_lsn
 * of the timeline's last durable remote index (remote/remote_timeline_client.ts),
 * 0 without remote storage (the safekeeper then keeps all WAL — safe).
 *
 * Failures: a connection or protocol error ends the attempt; the loop
 * retries with exponential back-off (RECONNECT_BACKOFF_*), re-choosing the
 * safekeeper. An ingest error (an unsupported or corrupt record) is not
 * retried: it stops the timeline's ingest, and the timeline is marked
 * Broken with the record's LSN and reason — never silent loss.
 *
 * Switching on lag: while streaming, with more than one safekeeper
 * configured, the receiver probes the others every LAG_PROBE_INTERVAL_MS
 * (a short connection: IDENTIFY_SYSTEM's xlogpos is the commit LSN each can
 * serve). When the current safekeeper's commit LSN (the walEnd of its latest
 * message) trails the best other one by more than the tenant's
 * `safekeeperMaxLagBytes` continuously for longer than
 * `safekeeperLagGraceMs` (SafekeeperLagMonitor, a pure decision), the
 * stream is closed and the attempt ends without error; the next attempt
 * picks the furthest-ahead safekeeper again. Nothing is lost: streaming
 * resumes at last_record_lsn.
 */
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import { formatLsn, INVALID_LSN, lsn as toLsn, type Lsn } from "../lib/lsn.js";
import { errorFields } from "../lib/logging.js";
import { requestContext, sleep, type TaskManager } from "../lib/tasks.js";
import { WalStreamDecoder } from "../formats/wal/wal_stream_decoder.js";
import type { DecodedRecord } from "../formats/wal/decoded_record.js";
import { PgClient } from "../wire/client.js";
import { pgTimestampNow } from "../wire/replication.js";
import { WalIngest } from "./walingest.js";
import type { Timeline } from "./timeline.js";

/** How often feedback is sent while streaming: Neon's default; safekeepers need it to trim WAL. */
export const FEEDBACK_INTERVAL_MS = 1_000;
/** Bound on connecting + IDENTIFY_SYSTEM per safekeeper. */
export const SAFEKEEPER_CONNECT_TIMEOUT_MS = 5_000;
/** Reconnect back-off: 100 ms doubling to 5 s (a restarted safekeeper is back within seconds). */
const RECONNECT_BACKOFF_BASE_MS = 100;
const RECONNECT_BACKOFF_MAX_MS = 5_000;

/** How often the other safekeepers' positions are probed while streaming (one short connection each). */
export const LAG_PROBE_INTERVAL_MS = 2_000;

/**
 * Decides when to leave a lagging safekeeper: `observe` is fed the current
 * safekeeper's commit LSN and the best commit LSN among the others (undefined
 * when none answered) and returns true once the lag has exceeded
 * `maxLagBytes` without interruption for more than `graceMs`. Any
 * observation within the limit (or without a reachable other) resets it, so
 * a brief burst on one safekeeper does not cause a switch.
 */
export class SafekeeperLagMonitor {
  private laggingSinceMs: number | undefined;

  constructor(
    private readonly maxLagBytes: number,
    private readonly graceMs: number,
  ) {}

  observe(nowMs: number, currentCommitLsn: Lsn, bestOtherCommitLsn: Lsn | undefined): boolean {
    const lagging = bestOtherCommitLsn !== undefined && bestOtherCommitLsn - currentCommitLsn > BigInt(this.maxLagBytes);
    if (!lagging) {
      this.laggingSinceMs = undefined;
      return false;
    }
    this.laggingSinceMs ??= nowMs;
    return nowMs - this.laggingSinceMs > this.graceMs;
  }

  /** Since when the current safekeeper has been lagging (undefined: it is not). */
  get laggingSince(): number | undefined {
    return this.laggingSinceMs;
  }
}

export interface SafekeeperAddress {
  readonly host: string;
  readonly port: number;
}

export interface WalReceiverOptions {
  readonly timeline: Timeline;
  /** The safekeepers holding this timeline (read at every attempt, so it may change). */
  readonly safekeepers: () => readonly SafekeeperAddress[];
  readonly tasks: TaskManager;
  readonly log: Logger;
  readonly user?: string;
  readonly feedbackIntervalMs?: number;
}

export interface WalReceiverStatus {
  state: "connecting" | "streaming" | "backoff" | "stopped" | "failed";
  safekeeper?: string;
  lastReceivedLsn: string;
  commitLsn: string;
  lastError?: string;
  connectAttempts: number;
}

export class WalReceiver {
  readonly status: WalReceiverStatus = { state: "stopped", lastReceivedLsn: formatLsn(INVALID_LSN), commitLsn: formatLsn(INVALID_LSN), connectAttempts: 0 };
  private cancel: (() => void) | undefined;
  private done: Promise<void> | undefined;

  constructor(private readonly opts: WalReceiverOptions) {}

  private get tl(): Timeline {
    return this.opts.timeline;
  }

  start(): void {
    if (this.done !== undefined) return;
    const t = this.opts.tasks.spawn("wal_receiver", { tenantId: this.tl.tenantId, timelineId: this.tl.timelineId, name: `walreceiver ${this.tl.timelineId}` }, (signal) => this.run(signal));
    this.cancel = t.cancel;
    this.done = t.done;
  }

  async stop(): Promise<void> {
    this.cancel?.();
    await this.done;
    this.done = undefined;
    this.status.state = "stopped";
  }

  private async run(signal: AbortSignal): Promise<void> {
    let failures = 0;
    while (!signal.aborted && this.tl.state === "active") {
      this.status.connectAttempts++;
      const before = this.tl.lastRecordLsn;
      try {
        await this.attempt(signal);
        failures = 0;
      } catch (e) {
        if (signal.aborted) break;
        if (e instanceof IngestError && this.tl.state === "active") {
          this.status.state = "failed";
          this.status.lastError = e.message;
          this.tl.setBroken(`WAL ingest stopped: ${e.message}`);
          return;
        }
        // Log a new kind of failure at warn, repeats at debug (a branch without a compute yet
        // retries for a long time; one line per attempt would drown the log).
        const repeated = this.status.lastError === (e as Error).message;
        this.status.lastError = (e as Error).message;
        const fields = { tenant_id: this.tl.tenantId, timeline_id: this.tl.timelineId, attempt: this.status.connectAttempts, ...errorFields(e) };
        if (repeated) this.opts.log.debug(fields, "WAL receiver connection failed again; retrying");
        else this.opts.log.warn(fields, "WAL receiver connection failed; retrying");
      }
      if (this.tl.lastRecordLsn > before) failures = 0;
      else failures++;
      this.status.state = "backoff";
      const delay = Math.min(RECONNECT_BACKOFF_MAX_MS, RECONNECT_BACKOFF_BASE_MS * 2 ** Math.min(failures, 10));
      await sleep(delay, signal).catch(() => undefined);
    }
    this.status.state = "stopped";
  }

  /** Connects to one safekeeper and asks IDENTIFY_SYSTEM for its commit LSN (bounded); the caller closes the client. */
  private async connectAndIdentify(addr: SafekeeperAddress, signal: AbortSignal): Promise<{ client: PgClient; addr: SafekeeperAddress; commitLsn: Lsn }> {
    const options = `-c tenant_id=${this.tl.tenantId} -c timeline_id=${this.tl.timelineId}`;
    const client = await PgClient.connect({
      host: addr.host, port: addr.port, user: this.opts.user ?? "postgres", replication: true, options,
      applicationName: `pageserver_${this.tl.timelineId}`, connectTimeoutMs: SAFEKEEPER_CONNECT_TIMEOUT_MS, signal,
    });
    try {
      const id = await client.identifySystem({ signal: AbortSignal.any([signal, AbortSignal.timeout(SAFEKEEPER_CONNECT_TIMEOUT_MS)]) });
      return { client, addr, commitLsn: id.xlogPos };
    } catch (e) {
      await client.close().catch(() => undefined);
      throw e;
    }
  }

  /** The best commit LSN among `addrs` (unreachable ones are skipped), or undefined when none answered. */
  private async probeOthers(addrs: readonly SafekeeperAddress[], signal: AbortSignal): Promise<Lsn | undefined> {
    const results = await Promise.allSettled(
      addrs.map(async (addr) => {
        const r = await this.connectAndIdentify(addr, signal);
        await r.client.close().catch(() => undefined);
        return r.commitLsn;
      }),
    );
    let best: Lsn | undefined;
    for (const r of results) if (r.status === "fulfilled" && (best === undefined || r.value > best)) best = r.value;
    return best;
  }

  /** Connects to each safekeeper, keeps the one with the highest commit LSN. */
  private async pick(signal: AbortSignal): Promise<{ client: PgClient; addr: SafekeeperAddress; commitLsn: Lsn }> {
    const addrs = this.opts.safekeepers();
    if (addrs.length === 0) throw new StrataError("invalid_argument", `No safekeepers configured for timeline ${this.tl.timelineId}`);
    const results = await Promise.allSettled(addrs.map((addr) => this.connectAndIdentify(addr, signal)));
    let best: { client: PgClient; addr: SafekeeperAddress; commitLsn: Lsn } | undefined;
    const errors: string[] = [];
    for (const r of results) {
      if (r.status === "rejected") errors.push((r.reason as Error).message);
      else if (best === undefined || r.value.commitLsn > best.commitLsn) best = r.value;
    }
    for (const r of results) if (r.status === "fulfilled" && r.value !== best) await r.value.client.close().catch(() => undefined);
    if (best === undefined) throw new StrataError("unavailable", `No safekeeper reachable: ${errors.join("; ")}`);
    return best;
  }

  private async attempt(signal: AbortSignal): Promise<void> {
    this.status.state = "connecting";
    const { client, addr, commitLsn } = await this.pick(signal);
    const onAbort = () => void client.close().catch(() => undefined);
    signal.addEventListener("abort", onAbort, { once: true });
    let feedbackTimer: NodeJS.Timeout | undefined;
    let probeTimer: NodeJS.Timeout | undefined;
    let switching = false;
    let currentCommit = commitLsn;
    try {
      const start = this.tl.lastRecordLsn;
      this.status.safekeeper = `${addr.host}:${addr.port}`;
      this.status.commitLsn = formatLsn(commitLsn);
      this.tl.remoteCommitLsn = commitLsn;
      const stream = await client.startReplication({ startLsn: start, signal });
      this.status.state = "streaming";
      this.opts.log.info({ tenant_id: this.tl.tenantId, timeline_id: this.tl.timelineId, safekeeper: this.status.safekeeper, start: formatLsn(start), commit_lsn: formatLsn(commitLsn) }, "streaming WAL");
      // Ingest is done with a record (it copies what it stores) before it asks for the next one.
      const decoder = new WalStreamDecoder(start, { recycleRecordBuffers: true });
      const ingest = new WalIngest(this.tl, this.tl, { startLsn: start });
      const ctx = requestContext("wal_receiver", signal);
      let received = start;
      const sendFeedback = () => {
        try {
          stream.send({ kind: "PageserverFeedback", lastReceivedLsn: received, diskConsistentLsn: this.tl.diskConsistentLsn, remoteConsistentLsn: this.tl.remoteConsistentLsn, replyTime: pgTimestampNow() });
        } catch {
          // The stream ended; the loop notices.
        }
      };
      feedbackTimer = setInterval(sendFeedback, this.opts.feedbackIntervalMs ?? FEEDBACK_INTERVAL_MS);
      const others = this.opts.safekeepers().filter((a) => a.host !== addr.host || a.port !== addr.port);
      if (others.length > 0) {
        const conf = this.tl.deps.conf();
        const monitor = new SafekeeperLagMonitor(conf.safekeeperMaxLagBytes, conf.safekeeperLagGraceMs);
        let probing = false;
        probeTimer = setInterval(() => {
          if (probing || switching) return;
          probing = true;
          void this.probeOthers(others, signal)
            .then((best) => {
              if (switching || signal.aborted || !monitor.observe(Date.now(), currentCommit, best)) return;
              switching = true;
              this.opts.log.warn(
                { tenant_id: this.tl.tenantId, timeline_id: this.tl.timelineId, safekeeper: this.status.safekeeper, commit_lsn: formatLsn(currentCommit), best_other_commit_lsn: formatLsn(best ?? INVALID_LSN) },
                "current safekeeper lags too far behind; switching",
              );
              void client.close().catch(() => undefined);
            })
            .catch(() => undefined)
            .finally(() => {
              probing = false;
            });
        }, LAG_PROBE_INTERVAL_MS);
      }
      for await (const m of stream) {
        if (m.walEnd > currentCommit) currentCommit = m.walEnd;
        if (m.walEnd > this.tl.remoteCommitLsn) this.tl.remoteCommitLsn = m.walEnd;
        this.status.commitLsn = formatLsn(this.tl.remoteCommitLsn);
        if (m.kind === "PrimaryKeepalive") {
          if (m.replyRequested) sendFeedback();
          continue;
        }
        if (m.dataStart !== received) {
          throw new StrataError("protocol_violation", `Safekeeper ${this.status.safekeeper} sent WAL at ${formatLsn(m.dataStart)}, expected ${formatLsn(received)}`);
        }
        received = toLsn(m.dataStart + BigInt(m.data.length));
        this.status.lastReceivedLsn = formatLsn(received);
        decoder.feed(m.data);
        for (;;) {
          let rec: DecodedRecord | undefined;
          try {
            rec = decoder.next();
          } catch (e) {
            throw new IngestError(`cannot decode WAL after ${formatLsn(this.tl.lastRecordLsn)}: ${(e as Error).message}`, e);
          }
          if (rec === undefined) break;
          try {
            // undefined when ingested synchronously (the common case): no promise to wait for
            const pending = ingest.ingestRecord(rec, ctx);
            if (pending !== undefined) await pending;
          } catch (e) {
            // The timeline stopping under us (shutdown, deletion) is not an ingest failure.
            if (signal.aborted || this.tl.state !== "active") throw e;
            throw new IngestError(`record at ${formatLsn(rec.lsn)}: ${(e as Error).message}`, e);
          }
          this.tl.deps.metrics.ingestRecords.inc();
          this.tl.deps.metrics.ingestBytes.inc(rec.totalLength);
        }
      }
      if (switching) return;
      throw new StrataError("unavailable", `Safekeeper ${this.status.safekeeper} ended the stream`);
    } catch (e) {
      // Closing the connection to switch safekeepers is not a failure (unless ingest itself failed).
      if (switching && !(e instanceof IngestError) && !signal.aborted) return;
      throw e;
    } finally {
      clearInterval(feedbackTimer);
      clearInterval(probeTimer);
      signal.removeEventListener("abort", onAbort);
      await client.close().catch(() => undefined);
    }
  }
}

/** An error of ingest itself (not of the connection): stops the receiver and breaks the timeline. */
class IngestError extends StrataError {
  constructor(message: string, cause: unknown) {
    super(cause instanceof StrataError ? cause.code : "internal", message, { cause });
  }
}
