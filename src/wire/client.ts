/**
 * A minimal libpq client: enough to pull WAL from a PostgreSQL primary (or
 * from another safekeeper) and to run simple queries.
 *
 * Scope: protocol 3.0 over plain TCP; trust, cleartext-password and
 * SCRAM-SHA-256 authentication; the simple query protocol with text results;
 * physical replication (START_REPLICATION in CopyBoth mode); COPY OUT
 * (`copyOut`: a command answered with CopyOutResponse and CopyData, e.g.
 * the pageserver's basebackup). No TLS, no extended query protocol, no
 * COPY IN. The socket is driven by the pure codec
 * (`parser.ts`, `messages.ts`, `replication.ts`, `scram.ts`); this module only
 * sequences it.
 *
 * Invariants and limits:
 * * At most MAX_QUEUED_MESSAGES parsed messages wait for the consumer; beyond
 *   that the socket is paused, so a slow consumer of a replication stream
 *   applies TCP back-pressure to the server instead of growing memory.
 * * Hot path (replication receive): the socket reads into one buffer per
 *   connection (net's `onread`), so a read costs no 'data' event, no
 *   Readable-stream bookkeeping and no next-tick callback (HANDOFF_READ_BYTES
 *   says when the bytes are copied out of it). Every message of a chunk
 *   is parsed synchronously right there (CopyData payloads are views into
 *   the chunk, see parser.ts) and a batch reader
 *   (`ReplicationStream.readBatch`) takes all of them with one promise
 *   resolution per chunk rather than one per message, which is what an
 *   async iterator costs. Push mode (`ReplicationStream.consume`) goes
 *   further: the consumer's handler runs inside the data callback itself,
 *   so the safekeeper's commit path (receive, write, fsync, reply) takes no
 *   promise and no event-loop turn. The per-message iterator stays for
 *   consumers that do not care. On the way back, a replication stream's
 *   status updates and feedback are written with one write(2) on the
 *   socket's descriptor when nothing is queued on it (`writeNow`), not
 *   through the stream machinery; whatever the kernel does not take goes
 *   through `socket.write`, so order and error reporting are unchanged.
 * * One operation at a time: a client is used by one task; a second
 *   concurrent operation is a bug and asserts.
 * * Every wait is bounded: connect + startup + authentication by
 *   `connectTimeoutMs`; every operation can be cancelled with an AbortSignal.
 *   Cancellation (and any protocol error) destroys the connection — libpq
 *   would send a CancelRequest, but for strata's uses (a WAL receiver that
 *   reconnects) closing is simpler and always correct.
 * * Errors: an ErrorResponse from the server is a `PgServerError` (code
 *   "io_error": the remote refused; its SQLSTATE is in `sqlstate`); malformed
 *   bytes are `protocol_violation`; a lost connection `io_error`; a timeout
 *   `timeout`; an abort `cancelled`. After any error but a PgServerError
 *   from a simple query, the client is closed.
 */

import { writeSync } from "node:fs";
import { connect as netConnect, type Socket } from "node:net";
import { StrataError, assert } from "../lib/errors.js";
import { formatLsn, parseLsn, type Lsn } from "../lib/lsn.js";
import {
  PROTOCOL_VERSION_3_0,
  passwordMessage,
  saslInitialResponse,
  saslResponse,
  serializeBackend,
  serializeFrontend,
  type BackendMessage,
  type ErrorFields,
  type FieldDescription,
} from "./messages.js";
import { BackendParser } from "./parser.js";
import {
  parseServerReplicationMessage,
  pgTimestampNowMicros,
  serializeReplicationCopyData,
  serializeStatusUpdateCopyData,
  type ClientReplicationMessage,
  type ServerReplicationMessage,
} from "./replication.js";
import { SCRAM_SHA_256, ScramClientSession } from "./scram.js";

/** Default bound on TCP connect + startup + authentication. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
/**
 * Parsed messages buffered ahead of the consumer before the socket is paused.
 * 64 XLogData messages of at most 128 KiB each bound the backlog to ~8 MiB.
 */
export const MAX_QUEUED_MESSAGES = 64;
/**
 * Size of the buffer each connection reads its socket into (libuv's
 * suggested size). A chunk this long may have left more bytes in the
 * kernel; a shorter one drained the socket at that moment — push consumers
 * (ReplicationStream.consume) use it to tell "nothing more is buffered" from
 * "more is coming now".
 */
export const SOCKET_READ_CHUNK_BYTES = 64 * 1024;
/**
 * A read at least this long hands the read buffer itself to the parser (at
 * most half of it is slack) instead of copying the bytes out: bulk streams
 * (WAL catch-up, basebackup) copy nothing, a commit's few kilobytes cost one
 * small copy and pin no 64 KiB buffer while they wait to be written.
 */
const HANDOFF_READ_BYTES = SOCKET_READ_CHUNK_BYTES / 2;
/** Message type of CopyData, the only message a read may hold to be parsed in place (see `parsesInPlace`). */
const COPY_DATA_TYPE = 0x64; // 'd'
/** Default bound on the total size of rows one simpleQuery may return: it is for small control queries. */
export const DEFAULT_MAX_RESULT_BYTES = 64 * 1024 * 1024;
/** How long close() waits for the server to close its side after Terminate. */
const CLOSE_TIMEOUT_MS = 2_000;

