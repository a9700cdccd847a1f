import { test } from "node:test";
import assert from "node:assert/strict";
import { identifyRecord, recordTypeName, rmgrName, RMGR_NAMES } from "./rmgr_names.js";

test("rmgr names as pg_waldump prints them", () => {
  assert.equal(RMGR_NAMES.length, 22);
  assert.equal(rmgrName(0), "XLOG");
  assert.equal(rmgrName(9), "Heap2");
  assert.equal(rmgrName(10), "Heap");
  assert.equal(rmgrName(19), "ReplicationOrigin");
  assert.equal(rmgrName(21), "LogicalMessage");
  assert.equal(rmgrName(128), "custom128");
  assert.equal(rmgrName(255), "custom255");
});

test("record type names follow each rm_identify", () => {
  assert.equal(recordTypeName(10, 0x80), "INSERT+INIT");
  assert.equal(recordTypeName(10, 0x40), "HOT_UPDATE");
  assert.equal(recordTypeName(10, 0x40 | 0x01), "HOT_UPDATE"); // XLR_* bits are ignored
  assert.equal(recordTypeName(10, 0x50), "HEAP_CONFIRM");
  assert.equal(recordTypeName(9, 0xd0), "MULTI_INSERT+INIT");
  assert.equal(recordTypeName(9, 0x90), "UNKNOWN (90)");
  assert.equal(recordTypeName(1, 0x00), "COMMIT");
  assert.equal(recordTypeName(1, 0x80), "COMMIT"); // XLOG_XACT_HAS_INFO
  assert.equal(recordTypeName(1, 0x60), "INVALIDATION");
  assert.equal(recordTypeName(0, 0x00), "CHECKPOINT_SHUTDOWN");
  assert.equal(recordTypeName(0, 0xa0), "FPI_FOR_HINT");
  assert.equal(recordTypeName(0, 0xc0), "UNKNOWN (c0)");
  assert.equal(recordTypeName(11, 0x00), "INSERT_LEAF");
  assert.equal(recordTypeName(17, 0x90), "INSERT+INIT");
  assert.equal(recordTypeName(20, 0x30), "Generic");
  assert.equal(recordTypeName(18, 0x10), "TRUNCATE");
  assert.equal(identifyRecord(18, 0x12), undefined); // commit_ts switches on the raw info byte
  assert.equal(recordTypeName(19, 0x02), "UNKNOWN (0)");
  assert.equal(recordTypeName(130, 0x10), "UNKNOWN (10)");
  assert.equal(recordTypeName(4, 0x10), "CREATE_WAL_LOG");
  assert.equal(recordTypeName(8, 0x10), "RUNNING_XACTS");
});
