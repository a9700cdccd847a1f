/**
 * Unit tests for pg_control: encode/parse round trips and one invalid case
 * per check. test/pg_control.test.ts compares against a real server and
 * pg_controldata.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  CONTROL_FILE_CRC_OFFSET,
  DbState,
  PG_CONTROL_FILE_SIZE,
  PG_CONTROL_VERSION,
  WalLevel,
  checkControlFileCompatible,
  controlFileCrc,
  encodeControlFile,
  formatControlFileText,
  parseControlFile,
  type CheckPoint,
  type ControlFileData,
} from "./pg_control.js";
import { lsn, parseLsn } from "../lib/lsn.js";
import { StrataError } from "../lib/errors.js";
import { crc32c } from "./crc32c.js";

function sampleCheckPoint(): CheckPoint {
  return {
    redo: parseLsn("0/1A2B3C8"),
    thisTimeLineId: 1,
    prevTimeLineId: 1,
    fullPageWrites: true,
    nextXid: (2n << 32n) | 751n,
    nextOid: 24576,
    nextMulti: 1,
    nextMultiOffset: 0,
    oldestXid: 716,
    oldestXidDb: 1,
    oldestMulti: 1,
    oldestMultiDb: 1,
    time: 1_800_000_000n,
    oldestCommitTsXid: 0,
    newestCommitTsXid: 0,
    oldestActiveXid: 0,
  };
}

function sampleControlFile(): ControlFileData {
  return {
    systemIdentifier: 7_300_000_000_000_000_123n,
    pgControlVersion: PG_CONTROL_VERSION,
    catalogVersionNo: 202209061,
    state: DbState.shutdowned,
    time: 1_800_000_005n,
    checkPoint: parseLsn("0/1A2B3C8"),
    checkPointCopy: sampleCheckPoint(),
    unloggedLsn: lsn(1000),
    minRecoveryPoint: lsn(0),
    minRecoveryPointTli: 0,
    backupStartPoint: lsn(0),
    backupEndPoint: lsn(0),
    backupEndRequired: false,
    walLevel: WalLevel.replica,
    walLogHints: false,
    maxConnections: 100,
    maxWorkerProcesses: 8,
    maxWalSenders: 10,
    maxPreparedXacts: 0,
    maxLocksPerXact: 64,
    trackCommitTimestamp: false,
    maxAlign: 8,
    floatFormat: 1234567.0,
    blcksz: 8192,
    relsegSize: 131072,
    xlogBlcksz: 8192,
    xlogSegSize: 16777216,
    nameDataLen: 64,
    indexMaxKeys: 32,
    toastMaxChunkSize: 1996,
    loblksize: 2048,
    float8ByVal: true,
    dataChecksumVersion: 1,
    mockAuthenticationNonce: Uint8Array.from({ length: 32 }, (_, i) => i * 7),
  };
}

test("checkPointCopy sits at offset 40 with pg_control.h's field offsets", () => {
  const cf = sampleControlFile();
  const file = encodeControlFile(cf);
  const dv = new DataView(file.buffer);
  assert.equal(dv.getBigUint64(40, true), cf.checkPointCopy.redo);
  assert.equal(dv.getBigUint64(40 + 24, true), cf.checkPointCopy.nextXid);
  assert.equal(dv.getUint32(40 + 32, true), 24576);
  assert.equal(dv.getBigInt64(40 + 64, true), cf.checkPointCopy.time);
  assert.equal(dv.getUint32(128, true), 1000); // unloggedLSN right after the 88-byte copy
  for (const off of [17, 18, 19, 20, 21, 22, 23, 60, 61, 62, 63, 84, 85, 86, 87]) assert.equal(file[40 + off], 0);
  assert.throws(
    () => encodeControlFile({ ...cf, checkPointCopy: { ...cf.checkPointCopy, nextOid: -1 } }),
    (e: unknown) => e instanceof StrataError && e.code === "invalid_argument",
  );
});

test("ControlFileData: 8192-byte file, CRC over 288 bytes, exact round trip", () => {
  const cf = sampleControlFile();
  const file = encodeControlFile(cf);
  assert.equal(file.length, PG_CONTROL_FILE_SIZE);
  assert.equal(new DataView(file.buffer).getUint32(CONTROL_FILE_CRC_OFFSET, true), crc32c(file.subarray(0, 288)));
  assert.ok(file.subarray(296).every((b) => b === 0));
  const back = parseControlFile(file);
  assert.deepEqual(back, cf);
  assert.deepEqual(encodeControlFile(back), file);
  // the struct alone (296 bytes) parses too
  assert.deepEqual(parseControlFile(file.subarray(0, 296)), cf);
});

test("every byte before the CRC is covered: flipping any one fails with corrupt_data", () => {
  const file = encodeControlFile(sampleControlFile());
  for (let off = 0; off < CONTROL_FILE_CRC_OFFSET + 4; off++) {
    if (off >= 8 && off < 12) continue; // version bytes: reported as unsupported (next test)
    const bad = file.slice();
    bad[off] = (bad[off] ?? 0) ^ 0x40;
    assert.throws(
      () => parseControlFile(bad),
      (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && /CRC mismatch/.test(e.message),
      `offset ${off}`,
    );
  }
});

test("other pg_control versions are unsupported; short files truncated", () => {
  const cf = sampleControlFile();
  const file = encodeControlFile({ ...cf, pgControlVersion: 1201 });
  assert.throws(() => parseControlFile(file), (e: unknown) => e instanceof StrataError && e.code === "unsupported" && /1201/.test(e.message));
  assert.throws(() => parseControlFile(file.subarray(0, 200)), (e: unknown) => e instanceof StrataError && e.code === "truncated");
  assert.equal(controlFileCrc(encodeControlFile(cf)), new DataView(encodeControlFile(cf).buffer).getUint32(288, true));
});

test("checkControlFileCompatible rejects foreign layouts", () => {
  checkControlFileCompatible(sampleControlFile());
  assert.throws(() => checkControlFileCompatible({ ...sampleControlFile(), blcksz: 16384 }), /blcksz/);
  assert.throws(() => checkControlFileCompatible({ ...sampleControlFile(), xlogSegSize: 3 << 20 }), /segment size/);
});

test("text form uses pg_controldata's labels and column", () => {
  const text = formatControlFileText(sampleControlFile());
  const lines = text.split("\n");
  assert.equal(lines[0], "pg_control version number:            1300");
  assert.ok(lines.includes("Latest checkpoint's NextXID:          2:751"));
  assert.ok(lines.includes("Latest checkpoint's REDO WAL file:    000000010000000000000001"));
  assert.ok(lines.includes("Latest checkpoint's oldestCommitTsXid:0"));
  assert.ok(lines.includes("Database cluster state:               shut down"));
  assert.ok(lines.includes("Latest checkpoint's REDO location:    0/1A2B3C8"));
  assert.equal(lines.length, 50);
});