/** An ErrorResponse from the server. */
export class PgServerError extends StrataError {
  override name = "PgServerError";
  readonly fields: ErrorFields;
  constructor(fields: ErrorFields, context: string) {
    super("io_error", `${context}: server error ${fields.code}: ${fields.message}${fields.detail ? ` (${fields.detail})` : ""}`);
    this.fields = fields;
  }
  get sqlstate(): string {
    return this.fields.code;
  }
}

export interface ConnectOptions {
  host: string;
  port: number;
  user: string;
  /** Defaults to the user name, as libpq does. */
  database?: string;
  /** Needed for cleartext and SCRAM authentication. */
  password?: string;
  /** Opens a physical replication connection (`replication=true`). */
  replication?: boolean;
  applicationName?: string;
  /** The `options` startup parameter (e.g. `-c name=value`). */
  options?: string;
  /** Further startup parameters. */
  parameters?: Record<string, string>;
  connectTimeoutMs?: number;
  signal?: AbortSignal;
  maxMessageBytes?: number;
  /** Called for each NoticeResponse; notices are dropped when absent. */
  onNotice?: (fields: ErrorFields) => void;
}

export interface QueryResult {
  /** Empty for commands that return no rows. */
  fields: FieldDescription[];
  /** Text values (UTF-8), `null` for SQL NULL. */
  rows: (string | null)[][];
  /** CommandComplete tag, e.g. "SELECT 1", "IDENTIFY_SYSTEM". */
  commandTag: string;
}

export interface IdentifySystemResult {
  systemId: string;
  timeline: number;
  xlogPos: Lsn;
  dbName: string | null;
}

export interface StartReplicationOptions {
  slot?: string;
  startLsn: Lsn;
  timeline?: number;
  signal?: AbortSignal;
}

/** What the server said when it ended streaming on its own (end of a historic timeline). */
export interface StreamEnd {
  nextTimeline: number | null;
  nextTimelineStartLsn: Lsn | null;
}

type Waiter = { resolve: (m: BackendMessage) => void; reject: (e: Error) => void };
type BatchWaiter = { resolve: (ms: BackendMessage[]) => void; reject: (e: Error) => void };
/**
 * A push-mode consumer (ReplicationStream.consume): `messages` runs
 * synchronously inside the socket's data callback with everything the chunk
 * completed (`more`: the chunk filled the read buffer, so more bytes may be
 * waiting in the kernel); a throw from it fails the connection. `failed`
 * is told once when the connection fails.
 */
export interface PushConsumer {
  /** `transient`: the CopyData payloads are views into the read buffer, valid only during this call. */
  messages(ms: BackendMessage[], more: boolean, transient: boolean): void;
  failed(e: Error): void;
}

/** Quotes a replication-protocol identifier (slot name). */
function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

export class PgClient {
  /** ParameterStatus values reported by the server (server_version, ...). */
  readonly parameters = new Map<string, string>();
  processId = 0;
  secretKey = 0;

  private readonly parser: BackendParser;
  private readonly queue: BackendMessage[] = [];
  private waiter: Waiter | null = null;
  /** A batch read waiting: resolved once per socket chunk with everything that chunk completed. */
  private batchWaiter: BatchWaiter | null = null;
  /** Push mode: messages go straight to this consumer instead of the queue. */
  private pushConsumer: PushConsumer | null = null;
  /** Reading paused by a push consumer (its own back-pressure), independent of `paused`. */
  private pushPaused = false;
  /** The push consumer keeps no payload view past its call: reads of whole CopyData messages are parsed in place. */
  private pushTransient = false;
  /** Rejects the pending TCP connect, if any. */
  private connectWaiter: ((e: Error) => void) | null = null;
  private failure: Error | null = null;
  private busy = false;
  private paused = false;

  private constructor(
    private readonly socket: Socket,
    private readonly opts: ConnectOptions,
  ) {
    this.parser = new BackendParser({ maxMessageBytes: opts.maxMessageBytes });
    socket.on("error", (e) => this.fail(new StrataError("io_error", `Connection to ${this.addr} failed: ${e.message}`, { cause: e })));
    socket.on("close", () => this.fail(new StrataError("io_error", `Connection to ${this.addr} closed by the server`)));
  }

  private get addr(): string {
    return `${this.opts.host}:${this.opts.port}`;
  }

