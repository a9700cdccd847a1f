/**
 * Bounded byte reader and growable writer for libpq message bodies.
 *
 * Every libpq message (protocol 3.0) is a type byte (absent in the startup
 * phase), a big-endian Int32 length that counts itself but not the type byte,
 * and a body. The framing parser (`parser.ts`) cuts the stream into complete
 * bodies; this module decodes fields *inside one body*:
 *
 * * `MessageReader` never reads past the body it was given: every read checks
 *   the remaining length first, and C-strings are searched for their NUL only
 *   within the body, so a missing terminator is a precise
 *   `StrataError("protocol_violation")` (never an unbounded scan, never a
 *   RangeError from Buffer). `end()` rejects trailing bytes, so each message
 *   layout is checked exactly, not just "at least".
 * * `MessageWriter` builds one framed message: it reserves the header, lets the
 *   caller append fields, and patches the length in `finish()`. It refuses
 *   strings with embedded NULs (they would silently split a C-string field on
 *   the peer's side) — that is a caller bug, so it throws `invalid_argument`.
 *
 * Integers on the wire are big-endian ("network byte order"); 64-bit values
 * are `bigint` (LSNs and timestamps do not fit a JS number exactly).
 */

import { StrataError } from "../lib/errors.js";

/** Where a body came from, for error messages: message name and stream offset of its first byte. */
export interface BodyContext {
  readonly what: string;
  readonly streamOffset: number;
}

export class MessageReader {
  private pos = 0;

  constructor(
    private readonly body: Buffer,
    private readonly ctx: BodyContext,
  ) {}

  /** Bytes not yet read. */
  get remaining(): number {
    return this.body.length - this.pos;
  }

  /** Makes the protocol_violation error for this body, naming message, offset and problem. */
  fail(problem: string): StrataError {
    return new StrataError(
      "protocol_violation",
      `Malformed ${this.ctx.what} message at stream offset ${this.ctx.streamOffset}: ${problem}`,
    );
  }

  private need(n: number, field: string): void {
    if (this.remaining < n) {
      throw this.fail(`${field} needs ${n} bytes at body offset ${this.pos}, only ${this.remaining} left`);
    }
  }

  u8(field: string): number {
    this.need(1, field);
    return this.body.readUInt8(this.pos++);
  }

  i16(field: string): number {
    this.need(2, field);
    const v = this.body.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  i32(field: string): number {
    this.need(4, field);
    const v = this.body.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  u32(field: string): number {
    this.need(4, field);
    const v = this.body.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  i64(field: string): bigint {
    this.need(8, field);
    const v = this.body.readBigInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  u64(field: string): bigint {
    this.need(8, field);
    const v = this.body.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  /** `n` raw bytes (a view, not a copy). */
  bytes(n: number, field: string): Buffer {
    if (n < 0) throw this.fail(`${field} has negative length ${n}`);
    this.need(n, field);
    const v = this.body.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  /** Everything left in the body (a view). */
  rest(): Buffer {
    const v = this.body.subarray(this.pos);
    this.pos = this.body.length;
    return v;
  }

  /** A NUL-terminated UTF-8 string; the NUL is searched for only inside this body. */
  cstring(field: string): string {
    const nul = this.body.indexOf(0, this.pos);
    if (nul < 0) {
      throw this.fail(`${field} at body offset ${this.pos} has no NUL terminator before the end of the message`);
    }
    const v = this.body.toString("utf8", this.pos, nul);
    this.pos = nul + 1;
    return v;
  }

  /** Asserts the whole body was consumed. */
  end(): void {
    if (this.remaining !== 0) throw this.fail(`${this.remaining} unexpected trailing bytes`);
  }
}

/** Initial writer capacity: enough for every control message without growing. */
const INITIAL_WRITER_CAPACITY_BYTES = 256;

export class MessageWriter {
  private buf: Buffer;
  private len: number;
  private readonly headerBytes: number;

  /**
   * @param typeCode the message's type character, or `null` for the untyped
   *   startup-phase packets (StartupMessage, SSLRequest, ...).
   */
  constructor(private readonly typeCode: string | null) {
    this.headerBytes = typeCode === null ? 4 : 5;
    this.buf = Buffer.allocUnsafe(INITIAL_WRITER_CAPACITY_BYTES);
    this.len = this.headerBytes;
  }

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const next = Buffer.allocUnsafe(cap);
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  u8(v: number): this {
    this.reserve(1);
    this.buf.writeUInt8(v, this.len);
    this.len += 1;
    return this;
  }

  i16(v: number): this {
    this.reserve(2);
    this.buf.writeInt16BE(v, this.len);
    this.len += 2;
    return this;
  }

  i32(v: number): this {
    this.reserve(4);
    this.buf.writeInt32BE(v, this.len);
    this.len += 4;
    return this;
  }

  u32(v: number): this {
    this.reserve(4);
    this.buf.writeUInt32BE(v, this.len);
    this.len += 4;
    return this;
  }

  i64(v: bigint): this {
    this.reserve(8);
    this.buf.writeBigInt64BE(v, this.len);
    this.len += 8;
    return this;
  }

  u64(v: bigint): this {
    this.reserve(8);
    this.buf.writeBigUInt64BE(v, this.len);
    this.len += 8;
    return this;
  }

  bytes(v: Uint8Array): this {
    this.reserve(v.length);
    this.buf.set(v, this.len);
    this.len += v.length;
    return this;
  }

  cstring(v: string): this {
    if (v.includes("\0")) {
      throw new StrataError("invalid_argument", `Cannot write C-string ${JSON.stringify(v)}: it contains a NUL byte`);
    }
    const n = Buffer.byteLength(v, "utf8");
    this.reserve(n + 1);
    this.buf.write(v, this.len, "utf8");
    this.buf[this.len + n] = 0;
    this.len += n + 1;
    return this;
  }

  /** Writes the header (type byte and length) and returns the framed message. */
  finish(): Buffer {
    let off = 0;
    if (this.typeCode !== null) {
      this.buf.writeUInt8(this.typeCode.charCodeAt(0), 0);
      off = 1;
    }
    this.buf.writeInt32BE(this.len - off, off);
    return this.buf.subarray(0, this.len);
  }
}
