import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateTenantId, generateTimelineId } from "../lib/id.js";
import { lsn, segmentStart, type Lsn } from "../lib/lsn.js";
import { createRegistry } from "../lib/metrics.js";
import { WalWriter } from "../formats/wal/wal_writer.js";
import { encodeRecord } from "../formats/wal/xlog_record.js";
import { NodeDurableFS } from "./durable_fs.js";
import { SafekeeperMetrics } from "./metrics.js";
import { term } from "./term_history.js";
import { StaleTermError, Timeline, type TimelineOptions } from "./timeline.js";
import { TermRefusedError } from "./consensus/acceptor_state.js";

const SEG = 1024 * 1024;
const SYSID = 4242n;
const START = segmentStart(2n, SEG);

/** `n` valid records from START; returns the bytes and each record's end. */
function makeWal(n: number): { bytes: Uint8Array; ends: Lsn[] } {
  const w = new WalWriter({ startLsn: START, walSegSizeBytes: SEG, systemId: SYSID });
  let prev = lsn(0);
  const ends: Lsn[] = [];
  for (let i = 0; i < n; i++) {
    const placed = w.appendRecord(encodeRecord({ rmid: 10, info: 0, xid: 1000 + i, prevLsn: prev, mainData: new Uint8Array(1000 + 7 * i) }));
    prev = placed.lsn;
    ends.push(placed.endLsn);
  }
  return { bytes: w.take(), ends };
}

async function withTimeline(soloCommit: boolean, fn: (tl: Timeline, opts: TimelineOptions, reopen: () => Promise<Timeline>) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), "strata-tl-"));
  const opts: TimelineOptions = { fs: new NodeDurableFS(), root, metrics: new SafekeeperMetrics(createRegistry({ defaultMetrics: false })), soloCommit };
  const ids = { tenantId: generateTenantId(), timelineId: generateTimelineId() };
  let tl = await Timeline.create({ ...ids, systemId: SYSID, pgVersion: 150018, walSegSizeBytes: SEG, startLsn: START }, opts);
  try {
    await fn(tl, opts, async () => {
      await tl.close();
      tl = await Timeline.open(ids.tenantId, ids.timelineId, opts);
      return tl;
    });
  } finally {
    await tl.close();
    await rm(root, { recursive: true, force: true });
  }
}

test("compute terms: registration fencing, WAL only under the current term, solo commit follows flushed records", async () => {
  await withTimeline(true, async (tl, _opts, reopen) => {
    const { bytes, ends } = makeWal(50);
    await assert.rejects(tl.appendWalFromCompute(term(1), START, bytes), StaleTermError);
    await tl.registerCompute({ connstr: "host=a", term: term(1), startLsn: undefined });
    assert.equal(tl.term, 1n);
    // Same term, same compute: idempotent; another compute for the same term: refused.
    await tl.registerCompute({ connstr: "host=a", term: term(1), startLsn: undefined });
    await assert.rejects(tl.registerCompute({ connstr: "host=b", term: term(1), startLsn: undefined }), StaleTermError);
    assert.equal(await tl.beginComputeTerm(term(1), undefined), START);
    assert.deepEqual(tl.termHistory, [{ term: 1n, lsn: START }]);

    const half = 20_000;
    await tl.appendWalFromCompute(term(1), START, bytes.subarray(0, half));
    assert.equal(tl.flushLsn, START, "written is not flushed");
    assert.equal(tl.commitLsn, START);
    let commitEvents = 0;
    tl.events.on("commit", () => commitEvents++);
    await tl.flush();
    const lastEnd = ends.filter((e) => e <= START + BigInt(half)).at(-1)!;
    assert.equal(tl.flushLsn, START + BigInt(half));
    assert.equal(tl.commitLsn, lastEnd, "solo commit = end of the last complete flushed record");
    assert.equal(commitEvents, 1);
    const waiting = tl.waitForServable(tl.servableLsn, 5_000);
    await tl.appendWalFromCompute(term(1), lsn(START + BigInt(half)), bytes.subarray(half));
    await tl.flush();
    await waiting;
    assert.equal(tl.commitLsn, ends.at(-1));

    // A higher registration fences the old compute's WAL at once.
    await tl.registerCompute({ connstr: "host=b", term: term(2), startLsn: ends[10] });
    await assert.rejects(tl.appendWalFromCompute(term(1), tl.writeLsn, new Uint8Array(8)), TermRefusedError);
    await assert.rejects(tl.registerCompute({ connstr: "host=a", term: term(1), startLsn: undefined }), /current term is 2/);
    // It may not start below the commit LSN (committed WAL would be lost) ...
    await assert.rejects(tl.beginComputeTerm(term(2), ends[10]), /before the commit LSN/);
    // ... and starts at the end of the WAL here otherwise.
    assert.equal(await tl.beginComputeTerm(term(2), ends.at(-1)), ends.at(-1));
    assert.deepEqual(tl.termHistory, [{ term: 1n, lsn: START }, { term: 2n, lsn: ends.at(-1) }]);

    // Everything survives a restart: term, history, registration, WAL, commit.
    const before = tl.getState();
    const again = await reopen();
    const after = again.getState();
    assert.equal(after.term, 2n);
    assert.deepEqual(after.termHistory, before.termHistory);
    assert.equal(after.flushLsn, before.flushLsn);
    assert.equal(after.commitLsn, before.commitLsn);
    assert.equal(after.compute?.connstr, "host=b");
    assert.equal(after.compute?.startLsn, ends[10]);
    const read = await again.readWal(START, bytes.length, after.flushLsn);
    assert.equal(START + BigInt(read.length), ends.at(-1), "recovery ends at the last record (the writer's alignment padding is not WAL)");
    assert.deepEqual(read, bytes.subarray(0, read.length));
  });
});

