import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../lib/errors.js";
import { lsn } from "../lib/lsn.js";
import {
  FrameDecoder,
  MAX_FRAME_BYTES,
  MsgType,
  PAGE_SIZE_BYTES,
  RequestWriter,
  TestHookOp,
  decodeReply,
  decodeRequest,
  encodeReply,
  encodeRequest,
  parseSingleFrame,
  redoRecordOf,
  type Reply,
  type Request,
} from "./protocol.js";
import { splitRecords } from "./pool.js";

function page(fill: number): Uint8Array {
  const p = new Uint8Array(PAGE_SIZE_BYTES);
  for (let i = 0; i < p.length; i++) p[i] = (i * 7 + fill) & 0xff;
  return p;
}

const rel = { spcOid: 1663, dbOid: 5, relNumber: 16384 };
const rec = (start: number, len: number) => ({ lsn: lsn(start), endLsn: lsn(start + len + 8), raw: page(start).subarray(0, len) });

const requests: Request[] = [
  { type: "apply", apply: { target: { rel, forkNum: 0, blockNumber: 7 }, basePage: page(1), records: [rec(100, 50), rec(200, 3000)], setChecksum: true } },
  { type: "apply", apply: { target: { rel, forkNum: 2, blockNumber: 0xfffffffe }, records: [rec(1 << 20, 24)], setChecksum: false } },
  { type: "apply", apply: { target: { rel, forkNum: 3, blockNumber: 0 }, records: [], setChecksum: false } },
  { type: "mask", mask: { rmid: 10, blockNumber: 3, page: page(9) } },
  { type: "stats" },
  { type: "test", test: { op: TestHookOp.sleepMs, arg: 250 } },
];

const replies: Reply[] = [
  {
    type: "hello",
    requestId: 0,
    hello: { protocolVersion: 1, builtPgVersionNum: 150018, runningPgVersionNum: 150018, blockSizeBytes: 8192, dataChecksums: true, walLogHints: false, testHooks: true, pid: 4242 },
  },
  { type: "page", requestId: 5, page: page(3) },
  { type: "error", requestId: 6, error: { recordIndex: 2, sqlstate: "XX001", panicCaught: false, message: "incorrect CRC in record at 0/16B3748", context: "" } },
  { type: "error", requestId: 7, error: { recordIndex: undefined, sqlstate: "XX000", panicCaught: true, message: "failed to add tuple", context: "WAL redo at 0/1 for Heap/INSERT" } },
  { type: "stats", requestId: 8, stats: { requests: 12, records: 99, rss_kb: 19500, invalid_pages: 0 } },
  { type: "ok", requestId: 0xffffffff },
];

test("requests round-trip through encode and decode", () => {
  let id = 1;
  for (const req of requests) {
    const bytes = encodeRequest(id, req);
    const back = decodeRequest(parseSingleFrame(bytes));
    assert.equal(back.requestId, id);
    assert.deepEqual(normalize(back.request), normalize(req));
    id += 1000;
  }
});

test("replies round-trip through encode and decode", () => {
  for (const reply of replies) {
    assert.deepEqual(normalize(decodeReply(parseSingleFrame(encodeReply(reply)))), normalize(reply));
  }
});

test("FrameDecoder reassembles a stream split at every offset", () => {
  const stream = Buffer.concat(replies.map(encodeReply));
  for (let cut = 0; cut <= stream.length; cut++) {
    const d = new FrameDecoder();
    const got: Reply[] = [];
    for (const part of [stream.subarray(0, cut), stream.subarray(cut)]) {
      d.push(part);
      for (let f = d.next(); f; f = d.next()) got.push(decodeReply(f));
    }
    assert.equal(got.length, replies.length, `cut at ${cut}`);
    assert.equal(d.pendingBytes, 0);
    // re-encoding is a cheap exact comparison
    assert.ok(Buffer.concat(got.map(encodeReply)).equals(stream), `cut at ${cut}`);
  }
});

test("FrameDecoder handles byte-at-a-time input", () => {
  const stream = Buffer.concat(requests.map((r, i) => encodeRequest(i + 1, r)));
  const d = new FrameDecoder();
  let n = 0;
  for (let i = 0; i < stream.length; i++) {
    d.push(stream.subarray(i, i + 1));
    for (let f = d.next(); f; f = d.next()) {
      assert.equal(decodeRequest(f).requestId, ++n);
    }
  }
  assert.equal(n, requests.length);
});

test("FrameDecoder reassembles small frames split at every pair of offsets (frames straddling three chunks)", () => {
  const small: Reply[] = [replies[2]!, { type: "ok", requestId: 9 }, replies[4]!, { type: "ok", requestId: 10 }, replies[3]!];
  const stream = Buffer.concat(small.map(encodeReply));
  for (let a = 0; a <= stream.length; a++) {
    for (let b = a; b <= stream.length; b++) {
      const d = new FrameDecoder();
      const got: Buffer[] = [];
      for (const part of [stream.subarray(0, a), stream.subarray(a, b), stream.subarray(b)]) {
        d.push(part);
        for (let f = d.next(); f; f = d.next()) got.push(encodeReply(decodeReply(f)));
      }
      assert.equal(d.pendingBytes, 0, `cuts at ${a}, ${b}`);
      assert.ok(Buffer.concat(got).equals(stream), `cuts at ${a}, ${b}`);
    }
  }
});

