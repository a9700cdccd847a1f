import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../../../lib/errors.js";
import { lsn } from "../../../lib/lsn.js";
import { BodyWriter, type RecordBody } from "./body_reader.js";
import {
  encodeCheckPoint,
  parseCheckPoint,
  parseXlogRecord,
  SIZE_OF_CHECKPOINT,
  xidEpoch,
  xidOf,
  xlogRecordTypeName,
  type CheckPoint,
} from "./xlog.js";

const at = lsn(0x16b3748);
const rec = (info: number, mainData: Uint8Array): RecordBody => ({ lsn: at, info, mainData });

function assertEveryPrefixFails(parse: (r: RecordBody) => unknown, r: RecordBody): void {
  for (let n = 0; n < r.mainData.length; n++) {
    assert.throws(
      () => parse({ ...r, mainData: r.mainData.subarray(0, n) }),
      (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && /record at 0\/16B3748/.test(e.message),
      `prefix of ${n} bytes`,
    );
  }
}

const cp: CheckPoint = {
  redo: lsn(0x1_0000_0028n),
  thisTimeLineId: 3,
  prevTimeLineId: 2,
  fullPageWrites: true,
  nextXid: (5n << 32n) | 1234n,
  nextOid: 24576,
  nextMulti: 7,
  nextMultiOffset: 13,
  oldestXid: 716,
  oldestXidDb: 1,
  oldestMulti: 1,
  oldestMultiDb: 5,
  time: 1_790_000_000n,
  oldestCommitTsXid: 0,
  newestCommitTsXid: 0,
  oldestActiveXid: 1233,
};

test("CheckPoint: field offsets follow the 64-bit C layout (88 bytes)", () => {
  const w = new BodyWriter()
    .u64(cp.redo)
    .u32(3)
    .u32(2)
    .bool(true)
    .padTo(24)
    .u64(cp.nextXid)
    .u32(24576)
    .u32(7)
    .u32(13)
    .u32(716)
    .u32(1)
    .u32(1)
    .u32(5)
    .padTo(64)
    .i64(cp.time)
    .u32(0)
    .u32(0)
    .u32(1233)
    .padTo(88)
    .finish();
  assert.equal(w.length, SIZE_OF_CHECKPOINT);
  assert.deepEqual(parseCheckPoint(w), cp);
  assert.deepEqual(encodeCheckPoint(cp), w);
  assert.equal(xidEpoch(cp.nextXid), 5);
  assert.equal(xidOf(cp.nextXid), 1234);
});

test("CHECKPOINT_SHUTDOWN / ONLINE records and their invalid prefixes", () => {
  const body = encodeCheckPoint(cp);
  assert.deepEqual(parseXlogRecord(rec(0x00, body)), { type: "CHECKPOINT_SHUTDOWN", checkpoint: cp });
  assert.deepEqual(parseXlogRecord(rec(0x10, body)), { type: "CHECKPOINT_ONLINE", checkpoint: cp });
  // The low four info bits belong to the WAL machinery (XLR_SPECIAL_REL_UPDATE etc.) and are ignored.
  assert.equal(parseXlogRecord(rec(0x11, body)).type, "CHECKPOINT_ONLINE");
  assertEveryPrefixFails(parseXlogRecord, rec(0x10, body));
  assert.throws(() => parseXlogRecord(rec(0x10, body.subarray(0, 87))), /body is 87 bytes, CheckPoint needs 88 at offset 0/);
});

test("NEXTOID, SWITCH, NOOP, BACKUP_END, FPW_CHANGE, FPI, FPI_FOR_HINT", () => {
  const nextOid = new BodyWriter().u32(40000).finish();
  assert.deepEqual(parseXlogRecord(rec(0x30, nextOid)), { type: "NEXTOID", nextOid: 40000 });
  assertEveryPrefixFails(parseXlogRecord, rec(0x30, nextOid));
  assert.deepEqual(parseXlogRecord(rec(0x40, new Uint8Array(0))), { type: "SWITCH" });
  assert.deepEqual(parseXlogRecord(rec(0x20, new Uint8Array(3))), { type: "NOOP" });
  const backupEnd = new BodyWriter().u64(0x3000028n).finish();
  assert.deepEqual(parseXlogRecord(rec(0x50, backupEnd)), { type: "BACKUP_END", startLsn: lsn(0x3000028) });
  assertEveryPrefixFails(parseXlogRecord, rec(0x50, backupEnd));
  assert.deepEqual(parseXlogRecord(rec(0x80, Uint8Array.of(0))), { type: "FPW_CHANGE", fullPageWrites: false });
  assertEveryPrefixFails(parseXlogRecord, rec(0x80, Uint8Array.of(1)));
  assert.deepEqual(parseXlogRecord(rec(0xb0, new Uint8Array(0))), { type: "FPI" });
  assert.deepEqual(parseXlogRecord(rec(0xa0, new Uint8Array(0))), { type: "FPI_FOR_HINT" });
});

test("PARAMETER_CHANGE, RESTORE_POINT, END_OF_RECOVERY, OVERWRITE_CONTRECORD", () => {
  const pc = new BodyWriter().i32(100).i32(8).i32(10).i32(0).i32(64).i32(1).bool(true).bool(false).padTo(28).finish();
  assert.deepEqual(parseXlogRecord(rec(0x60, pc)), {
    type: "PARAMETER_CHANGE",
    params: {
      maxConnections: 100,
      maxWorkerProcesses: 8,
      maxWalSenders: 10,
      maxPreparedXacts: 0,
      maxLocksPerXact: 64,
      walLevel: 1,
      walLogHints: true,
      trackCommitTimestamp: false,
    },
  });
  assertEveryPrefixFails(parseXlogRecord, rec(0x60, pc));

  const rp = new BodyWriter().i64(123n).cString("before-upgrade").padTo(72).finish();
  assert.deepEqual(parseXlogRecord(rec(0x70, rp)), { type: "RESTORE_POINT", time: 123n, name: "before-upgrade" });
  assertEveryPrefixFails(parseXlogRecord, rec(0x70, rp));
  const unterminated = new BodyWriter().i64(1n).bytes(new Uint8Array(64).fill(0x41)).finish();
  assert.throws(() => parseXlogRecord(rec(0x70, unterminated)), /rp_name: no terminating NUL within 64 bytes/);

  const eor = new BodyWriter().i64(-5n).u32(4).u32(3).finish();
  assert.deepEqual(parseXlogRecord(rec(0x90, eor)), { type: "END_OF_RECOVERY", time: -5n, thisTimeLineId: 4, prevTimeLineId: 3 });
  assertEveryPrefixFails(parseXlogRecord, rec(0x90, eor));

  const oc = new BodyWriter().u64(0x5000000n).i64(9n).finish();
  assert.deepEqual(parseXlogRecord(rec(0xd0, oc)), { type: "OVERWRITE_CONTRECORD", overwrittenLsn: lsn(0x5000000), time: 9n });
  assertEveryPrefixFails(parseXlogRecord, rec(0xd0, oc));
});

test("unknown XLOG info is corrupt data, names as pg_waldump prints them", () => {
  assert.throws(() => parseXlogRecord(rec(0xc0, new Uint8Array(0))), (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && /unknown XLOG record type \(info 0xc0\)/.test(e.message));
  assert.equal(xlogRecordTypeName(0x10), "CHECKPOINT_ONLINE");
  assert.equal(xlogRecordTypeName(0xb0), "FPI");
  assert.equal(xlogRecordTypeName(0xc0), undefined);
});
