/**
 * libpq protocol 3.0 messages: typed values, serializers and body decoders,
 * for both directions.
 *
 * This module owns the byte layout of every message strata sends or accepts
 * (PostgreSQL's doc/src/sgml/protocol.sgml, "Message Formats"; pqcomm.h for
 * the startup-phase codes). The framing parser (`parser.ts`) cuts a byte
 * stream into (type code, body) pairs and calls the decoders here; the
 * serializers produce complete framed messages ready for `socket.write`.
 * Writer and reader of each message live side by side and are tested as
 * round trips plus an invalid case each (`messages.test.ts`).
 *
 * Invariants:
 * * Decoders are pure and bounds-checked (`MessageReader`): every body must be
 *   consumed exactly; a short body, a missing C-string terminator, a bad enum
 *   value or trailing bytes is `StrataError("protocol_violation")`.
 * * Strings are UTF-8: strata's client always asks for client_encoding UTF8,
 *   and strata's servers announce it.
 * * The `p` frontend message is ambiguous on the wire (PasswordMessage,
 *   SASLInitialResponse and SASLResponse share the code); it decodes to an
 *   opaque `AuthResponse` and the authentication state machine interprets it
 *   with `decodePasswordMessage` / `decodeSASLInitialResponse`.
 * * Startup-phase packets (StartupMessage, SSLRequest, GSSENCRequest,
 *   CancelRequest) have no type byte; they are recognised by the Int32 code
 *   after the length.
 */

import { MessageReader, MessageWriter, type BodyContext } from "./buffer.js";
import { StrataError } from "../lib/errors.js";

// ---------------------------------------------------------------------------
// Startup-phase codes (pqcomm.h)

/** PG_PROTOCOL(3,0): the only protocol version PostgreSQL 15 speaks. */
export const PROTOCOL_VERSION_3_0 = (3 << 16) | 0;
/** CANCEL_REQUEST_CODE = PG_PROTOCOL(1234,5678). */
export const CANCEL_REQUEST_CODE = (1234 << 16) | 5678;
/** NEGOTIATE_SSL_CODE = PG_PROTOCOL(1234,5679). */
export const SSL_REQUEST_CODE = (1234 << 16) | 5679;
/** NEGOTIATE_GSS_CODE = PG_PROTOCOL(1234,5680). */
export const GSSENC_REQUEST_CODE = (1234 << 16) | 5680;

// Authentication request codes (pqcomm.h AUTH_REQ_*).
const AUTH_OK = 0;
const AUTH_KRB5 = 2;
const AUTH_CLEARTEXT = 3;
const AUTH_MD5 = 5;
const AUTH_SCM_CREDS = 6;
const AUTH_GSS = 7;
const AUTH_GSS_CONT = 8;
const AUTH_SSPI = 9;
const AUTH_SASL = 10;
const AUTH_SASL_CONTINUE = 11;
const AUTH_SASL_FINAL = 12;

// ---------------------------------------------------------------------------
// ErrorResponse / NoticeResponse fields (postgres_ext.h PG_DIAG_*)

export interface ErrorFields {
  /** S: localized severity (ERROR, FATAL, PANIC, WARNING, NOTICE, ...). Always present. */
  severity: string;
  /** V: non-localized severity (PostgreSQL 9.6+). */
  severityNonLocalized?: string;
  /** C: SQLSTATE code. Always present. */
  code: string;
  /** M: primary message. Always present. */
  message: string;
  detail?: string; // D
  hint?: string; // H
  position?: string; // P
  internalPosition?: string; // p
  internalQuery?: string; // q
  where?: string; // W
  schema?: string; // s
  table?: string; // t
  column?: string; // c
  dataType?: string; // d
  constraint?: string; // n
  file?: string; // F
  line?: string; // L
  routine?: string; // R
}

type ErrorFieldName = keyof ErrorFields;