test("consensus surface: votes, truncation with a new history, WAL from a peer, commit from outside", async () => {
  await withTimeline(false, async (tl) => {
    const { bytes, ends } = makeWal(30);
    let v = await tl.vote(term(5));
    assert.equal(v.granted, true);
    assert.equal(v.snapshot.term, 5n);
    v = await tl.vote(term(5));
    assert.equal(v.granted, false, "never two votes in one term");
    v = await tl.vote(term(4));
    assert.equal(v.granted, false);
    await tl.truncateAndSetHistory(term(5), [{ term: term(5), lsn: START }], START);
    assert.equal(await tl.appendWalFromPeer(term(5), START, bytes), START + BigInt(bytes.length));
    const snap = await tl.snapshot();
    assert.equal(snap.flushRecordLsn, ends.at(-1));
    assert.equal(snap.commitLsn, START, "without soloCommit the commit LSN comes from consensus");
    tl.setCommitLsn(ends[5]!);
    tl.setCommitLsn(ends[2]!);
    assert.equal(tl.commitLsn, ends[5], "commit never goes back");
    assert.equal(tl.servableLsn, ends[5]);
    // A new term truncates the divergent tail (allowed below commit with peers: consensus decides).
    await tl.truncateAndSetHistory(term(6), [{ term: term(5), lsn: START }, { term: term(6), lsn: ends[20]! }], ends[20]!);
    assert.equal(tl.flushLsn, ends[20]);
    assert.equal(tl.term, 6n);
    await assert.rejects(tl.truncateAndSetHistory(term(5), [{ term: term(5), lsn: START }], START), TermRefusedError);
    await assert.rejects(tl.appendWalFromPeer(term(5), tl.writeLsn, new Uint8Array(8)), TermRefusedError);
    await assert.rejects(tl.truncateAndSetHistory(term(7), [{ term: term(8), lsn: START }], START), /goes past term 7/);
    // Without soloCommit, a compute of a term consensus has not set up is told to wait.
    await tl.registerCompute({ connstr: "host=c", term: term(7), startLsn: undefined });
    await assert.rejects(tl.beginComputeTerm(term(7), undefined), /waiting for consensus/);
  });
});

