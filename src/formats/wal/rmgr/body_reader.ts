/**
 * Bounds-checked little-endian reader for WAL record bodies (main data and
 * per-block data), shared by the resource-manager parsers in this folder.
 *
 * Record bodies are C structs as PostgreSQL 15 lays them out on x86-64 /
 * aarch64 (little-endian, MAXALIGN 8, 4-byte int/Oid, 8-byte int64); offsets
 * given to `at()` are relative to the start of the body, which is exactly how
 * the redo routines see it (xlogreader copies main data to a MAXALIGNed buffer,
 * so struct alignment is relative to the body start, never to the WAL stream).
 *
 * Invariant: every read checks the remaining length first and throws a
 * `StrataError("corrupt_data")` naming the record, the field and the offsets.
 * A body shorter than its struct is corruption, not "need more": the decoder
 * only hands out complete, CRC-checked records. Nothing here recurses or
 * allocates proportionally to a length field without checking that the bytes
 * are actually present first.
 */
import { StrataError } from "../../../lib/errors.js";
import { formatLsn, type Lsn } from "../../../lib/lsn.js";
import type { DecodedRecord, RelFileNode } from "../decoded_record.js";

/** MAXALIGN on every platform PostgreSQL 15 packages ship for (64-bit). */
export const MAXIMUM_ALIGNOF = 8;

/** Rounds `n` up to a multiple of MAXIMUM_ALIGNOF, as MAXALIGN() does. */
export function maxAlign(n: number): number {
  return Math.ceil(n / MAXIMUM_ALIGNOF) * MAXIMUM_ALIGNOF;
}

/** Where a body came from, for error messages ("XACT COMMIT record at 0/16B3748"). */
export function describeRecord(what: string, lsn?: Lsn): string {
  return lsn === undefined ? `${what} record` : `${what} record at ${formatLsn(lsn)}`;
}

export class BodyReader {
  private readonly view: DataView;
  private pos = 0;