/** Field code <-> property, in the order PostgreSQL sends them. */
const ERROR_FIELD_CODES: ReadonlyArray<readonly [string, ErrorFieldName]> = [
  ["S", "severity"],
  ["V", "severityNonLocalized"],
  ["C", "code"],
  ["M", "message"],
  ["D", "detail"],
  ["H", "hint"],
  ["P", "position"],
  ["p", "internalPosition"],
  ["q", "internalQuery"],
  ["W", "where"],
  ["s", "schema"],
  ["t", "table"],
  ["c", "column"],
  ["d", "dataType"],
  ["n", "constraint"],
  ["F", "file"],
  ["L", "line"],
  ["R", "routine"],
];
const ERROR_FIELD_BY_CODE = new Map<number, ErrorFieldName>(ERROR_FIELD_CODES.map(([c, n]) => [c.charCodeAt(0), n]));

// ---------------------------------------------------------------------------
// Message types

export interface FieldDescription {
  name: string;
  tableOid: number;
  columnAttr: number;
  typeOid: number;
  typeSize: number;
  typeModifier: number;
  /** 0 text, 1 binary. */
  format: number;
}

export type TransactionStatus = "I" | "T" | "E";

/** Messages a server sends (decoded by our client side). */
export type BackendMessage =
  | { kind: "AuthenticationOk" }
  | { kind: "AuthenticationCleartextPassword" }
  | { kind: "AuthenticationMD5Password"; salt: Buffer }
  | { kind: "AuthenticationSASL"; mechanisms: string[] }
  | { kind: "AuthenticationSASLContinue"; data: Buffer }
  | { kind: "AuthenticationSASLFinal"; data: Buffer }
  /** Kerberos, SCM, GSS and SSPI requests: valid protocol, not supported by strata. */
  | { kind: "AuthenticationUnsupported"; method: number; data: Buffer }
  | { kind: "ParameterStatus"; name: string; value: string }
  | { kind: "BackendKeyData"; processId: number; secretKey: number }
  | { kind: "ReadyForQuery"; status: TransactionStatus }
  | { kind: "RowDescription"; fields: FieldDescription[] }
  | { kind: "DataRow"; values: (Buffer | null)[] }
  | { kind: "CommandComplete"; tag: string }
  | { kind: "EmptyQueryResponse" }
  | { kind: "ErrorResponse"; fields: ErrorFields }
  | { kind: "NoticeResponse"; fields: ErrorFields }
  | { kind: "CopyInResponse"; format: number; columnFormats: number[] }
  | { kind: "CopyOutResponse"; format: number; columnFormats: number[] }
  | { kind: "CopyBothResponse"; format: number; columnFormats: number[] }
  | { kind: "CopyData"; data: Buffer }
  | { kind: "CopyDone" }
  | { kind: "NotificationResponse"; processId: number; channel: string; payload: string }
  | { kind: "NegotiateProtocolVersion"; newestMinorVersion: number; unrecognizedOptions: string[] };

/** Messages a client sends (decoded by our server side). */
export type FrontendMessage =
  | { kind: "StartupMessage"; protocolVersion: number; parameters: Map<string, string> }
  | { kind: "SSLRequest" }
  | { kind: "GSSENCRequest" }
  | { kind: "CancelRequest"; processId: number; secretKey: number }
  /** `p`: PasswordMessage, SASLInitialResponse or SASLResponse, depending on the auth state. */
  | { kind: "AuthResponse"; data: Buffer }
  | { kind: "Query"; sql: string }
  | { kind: "CopyData"; data: Buffer }
  | { kind: "CopyDone" }
  | { kind: "CopyFail"; message: string }
  | { kind: "Terminate" };

export type BackendMessageKind = BackendMessage["kind"];
export type FrontendMessageKind = FrontendMessage["kind"];

/** Type codes a server may send, with the name used in errors. */
export const BACKEND_TYPE_CODES: ReadonlyMap<string, string> = new Map([
  ["R", "Authentication"],
  ["S", "ParameterStatus"],
  ["K", "BackendKeyData"],
  ["Z", "ReadyForQuery"],
  ["T", "RowDescription"],
  ["D", "DataRow"],
  ["C", "CommandComplete"],
  ["I", "EmptyQueryResponse"],
  ["E", "ErrorResponse"],
  ["N", "NoticeResponse"],
  ["G", "CopyInResponse"],
  ["H", "CopyOutResponse"],
  ["W", "CopyBothResponse"],
  ["d", "CopyData"],
  ["c", "CopyDone"],
  ["A", "NotificationResponse"],
  ["v", "NegotiateProtocolVersion"],
]);

