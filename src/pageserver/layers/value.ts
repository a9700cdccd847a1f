/**
 * The values stored under a (key, LSN) in layers, and their byte encoding.
 *
 * DESIGN §4: a version of a key is either a materialized **image** (a page,
 * or the opaque bytes of a non-block key such as a relation size or a
 * directory) or a **WAL record** to apply on top of the previous version.
 * The layer code never looks inside either: images and records are opaque
 * bytes; only the flags needed to stop a reconstruction walk (`willInit`) and
 * to route a record to its redo engine (`engine`) are interpreted here.
 *
 * Encoding (the length is always known from the container, so none is stored):
 *
 *   image: 0x01, bytes...
 *   wal:   0x02, flags, rec...
 *          flags bit 0     willInit (the record initializes the page: no base needed)
 *          flags bits 1-2  engine: 0 unspecified, 1 "postgres", 2 "native" (3 invalid)
 *          flags bits 3-7  zero
 *
 * Two bytes of overhead per WAL record keep small records (heap inserts are
 * often < 100 bytes) compact. Decoding returns views into the input buffer
 * (no copy): callers that keep a value beyond the buffer's life must copy.
 * Decoding external bytes never asserts: anything unexpected is corrupt_data.
 */
import { StrataError } from "../../lib/errors.js";
import type { Key } from "../key.js";
import type { Lsn } from "../../lib/lsn.js";

export interface ImageValue {
  readonly kind: "image";
  readonly bytes: Uint8Array;
}

export type RedoEngine = "postgres" | "native";

export interface WalValue {
  readonly kind: "wal";
  /** The record initializes the page: reconstruction needs no older version. */
  readonly willInit: boolean;
  /** Opaque record bytes, interpreted by the redo engine. */
  readonly rec: Uint8Array;
  readonly engine?: RedoEngine;
}

export type Value = ImageValue | WalValue;

const TAG_IMAGE = 0x01;
const TAG_WAL = 0x02;
const FLAG_WILL_INIT = 0x01;
const ENGINE_SHIFT = 1;
const ENGINE_MASK = 0x03 << ENGINE_SHIFT;
const FLAGS_RESERVED = 0xff & ~(FLAG_WILL_INIT | ENGINE_MASK);
const ENGINE_CODES: Record<RedoEngine, number> = { postgres: 1, native: 2 };

/** Bytes the encoding adds in front of an image / a WAL record. */
export const IMAGE_OVERHEAD_BYTES = 1;
export const WAL_OVERHEAD_BYTES = 2;

export function encodedValueSize(v: Value): number {
  return v.kind === "image" ? IMAGE_OVERHEAD_BYTES + v.bytes.length : WAL_OVERHEAD_BYTES + v.rec.length;
}

/** Serializes a value into a new buffer. */
export function encodeValue(v: Value): Uint8Array {
  const out = new Uint8Array(encodedValueSize(v));
  encodeValueInto(v, out, 0);
  return out;
}

/**
 * Serializes a value into `out` at `off` (which must have encodedValueSize(v)
 * bytes of room) and returns the bytes written: lets a writer encode straight
 * into its own buffer, without an intermediate copy per value.
 */
export function encodeValueInto(v: Value, out: Uint8Array, off: number): number {
  if (v.kind === "image") {
    out[off] = TAG_IMAGE;
    out.set(v.bytes, off + IMAGE_OVERHEAD_BYTES);
    return IMAGE_OVERHEAD_BYTES + v.bytes.length;
  }
  let flags = v.willInit ? FLAG_WILL_INIT : 0;
  if (v.engine !== undefined) flags |= ENGINE_CODES[v.engine] << ENGINE_SHIFT;
  out[off] = TAG_WAL;
  out[off + 1] = flags;
  out.set(v.rec, off + WAL_OVERHEAD_BYTES);
  return WAL_OVERHEAD_BYTES + v.rec.length;
}

/**
 * Parses an encoded value. `where` names the origin (file and offset) for the
 * error message. Returns views into `bytes`.
 */
export function decodeValue(bytes: Uint8Array, where = "value"): Value {
  if (bytes.length < 1) throw new StrataError("corrupt_data", `Cannot decode ${where}: empty value`);
  const tag = bytes[0]!;
  if (tag === TAG_IMAGE) return { kind: "image", bytes: bytes.subarray(IMAGE_OVERHEAD_BYTES) };
  if (tag !== TAG_WAL) {
    throw new StrataError("corrupt_data", `Cannot decode ${where}: unknown value tag 0x${tag.toString(16)}`);
  }
  if (bytes.length < WAL_OVERHEAD_BYTES) {
    throw new StrataError("corrupt_data", `Cannot decode ${where}: WAL value of ${bytes.length} byte(s) has no flags byte`);
  }
  const flags = bytes[1]!;
  if ((flags & FLAGS_RESERVED) !== 0) {
    throw new StrataError("corrupt_data", `Cannot decode ${where}: reserved WAL value flag bits set (0x${flags.toString(16)})`);
  }
  const engineCode = (flags & ENGINE_MASK) >> ENGINE_SHIFT;
  const rec = bytes.subarray(WAL_OVERHEAD_BYTES);
  const willInit = (flags & FLAG_WILL_INIT) !== 0;
  switch (engineCode) {
    case 0:
      return { kind: "wal", willInit, rec };
    case 1:
      return { kind: "wal", willInit, rec, engine: "postgres" };
    case 2:
      return { kind: "wal", willInit, rec, engine: "native" };
    default:
      throw new StrataError("corrupt_data", `Cannot decode ${where}: unknown redo engine code ${engineCode}`);
  }
}

/** One version of a key: the unit layers store and return. */
export interface ValueEntry {
  readonly key: Key;
  readonly lsn: Lsn;
  readonly value: Value;
}

/** Options of Layer.getValues. */
export interface GetValuesOptions {
  /**
   * Stop after the newest image or will-init record (reconstruction needs
   * nothing older), sparing the reads of older values in the same layer.
   */
  readonly stopAtBase?: boolean;
}

/** True for a value that needs no older version: an image or a will-init record. */
export function isBase(v: Value): boolean {
  return v.kind === "image" || v.willInit;
}