test("truncation: exact flush record LSN after a cut (and after reopen); a compute waits until the WAL reaches its term's start", async () => {
  await withTimeline(false, async (tl0, _opts, reopen) => {
    let tl = tl0;
    const { bytes, ends } = makeWal(30);
    const off = (l: Lsn) => Number(l - START);
    assert.equal((await tl.vote(term(5))).granted, true);
    await tl.truncateAndSetHistory(term(5), [{ term: term(5), lsn: START }], START);
    await tl.appendWalFromPeer(term(5), START, bytes);
    await tl.persistProgressNow(); // the flush LSN hint now points near the WAL end
    // Term 6 starts at ends[25]; this member keeps WAL only up to ends[20] and must fetch the rest.
    const history = [
      { term: term(5), lsn: START },
      { term: term(6), lsn: ends[25]! },
    ];
    assert.equal((await tl.vote(term(6))).granted, true);
    await tl.truncateAndSetHistory(term(6), history, ends[20]!);
    assert.equal(tl.flushLsn, ends[20]);
    assert.equal((await tl.snapshot()).flushRecordLsn, ends[20], "the cut point, not the timeline start");
    assert.equal(tl.getState().flushRecordLsn, ends[20]);
    // Reopen (WAL recovery from the hint, which the cut moved to ends[20] before truncating).
    tl = await reopen();
    assert.ok(tl.flushLsn >= ends[20]! && tl.flushLsn - ends[20]! < 8n, "recovery ends at the cut (up to alignment padding)");
    assert.equal((await tl.snapshot()).flushRecordLsn, ends[20]);
    assert.equal(tl.getState().flushRecordLsn, ends[20]);
    // Joined term 6, but the WAL here stops before the term's start: no compute streaming yet.
    await tl.registerCompute({ connstr: "host=c", term: term(6), startLsn: undefined });
    await assert.rejects(tl.beginComputeTerm(term(6), undefined), /not yet caught up to the start of term 6/);
    await assert.rejects(tl.appendWalFromCompute(term(6), tl.writeLsn, new Uint8Array(8)), /not yet caught up/);
    await tl.appendWalFromPeer(term(6), tl.writeLsn, bytes.subarray(off(tl.writeLsn), off(ends[25]!)));
    assert.equal(await tl.beginComputeTerm(term(6), undefined), ends[25]);
    await tl.appendWalFromCompute(term(6), ends[25]!, bytes.subarray(off(ends[25]!), off(ends[27]!)));
    // A vote fsyncs WAL already written before answering: its position covers it.
    const v = await tl.vote(term(7));
    assert.equal(v.granted, true);
    assert.equal(v.snapshot.flushLsn, ends[27]);
    assert.equal(v.snapshot.flushRecordLsn, ends[27]);
  });
});

test("WAL retention removes only segments below the persisted remote-consistent LSN, commit_lsn and peers' flush LSNs", async () => {
  await withTimeline(true, async (tl, _opts, reopen) => {
    // ~2.6 MiB of records over 1 MiB segments: segments 2, 3 and 4 (partial).
    const { bytes, ends } = makeWal(1800);
    await tl.registerCompute({ connstr: "host=a", term: term(1), startLsn: undefined });
    await tl.beginComputeTerm(term(1), undefined);
    await tl.appendWalFromCompute(term(1), START, bytes);
    await tl.flush();
    const end = ends.at(-1)!;
    assert.ok(end > segmentStart(4n, SEG), "the WAL reaches the third segment");
    assert.equal(tl.retentionHorizonLsn(), START, "nothing reported by a pageserver: keep everything");
    assert.equal(await tl.removeOldWal(), 0);

    // Feedback counts only once persisted; a peer behind it holds WAL back.
    const rc = lsn(segmentStart(4n, SEG) + 100n);
    tl.recordPageserverFeedback({ lastReceivedLsn: end, diskConsistentLsn: end, remoteConsistentLsn: rc });
    await tl.persistProgressNow();
    tl.setPeerFlushLsns(new Map([["2", lsn(segmentStart(3n, SEG) + 5n)]]));
    assert.equal(tl.retentionHorizonLsn(), segmentStart(3n, SEG) + 5n);
    assert.equal(await tl.removeOldWal(), 1, "only segment 2 ends below the lagging peer");
    await assert.rejects(tl.readWal(START, 100, end), (e: Error & { code?: string }) => e.code === "not_found");

    tl.setPeerFlushLsns(new Map([["2", end]]));
    assert.equal(tl.retentionHorizonLsn(), rc);
    assert.equal(await tl.removeOldWal(), 1, "segment 3 ends below the remote-consistent LSN");
    const kept = await tl.readWal(segmentStart(4n, SEG), 100, end);
    assert.deepEqual(kept, bytes.subarray(Number(segmentStart(4n, SEG) - START), Number(segmentStart(4n, SEG) - START) + 100));

    // The horizon survives a restart (it is the persisted LSN) and removes nothing more.
    tl = await reopen();
    assert.equal(tl.retentionHorizonLsn() >= segmentStart(4n, SEG), true);
    assert.equal(await tl.removeOldWal(), 0);
  });
});
