/**
 * The walredo wire protocol: the codec between strata and its WAL redo
 * helper (the C extension in walredo/, whose walredo.h is the other half of
 * this contract — change both together and bump PROTOCOL_VERSION).
 *
 * Every frame, in both directions, is
 *
 *   u32 length (bytes after this field) | u8 type | u32 requestId | payload
 *
 * little-endian. The helper answers requests strictly in order, one reply per
 * request, echoing the request id; a client may pipeline any number of
 * requests and match replies by id. The helper sends one HELLO (id 0) when it
 * is ready. Message layouts are documented beside each encoder below.
 *
 * Both directions are implemented here — requests are encoded by the process
 * wrapper and decoded only by tests; replies the other way round — so the
 * format is tested as round trips. `FrameDecoder` never touches a stream: it
 * is fed chunks, keeps its own leftover bytes and hands out whole frames.
 * Everything read from the helper is bounds-checked and turned into a
 * `StrataError` ("protocol_violation") when malformed; nothing here asserts
 * on received bytes.
 */
import { StrataError } from "../lib/errors.js";
import { formatLsn, lsnAlign, type Lsn } from "../lib/lsn.js";
import type { DecodedRecord, RelFileNode } from "../formats/wal/decoded_record.js";

export const PROTOCOL_VERSION = 1;
/** BLCKSZ: the helper is built for 8 KiB pages (checked against HELLO). */
export const PAGE_SIZE_BYTES = 8192;
/** u32 length + u8 type + u32 request id. */
export const FRAME_HEADER_BYTES = 9;
/** type + request id: what the length field counts besides the payload. */
const FRAME_MIN_LENGTH = 5;
/**
 * Largest frame either side accepts (WALREDO_MAX_FRAME_BYTES). A longer length
 * field means a desynchronized stream; callers split long record chains into
 * requests far below this (see MAX_REQUEST_RECORD_BYTES in pool.ts).
 */
export const MAX_FRAME_BYTES = 64 * 1024 * 1024;
/** WALREDO_MAX_RECORDS_PER_REQUEST. */
export const MAX_RECORDS_PER_REQUEST = 100_000;
/** Largest payload of one frame. */
export const MAX_PAYLOAD_BYTES = MAX_FRAME_BYTES - FRAME_MIN_LENGTH;
/** Request ids are u32; the client wraps around (0 is reserved for HELLO). */
export const MAX_REQUEST_ID = 0xffffffff;
/** ERROR replies that are not about one record carry this record index. */
export const NO_RECORD_INDEX = 0xffffffff;

export const MsgType = {
  hello: 0x48, // 'H'
  page: 0x50, // 'P'
  error: 0x45, // 'E'
  stats: 0x53, // 'S'
  ok: 0x4b, // 'K'
  apply: 0x41, // 'A'
  mask: 0x4d, // 'M'
  test: 0x54, // 'T'
} as const;

const APPLY_HAS_BASE = 0x01;
const APPLY_SET_CHECKSUM = 0x02;
const ERROR_PANIC_CAUGHT = 0x01;
/** Error texts are cut to this by the helper (MAX_ERROR_TEXT_BYTES). */
const MAX_ERROR_TEXT_BYTES = 4000;

/** Fault-injection operations (only with strata_walredo.test_hooks=on). */
export const TestHookOp = {
  sleepMs: 1,
  abort: 2,
  panicInRedo: 3,
  errorInCriticalSection: 4,
} as const;
export type TestHookOp = (typeof TestHookOp)[keyof typeof TestHookOp];

/** The block a request reconstructs. */
export interface RedoTarget {
  readonly rel: RelFileNode;
  /** 0 main, 1 fsm, 2 visibility map, 3 init. */
  readonly forkNum: number;
  readonly blockNumber: number;
}