  /** Connects, authenticates and waits for the server to be ready for queries. */
  static async connect(opts: ConnectOptions): Promise<PgClient> {
    const timeoutMs = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const addr = `${opts.host}:${opts.port}`;
    opts.signal?.throwIfAborted();
    let readBuffer = Buffer.allocUnsafe(SOCKET_READ_CHUNK_BYTES);
    const socket = netConnect({
      host: opts.host,
      port: opts.port,
      onread: {
        // Asked for after every read: the same buffer, or a fresh one once the last was handed off.
        buffer: () => readBuffer,
        callback: (n: number): boolean => {
          // The parser keeps views into the chunks it is given: a big read hands the buffer
          // itself over (no copy, little slack); a small one is copied out and the buffer reused.
          let chunk: Buffer;
          let inPlace = false;
          if (n >= HANDOFF_READ_BYTES) {
            chunk = readBuffer.subarray(0, n);
            readBuffer = Buffer.allocUnsafe(SOCKET_READ_CHUNK_BYTES);
          } else if (client.parsesInPlace(readBuffer, n)) {
            // Nothing refers to these bytes once onData returns (see parsesInPlace): no copy.
            chunk = readBuffer.subarray(0, n);
            inPlace = true;
          } else {
            chunk = Buffer.allocUnsafe(n);
            readBuffer.copy(chunk, 0, 0, n);
          }
          client.onData(chunk, inPlace);
          return true;
        },
      },
    });
    socket.setNoDelay(true);
    const client = new PgClient(socket, opts);
    const timer = setTimeout(
      () => client.fail(new StrataError("timeout", `Connecting to ${addr} took longer than ${timeoutMs} ms`)),
      timeoutMs,
    );
    const onAbort = () => client.fail(new StrataError("cancelled", `Connecting to ${addr} was cancelled`));
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await new Promise<void>((resolve, reject) => {
        if (client.failure) return reject(client.failure);
        client.connectWaiter = reject;
        socket.once("connect", () => {
          client.connectWaiter = null;
          resolve();
        });
      });
      await client.startup();
      return client;
    } catch (e) {
      client.destroy();
      throw e;
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Whether the `n` bytes just read into `buf` may be parsed where they lie,
   * although `buf` is read into again afterwards: only for a push consumer
   * that keeps no payload view past its call (`consume`'s
   * transientPayloads), with no bytes of an earlier read waiting in the
   * parser, and when the bytes are whole CopyData messages and nothing else.
   * Then the parser consumes all of them (it keeps no view of a fully
   * parsed chunk), every message goes to the consumer during onData, and no
   * reference to `buf` survives it. Anything else — a message cut by the
   * read, another message type (a control message may be read later,
   * asynchronously), an impossible length — is copied, as before.
   */
  private parsesInPlace(buf: Buffer, n: number): boolean {
    if (!this.pushTransient || this.pushConsumer === null || this.failure !== null || this.parser.bufferedBytes !== 0) return false;
    let i = 0;
    while (i + 5 <= n) {
      if (buf[i] !== COPY_DATA_TYPE) return false;
      const length = buf.readInt32BE(i + 1);
      if (length < 4) return false;
      i += 1 + length;
    }
    return i === n;
  }

  /** `inPlace`: `chunk` lies in the read buffer, which the next read overwrites (parsesInPlace said so). */
  private onData(chunk: Buffer, inPlace = false): void {
    if (this.failure) return;
    try {
      this.parser.push(chunk);
      for (let m = this.parser.next(); m !== null; m = this.parser.next()) this.deliver(m);
    } catch (e) {
      this.fail(e instanceof Error ? e : new StrataError("internal", String(e)));
      return;
    }
    if (this.pushConsumer !== null) {
      if (this.queue.length === 0) return;
      try {
        this.pushConsumer.messages(this.queue.splice(0), chunk.length >= SOCKET_READ_CHUNK_BYTES, inPlace);
      } catch (e) {
        this.fail(e instanceof Error ? e : new StrataError("internal", String(e)));
      }
      return;
    }
    if (this.batchWaiter !== null && this.queue.length > 0) {
      const w = this.batchWaiter;
      this.batchWaiter = null;
      w.resolve(this.drainQueue());
      return;
    }
    if (this.queue.length >= MAX_QUEUED_MESSAGES && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
  }

  private deliver(m: BackendMessage): void {
    // Asynchronous messages the server may send at any time are handled here.
    if (m.kind === "ParameterStatus") {
      this.parameters.set(m.name, m.value);
      return;
    }
    if (m.kind === "NoticeResponse") {
      this.opts.onNotice?.(m.fields);
      return;
    }
    if (m.kind === "NotificationResponse") return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve(m);
    } else {
      this.queue.push(m);
    }
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.socket.destroy();
    const w = this.waiter;
    this.waiter = null;
    w?.reject(e);
    const bw = this.batchWaiter;
    this.batchWaiter = null;
    bw?.reject(e);
    const cw = this.connectWaiter;
    this.connectWaiter = null;
    cw?.(e);
    const pc = this.pushConsumer;
    this.pushConsumer = null;
    pc?.failed(e);
  }

  private destroy(): void {
    this.fail(new StrataError("cancelled", `Connection to ${this.addr} was closed by the client`));
  }

  /** True once the connection has failed or been closed. */
  get closed(): boolean {
    return this.failure !== null;
  }

  /** The next message from the server (never ParameterStatus / notices). */
  private read(): Promise<BackendMessage> {
    const m = this.queue.shift();
    if (m !== undefined) {
      if (this.paused && this.queue.length < MAX_QUEUED_MESSAGES / 2) {
        this.paused = false;
        if (!this.pushPaused) this.socket.resume();
      }
      return Promise.resolve(m);
    }
    if (this.failure) return Promise.reject(this.failure);
    assert(this.waiter === null && this.batchWaiter === null, "PgClient: two concurrent reads");
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  /** Takes every queued message (resuming a paused socket). */
  private drainQueue(): BackendMessage[] {
    const out = this.queue.splice(0);
    if (this.paused) {
      this.paused = false;
      if (!this.pushPaused) this.socket.resume();
    }
    return out;
  }

  /**
   * All messages received and not yet read (at least one; waits for the
   * next socket chunk when none is queued), in order.
   */
  private readBatch(): Promise<BackendMessage[]> {
    if (this.queue.length > 0) return Promise.resolve(this.drainQueue());
    if (this.failure) return Promise.reject(this.failure);
    assert(this.waiter === null && this.batchWaiter === null, "PgClient: two concurrent reads");
    return new Promise((resolve, reject) => {
      this.batchWaiter = { resolve, reject };
    });
  }

  private write(data: Buffer): void {
    if (this.failure) throw this.failure;
    this.socket.write(data);
  }

  /**
   * `write` for small messages on the hot path (a replication stream's status
   * updates): when nothing is queued on the socket, the bytes go out with one
   * write(2) right here instead of through the stream machinery (Writable,
   * write request, completion callback on the next tick), which costs more
   * CPU than the system call on a safekeeper's commit path. Whatever that
   * write does not take — the kernel's buffer is full (EAGAIN), a partial
   * write, any error — goes to `socket.write`, which queues it behind
   * nothing and reports errors as usual, so the bytes and their order are
   * the same either way.
   */
  private writeNow(data: Buffer): void {
    if (this.failure) throw this.failure;
    const s = this.socket;
    const fd = (s as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
    if (typeof fd === "number" && fd >= 0 && s.writableLength === 0 && s.writableCorked === 0 && !s.connecting && !s.destroyed) {
      let n = 0;
      try {
        n = writeSync(fd, data, 0, data.length);
      } catch {
        n = 0; // EAGAIN, or an error the stream is about to report too
      }
      if (n >= data.length) return;
      if (n > 0) data = data.subarray(n);
    }
    s.write(data);
  }

  private unexpected(m: BackendMessage, during: string): StrataError {
    const e = new StrataError("protocol_violation", `Unexpected ${m.kind} from ${this.addr} during ${during}`);
    this.fail(e);
    return e;
  }

  private async startup(): Promise<void> {
    const o = this.opts;
    const params = new Map<string, string>([
      ["user", o.user],
      ["database", o.database ?? o.user],
      ["client_encoding", "UTF8"],
    ]);
    if (o.applicationName !== undefined) params.set("application_name", o.applicationName);
    if (o.replication) params.set("replication", "true");
    if (o.options !== undefined) params.set("options", o.options);
    for (const [k, v] of Object.entries(o.parameters ?? {})) params.set(k, v);
    this.write(serializeFrontend({ kind: "StartupMessage", protocolVersion: PROTOCOL_VERSION_3_0, parameters: params }));

    let scram: ScramClientSession | null = null;
    const needPassword = (method: string): string => {
      if (o.password === undefined) {
        const e = new StrataError("invalid_argument", `Server ${this.addr} requires ${method} authentication but no password was given`);
        this.fail(e);
        throw e;
      }
      return o.password;
    };
    while (true) {
      const m = await this.read();
      switch (m.kind) {
        case "AuthenticationOk":
          break;
        case "AuthenticationCleartextPassword":
          this.write(passwordMessage(needPassword("password")));
          break;
        case "AuthenticationSASL": {
          if (!m.mechanisms.includes(SCRAM_SHA_256)) {
            const e = new StrataError("unsupported", `Server ${this.addr} offers SASL mechanisms ${m.mechanisms.join(", ")}; strata supports ${SCRAM_SHA_256}`);
            this.fail(e);
            throw e;
          }
          scram = new ScramClientSession(needPassword("SCRAM-SHA-256"));
          this.write(saslInitialResponse(SCRAM_SHA_256, scram.clientFirst()));
          break;
        }
        case "AuthenticationSASLContinue":
          if (scram === null) throw this.unexpected(m, "authentication");
          this.write(saslResponse(scram.handleServerFirst(m.data)));
          break;
        case "AuthenticationSASLFinal":
          if (scram === null) throw this.unexpected(m, "authentication");
          try {
            scram.verifyServerFinal(m.data);
          } catch (e) {
            this.fail(e as Error);
            throw e;
          }
          break;
        case "AuthenticationMD5Password":
        case "AuthenticationUnsupported": {
          const e = new StrataError("unsupported", `Server ${this.addr} requests ${m.kind === "AuthenticationMD5Password" ? "MD5" : `method ${m.method}`} authentication; strata supports trust, password and SCRAM-SHA-256`);
          this.fail(e);
          throw e;
        }
        case "BackendKeyData":
          this.processId = m.processId;
          this.secretKey = m.secretKey;
          break;
        case "NegotiateProtocolVersion":
          break; // we asked for 3.0 without protocol options; nothing to downgrade
        case "ReadyForQuery":
          return;
        case "ErrorResponse": {
          const e = new PgServerError(m.fields, `Connecting to ${this.addr} as ${o.user}`);
          this.fail(e);
          throw e;
        }
        default:
          throw this.unexpected(m, "startup");
      }
    }
  }

  /** Runs `fn` as the client's single operation, destroying the connection if `signal` aborts. */
  private async exclusive<T>(signal: AbortSignal | undefined, what: string, fn: () => Promise<T>): Promise<T> {
    assert(!this.busy, `PgClient: ${what} while another operation is running`);
    if (this.failure) throw this.failure;
    signal?.throwIfAborted();
    this.busy = true;
    const onAbort = () => this.fail(new StrataError("cancelled", `${what} on ${this.addr} was cancelled`));
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      return await fn();
    } finally {
      signal?.removeEventListener("abort", onAbort);
      this.busy = false;
    }
  }

  /**
   * Runs `sql` with the simple query protocol and returns one result per
   * statement. A server error is thrown as PgServerError after the server is
   * ready again, so the connection stays usable.
   */
  simpleQuery(sql: string, opts: { signal?: AbortSignal; maxResultBytes?: number } = {}): Promise<QueryResult[]> {
    return this.exclusive(opts.signal, "query", async () => {
      const maxBytes = opts.maxResultBytes ?? DEFAULT_MAX_RESULT_BYTES;
      this.write(serializeFrontend({ kind: "Query", sql }));
      const results: QueryResult[] = [];
      let fields: FieldDescription[] = [];
      let rows: (string | null)[][] = [];
      let bytes = 0;
      let error: PgServerError | null = null;
      while (true) {
        let m: BackendMessage;
        try {
          m = await this.read();
        } catch (e) {
          // After a FATAL ErrorResponse the server closes the connection: report its error, not the close.
          throw error ?? e;
        }
        switch (m.kind) {
          case "RowDescription":
            fields = m.fields;
            break;
          case "DataRow":
            for (const v of m.values) bytes += v?.length ?? 0;
            if (bytes > maxBytes) {
              const e = new StrataError("invalid_argument", `Result of ${JSON.stringify(sql)} exceeds ${maxBytes} bytes`);
              this.fail(e);
              throw e;
            }
            rows.push(m.values.map((v) => (v === null ? null : v.toString("utf8"))));
            break;
          case "CommandComplete":
            results.push({ fields, rows, commandTag: m.tag });
            fields = [];
            rows = [];
            break;
          case "EmptyQueryResponse":
            break;
          case "ErrorResponse":
            error = new PgServerError(m.fields, `Query ${JSON.stringify(sql)}`);
            break;
          case "ReadyForQuery":
            if (error) throw error;
            return results;
          default:
            throw this.unexpected(m, "a simple query");
        }
      }
    });
  }

  /**
   * Runs `sql`, which the server must answer with CopyOutResponse, and
   * yields each CopyData payload as it arrives; returns the CommandComplete
   * tag. Back-pressure: payloads not yet consumed pause the socket beyond
   * MAX_QUEUED_MESSAGES, so a slow consumer slows the server down. An
   * ErrorResponse (before or during the copy) is thrown as PgServerError
   * once the server is ready again (the connection stays usable). Ending
   * the iteration early (break, an exception in the consumer) or `signal`
   * closes the connection: the server is still sending.
   */
  async *copyOut(sql: string, opts: { signal?: AbortSignal } = {}): AsyncGenerator<Buffer, { commandTag: string }, undefined> {
    assert(!this.busy, "PgClient: copyOut while another operation is running");
    if (this.failure) throw this.failure;
    opts.signal?.throwIfAborted();
    this.busy = true;
    const onAbort = () => this.fail(new StrataError("cancelled", `COPY OUT ${JSON.stringify(sql)} on ${this.addr} was cancelled`));
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    let settled = false;
    const serverError = async (fields: ErrorFields): Promise<PgServerError> => {
      const e = new PgServerError(fields, `Query ${JSON.stringify(sql)}`);
      try {
        await this.readUntilReady();
        settled = true;
      } catch {
        /* FATAL: the server closed the connection; its error is the one to report */
      }
      return e;
    };
    try {
      this.write(serializeFrontend({ kind: "Query", sql }));
      for (;;) {
        const m = await this.read();
        if (m.kind === "CopyOutResponse") break;
        if (m.kind === "ErrorResponse") throw await serverError(m.fields);
        throw this.unexpected(m, "a COPY OUT command (before CopyOutResponse)");
      }
      for (;;) {
        const m = await this.read();
        if (m.kind === "CopyData") {
          yield m.data;
          continue;
        }
        if (m.kind === "CopyDone") break;
        if (m.kind === "ErrorResponse") throw await serverError(m.fields);
        throw this.unexpected(m, "COPY OUT");
      }
      let commandTag = "";
      let error: PgServerError | null = null;
      for (;;) {
        const m = await this.read();
        if (m.kind === "CommandComplete") commandTag = m.tag;
        else if (m.kind === "ErrorResponse") error = new PgServerError(m.fields, `Query ${JSON.stringify(sql)}`);
        else if (m.kind === "ReadyForQuery") break;
        else throw this.unexpected(m, "the end of COPY OUT");
      }
      settled = true;
      if (error) throw error;
      return { commandTag };
    } finally {
      opts.signal?.removeEventListener("abort", onAbort);
      this.busy = false;
      if (!settled) this.fail(new StrataError("cancelled", `COPY OUT ${JSON.stringify(sql)} on ${this.addr} ended before the server finished; connection closed`));
    }
  }

  /** IDENTIFY_SYSTEM on a replication connection. */
  async identifySystem(opts: { signal?: AbortSignal } = {}): Promise<IdentifySystemResult> {
    const [r] = await this.simpleQuery("IDENTIFY_SYSTEM", opts);
    const row = r?.rows[0];
    if (r === undefined || row === undefined || row.length < 4) {
      throw new StrataError("protocol_violation", `IDENTIFY_SYSTEM on ${this.addr} returned no 4-column row`);
    }
    const [systemId, timeline, xlogPos, dbName] = row;
    if (systemId == null || timeline == null || xlogPos == null || !/^[0-9]+$/.test(timeline)) {
      throw new StrataError("protocol_violation", `IDENTIFY_SYSTEM on ${this.addr} returned an invalid row ${JSON.stringify(row)}`);
    }
    let pos: Lsn;
    try {
      pos = parseLsn(xlogPos);
    } catch (e) {
      throw new StrataError("protocol_violation", `IDENTIFY_SYSTEM on ${this.addr} returned an invalid xlogpos`, { cause: e });
    }
    return { systemId, timeline: Number(timeline), xlogPos: pos, dbName: dbName ?? null };
  }

  /**
   * Sends START_REPLICATION and, once the server answers with
   * CopyBothResponse, returns the stream. The client is dedicated to the
   * stream until it ends (`stop()` or the server ending it).
   */
  async startReplication(opts: StartReplicationOptions): Promise<ReplicationStream> {
    assert(!this.busy, "PgClient: startReplication while another operation is running");
    if (this.failure) throw this.failure;
    opts.signal?.throwIfAborted();
    let cmd = "START_REPLICATION ";
    if (opts.slot !== undefined) cmd += `SLOT ${quoteIdent(opts.slot)} `;
    cmd += `PHYSICAL ${formatLsn(opts.startLsn)}`;
    if (opts.timeline !== undefined) cmd += ` TIMELINE ${opts.timeline}`;
    this.busy = true;
    const onAbort = () => this.fail(new StrataError("cancelled", `Replication from ${this.addr} was cancelled`));
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    const release = () => {
      opts.signal?.removeEventListener("abort", onAbort);
      this.busy = false;
    };
    try {
      this.write(serializeFrontend({ kind: "Query", sql: cmd }));
      const m = await this.read();
      if (m.kind === "CopyBothResponse") return new ReplicationStream(this, release);
      if (m.kind === "ErrorResponse") {
        const e = new PgServerError(m.fields, cmd);
        await this.readUntilReady();
        throw e;
      }
      throw this.unexpected(m, "START_REPLICATION");
    } catch (e) {
      release();
      throw e;
    }
  }

  private async readUntilReady(): Promise<void> {
    while ((await this.read()).kind !== "ReadyForQuery") {
      /* skip */
    }
  }

  /** @internal used by ReplicationStream */
  _read(): Promise<BackendMessage> {
    return this.read();
  }
  /** @internal used by ReplicationStream */
  _readBatch(): Promise<BackendMessage[]> {
    return this.readBatch();
  }
  /**
   * @internal Switches push mode on (messages queued so far are left in the
   * queue for the caller to take with `_drain`) or off. Fails at once when
   * the connection already failed.
   */
  _push(c: PushConsumer | null, transientPayloads = false): void {
    if (c !== null) {
      assert(this.waiter === null && this.batchWaiter === null && this.pushConsumer === null, "PgClient: push mode while another read waits");
      if (this.failure) {
        c.failed(this.failure);
        return;
      }
    }
    this.pushConsumer = c;
    this.pushTransient = c !== null && transientPayloads;
    if (c === null && this.pushPaused) this._pauseReading(false);
  }
  /** @internal Takes every queued message. */
  _drain(): BackendMessage[] {
    return this.drainQueue();
  }
  /** @internal A push consumer's back-pressure: stop (or resume) reading the socket. */
  _pauseReading(pause: boolean): void {
    if (pause === this.pushPaused || this.failure) return;
    this.pushPaused = pause;
    if (pause) this.socket.pause();
    else if (!this.paused) this.socket.resume();
  }
  /** @internal Puts messages taken by `_readBatch` but not consumed back at the front of the queue. */
  _unread(ms: readonly BackendMessage[]): void {
    this.queue.unshift(...ms);
  }
  /** @internal Fails the connection with `e` (a consumer's own error). */
  _fail(e: Error): void {
    this.fail(e);
  }
  /** @internal */
  _write(data: Buffer): void {
    this.write(data);
  }
  /** @internal */
  _writeNow(data: Buffer): void {
    this.writeNow(data);
  }
  /**
   * @internal Hands the connection to another reader (ReplicationStream.detach):
   * stops reading and returns the socket with every byte received and not
   * yet consumed, framed as the server sent it. From then on this client
   * never touches the socket: it counts as closed and `close()` does nothing.
   */
  _detach(): { socket: Socket; pending: Buffer } {
    assert(this.waiter === null && this.batchWaiter === null && this.pushConsumer === null, "PgClient: detach while a read waits");
    if (this.failure) throw this.failure;
    this.socket.pause();
    const parts = this.queue.splice(0).map((m) => serializeBackend(m));
    parts.push(Buffer.from(this.parser.takeBuffered()));
    this.failure = new StrataError("cancelled", `Connection to ${this.addr} was handed to another process`);
    this.socket.removeAllListeners("error");
    this.socket.removeAllListeners("close");
    this.socket.on("error", () => undefined);
    return { socket: this.socket, pending: Buffer.concat(parts) };
  }
  /** @internal */
  _unexpected(m: BackendMessage, during: string): StrataError {
    return this.unexpected(m, during);
  }
  /** @internal */
  get _addr(): string {
    return this.addr;
  }

  /** Sends Terminate and closes the connection; waits at most CLOSE_TIMEOUT_MS. */
  async close(): Promise<void> {
    if (this.failure) return;
    const closed = new Promise<void>((resolve) => this.socket.once("close", () => resolve()));
    this.socket.end(serializeFrontend({ kind: "Terminate" }));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_TIMEOUT_MS)))]);
    clearTimeout(timer);
    this.destroy();
  }
}

