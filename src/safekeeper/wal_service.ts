/**
 * WAL service — the safekeeper's libpq server: physical streaming
 * replication of a timeline's WAL to pageservers, unmodified PostgreSQL hot
 * standbys and pg_receivewal.
 *
 * Choosing the timeline. A connection names its tenant and timeline in the
 * startup packet's `options`, as Neon does:
 *
 *     options='-c tenant_id=<32 hex> -c timeline_id=<32 hex>'
 *
 * Standard clients can pass that through their connection string, e.g.
 *     primary_conninfo = 'host=sk1 port=5454 user=postgres options=''-c tenant_id=... -c timeline_id=...'''
 *     pg_receivewal -d "host=sk1 port=5454 options='-c tenant_id=... -c timeline_id=...'" -D dir
 * When the options are absent and the safekeeper holds exactly one timeline,
 * that timeline is used (handy for a single-tenant deployment and for tools
 * that cannot pass options). Otherwise the connection is refused (FATAL).
 * Only `replication=true` (physical) connections are served.
 *
 * Commands (parsed by src/wire/repl_command.ts):
 *   IDENTIFY_SYSTEM      -> the compute's system id, timeline 1, xlogpos = the
 *                           servable LSN (min(commit_lsn, flush LSN)), dbname NULL
 *   TIMELINE_HISTORY n   -> error: strata uses only PostgreSQL timeline 1
 *   SHOW name            -> wal_segment_size, server_version(_num),
 *                           data_directory_mode, integer_datetimes
 *   READ_REPLICATION_SLOT s -> ('physical', NULL, NULL): slots on a safekeeper
 *                           are virtual (WAL is kept by the safekeeper's own
 *                           retention), so pg_receivewal --slot falls back to
 *                           IDENTIFY_SYSTEM's position
 *   START_REPLICATION [SLOT s] [PHYSICAL] X/Y [TIMELINE 1]
 *                        -> CopyBoth; WAL from X/Y, never past the servable LSN,
 *                           waiting for commit_lsn to advance; keepalives
 * Inside CopyBoth the client's standby status updates ('r'), hot standby
 * feedback ('h') and strata's pageserver feedback ('z') are stored on the
 * timeline (Timeline.recordStandbyReply & co.). CopyDone ends streaming the
 * way a walsender does (CopyDone, CommandComplete START_STREAMING,
 * CommandComplete START_REPLICATION, ReadyForQuery).
 *
 * Failure isolation: each connection runs in its own async handler; a
 * malformed, truncated or oversized message (MAX_CLIENT_MESSAGE_BYTES) gets a
 * FATAL ErrorResponse (08P01) and closes only that connection (the
 * ServerConnection does the framing); a bad command gets an ERROR and the
 * connection stays usable, like PostgreSQL's walsender. A client that stops
 * answering for WAL_SENDER_TIMEOUT_MS is disconnected.
 */
import { createServer, type Server, type Socket } from "node:net";
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import { parseTenantId, parseTimelineId } from "../lib/id.js";
import { formatLsn, lsn as toLsn, type Lsn } from "../lib/lsn.js";
import { errorFields, silentLogger } from "../lib/logging.js";
import type { FrontendMessage } from "../wire/messages.js";
import { parseReplicationCommand, type ReplicationCommand } from "../wire/repl_command.js";
import { parseClientReplicationMessage, pgTimestampNow, serializeReplicationMessage } from "../wire/replication.js";
import { makeScramVerifier, type ScramVerifier } from "../wire/scram.js";
import { INT4_OID, ServerConnection, type StartupInfo } from "../wire/server_connection.js";
import { errorFieldsFor, SqlStateError } from "../wire/sqlstate.js";
import type { SafekeeperMetrics } from "./metrics.js";
import type { ConsumerKind, Timeline } from "./timeline.js";

/** Largest WAL payload in one XLogData: PostgreSQL's MAX_SEND_SIZE (XLOG_BLCKSZ * 16). */
export const MAX_SEND_BYTES = 128 * 1024;
/**
 * Largest message a WAL service client may send. Clients send commands and
 * 34-byte status updates; 64 KiB leaves room for long commands and refuses
 * anything that can only be garbage or an attack.
 */