/** Type codes a client may send after the startup packet. */
export const FRONTEND_TYPE_CODES: ReadonlyMap<string, string> = new Map([
  ["p", "PasswordMessage"],
  ["Q", "Query"],
  ["d", "CopyData"],
  ["c", "CopyDone"],
  ["f", "CopyFail"],
  ["X", "Terminate"],
]);

// ---------------------------------------------------------------------------
// Serializers: backend messages

function writeErrorFields(w: MessageWriter, fields: ErrorFields): void {
  for (const [code, name] of ERROR_FIELD_CODES) {
    const v = fields[name];
    if (v === undefined) continue;
    w.u8(code.charCodeAt(0)).cstring(v);
  }
  w.u8(0);
}

function writeCopyResponse(code: string, format: number, columnFormats: number[]): Buffer {
  const w = new MessageWriter(code).u8(format).i16(columnFormats.length);
  for (const f of columnFormats) w.i16(f);
  return w.finish();
}

/** Serializes one backend message into a framed buffer. */
export function serializeBackend(m: BackendMessage): Buffer {
  switch (m.kind) {
    case "AuthenticationOk":
      return new MessageWriter("R").i32(AUTH_OK).finish();
    case "AuthenticationCleartextPassword":
      return new MessageWriter("R").i32(AUTH_CLEARTEXT).finish();
    case "AuthenticationMD5Password":
      if (m.salt.length !== 4) throw new StrataError("invalid_argument", `MD5 salt must be 4 bytes, got ${m.salt.length}`);
      return new MessageWriter("R").i32(AUTH_MD5).bytes(m.salt).finish();
    case "AuthenticationSASL": {
      const w = new MessageWriter("R").i32(AUTH_SASL);
      for (const mech of m.mechanisms) {
        if (mech === "") throw new StrataError("invalid_argument", "SASL mechanism name must not be empty");
        w.cstring(mech);
      }
      return w.u8(0).finish();
    }
    case "AuthenticationSASLContinue":
      return new MessageWriter("R").i32(AUTH_SASL_CONTINUE).bytes(m.data).finish();
    case "AuthenticationSASLFinal":
      return new MessageWriter("R").i32(AUTH_SASL_FINAL).bytes(m.data).finish();
    case "AuthenticationUnsupported":
      return new MessageWriter("R").i32(m.method).bytes(m.data).finish();
    case "ParameterStatus":
      return new MessageWriter("S").cstring(m.name).cstring(m.value).finish();
    case "BackendKeyData":
      return new MessageWriter("K").i32(m.processId).i32(m.secretKey).finish();
    case "ReadyForQuery":
      return new MessageWriter("Z").u8(m.status.charCodeAt(0)).finish();
    case "RowDescription": {
      const w = new MessageWriter("T").i16(m.fields.length);
      for (const f of m.fields) {
        w.cstring(f.name).u32(f.tableOid).i16(f.columnAttr).u32(f.typeOid).i16(f.typeSize).i32(f.typeModifier);
        w.i16(f.format);
      }
      return w.finish();
    }
    case "DataRow": {
      const w = new MessageWriter("D").i16(m.values.length);
      for (const v of m.values) {
        if (v === null) w.i32(-1);
        else w.i32(v.length).bytes(v);
      }
      return w.finish();
    }
    case "CommandComplete":
      return new MessageWriter("C").cstring(m.tag).finish();
    case "EmptyQueryResponse":
      return new MessageWriter("I").finish();
    case "ErrorResponse":
    case "NoticeResponse": {
      const w = new MessageWriter(m.kind === "ErrorResponse" ? "E" : "N");
      writeErrorFields(w, m.fields);
      return w.finish();
    }
    case "CopyInResponse":
      return writeCopyResponse("G", m.format, m.columnFormats);
    case "CopyOutResponse":
      return writeCopyResponse("H", m.format, m.columnFormats);
    case "CopyBothResponse":
      return writeCopyResponse("W", m.format, m.columnFormats);
    case "CopyData":
      return new MessageWriter("d").bytes(m.data).finish();
    case "CopyDone":
      return new MessageWriter("c").finish();
    case "NotificationResponse":
      return new MessageWriter("A").i32(m.processId).cstring(m.channel).cstring(m.payload).finish();
    case "NegotiateProtocolVersion": {
      const w = new MessageWriter("v").i32((3 << 16) | m.newestMinorVersion).i32(m.unrecognizedOptions.length);
      for (const o of m.unrecognizedOptions) w.cstring(o);
      return w.finish();
    }
  }
}

