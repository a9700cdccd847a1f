/**
 * WAL acceptor — pulls WAL from the timeline's compute into the safekeeper.
 *
 * With an unmodified PostgreSQL the compute does not push WAL: the
 * safekeeper connects to it as a physical-replication client named
 * `sk_<id>` (the compute lists the safekeepers in synchronous_standby_names,
 * so a COMMIT returns only once a quorum of them reported the commit record
 * flushed). One acceptor task runs per timeline with a registered compute:
 *
 *   connect (replication=true, application_name=sk_<id>)
 *   IDENTIFY_SYSTEM            -> the system id must be the timeline's
 *   READ_REPLICATION_SLOT sk_<id>; if missing, a plain SQL connection runs
 *       pg_create_physical_replication_slot('sk_<id>', true)
 *   Timeline.beginComputeTerm  -> where WAL of the compute's term starts here
 *   START_REPLICATION SLOT sk_<id> PHYSICAL <write LSN> TIMELINE 1
 *   loop: XLogData -> append; fsync in batches; status update after each fsync
 *
 * Group commit. The stream is consumed in push mode
 * (ReplicationStream.consume): the handler runs inside the socket's data
 * callback with every message the chunk completed (zero-copy payload views;
 * a read of whole messages is parsed in the connection's read buffer
 * itself — consume's transientPayloads — so payloads that have to wait for
 * the writer are copied before the handler returns).
 * In the common case — the writer idle, the chunk drained the socket (it did
 * not fill the read buffer), nothing else holds the timeline, the batch stays
 * inside the open segment — the handler writes, fdatasyncs and sends the
 * status update right there (Timeline.appendAndFlushFromComputeNow): no
 * promise, no event-loop turn, as pg_receivewal's loop does it. Otherwise the
 * payloads wait in a pending list for the async writer, which first yields
 * once to the event loop so every chunk readable in this poll phase joins
 * the batch ("flush when nothing more is buffered"), then takes everything
 * pending (at most MAX_WRITE_BATCH_BYTES), writes it, fsyncs once and
 * reports (Timeline.appendAndFlushFromCompute: one critical section per
 * batch). Only one of the two writes at a time, so WAL lands in order.
 * Several messages are copied into one batch buffer allocated once per
 * connection and reused — WalStorage keeps no reference to what it wrote —
 * so the steady state allocates nothing per batch. While one fsync runs, WAL
 * of other commits accumulates and is made durable by the next, so under
 * load the number of fsyncs per second is bounded by fsync latency, not by
 * commits; an idle compute's single commit is fsynced as soon as it arrives.
 *
 * Invariants:
 * * The flush LSN we report is WalStorage's, which advances only after an
 *   fsync covering it: unsynced WAL is never reported flushed. write = what
 *   WalStorage holds, apply = flush (nothing is applied on a safekeeper, so
 *   `synchronous_commit = remote_apply` behaves like `on`).
 * * Fencing: WAL is appended only under the compute's term while it is the
 *   timeline's term (Timeline.appendAndFlushFromCompute); a term bump aborts the
 *   stream at once and a superseded registration's acceptor ends for good.
 *   A registration with a lower term never gets here (HTTP 409).
 * * XLogData must be contiguous from the requested start; anything else is a
 *   protocol violation and the connection is dropped (and retried).
 * * Memory: at most MAX_PENDING_BYTES wait for the writer; past that the
 *   stream is paused (the socket stops reading) and TCP pushes back on the
 *   compute's walsender until the writer has taken enough.
 *
 * Failures: any error ends the connection; the acceptor reconnects with
 * exponential backoff (RECONNECT_MIN_MS .. RECONNECT_MAX_MS). The task is
 * cancelled through its AbortSignal (timeline shutdown, new registration).
 */
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import { formatLsn, lsn as toLsn, parseLsn, segmentNumber, segmentStart, type Lsn } from "../lib/lsn.js";
import { errorFields, silentLogger } from "../lib/logging.js";
import { sleep } from "../lib/tasks.js";
import { PgClient, PgServerError, type ConnectOptions, type ReplicationStream } from "../wire/client.js";
import { BackendParser } from "../wire/parser.js";
import type { ServerReplicationMessage } from "../wire/replication.js";
import { safekeeperSlotName } from "./config.js";
import { NativeWalReceiver, type ReceiverEnd, type ReceiverProgress } from "./native_receiver.js";
import type { ComputeRegistration, ExternalWalWriter, Timeline } from "./timeline.js";
import type { ExternalSegment } from "./wal_storage.js";

