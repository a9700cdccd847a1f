/**
 * Unit tests for WAL synthesis: every page layout the checkpoint record can
 * meet, read back with the project's own WAL decoder from X's page start (as
 * pg_waldump -s does) and from X itself (as a walsender sends), with page
 * headers checked like xlogreader does. test/wal_synthesis.test.ts starts a
 * real PostgreSQL on the results.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  nextInsertLsn,
  shutdownControlFile,
  synthesizeShutdownCheckpointWal,
  type ShutdownCheckpointFields,
  type SynthesizedWal,
} from "./wal_synthesis.js";
import { WalStreamDecoder } from "./wal_stream_decoder.js";
import { parsePageHeader, validatePageHeader, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER } from "./xlog_page.js";
import { parseCheckPoint, RM_XLOG_ID, XLOG_CHECKPOINT_SHUTDOWN, XLOG_NOOP } from "./rmgr/xlog.js";
import { WalDecodeError } from "./xlog_record.js";
import type { DecodedRecord } from "./decoded_record.js";
import { formatLsn, lsn, pageStart, parseLsn, segmentOffset, segmentStart, type Lsn } from "../../lib/lsn.js";
import { StrataError } from "../../lib/errors.js";
import { DbState, type ControlFileData } from "../pg_control.js";

const SEG = 16 * 1024 * 1024;
const SYSID = 7312345678901234567n;
const P = 8192n;

const FIELDS: ShutdownCheckpointFields = {
  thisTimeLineId: 1,
  prevTimeLineId: 1,
  fullPageWrites: true,
  nextXid: 1000n,
  nextOid: 30000,
  nextMulti: 1,
  nextMultiOffset: 0,
  oldestXid: 716,
  oldestXidDb: 1,
  oldestMulti: 1,
  oldestMultiDb: 1,
  time: 1_800_000_000n,
  oldestCommitTsXid: 0,
  newestCommitTsXid: 0,
};

/** The stream bytes [from, the page after the record's end): enough to see the zeros that end the WAL. */
function streamFrom(w: SynthesizedWal, from: Lsn): Uint8Array {
  const until = pageStart(lsn(w.endLsn + 2n * P));
  const parts: Uint8Array[] = [];
  for (const s of w.segments) {
    const start = segmentStart(s.segNo, SEG);
    const lo = from > start ? from : start;
    const hi = until < start + BigInt(SEG) ? until : lsn(start + BigInt(SEG));
    if (hi > lo) parts.push(s.bytes.subarray(Number(lo - start), Number(hi - start)));
  }
  return Buffer.concat(parts);
}

/** Decodes records from `from` until the zeros after the checkpoint (end of WAL). */
function decodeAll(w: SynthesizedWal, from: Lsn): DecodedRecord[] {
  const dec = new WalStreamDecoder(from, { walSegSizeBytes: SEG, systemId: SYSID });
  dec.feed(streamFrom(w, from));
  const out: DecodedRecord[] = [];
  for (;;) {
    try {
      const r = dec.next();
      if (!r) break;
      out.push(r);
    } catch (e) {
      assert.ok(e instanceof WalDecodeError && e.endOfWal, `unexpected decode error: ${String(e)}`);
      break;
    }
  }
  return out;
}