/**
 * A physical replication stream in CopyBoth mode. Iterate it (or call
 * `readBatch()` in a loop, on hot paths) to receive XLogData and keepalives;
 * answer keepalives with `replyRequested` promptly (the server disconnects
 * after wal_sender_timeout without replies). The iteration ends when the
 * server ends the stream (`end` then says why); `stop()` ends it from our
 * side and returns the connection to query mode.
 */
export class ReplicationStream implements AsyncIterable<ServerReplicationMessage> {
  /** Set when the server ended streaming (end of a historic timeline). */
  end: StreamEnd | null = null;
  private finished = false;
  private iterating = false;
  private batchReading = false;

  constructor(
    private readonly client: PgClient,
    private readonly release: () => void,
  ) {}

  /** Sends a client replication message (status update, hot standby or pageserver feedback). */
  send(m: ClientReplicationMessage): void {
    if (this.finished) throw new StrataError("invalid_argument", "Cannot send on a finished replication stream");
    this.client._writeNow(serializeReplicationCopyData(m));
  }

  /** Sends a standby status update stamped with the current time. */
  sendStatusUpdate(u: { writeLsn: Lsn; flushLsn: Lsn; applyLsn: Lsn; replyRequested?: boolean }): void {
    this.sendStatus(u.writeLsn, u.flushLsn, u.applyLsn, u.replyRequested ?? false);
  }

