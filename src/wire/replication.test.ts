// Replication payloads inside CopyData: round trips (also through the
// framing parser, split at every offset), invalid cases, timestamps.

import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../lib/errors.js";
import { lsn, parseLsn } from "../lib/lsn.js";
import { BackendParser, FrontendParser } from "./parser.js";
import { PROTOCOL_VERSION_3_0, serializeBackend, serializeFrontend } from "./messages.js";
import {
  PG_EPOCH_UNIX_MS,
  XLOG_DATA_HEADER_BYTES,
  parseClientReplicationMessage,
  parseServerReplicationMessage,
  pgTimestamp,
  pgTimestampFromUnixMs,
  pgTimestampNow,
  pgTimestampNowMicros,
  pgTimestampToUnixMs,
  serializeReplicationCopyData,
  serializeReplicationMessage,
  serializeStatusUpdateCopyData,
  STATUS_UPDATE_COPY_DATA_BYTES,
  type ClientReplicationMessage,
  type ServerReplicationMessage,
} from "./replication.js";

const ts = pgTimestamp(784_111_222_333_444n);
const serverMsgs: ServerReplicationMessage[] = [
  { kind: "XLogData", dataStart: parseLsn("0/16B3748"), walEnd: parseLsn("0/16B4000"), sendTime: ts, data: Buffer.from([1, 2, 3, 0, 255]) },
  { kind: "XLogData", dataStart: lsn((1n << 64n) - 1n), walEnd: lsn(0), sendTime: pgTimestamp(-1n), data: Buffer.alloc(0) },
  { kind: "PrimaryKeepalive", walEnd: parseLsn("1/0"), sendTime: ts, replyRequested: true },
  { kind: "PrimaryKeepalive", walEnd: parseLsn("FFFFFFFF/FFFFFFFF"), sendTime: ts, replyRequested: false },
];
const clientMsgs: ClientReplicationMessage[] = [
  { kind: "StandbyStatusUpdate", writeLsn: parseLsn("0/3000060"), flushLsn: parseLsn("0/3000000"), applyLsn: lsn(0), sendTime: ts, replyRequested: false },
  { kind: "StandbyStatusUpdate", writeLsn: lsn(1), flushLsn: lsn(1), applyLsn: lsn(1), sendTime: ts, replyRequested: true },
  { kind: "HotStandbyFeedback", sendTime: ts, xmin: 0xfffffffe, xminEpoch: 1, catalogXmin: 0, catalogXminEpoch: 0 },
  {
    kind: "PageserverFeedback",
    lastReceivedLsn: parseLsn("0/5000000"),
    diskConsistentLsn: parseLsn("0/4000000"),
    remoteConsistentLsn: parseLsn("0/3000000"),
    replyTime: ts,
  },
];

test("server replication payloads round-trip, also inside CopyData split at every offset", () => {
  for (const m of serverMsgs) assert.deepEqual(parseServerReplicationMessage(serializeReplicationMessage(m)), m);
  const stream = Buffer.concat(serverMsgs.map((m) => serializeBackend({ kind: "CopyData", data: serializeReplicationMessage(m) })));
  for (let cut = 0; cut <= stream.length; cut++) {
    const p = new BackendParser();
    const got: ServerReplicationMessage[] = [];
    for (const chunk of [stream.subarray(0, cut), stream.subarray(cut)]) {
      p.push(chunk);
      for (let m = p.next(); m !== null; m = p.next()) {
        assert.equal(m.kind, "CopyData");
        if (m.kind === "CopyData") got.push(parseServerReplicationMessage(m.data));
      }
    }
    assert.deepEqual(got, serverMsgs, `split at ${cut}`);
  }
});

test("client replication payloads round-trip, also inside CopyData byte by byte", () => {
  for (const m of clientMsgs) assert.deepEqual(parseClientReplicationMessage(serializeReplicationMessage(m)), m);
  const startup = serializeFrontend({ kind: "StartupMessage", protocolVersion: PROTOCOL_VERSION_3_0, parameters: new Map([["user", "u"]]) });
  const stream = Buffer.concat([startup, ...clientMsgs.map((m) => serializeFrontend({ kind: "CopyData", data: serializeReplicationMessage(m) }))]);
  const p = new FrontendParser();
  const got: ClientReplicationMessage[] = [];
  for (let i = 0; i < stream.length; i++) {
    p.push(stream.subarray(i, i + 1));
    for (let m = p.next(); m !== null; m = p.next()) if (m.kind === "CopyData") got.push(parseClientReplicationMessage(m.data));
  }
  assert.deepEqual(got, clientMsgs);
});

