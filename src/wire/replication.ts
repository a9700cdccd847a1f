/**
 * Physical streaming replication messages: the payloads carried inside
 * CopyData once START_REPLICATION has switched a connection to CopyBoth mode.
 *
 * Owned here: the byte layout of each payload (protocol.sgml "Streaming
 * Replication Protocol"; walsender.c writes 'w' and 'k' and reads 'r' and 'h',
 * walreceiver.c the reverse) plus one message of strata's own, the pageserver
 * feedback. Every payload starts with a one-byte tag; integers are big-endian.
 *
 *   server -> client
 *     'w' XLogData:        Int64 dataStart, Int64 walEnd, Int64 sendTime, WAL bytes
 *     'k' keepalive:       Int64 walEnd, Int64 sendTime, Byte1 replyRequested
 *   client -> server
 *     'r' status update:   Int64 write, Int64 flush, Int64 apply, Int64 sendTime,
 *                          Byte1 replyRequested
 *     'h' hot standby fb:  Int64 sendTime, Int32 xmin, Int32 xmin epoch,
 *                          Int32 catalog_xmin, Int32 catalog_xmin epoch
 *     'z' pageserver fb:   (strata's own; see below)
 *
 * Pageserver feedback ('z', 33 bytes): a pageserver streaming WAL from a
 * safekeeper reports how far that WAL has travelled, so the safekeeper knows
 * what it may delete (DESIGN.md section 2):
 *     Byte1 'z', Int64 lastReceivedLsn (end of WAL ingested),
 *     Int64 diskConsistentLsn (flushed to local layer files),
 *     Int64 remoteConsistentLsn (uploaded and referenced by index_part.json),
 *     Int64 replyTime (PostgreSQL timestamp).
 * PostgreSQL never sends 'z', so a walsender-compatible server can tell the
 * two consumers apart by the tag alone. The layout is fixed; a future change
 * takes a new tag rather than growing this one.
 *
 * Timestamps are PostgreSQL's TimestampTz: signed microseconds since
 * 2000-01-01 00:00:00 UTC. Boolean bytes must be 0 or 1 (PostgreSQL only
 * sends those); anything else is a protocol violation, as is a wrong length.
 *
 * Hot path: a safekeeper receives an XLogData and sends a status update for
 * every commit batch. Both are coded without BigInt arithmetic while the
 * 64-bit values are below 2^53 (every real LSN and timestamp; exact as JS
 * numbers): 64-bit fields are written and read as two 32-bit halves, and
 * `serializeStatusUpdateCopyData` builds the framed status update straight
 * from its fields (no message object, the timestamp as a number). Values
 * at or above 2^53 take the BigInt route, so every 64-bit value round-trips.
 */

import { MessageReader } from "./buffer.js";
import { lsn, type Lsn } from "../lib/lsn.js";
import { StrataError } from "../lib/errors.js";

/** PostgreSQL TimestampTz: microseconds since 2000-01-01 00:00:00 UTC. */
export type PgTimestamp = bigint & { readonly __brand: "PgTimestamp" };

/** Milliseconds from the Unix epoch to PostgreSQL's epoch (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE days). */
export const PG_EPOCH_UNIX_MS = 946_684_800_000;

export function pgTimestamp(micros: bigint): PgTimestamp {
  return micros as PgTimestamp;
}

/** Converts a JS time (ms since the Unix epoch, may be fractional) to a PostgreSQL timestamp. */
export function pgTimestampFromUnixMs(unixMs: number): PgTimestamp {
  return BigInt(Math.round((unixMs - PG_EPOCH_UNIX_MS) * 1000)) as PgTimestamp;
}

/** The current time as a PostgreSQL timestamp, with microsecond resolution. */
export function pgTimestampNow(): PgTimestamp {
  return BigInt(pgTimestampNowMicros()) as PgTimestamp;
}

/**
 * The current time as microseconds since PostgreSQL's epoch, as a number
 * (exact: about 2^50 until the year 2285) — pgTimestampNow without a BigInt,
 * for serializeStatusUpdateCopyData.
 */