/** First reconnect delay; doubled after each failure up to RECONNECT_MAX_MS. */
export const RECONNECT_MIN_MS = 100;
/** Longest reconnect delay: a restarted compute is picked up within this. */
export const RECONNECT_MAX_MS = 5_000;
/** Largest single write + fsync: bounds how long one batch keeps a commit waiting. */
export const MAX_WRITE_BATCH_BYTES = 4 * 1024 * 1024;
/** WAL received but not yet written that the reader may hold before applying back-pressure. */
export const MAX_PENDING_BYTES = 16 * 1024 * 1024;
/**
 * Status updates are also sent at least this often when idle, like a
 * standby's wal_receiver_status_interval (10 s), well within the compute's
 * wal_sender_timeout (60 s).
 */
export const STATUS_INTERVAL_MS = 10_000;
/**
 * How often one long-lived timer checks whether STATUS_INTERVAL_MS passed
 * without a status update (cheaper than arming a timer per idle wait; the
 * longest gap is STATUS_INTERVAL_MS + this, still far below the timeout).
 */
const STATUS_CHECK_MS = 1_000;
/** Bound on connecting and on the control queries before streaming. */
export const CONNECT_TIMEOUT_MS = 10_000;
/** SQLSTATE duplicate_object: the slot was created concurrently. */
const SQLSTATE_DUPLICATE_OBJECT = "42710";

// ---------------------------------------------------------------------------
// Connection strings
// ---------------------------------------------------------------------------

export interface ConnInfo {
  host: string;
  port: number;
  user: string;
  password: string | undefined;
  dbname: string | undefined;
  /** Passed as the `options` startup parameter. */
  options: string | undefined;
}

/** Longest connection string parsed (registrations are checked against the same limit). */
const MAX_CONNINFO_CHARS = 4096;
const CONNINFO_KEYS = new Set(["host", "hostaddr", "port", "user", "password", "dbname", "options", "application_name", "connect_timeout", "sslmode"]);

/**
 * Parses a libpq connection string: `key=value ...` (values optionally
 * single-quoted, backslash escapes) or a `postgresql://user:pw@host:port/db?k=v`
 * URI. Only TCP is supported (host defaults to 127.0.0.1, port to 5432,
 * user to "postgres"); sslmode must be absent, disable, allow or prefer.
 */
export function parseConnString(text: string): ConnInfo {
  if (text.length > MAX_CONNINFO_CHARS) throw new StrataError("invalid_argument", `Connection string is ${text.length} characters, more than ${MAX_CONNINFO_CHARS}`);
  const kv = /^postgres(ql)?:\/\//.test(text) ? parseConnUri(text) : parseConnKeyValues(text);
  for (const k of kv.keys()) {
    if (!CONNINFO_KEYS.has(k)) throw new StrataError("invalid_argument", `Connection string: unsupported keyword ${JSON.stringify(k)}`);
  }
  const ssl = kv.get("sslmode");
  if (ssl !== undefined && !["disable", "allow", "prefer"].includes(ssl)) {
    throw new StrataError("unsupported", `Connection string: sslmode=${ssl} is not supported (strata connects without TLS)`);
  }
  const host = kv.get("hostaddr") ?? kv.get("host") ?? "127.0.0.1";
  if (host.startsWith("/")) throw new StrataError("unsupported", `Connection string: Unix socket host ${JSON.stringify(host)} is not supported; use a TCP address`);
  const portText = kv.get("port") ?? "5432";
  const port = /^[0-9]{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!(port >= 1 && port <= 65535)) throw new StrataError("invalid_argument", `Connection string: invalid port ${JSON.stringify(portText)}`);
  return { host, port, user: kv.get("user") ?? "postgres", password: kv.get("password"), dbname: kv.get("dbname"), options: kv.get("options") };
}