export const MAX_CLIENT_MESSAGE_BYTES = 64 * 1024;
/** Keepalive while idle: well within a standby's wal_receiver_timeout (60 s). */
export const KEEPALIVE_INTERVAL_MS = 10_000;
/** A client silent this long is disconnected (PostgreSQL's wal_sender_timeout default). */
export const WAL_SENDER_TIMEOUT_MS = 60_000;
/** Startup + authentication bound for one client. */
export const STARTUP_TIMEOUT_MS = 30_000;
/** Longest a send may wait for a full socket buffer to drain before the client counts as stuck. */
const DRAIN_TIMEOUT_MS = WAL_SENDER_TIMEOUT_MS;

/** After a FATAL error, how long the client may take to close its side before the socket is destroyed. */
const FATAL_CLOSE_TIMEOUT_MS = 5_000;

/** SQLSTATEs PostgreSQL's walsender uses for the same conditions. */
const SQLSTATE_UNDEFINED_FILE = "58P01";
const SQLSTATE_UNDEFINED_OBJECT = "42704";
const SQLSTATE_INVALID_AUTHORIZATION = "28000";

export interface WalServiceOptions {
  host: string;
  /** 0 = any free port (see `port` after start). */
  port: number;
  /**
   * The timeline a connection asks for: ids from the startup options, or
   * undefined when it gave none. Throws not_found (or invalid_argument).
   */
  resolveTimeline: (tenantId: string | undefined, timelineId: string | undefined) => Timeline;
  metrics: SafekeeperMetrics;
  log?: Logger;
  /** When set, clients must authenticate with this password (SCRAM-SHA-256). */
  password?: string | undefined;
}

export class WalService {
  private readonly sockets = new Set<Socket>();
  private readonly handlers = new Set<Promise<void>>();
  private readonly ac = new AbortController();
  private readonly log: Logger;
  private readonly verifier: ScramVerifier | undefined;

  private constructor(
    private readonly server: Server,
    private readonly opts: WalServiceOptions,
  ) {
    this.log = (opts.log ?? silentLogger()).child({ service: "wal_service" });
    this.verifier = opts.password === undefined ? undefined : makeScramVerifier(opts.password);
  }