/** One WAL record as the helper needs it. */
export interface RedoRecord {
  /** Where the record starts (its XLogRecord header). */
  readonly lsn: Lsn;
  /**
   * The MAXALIGNed end of the record — XLogReaderState.EndRecPtr, what redo
   * stamps into pd_lsn. Use `redoRecordOf` to get it right from a decoded record.
   */
  readonly endLsn: Lsn;
  /** The whole record, header included (xl_tot_len bytes). */
  readonly raw: Uint8Array;
}

export interface ApplyRequest {
  readonly target: RedoTarget;
  /** Previous version of the page; absent when the first record initializes it. */
  readonly basePage?: Uint8Array;
  readonly records: readonly RedoRecord[];
  /** Stamp pd_checksum on the result (clusters with data checksums). */
  readonly setChecksum?: boolean;
}

export interface MaskRequest {
  readonly rmid: number;
  readonly blockNumber: number;
  readonly page: Uint8Array;
}

export interface TestHookRequest {
  readonly op: TestHookOp;
  readonly arg: number;
}

export type Request =
  | { readonly type: "apply"; readonly apply: ApplyRequest }
  | { readonly type: "mask"; readonly mask: MaskRequest }
  | { readonly type: "stats" }
  | { readonly type: "test"; readonly test: TestHookRequest };

export interface Hello {
  readonly protocolVersion: number;
  /** PG_VERSION_NUM the extension was compiled against. */
  readonly builtPgVersionNum: number;
  /** server_version_num of the running server (equal, or the helper refuses to start). */
  readonly runningPgVersionNum: number;
  readonly blockSizeBytes: number;
  readonly dataChecksums: boolean;
  readonly walLogHints: boolean;
  readonly testHooks: boolean;
  readonly pid: number;
}

export interface ErrorReply {
  /** Index of the record that failed within the request, if any. */
  readonly recordIndex: number | undefined;
  /** PostgreSQL SQLSTATE of the error (XX001 corrupt data, 0A000 refused, ...). */
  readonly sqlstate: string;
  /** A PANIC in a redo routine was caught and turned into this error. */
  readonly panicCaught: boolean;
  readonly message: string;
  /** PostgreSQL's error context (which record was being replayed), may be "". */
  readonly context: string;
}

export type Reply =
  | { readonly type: "hello"; readonly requestId: number; readonly hello: Hello }
  | { readonly type: "page"; readonly requestId: number; readonly page: Uint8Array }
  | { readonly type: "error"; readonly requestId: number; readonly error: ErrorReply }
  | { readonly type: "stats"; readonly requestId: number; readonly stats: Readonly<Record<string, number>> }
  | { readonly type: "ok"; readonly requestId: number };

/** A raw frame: type byte, id and a view of its payload. */
export interface Frame {
  readonly type: number;
  readonly requestId: number;
  readonly payload: Uint8Array;
}

function protocolError(message: string): StrataError {
  return new StrataError("protocol_violation", `walredo protocol: ${message}`);
}

function invalid(message: string): StrataError {
  return new StrataError("invalid_argument", `walredo request: ${message}`);
}

/** The record as the helper needs it: EndRecPtr is the MAXALIGNed end. */
export function redoRecordOf(rec: Pick<DecodedRecord, "lsn" | "endLsn" | "raw">): RedoRecord {
  return { lsn: rec.lsn, endLsn: lsnAlign(rec.endLsn, 8), raw: rec.raw };
}

// ---------------------------------------------------------------- framing

function frame(type: number, requestId: number, payloadLength: number): { buf: Buffer; view: DataView } {
  if (payloadLength > MAX_PAYLOAD_BYTES) {
    throw invalid(`payload of ${payloadLength} bytes exceeds the frame limit of ${MAX_PAYLOAD_BYTES}`);
  }
  if (!Number.isInteger(requestId) || requestId < 0 || requestId > MAX_REQUEST_ID) {
    throw invalid(`request id ${requestId} is not a u32`);
  }
  const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payloadLength);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  view.setUint32(0, FRAME_MIN_LENGTH + payloadLength, true);
  view.setUint8(4, type);
  view.setUint32(5, requestId, true);
  return { buf, view };
}

