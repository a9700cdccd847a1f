/**
 * The receiving end of a backup's COPY OUT, without copying the archive:
 * what fetchBackupToFile (backup_client.ts) reads the page service's
 * basebackup / fullbackup through.
 *
 *   socket reads into the receive ring -> CopyOutFramer (pure) -> CopyData payload views -> batches (~batchBytes) -> caller (file writev, release)
 *                                                             -> other messages, decoded -> the session's state machine
 *
 * Why not PgClient.copyOut: PgClient's parser hands out each CopyData
 * payload as one Buffer, so a payload that spans socket reads (every
 * 256 KiB message of a backup spans four 64 KiB reads) is copied into a
 * fresh buffer first, and every socket read lands in fresh memory: together
 * 1.6-1.9 CPU s per 637 MiB archive against 0.7-1.0 s here (A/B on the
 * 2-core test machine), for an archive that only goes to a file, on a
 * machine where the pageserver and the client share two cores. Here the socket reads straight into a recycled
 * receive ring (RECEIVE_RING_BYTES says why that matters even more) and a
 * payload is passed on as views of the ring, gathered into batches the
 * caller writes with one writev and then releases.
 *
 * The session is the simple-query protocol's minimum for a trusting
 * server (the page service): StartupMessage, AuthenticationOk and the
 * parameters, Query, CopyOutResponse, CopyData*, CopyDone,
 * CommandComplete, ReadyForQuery, Terminate. Anything else is refused
 * precisely: an authentication request (the page service never asks; use
 * PgClient for servers that do) is `unsupported`, an ErrorResponse is a
 * PgServerError with the server's SQLSTATE (also mid-stream: the archive is
 * then incomplete and the caller drops it), malformed framing is
 * `protocol_violation` with the stream offset, a lost connection is
 * `io_error` with the bytes received, startup beyond `connectTimeoutMs` is
 * `timeout`, an aborted signal `cancelled`. Non-CopyData messages are
 * decoded by the wire codec (messages.ts decodeBackendBody), bounded by
 * MAX_CONTROL_MESSAGE_BYTES.
 *
 * Memory: the ring, RECEIVE_RING_BYTES per fetch. When the next read's
 * slot would overwrite bytes of a batch not yet released, the socket is
 * paused (TCP back-pressure to the page service) until a release frees
 * it, so a slow disk never grows the heap. Cancellation: leaving the
 * generator early (return or throw) destroys the connection.
 */
import { connect as netConnect, type Socket } from "node:net";
import { StrataError } from "../lib/errors.js";
import { PgServerError } from "../wire/client.js";
import { BACKEND_TYPE_CODES, decodeBackendBody, PROTOCOL_VERSION_3_0, serializeFrontend, type BackendMessage } from "../wire/messages.js";

/** Largest non-CopyData message accepted (an ErrorResponse, ParameterStatus, ...): PgClient's default message bound. */
export const MAX_CONTROL_MESSAGE_BYTES = 1024 * 1024;
/** Default bound on connect + startup (as PgClient's). */
const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
/** Type byte plus int32 length. */
const HEADER_BYTES = 5;
/** The CopyData type byte, 'd'. */
const COPY_DATA = 0x64;

/** Where the framer delivers what it found. */
export interface CopyOutFrameSink {
  /** A piece of a CopyData payload: a view of the pushed chunk (no copy), in stream order. */
  data(view: Buffer): void;
  /** Any other complete message, decoded. */
  message(m: BackendMessage): void;
}

/**
 * Splits a backend byte stream into CopyData payload pieces (views, never
 * copied, however the messages straddle chunks) and decoded other
 * messages. Pure: no socket, keeps its own partial header and body.
 */
export class CopyOutFramer {
  private readonly header = Buffer.alloc(HEADER_BYTES);
  private headerFill = 0;
  /** Payload bytes of the current CopyData still to come. */
  private dataLeft = 0;
  /** Body of the current other message being assembled. */
  private body: Buffer | undefined;
  private bodyFill = 0;
  private code = "";
  /** Stream offset of the current message's first byte (for errors). */
  private messageOffset = 0;
  /** Bytes pushed so far. */
  offset = 0;

  constructor(private readonly maxControlMessageBytes = MAX_CONTROL_MESSAGE_BYTES) {}

