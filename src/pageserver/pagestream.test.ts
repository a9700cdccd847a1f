import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../lib/errors.js";
import { lsn } from "../lib/lsn.js";
import { SlruKind } from "./key.js";
import { decodeRequest, decodeResponse, encodeRequest, encodeResponse, type PagestreamRequest, type PagestreamResponse } from "./pagestream.js";
import { MaterializedPageCache } from "./page_cache.js";
import { partitionKeyspace } from "./compaction.js";
import { KEY_END, KEY_MIN, relBlockKey, type Key } from "./key.js";

const rel = { spcOid: 1663, dbOid: 5, relNumber: 0xfffffff0, fork: 2 };
const at = lsn(0x1_2345_6789n);

const requests: PagestreamRequest[] = [
  { kind: "exists", id: 1, lsn: at, rel },
  { kind: "nblocks", id: 0xffffffff, lsn: at, rel },
  { kind: "getpage", id: 7, lsn: at, rel, block: 0xfffffffe },
  { kind: "dbsize", id: 8, lsn: at, dbOid: 16384 },
  { kind: "slru", id: 9, lsn: at, slru: SlruKind.MultiXactMembers, segNo: 0x1234 },
];

const page = new Uint8Array(8192).map((_, i) => i & 0xff);
const responses: PagestreamResponse[] = [
  { kind: "exists", id: 1, exists: true },
  { kind: "exists", id: 2, exists: false },
  { kind: "nblocks", id: 3, blocks: 123456 },
  { kind: "getpage", id: 4, page },
  { kind: "dbsize", id: 5, bytes: 1n << 40n },
  { kind: "slru", id: 6, data: new Uint8Array(3 * 8192).fill(0x55) },
  { kind: "error", id: 7, sqlstate: "XX001", message: "Layer file x: CRC mismatch (at offset 12) — ünïcode" },
];

function isProtocolViolation(e: unknown): boolean {
  return e instanceof StrataError && e.code === "protocol_violation" && /offset \d+/.test(e.message);
}

test("pagestream requests round-trip; truncated, extended and unknown ones are protocol violations", () => {
  for (const r of requests) {
    const b = encodeRequest(r);
    assert.deepEqual(decodeRequest(b), r);
    for (let cut = 0; cut < b.length; cut++) assert.throws(() => decodeRequest(b.subarray(0, cut)), isProtocolViolation, `${r.kind} cut at ${cut}`);
    assert.throws(() => decodeRequest(Buffer.concat([b, Buffer.from([0])])), isProtocolViolation);
  }
  const bad = encodeRequest(requests[0]!);
  bad[0] = 0x7f;
  assert.throws(() => decodeRequest(bad), isProtocolViolation);
  const badFork = encodeRequest(requests[2]!);
  badFork[13 + 12] = 4;
  assert.throws(() => decodeRequest(badFork), isProtocolViolation);
  const badSlru = encodeRequest(requests[4]!);
  badSlru[13] = 3;
  assert.throws(() => decodeRequest(badSlru), isProtocolViolation);
});

test("pagestream responses round-trip; malformed ones are protocol violations", () => {
  for (const r of responses) {
    const b = encodeResponse(r);
    assert.deepEqual(decodeResponse(b), r);
    for (let cut = 0; cut < Math.min(b.length, 40); cut++) assert.throws(() => decodeResponse(b.subarray(0, cut)), isProtocolViolation, `${r.kind} cut at ${cut}`);
    assert.throws(() => decodeResponse(b.subarray(0, b.length - 1)), isProtocolViolation);
  }
  const unknown = encodeResponse(responses[0]!);
  unknown[0] = 0x90;
  assert.throws(() => decodeResponse(unknown), isProtocolViolation);
});

test("materialized page cache: LRU bound, hit/miss counts, per-timeline drop", () => {
  const c = new MaterializedPageCache(3);
  const k = (b: number) => relBlockKey(rel, b);
  for (let i = 0; i < 4; i++) c.put("a", k(i), lsn(100), new Uint8Array([i]));
  assert.equal(c.size, 3);
  assert.equal(c.get("a", k(0), lsn(100)), undefined, "oldest evicted");
  assert.deepEqual(c.get("a", k(1), lsn(100)), new Uint8Array([1]));
  c.put("a", k(9), lsn(100), new Uint8Array([9])); // evicts k(2): k(1) was used recently
  assert.equal(c.peek("a", k(2), lsn(100)), undefined);
  assert.ok(c.peek("a", k(1), lsn(100)));
  assert.equal(c.get("a", k(1), lsn(101)), undefined, "keyed by version LSN");
  assert.deepEqual(c.stats(), { hits: 1, misses: 2, size: 3, maxPages: 3 });
  c.put("b", k(1), lsn(100), new Uint8Array([7]));
  c.dropTimeline("a");
  assert.equal(c.size, 1);
  assert.ok(c.peek("b", k(1), lsn(100)));
  const off = new MaterializedPageCache(0);
  off.put("a", k(1), lsn(1), page);
  assert.equal(off.size, 0);
});

test("keyspace partitions tile the whole key space in order", () => {
  const keys: Key[] = Array.from({ length: 2500 }, (_, i) => relBlockKey(rel, i));
  const parts = partitionKeyspace(keys, 1000 * 8192);
  assert.equal(parts.length, 3);
  assert.equal(parts[0]!.range.start, KEY_MIN);
  assert.equal(parts.at(-1)!.range.end, KEY_END);
  for (let i = 1; i < parts.length; i++) assert.equal(parts[i]!.range.start, parts[i - 1]!.range.end);
  for (const p of parts) for (const key of p.keys) assert.ok(key >= p.range.start && key < p.range.end);
  assert.deepEqual(parts.flatMap((p) => p.keys), keys);
  assert.deepEqual(partitionKeyspace([], 8192).map((p) => p.range), [{ start: KEY_MIN, end: KEY_END }]);
});
