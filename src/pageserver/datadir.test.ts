import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../lib/errors.js";
import { lsn, type Lsn } from "../lib/lsn.js";
import { requestContext } from "../lib/tasks.js";
import { decodeRecord, encodeRecord } from "../formats/wal/xlog_record.js";
import {
  DatadirModification,
  REL_SIZE_DROPPED,
  ZERO_PAGE_VALUE,
  dbDirEntryId,
  dbDirEntryOf,
  decodeDbDir,
  decodeRelDir,
  decodeRelSize,
  decodeSlruDir,
  decodeSlruSegSize,
  decodeTwoPhaseDir,
  encodeDbDir,
  encodeRelDir,
  encodeRelSize,
  encodeSlruDir,
  encodeSlruSegSize,
  encodeTwoPhaseDir,
  isZeroPageMarker,
  recordVersionLsn,
  redoInputOf,
  relDirEntryId,
  relDirEntryOf,
  walRecordValue,
  type DatadirPut,
  type DatadirReader,
  type DatadirWriter,
} from "./datadir.js";
import { DBDIR_KEY, relSizeKey, type Key } from "./key.js";
import { decodeValue, encodeValue } from "./layers/value.js";

function corrupt(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && re.test(e.message));
}

test("relation size: round trip, dropped marker, invalid bytes", () => {
  for (const n of [0, 1, 131072, 0xfffffffe]) assert.equal(decodeRelSize(encodeRelSize(n)), n);
  assert.equal(decodeRelSize(encodeRelSize(undefined)), undefined);
  assert.throws(() => encodeRelSize(-1), StrataError);
  corrupt(() => decodeRelSize(new Uint8Array(4)), /4 bytes, expected 5/);
  const bad = encodeRelSize(3);
  bad[0] = 9;
  corrupt(() => decodeRelSize(bad), /format version 9/);
  assert.equal(REL_SIZE_DROPPED, 0xffffffff);
  assert.equal(decodeSlruSegSize(encodeSlruSegSize(32)), 32);
  corrupt(() => decodeSlruSegSize(encodeRelSize(undefined)), /dropped marker/);
});

test("relation directory: sorted round trip, ids, invalid entries and counts", () => {
  const ids = [relDirEntryId(16384, 0), relDirEntryId(16384, 2), relDirEntryId(1259, 0), relDirEntryId(0xffffffff, 3)];
  const bytes = encodeRelDir(ids);
  assert.deepEqual([...decodeRelDir(bytes)].sort((a, b) => a - b), [...ids].sort((a, b) => a - b));
  assert.deepEqual(relDirEntryOf(relDirEntryId(0xffffffff, 3)), { relNumber: 0xffffffff, fork: 3 });
  assert.equal(decodeRelDir(encodeRelDir([])).size, 0);
  // sorted by (relNumber, fork) on disk: 1259 first
  assert.equal(new DataView(bytes.buffer).getUint32(5, true), 1259);
  corrupt(() => decodeRelDir(bytes.subarray(0, bytes.length - 1)), /expected 25 for 4 entries/);
  const badFork = new Uint8Array(bytes);
  badFork[9] = 4;
  corrupt(() => decodeRelDir(badFork), /fork 4/);
  const relZero = encodeRelDir([relDirEntryId(0, 1)]);
  corrupt(() => decodeRelDir(relZero), /relation number 0/);
  const huge = new Uint8Array(5);
  huge[0] = 1;
  new DataView(huge.buffer).setUint32(1, 0xffffffff, true);
  corrupt(() => decodeRelDir(huge), /exceeds the limit/);
  corrupt(() => decodeRelDir(new Uint8Array(2)), /shorter than the 5-byte header/);
});

test("database, SLRU and two-phase directories round trip", () => {
  const dbs = [dbDirEntryId(1664, 0), dbDirEntryId(1663, 5), dbDirEntryId(1663, 0xffffffff)];
  assert.deepEqual([...decodeDbDir(encodeDbDir(dbs))].sort(), [...dbs].sort());
  assert.deepEqual(dbDirEntryOf(dbDirEntryId(1663, 0xffffffff)), { spcOid: 1663, dbOid: 0xffffffff });
  corrupt(() => decodeDbDir(encodeDbDir(dbs).subarray(0, 10)), /expected/);
  assert.deepEqual([...decodeSlruDir(encodeSlruDir([3, 0, 0xffff]))].sort((a, b) => a - b), [0, 3, 0xffff]);
  assert.deepEqual([...decodeTwoPhaseDir(encodeTwoPhaseDir([1000, 745]))].sort((a, b) => a - b), [745, 1000]);
  corrupt(() => decodeTwoPhaseDir(new Uint8Array([2, 0, 0, 0, 0])), /format version 2/);
});