  push(chunk: Buffer, sink: CopyOutFrameSink): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.dataLeft > 0) {
        const n = Math.min(this.dataLeft, chunk.length - i);
        this.dataLeft -= n;
        this.offset += n;
        sink.data(chunk.subarray(i, i + n));
        i += n;
        continue;
      }
      if (this.body !== undefined) {
        const n = Math.min(this.body.length - this.bodyFill, chunk.length - i);
        chunk.copy(this.body, this.bodyFill, i, i + n);
        this.bodyFill += n;
        this.offset += n;
        i += n;
        if (this.bodyFill === this.body.length) {
          const body = this.body;
          this.body = undefined;
          this.deliver(body, sink);
        }
        continue;
      }
      if (this.headerFill === 0) this.messageOffset = this.offset;
      const n = Math.min(HEADER_BYTES - this.headerFill, chunk.length - i);
      chunk.copy(this.header, this.headerFill, i, i + n);
      this.headerFill += n;
      this.offset += n;
      i += n;
      if (this.headerFill < HEADER_BYTES) continue;
      this.headerFill = 0;
      this.startMessage(sink);
    }
  }

  /** True between messages (a stream that ends here ended cleanly at a message boundary). */
  get atMessageBoundary(): boolean {
    return this.headerFill === 0 && this.dataLeft === 0 && this.body === undefined;
  }

  private startMessage(sink: CopyOutFrameSink): void {
    const codeByte = this.header[0]!;
    const length = this.header.readInt32BE(1);
    if (length < 4) throw this.violation(`message length ${length} is below 4`);
    if (codeByte === COPY_DATA) {
      this.dataLeft = length - 4;
      return;
    }
    this.code = String.fromCharCode(codeByte);
    if (!BACKEND_TYPE_CODES.has(this.code)) throw this.violation(`unknown message type ${codeByte >= 0x20 && codeByte < 0x7f ? JSON.stringify(this.code) : `0x${codeByte.toString(16)}`}`);
    if (length - 4 > this.maxControlMessageBytes) throw this.violation(`${BACKEND_TYPE_CODES.get(this.code)} of ${length - 4} bytes exceeds the ${this.maxControlMessageBytes}-byte bound`);
    const body = Buffer.allocUnsafe(length - 4);
    if (body.length === 0) this.deliver(body, sink);
    else {
      this.body = body;
      this.bodyFill = 0;
    }
  }

  private deliver(body: Buffer, sink: CopyOutFrameSink): void {
    sink.message(decodeBackendBody(this.code, body, { what: BACKEND_TYPE_CODES.get(this.code)!, streamOffset: this.messageOffset + HEADER_BYTES }));
  }

  private violation(what: string): StrataError {
    return new StrataError("protocol_violation", `COPY OUT stream at byte ${this.messageOffset}: ${what}`);
  }
}