function parseConnKeyValues(text: string): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  const n = text.length;
  const skipSpace = () => {
    while (i < n && /\s/.test(text[i]!)) i++;
  };
  while (true) {
    skipSpace();
    if (i >= n) break;
    const keyStart = i;
    while (i < n && text[i] !== "=" && !/\s/.test(text[i]!)) i++;
    const key = text.slice(keyStart, i);
    skipSpace();
    if (text[i] !== "=" || key === "") throw new StrataError("invalid_argument", `Connection string: missing "=" after ${JSON.stringify(key)} at offset ${i}`);
    i++;
    skipSpace();
    let value = "";
    if (text[i] === "'") {
      i++;
      let closed = false;
      while (i < n) {
        const c = text[i]!;
        if (c === "\\" && i + 1 < n) {
          value += text[i + 1]!;
          i += 2;
        } else if (c === "'") {
          i++;
          closed = true;
          break;
        } else {
          value += c;
          i++;
        }
      }
      if (!closed) throw new StrataError("invalid_argument", `Connection string: unterminated quoted value for ${JSON.stringify(key)}`);
    } else {
      while (i < n && !/\s/.test(text[i]!)) {
        if (text[i] === "\\" && i + 1 < n) i++;
        value += text[i]!;
        i++;
      }
    }
    out.set(key, value);
  }
  return out;
}