function checkU32(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw invalid(`${what} ${value} is not a u32`);
}

function checkPage(page: Uint8Array, what: string): void {
  if (page.length !== PAGE_SIZE_BYTES) throw invalid(`${what} is ${page.length} bytes, expected ${PAGE_SIZE_BYTES}`);
}

// ---------------------------------------------------------------- requests

/** Bytes an APPLY request's payload takes (for chunking decisions). */
export function applyPayloadBytes(req: ApplyRequest): number {
  let n = 20 + (req.basePage ? PAGE_SIZE_BYTES : 0) + 4;
  for (const r of req.records) n += 20 + r.raw.length;
  return n;
}

/**
 * APPLY: u32 spc, u32 db, u32 rel, u8 fork, u8 flags, u16 0, u32 blkno,
 * [page], u32 nrecords, nrecords × { u64 lsn, u64 endLsn, u32 len, bytes }.
 */
function encodeApply(requestId: number, req: ApplyRequest): Buffer {
  const t = req.target;
  checkU32(t.rel.spcOid, "tablespace oid");
  checkU32(t.rel.dbOid, "database oid");
  checkU32(t.rel.relNumber, "relation number");
  if (!Number.isInteger(t.forkNum) || t.forkNum < 0 || t.forkNum > 3) throw invalid(`fork ${t.forkNum} is not 0..3`);
  checkU32(t.blockNumber, "block number");
  if (t.blockNumber === 0xffffffff) throw invalid("block number 0xFFFFFFFF is InvalidBlockNumber");
  if (req.basePage) checkPage(req.basePage, "base page");
  if (req.records.length > MAX_RECORDS_PER_REQUEST) {
    throw invalid(`${req.records.length} records exceed the limit of ${MAX_RECORDS_PER_REQUEST} per request`);
  }
  const { buf, view } = frame(MsgType.apply, requestId, applyPayloadBytes(req));
  let o = FRAME_HEADER_BYTES;
  view.setUint32(o, t.rel.spcOid, true);
  view.setUint32(o + 4, t.rel.dbOid, true);
  view.setUint32(o + 8, t.rel.relNumber, true);
  view.setUint8(o + 12, t.forkNum);
  view.setUint8(o + 13, (req.basePage ? APPLY_HAS_BASE : 0) | (req.setChecksum ? APPLY_SET_CHECKSUM : 0));
  view.setUint16(o + 14, 0, true);
  view.setUint32(o + 16, t.blockNumber, true);
  o += 20;
  if (req.basePage) {
    buf.set(req.basePage, o);
    o += PAGE_SIZE_BYTES;
  }
  view.setUint32(o, req.records.length, true);
  o += 4;
  for (const r of req.records) {
    view.setBigUint64(o, r.lsn, true);
    view.setBigUint64(o + 8, r.endLsn, true);
    view.setUint32(o + 16, r.raw.length, true);
    o += 20;
    buf.set(r.raw, o);
    o += r.raw.length;
  }
  return buf;
}

/** Encodes one request as a complete frame. */
export function encodeRequest(requestId: number, req: Request): Buffer {
  switch (req.type) {
    case "apply":
      return encodeApply(requestId, req.apply);
    case "mask": {
      // MASK: u8 rmid, u8 0, u16 0, u32 blkno, page
      const m = req.mask;
      if (!Number.isInteger(m.rmid) || m.rmid < 0 || m.rmid > 255) throw invalid(`rmgr id ${m.rmid} is not a u8`);
      checkU32(m.blockNumber, "block number");
      checkPage(m.page, "page to mask");
      const { buf, view } = frame(MsgType.mask, requestId, 8 + PAGE_SIZE_BYTES);
      view.setUint8(9, m.rmid);
      view.setUint8(10, 0);
      view.setUint16(11, 0, true);
      view.setUint32(13, m.blockNumber, true);
      buf.set(m.page, 17);
      return buf;
    }
    case "stats":
      return frame(MsgType.stats, requestId, 0).buf;
    case "test": {
      // TEST: u8 op, u32 arg
      checkU32(req.test.arg, "test hook argument");
      const { buf, view } = frame(MsgType.test, requestId, 5);
      view.setUint8(9, req.test.op);
      view.setUint32(10, req.test.arg, true);
      return buf;
    }
  }
}

