// Round trips and invalid cases for every libpq message, through the
// incremental parsers: whole, split at every byte offset, and byte by byte.

import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../lib/errors.js";
import {
  PROTOCOL_VERSION_3_0,
  decodePasswordMessage,
  decodeSASLInitialResponse,
  parseReplicationParameter,
  parseStartupOptionSettings,
  passwordMessage,
  saslInitialResponse,
  saslResponse,
  serializeBackend,
  serializeFrontend,
  splitStartupOptions,
  type BackendMessage,
  type FrontendMessage,
} from "./messages.js";
import { BackendParser, FrontendParser, MAX_STARTUP_PACKET_BYTES, type ParserOptions } from "./parser.js";

// ---------------------------------------------------------------------------
// helpers

/** Rewrites the Int32 length at `at` (1 for typed messages, 0 for startup packets). */
function withLength(buf: Buffer, length: number, at = 1): Buffer {
  const b = Buffer.from(buf);
  b.writeInt32BE(length, at);
  return b;
}

/** Appends bytes to the body, fixing the length. */
function appendBody(buf: Buffer, extra: Buffer, at = 1): Buffer {
  const b = Buffer.concat([buf, extra]);
  b.writeInt32BE(b.readInt32BE(at) + extra.length, at);
  return b;
}

/** Removes `n` bytes from the end of the body, fixing the length. */
function truncateBody(buf: Buffer, n: number, at = 1): Buffer {
  const b = Buffer.from(buf.subarray(0, buf.length - n));
  b.writeInt32BE(b.readInt32BE(at) - n, at);
  return b;
}

