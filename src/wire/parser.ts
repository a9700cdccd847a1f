/**
 * Incremental libpq message parsers: bytes in, typed messages or "need more" out.
 *
 * Shaped like node-postgres's pg-protocol parser — it never touches a socket
 * and keeps its own leftover bytes — without its two flaws: an unknown type
 * code or a malformed body from the network is a
 * `StrataError("protocol_violation")` rather than a crash or a silently
 * skipped message, and the claimed length of a message is checked against a
 * named limit *before* any of its body is buffered, so a peer cannot make us
 * hold more than `maxMessageBytes` (plus one socket chunk) in memory.
 *
 * Usage: `push(chunk)` then call `next()` until it returns `null` ("need
 * more"). Pushed buffers are kept by reference and must not be modified
 * afterwards (message bodies are zero-copy views into them when a message
 * lies within one chunk). After a thrown error the parser is poisoned:
 * further calls rethrow the same error, because the stream has lost framing
 * and the only correct reaction is to close the connection.
 *
 * Two directions:
 * * `BackendParser` — what a server sends; used by our client side.
 * * `FrontendParser` — what a client sends; used by our server side. It starts
 *   in the startup phase, where packets have no type byte (StartupMessage,
 *   SSLRequest, GSSENCRequest, CancelRequest) and at most
 *   MAX_STARTUP_PACKET_BYTES; after a StartupMessage it switches to typed
 *   messages. SSLRequest/GSSENCRequest leave it in the startup phase because
 *   the client sends a StartupMessage after our one-byte refusal.
 *
 * Errors name the stream offset of the offending message's first byte.
 */

import { StrataError } from "../lib/errors.js";
import {
  BACKEND_TYPE_CODES,
  FRONTEND_TYPE_CODES,
  decodeBackendBody,
  decodeFrontendBody,
  decodeStartupPacket,
  type BackendMessage,
  type FrontendMessage,
} from "./messages.js";

/**
 * Default limit on one message (length field, i.e. body + 4 bytes). 1 MiB is
 * eight times the largest message a walsender sends (MAX_SEND_SIZE = 128 KiB
 * of WAL plus a 25-byte XLogData header) and far above any query, row or
 * page-service reply strata exchanges; a caller that needs more passes its
 * own limit.
 */
export const DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024;

/**
 * Largest limit a caller may configure: PostgreSQL's PQ_LARGE_MESSAGE_LIMIT
 * (MaxAllocSize - 1). Nothing PostgreSQL sends or accepts is larger.
 */
export const HARD_MAX_MESSAGE_BYTES = 0x3fffffff - 1;

/**
 * Limit on a startup-phase packet: PostgreSQL's MAX_STARTUP_PACKET_LENGTH
 * (pqcomm.h). The server rejects longer ones, so a compliant client never
 * sends one.
 */
export const MAX_STARTUP_PACKET_BYTES = 10000;

/** Smallest startup packet: length + code (SSLRequest/GSSENCRequest are exactly this). */
const MIN_STARTUP_PACKET_BYTES = 8;

export interface ParserOptions {
  /** Limit on one typed message's length field; default DEFAULT_MAX_MESSAGE_BYTES. */
  maxMessageBytes?: number;
}

/**
 * The leftover bytes: a queue of pushed chunks, consumed from the front.
 * Reading a header copies at most 5 bytes; taking a body is a view when it
 * lies in one chunk and a single concatenation otherwise, so parsing is
 * linear in the bytes pushed however the stream was split.
 */
class ChunkQueue {
  private chunks: Buffer[] = [];
  private headOffset = 0;
  available = 0;
  /** Stream offset of the next unconsumed byte. */
  consumed = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.available += chunk.length;
  }

  /** The byte at offset `i` from the front (caller checked `i < available`), not consumed. */
  byteAt(i: number): number {
    let off = this.headOffset + i;
    for (let k = 0; k < this.chunks.length; k++) {
      const c = this.chunks[k]!;
      if (off < c.length) return c[off]!;
      off -= c.length;
    }
    return -1; // unreachable when i < available
  }

  /**
   * The big-endian Int32 at offset `i` from the front (caller checked
   * `i + 4 <= available`), not consumed: read in place when it lies in the
   * first chunk, so framing a message allocates nothing.
   */
  int32At(i: number): number {
    const first = this.chunks[0]!;
    const off = this.headOffset + i;
    if (off + 4 <= first.length) return first.readInt32BE(off);
    return this.peek(i + 4).readInt32BE(i);
  }

  /** Copies the first `n` available bytes without consuming them (n small). */
  peek(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let off = this.headOffset;
    for (const c of this.chunks) {
      if (filled >= n) break;
      const take = Math.min(n - filled, c.length - off);
      c.copy(out, filled, off, off + take);
      filled += take;
      off = 0;
    }
    return out;
  }

  skip(n: number): void {
    this.take(n);
  }

  /** Consumes and returns the next `n` bytes (caller checked `available`). */
  take(n: number): Buffer {
    this.available -= n;
    this.consumed += n;
    const first = this.chunks[0];
    if (first !== undefined && first.length - this.headOffset >= n) {
      const v = first.subarray(this.headOffset, this.headOffset + n);
      this.headOffset += n;
      if (this.headOffset === first.length) {
        this.chunks.shift();
        this.headOffset = 0;
      }
      return v;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const take = Math.min(n - filled, c.length - this.headOffset);
      c.copy(out, filled, this.headOffset, this.headOffset + take);
      filled += take;
      this.headOffset += take;
      if (this.headOffset === c.length) {
        this.chunks.shift();
        this.headOffset = 0;
      }
    }
    return out;
  }
}