  /**
   * @param bytes the body
   * @param what names the record in error messages, e.g. "XLOG CHECKPOINT_ONLINE record at 0/1000";
   *   a function is called only when an error is built (parsers on the ingest hot path spare formatting an LSN per record)
   */
  constructor(
    readonly bytes: Uint8Array,
    private readonly whatOrFn: string | (() => string),
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** The record's name for error messages. */
  get what(): string {
    return typeof this.whatOrFn === "string" ? this.whatOrFn : this.whatOrFn();
  }

  get offset(): number {
    return this.pos;
  }
  get remaining(): number {
    return this.bytes.length - this.pos;
  }

  /** Moves to an absolute offset inside the body (struct field offsets). */
  at(offset: number): this {
    if (offset > this.bytes.length) {
      throw this.short(offset - this.pos, `offset ${offset}`);
    }
    this.pos = offset;
    return this;
  }

  /** Advances to the next multiple of `alignment` relative to the body start. */
  align(alignment: number): this {
    const target = Math.ceil(this.pos / alignment) * alignment;
    if (target > this.bytes.length) throw this.short(target - this.pos, "alignment padding");
    this.pos = target;
    return this;
  }

  /** Throws unless at least `n` more bytes are present. */
  require(n: number, field: string): void {
    if (n > this.remaining) throw this.short(n, field);
  }

  u8(field: string): number {
    this.require(1, field);
    return this.view.getUint8(this.pos++);
  }
  i8(field: string): number {
    this.require(1, field);
    return this.view.getInt8(this.pos++);
  }
  bool(field: string): boolean {
    return this.u8(field) !== 0;
  }
  u16(field: string): number {
    this.require(2, field);
    const v = this.view.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }
  u32(field: string): number {
    this.require(4, field);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  i32(field: string): number {
    this.require(4, field);
    const v = this.view.getInt32(this.pos, true);
    this.pos += 4;
    return v;
  }
  u64(field: string): bigint {
    this.require(8, field);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }
  i64(field: string): bigint {
    this.require(8, field);
    const v = this.view.getBigInt64(this.pos, true);
    this.pos += 8;
    return v;
  }
  /** A view (no copy) of the next `n` bytes. */
  bytesOf(n: number, field: string): Uint8Array {
    if (!Number.isInteger(n) || n < 0) throw this.invalid(`${field}: length ${n} is negative`);
    this.require(n, field);
    const v = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  /**
   * A NUL-terminated string of at most `maxBytes` bytes including the NUL
   * (e.g. GIDSIZE). Decoded as UTF-8 (PostgreSQL stores server-encoding bytes;
   * GIDs and names are ASCII in practice).
   */
  cString(maxBytes: number, field: string): string {
    const limit = Math.min(this.bytes.length, this.pos + maxBytes);
    let end = this.pos;
    while (end < limit && this.bytes[end] !== 0) end++;
    if (end >= limit) {
      if (limit === this.bytes.length && this.pos + maxBytes > this.bytes.length) {
        throw this.short(end - this.pos + 1, `${field} (no terminating NUL)`);
      }
      throw this.invalid(`${field}: no terminating NUL within ${maxBytes} bytes at offset ${this.pos}`);
    }
    const s = Buffer.from(this.bytes.buffer, this.bytes.byteOffset + this.pos, end - this.pos).toString("utf8");
    this.pos = end + 1;
    return s;
  }

  /** A count read from the body that must be in [0, max]. */
  count(value: number, max: number, field: string): number {
    if (!Number.isInteger(value) || value < 0 || value > max) {
      throw this.invalid(`${field} ${value} is outside [0, ${max}]`);
    }
    return value;
  }

  /** Builds a corrupt_data error naming the record and the offset. */
  invalid(detail: string): StrataError {
    return new StrataError("corrupt_data", `${this.what}: ${detail}`);
  }

  private short(n: number, field: string): StrataError {
    return new StrataError(
      "corrupt_data",
      `${this.what}: body is ${this.bytes.length} bytes, ${field} needs ${n} at offset ${this.pos}`,
    );
  }
}

/** The parts of a decoded record that the body parsers look at (unit tests build these by hand). */
export type RecordBody = Pick<DecodedRecord, "lsn" | "info" | "mainData">;

/** XLR_INFO_MASK: the low four bits of xl_info belong to the WAL machinery, the high four to the rmgr. */
export { XLR_INFO_MASK } from "../xlog_record.js";

/** Reads a RelFileNode (spcNode, dbNode, relNode: three Oids, 12 bytes). */
export function readRelFileNode(r: BodyReader, field: string): RelFileNode {
  const spcOid = r.u32(`${field}.spcNode`);
  const dbOid = r.u32(`${field}.dbNode`);
  const relNumber = r.u32(`${field}.relNode`);
  return { spcOid, dbOid, relNumber };
}

/** sizeof(RelFileNode). */
export const SIZE_OF_REL_FILE_NODE = 12;

/**
 * The writer side of BodyReader: appends little-endian fields, for building
 * record bodies (tests, synthesized records). Grows as needed.
 */
export class BodyWriter {
  private buf = new Uint8Array(64);
  private view = new DataView(this.buf.buffer);
  private len = 0;

  get length(): number {
    return this.len;
  }

  /** Reserves `n` bytes and returns their offset. May replace `buf`/`view`: call it before touching them. */
  private room(n: number): number {
    if (this.len + n > this.buf.length) {
      const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
      next.set(this.buf.subarray(0, this.len));
      this.buf = next;
      this.view = new DataView(next.buffer);
    }
    const at = this.len;
    this.len += n;
    return at;
  }

  u8(v: number): this {
    const at = this.room(1);
    this.view.setUint8(at, v);
    return this;
  }
  i8(v: number): this {
    const at = this.room(1);
    this.view.setInt8(at, v);
    return this;
  }
  bool(v: boolean): this {
    return this.u8(v ? 1 : 0);
  }
  u16(v: number): this {
    const at = this.room(2);
    this.view.setUint16(at, v, true);
    return this;
  }
  u32(v: number): this {
    const at = this.room(4);
    this.view.setUint32(at, v >>> 0, true);
    return this;
  }
  i32(v: number): this {
    const at = this.room(4);
    this.view.setInt32(at, v, true);
    return this;
  }
  u64(v: bigint): this {
    const at = this.room(8);
    this.view.setBigUint64(at, v, true);
    return this;
  }
  i64(v: bigint): this {
    const at = this.room(8);
    this.view.setBigInt64(at, v, true);
    return this;
  }
  bytes(b: Uint8Array): this {
    const at = this.room(b.length);
    this.buf.set(b, at);
    return this;
  }
  /** UTF-8 bytes plus a terminating NUL. */
  cString(s: string): this {
    return this.bytes(Buffer.from(s, "utf8")).u8(0);
  }
  relFileNode(r: RelFileNode): this {
    return this.u32(r.spcOid).u32(r.dbOid).u32(r.relNumber);
  }
  /** Zero padding up to a multiple of `alignment` from the body start. */
  align(alignment: number): this {
    const target = Math.ceil(this.len / alignment) * alignment;
    this.room(target - this.len);
    return this;
  }
  /** Zero padding up to an absolute offset. */
  padTo(offset: number): this {
    if (offset > this.len) this.room(offset - this.len);
    return this;
  }
  /** A copy of the bytes written so far. */
  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}
