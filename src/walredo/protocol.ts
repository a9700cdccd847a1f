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
 *
 * Cost matters here: a pipelined single-record request costs the helper about
 * 6 µs, so a few µs of Node-side work per frame halve throughput. Hence
 * `RequestWriter` encodes frames back to back into one reused buffer (a batch
 * leaves in one pipe write, no allocation per request), and `FrameDecoder`
 * parses frames in place in the chunks it is given, copying only a frame
 * that straddles two chunks (never the chunk itself).
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

function writeFrameHeader(view: DataView, at: number, type: number, requestId: number, payloadLength: number): void {
  view.setUint32(at, FRAME_MIN_LENGTH + payloadLength, true);
  view.setUint8(at + 4, type);
  view.setUint32(at + 5, requestId, true);
}

function checkFrame(requestId: number, payloadLength: number): void {
  if (payloadLength > MAX_PAYLOAD_BYTES) {
    throw invalid(`payload of ${payloadLength} bytes exceeds the frame limit of ${MAX_PAYLOAD_BYTES}`);
  }
  if (!Number.isInteger(requestId) || requestId < 0 || requestId > MAX_REQUEST_ID) {
    throw invalid(`request id ${requestId} is not a u32`);
  }
}

/** A new buffer holding one frame header (replies; the helper's side, used by tests). */
function frame(type: number, requestId: number, payloadLength: number): { buf: Buffer; view: DataView } {
  checkFrame(requestId, payloadLength);
  const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payloadLength);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  writeFrameHeader(view, 0, type, requestId, payloadLength);
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

function checkApply(req: ApplyRequest): void {
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
}

/**
 * Validates a request and returns its payload size. Everything that can be
 * wrong with a request is found here, before a byte of it is written.
 */
function checkRequest(requestId: number, req: Request): number {
  let payloadLength: number;
  switch (req.type) {
    case "apply":
      checkApply(req.apply);
      payloadLength = applyPayloadBytes(req.apply);
      break;
    case "mask": {
      const m = req.mask;
      if (!Number.isInteger(m.rmid) || m.rmid < 0 || m.rmid > 255) throw invalid(`rmgr id ${m.rmid} is not a u8`);
      checkU32(m.blockNumber, "block number");
      checkPage(m.page, "page to mask");
      payloadLength = 8 + PAGE_SIZE_BYTES;
      break;
    }
    case "stats":
      payloadLength = 0;
      break;
    case "test":
      checkU32(req.test.arg, "test hook argument");
      payloadLength = 5;
      break;
  }
  checkFrame(requestId, payloadLength);
  return payloadLength;
}

/**
 * Writes a checked request (see checkRequest) as one frame at `at`; the
 * caller provides FRAME_HEADER_BYTES + payloadLength bytes there.
 *
 * APPLY: u32 spc, u32 db, u32 rel, u8 fork, u8 flags, u16 0, u32 blkno,
 * [page], u32 nrecords, nrecords × { u64 lsn, u64 endLsn, u32 len, bytes }.
 * MASK: u8 rmid, u8 0, u16 0, u32 blkno, page. STATS: empty. TEST: u8 op, u32 arg.
 */
function writeRequest(buf: Buffer, view: DataView, at: number, requestId: number, req: Request, payloadLength: number): void {
  let o = at + FRAME_HEADER_BYTES;
  switch (req.type) {
    case "apply": {
      writeFrameHeader(view, at, MsgType.apply, requestId, payloadLength);
      const a = req.apply;
      const t = a.target;
      view.setUint32(o, t.rel.spcOid, true);
      view.setUint32(o + 4, t.rel.dbOid, true);
      view.setUint32(o + 8, t.rel.relNumber, true);
      view.setUint8(o + 12, t.forkNum);
      view.setUint8(o + 13, (a.basePage ? APPLY_HAS_BASE : 0) | (a.setChecksum ? APPLY_SET_CHECKSUM : 0));
      view.setUint16(o + 14, 0, true);
      view.setUint32(o + 16, t.blockNumber, true);
      o += 20;
      if (a.basePage) {
        buf.set(a.basePage, o);
        o += PAGE_SIZE_BYTES;
      }
      view.setUint32(o, a.records.length, true);
      o += 4;
      for (const r of a.records) {
        view.setBigUint64(o, r.lsn, true);
        view.setBigUint64(o + 8, r.endLsn, true);
        view.setUint32(o + 16, r.raw.length, true);
        o += 20;
        buf.set(r.raw, o);
        o += r.raw.length;
      }
      return;
    }
    case "mask": {
      writeFrameHeader(view, at, MsgType.mask, requestId, payloadLength);
      const m = req.mask;
      view.setUint8(o, m.rmid);
      view.setUint8(o + 1, 0);
      view.setUint16(o + 2, 0, true);
      view.setUint32(o + 4, m.blockNumber, true);
      buf.set(m.page, o + 8);
      return;
    }
    case "stats":
      writeFrameHeader(view, at, MsgType.stats, requestId, payloadLength);
      return;
    case "test":
      writeFrameHeader(view, at, MsgType.test, requestId, payloadLength);
      view.setUint8(o, req.test.op);
      view.setUint32(o + 1, req.test.arg, true);
      return;
  }
}

