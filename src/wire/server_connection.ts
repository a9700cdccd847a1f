/**
 * Server side of one libpq connection: the startup handshake and
 * authentication, then a typed message channel for the component that serves
 * queries (safekeeper WAL service, pageserver page service).
 *
 * `ServerConnection.accept(socket, opts)` runs the startup phase exactly as
 * PostgreSQL's postmaster does it from the client's point of view:
 *   1. SSLRequest / GSSENCRequest are refused with the single byte 'N' (strata
 *      speaks plain TCP), after which the client sends its StartupMessage;
 *      a CancelRequest is read and the connection closed (cancellation is
 *      not supported, which the protocol allows: it is best-effort).
 *   2. The StartupMessage's `user`, `database`, `replication` and `options`
 *      (`-c name=value` settings) are decoded into `StartupInfo`, and the
 *      caller's `authenticate` callback picks the method for this user:
 *      trust, cleartext password, or SCRAM-SHA-256 against a stored verifier
 *      (a `null` verifier runs a mock exchange that fails, so unknown users
 *      look like wrong passwords).
 *   3. AuthenticationOk, ParameterStatus for each server parameter,
 *      BackendKeyData and ReadyForQuery('I').
 * Authentication failure is answered with a FATAL ErrorResponse (SQLSTATE
 * 28P01) and the connection is closed, as PostgreSQL does.
 *
 * Invariants: the whole handshake is bounded by `startupTimeoutMs`; every
 * message is parsed by `FrontendParser` (bounded size, protocol violations
 * become a FATAL 08P01 ErrorResponse and a closed connection, never a crash);
 * at most MAX_QUEUED_MESSAGES parsed messages wait for the consumer before the
 * socket is paused. After a protocol violation nothing more is read.
 */

import { randomBytes, randomInt } from "node:crypto";
import type { Socket } from "node:net";
import { StrataError, assert } from "../lib/errors.js";
import { SqlStateError, errorFieldsFor } from "./sqlstate.js";
import {
  decodePasswordMessage,
  decodeSASLInitialResponse,
  parseReplicationParameter,
  parseStartupOptionSettings,
  serializeBackend,
  splitStartupOptions,
  type BackendMessage,
  type ErrorFields,
  type FieldDescription,
  type FrontendMessage,
  type ReplicationMode,
} from "./messages.js";
import { FrontendParser } from "./parser.js";
import { SCRAM_SHA_256, ScramServerSession, mockScramVerifier, type ScramVerifier } from "./scram.js";

/** Default bound on startup + authentication: PostgreSQL's authentication_timeout default (1 min). */
export const DEFAULT_STARTUP_TIMEOUT_MS = 60_000;
/**
 * Parsed client messages buffered ahead of the consumer before the socket is
 * paused (the messages of the chunk being parsed still complete, so the
 * backlog is also bounded by one socket read).
 */
export const MAX_QUEUED_MESSAGES = 64;
/** How long a FATAL ErrorResponse may take to flush before the socket is destroyed. */
const FATAL_FLUSH_TIMEOUT_MS = 5_000;

/** Type OIDs used in RowDescriptions our servers send (pg_type.dat). */
export const TEXT_OID = 25;
export const INT4_OID = 23;
export const INT8_OID = 20;

export interface StartupInfo {
  user: string;
  database: string;
  replication: ReplicationMode;
  /** Settings from the `options` parameter (`-c name=value`, `--name=value`). */
  settings: Map<string, string>;
  /** All startup parameters as sent. */
  parameters: Map<string, string>;
}

export type AuthMethod =
  | { method: "trust" }
  | { method: "password"; password: string }
  /** `verifier: null` for an unknown user: a mock exchange that always fails. */
  | { method: "scram-sha-256"; verifier: ScramVerifier | null };

export interface AcceptOptions {
  /** Chooses how to authenticate this user; may throw StrataError to refuse the connection. */
  authenticate: (startup: StartupInfo) => AuthMethod | Promise<AuthMethod>;
  /** Sent as ParameterStatus after authentication (server_version, ...). */
  serverParameters?: Record<string, string>;
  startupTimeoutMs?: number;
  signal?: AbortSignal;
  maxMessageBytes?: number;
  /** Per-server secret for mock SCRAM exchanges; random when absent. */
  mockSecret?: Buffer;
}

type Waiter = { resolve: (m: FrontendMessage | null) => void; reject: (e: Error) => void };

export class ServerConnection {
  startup!: StartupInfo;
  readonly processId: number;
  readonly secretKey: number;

  private readonly parser: FrontendParser;
  private readonly queue: FrontendMessage[] = [];
  private waiter: Waiter | null = null;
  private failure: Error | null = null;
  private ended = false;
  private paused = false;