// ---------------------------------------------------------------------------
// Serializers: frontend messages

/** Serializes one frontend message (including startup-phase packets) into a framed buffer. */
export function serializeFrontend(m: FrontendMessage): Buffer {
  switch (m.kind) {
    case "StartupMessage": {
      const w = new MessageWriter(null).i32(m.protocolVersion);
      for (const [k, v] of m.parameters) {
        if (k === "") throw new StrataError("invalid_argument", "startup parameter name must not be empty");
        w.cstring(k).cstring(v);
      }
      return w.u8(0).finish();
    }
    case "SSLRequest":
      return new MessageWriter(null).i32(SSL_REQUEST_CODE).finish();
    case "GSSENCRequest":
      return new MessageWriter(null).i32(GSSENC_REQUEST_CODE).finish();
    case "CancelRequest":
      return new MessageWriter(null).i32(CANCEL_REQUEST_CODE).i32(m.processId).i32(m.secretKey).finish();
    case "AuthResponse":
      return new MessageWriter("p").bytes(m.data).finish();
    case "Query":
      return new MessageWriter("Q").cstring(m.sql).finish();
    case "CopyData":
      return new MessageWriter("d").bytes(m.data).finish();
    case "CopyDone":
      return new MessageWriter("c").finish();
    case "CopyFail":
      return new MessageWriter("f").cstring(m.message).finish();
    case "Terminate":
      return new MessageWriter("X").finish();
  }
}

/** PasswordMessage: the cleartext (or md5-hashed) password as a C-string. */
export function passwordMessage(password: string): Buffer {
  return new MessageWriter("p").cstring(password).finish();
}

/** SASLInitialResponse: mechanism name, Int32 length of the initial data (-1: none), data. */
export function saslInitialResponse(mechanism: string, data: Buffer | null): Buffer {
  const w = new MessageWriter("p").cstring(mechanism);
  if (data === null) w.i32(-1);
  else w.i32(data.length).bytes(data);
  return w.finish();
}

/** SASLResponse: the mechanism's data, nothing else. */
export function saslResponse(data: Buffer): Buffer {
  return new MessageWriter("p").bytes(data).finish();
}

/** Decodes an AuthResponse body as a PasswordMessage. */
export function decodePasswordMessage(data: Buffer, streamOffset = 0): string {
  const r = new MessageReader(data, { what: "PasswordMessage", streamOffset });
  const pw = r.cstring("password");
  r.end();
  return pw;
}

/** Decodes an AuthResponse body as a SASLInitialResponse. */
export function decodeSASLInitialResponse(
  data: Buffer,
  streamOffset = 0,
): { mechanism: string; data: Buffer | null } {
  const r = new MessageReader(data, { what: "SASLInitialResponse", streamOffset });
  const mechanism = r.cstring("mechanism");
  const len = r.i32("initial response length");
  if (len < -1) throw r.fail(`initial response length ${len} is invalid`);
  const initial = len === -1 ? null : r.bytes(len, "initial response");
  r.end();
  return { mechanism, data: initial };
}

// ---------------------------------------------------------------------------
// Body decoders: backend messages

