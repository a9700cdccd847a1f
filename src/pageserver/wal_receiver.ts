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
 * remote-consistent LSNs. Remote storage does not exist yet, so the remote
 * LSN is reported as 0 (the safekeeper then keeps all WAL — safe).
 *
 * Failures: a connection or protocol error ends the attempt; the loop
 * retries with exponential back-off (RECONNECT_BACKOFF_*), re-choosing the
 * safekeeper. An ingest error (an unsupported or corrupt record) is not
 * retried: it stops the timeline's ingest, and the timeline is marked
 * Broken with the record's LSN and reason — never silent loss.
 * Not yet: switching safekeepers while streaming when another one gets far
 * ahead (only on failure).
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

  /** Connects to each safekeeper, keeps the one with the highest commit LSN. */
  private async pick(signal: AbortSignal): Promise<{ client: PgClient; addr: SafekeeperAddress; commitLsn: Lsn }> {
    const addrs = this.opts.safekeepers();
    if (addrs.length === 0) throw new StrataError("invalid_argument", `No safekeepers configured for timeline ${this.tl.timelineId}`);
    const options = `-c tenant_id=${this.tl.tenantId} -c timeline_id=${this.tl.timelineId}`;
    const results = await Promise.allSettled(
      addrs.map(async (addr) => {
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
      }),
    );
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
    try {
      const start = this.tl.lastRecordLsn;
      this.status.safekeeper = `${addr.host}:${addr.port}`;
      this.status.commitLsn = formatLsn(commitLsn);
      this.tl.remoteCommitLsn = commitLsn;
      const stream = await client.startReplication({ startLsn: start, signal });
      this.status.state = "streaming";
      this.opts.log.info({ tenant_id: this.tl.tenantId, timeline_id: this.tl.timelineId, safekeeper: this.status.safekeeper, start: formatLsn(start), commit_lsn: formatLsn(commitLsn) }, "streaming WAL");
      const decoder = new WalStreamDecoder(start);
      const ingest = new WalIngest(this.tl, this.tl, { startLsn: start });
      const ctx = requestContext("wal_receiver", signal);
      let received = start;
      const sendFeedback = () => {
        try {
          stream.send({ kind: "PageserverFeedback", lastReceivedLsn: received, diskConsistentLsn: this.tl.diskConsistentLsn, remoteConsistentLsn: INVALID_LSN, replyTime: pgTimestampNow() });
        } catch {
          // The stream ended; the loop notices.
        }
      };
      feedbackTimer = setInterval(sendFeedback, this.opts.feedbackIntervalMs ?? FEEDBACK_INTERVAL_MS);
      for await (const m of stream) {
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
            await ingest.ingestRecord(rec, ctx);
          } catch (e) {
            // The timeline stopping under us (shutdown, deletion) is not an ingest failure.
            if (signal.aborted || this.tl.state !== "active") throw e;
            throw new IngestError(`record at ${formatLsn(rec.lsn)}: ${(e as Error).message}`, e);
          }
          this.tl.deps.metrics.ingestRecords.inc();
          this.tl.deps.metrics.ingestBytes.inc(rec.totalLength);
        }
      }
      throw new StrataError("unavailable", `Safekeeper ${this.status.safekeeper} ended the stream`);
    } finally {
      clearInterval(feedbackTimer);
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