  private constructor(
    readonly socket: Socket,
    opts: AcceptOptions,
  ) {
    this.parser = new FrontendParser({ maxMessageBytes: opts.maxMessageBytes });
    this.processId = randomInt(1, 0x7fffffff);
    this.secretKey = randomInt(0, 0x7fffffff);
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", (e) => this.fail(new StrataError("io_error", `Client connection failed: ${e.message}`, { cause: e })));
    socket.on("end", () => this.onEnd());
    socket.on("close", () => this.onEnd());
  }

  /**
   * Runs the startup phase and authentication. Resolves with a ready
   * connection, or rejects (after answering the client and closing the
   * socket) when the client is refused or breaks the protocol.
   */
  static async accept(socket: Socket, opts: AcceptOptions): Promise<ServerConnection> {
    const conn = new ServerConnection(socket, opts);
    const timeoutMs = opts.startupTimeoutMs ?? DEFAULT_STARTUP_TIMEOUT_MS;
    const timer = setTimeout(() => conn.fail(new StrataError("timeout", `Client startup took longer than ${timeoutMs} ms`)), timeoutMs);
    const onAbort = () => conn.fail(new StrataError("cancelled", "Server shutting down"));
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await conn.handshake(opts);
      return conn;
    } catch (e) {
      conn.fatal(e);
      throw e;
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
    }
  }

  private onData(chunk: Buffer): void {
    if (this.failure) return;
    try {
      this.parser.push(chunk);
      for (let m = this.parser.next(); m !== null; m = this.parser.next()) this.deliver(m);
    } catch (e) {
      // Framing is lost: tell the client why and stop reading.
      this.fatal(e);
      return;
    }
    if (this.queue.length >= MAX_QUEUED_MESSAGES && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
  }

  private deliver(m: FrontendMessage): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve(m);
    } else {
      this.queue.push(m);
    }
  }

  private onEnd(): void {
    this.ended = true;
    const w = this.waiter;
    this.waiter = null;
    if (this.failure) w?.reject(this.failure);
    else w?.resolve(null);
  }

  /** Marks the connection failed and wakes a pending read; `graceful` lets queued writes flush first. */
  private fail(e: Error, graceful = false): void {
    if (this.failure) return;
    this.failure = e;
    if (graceful) {
      this.socket.end();
      // The peer may never read what we wrote: do not wait for it forever.
      setTimeout(() => this.socket.destroy(), FATAL_FLUSH_TIMEOUT_MS).unref();
    } else {
      this.socket.destroy();
    }
    const w = this.waiter;
    this.waiter = null;
    w?.reject(e);
  }

  /** Sends a FATAL ErrorResponse for `err` (if the socket is still writable) and ends the connection. */
  private fatal(err: unknown): void {
    if (this.failure) return;
    if (this.socket.writable) this.socket.write(serializeBackend({ kind: "ErrorResponse", fields: errorFieldsFor(err, "FATAL") }));
    this.fail(err instanceof Error ? err : new StrataError("internal", String(err)), true);
  }

  /**
   * The next client message, or `null` once the client has closed the
   * connection or sent Terminate (we then close our side too). Rejects on a protocol violation (already
   * reported to the client) or socket error.
   */
  read(): Promise<FrontendMessage | null> {
    const m = this.queue.shift();
    if (m !== undefined) {
      if (this.paused && this.queue.length < MAX_QUEUED_MESSAGES / 2) {
        this.paused = false;
        this.socket.resume();
      }
      if (m.kind === "Terminate") {
        this.close();
        return Promise.resolve(null);
      }
      return Promise.resolve(m);
    }
    if (this.failure) return Promise.reject(this.failure);
    if (this.ended) return Promise.resolve(null);
    assert(this.waiter === null, "ServerConnection: two concurrent reads");
    return new Promise<FrontendMessage | null>((resolve, reject) => {
      this.waiter = { resolve, reject };
    }).then((msg) => {
      if (msg?.kind !== "Terminate") return msg;
      this.close();
      return null;
    });
  }

  /** Sends framed bytes or a message. Returns false when the socket buffer is full (wait for 'drain'). */
  send(m: Buffer | BackendMessage): boolean {
    if (this.failure || !this.socket.writable) return false;
    return this.socket.write(Buffer.isBuffer(m) ? m : serializeBackend(m));
  }

  /** Sends an ErrorResponse (severity ERROR) for `err`; the connection stays usable. */
  sendError(err: unknown, extra: Partial<ErrorFields> = {}): void {
    this.send({ kind: "ErrorResponse", fields: { ...errorFieldsFor(err), ...extra } });
  }

  /** Sends a complete text result set: RowDescription, DataRows, CommandComplete. */
  sendRows(columns: { name: string; typeOid?: number }[], rows: (string | null)[][], tag: string): void {
    const fields: FieldDescription[] = columns.map((c) => ({
      name: c.name,
      tableOid: 0,
      columnAttr: 0,
      typeOid: c.typeOid ?? TEXT_OID,
      typeSize: c.typeOid === INT4_OID ? 4 : c.typeOid === INT8_OID ? 8 : -1,
      typeModifier: -1,
      format: 0,
    }));
    this.send({ kind: "RowDescription", fields });
    for (const r of rows) {
      this.send({ kind: "DataRow", values: r.map((v) => (v === null ? null : Buffer.from(v, "utf8"))) });
    }
    this.send({ kind: "CommandComplete", tag });
  }

  readyForQuery(): void {
    this.send({ kind: "ReadyForQuery", status: "I" });
  }

  /** Closes the connection (after flushing what was sent). */
  close(): void {
    this.socket.end();
  }

  private async expectMessage(during: string): Promise<FrontendMessage> {
    const m = await this.read();
    if (m === null) throw new StrataError("io_error", `Client closed the connection during ${during}`);
    return m;
  }

  private async handshake(opts: AcceptOptions): Promise<void> {
    let startup: Extract<FrontendMessage, { kind: "StartupMessage" }>;
    // A client may try SSL, then GSS, then plain: a few refusals at most, then a StartupMessage.
    for (let attempt = 0; ; attempt++) {
      const m = await this.expectMessage("startup");
      if (m.kind === "StartupMessage") {
        startup = m;
        break;
      }
      if ((m.kind === "SSLRequest" || m.kind === "GSSENCRequest") && attempt < 2) {
        this.socket.write(Buffer.from("N"));
        continue;
      }
      if (m.kind === "CancelRequest") {
        this.socket.end();
        throw new StrataError("unsupported", "CancelRequest received: query cancellation is not supported");
      }
      throw new StrataError("protocol_violation", `Unexpected ${m.kind} during startup`);
    }
    if (startup.protocolVersion !== (3 << 16)) {
      // 3.x with x > 0: PostgreSQL would answer NegotiateProtocolVersion; we require exactly 3.0.
      throw new StrataError("unsupported", `Unsupported frontend protocol 3.${startup.protocolVersion & 0xffff}: strata speaks 3.0`);
    }
    const params = startup.parameters;
    const user = params.get("user");
    if (user === undefined || user === "") {
      throw new StrataError("invalid_argument", "No user name specified in startup packet");
    }
    const options = params.get("options");
    this.startup = {
      user,
      database: params.get("database") || user,
      replication: parseReplicationParameter(params.get("replication")),
      settings: options === undefined ? new Map() : parseStartupOptionSettings(splitStartupOptions(options)),
      parameters: params,
    };
    const auth = await opts.authenticate(this.startup);
    await this.authenticate(auth, opts);
    this.send({ kind: "AuthenticationOk" });
    for (const [name, value] of Object.entries(opts.serverParameters ?? {})) {
      this.send({ kind: "ParameterStatus", name, value });
    }
    this.send({ kind: "BackendKeyData", processId: this.processId, secretKey: this.secretKey });
    this.readyForQuery();
  }

  /** PostgreSQL's answer to a wrong password: FATAL 28P01 invalid_password. */
  private authFailed(): SqlStateError {
    return new SqlStateError("invalid_argument", "28P01", `password authentication failed for user "${this.startup.user}"`);
  }

  private async authenticate(auth: AuthMethod, opts: AcceptOptions): Promise<void> {
    if (auth.method === "trust") return;
    if (auth.method === "password") {
      this.send({ kind: "AuthenticationCleartextPassword" });
      const m = await this.expectMessage("authentication");
      if (m.kind !== "AuthResponse") throw new StrataError("protocol_violation", `Expected a password response, got ${m.kind}`);
      const given = decodePasswordMessage(m.data);
      if (given !== auth.password) throw this.authFailed();
      return;
    }
    this.send({ kind: "AuthenticationSASL", mechanisms: [SCRAM_SHA_256] });
    const verifier = auth.verifier ?? mockScramVerifier(this.startup.user, opts.mockSecret ?? randomBytes(32));
    const session = new ScramServerSession(verifier, { mock: auth.verifier === null });
    const first = await this.expectMessage("SASL authentication");
    if (first.kind !== "AuthResponse") throw new StrataError("protocol_violation", `Expected a SASL response, got ${first.kind}`);
    const init = decodeSASLInitialResponse(first.data);
    if (init.mechanism !== SCRAM_SHA_256) {
      throw new StrataError("protocol_violation", `Client selected SASL mechanism ${JSON.stringify(init.mechanism)}, which was not offered`);
    }
    if (init.data === null) throw new StrataError("protocol_violation", "SASLInitialResponse carries no client-first-message");
    this.send({ kind: "AuthenticationSASLContinue", data: session.handleClientFirst(init.data) });
    const final = await this.expectMessage("SASL authentication");
    if (final.kind !== "AuthResponse") throw new StrataError("protocol_violation", `Expected a SASL response, got ${final.kind}`);
    const result = session.handleClientFinal(final.data);
    if (!result.ok) throw this.authFailed();
    this.send({ kind: "AuthenticationSASLFinal", data: result.serverFinal });
  }
}