/** Encodes one request as a complete frame in a buffer of its own. */
export function encodeRequest(requestId: number, req: Request): Buffer {
  const payloadLength = checkRequest(requestId, req);
  const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payloadLength);
  writeRequest(buf, new DataView(buf.buffer, buf.byteOffset, buf.byteLength), 0, requestId, req, payloadLength);
  return buf;
}

/**
 * A batch buffer starts this big: 16 pipelined single-page requests (the
 * default pipeline depth) fit without growing.
 */
const WRITER_INITIAL_BYTES = 160 * 1024;
/**
 * Buffers grown past this (a long record chain) are not kept for reuse once
 * written, so one large request does not pin megabytes per helper.
 */
const WRITER_KEEP_BYTES = 1024 * 1024;
/**
 * Spare buffers kept for reuse: one being written while the next batch is
 * encoded, and one more for a write that is still in the kernel's hands.
 */
const WRITER_SPARE_BUFFERS = 2;

/**
 * Encodes request frames back to back into one buffer, so a batch of
 * pipelined requests costs one pipe write and no allocation per request.
 * `take()` hands the batch over (e.g. to a stream write); the caller gives
 * the bytes back with `recycle()` once the write no longer needs them, and
 * the buffer is reused for a later batch. Not recycling is safe, just slower.
 */
export class RequestWriter {
  private buf: Buffer;
  private view: DataView;
  private len = 0;
  private readonly spare: Buffer[] = [];

  constructor(private readonly initialBytes = WRITER_INITIAL_BYTES) {
    this.buf = Buffer.allocUnsafeSlow(initialBytes);
    this.view = new DataView(this.buf.buffer, 0, this.buf.byteLength);
  }

  /** Bytes appended and not yet taken. */
  get pendingBytes(): number {
    return this.len;
  }

  /** Appends one request frame. Invalid requests throw and leave the batch unchanged. */
  append(requestId: number, req: Request): void {
    const payloadLength = checkRequest(requestId, req);
    const need = FRAME_HEADER_BYTES + payloadLength;
    if (this.len + need > this.buf.length) this.grow(this.len + need);
    writeRequest(this.buf, this.view, this.len, requestId, req, payloadLength);
    this.len += need;
  }

  /** The batch appended since the last take (a view into the writer's buffer, now the caller's until recycled). */
  take(): Buffer {
    const out = this.buf.subarray(0, this.len);
    this.replace(this.spare.pop() ?? Buffer.allocUnsafeSlow(this.initialBytes));
    this.len = 0;
    return out;
  }

  /** Gives a taken batch's buffer back for reuse; the caller must no longer read it. */
  recycle(batch: Buffer): void {
    const whole = batch.buffer;
    if (batch.byteOffset !== 0 || whole.byteLength > WRITER_KEEP_BYTES || this.spare.length >= WRITER_SPARE_BUFFERS) return;
    if (whole === this.buf.buffer || this.spare.some((b) => b.buffer === whole)) return;
    this.spare.push(Buffer.from(whole));
  }

  private grow(atLeast: number): void {
    const bigger = Buffer.allocUnsafeSlow(Math.max(atLeast, this.buf.length * 2));
    this.buf.copy(bigger, 0, 0, this.len);
    this.replace(bigger);
  }