function readErrorFields(r: MessageReader): ErrorFields {
  const found: Partial<Record<ErrorFieldName, string>> = {};
  // Each field is at least two bytes (code + NUL), so the loop is bounded by the body length.
  while (true) {
    const code = r.u8("field code");
    if (code === 0) break;
    const value = r.cstring(`field ${JSON.stringify(String.fromCharCode(code))}`);
    const name = ERROR_FIELD_BY_CODE.get(code);
    // The protocol requires frontends to ignore field types they do not know.
    if (name !== undefined) found[name] = value;
  }
  const { severity, code, message } = found;
  if (severity === undefined || code === undefined || message === undefined) {
    throw r.fail("missing one of the always-present fields S (severity), C (SQLSTATE), M (message)");
  }
  return { ...found, severity, code, message };
}

function readCopyResponse(r: MessageReader): { format: number; columnFormats: number[] } {
  const format = r.u8("overall format");
  if (format > 1) throw r.fail(`overall format ${format} is neither 0 (text) nor 1 (binary)`);
  const n = r.i16("column count");
  if (n < 0) throw r.fail(`column count ${n} is negative`);
  const columnFormats: number[] = [];
  for (let i = 0; i < n; i++) {
    const f = r.i16(`format of column ${i}`);
    if (f !== 0 && f !== 1) throw r.fail(`format ${f} of column ${i} is neither 0 nor 1`);
    columnFormats.push(f);
  }
  return { format, columnFormats };
}

function decodeAuthentication(r: MessageReader): BackendMessage {
  const code = r.i32("authentication code");
  switch (code) {
    case AUTH_OK:
      return { kind: "AuthenticationOk" };
    case AUTH_CLEARTEXT:
      return { kind: "AuthenticationCleartextPassword" };
    case AUTH_MD5:
      return { kind: "AuthenticationMD5Password", salt: Buffer.from(r.bytes(4, "salt")) };
    case AUTH_SASL: {
      const mechanisms: string[] = [];
      while (true) {
        const mech = r.cstring("SASL mechanism name");
        if (mech === "") break;
        mechanisms.push(mech);
      }
      if (mechanisms.length === 0) throw r.fail("AuthenticationSASL lists no mechanisms");
      return { kind: "AuthenticationSASL", mechanisms };
    }
    case AUTH_SASL_CONTINUE:
      return { kind: "AuthenticationSASLContinue", data: r.rest() };
    case AUTH_SASL_FINAL:
      return { kind: "AuthenticationSASLFinal", data: r.rest() };
    case AUTH_KRB5:
    case AUTH_SCM_CREDS:
    case AUTH_GSS:
    case AUTH_GSS_CONT:
    case AUTH_SSPI:
      return { kind: "AuthenticationUnsupported", method: code, data: r.rest() };
    default:
      throw r.fail(`unknown authentication request code ${code}`);
  }
}

/**
 * Decodes the body of a backend message whose type code is in
 * `BACKEND_TYPE_CODES`. The body excludes type byte and length.
 */