test("FrameDecoder keeps unread bytes when chunks are pushed without draining", () => {
  const stream = Buffer.concat(replies.map(encodeReply));
  const d = new FrameDecoder();
  const third = Math.floor(stream.length / 3);
  d.push(stream.subarray(0, third));
  d.push(stream.subarray(third, 2 * third));
  d.push(stream.subarray(2 * third));
  assert.equal(d.pendingBytes, stream.length);
  const got: Reply[] = [];
  for (let f = d.next(); f; f = d.next()) got.push(decodeReply(f));
  assert.equal(got.length, replies.length);
  assert.equal(d.pendingBytes, 0);
});

test("FrameDecoder never hands out a view of bytes it later overwrites", () => {
  // a page frame straddling two chunks is assembled in a buffer of its own;
  // the payloads of earlier frames stay intact after later pushes
  const stream = Buffer.concat([encodeReply(replies[1]!), encodeReply({ ...replies[1]!, requestId: 6 } as Reply)]);
  const d = new FrameDecoder();
  const cut = 5000;
  d.push(Buffer.from(stream.subarray(0, cut)));
  assert.equal(d.next(), undefined);
  d.push(Buffer.from(stream.subarray(cut, cut + 9000)));
  const f1 = d.next()!;
  assert.equal(d.next(), undefined);
  d.push(Buffer.from(stream.subarray(cut + 9000)));
  const f2 = d.next()!;
  assert.deepEqual([f1.requestId, f2.requestId], [5, 6]);
  assert.deepEqual(new Uint8Array(f1.payload), page(3));
  assert.deepEqual(new Uint8Array(f2.payload), page(3));
});

test("RequestWriter batches frames identical to encodeRequest, back to back", () => {
  const w = new RequestWriter(64); // tiny: every append grows the buffer
  const expected: Buffer[] = [];
  requests.forEach((r, i) => {
    w.append(100 + i, r);
    expected.push(encodeRequest(100 + i, r));
  });
  const batch = w.take();
  assert.equal(w.pendingBytes, 0);
  assert.ok(batch.equals(Buffer.concat(expected)));
  const d = new FrameDecoder();
  d.push(batch);
  const ids: number[] = [];
  for (let f = d.next(); f; f = d.next()) ids.push(decodeRequest(f).requestId);
  assert.deepEqual(ids, requests.map((_, i) => 100 + i));
});

test("RequestWriter leaves the batch unchanged when a request is invalid", () => {
  const w = new RequestWriter();
  w.append(1, { type: "stats" });
  const before = w.pendingBytes;
  const target = { rel, forkNum: 0, blockNumber: 1 };
  assert.throws(() => w.append(2, { type: "apply", apply: { target, basePage: new Uint8Array(100), records: [] } }), StrataError);
  assert.throws(() => w.append(2 ** 32, { type: "stats" }), StrataError);
  assert.equal(w.pendingBytes, before);
  w.append(3, { type: "stats" });
  assert.ok(w.take().equals(Buffer.concat([encodeRequest(1, { type: "stats" }), encodeRequest(3, { type: "stats" })])));
});

test("RequestWriter reuses recycled buffers, but not ones grown past its keep limit", () => {
  const w = new RequestWriter();
  w.append(1, requests[0]!);
  const first = w.take();
  w.recycle(first);
  w.append(2, requests[3]!); // into the buffer that replaced `first` at its take
  const second = w.take();
  w.append(3, requests[3]!);
  const third = w.take();
  assert.ok(third.buffer === first.buffer, "the recycled buffer carries a later batch");
  assert.ok(second.buffer !== first.buffer);
  assert.ok(third.equals(encodeRequest(3, requests[3]!)));
  // a 2 MiB chain grows the buffer; once written it is dropped, not kept
  const big = { lsn: lsn(0x1000), endLsn: lsn(0x1000 + 2 * 1024 * 1024), raw: new Uint8Array(2 * 1024 * 1024 - 8) };
  w.append(4, { type: "apply", apply: { target: { rel, forkNum: 0, blockNumber: 1 }, records: [big] } });
  const large = w.take();
  assert.ok(large.buffer.byteLength > 2 * 1024 * 1024);
  w.recycle(large);
  for (let id = 5; id < 10; id++) {
    w.append(id, { type: "stats" });
    assert.ok(w.take().buffer !== large.buffer);
  }
});

test("FrameDecoder rejects out-of-range frame lengths", () => {
  for (const length of [0, 4, MAX_FRAME_BYTES + 1]) {
    const b = Buffer.alloc(9);
    b.writeUInt32LE(length, 0);
    const d = new FrameDecoder();
    d.push(b);
    assert.throws(() => d.next(), (e: unknown) => e instanceof StrataError && e.code === "protocol_violation" && /out of sync/.test(e.message));
  }
});