/** Frames a typed message by hand. */
function frame(code: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(code, 0, "latin1");
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

/** Overwrites one byte. */
function patch(buf: Buffer, offset: number, value: number): Buffer {
  const b = Buffer.from(buf);
  b[offset] = value;
  return b;
}

type AnyParser = { push(b: Buffer): void; next(): unknown };

function drain(p: AnyParser): unknown[] {
  const out: unknown[] = [];
  for (let m = p.next(); m !== null; m = p.next()) out.push(m);
  return out;
}

function parseChunks(make: () => AnyParser, chunks: Buffer[]): unknown[] {
  const p = make();
  const out: unknown[] = [];
  for (const c of chunks) {
    p.push(c);
    out.push(...drain(p));
  }
  return out;
}

/** Parses `stream` whole, split in two at every offset, and byte by byte; all must equal `expected`. */
function checkAllSplits(make: () => AnyParser, stream: Buffer, expected: unknown[]): number {
  let parses = 0;
  assert.deepEqual(parseChunks(make, [stream]), expected);
  for (let cut = 0; cut <= stream.length; cut++) {
    assert.deepEqual(parseChunks(make, [stream.subarray(0, cut), stream.subarray(cut)]), expected, `split at ${cut}`);
    parses++;
  }
  const bytes: Buffer[] = [];
  for (let i = 0; i < stream.length; i++) bytes.push(stream.subarray(i, i + 1));
  assert.deepEqual(parseChunks(make, bytes), expected, "byte by byte");
  return parses + 2;
}

function expectViolation(make: () => AnyParser, bytes: Buffer, why: RegExp): void {
  const p = make();
  p.push(bytes);
  assert.throws(
    () => drain(p),
    (e: unknown) => e instanceof StrataError && e.code === "protocol_violation" && why.test(e.message),
    `expected protocol_violation matching ${why}`,
  );
  // The parser stays poisoned: framing is lost.
  assert.throws(() => p.next(), StrataError);
}

/** Parses invalid bytes whole and byte by byte: both must fail the same way (never "need more" forever). */
function checkInvalid(make: () => AnyParser, prefix: Buffer, bad: Buffer, why: RegExp): void {
  expectViolation(make, Buffer.concat([prefix, bad]), why);
  const p = make();
  p.push(prefix);
  drain(p);
  let threw: unknown = null;
  for (let i = 0; i < bad.length && threw === null; i++) {
    try {
      p.push(bad.subarray(i, i + 1));
      drain(p);
    } catch (e) {
      threw = e;
    }
  }
  assert.ok(threw instanceof StrataError && threw.code === "protocol_violation" && why.test(threw.message), `byte by byte: ${String(threw)}`);
}

// ---------------------------------------------------------------------------
// backend messages

interface Case<M> {
  msg: M;
  /** Makes an invalid variant of the serialized message. */
  bad: (valid: Buffer) => Buffer;
  why: RegExp;
  opts?: ParserOptions;
}

const SMALL_LIMIT: ParserOptions = { maxMessageBytes: 64 };

const backendCases: Case<BackendMessage>[] = [
  { msg: { kind: "AuthenticationOk" }, bad: (b) => appendBody(b, Buffer.from([0])), why: /1 unexpected trailing bytes/ },
  {
    msg: { kind: "AuthenticationCleartextPassword" },
    bad: (b) => patch(b, 8, 4), // AUTH_REQ_CRYPT, long gone
    why: /unknown authentication request code 4/,
  },
  {
    msg: { kind: "AuthenticationMD5Password", salt: Buffer.from([1, 2, 3, 4]) },
    bad: (b) => truncateBody(b, 1),
    why: /salt needs 4 bytes/,
  },
  {
    msg: { kind: "AuthenticationSASL", mechanisms: ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"] },
    bad: (b) => truncateBody(b, 1), // drop the list terminator: the last name's NUL is now the end
    why: /no NUL terminator/,
  },
  {
    msg: { kind: "AuthenticationSASLContinue", data: Buffer.from("r=abc,s=c2FsdA==,i=4096") },
    bad: (b) => withLength(b.subarray(0, 7), 6), // code cut to 2 bytes
    why: /authentication code needs 4 bytes/,
  },
  {
    msg: { kind: "AuthenticationSASLFinal", data: Buffer.from("v=xyz") },
    bad: (b) => withLength(b, 3),
    why: /length 3 is below the minimum 4/,
  },
  {
    msg: { kind: "AuthenticationUnsupported", method: 7, data: Buffer.alloc(0) },
    bad: (b) => patch(b, 8, 99),
    why: /unknown authentication request code 99/,
  },
  {
    msg: { kind: "ParameterStatus", name: "server_version", value: "15.18" },
    bad: (b) => truncateBody(b, 1),
    why: /value at body offset 15 has no NUL terminator/,
  },
  {
    msg: { kind: "BackendKeyData", processId: 12345, secretKey: -559038737 },
    bad: (b) => appendBody(b, Buffer.from([7])),
    why: /trailing/,
  },
  { msg: { kind: "ReadyForQuery", status: "I" }, bad: (b) => patch(b, 5, 0x58), why: /transaction status "X"/ },
  { msg: { kind: "ReadyForQuery", status: "T" }, bad: (b) => truncateBody(b, 1), why: /transaction status needs 1 bytes/ },
  { msg: { kind: "ReadyForQuery", status: "E" }, bad: (b) => appendBody(b, Buffer.from("E")), why: /trailing/ },
  {
    msg: {
      kind: "RowDescription",
      fields: [
        { name: "systemid", tableOid: 0, columnAttr: 0, typeOid: 25, typeSize: -1, typeModifier: -1, format: 0 },
        { name: "timeline", tableOid: 16384, columnAttr: 2, typeOid: 23, typeSize: 4, typeModifier: -1, format: 1 },
      ],
    },
    bad: (b) => patch(b, b.length - 1, 2), // last field's format code 1 -> 2
    why: /format code 2 of field 1/,
  },
  {
    msg: { kind: "RowDescription", fields: [] },
    bad: (b) => patch(b, 6, 1), // claims one field, has none
    why: /name of field 0/,
  },
  {
    msg: { kind: "DataRow", values: [Buffer.from("6823"), null, Buffer.alloc(0), Buffer.from([0, 255])] },
    bad: (b) => withLength(patch(b, 10, 0x7f), b.length - 1), // first column claims a huge length
    why: /value of column 0 needs/,
  },
  {
    msg: { kind: "DataRow", values: [] },
    bad: (b) => patch(patch(b, 5, 0xff), 6, 0xff),
    why: /column count -1 is negative/,
  },
  { msg: { kind: "CommandComplete", tag: "SELECT 1" }, bad: (b) => truncateBody(b, 1), why: /command tag .* no NUL terminator/ },
  { msg: { kind: "EmptyQueryResponse" }, bad: (b) => appendBody(b, Buffer.from([1])), why: /trailing/ },
  {
    msg: {
      kind: "ErrorResponse",
      fields: {
        severity: "ERREUR",
        severityNonLocalized: "ERROR",
        code: "42P01",
        message: 'relation "nope" does not exist',
        detail: "d",
        hint: "h",
        position: "15",
        internalPosition: "3",
        internalQuery: "q",
        where: "w",
        schema: "public",
        table: "nope",
        column: "c",
        dataType: "int4",
        constraint: "pk",
        file: "parse_relation.c",
        line: "1384",
        routine: "parserOpenTable",
      },
    },
    bad: () => frame("E", Buffer.from("SERROR\0C42P01\0\0")), // no M field
    why: /missing one of the always-present fields/,
  },
  {
    msg: { kind: "NoticeResponse", fields: { severity: "NOTICE", code: "00000", message: "hello" } },
    bad: (b) => truncateBody(b, 1), // no final field terminator
    why: /field code needs 1 bytes/,
  },
  {
    msg: { kind: "CopyInResponse", format: 0, columnFormats: [0, 0] },
    bad: (b) => patch(b, 5, 5),
    why: /overall format 5/,
  },
  {
    msg: { kind: "CopyOutResponse", format: 1, columnFormats: [1] },
    bad: (b) => patch(b, 9, 2),
    why: /format 2 of column 0/,
  },
  {
    msg: { kind: "CopyBothResponse", format: 0, columnFormats: [] },
    bad: (b) => patch(patch(b, 6, 0x80), 7, 0),
    why: /column count -32768 is negative/,
  },
  {
    msg: { kind: "CopyData", data: Buffer.from("some WAL bytes") },
    bad: () => serializeBackend({ kind: "CopyData", data: Buffer.alloc(100) }),
    why: /CopyData length 104 exceeds the limit of 64 bytes/,
    opts: SMALL_LIMIT,
  },
  { msg: { kind: "CopyDone" }, bad: (b) => withLength(b, -1), why: /length -1 is below the minimum/ },
  {
    msg: { kind: "NotificationResponse", processId: 42, channel: "chan", payload: "" },
    bad: (b) => truncateBody(b, 2),
    why: /payload|channel/,
  },
  {
    msg: { kind: "NegotiateProtocolVersion", newestMinorVersion: 0, unrecognizedOptions: ["_pq_.compression"] },
    bad: (b) => patch(b, 6, 2),
    why: /protocol major version 2 is not 3/,
  },
];

test("every backend message kind has a case", () => {
  const kinds = new Set(backendCases.map((c) => c.msg.kind));
  assert.equal(kinds.size, 23);
});

test("backend messages round-trip whole, split at every offset and byte by byte", () => {
  const msgs = backendCases.map((c) => c.msg);
  const stream = Buffer.concat(msgs.map(serializeBackend));
  const parses = checkAllSplits(() => new BackendParser(), stream, msgs);
  assert.ok(parses > stream.length);
  // Each message alone, too (catches length errors that a following message would mask).
  for (const m of msgs) checkAllSplits(() => new BackendParser(), serializeBackend(m), [m]);
});

test("every backend case has an invalid variant that is a protocol violation", () => {
  for (const c of backendCases) {
    const valid = serializeBackend(c.msg);
    const bad = c.bad(valid);
    assert.notDeepEqual(bad, valid, c.msg.kind);
    // Preceded by a valid message, so offsets in errors are not trivially 0.
    checkInvalid(() => new BackendParser(c.opts), serializeBackend({ kind: "ReadyForQuery", status: "I" }), bad, c.why);
  }
});

test("backend parser rejects unknown type codes on their first byte, with the stream offset", () => {
  const prefix = serializeBackend({ kind: "CommandComplete", tag: "X" });
  const p = new BackendParser();
  p.push(Buffer.concat([prefix, Buffer.from("P")])); // ParseComplete-style code we never accept
  assert.throws(() => drain(p), /Invalid backend message at stream offset 7: unknown message type "P"/);
  expectViolation(() => new BackendParser(), Buffer.from([0x00]), /unknown message type 0x00/);
  expectViolation(() => new BackendParser(), Buffer.from("HTTP/1.1 400 Bad Request\r\n"), /unknown message type "H"|CopyOutResponse length/);
});

test("backend parser: oversized length is refused before the body arrives", () => {
  const p = new BackendParser({ maxMessageBytes: 1024 });
  p.push(Buffer.from([0x64, 0x7f, 0xff, 0xff, 0xff])); // CopyData claiming 2 GiB
  assert.throws(() => p.next(), /CopyData length 2147483647 exceeds the limit of 1024 bytes/);
  assert.throws(() => new BackendParser({ maxMessageBytes: 2 ** 31 }), /maxMessageBytes/);
});

test("backend parser keeps leftovers, reports need-more and bounded buffering", () => {
  const m1 = serializeBackend({ kind: "CopyData", data: Buffer.alloc(1000, 7) });
  const p = new BackendParser();
  p.push(m1.subarray(0, 600));
  assert.equal(p.next(), null);
  assert.equal(p.bufferedBytes, 600);
  p.push(m1.subarray(600));
  const got = p.next() as { data: Buffer };
  assert.equal(got.data.length, 1000);
  assert.equal(p.bufferedBytes, 0);
  assert.equal(p.streamOffset, m1.length);
  assert.equal(p.next(), null);
});

// ---------------------------------------------------------------------------
// frontend messages

const startup: FrontendMessage = {
  kind: "StartupMessage",
  protocolVersion: PROTOCOL_VERSION_3_0,
  parameters: new Map([
    ["user", "postgres"],
    ["database", "replication"],
    ["replication", "true"],
    ["options", "-c tenant_id=ab12 --timeline-id=cd34"],
    ["application_name", "sk_1"],
  ]),
};

const startupPhaseCases: Case<FrontendMessage>[] = [
  { msg: { kind: "SSLRequest" }, bad: (b) => withLength(b, 7, 0), why: /startup packet length 7 is outside/ },
  { msg: { kind: "GSSENCRequest" }, bad: (b) => appendBody(b, Buffer.from([0, 0, 0, 0]), 0), why: /4 unexpected trailing bytes/ },
  {
    msg: { kind: "CancelRequest", processId: 4242, secretKey: 77 },
    bad: (b) => truncateBody(b, 4, 0),
    why: /secret key needs 4 bytes/,
  },
  { msg: startup, bad: (b) => truncateBody(b, 1, 0), why: /parameter name .* no NUL terminator/ },
];

const typedFrontendCases: Case<FrontendMessage>[] = [
  { msg: { kind: "AuthResponse", data: Buffer.from("secret\0") }, bad: (b) => withLength(b, 0), why: /length 0 is below/ },
  { msg: { kind: "Query", sql: "IDENTIFY_SYSTEM" }, bad: (b) => truncateBody(b, 1), why: /query string .* no NUL terminator/ },
  {
    msg: { kind: "CopyData", data: Buffer.from("r....") },
    bad: () => serializeFrontend({ kind: "CopyData", data: Buffer.alloc(61) }),
    why: /CopyData length 65 exceeds the limit of 64 bytes/,
    opts: SMALL_LIMIT,
  },
  { msg: { kind: "CopyDone" }, bad: (b) => appendBody(b, Buffer.from([0])), why: /trailing/ },
  { msg: { kind: "CopyFail", message: "aborted" }, bad: (b) => truncateBody(b, 1), why: /error message .* no NUL/ },
  { msg: { kind: "Terminate" }, bad: (b) => patch(b, 0, 0x50), why: /unknown message type "P"/ },
];

test("frontend messages round-trip, startup phase first, split at every offset and byte by byte", () => {
  const msgs = [...startupPhaseCases, ...typedFrontendCases].map((c) => c.msg);
  const stream = Buffer.concat(msgs.map(serializeFrontend));
  checkAllSplits(() => new FrontendParser(), stream, msgs);
});

test("every frontend case has an invalid variant that is a protocol violation", () => {
  for (const c of startupPhaseCases) {
    const bad = c.bad(serializeFrontend(c.msg));
    checkInvalid(() => new FrontendParser(c.opts), serializeFrontend({ kind: "SSLRequest" }), bad, c.why);
  }
  const startupBytes = serializeFrontend(startup);
  for (const c of typedFrontendCases) {
    const bad = c.bad(serializeFrontend(c.msg));
    checkInvalid(() => new FrontendParser(c.opts), startupBytes, bad, c.why);
  }
});

test("frontend startup phase: limits, versions and phase switch", () => {
  // Longer than MAX_STARTUP_PACKET_LENGTH: refused on the length alone.
  const p = new FrontendParser();
  const head = Buffer.alloc(4);
  head.writeInt32BE(MAX_STARTUP_PACKET_BYTES + 1);
  p.push(head);
  assert.throws(() => p.next(), /startup packet length 10001 is outside \[8, 10000\]/);
  // Protocol 2.0 is refused.
  const v2 = serializeFrontend({ ...startup, protocolVersion: 2 << 16 } as FrontendMessage);
  expectViolation(() => new FrontendParser(), v2, /unsupported frontend protocol 2\.0/);
  // A typed message before the StartupMessage is read as a (bad) startup length.
  expectViolation(() => new FrontendParser(), serializeFrontend({ kind: "Query", sql: "SELECT 1" }), /startup packet length/);
  // A StartupMessage after the startup phase is not a typed message.
  expectViolation(() => new FrontendParser(), Buffer.concat([serializeFrontend(startup), serializeFrontend(startup)]), /unknown message type 0x00/);
  const fp = new FrontendParser();
  assert.equal(fp.inStartupPhase, true);
  fp.push(serializeFrontend({ kind: "SSLRequest" }));
  fp.next();
  assert.equal(fp.inStartupPhase, true);
  fp.push(serializeFrontend(startup));
  fp.next();
  assert.equal(fp.inStartupPhase, false);
});

test("password family ('p') helpers round-trip and reject malformed bodies", () => {
  const fp = new FrontendParser();
  fp.push(serializeFrontend(startup));
  fp.next();
  fp.push(Buffer.concat([passwordMessage("pencil"), saslInitialResponse("SCRAM-SHA-256", Buffer.from("n,,n=,r=abc")), saslInitialResponse("X", null), saslResponse(Buffer.from("c=biws"))]));
  const [pw, init, initNull, resp] = drain(fp) as { kind: string; data: Buffer }[];
  assert.equal(decodePasswordMessage(pw!.data), "pencil");
  assert.deepEqual(decodeSASLInitialResponse(init!.data), { mechanism: "SCRAM-SHA-256", data: Buffer.from("n,,n=,r=abc") });
  assert.deepEqual(decodeSASLInitialResponse(initNull!.data), { mechanism: "X", data: null });
  assert.deepEqual(resp!.data, Buffer.from("c=biws"));
  assert.throws(() => decodePasswordMessage(Buffer.from("nonul")), /no NUL terminator/);
  assert.throws(() => decodePasswordMessage(Buffer.from("a\0b")), /trailing/);
  const badLen = Buffer.from("M\0\0\0\0\x10abc", "latin1"); // claims 16 bytes of data, has 3
  assert.throws(() => decodeSASLInitialResponse(badLen), /initial response needs 16 bytes/);
  const negLen = Buffer.from("M\0\xff\xff\xff\xfe", "latin1");
  assert.throws(() => decodeSASLInitialResponse(negLen), /length -2 is invalid/);
});

test("serializers refuse embedded NULs instead of writing a split C-string", () => {
  assert.throws(() => serializeBackend({ kind: "CommandComplete", tag: "a\0b" }), (e: unknown) => e instanceof StrataError && e.code === "invalid_argument");
  assert.throws(() => serializeFrontend({ kind: "Query", sql: "SELECT '\0'" }), /NUL byte/);
});

test("startup options and replication parameter", () => {
  assert.deepEqual(splitStartupOptions("  -c a=1\t--b-c=x\\ y  -cd=\\\\ "), ["-c", "a=1", "--b-c=x y", "-cd=\\"]);
  assert.deepEqual(
    [...parseStartupOptionSettings(splitStartupOptions("-c tenant_id=ab12 --timeline-id=cd34 -cx.y=z=w"))],
    [
      ["tenant_id", "ab12"],
      ["timeline_id", "cd34"],
      ["x.y", "z=w"],
    ],
  );
  assert.throws(() => parseStartupOptionSettings(["-c"]), /"-c" needs an argument/);
  assert.throws(() => parseStartupOptionSettings(["-d", "5"]), /unexpected argument "-d"/);
  assert.throws(() => parseStartupOptionSettings(["-c", "novalue"]), /is not name=value/);
  for (const v of ["true", "on", "yes", "1", "t", "TRUE", "y"]) assert.equal(parseReplicationParameter(v), "physical", v);
  for (const v of ["false", "off", "no", "0", "f", "of"]) assert.equal(parseReplicationParameter(v), "none", v);
  assert.equal(parseReplicationParameter("database"), "logical");
  assert.equal(parseReplicationParameter(undefined), "none");
  for (const v of ["o", "Database", "2", "", "maybe"]) assert.throws(() => parseReplicationParameter(v), /invalid value for parameter "replication"/, v);
});