function check(x: Lsn, opts: { prefix?: Uint8Array; prevLsn?: Lsn } = {}): SynthesizedWal {
  const w = synthesizeShutdownCheckpointWal({ lsn: x, checkpoint: FIELDS, systemId: SYSID, walSegSizeBytes: SEG, ...opts });
  for (const s of w.segments) {
    assert.equal(s.bytes.length, SEG);
    const h = parsePageHeader(s.bytes, 0);
    assert.ok((h.info & XLP_LONG_HEADER) !== 0, `${s.name} page 0 has a long header`);
    validatePageHeader(h, segmentStart(s.segNo, SEG), { walSegSizeBytes: SEG, systemId: SYSID });
  }
  const xPage = pageStart(x);
  const seg0 = w.segments[0]!;
  validatePageHeader(parsePageHeader(seg0.bytes, segmentOffset(xPage, SEG)), xPage, { walSegSizeBytes: SEG, systemId: SYSID });

  // From X's page start (pg_waldump -s / XLogFindNextRecord) and from X itself (walsender).
  for (const from of [xPage, x]) {
    const recs = decodeAll(w, from);
    const ck = recs.at(-1);
    assert.ok(ck, `a record decoded from ${formatLsn(from)}`);
    assert.equal(ck.lsn, x, `checkpoint found at X reading from ${formatLsn(from)}`);
    assert.equal(ck.rmid, RM_XLOG_ID);
    assert.equal(ck.info, XLOG_CHECKPOINT_SHUTDOWN);
    assert.equal(ck.totalLength, 114);
    assert.equal(ck.endLsn, w.endLsn);
    assert.equal(ck.prevLsn, w.prevLsn);
    assert.deepEqual(parseCheckPoint(ck.mainData), { ...FIELDS, redo: x, oldestActiveXid: 0 });
    if (from === xPage && w.gapFill === "noop") {
      assert.equal(recs.length, 2);
      assert.equal(recs[0]!.info, XLOG_NOOP);
      assert.equal(w.prevLsn, recs[0]!.lsn);
    }
  }
  assert.ok(w.prevLsn < x);
  return w;
}

test("X mid-page: NOOP filler from the page header to X", () => {
  const w = check(parseLsn("0/1A2B3C8"));
  assert.equal(w.gapFill, "noop");
  assert.equal(w.segments.length, 1);
  assert.equal(w.segments[0]!.name, "000000010000000000000001");
  assert.equal(nextInsertLsn(w), lsn(0x1a2b3c8 + 120));
});

test("X right after a long header, right after a short header", () => {
  const w1 = check(parseLsn("0/3000028"));
  assert.equal(w1.gapFill, "none");
  assert.equal(w1.prevLsn, 0n);
  const w2 = check(parseLsn("0/3002018"));
  assert.equal(w2.gapFill, "none");
});

test("gaps of 8 and 16 bytes: the page is marked as a continuation that readers skip", () => {
  for (const x of [parseLsn("0/3002020"), parseLsn("0/3002028"), parseLsn("0/3000030")]) {
    const w = check(x);
    assert.equal(w.gapFill, "contrecord", formatLsn(x));
    const h = parsePageHeader(w.segments[0]!.bytes, segmentOffset(pageStart(x), SEG));
    assert.ok((h.info & XLP_FIRST_IS_CONTRECORD) !== 0);
  }
});

test("record header crossing a page, body crossing a page", () => {
  for (const back of [8n, 16n, 24n, 56n, 112n]) {
    const x = lsn(0x3004000n + P - back);
    const w = check(x);
    const next = pageStart(lsn(x + P));
    const h = parsePageHeader(w.segments[0]!.bytes, segmentOffset(next, SEG));
    assert.ok((h.info & XLP_FIRST_IS_CONTRECORD) !== 0, `continuation flag for X = ${formatLsn(x)}`);
    assert.equal(h.remLen, 114 - Number(back));
    assert.equal(w.endLsn, lsn(next + 24n + BigInt(114 - Number(back))));
  }
});

test("record crossing into the next segment: two files, continuation after the long header", () => {
  const x = lsn(0x4000000n - 40n);
  const w = check(x);
  assert.deepEqual(w.segments.map((s) => s.name), ["000000010000000000000003", "000000010000000000000004"]);
  const h = parsePageHeader(w.segments[1]!.bytes, 0);
  assert.equal(h.info & (XLP_FIRST_IS_CONTRECORD | XLP_LONG_HEADER), XLP_FIRST_IS_CONTRECORD | XLP_LONG_HEADER);
  assert.equal(h.remLen, 74);
  assert.equal(w.endLsn, lsn(0x4000000n + 40n + 74n));
});