/** Bounds-checked little-endian reader over one payload. */
class PayloadReader {
  private pos = 0;
  private readonly view: DataView;
  constructor(
    private readonly bytes: Uint8Array,
    private readonly what: string,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  private need(n: number): number {
    if (n > this.bytes.length - this.pos) {
      throw protocolError(`${this.what} payload too short: need ${n} bytes at offset ${this.pos}, have ${this.bytes.length - this.pos}`);
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }
  u8(): number {
    return this.view.getUint8(this.need(1));
  }
  u16(): number {
    return this.view.getUint16(this.need(2), true);
  }
  u32(): number {
    return this.view.getUint32(this.need(4), true);
  }
  u64(): bigint {
    return this.view.getBigUint64(this.need(8), true);
  }
  bytesOf(n: number): Uint8Array {
    const at = this.need(n);
    return this.bytes.subarray(at, at + n);
  }
  end(): void {
    if (this.pos !== this.bytes.length) {
      throw protocolError(`${this.what} payload has ${this.bytes.length - this.pos} unexpected trailing bytes`);
    }
  }
}

/** Decodes a request frame (the helper's side of the contract; used by tests). */
export function decodeRequest(f: Frame): { requestId: number; request: Request } {
  const r = new PayloadReader(f.payload, "request");
  let request: Request;
  switch (f.type) {
    case MsgType.apply: {
      const rel = { spcOid: r.u32(), dbOid: r.u32(), relNumber: r.u32() };
      const forkNum = r.u8();
      const flags = r.u8();
      r.u16();
      const blockNumber = r.u32();
      if ((flags & ~(APPLY_HAS_BASE | APPLY_SET_CHECKSUM)) !== 0) throw protocolError(`unknown APPLY flags 0x${flags.toString(16)}`);
      const basePage = flags & APPLY_HAS_BASE ? r.bytesOf(PAGE_SIZE_BYTES) : undefined;
      const n = r.u32();
      if (n > MAX_RECORDS_PER_REQUEST) throw protocolError(`${n} records exceed the limit of ${MAX_RECORDS_PER_REQUEST}`);
      const records: RedoRecord[] = [];
      for (let i = 0; i < n; i++) {
        const lsn = r.u64() as Lsn;
        const endLsn = r.u64() as Lsn;
        records.push({ lsn, endLsn, raw: r.bytesOf(r.u32()) });
      }
      request = {
        type: "apply",
        apply: { target: { rel, forkNum, blockNumber }, ...(basePage ? { basePage } : {}), records, setChecksum: (flags & APPLY_SET_CHECKSUM) !== 0 },
      };
      break;
    }
    case MsgType.mask: {
      const rmid = r.u8();
      r.u8();
      r.u16();
      const blockNumber = r.u32();
      request = { type: "mask", mask: { rmid, blockNumber, page: r.bytesOf(PAGE_SIZE_BYTES) } };
      break;
    }
    case MsgType.stats:
      request = { type: "stats" };
      break;
    case MsgType.test: {
      const op = r.u8() as TestHookOp;
      request = { type: "test", test: { op, arg: r.u32() } };
      break;
    }
    default:
      throw protocolError(`unknown request type 0x${f.type.toString(16)}`);
  }
  r.end();
  return { requestId: f.requestId, request };
}

// ---------------------------------------------------------------- replies

function utf8(s: string, limit: number): Buffer {
  const b = Buffer.from(s, "utf8");
  return b.length > limit ? b.subarray(0, limit) : b;
}

/** Encodes a reply frame (the helper's side of the contract; used by tests). */
export function encodeReply(reply: Reply): Buffer {
  switch (reply.type) {
    case "hello": {
      const h = reply.hello;
      const { buf, view } = frame(MsgType.hello, reply.requestId, 24);
      view.setUint16(9, h.protocolVersion, true);
      view.setUint16(11, 0, true);
      view.setUint32(13, h.builtPgVersionNum, true);
      view.setUint32(17, h.runningPgVersionNum, true);
      view.setUint32(21, h.blockSizeBytes, true);
      view.setUint8(25, h.dataChecksums ? 1 : 0);
      view.setUint8(26, h.walLogHints ? 1 : 0);
      view.setUint8(27, h.testHooks ? 1 : 0);
      view.setUint8(28, 0);
      view.setUint32(29, h.pid, true);
      return buf;
    }
    case "page": {
      checkPage(reply.page, "page");
      const { buf } = frame(MsgType.page, reply.requestId, PAGE_SIZE_BYTES);
      buf.set(reply.page, FRAME_HEADER_BYTES);
      return buf;
    }
    case "error": {
      // ERROR: u32 recordIndex, char[5] sqlstate, u8 flags, u16 len, message, u16 len, context
      const e = reply.error;
      if (!/^[0-9A-Z]{5}$/.test(e.sqlstate)) throw invalid(`SQLSTATE "${e.sqlstate}" is not 5 characters`);
      const msg = utf8(e.message, MAX_ERROR_TEXT_BYTES);
      const ctx = utf8(e.context, MAX_ERROR_TEXT_BYTES);
      const { buf, view } = frame(MsgType.error, reply.requestId, 4 + 5 + 1 + 2 + msg.length + 2 + ctx.length);
      view.setUint32(9, e.recordIndex ?? NO_RECORD_INDEX, true);
      buf.write(e.sqlstate, 13, "latin1");
      view.setUint8(18, e.panicCaught ? ERROR_PANIC_CAUGHT : 0);
      view.setUint16(19, msg.length, true);
      buf.set(msg, 21);
      view.setUint16(21 + msg.length, ctx.length, true);
      buf.set(ctx, 23 + msg.length);
      return buf;
    }
    case "stats": {
      const text = Buffer.from(
        Object.entries(reply.stats)
          .map(([k, v]) => `${k}=${v}`)
          .join(" "),
        "utf8",
      );
      const { buf } = frame(MsgType.stats, reply.requestId, text.length);
      buf.set(text, FRAME_HEADER_BYTES);
      return buf;
    }
    case "ok":
      return frame(MsgType.ok, reply.requestId, 0).buf;
  }
}

const STATS_PAIR = /^([a-z_][a-z0-9_]*)=(-?\d+)$/;

/** Decodes a reply frame received from the helper. */
export function decodeReply(f: Frame): Reply {
  const r = new PayloadReader(f.payload, "reply");
  let reply: Reply;
  switch (f.type) {
    case MsgType.hello: {
      const protocolVersion = r.u16();
      r.u16();
      const builtPgVersionNum = r.u32();
      const runningPgVersionNum = r.u32();
      const blockSizeBytes = r.u32();
      const dataChecksums = r.u8() !== 0;
      const walLogHints = r.u8() !== 0;
      const testHooks = r.u8() !== 0;
      r.u8();
      const pid = r.u32();
      const hello: Hello = { protocolVersion, builtPgVersionNum, runningPgVersionNum, blockSizeBytes, dataChecksums, walLogHints, testHooks, pid };
      reply = { type: "hello", requestId: f.requestId, hello };
      break;
    }
    case MsgType.page:
      // A copy: the payload is a view into a large read chunk that a caller
      // keeping the page would otherwise keep alive.
      reply = { type: "page", requestId: f.requestId, page: new Uint8Array(r.bytesOf(PAGE_SIZE_BYTES)) };
      break;
    case MsgType.error: {
      const index = r.u32();
      const sqlstate = Buffer.from(r.bytesOf(5)).toString("latin1");
      const flags = r.u8();
      const message = Buffer.from(r.bytesOf(r.u16())).toString("utf8");
      const context = Buffer.from(r.bytesOf(r.u16())).toString("utf8");
      reply = {
        type: "error",
        requestId: f.requestId,
        error: { recordIndex: index === NO_RECORD_INDEX ? undefined : index, sqlstate, panicCaught: (flags & ERROR_PANIC_CAUGHT) !== 0, message, context },
      };
      break;
    }
    case MsgType.stats: {
      const text = Buffer.from(r.bytesOf(f.payload.length)).toString("utf8");
      const stats: Record<string, number> = {};
      for (const pair of text.split(" ").filter((p) => p.length > 0)) {
        const m = STATS_PAIR.exec(pair);
        if (!m) throw protocolError(`malformed statistics entry "${pair.slice(0, 80)}"`);
        stats[m[1]!] = Number(m[2]);
      }
      reply = { type: "stats", requestId: f.requestId, stats };
      break;
    }
    case MsgType.ok:
      reply = { type: "ok", requestId: f.requestId };
      break;
    default:
      throw protocolError(`unknown reply type 0x${f.type.toString(16)} for request ${f.requestId}`);
  }
  r.end();
  return reply;
}

/**
 * Splits a byte stream into frames. Feed it chunks with `push`, then call
 * `next()` until it returns undefined ("need more"). A frame's payload is a
 * view into the decoder's buffer and stays valid (the decoder never writes
 * into a buffer it has handed out).
 */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);
  private pos = 0;

