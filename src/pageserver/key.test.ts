import { test } from "node:test";
import assert from "node:assert/strict";
import {
  CHECKPOINT_KEY, CONTROLFILE_KEY, DBDIR_KEY, LAST_COMMIT_KEY, dbKeyRange, decodeKey, formatKey, KEY_END, keyFromBytes, keyToBytes,
  parseKey, relBlockKey, relDirKey, relKeyRange, relmapKey, relSizeKey, SlruKind, slruBlockKey, slruDirKey,
  slruSegSizeKey, TWOPHASE_DIR_KEY, twoPhaseFileKey, type Key,
} from "./key.js";

const rel = { spcOid: 1663, dbOid: 5, relNumber: 16384, fork: 0 };

test("every constructor round-trips through bytes, text and decodeKey", () => {
  const cases: Array<[Key, unknown]> = [
    [relBlockKey(rel, 7), { kind: "rel_block", rel, blockNumber: 7 }],
    [relBlockKey({ ...rel, fork: 2 }, 0xfffffffe), { kind: "rel_block", rel: { ...rel, fork: 2 }, blockNumber: 0xfffffffe }],
    [relSizeKey(rel), { kind: "rel_size", rel }],
    [relmapKey(1663, 5), { kind: "relmap", spcOid: 1663, dbOid: 5 }],
    [relDirKey(1663, 5), { kind: "rel_dir", spcOid: 1663, dbOid: 5 }],
    [DBDIR_KEY, { kind: "db_dir" }],
    [slruBlockKey(SlruKind.Clog, 3, 31), { kind: "slru_block", slru: SlruKind.Clog, segNo: 3, blockNumber: 31 }],
    [slruSegSizeKey(SlruKind.MultiXactMembers, 9), { kind: "slru_seg_size", slru: SlruKind.MultiXactMembers, segNo: 9 }],
    [slruDirKey(SlruKind.MultiXactOffsets), { kind: "slru_dir", slru: SlruKind.MultiXactOffsets }],
    [TWOPHASE_DIR_KEY, { kind: "twophase_dir" }],
    [twoPhaseFileKey(12345), { kind: "twophase_file", xid: 12345 }],
    [CONTROLFILE_KEY, { kind: "controlfile" }],
    [CHECKPOINT_KEY, { kind: "checkpoint" }],
    [LAST_COMMIT_KEY, { kind: "last_commit" }],
  ];
  const seen = new Set<bigint>();
  for (const [k, info] of cases) {
    assert.deepEqual(decodeKey(k), info);
    assert.equal(keyFromBytes(keyToBytes(k)), k);
    assert.equal(parseKey(formatKey(k)), k);
    assert.equal(formatKey(k).length, 36);
    assert.ok(!seen.has(k), `duplicate key ${formatKey(k)}`);
    seen.add(k);
  }
});

test("byte order groups a database's metadata before its relations, blocks before the size key", () => {
  assert.ok(relmapKey(1663, 5) < relDirKey(1663, 5));
  assert.ok(relDirKey(1663, 5) < relBlockKey({ ...rel, relNumber: 1 }, 0));
  assert.ok(relBlockKey(rel, 0) < relBlockKey(rel, 1));
  assert.ok(relBlockKey(rel, 0xfffffffe) < relSizeKey(rel));
  assert.ok(relSizeKey(rel) < relBlockKey({ ...rel, fork: 1 }, 0));
  const r = relKeyRange(rel);
  assert.ok(r.start <= relBlockKey(rel, 0) && relSizeKey(rel) < r.end && relBlockKey({ ...rel, fork: 1 }, 0) >= r.end);
  const d = dbKeyRange(1663, 5);
  assert.ok(d.start <= relmapKey(1663, 5) && relSizeKey(rel) < d.end && relmapKey(1663, 6) >= d.end);
  assert.ok(relSizeKey(rel) < DBDIR_KEY && DBDIR_KEY < slruDirKey(SlruKind.Clog));
  assert.ok(slruBlockKey(SlruKind.Clog, 0, 0) < slruSegSizeKey(SlruKind.Clog, 0));
  // byte comparison agrees with bigint comparison
  const a = keyToBytes(relBlockKey(rel, 1));
  const b = keyToBytes(relBlockKey(rel, 256));
  assert.equal(Buffer.compare(a, b), -1);
});

test("invalid construction and corrupt keys are reported precisely", () => {
  assert.throws(() => relBlockKey(rel, 0xffffffff), /InvalidBlockNumber/);
  assert.throws(() => relBlockKey({ ...rel, fork: 4 }, 0), /fork 4/);
  assert.throws(() => relBlockKey({ ...rel, relNumber: 0 }, 0), /reserved/);
  assert.throws(() => relBlockKey({ ...rel, spcOid: -1 }, 0), /spcOid -1/);
  assert.throws(() => twoPhaseFileKey(0), /xid 0/);
  assert.throws(() => parseKey("00"), /36 hex digits/);
  assert.throws(() => decodeKey(parseKey("05" + "0".repeat(34))), /namespace 0x5/);
  assert.throws(() => decodeKey(parseKey("01" + "0".repeat(33) + "1")), /non-zero/);
  assert.throws(() => decodeKey(KEY_END), /outside/);
  assert.throws(() => decodeKey(parseKey("0403" + "0".repeat(32))), /cluster file 3/);
  assert.throws(() => keyFromBytes(new Uint8Array(10)), /only 10 bytes/);
});

test("relation keys are the documented bytes for extreme and random fields", () => {
  const cases: Array<[number, number, number, number, number]> = [
    [0xffffffff, 0xffffffff, 0xffffffff, 3, 0xfffffffe],
    [1663, 5, 1, 0, 0],
  ];
  for (let i = 0; i < 200; i++) {
    const r = () => Math.floor(Math.random() * 0x1_0000_0000);
    cases.push([r(), r(), Math.max(1, r()), i % 4, r() % 0xffffffff]);
  }
  for (const [spcOid, dbOid, relNumber, fork, block] of cases) {
    const b = Buffer.from(keyToBytes(relBlockKey({ spcOid, dbOid, relNumber, fork }, block)));
    assert.equal(b[0], 0);
    assert.deepEqual([b.readUInt32BE(1), b.readUInt32BE(5), b.readUInt32BE(9), b[13], b.readUInt32BE(14)], [spcOid, dbOid, relNumber, fork, block]);
    const d = Buffer.from(keyToBytes(relDirKey(spcOid, dbOid)));
    assert.deepEqual([d[0], d.readUInt32BE(1), d.readUInt32BE(5), d.readUInt32BE(9), d[13], d.readUInt32BE(14)], [0, spcOid, dbOid, 0, 0, 1]);
    assert.equal(Buffer.from(keyToBytes(relmapKey(spcOid, dbOid))).readUInt32BE(14), 0);
    const s = Buffer.from(keyToBytes(relSizeKey({ spcOid, dbOid, relNumber, fork })));
    assert.equal(s.readUInt32BE(14), 0xffffffff);
    assert.deepEqual(s.subarray(0, 14), b.subarray(0, 14));
  }
  assert.throws(() => relBlockKey({ spcOid: -1, dbOid: 5, relNumber: 1, fork: 0 }, 0), /spcOid -1/);
  assert.throws(() => relBlockKey({ spcOid: 1, dbOid: 5, relNumber: 1, fork: 4 }, 0), /fork 4/);
  assert.throws(() => relSizeKey({ spcOid: 1, dbOid: 2 ** 32, relNumber: 1, fork: 0 }), /dbOid/);
});