test("prefix: original WAL before X is kept verbatim and the chain continues from its last record", () => {
  // Build an "original" segment: synthesize a checkpoint at Y, then place the next one right after it.
  const y = parseLsn("0/5000F00");
  const orig = check(y);
  const x = nextInsertLsn(orig);
  const seg = orig.segments[0]!.bytes;
  const prefixFromSegStart = seg.subarray(0, segmentOffset(x, SEG));
  const w = check(x, { prefix: prefixFromSegStart });
  assert.equal(w.gapFill, "prefix");
  assert.equal(w.prevLsn, y, "xl_prev is the last record before X");
  assert.deepEqual(w.segments[0]!.bytes.subarray(0, segmentOffset(x, SEG)), prefixFromSegStart, "byte-identical up to X");
  // Only X's page as prefix works too.
  const ownPage = seg.subarray(segmentOffset(pageStart(x), SEG), segmentOffset(x, SEG));
  assert.equal(check(x, { prefix: ownPage }).prevLsn, y);
  // X not at a record boundary of the prefix is refused.
  assert.throws(
    () => synthesizeShutdownCheckpointWal({ lsn: lsn(x - 8n), checkpoint: FIELDS, systemId: SYSID, walSegSizeBytes: SEG, prefix: seg.subarray(0, segmentOffset(x, SEG) - 8) }),
    (e: unknown) => e instanceof StrataError && /not a record boundary/.test(e.message),
  );
  // A prefix whose page header is broken is refused.
  const wrongPage = seg.slice(segmentOffset(pageStart(x), SEG), segmentOffset(x, SEG));
  wrongPage[0] = 0x00; // bad magic
  assert.throws(
    () => synthesizeShutdownCheckpointWal({ lsn: x, checkpoint: FIELDS, systemId: SYSID, walSegSizeBytes: SEG, prefix: wrongPage }),
    (e: unknown) => e instanceof StrataError && e.code === "corrupt_data",
  );
});

test("invalid requests are StrataErrors", () => {
  const bad = (x: Lsn, extra: object = {}) =>
    assert.throws(
      () => synthesizeShutdownCheckpointWal({ lsn: x, checkpoint: FIELDS, systemId: SYSID, walSegSizeBytes: SEG, ...extra }),
      (e: unknown) => e instanceof StrataError && e.code === "invalid_argument",
      formatLsn(x),
    );
  bad(parseLsn("0/3000004")); // not aligned
  bad(parseLsn("0/3000020")); // inside the long header
  bad(parseLsn("0/3002010")); // inside a short header
  bad(parseLsn("0/3002100"), { prevLsn: parseLsn("0/3002100") }); // xl_prev not below X
  bad(parseLsn("0/3002100"), { walSegSizeBytes: 3 << 20 });
  bad(parseLsn("0/3002100"), { checkpoint: { ...FIELDS, oldestActiveXid: 5 } });
});

test("shutdownControlFile: shut down, checkpoint at X, copy equals the record body, recovery fields cleared", () => {
  const w = check(parseLsn("0/1A2B3C8"));
  const template = {
    state: DbState.inProduction,
    minRecoveryPoint: parseLsn("0/999"),
    minRecoveryPointTli: 1,
    backupStartPoint: parseLsn("0/5"),
    backupEndPoint: parseLsn("0/6"),
    backupEndRequired: true,
    systemIdentifier: SYSID,
  } as unknown as ControlFileData;
  const cf = shutdownControlFile(template, w.recordLsn, w.checkpoint);
  assert.equal(cf.state, DbState.shutdowned);
  assert.equal(cf.checkPoint, w.recordLsn);
  assert.deepEqual(cf.checkPointCopy, w.checkpoint);
  assert.equal(cf.checkPointCopy.redo, w.recordLsn);
  assert.equal(cf.minRecoveryPoint, 0n);
  assert.equal(cf.backupEndRequired, false);
  assert.equal(cf.systemIdentifier, SYSID);
  assert.throws(() => shutdownControlFile(template, lsn(8), w.checkpoint), StrataError);
});
