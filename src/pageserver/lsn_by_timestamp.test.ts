import { test } from "node:test";
import assert from "node:assert/strict";
import { lsn, type Lsn } from "../lib/lsn.js";
import { requestContext } from "../lib/tasks.js";
import { seededRandom } from "../lib/prng.js";
import type { DatadirReader } from "./datadir.js";
import { LAST_COMMIT_KEY, type Key } from "./key.js";
import {
  decodeLastCommit,
  encodeLastCommit,
  findLsnByTimestamp,
  formatPgMicrosRfc3339,
  LAST_COMMIT_VALUE_BYTES,
  parseRfc3339ToPgMicros,
  type CommitRecordInfo,
} from "./lsn_by_timestamp.js";

const ctx = requestContext("other", new AbortController().signal);

/** Integers in [0, n) from a seeded generator. */
class Prng {
  private readonly next: () => number;
  constructor(seed: number) {
    this.next = seededRandom(seed);
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/** Versions of the last-commit key, as ingest writes them (one image per commit at its end LSN). */
class CommitHistory implements DatadirReader {
  readonly commits: CommitRecordInfo[] = [];
  reads = 0;
  add(endLsn: bigint, timestampUs: bigint): void {
    this.commits.push({ endLsn: lsn(endLsn), timestampUs, xid: this.commits.length + 3 });
  }
  async get(key: Key, at: Lsn): Promise<Uint8Array | undefined> {
    assert.equal(key, LAST_COMMIT_KEY);
    this.reads++;
    let found: CommitRecordInfo | undefined;
    for (const c of this.commits) if (c.endLsn <= at) found = c;
    return found === undefined ? undefined : encodeLastCommit(found);
  }
}

test("last-commit value: round trip and corrupt input", () => {
  const c: CommitRecordInfo = { timestampUs: 123_456_789_012n, endLsn: lsn(0x1_0000_0028n), xid: 0xfffffffe };
  assert.deepEqual(decodeLastCommit(encodeLastCommit(c)), c);
  assert.deepEqual(decodeLastCommit(encodeLastCommit({ ...c, timestampUs: -5n })).timestampUs, -5n);
  assert.throws(() => decodeLastCommit(new Uint8Array(LAST_COMMIT_VALUE_BYTES - 1)), /20 bytes, expected 21/);
  // the exact bytes: version, then little-endian i64 timestamp, u64 LSN, u32 xid
  const ref = Buffer.alloc(LAST_COMMIT_VALUE_BYTES);
  ref[0] = 1;
  ref.writeBigInt64LE(-5n, 1);
  ref.writeBigUInt64LE(0xfedc_ba98_7654_3210n, 9);
  ref.writeUInt32LE(0xfffffffe, 17);
  assert.deepEqual(Buffer.from(encodeLastCommit({ timestampUs: -5n, endLsn: lsn(0xfedc_ba98_7654_3210n), xid: 0xfffffffe })), ref);
  const bad = encodeLastCommit(c);
  bad[0] = 9;
  assert.throws(() => decodeLastCommit(bad), /format version 9/);
});

test("RFC 3339 <-> PostgreSQL TimestampTz", () => {
  assert.equal(parseRfc3339ToPgMicros("2000-01-01T00:00:00Z"), 0n);
  assert.equal(parseRfc3339ToPgMicros("2000-01-01T00:00:01.5Z"), 1_500_000n);
  assert.equal(parseRfc3339ToPgMicros("2000-01-01T02:00:00+02:00"), 0n);
  assert.equal(parseRfc3339ToPgMicros("1999-12-31T23:59:59.999999Z"), -1n);
  assert.equal(parseRfc3339ToPgMicros("2026-11-29 07:03:00.1234567Z"), parseRfc3339ToPgMicros("2026-11-29T07:03:00.123456Z"));
  for (const us of [0n, 1n, -1n, 817_000_000_123_456n]) assert.equal(parseRfc3339ToPgMicros(formatPgMicrosRfc3339(us)), us);
  assert.equal(formatPgMicrosRfc3339(1_500_000n), "2000-01-01T00:00:01.500000Z");
  for (const bad of ["", "2026-11-29", "2026-11-29T07:03:00", "yesterday", "2026-13-45T99:00:00Z", "2026-11-29T07:03:00.Z"]) {
    assert.throws(() => parseRfc3339ToPgMicros(bad), /Cannot parse timestamp/, bad);
  }
});

test("monotone commit times: the last commit at or before T, with past / future / nodata at the edges", async () => {
  const h = new CommitHistory();
  const lo = lsn(0x100_0000n);
  const hi = lsn(0x800_0000n);
  const empty = await findLsnByTimestamp(h, 5n, { lo, hi }, ctx);
  assert.deepEqual([empty.kind, empty.lsn], ["nodata", hi]);
  const rng = new Prng(7);
  let at = 0x100_0000n;
  let ts = 1_000_000n;
  for (let i = 0; i < 500; i++) {
    at += BigInt(8 * (1 + rng.int(2000)));
    ts += BigInt(1 + rng.int(5000));
    h.add(at, ts);
  }
  assert.ok(at < hi);
  for (let trial = 0; trial < 300; trial++) {
    const i = rng.int(h.commits.length);
    const c = h.commits[i]!;
    const next = h.commits[i + 1];
    // any T in [ts(c), ts(next)) must give c
    const t = next === undefined ? c.timestampUs : c.timestampUs + BigInt(rng.int(Number(next.timestampUs - c.timestampUs)));
    h.reads = 0;
    const r = await findLsnByTimestamp(h, t, { lo, hi }, ctx);
    if (next === undefined) {
      assert.deepEqual([r.kind, r.lsn, r.commit?.endLsn], ["future", hi, c.endLsn]);
    } else {
      assert.deepEqual([r.kind, r.lsn, r.commit?.timestampUs], ["present", c.endLsn, c.timestampUs], `T ${t}`);
    }
    assert.ok(h.reads <= 2 + 27, `${h.reads} reads for a 112 MiB range`);
  }
  const past = await findLsnByTimestamp(h, h.commits[0]!.timestampUs - 1n, { lo, hi }, ctx);
  assert.deepEqual([past.kind, past.lsn, past.commit], ["past", lo, undefined]);
  const future = await findLsnByTimestamp(h, ts + 1n, { lo, hi }, ctx);
  assert.deepEqual([future.kind, future.lsn], ["future", hi]);
});

test("a range starting above some commits (a branch, a GC cutoff) clamps to its start or says past", async () => {
  const h = new CommitHistory();
  h.add(0x1000n, 100n); // below the range: visible through the ancestor
  h.add(0x2000n, 200n);
  h.add(0x5000n, 500n);
  const range = { lo: lsn(0x3000n), hi: lsn(0x9000n) };
  // T between the commit at 0x2000 and the next: the state at lo is the same state
  const r = await findLsnByTimestamp(h, 300n, range, ctx);
  assert.deepEqual([r.kind, r.lsn, r.commit?.endLsn], ["present", lsn(0x3000n), lsn(0x2000n)]);
  // T before the commit that lo already contains: history before lo is not readable here
  const p = await findLsnByTimestamp(h, 150n, range, ctx);
  assert.deepEqual([p.kind, p.lsn], ["past", lsn(0x3000n)]);
  const q = await findLsnByTimestamp(h, 500n, range, ctx);
  assert.deepEqual([q.kind, q.lsn], ["future", lsn(0x9000n)]);
  await assert.rejects(findLsnByTimestamp(h, 1n, { lo: lsn(0x9000n), hi: lsn(0x3000n) }, ctx), /range 0\/9000\.\.0\/3000 is empty/);
});

test("commit times out of WAL order: the answer is a crossing (ts <= T, the next commit's ts > T)", async () => {
  const rng = new Prng(11);
  for (let round = 0; round < 20; round++) {
    const h = new CommitHistory();
    let at = 0x10000n;
    let ts = 10_000n;
    for (let i = 0; i < 300; i++) {
      at += BigInt(8 * (1 + rng.int(500)));
      ts += BigInt(rng.int(100));
      // concurrent commits: a timestamp taken a little before an earlier-inserted one's
      h.add(at, ts - BigInt(rng.int(3) === 0 ? rng.int(250) : 0));
    }
    const range = { lo: lsn(0x10000n), hi: lsn(at + 64n) };
    for (let trial = 0; trial < 50; trial++) {
      const t = 10_000n + BigInt(rng.int(Number(ts - 10_000n)));
      const r = await findLsnByTimestamp(h, t, range, ctx);
      if (r.kind !== "present") continue;
      const i = h.commits.findIndex((c) => c.endLsn === r.lsn);
      assert.ok(i >= 0);
      assert.ok(h.commits[i]!.timestampUs <= t, "the commit is at or before T");
      const next = h.commits[i + 1];
      assert.ok(next === undefined || next.timestampUs > t, "the next commit is after T");
    }
  }
});