test("layouts match PostgreSQL's byte for byte", () => {
  const k = serializeReplicationMessage(serverMsgs[2]!);
  assert.equal(k.length, 18);
  assert.equal(k.toString("hex"), "6b" + "0000000100000000" + ts.toString(16).padStart(16, "0") + "01");
  const w = serializeReplicationMessage(serverMsgs[0]!);
  assert.equal(w.length, XLOG_DATA_HEADER_BYTES + 5);
  assert.equal(w.subarray(0, 9).toString("hex"), "77" + "00000000016b3748");
  const r = serializeReplicationMessage(clientMsgs[0]!);
  assert.equal(r.length, 34);
  assert.equal(r.subarray(0, 17).toString("hex"), "72" + "0000000003000060" + "0000000003000000");
  assert.equal(serializeReplicationMessage(clientMsgs[2]!).length, 25);
  assert.equal(serializeReplicationMessage(clientMsgs[3]!).length, 33);
});

function violation(re: RegExp) {
  return (e: unknown) => e instanceof StrataError && e.code === "protocol_violation" && re.test(e.message);
}

test("one invalid case per payload kind", () => {
  const [w, , k] = serverMsgs.map(serializeReplicationMessage);
  const [r, , h, z] = clientMsgs.map(serializeReplicationMessage);
  // XLogData with a header cut short.
  assert.throws(() => parseServerReplicationMessage(w!.subarray(0, 20), 99), violation(/XLogData message at stream offset 99: sendTime needs 8 bytes/));
  // Keepalive with a trailing byte, and with a bad boolean.
  assert.throws(() => parseServerReplicationMessage(Buffer.concat([k!, Buffer.from([0])])), violation(/19 bytes, expected 18/));
  const badFlag = Buffer.from(k!);
  badFlag[17] = 2;
  assert.throws(() => parseServerReplicationMessage(badFlag), violation(/replyRequested byte is 2/));
  // Status update too short.
  assert.throws(() => parseClientReplicationMessage(r!.subarray(0, 33)), violation(/33 bytes, expected 34/));
  // Hot standby feedback too long; pageserver feedback too short.
  assert.throws(() => parseClientReplicationMessage(Buffer.concat([h!, Buffer.alloc(4)])), violation(/29 bytes, expected 25/));
  assert.throws(() => parseClientReplicationMessage(z!.subarray(0, 25)), violation(/pageserver feedback .* 25 bytes, expected 33/));
  // Unknown tags and empty payloads, in each direction; a client tag from the server and vice versa.
  assert.throws(() => parseServerReplicationMessage(Buffer.from("q")), violation(/from server .* unknown tag "q"/));
  assert.throws(() => parseServerReplicationMessage(Buffer.alloc(0)), violation(/unknown tag none \(empty CopyData\)/));
  assert.throws(() => parseServerReplicationMessage(r!), violation(/unknown tag "r"/));
  assert.throws(() => parseClientReplicationMessage(w!), violation(/from client .* unknown tag "w"/));
  assert.throws(() => parseClientReplicationMessage(Buffer.from([0x80])), violation(/unknown tag 0x80/));
});

test("PostgreSQL timestamps: microseconds since 2000-01-01 UTC", () => {
  assert.equal(PG_EPOCH_UNIX_MS, Date.UTC(2000, 0, 1));
  assert.equal(pgTimestampFromUnixMs(Date.UTC(2000, 0, 1)), 0n);
  assert.equal(pgTimestampFromUnixMs(Date.UTC(2000, 0, 2)), 86_400_000_000n);
  assert.equal(pgTimestampFromUnixMs(Date.UTC(1999, 11, 31, 23, 59, 59, 999)), -1000n);
  assert.equal(pgTimestampToUnixMs(pgTimestamp(86_400_000_000n)), Date.UTC(2000, 0, 2));
  const now = pgTimestampNow();
  assert.ok(Math.abs(pgTimestampToUnixMs(now) - Date.now()) < 1000);
});

test("serializeReplicationCopyData frames exactly like CopyData around serializeReplicationMessage", () => {
  for (const m of [...serverMsgs, ...clientMsgs]) {
    const framed = serializeReplicationCopyData(m);
    const payload = serializeReplicationMessage(m);
    assert.deepEqual(framed, serializeFrontend({ kind: "CopyData", data: payload }), m.kind);
    assert.deepEqual(framed, serializeBackend({ kind: "CopyData", data: payload }), m.kind);
  }
});

/** 64-bit values around the 2^53 and 2^32 edges where the number and BigInt routes meet. */
const EDGE_U64 = [0n, 1n, 0xffffffffn, 0x100000000n, (1n << 53n) - 1n, 1n << 53n, (1n << 53n) + 1n, (1n << 63n) - 1n, 1n << 63n, (1n << 64n) - 1n];
const EDGE_I64 = [0n, 1n, -1n, -(1n << 32n), (1n << 32n) - 1n, -(1n << 53n) + 1n, -(1n << 53n), -(1n << 53n) - 1n, (1n << 53n) - 1n, 1n << 53n, (1n << 63n) - 1n, -(1n << 63n)];