function parseConnUri(text: string): Map<string, string> {
  let url: URL;
  try {
    url = new URL(text.replace(/^postgres(ql)?:/, "http:"));
  } catch (e) {
    throw new StrataError("invalid_argument", `Connection string: malformed URI`, { cause: e });
  }
  const out = new Map<string, string>();
  if (url.hostname !== "") out.set("host", url.hostname.replace(/^\[|\]$/g, ""));
  if (url.port !== "") out.set("port", url.port);
  if (url.username !== "") out.set("user", decodeURIComponent(url.username));
  if (url.password !== "") out.set("password", decodeURIComponent(url.password));
  const db = decodeURIComponent(url.pathname.replace(/^\//, ""));
  if (db !== "") out.set("dbname", db);
  for (const [k, v] of url.searchParams) out.set(k, v);
  return out;
}

// ---------------------------------------------------------------------------
// Talking to the compute
// ---------------------------------------------------------------------------

function connectOptions(ci: ConnInfo, replication: boolean, applicationName: string, signal: AbortSignal): ConnectOptions {
  return {
    host: ci.host,
    port: ci.port,
    user: ci.user,
    ...(ci.password !== undefined ? { password: ci.password } : {}),
    ...(ci.dbname !== undefined ? { database: ci.dbname } : replication ? {} : { database: "postgres" }),
    ...(ci.options !== undefined ? { options: ci.options } : {}),
    replication,
    applicationName,
    connectTimeoutMs: CONNECT_TIMEOUT_MS,
    signal,
  };
}

/** What a compute says about itself (used to create a timeline on first registration). */
export interface ComputeIdentity {
  systemId: bigint;
  /** server_version_num, e.g. 150018. */
  pgVersion: number;
  walSegSizeBytes: number;
  /** The slot's restart LSN: where this compute's WAL is kept from. */
  slotRestartLsn: Lsn;
  /** The compute's current WAL flush position. */
  xlogPos: Lsn;
}

/** Parses SHOW wal_segment_size output ("16MB", "1GB", "512kB"). */
export function parseWalSegmentSize(text: string): number {
  const m = /^([0-9]+)\s*(B|kB|MB|GB)$/.exec(text.trim());
  if (m === null) throw new StrataError("protocol_violation", `Cannot parse wal_segment_size ${JSON.stringify(text)}`);
  const mult = { B: 1, kB: 1024, MB: 1024 * 1024, GB: 1024 * 1024 * 1024 }[m[2] as "B" | "kB" | "MB" | "GB"];
  return Number(m[1]) * mult;
}

function parseLsnFrom(text: string | null | undefined, what: string): Lsn {
  if (text === null || text === undefined) throw new StrataError("protocol_violation", `${what} is NULL`);
  try {
    return parseLsn(text);
  } catch (e) {
    throw new StrataError("protocol_violation", `${what} ${JSON.stringify(text)} is not an LSN`, { cause: e });
  }
}

/**
 * The slot's restart LSN, creating the slot (reserving WAL at once) through
 * a plain SQL connection when it does not exist yet.
 */
async function ensureSlot(client: PgClient, ci: ConnInfo, slot: string, appName: string, signal: AbortSignal): Promise<Lsn> {
  const read = async (): Promise<Lsn | undefined> => {
    const [r] = await client.simpleQuery(`READ_REPLICATION_SLOT ${slot}`, { signal });
    const row = r?.rows[0];
    if (row === undefined || row[0] === null || row[0] === undefined) return undefined;
    return parseLsnFrom(row[1], `restart_lsn of slot ${slot}`);
  };
  const existing = await read();
  if (existing !== undefined) return existing;
  const sql = await PgClient.connect(connectOptions(ci, false, appName, signal));
  try {
    await sql.simpleQuery(`SELECT pg_create_physical_replication_slot('${slot}', true)`, { signal });
  } catch (e) {
    if (!(e instanceof PgServerError && e.sqlstate === SQLSTATE_DUPLICATE_OBJECT)) throw e;
  } finally {
    await sql.close();
  }
  const created = await read();
  if (created === undefined) throw new StrataError("not_found", `Replication slot ${slot} still does not exist after creating it`);
  return created;
}

/**
 * Connects to a compute as a replication client and reads its identity:
 * system id, version, segment size and (creating the slot if needed) the
 * restart LSN of slot `sk_<id>`. Used for the first registration of a timeline.
 */
export async function probeCompute(connstr: string, safekeeperId: number, signal: AbortSignal): Promise<ComputeIdentity> {
  const ci = parseConnString(connstr);
  const slot = safekeeperSlotName(safekeeperId);
  const client = await PgClient.connect(connectOptions(ci, true, slot, signal));
  try {
    const ident = await client.identifySystem({ signal });
    if (!/^[0-9]{1,20}$/.test(ident.systemId)) throw new StrataError("protocol_violation", `Compute reported system id ${JSON.stringify(ident.systemId)}`);
    const show = async (name: string): Promise<string> => {
      const [r] = await client.simpleQuery(`SHOW ${name}`, { signal });
      const v = r?.rows[0]?.[0];
      if (v === null || v === undefined) throw new StrataError("protocol_violation", `SHOW ${name} returned no value`);
      return v;
    };
    const walSegSizeBytes = parseWalSegmentSize(await show("wal_segment_size"));
    const versionText = await show("server_version_num");
    if (!/^[0-9]{5,6}$/.test(versionText)) throw new StrataError("protocol_violation", `Compute reported server_version_num ${JSON.stringify(versionText)}`);
    const pgVersion = Number(versionText);
    if (Math.floor(pgVersion / 10000) !== 15) throw new StrataError("unsupported", `Compute runs PostgreSQL ${versionText}; strata supports PostgreSQL 15`);
    const slotRestartLsn = await ensureSlot(client, ci, slot, slot, signal);
    return { systemId: BigInt(ident.systemId), pgVersion, walSegSizeBytes, slotRestartLsn, xlogPos: ident.xlogPos };
  } finally {
    await client.close();
  }
}

/** The LSN a timeline created for a compute starts at: the start of the segment holding the slot's restart LSN. */
export function timelineStartFor(identity: ComputeIdentity): Lsn {
  // Standbys and pg_receivewal always ask for whole segments, so keeping the
  // segment from its start (the compute still has it: the slot holds it) lets
  // them stream from the safekeeper from the first moment.
  return segmentStart(segmentNumber(identity.slotRestartLsn, identity.walSegSizeBytes), identity.walSegSizeBytes);
}

// ---------------------------------------------------------------------------
// The acceptor task
// ---------------------------------------------------------------------------

export interface WalAcceptorOptions {
  timeline: Timeline;
  registration: ComputeRegistration;
  safekeeperId: number;
  log?: Logger;
  /**
   * Run the commit loop in the native receiver process (native_receiver.ts)
   * at this path; absent: in this process (`pump`).
   */
  nativeReceiverBin?: string;
}

/** How often the native receiver reports progress while WAL flows and nobody asked (HTTP status, metrics, solo commit). */
export const NATIVE_HEARTBEAT_MS = 100;

/**
 * Streams WAL from the registered compute until `signal` aborts or the
 * registration's term is superseded, reconnecting with backoff.
 */
export async function runWalAcceptor(opts: WalAcceptorOptions, signal: AbortSignal): Promise<void> {
  const { timeline: tl, registration: reg } = opts;
  const log = (opts.log ?? silentLogger()).child({ tenant_id: tl.tenantId, timeline_id: tl.timelineId, term: String(reg.term) });
  let backoffMs = RECONNECT_MIN_MS;
  let lastError = "";
  while (!signal.aborted) {
    if (tl.term > reg.term || tl.isClosed) {
      log.info({ current_term: String(tl.term) }, "compute's term was superseded; WAL acceptor stops");
      return;
    }
    const started = Date.now();
    try {
      await streamOnce(opts, log, signal);
    } catch (e) {
      if (signal.aborted) break;
      const fields = errorFields(e);
      // The same failure every few seconds (a compute that is down) is logged once until it changes.
      if (fields.err !== lastError) log.warn(fields, "WAL acceptor connection ended; reconnecting");
      lastError = fields.err;
    }
    if (Date.now() - started > RECONNECT_MAX_MS) backoffMs = RECONNECT_MIN_MS;
    try {
      await sleep(backoffMs, signal);
    } catch {
      break;
    }
    backoffMs = Math.min(backoffMs * 2, RECONNECT_MAX_MS);
  }
}

/** One connection: handshake, stream until error or cancellation. */
async function streamOnce(opts: WalAcceptorOptions, log: Logger, outer: AbortSignal): Promise<void> {
  const { timeline: tl, registration: reg } = opts;
  const ac = new AbortController();
  const onOuterAbort = () => ac.abort(outer.reason);
  outer.addEventListener("abort", onOuterAbort, { once: true });
  const onTerm = (t: bigint) => {
    if (t > reg.term) ac.abort(new StrataError("cancelled", `term ${t} superseded the compute's term ${reg.term}`));
  };
  tl.events.on("term", onTerm);
  const signal = ac.signal;
  const ci = parseConnString(reg.connstr);
  const slot = safekeeperSlotName(opts.safekeeperId);
  let client: PgClient | undefined;
  try {
    client = await PgClient.connect(connectOptions(ci, true, slot, signal));
    const ident = await client.identifySystem({ signal });
    if (ident.systemId !== tl.systemId.toString()) {
      throw new StrataError("invalid_argument", `Compute ${ci.host}:${ci.port} has system id ${ident.systemId}, the timeline's is ${tl.systemId}`);
    }
    const slotRestart = await ensureSlot(client, ci, slot, slot, signal);
    const startLsn = await tl.beginComputeTerm(reg.term, reg.startLsn ?? slotRestart);
    const stream = await client.startReplication({ slot, startLsn, timeline: 1, signal });
    log.info({ start_lsn: formatLsn(startLsn), compute: `${ci.host}:${ci.port}`, receiver: opts.nativeReceiverBin !== undefined ? "native" : "node" }, "streaming WAL from compute");
    tl.setComputeConnected(true);
    try {
      if (opts.nativeReceiverBin !== undefined) await pumpNative(opts.nativeReceiverBin, tl, reg, stream, startLsn, `${ci.host}:${ci.port}`, signal, log);
      else await pump(tl, reg, stream, startLsn, signal, ac);
    } finally {
      tl.setComputeConnected(false);
    }
  } finally {
    outer.removeEventListener("abort", onOuterAbort);
    tl.events.off("term", onTerm);
    if (client !== undefined && !client.closed) client.close().catch(() => undefined);
  }
}

/** Reader and group-commit writer for one stream. Returns/throws when either ends. */
async function pump(tl: Timeline, reg: ComputeRegistration, stream: ReplicationStream, startLsn: Lsn, signal: AbortSignal, ac: AbortController): Promise<void> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let pendingStart: Lsn = startLsn;
  let expected: Lsn = startLsn;
  /** Set while the async writer waits for work: only then may the reader write synchronously (order). */
  let wakeWriter: (() => void) | undefined;
  let readerPaused = false;
  let done = false;

  const sendStatus = (replyRequested = false) => {
    // Once a newer term was promised (a vote), this compute's flush LSN is no longer its to
    // count: WAL fsynced after the vote could be missing from the vote's position. Report nothing.
    if (tl.term !== reg.term) return;
    const flush = tl.flushLsn;
    stream.sendStatus(tl.writeLsn, flush, flush, replyRequested);
  };

  /** Reused for batches of several messages (never handed out beyond one write). */
  const batchBuf = Buffer.allocUnsafe(MAX_WRITE_BATCH_BYTES);
  /** performance.now() of the last status update (monotonic; cheaper than Date.now() once per fsync). */
  let lastStatusMs = performance.now();
  /** The status update after a write: sent the moment the WAL is durable (Timeline.appendAndFlushFromComputeNow's `durable`). */
  const sendStatusNow = () => {
    if (done) return;
    sendStatus();
    lastStatusMs = performance.now();
  };
  // Idle keep-alive: a status update when none was sent for STATUS_INTERVAL_MS.
  const statusTimer = setInterval(() => {
    if (done || performance.now() - lastStatusMs < STATUS_INTERVAL_MS) return;
    lastStatusMs = performance.now();
    try {
      sendStatus();
    } catch {
      /* the stream just ended; the reader reports why */
    }
  }, STATUS_CHECK_MS);

  /** The next batch: up to MAX_WRITE_BATCH_BYTES of whole messages from the head of `pending` (not yet taken). */
  const nextBatch = (): { batch: Buffer; take: number } => {
    let take = 0;
    let bytes = 0;
    while (take < pending.length && (take === 0 || bytes + pending[take]!.length <= MAX_WRITE_BATCH_BYTES)) bytes += pending[take++]!.length;
    if (take === 1) return { batch: pending[0]!, take };
    let off = 0;
    for (let k = 0; k < take; k++) {
      const p = pending[k]!;
      p.copy(batchBuf, off);
      off += p.length;
    }
    return { batch: batchBuf.subarray(0, bytes), take };
  };
  /** Removes a batch's messages from `pending`; resumes a reader paused for memory. */
  const taken = (take: number, bytes: number) => {
    pending = take === pending.length ? [] : pending.slice(take);
    pendingBytes -= bytes;
    pendingStart = toLsn(pendingStart + BigInt(bytes));
    if (readerPaused && pendingBytes <= MAX_PENDING_BYTES) {
      readerPaused = false;
      stream.resume();
    }
  };

  const writer = async (): Promise<void> => {
    while (!done && !signal.aborted) {
      if (pendingBytes === 0) {
        await new Promise<void>((resolve) => {
          wakeWriter = resolve;
        });
        continue;
      }
      // WAL that arrived while the last fsync ran, or a socket chunk that filled the read
      // buffer: yield once to the event loop so every chunk readable in this poll phase is
      // pending before the write — "flush when nothing more is buffered".
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (pendingBytes === 0 || done) continue;
      const at = pendingStart;
      const { batch, take } = nextBatch();
      taken(take, batch.length);
      if (tl.appendAndFlushFromComputeNow(reg.term, at, batch, sendStatusNow) === undefined) {
        await tl.appendAndFlushFromCompute(reg.term, at, batch);
        sendStatusNow();
      }
    }
  };

  /**
   * Push-mode handler, inside the socket's data callback. In the common case
   * (the writer idle, the socket drained, everything pending fits one batch
   * and WalStorage can write it synchronously) the WAL is written, fsynced
   * and acknowledged right here; otherwise the async writer takes it.
   * A throw (protocol violation, fencing, I/O error) ends the connection.
   */
  const onMessages = (batch: ServerReplicationMessage[], more: boolean, transient: boolean): void => {
    let replyRequested = false;
    /** Payloads of this call in `pending`: with `transient`, views into the socket's read buffer, copied if they stay. */
    let added = 0;
    try {
      for (const m of batch) {
        if (m.kind === "XLogData") {
          if (m.dataStart !== expected) {
            throw new StrataError("protocol_violation", `Compute sent WAL at ${formatLsn(m.dataStart)}, expected ${formatLsn(expected)}`);
          }
          if (m.data.length === 0) continue;
          pending.push(m.data);
          added++;
          pendingBytes += m.data.length;
          expected = toLsn(expected + BigInt(m.data.length));
        } else if (m.replyRequested) {
          replyRequested = true;
        }
      }
      if (pendingBytes > 0 && !done) {
        let written = false;
        if (!more && wakeWriter !== undefined && pendingBytes <= MAX_WRITE_BATCH_BYTES) {
          const at = pendingStart;
          const { batch: bytes, take } = nextBatch();
          // The status update goes out the moment the WAL is durable (it answers any reply request too).
          if (tl.appendAndFlushFromComputeNow(reg.term, at, bytes, sendStatusNow) !== undefined) {
            taken(take, bytes.length);
            written = true;
            replyRequested = false;
          }
        }
        if (!written) {
          const w = wakeWriter;
          wakeWriter = undefined;
          w?.();
        }
      }
    } finally {
      // What is still pending from this call waits for the writer beyond this call (also after a
      // throw, however briefly): keep copies. taken() removes from the front, so this call's
      // payloads are the last `added` entries left.
      if (transient) for (let k = Math.max(0, pending.length - added); k < pending.length; k++) pending[k] = Buffer.from(pending[k]!);
    }
    if (replyRequested) sendStatus();
    if (pendingBytes > MAX_PENDING_BYTES && !readerPaused) {
      readerPaused = true;
      stream.pause();
    }
  };

  const reader = async (): Promise<void> => {
    await stream.consume(onMessages, { transientPayloads: true });
    throw new StrataError("io_error", `Compute ended the replication stream at ${formatLsn(expected)}`);
  };

  const failFast = (e: unknown) => {
    done = true;
    if (!signal.aborted) ac.abort(e);
    const w = wakeWriter;
    wakeWriter = undefined;
    w?.();
    throw e;
  };
  try {
    await Promise.all([writer().catch(failFast), reader().catch(failFast)]);
  } finally {
    done = true;
    clearInterval(statusTimer);
  }
}

// ---------------------------------------------------------------------------
// The native commit loop
// ---------------------------------------------------------------------------

/**
 * The timeline's view of one native receiver process (Timeline's
 * ExternalWalWriter): tracks whether it runs or is paused, so a suspend
 * sends one pause request and resolves on the receiver's "paused" report
 * (or its end), and turns an unrequested pause at a segment's end into a
 * critical section that completes the segment and resumes it on the next.
 */
class ReceiverLease implements ExternalWalWriter {
  private state: "running" | "pausing" | "paused" = "running";
  private waiters: ((p: ReceiverProgress) => void)[] = [];
  /** progressNow callers: resolved by the next progress report (or pause, or end). */
  private progressWaiters: ((p: ReceiverProgress) => void)[] = [];
  private segmentPath: string;
  private receiver: NativeWalReceiver | undefined;
  private over = false;

  constructor(
    private readonly tl: Timeline,
    private readonly log: Logger,
    segment: ExternalSegment,
  ) {
    this.segmentPath = segment.path;
  }

  /** Called once, right after the process was spawned. */
  attach(r: NativeWalReceiver): void {
    this.receiver = r;
    void r.ended.then(() => {
      this.over = true;
      this.release(r.progress);
    });
  }

  onProgress(p: ReceiverProgress): void {
    const ws = this.progressWaiters;
    this.progressWaiters = [];
    for (const w of ws) w(p);
    this.tl.externalProgress(this, p).catch((e: unknown) => {
      this.log.warn(errorFields(e), "cannot take in the WAL receiver's progress; stopping it");
      void this.stop();
    });
  }

  onPaused(reason: "requested" | "segment_full", p: ReceiverProgress): void {
    if (this.state === "paused") return;
    const requested = this.state === "pausing";
    this.state = "paused";
    this.release(p);
    if (!requested && reason === "segment_full") {
      this.tl.continueExternalWriter(this).catch((e: unknown) => {
        this.log.warn(errorFields(e), "cannot continue the WAL receiver in the next segment; stopping it");
        void this.stop();
      });
    }
  }

  private release(p: ReceiverProgress): void {
    const ws = [...this.waiters, ...this.progressWaiters];
    this.waiters = [];
    this.progressWaiters = [];
    for (const w of ws) w(p);
  }

  progressNow(): Promise<ReceiverProgress> {
    const r = this.receiver!;
    if (this.over || this.state !== "running") return Promise.resolve(r.progress);
    // Reported at once: its flush LSN is past 0.
    if (this.progressWaiters.length === 0) r.notifyAfter(toLsn(0n));
    return new Promise((resolve) => this.progressWaiters.push(resolve));
  }

  suspend(): Promise<ReceiverProgress> {
    const r = this.receiver!;
    if (this.over || this.state === "paused") return Promise.resolve(r.progress);
    if (this.state === "running") {
      this.state = "pausing";
      r.pause();
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  resume(segment: ExternalSegment): void {
    if (this.state !== "paused" || this.over) return;
    this.state = "running";
    const r = this.receiver!;
    if (segment.path !== this.segmentPath) {
      this.segmentPath = segment.path;
      r.resume({ path: segment.path, startLsn: segment.startLsn });
    } else {
      r.resume();
    }
  }

  wantProgress(lsn: Lsn): void {
    if (!this.over) this.receiver!.notifyAfter(lsn);
  }

  stop(): Promise<ReceiverEnd> {
    return this.receiver!.stop();
  }

  /** Resolves once the process exited. */
  get ended(): Promise<ReceiverEnd> {
    return this.receiver!.ended;
  }
}

/** What a receiver's end means for the acceptor: undefined = stopped on request, else the error ending the connection. */
function receiverEndError(end: ReceiverEnd, compute: string): Error | undefined {
  const text = end.detail.toString("utf8");
  switch (end.reason) {
    case "stopped":
      return undefined;
    case "server_error": {
      const parser = new BackendParser();
      try {
        parser.push(end.detail);
        const m = parser.next();
        if (m?.kind === "ErrorResponse") return new PgServerError(m.fields, `Replication from ${compute}`);
      } catch {
        /* reported below as text */
      }
      return new StrataError("protocol_violation", `Compute ${compute} sent an unreadable error during replication`);
    }
    case "copy_done":
    case "connection":
    case "io":
      return new StrataError("io_error", `WAL receiver: ${text}`);
    case "protocol":
      return new StrataError("protocol_violation", `WAL receiver: ${text}`);
    case "crashed":
      return new StrataError("internal", `WAL receiver: ${text}`);
  }
}

/**
 * The commit loop in the native receiver: the stream's socket is handed to
 * the process (with the bytes already read), which appends into the
 * segment the timeline prepared, fsyncs and acknowledges on its own. Here
 * we only wait for it to end — the timeline adopts its progress — or stop
 * it when `signal` aborts (term change, shutdown).
 */
async function pumpNative(bin: string, tl: Timeline, reg: ComputeRegistration, stream: ReplicationStream, startLsn: Lsn, compute: string, signal: AbortSignal, log: Logger): Promise<void> {
  const { socket, pending } = stream.detach();
  let lease: ReceiverLease | undefined;
  try {
    await tl.attachExternalWriter(reg.term, (segment) => {
      if (segment.writeLsn !== startLsn) {
        throw new StrataError("internal", `WAL of ${tl.tenantId}/${tl.timelineId} ends at ${formatLsn(segment.writeLsn)}, but streaming started at ${formatLsn(startLsn)}`);
      }
      const l = new ReceiverLease(tl, log, segment);
      const r = new NativeWalReceiver({
        bin,
        socket,
        pending,
        segmentPath: segment.path,
        segmentStartLsn: segment.startLsn,
        segmentSizeBytes: tl.walSegSizeBytes,
        writeLsn: segment.writeLsn,
        buckets: tl.fsyncBucketBounds,
        statusIntervalMs: STATUS_INTERVAL_MS,
        heartbeatMs: NATIVE_HEARTBEAT_MS,
        onProgress: (p) => l.onProgress(p),
        onPaused: (reason, p) => l.onPaused(reason, p),
        log,
      });
      l.attach(r);
      lease = l;
      log.debug({ pid: r.pid, segment: segment.path }, "WAL receiver started");
      return l;
    });
  } finally {
    // The receiver has its own descriptor of the connection (or the attach failed and it is to be closed).
    socket.destroy();
  }
  const l = lease!;
  const onAbort = () => void l.stop();
  signal.addEventListener("abort", onAbort, { once: true });
  if (signal.aborted) onAbort();
  try {
    const end = await l.ended;
    await tl.externalWriterEnded(l);
    const err = receiverEndError(end, compute);
    if (err !== undefined) throw err;
    if (!signal.aborted) throw new StrataError("io_error", `WAL receiver for ${compute} stopped`);
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}