  constructor(private readonly maxFrameBytes = MAX_FRAME_BYTES) {}

  push(chunk: Uint8Array): void {
    const rest = this.buf.length - this.pos;
    if (rest === 0) {
      this.buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    } else {
      this.buf = Buffer.concat([this.buf.subarray(this.pos), chunk]);
    }
    this.pos = 0;
  }

  /** Bytes received but not yet returned as frames. */
  get pendingBytes(): number {
    return this.buf.length - this.pos;
  }

  next(): Frame | undefined {
    const avail = this.buf.length - this.pos;
    if (avail < FRAME_HEADER_BYTES) return undefined;
    const length = this.buf.readUInt32LE(this.pos);
    if (length < FRAME_MIN_LENGTH || length > this.maxFrameBytes) {
      throw protocolError(`frame length ${length} outside [${FRAME_MIN_LENGTH}, ${this.maxFrameBytes}]; stream is out of sync`);
    }
    if (avail < 4 + length) return undefined;
    const type = this.buf[this.pos + 4]!;
    const requestId = this.buf.readUInt32LE(this.pos + 5);
    const payload = this.buf.subarray(this.pos + FRAME_HEADER_BYTES, this.pos + 4 + length);
    this.pos += 4 + length;
    return { type, requestId, payload };
  }
}

/** Parses the frame at the start of `bytes` (which must hold exactly one frame). */
export function parseSingleFrame(bytes: Uint8Array): Frame {
  const d = new FrameDecoder();
  d.push(bytes);
  const f = d.next();
  if (!f) throw protocolError(`incomplete frame (${bytes.length} bytes)`);
  if (d.pendingBytes !== 0) throw protocolError(`${d.pendingBytes} bytes after the frame`);
  return f;
}

/** Text for logs: "rel 1663/5/16384 fork 0 blk 7". */
export function describeTarget(t: RedoTarget): string {
  return `rel ${t.rel.spcOid}/${t.rel.dbOid}/${t.rel.relNumber} fork ${t.forkNum} blk ${t.blockNumber}`;
}

/** Text for logs: the LSN range a request covers. */
export function describeRecords(records: readonly RedoRecord[]): string {
  if (records.length === 0) return "no records";
  return `${records.length} records ${formatLsn(records[0]!.lsn)}..${formatLsn(records[records.length - 1]!.endLsn)}`;
}