export function pgTimestampNowMicros(): number {
  return Math.round((performance.timeOrigin + performance.now() - PG_EPOCH_UNIX_MS) * 1000);
}

/** Converts a PostgreSQL timestamp to ms since the Unix epoch (sub-ms precision dropped). */
export function pgTimestampToUnixMs(ts: PgTimestamp): number {
  return Number(ts / 1000n) + PG_EPOCH_UNIX_MS;
}

export interface XLogData {
  kind: "XLogData";
  /** LSN of the first byte of `data`. */
  dataStart: Lsn;
  /** The server's current end of WAL. */
  walEnd: Lsn;
  sendTime: PgTimestamp;
  data: Buffer;
}

export interface PrimaryKeepalive {
  kind: "PrimaryKeepalive";
  walEnd: Lsn;
  sendTime: PgTimestamp;
  /** The server asks for a status update right away (wal_sender_timeout is near). */
  replyRequested: boolean;
}

export interface StandbyStatusUpdate {
  kind: "StandbyStatusUpdate";
  /** End of WAL received and written (+1 byte), not necessarily flushed. */
  writeLsn: Lsn;
  /** End of WAL flushed to durable storage. */
  flushLsn: Lsn;
  /** End of WAL applied. */
  applyLsn: Lsn;
  sendTime: PgTimestamp;
  replyRequested: boolean;
}

export interface HotStandbyFeedback {
  kind: "HotStandbyFeedback";
  sendTime: PgTimestamp;
  /** Oldest xmin on the standby, 0 when none; epochs make them 64-bit. */
  xmin: number;
  xminEpoch: number;
  catalogXmin: number;
  catalogXminEpoch: number;
}

export interface PageserverFeedback {
  kind: "PageserverFeedback";
  lastReceivedLsn: Lsn;
  diskConsistentLsn: Lsn;
  remoteConsistentLsn: Lsn;
  replyTime: PgTimestamp;
}

/** Payloads a walsender (PostgreSQL or a safekeeper) sends. */
export type ServerReplicationMessage = XLogData | PrimaryKeepalive;
/** Payloads a replication client (standby, safekeeper, pageserver) sends. */
export type ClientReplicationMessage = StandbyStatusUpdate | HotStandbyFeedback | PageserverFeedback;

const TAG_XLOG_DATA = 0x77; // 'w'
const TAG_KEEPALIVE = 0x6b; // 'k'
const TAG_STATUS_UPDATE = 0x72; // 'r'
const TAG_HOT_STANDBY_FEEDBACK = 0x68; // 'h'
const TAG_PAGESERVER_FEEDBACK = 0x7a; // 'z'

/** Byte length of the XLogData header (tag + three Int64) before the WAL bytes. */
export const XLOG_DATA_HEADER_BYTES = 25;
const KEEPALIVE_BYTES = 18;
const STATUS_UPDATE_BYTES = 34;
const HOT_STANDBY_FEEDBACK_BYTES = 25;
const PAGESERVER_FEEDBACK_BYTES = 33;

/** CopyData framing: type byte 'd' and the Int32 length (which counts itself, not the type byte). */
const COPY_DATA_HEADER_BYTES = 5;
const COPY_DATA_TYPE = 0x64; // 'd'
/** A standby status update framed as CopyData: what serializeStatusUpdateCopyData returns. */
export const STATUS_UPDATE_COPY_DATA_BYTES = COPY_DATA_HEADER_BYTES + STATUS_UPDATE_BYTES;
/** Offset of a status update's send time in its payload (the caller writes it: BigInt or number). */
const STATUS_UPDATE_TIME_OFFSET = 25;

const TWO_POW_32 = 4294967296;
/** Largest high half of a 64-bit value below 2^53 (read as a number exactly). */
const MAX_SAFE_HIGH_HALF = 0x1fffff;

/** Writes an unsigned 64-bit value big-endian at `at`: as two 32-bit halves when below 2^53, else through BigInt. */
function writeU64(b: Buffer, v: bigint, at: number): void {
  const n = Number(v);
  if (n >= 0 && n <= Number.MAX_SAFE_INTEGER) {
    b.writeUInt32BE(Math.floor(n / TWO_POW_32), at);
    b.writeUInt32BE(n >>> 0, at + 4);
  } else {
    b.writeBigUInt64BE(v, at);
  }
}

