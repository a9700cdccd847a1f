import { test } from "node:test";
import assert from "node:assert/strict";
import { formatLsn, lsn, segmentStart, type Lsn } from "../../lib/lsn.js";
import { WalStreamDecoder } from "../../formats/wal/wal_stream_decoder.js";
import { synthesizeShutdownCheckpointWal } from "../../formats/wal/wal_synthesis.js";
import { RM_XLOG_ID, XLOG_CHECKPOINT_SHUTDOWN, XLOG_NOOP } from "../../formats/wal/rmgr/xlog.js";
import type { CheckPoint } from "../../formats/wal/rmgr/xlog.js";
import { noopRecordOfLength, sparseNoopRecord, walFillerBefore } from "./wal_filler.js";

const SEG = 16 * 1024 * 1024;
const SYSID = 7_300_000_000_000_000_001n;

const CP: Omit<CheckPoint, "redo"> = {
  thisTimeLineId: 1, prevTimeLineId: 1, fullPageWrites: true, nextXid: 750n, nextOid: 24576, nextMulti: 1, nextMultiOffset: 0,
  oldestXid: 716, oldestXidDb: 1, oldestMulti: 1, oldestMultiDb: 1, time: 1_900_000_000n, oldestCommitTsXid: 0, newestCommitTsXid: 0, oldestActiveXid: 0,
};

/** Decodes the synthesized segment from its first byte: every record, in order. */
function decodeSegment(x: Lsn): Array<{ lsn: Lsn; endLsn: Lsn; prevLsn: Lsn; rmid: number; info: number }> {
  const filler = walFillerBefore(x, SYSID, SEG);
  const wal = synthesizeShutdownCheckpointWal({
    lsn: x, checkpoint: CP, systemId: SYSID, walSegSizeBytes: SEG,
    ...(filler === undefined ? {} : { prefix: filler.prefix, prevLsn: filler.lastRecordLsn }),
  });
  const segStart = segmentStart(x / BigInt(SEG), SEG);
  const d = new WalStreamDecoder(segStart, { walSegSizeBytes: SEG });
  for (const s of wal.segments) d.feed(s.bytes);
  const out: Array<{ lsn: Lsn; endLsn: Lsn; prevLsn: Lsn; rmid: number; info: number }> = [];
  for (;;) {
    let r;
    try {
      r = d.next();
    } catch {
      break; // zeros after the checkpoint: end of WAL
    }
    if (r === undefined) break;
    out.push({ lsn: r.lsn, endLsn: r.endLsn, prevLsn: r.prevLsn, rmid: r.rmid, info: r.info });
    if (r.info === XLOG_CHECKPOINT_SHUTDOWN) break;
  }
  return out;
}

test("filler NOOPs make the generated segment one record chain from its first byte to the checkpoint", () => {
  const base = 0x3000000n; // segment 3
  const cases = [
    base + 8192n + 24n, // right after page 1's header (tail 0)
    base + 8192n + 32n, // tail 8: the filler ends on X's page as a continuation
    base + 8192n + 40n, // tail 16
    base + 8192n + 48n, // tail 24: a second 24-byte NOOP
    base + 5n * 8192n + 1000n, // mid-page, a few pages in
    base + 2047n * 8192n + 8000n, // near the segment end (the checkpoint crosses into the next segment)
    base + 0x654328n, // somewhere in the middle
  ];
  for (const xb of cases) {
    const x = lsn(xb);
    const recs = decodeSegment(x);
    const where = `X = ${formatLsn(x)}`;
    assert.ok(recs.length >= 2, `${where}: ${recs.length} records`);
    const cp = recs.at(-1)!;
    assert.equal(cp.rmid, RM_XLOG_ID, where);
    assert.equal(cp.info, XLOG_CHECKPOINT_SHUTDOWN, where);
    assert.equal(cp.lsn, x, `${where}: the checkpoint is at X`);
    assert.equal(recs[0]!.lsn, lsn(base + 40n), `${where}: the chain starts right after the long header`);
    for (let i = 0; i < recs.length - 1; i++) {
      assert.equal(recs[i]!.info, XLOG_NOOP, where);
      assert.equal(recs[i + 1]!.prevLsn, recs[i]!.lsn, `${where}: prev link of record ${i + 1}`);
    }
  }
  // X on the segment's first page: no filler from here (the synthesizer fills that page itself)
  assert.equal(walFillerBefore(lsn(base + 40n), SYSID, SEG), undefined);
  assert.equal(walFillerBefore(lsn(base + 4000n), SYSID, SEG), undefined);
  assert.equal(decodeSegment(lsn(base + 4000n)).at(-1)!.lsn, lsn(base + 4000n));
});

test("NOOP records of exact lengths, both data-header forms", () => {
  for (const n of [24, 32, 40, 256, 280, 288, 8152, 16 * 1024 * 1024 - 40]) assert.equal(noopRecordOfLength(n, lsn(0)).length, n);
  assert.throws(() => noopRecordOfLength(20, lsn(0)), /assertion failed/);
  assert.throws(() => noopRecordOfLength(33, lsn(0)), /assertion failed/);
});

test("a sparse NOOP (head + zeros) is byte for byte the encoded NOOP of its length", () => {
  for (const n of [4096, 8152, 65536 + 24, 3 * 65536, 16 * 1024 * 1024 - 40]) {
    const prev = lsn(0x3000028n);
    const dense = noopRecordOfLength(n, prev);
    const { head, totalBytes } = sparseNoopRecord(n, prev);
    assert.equal(totalBytes, n);
    const expanded = new Uint8Array(n);
    expanded.set(head);
    assert.ok(Buffer.from(expanded).equals(Buffer.from(dense)), `NOOP of ${n} bytes`);
  }
  assert.throws(() => sparseNoopRecord(4000, lsn(0)), /assertion failed/);
});
