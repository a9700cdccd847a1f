import { test } from "node:test";
import assert from "node:assert/strict";
import { generateTenantId, generateTimelineId } from "../lib/id.js";
import { lsn } from "../lib/lsn.js";
import { roundToRecordBoundary } from "./basebackup.js";
import { parseBackupArgs } from "./backup_service.js";

test("backup command arguments: ids, optional LSN, --gzip anywhere; precise errors", () => {
  const t = generateTenantId();
  const tl = generateTimelineId();
  assert.deepEqual(parseBackupArgs("fullbackup", [t, tl]), { tenantId: t, timelineId: tl, lsn: undefined, gzip: false });
  assert.deepEqual(parseBackupArgs("fullbackup", [t, tl, "0/16B3748", "--gzip"]), { tenantId: t, timelineId: tl, lsn: lsn(0x16b3748n), gzip: true });
  assert.deepEqual(parseBackupArgs("basebackup", ["--GZIP", t, tl]), { tenantId: t, timelineId: tl, lsn: undefined, gzip: true });
  assert.throws(() => parseBackupArgs("fullbackup", []), /fullbackup: expected 2 or 3 arguments, got 0\. Usage: fullbackup <tenant_id> <timeline_id> \[<lsn X\/Y>\] \[--gzip\]/);
  assert.throws(() => parseBackupArgs("fullbackup", [t, tl, "0/1", "0/2"]), /expected 2 or 3 arguments, got 4/);
  assert.throws(() => parseBackupArgs("basebackup", ["xyz", tl]), /basebackup: invalid tenant id/);
  assert.throws(() => parseBackupArgs("basebackup", [t, "xyz"]), /invalid timeline id/);
  assert.throws(() => parseBackupArgs("basebackup", [t, tl, "16B3748"]), /invalid LSN/);
  assert.throws(() => parseBackupArgs("basebackup", [t, tl, "--fast"]), /unknown option "--fast"/);
});

test("requested LSNs move to the record boundary that denotes the same state", () => {
  const seg = 16 * 1024 * 1024;
  assert.equal(roundToRecordBoundary(lsn(0x1500780n)), lsn(0x1500780n), "a record boundary is kept");
  assert.equal(roundToRecordBoundary(lsn(0x1500781n)), lsn(0x1500788n), "an unaligned record end goes to the next multiple of 8");
  assert.equal(roundToRecordBoundary(lsn(0x1500787n)), lsn(0x1500788n));
  assert.equal(roundToRecordBoundary(lsn(0x1502000n)), lsn(0x1502000n), "a page boundary is kept (the backup places its checkpoint past the header)");
  assert.equal(roundToRecordBoundary(lsn(0x1502008n)), lsn(0x1502018n), "inside a short page header: past it");
  assert.equal(roundToRecordBoundary(lsn(0x1502011n)), lsn(0x1502018n));
  assert.equal(roundToRecordBoundary(lsn(BigInt(2 * seg) + 16n)), lsn(BigInt(2 * seg) + 40n), "inside a segment's long header: past it");
  assert.equal(roundToRecordBoundary(lsn(BigInt(2 * seg) + 40n)), lsn(BigInt(2 * seg) + 40n));
});