/** Writes a signed 64-bit integer given as a safe-integer number (two's complement, big-endian). */
function writeI64Number(b: Buffer, n: number, at: number): void {
  const hi = Math.floor(n / TWO_POW_32);
  b.writeInt32BE(hi, at);
  b.writeUInt32BE(n - hi * TWO_POW_32, at + 4);
}

/** Reads the unsigned 64-bit value at `at` (caller checked the bounds): one BigInt when below 2^53. */
function readU64(b: Buffer, at: number): bigint {
  const hi = b.readUInt32BE(at);
  if (hi > MAX_SAFE_HIGH_HALF) return b.readBigUInt64BE(at);
  return BigInt(hi * TWO_POW_32 + b.readUInt32BE(at + 4));
}

/** Reads the signed 64-bit value at `at` (caller checked the bounds): one BigInt when its magnitude is below 2^53. */
function readI64(b: Buffer, at: number): bigint {
  const hi = b.readInt32BE(at);
  if (hi > MAX_SAFE_HIGH_HALF || hi < -MAX_SAFE_HIGH_HALF - 1) return b.readBigInt64BE(at);
  return BigInt(hi * TWO_POW_32 + b.readUInt32BE(at + 4));
}

/** Byte length of a payload (without CopyData framing). */
function payloadBytes(m: ServerReplicationMessage | ClientReplicationMessage): number {
  switch (m.kind) {
    case "XLogData":
      return XLOG_DATA_HEADER_BYTES + m.data.length;
    case "PrimaryKeepalive":
      return KEEPALIVE_BYTES;
    case "StandbyStatusUpdate":
      return STATUS_UPDATE_BYTES;
    case "HotStandbyFeedback":
      return HOT_STANDBY_FEEDBACK_BYTES;
    case "PageserverFeedback":
      return PAGESERVER_FEEDBACK_BYTES;
  }
}

/** Writes the payload at `at` in `b` (which has room); every byte of the payload's range is written. */
function writePayload(m: ServerReplicationMessage | ClientReplicationMessage, b: Buffer, at: number): void {
  switch (m.kind) {
    case "XLogData":
      b[at] = TAG_XLOG_DATA;
      b.writeBigUInt64BE(m.dataStart, at + 1);
      b.writeBigUInt64BE(m.walEnd, at + 9);
      b.writeBigInt64BE(m.sendTime, at + 17);
      b.set(m.data, at + XLOG_DATA_HEADER_BYTES);
      return;
    case "PrimaryKeepalive":
      b[at] = TAG_KEEPALIVE;
      b.writeBigUInt64BE(m.walEnd, at + 1);
      b.writeBigInt64BE(m.sendTime, at + 9);
      b[at + 17] = m.replyRequested ? 1 : 0;
      return;
    case "StandbyStatusUpdate":
      writeStatusUpdateFields(b, at, m.writeLsn, m.flushLsn, m.applyLsn, m.replyRequested);
      b.writeBigInt64BE(m.sendTime, at + STATUS_UPDATE_TIME_OFFSET);
      return;
    case "HotStandbyFeedback":
      b[at] = TAG_HOT_STANDBY_FEEDBACK;
      b.writeBigInt64BE(m.sendTime, at + 1);
      b.writeUInt32BE(m.xmin, at + 9);
      b.writeUInt32BE(m.xminEpoch, at + 13);
      b.writeUInt32BE(m.catalogXmin, at + 17);
      b.writeUInt32BE(m.catalogXminEpoch, at + 21);
      return;
    case "PageserverFeedback":
      b[at] = TAG_PAGESERVER_FEEDBACK;
      b.writeBigUInt64BE(m.lastReceivedLsn, at + 1);
      b.writeBigUInt64BE(m.diskConsistentLsn, at + 9);
      b.writeBigUInt64BE(m.remoteConsistentLsn, at + 17);
      b.writeBigInt64BE(m.replyTime, at + 25);
      return;
  }
}