  /** Starts listening. */
  static async start(opts: WalServiceOptions): Promise<WalService> {
    const server = createServer();
    const svc = new WalService(server, opts);
    server.on("connection", (s) => svc.onConnection(s));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(opts.port, opts.host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.on("error", (e) => svc.log.error(errorFields(e), "WAL service listener error"));
    return svc;
  }

  get port(): number {
    const a = this.server.address();
    return typeof a === "object" && a !== null ? a.port : 0;
  }

  /** Stops accepting, disconnects every client and waits for their handlers. */
  async stop(): Promise<void> {
    this.ac.abort(new StrataError("cancelled", "safekeeper shutting down"));
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await Promise.all([...this.handlers]);
    await closed;
  }

  private onConnection(socket: Socket): void {
    if (this.ac.signal.aborted) {
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    const remote = `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}`;
    const h = this.serve(socket, remote)
      .catch((e: unknown) => {
        const f = errorFields(e);
        if (e instanceof SqlStateError && !this.ac.signal.aborted) {
          this.log.info({ remote, ...f }, "connection refused");
        } else if ((e as { code?: unknown }).code === "protocol_violation") {
          this.opts.metrics.protocolErrors.inc();
          this.log.warn({ remote, ...f }, "client broke the protocol; connection closed");
        } else if (!this.ac.signal.aborted) {
          this.log.info({ remote, ...f }, "WAL service connection ended with an error");
        }
      })
      .finally(() => {
        this.sockets.delete(socket);
        socket.destroy();
        this.handlers.delete(h);
      });
    this.handlers.add(h);
  }

  private async serve(socket: Socket, remote: string): Promise<void> {
    // The timeline is chosen before authentication completes, so a client
    // naming no or an unknown timeline gets its FATAL error before
    // ReadyForQuery, as PostgreSQL answers a connection to a missing database.
    let tl: Timeline | undefined;
    const conn = await ServerConnection.accept(socket, {
      authenticate: (startup) => {
        if (startup.replication !== "physical") {
          throw new SqlStateError("unsupported", "0A000", "The safekeeper WAL service serves only physical replication connections (replication=true)");
        }
        tl = this.pickTimeline(startup);
        return this.verifier === undefined ? { method: "trust" } : { method: "scram-sha-256", verifier: this.verifier };
      },
      serverParameters: {
        server_version: "15.0",
        server_encoding: "UTF8",
        client_encoding: "UTF8",
        integer_datetimes: "on",
        DateStyle: "ISO, MDY",
        standard_conforming_strings: "on",
        application_name: "",
      },
      startupTimeoutMs: STARTUP_TIMEOUT_MS,
      signal: this.ac.signal,
      maxMessageBytes: MAX_CLIENT_MESSAGE_BYTES,
    });
    if (tl === undefined) throw new Error("assertion failed: connection accepted without a timeline");
    const session = new Session(conn, tl, remote, this.opts.metrics, this.log.child({ remote, tenant_id: tl.tenantId, timeline_id: tl.timelineId }), this.ac.signal);
    await session.run();
  }

  private pickTimeline(startup: StartupInfo): Timeline {
    const t = startup.settings.get("tenant_id");
    const tl = startup.settings.get("timeline_id");
    if ((t === undefined) !== (tl === undefined)) {
      throw new SqlStateError("invalid_argument", SQLSTATE_INVALID_AUTHORIZATION, "Startup options must give both tenant_id and timeline_id (options='-c tenant_id=... -c timeline_id=...')");
    }
    try {
      return this.opts.resolveTimeline(t === undefined ? undefined : parseTenantId(t), tl === undefined ? undefined : parseTimelineId(tl));
    } catch (e) {
      if (e instanceof StrataError && !(e instanceof SqlStateError)) throw new SqlStateError(e.code, SQLSTATE_INVALID_AUTHORIZATION, e.message, { cause: e });
      throw e;
    }
  }
}

/** Formats a byte count the way PostgreSQL shows GUC_UNIT_BYTE settings (16MB, 1GB). */
export function formatGucBytes(n: number): string {
  const units: [number, string][] = [
    [1024 * 1024 * 1024, "GB"],
    [1024 * 1024, "MB"],
    [1024, "kB"],
  ];
  for (const [size, unit] of units) if (n % size === 0) return `${n / size}${unit}`;
  return `${n}B`;
}

/** One client connection after startup: commands, then possibly streaming. */
class Session {
  constructor(
    private readonly conn: ServerConnection,
    private readonly tl: Timeline,
    private readonly remote: string,
    private readonly metrics: SafekeeperMetrics,
    private readonly log: Logger,
    private readonly shutdown: AbortSignal,
  ) {}

  async run(): Promise<void> {
    while (!this.shutdown.aborted) {
      const m = await this.conn.read();
      if (m === null) return;
      if (m.kind !== "Query") {
        throw this.protocolError(`Unexpected ${m.kind} outside of streaming; expected a Query`);
      }
      try {
        const cmd: ReplicationCommand = parseReplicationCommand(m.sql);
        if (!(await this.execute(cmd))) return; // streaming ended with the connection
      } catch (e) {
        if (e instanceof StrataError && e.code === "protocol_violation") throw e;
        if (!(e instanceof StrataError)) this.log.error(errorFields(e), "command failed unexpectedly");
        this.conn.sendError(e);
      }
      this.conn.readyForQuery();
    }
  }

  private protocolError(message: string): StrataError {
    const e = new StrataError("protocol_violation", message);
    this.conn.send({ kind: "ErrorResponse", fields: errorFieldsFor(e, "FATAL") });
    this.conn.close();
    return e;
  }

  /** Runs one command; false when the connection is finished (streaming ended by a disconnect or an error). */
  private async execute(cmd: ReplicationCommand): Promise<boolean> {
    const tl = this.tl;
    switch (cmd.kind) {
      case "IDENTIFY_SYSTEM":
        this.conn.sendRows(
          [{ name: "systemid" }, { name: "timeline", typeOid: INT4_OID }, { name: "xlogpos" }, { name: "dbname" }],
          [[tl.systemId.toString(), "1", formatLsn(tl.servableLsn), null]],
          "IDENTIFY_SYSTEM",
        );
        return true;
      case "TIMELINE_HISTORY":
        throw new SqlStateError("not_found", SQLSTATE_UNDEFINED_FILE, `There is no history file for timeline ${cmd.timeline}: strata timelines use only PostgreSQL timeline 1`);
      case "SHOW": {
        const value = this.showValue(cmd.name);
        this.conn.sendRows([{ name: cmd.name }], [[value]], "SHOW");
        return true;
      }
      case "READ_REPLICATION_SLOT":
        this.conn.sendRows([{ name: "slot_type" }, { name: "restart_lsn" }, { name: "restart_tli", typeOid: 20 }], [["physical", null, null]], "READ_REPLICATION_SLOT");
        return true;
      case "START_REPLICATION":
        return await this.startReplication(cmd);
    }
  }

  private showValue(name: string): string {
    const tl = this.tl;
    switch (name) {
      case "wal_segment_size":
        return formatGucBytes(tl.walSegSizeBytes);
      case "server_version_num":
        return String(tl.pgVersion);
      case "server_version":
        return `${Math.floor(tl.pgVersion / 10000)}.${tl.pgVersion % 10000}`;
      case "data_directory_mode":
        return "0700";
      case "integer_datetimes":
        return "on";
      default:
        throw new SqlStateError("not_found", SQLSTATE_UNDEFINED_OBJECT, `unrecognized configuration parameter "${name}"`);
    }
  }

  /**
   * Streams until the client ends it with CopyDone (true: back to command
   * mode) or goes away / fails (false: the connection is closed; a failure on
   * our side was reported to the client as FATAL first).
   */
  private async startReplication(cmd: Extract<ReplicationCommand, { kind: "START_REPLICATION" }>): Promise<boolean> {
    const tl = this.tl;
    if (cmd.timeline !== null && cmd.timeline !== 1) {
      throw new SqlStateError("invalid_argument", "22023", `Requested timeline ${cmd.timeline} does not exist: strata timelines use only PostgreSQL timeline 1`);
    }
    const start = cmd.startLsn;
    if (start > tl.flushLsn) {
      throw new StrataError("invalid_argument", `Requested starting point ${formatLsn(start)} is ahead of the WAL flush position of this safekeeper ${formatLsn(tl.flushLsn)}`);
    }
    if (start < tl.oldestServableLsn) {
      throw new SqlStateError("not_found", SQLSTATE_UNDEFINED_FILE, `Requested WAL at ${formatLsn(start)} is not on this safekeeper: it holds WAL from ${formatLsn(tl.oldestServableLsn)}`);
    }
    this.conn.send({ kind: "CopyBothResponse", format: 0, columnFormats: [] });
    let kind: ConsumerKind = "standby";
    const appName = this.conn.startup.parameters.get("application_name") ?? "";
    const consumer = tl.addConsumer({ kind, applicationName: appName, remoteAddress: this.remote, startLsn: start });
    this.metrics.walSenders.inc({ kind });
    this.log.info({ start_lsn: formatLsn(start), application_name: appName }, "streaming WAL to consumer");

    const ac = new AbortController();
    const stopSending = () => ac.abort();
    this.shutdown.addEventListener("abort", stopSending, { once: true });
    let lastReplyMs = Date.now();
    let clientDone = false;

    const receive = async (): Promise<void> => {
      try {
        while (true) {
          const m: FrontendMessage | null = await this.conn.read();
          if (m === null) return; // client went away
          if (m.kind === "CopyDone") {
            clientDone = true;
            return;
          }
          if (m.kind === "CopyFail") throw new StrataError("cancelled", `Client aborted streaming: ${m.message}`);
          if (m.kind !== "CopyData") throw this.protocolError(`Unexpected ${m.kind} while streaming; expected CopyData or CopyDone`);
          let msg;
          try {
            msg = parseClientReplicationMessage(m.data);
          } catch (e) {
            throw this.protocolError((e as Error).message);
          }
          lastReplyMs = Date.now();
          switch (msg.kind) {
            case "StandbyStatusUpdate":
              tl.recordStandbyReply(consumer.state, msg);
              if (msg.replyRequested) this.sendKeepalive(tl.servableLsn, false);
              break;
            case "HotStandbyFeedback":
              tl.recordHotStandbyFeedback(consumer.state, (BigInt(msg.xminEpoch) << 32n) | BigInt(msg.xmin));
              break;
            case "PageserverFeedback":
              if (kind !== "pageserver") {
                this.metrics.walSenders.dec({ kind });
                kind = "pageserver";
                (consumer.state as { kind: ConsumerKind }).kind = kind;
                this.metrics.walSenders.inc({ kind });
              }
              tl.recordPageserverFeedback(msg);
              break;
          }
        }
      } finally {
        ac.abort();
      }
    };

    const send = async (): Promise<void> => {
      let pos: Lsn = start;
      let lastKeepaliveMs = Date.now();
      while (!ac.signal.aborted) {
        const end = tl.servableLsn;
        if (pos < end) {
          const data = await tl.readCommittedWal(pos, MAX_SEND_BYTES, end);
          if (ac.signal.aborted) break;
          if (data.length === 0) throw new StrataError("internal", `WAL read at ${formatLsn(pos)} below ${formatLsn(end)} returned nothing`);
          const payload = serializeReplicationMessage({ kind: "XLogData", dataStart: pos, walEnd: end, sendTime: pgTimestampNow(), data: Buffer.from(data.buffer, data.byteOffset, data.length) });
          const flushed = this.conn.send({ kind: "CopyData", data: payload });
          pos = toLsn(pos + BigInt(data.length));
          consumer.state.sentLsn = pos;
          this.metrics.walSentBytes.inc({ kind }, data.length);
          if (!flushed) await this.drain(ac.signal);
          continue;
        }
        const now = Date.now();
        if (now - lastReplyMs > WAL_SENDER_TIMEOUT_MS) {
          throw new StrataError("timeout", `Terminating WAL sender: no reply from ${this.remote} for ${WAL_SENDER_TIMEOUT_MS} ms`);
        }
        if (now - lastKeepaliveMs >= KEEPALIVE_INTERVAL_MS) {
          this.sendKeepalive(end, now - lastReplyMs > WAL_SENDER_TIMEOUT_MS / 2);
          lastKeepaliveMs = now;
        }
        await tl.waitForServable(pos, KEEPALIVE_INTERVAL_MS, ac.signal);
        if (tl.isClosed) throw new StrataError("unavailable", `Timeline ${tl.tenantId}/${tl.timelineId} was shut down`);
      }
    };

    try {
      const receiving = receive();
      let sendFailure: unknown;
      const sending = send()
        .catch((e: unknown) => {
          // Tell the client why, then end the connection: that also ends the receiver's wait.
          sendFailure = e;
          this.fatalAndClose(e);
        })
        .finally(() => ac.abort());
      const [, received] = await Promise.allSettled([sending, receiving]);
      if (received.status === "rejected") {
        const e = received.reason as unknown;
        if (e instanceof StrataError && e.code === "protocol_violation") throw e; // already answered with FATAL
        this.fatalAndClose(e);
        return false;
      }
      if (sendFailure !== undefined) {
        if (!this.shutdown.aborted) this.log.info(errorFields(sendFailure), "WAL sender ended with an error");
        return false;
      }
      if (!clientDone) {
        this.conn.close();
        return false;
      }
      this.conn.send({ kind: "CopyDone" });
      this.conn.send({ kind: "CommandComplete", tag: "START_STREAMING" });
      this.conn.send({ kind: "CommandComplete", tag: "START_REPLICATION" });
      return true;
    } finally {
      this.shutdown.removeEventListener("abort", stopSending);
      consumer.remove();
      this.metrics.walSenders.dec({ kind });
      this.log.info({ sent_lsn: formatLsn(consumer.state.sentLsn) }, "WAL consumer disconnected");
    }
  }

  /** Sends a FATAL error and closes (destroying the socket if the client does not close its side in time). */
  private fatalAndClose(e: unknown): void {
    const socket = this.conn.socket;
    if (socket.destroyed) return;
    this.conn.send({ kind: "ErrorResponse", fields: errorFieldsFor(e, "FATAL") });
    this.conn.close();
    setTimeout(() => socket.destroy(), FATAL_CLOSE_TIMEOUT_MS).unref();
  }

  private sendKeepalive(walEnd: Lsn, replyRequested: boolean): void {
    this.conn.send({
      kind: "CopyData",
      data: serializeReplicationMessage({ kind: "PrimaryKeepalive", walEnd, sendTime: pgTimestampNow(), replyRequested }),
    });
  }

  /** Waits for the socket buffer to drain (bounded), or cancellation. */
  private drain(signal: AbortSignal): Promise<void> {
    const socket = this.conn.socket;
    if (socket.destroyed || signal.aborted) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new StrataError("timeout", `Client ${this.remote} did not read WAL for ${DRAIN_TIMEOUT_MS} ms`));
      }, DRAIN_TIMEOUT_MS);
      const done = () => {
        cleanup();
        resolve();
      };
      const cleanup = () => {
        clearTimeout(timer);
        socket.off("drain", done);
        socket.off("close", done);
        signal.removeEventListener("abort", done);
      };
      socket.once("drain", done);
      socket.once("close", done);
      signal.addEventListener("abort", done, { once: true });
    });
  }
}
