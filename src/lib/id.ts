/**
 * Tenant and timeline ids — 16 random bytes, written as 32 lower-case hex digits.
 *
 * DESIGN.md §1: a tenant is one customer's set of timelines, a timeline one
 * branch of WAL history, each identified by a 16-byte id. Both travel through
 * URLs, libpq startup options, file and directory names and binary files
 * (the safekeeper's control file, layer-file headers), so the text form is the
 * canonical in-memory one: branded strings compare with `===`, work as Map keys
 * and print as themselves in logs. Brands keep a tenant id from being passed
 * where a timeline id is expected, and a raw string from being used as either
 * without going through `parse…` (which validates and normalizes to lower case).
 *
 * Text from outside (an HTTP path, a startup packet, a directory name) that is
 * not exactly 32 hex digits is an operating error: StrataError("invalid_argument").
 * Bytes from a file that are not 16 long are the reader's bounds bug, not an
 * operating error (callers check lengths before slicing).
 */
import { randomBytes } from "node:crypto";
import { StrataError } from "./errors.js";

export type TenantId = string & { readonly __brand: "TenantId" };
export type TimelineId = string & { readonly __brand: "TimelineId" };

/** Length of an id in bytes (Neon's TenantId/TimelineId size; 128 random bits never collide in practice). */
export const ID_BYTES = 16;
/** Length of an id's text form. */
export const ID_HEX_CHARS = ID_BYTES * 2;

const ID_TEXT = /^[0-9a-fA-F]{32}$/;

function parseId(kind: string, text: string): string {
  if (!ID_TEXT.test(text)) {
    throw new StrataError("invalid_argument", `Cannot parse ${kind} id "${text}": expected ${ID_HEX_CHARS} hex digits, got ${text.length} characters`);
  }
  return text.toLowerCase();
}

function idFromBytes(bytes: Uint8Array): string {
  if (bytes.length !== ID_BYTES) throw new RangeError(`An id is ${ID_BYTES} bytes, got ${bytes.length}`);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("hex");
}

function idToBytes(id: string): Uint8Array {
  return new Uint8Array(Buffer.from(id, "hex"));
}

/** Parses the 32-hex-digit text form (either case); the result is lower case. */
export function parseTenantId(text: string): TenantId {
  return parseId("tenant", text) as TenantId;
}

/** Parses the 32-hex-digit text form (either case); the result is lower case. */
export function parseTimelineId(text: string): TimelineId {
  return parseId("timeline", text) as TimelineId;
}

/** True when `text` is a well-formed id (of either kind). */
export function isIdText(text: string): boolean {
  return ID_TEXT.test(text);
}

/** A fresh random tenant id. */
export function generateTenantId(): TenantId {
  return randomBytes(ID_BYTES).toString("hex") as TenantId;
}

/** A fresh random timeline id. */
export function generateTimelineId(): TimelineId {
  return randomBytes(ID_BYTES).toString("hex") as TimelineId;
}

/** The 16 bytes of a tenant id, for binary formats. */
export function tenantIdToBytes(id: TenantId): Uint8Array {
  return idToBytes(id);
}

/** The 16 bytes of a timeline id, for binary formats. */
export function timelineIdToBytes(id: TimelineId): Uint8Array {
  return idToBytes(id);
}

/** A tenant id from exactly 16 bytes (any value is a valid id). */
export function tenantIdFromBytes(bytes: Uint8Array): TenantId {
  return idFromBytes(bytes) as TenantId;
}

/** A timeline id from exactly 16 bytes (any value is a valid id). */
export function timelineIdFromBytes(bytes: Uint8Array): TimelineId {
  return idFromBytes(bytes) as TimelineId;
}