  /** `sendStatusUpdate` without the argument object (the safekeeper's commit path). */
  sendStatus(writeLsn: Lsn, flushLsn: Lsn, applyLsn: Lsn, replyRequested = false): void {
    if (this.finished) throw new StrataError("invalid_argument", "Cannot send on a finished replication stream");
    this.client._writeNow(serializeStatusUpdateCopyData(writeLsn, flushLsn, applyLsn, pgTimestampNowMicros(), replyRequested));
  }

  /** Decodes one CopyData payload; a malformed one closes the connection. */
  private parsePayload(m: BackendMessage & { kind: "CopyData" }): ServerReplicationMessage {
    try {
      return parseServerReplicationMessage(m.data);
    } catch (e) {
      this.client._unexpected(m, "replication (malformed payload)");
      throw e;
    }
  }

  /** Decodes the CopyData messages at the head of `raw` into `out`; returns how many (the index of the first control message). */
  private parseLeading(raw: readonly BackendMessage[], out: ServerReplicationMessage[]): number {
    let i = 0;
    for (; i < raw.length; i++) {
      const m = raw[i]!;
      if (m.kind !== "CopyData") break;
      out.push(this.parsePayload(m));
    }
    return i;
  }

  /**
   * Handles a message other than CopyData during streaming: the server's
   * CopyDone ends the stream (returns), an ErrorResponse or anything else throws.
   */
  private async endOfCopy(m: BackendMessage): Promise<void> {
    if (m.kind === "CopyDone") {
      // The server ended streaming: acknowledge, then read the optional next-timeline row.
      this.client._write(serializeFrontend({ kind: "CopyDone" }));
      await this.finish();
      return;
    }
    if (m.kind === "ErrorResponse") throw await this.failed(m.fields, `Replication from ${this.client._addr}`);
    throw this.client._unexpected(m, "replication");
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ServerReplicationMessage> {
    assert(!this.iterating && !this.batchReading, "ReplicationStream iterated twice");
    this.iterating = true;
    while (!this.finished) {
      const m = await this.client._read();
      if (m.kind === "CopyData") {
        yield this.parsePayload(m);
      } else {
        await this.endOfCopy(m);
        return;
      }
    }
  }

  /**
   * The batch alternative to iterating (do not mix the two): every message
   * received and not yet read, in order — at least one; it waits for the next
   * socket chunk when none is queued — or `null` once the server has ended
   * the stream (`end` then says why). One await per socket chunk instead of
   * one per message. The XLogData payloads are views into the socket's
   * buffers: valid until the consumer drops them, never modified by us.
   */
  async readBatch(): Promise<ServerReplicationMessage[] | null> {
    assert(!this.iterating, "ReplicationStream.readBatch while iterating");
    this.batchReading = true;
    while (!this.finished) {
      const raw = await this.client._readBatch();
      const out: ServerReplicationMessage[] = [];
      const i = this.parseLeading(raw, out);
      if (i === raw.length) return out;
      // A control message: hand back what precedes it first; it is read on the next call.
      if (out.length > 0) {
        this.client._unread(raw.slice(i));
        return out;
      }
      this.client._unread(raw.slice(1));
      await this.endOfCopy(raw[0]!);
    }
    return null;
  }

  /**
   * Push mode, the hot-path alternative to `readBatch` (do not mix the two):
   * `handler` runs synchronously inside the socket's data callback with the
   * replication messages each chunk completed, so a consumer can act on them
   * (write, fsync, reply) without a promise or an event-loop turn in
   * between. `more` is true when the chunk filled the read buffer: more
   * bytes may be waiting in the kernel and arrive in this same event-loop
   * phase. XLogData payloads are views into the socket's buffers, as with
   * `readBatch`. Messages received before the call are handed over at once,
   * synchronously. Resolves when the server ends the stream (`end` says
   * why); rejects when the connection fails — including when `handler`
   * throws: the connection is closed and the promise rejects with that error.
   * `pause()` / `resume()` stop and restart reading (back-pressure).
   *
   * `transientPayloads`: the handler promises to keep no XLogData payload
   * view of a delivery marked `transient` after it returns (it copies what
   * it keeps). A socket read of whole CopyData messages is then parsed in
   * the connection's read buffer itself, which the next read overwrites,
   * instead of being copied out first — the common case of a safekeeper's
   * commit stream (one small XLogData per read) — and delivered with
   * `transient` true. Every other delivery (and every delivery without the
   * option) has `transient` false: its payload views stay valid as long as
   * they are held.
   */
  consume(handler: (ms: ServerReplicationMessage[], more: boolean, transient: boolean) => void, opts: { transientPayloads?: boolean } = {}): Promise<void> {
    assert(!this.iterating && !this.batchReading, "ReplicationStream consumed twice");
    this.batchReading = true;
    return new Promise<void>((resolve, reject) => {
      /** A control message (CopyDone, ErrorResponse) arrived: leave push mode and end through readBatch's handling. */
      const finishAsync = () => {
        void (async () => {
          for (let b = await this.readBatch(); b !== null; b = await this.readBatch()) handler(b, false, false);
        })().then(resolve, reject);
      };
      const onRaw = (raw: BackendMessage[], more: boolean, transient: boolean): void => {
        const out: ServerReplicationMessage[] = [];
        const i = this.parseLeading(raw, out);
        if (i === raw.length) {
          if (out.length > 0) handler(out, more, transient);
          return;
        }
        this.client._push(null);
        this.client._unread(raw.slice(i));
        try {
          if (out.length > 0) handler(out, false, transient);
        } catch (e) {
          reject(e as Error);
          throw e; // the client's data callback fails the connection with it
        }
        finishAsync();
      };
      const initial = this.client._drain();
      this.client._push({ messages: onRaw, failed: reject }, opts.transientPayloads ?? false);
      if (initial.length === 0 || this.client.closed) return;
      try {
        onRaw(initial, false, false);
      } catch (e) {
        const err = e instanceof Error ? e : new StrataError("internal", String(e));
        reject(err);
        this.client._fail(err);
      }
    });
  }

  /**
   * Hands the stream to another process (the safekeeper's native WAL
   * receiver): before any read of the stream, stops reading the socket and
   * returns it — pass it on as a child's stdio and destroy it here — with
   * the bytes received but not yet consumed, framed as the server sent them
   * (the new reader consumes those first). The client is closed for us
   * afterwards; the connection lives on in the other process.
   */
  detach(): { socket: Socket; pending: Buffer } {
    assert(!this.iterating && !this.batchReading && !this.finished, "ReplicationStream.detach after reading");
    const d = this.client._detach();
    this.finished = true;
    this.release();
    return d;
  }

  /** Push mode: stop reading the socket (TCP back-pressure on the server) until `resume()`. */
  pause(): void {
    this.client._pauseReading(true);
  }

  /** Push mode: read the socket again after `pause()`. */
  resume(): void {
    this.client._pauseReading(false);
  }

  /**
   * An ErrorResponse ended the stream. After an ERROR the server leaves copy
   * mode and sends ReadyForQuery (e.g. a start position ahead of its flush
   * position); read up to it so the connection is usable again. After FATAL
   * the server closes the connection and the read fails instead.
   */
  private async failed(fields: ErrorFields, context: string): Promise<Error> {
    const err = new PgServerError(fields, context);
    try {
      while (true) {
        const m = await this.client._read();
        if (m.kind === "ReadyForQuery") break;
      }
    } catch {
      /* connection gone (FATAL): the server error is the one to report */
    } finally {
      this.finished = true;
      this.release();
    }
    return err;
  }

  /** Reads the end-of-stream results up to ReadyForQuery. */
  private async finish(): Promise<void> {
    let nextTimeline: number | null = null;
    let nextTimelineStartLsn: Lsn | null = null;
    try {
      while (true) {
        const m = await this.client._read();
        if (m.kind === "DataRow") {
          const [tli, pos] = m.values;
          if (tli) nextTimeline = Number(tli.toString("utf8"));
          if (pos) nextTimelineStartLsn = parseLsn(pos.toString("utf8"));
        } else if (m.kind === "ErrorResponse") {
          throw new PgServerError(m.fields, `Ending replication from ${this.client._addr}`);
        } else if (m.kind === "ReadyForQuery") {
          break;
        } else if (m.kind !== "RowDescription" && m.kind !== "CommandComplete" && m.kind !== "CopyData") {
          throw this.client._unexpected(m, "the end of replication");
        }
      }
    } finally {
      this.finished = true;
      this.release();
    }
    this.end = { nextTimeline, nextTimelineStartLsn };
  }

  /**
   * Ends streaming from our side: sends CopyDone, discards WAL still in
   * flight until the server's CopyDone, and waits for ReadyForQuery. Must
   * not be called while an iteration is awaiting a message; break out of
   * the `for await` loop first.
   */
  async stop(): Promise<void> {
    if (this.finished) return;
    this.client._write(serializeFrontend({ kind: "CopyDone" }));
    while (true) {
      const m = await this.client._read();
      if (m.kind === "CopyDone") break;
      if (m.kind === "ErrorResponse") throw await this.failed(m.fields, `Stopping replication from ${this.client._addr}`);
      if (m.kind !== "CopyData") throw this.client._unexpected(m, "stopping replication");
    }
    await this.finish();
  }
}
