import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../../../lib/errors.js";
import { lsn } from "../../../lib/lsn.js";
import { BodyWriter, type RecordBody } from "./body_reader.js";
import {
  completedXid,
  parsePrepare,
  parseXactRecord,
  TWOPHASE_MAGIC,
  XACT_XINFO_HAS_AE_LOCKS,
  XACT_XINFO_HAS_DBINFO,
  XACT_XINFO_HAS_DROPPED_STATS,
  XACT_XINFO_HAS_GID,
  XACT_XINFO_HAS_INVALS,
  XACT_XINFO_HAS_ORIGIN,
  XACT_XINFO_HAS_RELFILENODES,
  XACT_XINFO_HAS_SUBXACTS,
  XACT_XINFO_HAS_TWOPHASE,
  xactRecordTypeName,
  type XactCompletion,
} from "./xact.js";

const at = lsn(0x16b3748);
const rec = (info: number, mainData: Uint8Array): RecordBody => ({ lsn: at, info, mainData });

function assertEveryPrefixFails(r: RecordBody): void {
  for (let n = 0; n < r.mainData.length; n++) {
    assert.throws(
      () => parseXactRecord({ ...r, mainData: r.mainData.subarray(0, n) }),
      (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && /XACT \w+ record at 0\/16B3748/.test(e.message),
      `prefix of ${n} bytes`,
    );
  }
}

const relA = { spcOid: 1663, dbOid: 5, relNumber: 16384 };
const relB = { spcOid: 1663, dbOid: 5, relNumber: 16390 };

test("minimal COMMIT: only xact_time, no xinfo", () => {
  const body = new BodyWriter().i64(800_000_000_000n).finish();
  const c = parseXactRecord(rec(0x00, body)) as XactCompletion;
  assert.equal(c.type, "COMMIT");
  assert.equal(c.xactTime, 800_000_000_000n);
  assert.equal(c.xinfo, 0);
  assert.deepEqual(c.subxacts, []);
  assert.equal(c.dbInfo, undefined);
  assertEveryPrefixFails(rec(0x00, body));
});

test("COMMIT with every optional part, in order", () => {
  const xinfo =
    XACT_XINFO_HAS_DBINFO |
    XACT_XINFO_HAS_SUBXACTS |
    XACT_XINFO_HAS_RELFILENODES |
    XACT_XINFO_HAS_DROPPED_STATS |
    XACT_XINFO_HAS_INVALS |
    XACT_XINFO_HAS_AE_LOCKS |
    XACT_XINFO_HAS_ORIGIN;
  const inval = new Uint8Array(32).map((_, i) => i);
  const body = new BodyWriter()
    .i64(1n)
    .u32(xinfo)
    .u32(5)
    .u32(1663)
    .i32(3)
    .u32(741)
    .u32(742)
    .u32(743)
    .i32(2)
    .relFileNode(relA)
    .relFileNode(relB)
    .i32(1)
    .i32(2)
    .u32(5)
    .u32(16384)
    .i32(2)
    .bytes(inval)
    .u64(0x1234_5678n)
    .i64(42n)
    .finish();
  const c = parseXactRecord(rec(0x80, body)) as XactCompletion;
  assert.deepEqual(c, {
    type: "COMMIT",
    xactTime: 1n,
    xinfo,
    dbInfo: { dbId: 5, tsId: 1663 },
    subxacts: [741, 742, 743],
    droppedRels: [relA, relB],
    droppedStats: [{ kind: 2, dbOid: 5, objOid: 16384 }],
    invalMessageCount: 2,
    invalMessages: inval,
    origin: { lsn: lsn(0x12345678), timestamp: 42n },
  });
  assertEveryPrefixFails(rec(0x80, body));
  // Without XLOG_XACT_HAS_INFO the same bytes are a minimal commit (xinfo ignored).
  assert.equal((parseXactRecord(rec(0x00, body)) as XactCompletion).xinfo, 0);
});

test("ABORT has no invalidations part even if the flag is set; dropped rels and subxacts parse", () => {
  const xinfo = XACT_XINFO_HAS_SUBXACTS | XACT_XINFO_HAS_RELFILENODES | XACT_XINFO_HAS_INVALS;
  const body = new BodyWriter().i64(7n).u32(xinfo).i32(1).u32(900).i32(1).relFileNode(relA).finish();
  const a = parseXactRecord(rec(0xa0, body)) as XactCompletion;
  assert.equal(a.type, "ABORT");
  assert.deepEqual(a.subxacts, [900]);
  assert.deepEqual(a.droppedRels, [relA]);
  assert.equal(a.invalMessageCount, 0);
  assertEveryPrefixFails(rec(0xa0, body));
});

test("COMMIT_PREPARED / ABORT_PREPARED carry the prepared xid and gid", () => {
  const xinfo = XACT_XINFO_HAS_DBINFO | XACT_XINFO_HAS_TWOPHASE | XACT_XINFO_HAS_GID;
  const body = new BodyWriter().i64(9n).u32(xinfo).u32(5).u32(1663).u32(777).cString("tx-1").finish();
  const cp = parseXactRecord(rec(0xb0, body)) as XactCompletion;
  assert.equal(cp.type, "COMMIT_PREPARED");
  assert.equal(cp.twophaseXid, 777);
  assert.equal(cp.twophaseGid, "tx-1");
  assert.equal(completedXid(0, cp), 777);
  assertEveryPrefixFails(rec(0xb0, body));
  const ap = parseXactRecord(rec(0xc0, body)) as XactCompletion;
  assert.equal(ap.type, "ABORT_PREPARED");
  assert.equal(ap.twophaseGid, "tx-1");
  // Plain commit: the header's xid is the one completed.
  assert.equal(completedXid(1234, parseXactRecord(rec(0x00, new BodyWriter().i64(0n).finish())) as XactCompletion), 1234);
});

test("counts larger than the body are corrupt, not allocations", () => {
  const body = new BodyWriter().i64(0n).u32(XACT_XINFO_HAS_SUBXACTS).i32(0x7fffffff).u32(1).finish();
  assert.throws(() => parseXactRecord(rec(0x80, body)), /nsubxacts 2147483647 is outside \[0, 1\]/);
  const neg = new BodyWriter().i64(0n).u32(XACT_XINFO_HAS_RELFILENODES).i32(-1).finish();
  assert.throws(() => parseXactRecord(rec(0x80, neg)), /nrels -1 is outside/);
  const longGid = new BodyWriter().i64(0n).u32(XACT_XINFO_HAS_TWOPHASE | XACT_XINFO_HAS_GID).u32(5).bytes(new Uint8Array(300).fill(0x61)).finish();
  assert.throws(() => parseXactRecord(rec(0x80, longGid)), /twophase_gid: no terminating NUL within 200 bytes/);
});

function prepareBody(): Uint8Array {
  const w = new BodyWriter()
    .u32(TWOPHASE_MAGIC)
    .u32(0) // total_len, patched below
    .u32(750)
    .u32(5)
    .i64(123456n)
    .u32(10)
    .i32(2) // nsubxacts
    .i32(1) // ncommitrels
    .i32(1) // nabortrels
    .i32(0)
    .i32(1) // nabortstats
    .i32(1) // ninvalmsgs
    .bool(false)
    .padTo(54)
    .u16(6) // gidlen "gid-7\0"
    .u64(0n)
    .i64(0n);
  w.align(8).cString("gid-7").align(8);
  w.u32(751).u32(752).align(8);
  w.relFileNode(relA).align(8);
  w.relFileNode(relB).align(8);
  w.i32(1).u32(5).u32(99).align(8);
  w.bytes(new Uint8Array(16).fill(3)).align(8);
  const body = w.finish();
  new DataView(body.buffer).setUint32(4, body.length + 4, true);
  return body;
}

test("PREPARE: TwoPhaseFileHeader and MAXALIGNed parts", () => {
  const body = prepareBody();
  const p = parsePrepare(body);
  assert.equal(p.magic, TWOPHASE_MAGIC);
  assert.equal(p.totalLength, body.length + 4);
  assert.equal(p.xid, 750);
  assert.equal(p.databaseOid, 5);
  assert.equal(p.preparedAt, 123456n);
  assert.equal(p.ownerOid, 10);
  assert.equal(p.gid, "gid-7");
  assert.deepEqual(p.subxacts, [751, 752]);
  assert.deepEqual(p.commitRels, [relA]);
  assert.deepEqual(p.abortRels, [relB]);
  assert.deepEqual(p.commitStats, []);
  assert.deepEqual(p.abortStats, [{ kind: 1, dbOid: 5, objOid: 99 }]);
  assert.equal(p.invalMessageCount, 1);
  assert.deepEqual(parseXactRecord(rec(0x10, body)), p);
  assertEveryPrefixFails(rec(0x10, body));
  const badMagic = body.slice();
  badMagic[0] = 0;
  assert.throws(() => parseXactRecord(rec(0x10, badMagic)), /TwoPhaseFileHeader magic 0x57f94500, expected 0x57f94534/);
});

test("ASSIGNMENT and INVALIDATION", () => {
  const body = new BodyWriter().u32(800).i32(3).u32(801).u32(802).u32(803).finish();
  assert.deepEqual(parseXactRecord(rec(0x50, body)), { type: "ASSIGNMENT", xtop: 800, subxacts: [801, 802, 803] });
  assertEveryPrefixFails(rec(0x50, body));
  const inv = new BodyWriter().i32(1).bytes(new Uint8Array(16).fill(1)).finish();
  assert.deepEqual(parseXactRecord(rec(0x60, inv)), { type: "INVALIDATION", invalMessageCount: 1, invalMessages: new Uint8Array(16).fill(1) });
  assertEveryPrefixFails(rec(0x60, inv));
  assert.throws(() => parseXactRecord(rec(0x70, body)), /unknown XACT record type \(info 0x70\)/);
  assert.equal(xactRecordTypeName(0x80 | 0x30), "COMMIT_PREPARED");
});