export interface CopyOutOptions {
  host: string;
  port: number;
  user: string;
  /** The query answered with COPY OUT. */
  query: string;
  /** Payload bytes per yielded batch (the consumer's write size); at most MAX_BATCH_BYTES. */
  batchBytes: number;
  connectTimeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * A batch of CopyData payload bytes: views of the receive ring, in order.
 * The consumer calls `release()` once it is done with the views (its write
 * completed): the ring space is then read into again. Until then the bytes
 * stay put; a consumer that never releases stalls the stream once the
 * ring is full (the socket stays paused).
 */
export interface CopyOutBatch {
  readonly views: Buffer[];
  readonly bytes: number;
  release(): void;
}

/**
 * The receive ring. Reading into Node's default per-read buffers (a fresh
 * 64 KiB allocation for every read) cost more CPU than the whole stream
 * otherwise: ~1.5 s per 637 MiB on the test machine, page faults and
 * allocator work for memory touched once, against ~0.2 s for reads of up
 * to RECEIVE_READ_BYTES into recycled ring memory (net.Socket `onread`).
 * 8 MiB holds the batch being written, the ones queued behind it and the
 * one filling, plus a read and the waste of a wrap-around.
 */
const RECEIVE_RING_BYTES = 8 << 20;
/** Largest single socket read into the ring (fewer reads, fewer wake-ups, than 64 KiB ones). */
const RECEIVE_READ_BYTES = 1 << 20;
/**
 * Largest `batchBytes`. A batch ends with the view that reached
 * `batchBytes`, so it holds up to one read more; the ring must hold the
 * batch being written, the one filling behind it, a wrap-around's waste
 * and the next read's slot, or the stream would wait on a release that
 * waits on the stream.
 */
export const MAX_BATCH_BYTES = (RECEIVE_RING_BYTES - 4 * RECEIVE_READ_BYTES) / 2;

type Phase = "startup" | "query" | "copy" | "after" | "done";

/** Ring bookkeeping of one batch: [start, end) in monotonic ring positions. */
interface Held {
  start: number;
  end: number;
  released: boolean;
}

/**
 * Runs `query` on a fresh connection and yields the COPY OUT payload in
 * batches of about `batchBytes` (the last one shorter), then closes the
 * connection. Throws as the module header says; the generator finishing
 * normally means the server completed the command.
 */
export async function* copyOutBatches(opts: CopyOutOptions): AsyncGenerator<CopyOutBatch, void, undefined> {
  if (!Number.isInteger(opts.batchBytes) || opts.batchBytes < 1 || opts.batchBytes > MAX_BATCH_BYTES) {
    throw new StrataError("invalid_argument", `COPY OUT batch of ${opts.batchBytes} bytes is outside 1..${MAX_BATCH_BYTES}`);
  }
  opts.signal?.throwIfAborted();
  const addr = `${opts.host}:${opts.port}`;
  const framer = new CopyOutFramer();
  const queue: CopyOutBatch[] = [];
  // Ring positions are monotonic byte counts (index = position % RECEIVE_RING_BYTES; a
  // wrap-around skips the ring's tail). Everything before the oldest held batch's start is free.
  const ring = Buffer.allocUnsafeSlow(RECEIVE_RING_BYTES);
  let writePos = 0;
  /** Ring position of the slot the next read goes into. */
  let slotStart = 0;
  /** Batches yielded or queued and not yet released, oldest first (the current one last, once started). */
  const held: Held[] = [];
  let current: Held | undefined;
  let views: Buffer[] = [];
  let viewBytes = 0;
  let received = 0;
  let phase = "startup" as Phase;
  let failure: Error | undefined;
  let serverError: PgServerError | undefined;
  let paused = false;
  let wake: (() => void) | undefined;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  /** Where the next read would go: at writePos, or at the ring's start when the tail is too short. */
  const nextSlot = (): number => {
    const idx = writePos % RECEIVE_RING_BYTES;
    return idx + RECEIVE_READ_BYTES <= RECEIVE_RING_BYTES ? writePos : writePos + (RECEIVE_RING_BYTES - idx);
  };
  const slotFree = (): boolean => {
    while (held.length > 0 && held[0]!.released) held.shift();
    const oldest = held[0]?.start ?? writePos;
    return nextSlot() + RECEIVE_READ_BYTES - oldest <= RECEIVE_RING_BYTES;
  };
  // eslint-disable-next-line prefer-const -- assigned once the socket exists, used by fail() and release()
  let socket: Socket;
  const fail = (e: Error) => {
    if (failure !== undefined || phase === "done") return;
    failure = e;
    socket.destroy();
    notify();
  };
  const pushBatch = () => {
    if (viewBytes === 0 || current === undefined) return;
    const h = current;
    queue.push({
      views,
      bytes: viewBytes,
      release: () => {
        if (h.released) return;
        h.released = true;
        if (paused && failure === undefined && slotFree()) {
          paused = false;
          socket.resume();
        }
      },
    });
    current = undefined;
    views = [];
    viewBytes = 0;
    notify();
  };
  const unexpected = (m: BackendMessage, where: string) => new StrataError("protocol_violation", `Unexpected ${m.kind} from ${addr} ${where}`);
  /** Ring position of the chunk being framed (views map back to ring positions through it). */
  let chunkPos = 0;
  let chunkBase = 0;
  const sink: CopyOutFrameSink = {
    data(view) {
      if (phase !== "copy") throw new StrataError("protocol_violation", `CopyData from ${addr} outside COPY OUT (at byte ${framer.offset - view.length})`);
      const start = chunkPos + (view.byteOffset - chunkBase);
      if (current === undefined) {
        current = { start, end: start, released: false };
        held.push(current);
      }
      current.end = start + view.length;
      views.push(view);
      viewBytes += view.length;
      received += view.length;
      if (viewBytes >= opts.batchBytes) pushBatch();
    },
    message(m) {
      if (m.kind === "NoticeResponse" || m.kind === "ParameterStatus") return;
      switch (phase) {
        case "startup":
          if (m.kind === "AuthenticationOk" || m.kind === "BackendKeyData" || m.kind === "NegotiateProtocolVersion") return;
          if (m.kind === "ReadyForQuery") {
            clearTimeout(timer);
            phase = "query";
            socket.write(serializeFrontend({ kind: "Query", sql: opts.query }));
            return;
          }
          if (m.kind === "ErrorResponse") throw new PgServerError(m.fields, `Connecting to ${addr} as ${opts.user}`);
          if (m.kind.startsWith("Authentication")) throw new StrataError("unsupported", `Server ${addr} requests authentication (${m.kind}); the backup fetch supports trusting servers only`);
          throw unexpected(m, "during startup");
        case "query":
          if (m.kind === "CopyOutResponse") {
            phase = "copy";
            return;
          }
          if (m.kind === "ErrorResponse") throw new PgServerError(m.fields, `Query ${JSON.stringify(opts.query)}`);
          throw unexpected(m, "before CopyOutResponse");
        case "copy":
          if (m.kind === "CopyDone") {
            phase = "after";
            pushBatch();
            return;
          }
          if (m.kind === "ErrorResponse") throw new PgServerError(m.fields, `Query ${JSON.stringify(opts.query)} (after ${received} bytes of COPY OUT)`);
          throw unexpected(m, "during COPY OUT");
        case "after":
          if (m.kind === "CommandComplete") return;
          if (m.kind === "ErrorResponse") {
            serverError ??= new PgServerError(m.fields, `Query ${JSON.stringify(opts.query)}`);
            return;
          }
          if (m.kind === "ReadyForQuery") {
            if (serverError !== undefined) throw serverError;
            phase = "done";
            socket.end(serializeFrontend({ kind: "Terminate" }));
            notify();
            return;
          }
          throw unexpected(m, "after COPY OUT");
        case "done":
          throw unexpected(m, "after the command completed");
      }
    },
  };
  const timer = setTimeout(() => fail(new StrataError("timeout", `Connecting to ${addr} took longer than ${opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS} ms`)), opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS);
  const onAbort = () => fail(new StrataError("cancelled", `COPY OUT ${JSON.stringify(opts.query)} on ${addr} was cancelled`));
  socket = netConnect({
    host: opts.host,
    port: opts.port,
    onread: {
      // called once at connect and after every read: the slot the next read fills
      buffer: () => {
        slotStart = nextSlot();
        const idx = slotStart % RECEIVE_RING_BYTES;
        return ring.subarray(idx, idx + RECEIVE_READ_BYTES);
      },
      callback: (n: number, buf: Uint8Array): boolean => {
        if (failure !== undefined) return false;
        const chunk = Buffer.from(buf.buffer, buf.byteOffset, n);
        chunkPos = slotStart;
        chunkBase = chunk.byteOffset;
        writePos = slotStart + n;
        try {
          framer.push(chunk, sink);
        } catch (e) {
          fail(e instanceof Error ? e : new StrataError("internal", String(e)));
          return false;
        }
        if (slotFree()) return true;
        paused = true; // resumed by a release that frees the next slot
        return false;
      },
    },
  });
  socket.setNoDelay(true);
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  socket.on("connect", () => {
    const parameters = new Map([
      ["user", opts.user],
      ["database", opts.user],
      ["client_encoding", "UTF8"],
    ]);
    socket.write(serializeFrontend({ kind: "StartupMessage", protocolVersion: PROTOCOL_VERSION_3_0, parameters }));
  });
  socket.on("error", (e) => fail(new StrataError("io_error", `Connection to ${addr} failed: ${e.message}`, { cause: e })));
  socket.on("close", () => fail(new StrataError("io_error", `Connection to ${addr} closed by the server ${phase === "startup" ? "during startup" : `after ${received} bytes of COPY OUT`}${framer.atMessageBoundary ? "" : " (in the middle of a message)"}`)));
  try {
    for (;;) {
      const batch = queue.shift();
      if (batch !== undefined) {
        yield batch;
        continue;
      }
      if (failure !== undefined) throw failure;
      if (phase === "done") return;
      await new Promise<void>((resolve) => (wake = resolve));
    }
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener("abort", onAbort);
    if (phase !== "done") socket.destroy();
  }
}
