import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../../../lib/errors.js";
import { lsn } from "../../../lib/lsn.js";
import { BodyWriter, type RecordBody } from "./body_reader.js";
import { parseSmgrRecord, SMGR_TRUNCATE_ALL, SMGR_TRUNCATE_HEAP, smgrRecordTypeName } from "./smgr.js";
import { parseDbaseRecord } from "./dbase.js";
import { parseRelmapRecord, RELMAP_FILE_SIZE_BYTES } from "./relmap.js";

const at = lsn(0x2000100);
const rec = (info: number, mainData: Uint8Array): RecordBody => ({ lsn: at, info, mainData });
function assertEveryPrefixFails(parse: (r: RecordBody) => unknown, r: RecordBody): void {
  for (let n = 0; n < r.mainData.length; n++) {
    assert.throws(
      () => parse({ ...r, mainData: r.mainData.subarray(0, n) }),
      (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && /record at 0\/2000100/.test(e.message),
      `prefix of ${n} bytes`,
    );
  }
}
const rel = { spcOid: 1663, dbOid: 5, relNumber: 16384 };

test("SMGR CREATE and TRUNCATE", () => {
  const create = new BodyWriter().relFileNode(rel).i32(2).finish();
  assert.deepEqual(parseSmgrRecord(rec(0x10, create)), { type: "CREATE", rel, forkNum: 2 });
  assertEveryPrefixFails(parseSmgrRecord, rec(0x10, create));
  assert.throws(() => parseSmgrRecord(rec(0x10, new BodyWriter().relFileNode(rel).i32(4).finish())), /forkNum 4 is outside \[0, 3\]/);

  const trunc = new BodyWriter().u32(17).relFileNode(rel).i32(SMGR_TRUNCATE_ALL).finish();
  assert.deepEqual(parseSmgrRecord(rec(0x20, trunc)), {
    type: "TRUNCATE", blkno: 17, rel, flags: 7, truncateHeap: true, truncateVm: true, truncateFsm: true,
  });
  const heapOnly = new BodyWriter().u32(0).relFileNode(rel).i32(SMGR_TRUNCATE_HEAP).finish();
  assert.deepEqual(parseSmgrRecord(rec(0x20, heapOnly)), {
    type: "TRUNCATE", blkno: 0, rel, flags: 1, truncateHeap: true, truncateVm: false, truncateFsm: false,
  });
  assertEveryPrefixFails(parseSmgrRecord, rec(0x20, trunc));
  assert.throws(() => parseSmgrRecord(rec(0x30, trunc)), /unknown SMGR record type/);
  assert.equal(smgrRecordTypeName(0x20), "TRUNCATE");
});

test("DBASE CREATE_FILE_COPY, CREATE_WAL_LOG, DROP", () => {
  const copy = new BodyWriter().u32(16400).u32(1663).u32(1).u32(1663).finish();
  assert.deepEqual(parseDbaseRecord(rec(0x00, copy)), {
    type: "CREATE_FILE_COPY", dbId: 16400, tablespaceId: 1663, srcDbId: 1, srcTablespaceId: 1663,
  });
  assertEveryPrefixFails(parseDbaseRecord, rec(0x00, copy));
  const walLog = new BodyWriter().u32(16401).u32(1663).finish();
  assert.deepEqual(parseDbaseRecord(rec(0x10, walLog)), { type: "CREATE_WAL_LOG", dbId: 16401, tablespaceId: 1663 });
  assertEveryPrefixFails(parseDbaseRecord, rec(0x10, walLog));
  const drop = new BodyWriter().u32(16400).i32(2).u32(1663).u32(16500).finish();
  assert.deepEqual(parseDbaseRecord(rec(0x20, drop)), { type: "DROP", dbId: 16400, tablespaceIds: [1663, 16500] });
  assertEveryPrefixFails(parseDbaseRecord, rec(0x20, drop));
  assert.throws(() => parseDbaseRecord(rec(0x20, new BodyWriter().u32(1).i32(-3).finish())), /ntablespaces -3 is outside/);
  assert.throws(() => parseDbaseRecord(rec(0x30, drop)), /unknown DBASE record type/);
});

test("RELMAP UPDATE carries the whole 512-byte file", () => {
  const file = new Uint8Array(RELMAP_FILE_SIZE_BYTES).map((_, i) => i & 0xff);
  const body = new BodyWriter().u32(5).u32(1663).i32(512).bytes(file).finish();
  const u = parseRelmapRecord(rec(0x00, body));
  assert.equal(u.dbId, 5);
  assert.equal(u.tsId, 1663);
  assert.equal(u.nbytes, 512);
  assert.deepEqual(u.data, file);
  assertEveryPrefixFails(parseRelmapRecord, rec(0x00, body));
  const wrongSize = new BodyWriter().u32(0).u32(1664).i32(500).bytes(file.subarray(0, 500)).finish();
  assert.throws(() => parseRelmapRecord(rec(0x00, wrongSize)), /nbytes 500, a relmapper file is 512 bytes/);
  assert.throws(() => parseRelmapRecord(rec(0x10, body)), /unknown RELMAP record type/);
});