  private replace(buf: Buffer): void {
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
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
  if (f.type === MsgType.page && f.payload.length === PAGE_SIZE_BYTES) {
    // The common reply, without a reader. A copy: the payload is a view into
    // a large read chunk that a caller keeping the page (the page cache)
    // would otherwise keep alive. Into memory that is not zeroed first: every
    // byte is overwritten at once.
    const page = new Uint8Array(Buffer.allocUnsafeSlow(PAGE_SIZE_BYTES).buffer, 0, PAGE_SIZE_BYTES);
    page.set(f.payload);
    return { type: "page", requestId: f.requestId, page };
  }
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
      // a page of the wrong size (the right size returned above): fails with a precise message
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

/** u32 length prefix of a frame. */
const LENGTH_PREFIX_BYTES = 4;
const NO_BYTES = Buffer.alloc(0);

/**
 * Splits a byte stream into frames. Feed it chunks with `push`, then call
 * `next()` until it returns undefined ("need more"). Frames are parsed in
 * place: a frame's payload is a view into the pushed chunk, or — for the one
 * frame that straddles two chunks — into a buffer of exactly that frame's
 * size, so the bytes copied per chunk are at most one frame (concatenating
 * leftovers with each new chunk would copy a whole 64 KiB read per chunk).
 * Payloads stay valid: the decoder never writes into a buffer it handed out.
 */
export class FrameDecoder {
  /** The chunk being parsed and the read position in it. */
  private chunk: Buffer = NO_BYTES;
  private pos = 0;
  /**
   * A frame that started in an earlier chunk: while its length is unknown,
   * the first bytes of its prefix in a LENGTH_PREFIX_BYTES buffer; then a
   * buffer of the whole frame, filled up to `carryLen`.
   */
  private carry: Buffer | undefined;
  private carryLen = 0;
  private carryHasLength = false;

  constructor(private readonly maxFrameBytes = MAX_FRAME_BYTES) {}

  push(chunk: Uint8Array): void {
    const bytes = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    // A caller that pushes before draining keeps its unread bytes (copied; not the stream's path).
    this.chunk = this.pos < this.chunk.length ? Buffer.concat([this.chunk.subarray(this.pos), bytes]) : bytes;
    this.pos = 0;
  }

  /** Bytes received but not yet returned as frames. */
  get pendingBytes(): number {
    return this.carryLen + this.chunk.length - this.pos;
  }

  next(): Frame | undefined {
    if (this.carry) return this.nextFromCarry();
    const avail = this.chunk.length - this.pos;
    if (avail >= LENGTH_PREFIX_BYTES) {
      const total = LENGTH_PREFIX_BYTES + this.checkLength(this.chunk.readUInt32LE(this.pos));
      if (avail >= total) {
        const f = frameIn(this.chunk, this.pos, total);
        this.pos += total;
        return f;
      }
      this.startCarry(Buffer.allocUnsafe(total), true);
    } else if (avail > 0) {
      this.startCarry(Buffer.allocUnsafe(LENGTH_PREFIX_BYTES), false);
    }
    return undefined;
  }

  private checkLength(length: number): number {
    if (length < FRAME_MIN_LENGTH || length > this.maxFrameBytes) {
      throw protocolError(`frame length ${length} outside [${FRAME_MIN_LENGTH}, ${this.maxFrameBytes}]; stream is out of sync`);
    }
    return length;
  }

  /** Moves the rest of the chunk (the start of a frame) into `carry`. */
  private startCarry(carry: Buffer, hasLength: boolean): void {
    this.carryLen = this.chunk.copy(carry, 0, this.pos);
    this.carry = carry;
    this.carryHasLength = hasLength;
    this.pos = this.chunk.length;
  }

  private fill(carry: Buffer): void {
    const n = this.chunk.copy(carry, this.carryLen, this.pos, Math.min(this.chunk.length, this.pos + carry.length - this.carryLen));
    this.carryLen += n;
    this.pos += n;
  }

  private nextFromCarry(): Frame | undefined {
    let carry = this.carry!;
    if (!this.carryHasLength) {
      this.fill(carry);
      if (this.carryLen < LENGTH_PREFIX_BYTES) return undefined;
      const whole = Buffer.allocUnsafe(LENGTH_PREFIX_BYTES + this.checkLength(carry.readUInt32LE(0)));
      carry.copy(whole, 0, 0, LENGTH_PREFIX_BYTES);
      this.carry = carry = whole;
      this.carryHasLength = true;
    }
    this.fill(carry);
    if (this.carryLen < carry.length) return undefined;
    this.carry = undefined;
    this.carryLen = 0;
    return frameIn(carry, 0, carry.length);
  }
}

/** The frame of `total` bytes at `at` (length already checked). */
function frameIn(buf: Buffer, at: number, total: number): Frame {
  return { type: buf[at + 4]!, requestId: buf.readUInt32LE(at + 5), payload: buf.subarray(at + FRAME_HEADER_BYTES, at + total) };
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