/** Serializes a payload for a CopyData message (without the CopyData framing). */
export function serializeReplicationMessage(m: ServerReplicationMessage | ClientReplicationMessage): Buffer {
  const b = Buffer.allocUnsafe(payloadBytes(m));
  writePayload(m, b, 0);
  return b;
}

/**
 * Serializes a payload already framed as a CopyData message, in one
 * allocation: the same bytes as `serializeFrontend/serializeBackend({ kind:
 * "CopyData", data: serializeReplicationMessage(m) })` without the
 * intermediate buffer and copy (the status update after every fsync is on
 * the safekeeper's commit path).
 */
export function serializeReplicationCopyData(m: ServerReplicationMessage | ClientReplicationMessage): Buffer {
  const n = payloadBytes(m);
  const b = Buffer.allocUnsafe(COPY_DATA_HEADER_BYTES + n);
  b[0] = COPY_DATA_TYPE;
  b.writeInt32BE(4 + n, 1);
  writePayload(m, b, COPY_DATA_HEADER_BYTES);
  return b;
}

/**
 * A standby status update framed as CopyData (STATUS_UPDATE_COPY_DATA_BYTES),
 * built from its fields: the same bytes as `serializeReplicationCopyData({
 * kind: "StandbyStatusUpdate", ... })` with `sendTimeMicros` as the
 * timestamp (a safe integer, e.g. pgTimestampNowMicros()), without the
 * message object or BigInt arithmetic. The safekeeper sends one per fsync.
 */
export function serializeStatusUpdateCopyData(writeLsn: Lsn, flushLsn: Lsn, applyLsn: Lsn, sendTimeMicros: number, replyRequested: boolean): Buffer {
  if (!Number.isSafeInteger(sendTimeMicros)) throw new StrataError("invalid_argument", `Status update time ${sendTimeMicros} is not a safe integer of microseconds`);
  const b = Buffer.allocUnsafe(STATUS_UPDATE_COPY_DATA_BYTES);
  b[0] = COPY_DATA_TYPE;
  b.writeInt32BE(4 + STATUS_UPDATE_BYTES, 1);
  writeStatusUpdateFields(b, COPY_DATA_HEADER_BYTES, writeLsn, flushLsn, applyLsn, replyRequested);
  writeI64Number(b, sendTimeMicros, COPY_DATA_HEADER_BYTES + STATUS_UPDATE_TIME_OFFSET);
  return b;
}

/** A status update's payload at `at`, all but its send time: tag, write/flush/apply LSNs, reply flag. */
function writeStatusUpdateFields(b: Buffer, at: number, writeLsn: Lsn, flushLsn: Lsn, applyLsn: Lsn, replyRequested: boolean): void {
  b[at] = TAG_STATUS_UPDATE;
  writeU64(b, writeLsn, at + 1);
  writeU64(b, flushLsn, at + 9);
  writeU64(b, applyLsn, at + 17);
  b[at + 33] = replyRequested ? 1 : 0;
}

function reader(payload: Buffer, what: string, streamOffset: number): MessageReader {
  return new MessageReader(payload, { what, streamOffset });
}

function flag(r: MessageReader, field: string): boolean {
  const v = r.u8(field);
  if (v > 1) throw r.fail(`${field} byte is ${v}, expected 0 or 1`);
  return v === 1;
}

function checkLength(payload: Buffer, expected: number, what: string, streamOffset: number): void {
  if (payload.length !== expected) {
    throw new StrataError(
      "protocol_violation",
      `Malformed ${what} message at stream offset ${streamOffset}: ${payload.length} bytes, expected ${expected}`,
    );
  }
}

function tagError(side: string, payload: Buffer, streamOffset: number): StrataError {
  const tag = payload[0];
  const shown = tag === undefined ? "none (empty CopyData)" : tag >= 0x20 && tag < 0x7f ? JSON.stringify(String.fromCharCode(tag)) : `0x${tag.toString(16)}`;
  return new StrataError(
    "protocol_violation",
    `Invalid replication message from ${side} at stream offset ${streamOffset}: unknown tag ${shown}`,
  );
}