test("page replies are copies, not views into the read buffer", () => {
  const bytes = encodeReply(replies[1]!);
  const r = decodeReply(parseSingleFrame(bytes));
  assert.equal(r.type, "page");
  bytes.fill(0);
  if (r.type === "page") assert.deepEqual(r.page, page(3));
});

test("decodeReply rejects malformed replies", () => {
  const isViolation = (e: unknown) => e instanceof StrataError && e.code === "protocol_violation";
  // truncated page
  const pageFrame = encodeReply(replies[1]!);
  const short = Buffer.from(pageFrame.subarray(0, pageFrame.length - 1));
  short.writeUInt32LE(short.length - 4, 0);
  assert.throws(() => decodeReply(parseSingleFrame(short)), isViolation);
  // trailing bytes after an OK
  const ok = Buffer.concat([encodeReply({ type: "ok", requestId: 1 }), Buffer.from([0])]);
  ok.writeUInt32LE(ok.length - 4, 0);
  assert.throws(() => decodeReply(parseSingleFrame(ok)), /trailing/);
  // unknown type
  const unknown = Buffer.from(encodeReply({ type: "ok", requestId: 1 }));
  unknown[4] = 0x5a;
  assert.throws(() => decodeReply(parseSingleFrame(unknown)), /unknown reply type/);
  // error text length past the end
  const err = Buffer.from(encodeReply(replies[2]!));
  err.writeUInt16LE(60000, 19);
  assert.throws(() => decodeReply(parseSingleFrame(err)), isViolation);
  // garbage statistics
  const stats = Buffer.from(encodeReply({ type: "stats", requestId: 1, stats: { a: 1 } }));
  stats.write("=", 9, "latin1");
  assert.throws(() => decodeReply(parseSingleFrame(stats)), /malformed statistics/);
  // a request type is not a reply
  assert.throws(() => decodeReply(parseSingleFrame(encodeRequest(1, requests[0]!))), /unknown reply type/);
});

test("decodeRequest rejects malformed requests", () => {
  const apply = Buffer.from(encodeRequest(1, requests[0]!));
  const truncated = Buffer.from(apply.subarray(0, apply.length - 10));
  truncated.writeUInt32LE(truncated.length - 4, 0);
  assert.throws(() => decodeRequest(parseSingleFrame(truncated)), /too short/);
  const flags = Buffer.from(apply);
  flags[9 + 13] = 0x80;
  assert.throws(() => decodeRequest(parseSingleFrame(flags)), /unknown APPLY flags/);
  const type = Buffer.from(encodeRequest(1, { type: "stats" }));
  type[4] = MsgType.page;
  assert.throws(() => decodeRequest(parseSingleFrame(type)), /unknown request type/);
});

test("encodeRequest refuses values the helper cannot take", () => {
  const isInvalid = (e: unknown) => e instanceof StrataError && e.code === "invalid_argument";
  const target = { rel, forkNum: 0, blockNumber: 1 };
  assert.throws(() => encodeRequest(1, { type: "apply", apply: { target: { ...target, forkNum: 4 }, records: [] } }), isInvalid);
  assert.throws(() => encodeRequest(1, { type: "apply", apply: { target: { ...target, blockNumber: 0xffffffff }, records: [] } }), isInvalid);
  assert.throws(() => encodeRequest(1, { type: "apply", apply: { target: { ...target, rel: { ...rel, relNumber: -1 } }, records: [] } }), isInvalid);
  assert.throws(() => encodeRequest(1, { type: "apply", apply: { target, basePage: new Uint8Array(100), records: [] } }), isInvalid);
  assert.throws(() => encodeRequest(1, { type: "mask", mask: { rmid: 300, blockNumber: 0, page: page(0) } }), isInvalid);
  assert.throws(() => encodeRequest(2 ** 32, { type: "stats" }), isInvalid);
});

test("redoRecordOf MAXALIGNs the end LSN as EndRecPtr is", () => {
  const r = redoRecordOf({ lsn: lsn(0x1000), endLsn: lsn(0x1033), raw: new Uint8Array(0x33) });
  assert.equal(r.endLsn, lsn(0x1038));
  assert.equal(redoRecordOf({ lsn: lsn(0x1000), endLsn: lsn(0x1040), raw: new Uint8Array(0x40) }).endLsn, lsn(0x1040));
});

test("splitRecords cuts chains by bytes, keeping order and at least one record per request", () => {
  const recs = [rec(100, 1000), rec(2000, 1000), rec(4000, 5000), rec(10000, 10)];
  const parts = splitRecords(recs, 2100);
  assert.deepEqual(parts.map((p) => p.length), [2, 1, 1]);
  assert.deepEqual(parts.flat(), recs);
  assert.deepEqual(splitRecords([], 10), [[]]);
  assert.deepEqual(splitRecords(recs, 1).map((p) => p.length), [1, 1, 1, 1]);
});

/** Uint8Array views vs copies and Buffer vs Uint8Array compare equal by content. */
function normalize(v: unknown): unknown {
  if (v instanceof Uint8Array) return Array.from(v);
  if (Array.isArray(v)) return v.map(normalize);
  if (v && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = normalize(x);
    return out;
  }
  return v;
}