test("XLogData header fields read exactly on both sides of 2^53 (number and BigInt routes)", () => {
  for (const v of EDGE_U64) {
    for (const t of EDGE_I64) {
      const m: ServerReplicationMessage = { kind: "XLogData", dataStart: lsn(v), walEnd: lsn(EDGE_U64[EDGE_U64.length - 1 - EDGE_U64.indexOf(v)]!), sendTime: pgTimestamp(t), data: Buffer.from([7]) };
      const bytes = serializeReplicationMessage(m);
      // The encoder is the BigInt one: the fast reader must agree with Buffer's own 64-bit reads.
      assert.equal(bytes.readBigUInt64BE(1), v);
      assert.deepEqual(parseServerReplicationMessage(bytes), m, `dataStart ${v} sendTime ${t}`);
    }
  }
  // Exactly the header and no WAL: an empty data view, not an error.
  const empty = serializeReplicationMessage({ kind: "XLogData", dataStart: lsn(8n), walEnd: lsn(8n), sendTime: pgTimestamp(0n), data: Buffer.alloc(0) });
  const got = parseServerReplicationMessage(empty);
  assert.equal(got.kind === "XLogData" && got.data.length, 0);
  // One byte short of the header, at every cut: the reader names the field that does not fit.
  for (let cut = 1; cut < XLOG_DATA_HEADER_BYTES; cut++) {
    assert.throws(() => parseServerReplicationMessage(empty.subarray(0, cut), 7), violation(/XLogData message at stream offset 7: \w+ needs \d+ bytes/), `cut ${cut}`);
  }
});

test("status update LSNs are written exactly on both sides of 2^53", () => {
  for (const v of EDGE_U64) {
    const m: ClientReplicationMessage = { kind: "StandbyStatusUpdate", writeLsn: lsn(v), flushLsn: lsn(v), applyLsn: lsn(0n), sendTime: ts, replyRequested: false };
    const bytes = serializeReplicationMessage(m);
    assert.equal(bytes.readBigUInt64BE(1), v);
    assert.equal(bytes.readBigUInt64BE(9), v);
    assert.deepEqual(parseClientReplicationMessage(bytes), m);
  }
});

test("serializeStatusUpdateCopyData: the same bytes as the general serializer, round trips, refuses an inexact time", () => {
  const times = [0, 1, -1, 784_111_222_333_444, -(2 ** 40) - 3, 2 ** 53 - 1, -(2 ** 53) + 1, 2 ** 32, -(2 ** 32)];
  for (const v of EDGE_U64) {
    for (const t of times) {
      for (const reply of [false, true]) {
        const write = lsn(v);
        const flush = lsn(v === 0n ? 0n : v - 1n);
        const framed = serializeStatusUpdateCopyData(write, flush, flush, t, reply);
        assert.equal(framed.length, STATUS_UPDATE_COPY_DATA_BYTES);
        const m: ClientReplicationMessage = { kind: "StandbyStatusUpdate", writeLsn: write, flushLsn: flush, applyLsn: flush, sendTime: pgTimestamp(BigInt(t)), replyRequested: reply };
        assert.deepEqual(framed, serializeReplicationCopyData(m), `write ${v} time ${t}`);
        // And through the framing parser back to the message.
        const p = new FrontendParser();
        p.push(serializeFrontend({ kind: "StartupMessage", protocolVersion: PROTOCOL_VERSION_3_0, parameters: new Map([["user", "u"]]) }));
        p.push(framed);
        assert.equal(p.next()?.kind, "StartupMessage");
        const d = p.next();
        assert.ok(d !== null && d.kind === "CopyData");
        assert.deepEqual(parseClientReplicationMessage(d.data), m);
      }
    }
  }
  for (const bad of [0.5, 2 ** 53, -(2 ** 53), NaN, Infinity]) {
    assert.throws(() => serializeStatusUpdateCopyData(lsn(1n), lsn(1n), lsn(1n), bad, false), (e: unknown) => e instanceof StrataError && e.code === "invalid_argument");
  }
});

test("pgTimestampNowMicros is pgTimestampNow as a number", () => {
  const a = pgTimestampNow();
  const n = pgTimestampNowMicros();
  const b = pgTimestampNow();
  assert.ok(Number.isSafeInteger(n));
  assert.ok(BigInt(n) >= a && BigInt(n) <= b, `${a} <= ${n} <= ${b}`);
});