export function decodeBackendBody(code: string, body: Buffer, ctx: BodyContext): BackendMessage {
  const r = new MessageReader(body, ctx);
  let m: BackendMessage;
  switch (code) {
    case "R":
      m = decodeAuthentication(r);
      break;
    case "S":
      m = { kind: "ParameterStatus", name: r.cstring("name"), value: r.cstring("value") };
      break;
    case "K":
      m = { kind: "BackendKeyData", processId: r.i32("process id"), secretKey: r.i32("secret key") };
      break;
    case "Z": {
      const s = String.fromCharCode(r.u8("transaction status"));
      if (s !== "I" && s !== "T" && s !== "E") throw r.fail(`transaction status ${JSON.stringify(s)} is not I, T or E`);
      m = { kind: "ReadyForQuery", status: s };
      break;
    }
    case "T": {
      const n = r.i16("field count");
      if (n < 0) throw r.fail(`field count ${n} is negative`);
      const fields: FieldDescription[] = [];
      for (let i = 0; i < n; i++) {
        const name = r.cstring(`name of field ${i}`);
        const tableOid = r.u32("table oid");
        const columnAttr = r.i16("column attribute number");
        const typeOid = r.u32("type oid");
        const typeSize = r.i16("type size");
        const typeModifier = r.i32("type modifier");
        const format = r.i16("format code");
        if (format !== 0 && format !== 1) throw r.fail(`format code ${format} of field ${i} is neither 0 nor 1`);
        fields.push({ name, tableOid, columnAttr, typeOid, typeSize, typeModifier, format });
      }
      m = { kind: "RowDescription", fields };
      break;
    }
    case "D": {
      const n = r.i16("column count");
      if (n < 0) throw r.fail(`column count ${n} is negative`);
      const values: (Buffer | null)[] = [];
      for (let i = 0; i < n; i++) {
        const len = r.i32(`length of column ${i}`);
        if (len === -1) values.push(null);
        else if (len < 0) throw r.fail(`length ${len} of column ${i} is invalid`);
        else values.push(r.bytes(len, `value of column ${i}`));
      }
      m = { kind: "DataRow", values };
      break;
    }
    case "C":
      m = { kind: "CommandComplete", tag: r.cstring("command tag") };
      break;
    case "I":
      m = { kind: "EmptyQueryResponse" };
      break;
    case "E":
      m = { kind: "ErrorResponse", fields: readErrorFields(r) };
      break;
    case "N":
      m = { kind: "NoticeResponse", fields: readErrorFields(r) };
      break;
    case "G":
      m = { kind: "CopyInResponse", ...readCopyResponse(r) };
      break;
    case "H":
      m = { kind: "CopyOutResponse", ...readCopyResponse(r) };
      break;
    case "W":
      m = { kind: "CopyBothResponse", ...readCopyResponse(r) };
      break;
    case "d":
      m = { kind: "CopyData", data: r.rest() };
      break;
    case "c":
      m = { kind: "CopyDone" };
      break;
    case "A":
      m = {
        kind: "NotificationResponse",
        processId: r.i32("process id"),
        channel: r.cstring("channel"),
        payload: r.cstring("payload"),
      };
      break;
    case "v": {
      const version = r.i32("newest minor version");
      if (version >>> 16 !== 3) throw r.fail(`protocol major version ${version >>> 16} is not 3`);
      const n = r.i32("option count");
      if (n < 0) throw r.fail(`option count ${n} is negative`);
      const unrecognizedOptions: string[] = [];
      for (let i = 0; i < n; i++) unrecognizedOptions.push(r.cstring(`option ${i}`));
      m = { kind: "NegotiateProtocolVersion", newestMinorVersion: version & 0xffff, unrecognizedOptions };
      break;
    }
    default:
      throw r.fail(`unknown backend message type ${JSON.stringify(code)}`);
  }
  r.end();
  return m;
}

// ---------------------------------------------------------------------------
// Body decoders: frontend messages

/**
 * Decodes the body of a frontend message (after the startup packet) whose
 * type code is in `FRONTEND_TYPE_CODES`.
 */
export function decodeFrontendBody(code: string, body: Buffer, ctx: BodyContext): FrontendMessage {
  const r = new MessageReader(body, ctx);
  let m: FrontendMessage;
  switch (code) {
    case "p":
      m = { kind: "AuthResponse", data: r.rest() };
      break;
    case "Q":
      m = { kind: "Query", sql: r.cstring("query string") };
      break;
    case "d":
      m = { kind: "CopyData", data: r.rest() };
      break;
    case "c":
      m = { kind: "CopyDone" };
      break;
    case "f":
      m = { kind: "CopyFail", message: r.cstring("error message") };
      break;
    case "X":
      m = { kind: "Terminate" };
      break;
    default:
      throw r.fail(`unknown frontend message type ${JSON.stringify(code)}`);
  }
  r.end();
  return m;
}

/**
 * Decodes a startup-phase packet body (everything after the Int32 length):
 * StartupMessage, SSLRequest, GSSENCRequest or CancelRequest.
 */