function resolveLimit(opts: ParserOptions | undefined): number {
  const limit = opts?.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  if (!Number.isInteger(limit) || limit < 5 || limit > HARD_MAX_MESSAGE_BYTES) {
    throw new StrataError("invalid_argument", `maxMessageBytes ${limit} must be an integer in [5, ${HARD_MAX_MESSAGE_BYTES}]`);
  }
  return limit;
}

function printableCode(byte: number): string {
  return byte >= 0x20 && byte < 0x7f ? JSON.stringify(String.fromCharCode(byte)) : `0x${byte.toString(16).padStart(2, "0")}`;
}

/** Shared framing of typed messages: type byte, Int32 length, body. */
abstract class TypedParser<M> {
  protected readonly queue = new ChunkQueue();
  protected readonly maxMessageBytes: number;
  private poisoned: StrataError | null = null;

  constructor(
    private readonly side: string,
    private readonly codes: ReadonlyMap<string, string>,
    opts?: ParserOptions,
  ) {
    this.maxMessageBytes = resolveLimit(opts);
  }

  /** Bytes buffered but not yet returned as messages. */
  get bufferedBytes(): number {
    return this.queue.available;
  }

  /** Stream offset of the next unparsed byte. */
  get streamOffset(): number {
    return this.queue.consumed;
  }

  /** Removes and returns the buffered bytes not yet parsed (a connection handed to another reader). */
  takeBuffered(): Buffer {
    return this.queue.take(this.queue.available);
  }

  push(chunk: Buffer): void {
    if (this.poisoned) throw this.poisoned;
    this.queue.push(chunk);
  }

  /** The next complete message, or `null` when more bytes are needed. */
  next(): M | null {
    if (this.poisoned) throw this.poisoned;
    try {
      return this.nextUnchecked();
    } catch (e) {
      if (e instanceof StrataError) this.poisoned = e;
      throw e;
    }
  }

  protected violation(offset: number, problem: string): StrataError {
    return new StrataError("protocol_violation", `Invalid ${this.side} message at stream offset ${offset}: ${problem}`);
  }

  /** Parses a typed message if the queue holds a whole one. */
  protected nextTyped(decode: (code: string, body: Buffer, offset: number) => M): M | null {
    const q = this.queue;
    if (q.available < 1) return null;
    const offset = q.consumed;
    const typeByte = q.byteAt(0);
    const code = String.fromCharCode(typeByte);
    // Reject an unknown type before waiting for its length: garbage fails on its first byte.
    if (!this.codes.has(code)) throw this.violation(offset, `unknown message type ${printableCode(typeByte)}`);
    if (q.available < 5) return null;
    const length = q.int32At(1);
    if (length < 4) throw this.violation(offset, `${this.codes.get(code)} length ${length} is below the minimum 4`);
    if (length > this.maxMessageBytes) {
      throw this.violation(offset, `${this.codes.get(code)} length ${length} exceeds the limit of ${this.maxMessageBytes} bytes`);
    }
    if (q.available < 1 + length) return null;
    q.skip(5);
    const body = q.take(length - 4);
    return decode(code, body, offset);
  }

  protected abstract nextUnchecked(): M | null;
}

/** Parses what a PostgreSQL server (or a strata server) sends. */
export class BackendParser extends TypedParser<BackendMessage> {
  constructor(opts?: ParserOptions) {
    super("backend", BACKEND_TYPE_CODES, opts);
  }

  protected nextUnchecked(): BackendMessage | null {
    return this.nextTyped((code, body, streamOffset) =>
      decodeBackendBody(code, body, { what: BACKEND_TYPE_CODES.get(code)!, streamOffset }),
    );
  }
}

/** Parses what a client sends, starting with the untyped startup phase. */
export class FrontendParser extends TypedParser<FrontendMessage> {
  private startupPhase = true;

  constructor(opts?: ParserOptions) {
    super("frontend", FRONTEND_TYPE_CODES, opts);
  }

  /** True until a StartupMessage has been parsed. */
  get inStartupPhase(): boolean {
    return this.startupPhase;
  }

  protected nextUnchecked(): FrontendMessage | null {
    if (!this.startupPhase) {
      return this.nextTyped((code, body, streamOffset) =>
        decodeFrontendBody(code, body, { what: FRONTEND_TYPE_CODES.get(code)!, streamOffset }),
      );
    }
    const q = this.queue;
    if (q.available < 4) return null;
    const offset = q.consumed;
    const length = q.int32At(0);
    if (length < MIN_STARTUP_PACKET_BYTES || length > MAX_STARTUP_PACKET_BYTES) {
      throw this.violation(
        offset,
        `startup packet length ${length} is outside [${MIN_STARTUP_PACKET_BYTES}, ${MAX_STARTUP_PACKET_BYTES}]`,
      );
    }
    if (q.available < length) return null;
    q.skip(4);
    const m = decodeStartupPacket(q.take(length - 4), { what: "startup packet", streamOffset: offset });
    if (m.kind === "StartupMessage") this.startupPhase = false;
    return m;
  }
}