/**
 * Decodes a CopyData payload sent by a walsender. `streamOffset` is only used
 * in error messages (pass the CopyData's offset when known).
 */
export function parseServerReplicationMessage(payload: Buffer, streamOffset = 0): ServerReplicationMessage {
  switch (payload[0]) {
    case TAG_XLOG_DATA: {
      if (payload.length >= XLOG_DATA_HEADER_BYTES) {
        // The common case, read in place (the bounds are checked just above).
        return {
          kind: "XLogData",
          dataStart: readU64(payload, 1) as Lsn,
          walEnd: readU64(payload, 9) as Lsn,
          sendTime: readI64(payload, 17) as PgTimestamp,
          data: payload.subarray(XLOG_DATA_HEADER_BYTES),
        };
      }
      // Too short: the reader names the field that does not fit.
      const r = reader(payload, "XLogData", streamOffset);
      r.u8("tag");
      const dataStart = lsn(r.u64("dataStart"));
      const walEnd = lsn(r.u64("walEnd"));
      const sendTime = pgTimestamp(r.i64("sendTime"));
      return { kind: "XLogData", dataStart, walEnd, sendTime, data: r.rest() };
    }
    case TAG_KEEPALIVE: {
      checkLength(payload, KEEPALIVE_BYTES, "primary keepalive", streamOffset);
      const r = reader(payload, "primary keepalive", streamOffset);
      r.u8("tag");
      const walEnd = lsn(r.u64("walEnd"));
      const sendTime = pgTimestamp(r.i64("sendTime"));
      const replyRequested = flag(r, "replyRequested");
      return { kind: "PrimaryKeepalive", walEnd, sendTime, replyRequested };
    }
    default:
      throw tagError("server", payload, streamOffset);
  }
}

/** Decodes a CopyData payload sent by a replication client. */
export function parseClientReplicationMessage(payload: Buffer, streamOffset = 0): ClientReplicationMessage {
  switch (payload[0]) {
    case TAG_STATUS_UPDATE: {
      checkLength(payload, STATUS_UPDATE_BYTES, "standby status update", streamOffset);
      const r = reader(payload, "standby status update", streamOffset);
      r.u8("tag");
      const writeLsn = lsn(r.u64("write"));
      const flushLsn = lsn(r.u64("flush"));
      const applyLsn = lsn(r.u64("apply"));
      const sendTime = pgTimestamp(r.i64("sendTime"));
      const replyRequested = flag(r, "replyRequested");
      return { kind: "StandbyStatusUpdate", writeLsn, flushLsn, applyLsn, sendTime, replyRequested };
    }
    case TAG_HOT_STANDBY_FEEDBACK: {
      checkLength(payload, HOT_STANDBY_FEEDBACK_BYTES, "hot standby feedback", streamOffset);
      const r = reader(payload, "hot standby feedback", streamOffset);
      r.u8("tag");
      return {
        kind: "HotStandbyFeedback",
        sendTime: pgTimestamp(r.i64("sendTime")),
        xmin: r.u32("xmin"),
        xminEpoch: r.u32("xmin epoch"),
        catalogXmin: r.u32("catalog_xmin"),
        catalogXminEpoch: r.u32("catalog_xmin epoch"),
      };
    }
    case TAG_PAGESERVER_FEEDBACK: {
      checkLength(payload, PAGESERVER_FEEDBACK_BYTES, "pageserver feedback", streamOffset);
      const r = reader(payload, "pageserver feedback", streamOffset);
      r.u8("tag");
      return {
        kind: "PageserverFeedback",
        lastReceivedLsn: lsn(r.u64("lastReceivedLsn")),
        diskConsistentLsn: lsn(r.u64("diskConsistentLsn")),
        remoteConsistentLsn: lsn(r.u64("remoteConsistentLsn")),
        replyTime: pgTimestamp(r.i64("replyTime")),
      };
    }
    default:
      throw tagError("client", payload, streamOffset);
  }
}