export function decodeStartupPacket(body: Buffer, ctx: BodyContext): FrontendMessage {
  const r = new MessageReader(body, ctx);
  const code = r.i32("protocol version or request code");
  let m: FrontendMessage;
  if (code === SSL_REQUEST_CODE) {
    m = { kind: "SSLRequest" };
  } else if (code === GSSENC_REQUEST_CODE) {
    m = { kind: "GSSENCRequest" };
  } else if (code === CANCEL_REQUEST_CODE) {
    m = { kind: "CancelRequest", processId: r.i32("process id"), secretKey: r.i32("secret key") };
  } else {
    const major = code >>> 16;
    const minor = code & 0xffff;
    if (major !== 3) {
      throw r.fail(`unsupported frontend protocol ${major}.${minor}: strata speaks 3.0 only`);
    }
    const parameters = new Map<string, string>();
    // Name/value pairs terminated by an empty name; each pair is >= 2 bytes so the loop is bounded.
    while (true) {
      const name = r.cstring("parameter name");
      if (name === "") break;
      parameters.set(name, r.cstring(`value of parameter ${JSON.stringify(name)}`));
    }
    m = { kind: "StartupMessage", protocolVersion: code, parameters };
  }
  r.end();
  return m;
}

// ---------------------------------------------------------------------------
// Startup parameters: `options` and `replication`

/**
 * Splits the `options` startup parameter into command-line arguments the way
 * the server does (pg_split_opts): arguments are separated by unescaped
 * whitespace, and a backslash makes the next character literal.
 */
export function splitStartupOptions(options: string): string[] {
  const args: string[] = [];
  let cur = "";
  let inArg = false;
  for (let i = 0; i < options.length; i++) {
    const ch = options[i]!;
    if (ch === " " || ch === "\t" || ch === "\n" || ch === "\r" || ch === "\f" || ch === "\v") {
      if (inArg) args.push(cur);
      cur = "";
      inArg = false;
    } else if (ch === "\\" && i + 1 < options.length) {
      cur += options[++i]!;
      inArg = true;
    } else {
      cur += ch;
      inArg = true;
    }
  }
  if (inArg) args.push(cur);
  return args;
}

/**
 * Extracts `name=value` settings from split `options` arguments: `-c name=value`,
 * `-cname=value` and `--name=value` (the forms the server accepts for GUCs).
 * Other arguments are an error: strata's servers have no other switches.
 */
export function parseStartupOptionSettings(args: readonly string[]): Map<string, string> {
  const settings = new Map<string, string>();
  const bad = (why: string) => new StrataError("invalid_argument", `Cannot parse startup options ${JSON.stringify(args.join(" "))}: ${why}`);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    let kv: string;
    if (a === "-c") {
      const next = args[i + 1];
      if (next === undefined) throw bad(`"-c" needs an argument`);
      kv = next;
      i++;
    } else if (a.startsWith("-c")) {
      kv = a.slice(2);
    } else if (a.startsWith("--")) {
      kv = a.slice(2);
    } else {
      throw bad(`unexpected argument ${JSON.stringify(a)}`);
    }
    const eq = kv.indexOf("=");
    if (eq <= 0) throw bad(`${JSON.stringify(kv)} is not name=value`);
    // The server folds '-' to '_' in --name=value settings; do the same for every form.
    settings.set(kv.slice(0, eq).replaceAll("-", "_"), kv.slice(eq + 1));
  }
  return settings;
}

export type ReplicationMode = "none" | "physical" | "logical";

/**
 * Interprets the `replication` startup parameter like the server: a boolean
 * ("true", "on", "yes", "1" and prefixes thereof, case-insensitive) selects a
 * physical walsender, "database" a logical one, and absence means none.
 */
export function parseReplicationParameter(value: string | undefined): ReplicationMode {
  if (value === undefined) return "none";
  if (value === "database") return "logical";
  const v = value.toLowerCase();
  if (v === "1") return "physical";
  if (v === "0") return "none";
  if (v.length >= 1 && ("true".startsWith(v) || "yes".startsWith(v))) return "physical";
  if (v.length >= 1 && ("false".startsWith(v) || "no".startsWith(v))) return "none";
  if (v === "on") return "physical";
  if (v === "off" || v === "of") return "none";
  throw new StrataError("invalid_argument", `invalid value for parameter "replication": ${JSON.stringify(value)}`);
}