test("WAL record values round trip through the layer value encoding and back to a DecodedRecord", () => {
  const raw = encodeRecord({
    rmid: 10,
    info: 0x00,
    xid: 777,
    prevLsn: lsn(0x1000028),
    mainData: new Uint8Array([1, 0, 0]),
    blocks: [{ id: 0, forkNum: 0, rel: { spcOid: 1663, dbOid: 5, relNumber: 16384 }, blockNumber: 7, data: new Uint8Array(30) }],
  });
  const at = lsn(0x1000100);
  const rec = decodeRecord(raw, at, lsn(0x1000100 + raw.length));
  const v = walRecordValue(rec, true, "postgres");
  const back = decodeValue(encodeValue(v));
  assert.equal(back.kind, "wal");
  if (back.kind !== "wal") return;
  assert.equal(back.willInit, true);
  assert.equal(back.engine, "postgres");
  const input = redoInputOf(back);
  assert.equal(input.kind, "wal");
  if (input.kind !== "wal") return;
  assert.equal(input.record.lsn, at);
  assert.equal(input.record.endLsn, recordVersionLsn(rec));
  assert.equal(input.record.xid, 777);
  assert.equal(input.record.blocks[0]!.blockNumber, 7);
  assert.deepEqual(input.record.raw, raw);
  // The same record for another block shares the encoded bytes but not the flags;
  // another record (same bytes, other LSN) gets its own header.
  const again = walRecordValue(rec, false);
  assert.equal(again.willInit, false);
  assert.equal(again.engine, undefined);
  assert.deepEqual(again.rec, v.rec);
  const moved = walRecordValue(decodeRecord(raw, lsn(0x2000100), lsn(0x2000100 + raw.length)), false);
  const movedInput = redoInputOf(moved);
  assert.ok(movedInput.kind === "wal" && movedInput.record.lsn === lsn(0x2000100));
  const backAgain = redoInputOf(walRecordValue(rec, false));
  assert.ok(backAgain.kind === "wal" && backAgain.record.lsn === at);
  // the marker
  assert.equal(redoInputOf(ZERO_PAGE_VALUE).kind, "zeroPage");
  assert.ok(isZeroPageMarker(decodeValue(encodeValue(ZERO_PAGE_VALUE))));
  assert.ok(!isZeroPageMarker(v));
  // damaged values
  corrupt(() => redoInputOf({ kind: "wal", willInit: false, rec: new Uint8Array(5) }), /shorter than the 12-byte header/);
  const broken = new Uint8Array(v.rec);
  broken[20] = broken[20]! ^ 0xff;
  assert.throws(() => redoInputOf({ kind: "wal", willInit: false, rec: broken }), StrataError);
});

class MapReader implements DatadirReader {
  reads: Array<[Key, Lsn]> = [];
  constructor(private readonly values: Map<Key, Uint8Array>) {}
  async get(key: Key, at: Lsn): Promise<Uint8Array | undefined> {
    this.reads.push([key, at]);
    return this.values.get(key);
  }
}

test("DatadirModification: overlay reads, one version per key, commit order", async () => {
  const sizeKey = relSizeKey({ spcOid: 1663, dbOid: 5, relNumber: 16384, fork: 0 });
  const reader = new MapReader(new Map([[DBDIR_KEY, encodeDbDir([])]]));
  const mod = new DatadirModification(reader, lsn(100), lsn(200), requestContext("other", new AbortController().signal));
  assert.deepEqual(await mod.get(DBDIR_KEY), encodeDbDir([]));
  assert.deepEqual(reader.reads, [[DBDIR_KEY, lsn(100)]], "reads below the batch go to the reader at readLsn");
  mod.put(sizeKey, { kind: "image", bytes: encodeRelSize(1) });
  mod.put(DBDIR_KEY, { kind: "image", bytes: encodeDbDir([dbDirEntryId(1663, 5)]) });
  mod.put(sizeKey, { kind: "image", bytes: encodeRelSize(2) });
  assert.equal(decodeRelSize((await mod.get(sizeKey))!), 2, "reads see the batch's last put");
  assert.equal(reader.reads.length, 1);
  mod.put(relSizeKey({ spcOid: 1663, dbOid: 5, relNumber: 1, fork: 0 }), ZERO_PAGE_VALUE);
  await assert.rejects(mod.get(relSizeKey({ spcOid: 1663, dbOid: 5, relNumber: 1, fork: 0 })), /reads back WAL value/);
  const written: DatadirPut[][] = [];
  const writer: DatadirWriter = {
    put: async (e) => void written.push([...e]),
    finishRecord: () => undefined,
  };
  await mod.commit(writer);
  assert.equal(written.length, 1);
  assert.deepEqual(
    written[0]!.map((e) => [e.key, e.lsn]),
    [
      [sizeKey, lsn(200)],
      [DBDIR_KEY, lsn(200)],
      [relSizeKey({ spcOid: 1663, dbOid: 5, relNumber: 1, fork: 0 }), lsn(200)],
    ],
  );
  assert.equal(decodeRelSize((written[0]![0]!.value as { bytes: Uint8Array }).bytes), 2);
  await mod.commit(writer);
  assert.equal(written.length, 1, "an empty batch writes nothing");
});
