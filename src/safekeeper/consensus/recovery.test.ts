import { test } from "node:test";
import assert from "node:assert/strict";
import { formatLsn } from "../../lib/lsn.js";
import { FaultyFS } from "../faulty_fs.js";
import { electedHistory, historyUpTo, term, type Term } from "../term_history.js";
import { TermRefusedError, type ConsensusTimeline } from "./acceptor_state.js";
import { MemoryFS } from "./memory_fs.js";
import { joinHistory, serveWal, type WalSource } from "./recovery.js";
import { StoreTimeline } from "./store_timeline.js";
import { createTestTimeline, TEST_START, TEST_TENANT, TEST_TIMELINE, WalGen } from "./testing.js";

const signal = new AbortController().signal;

function sourceOf(tl: ConsensusTimeline, name = "donor"): WalSource {
  return { name, fetch: (start, max, end, history) => serveWal(tl, start, Math.min(max, 5000), end, history) };
}

/** Elects `t` on `tl` alone with the history it holds (a member that was the whole quorum). */
async function electAlone(tl: StoreTimeline, t: Term): Promise<void> {
  const s = await tl.snapshot();
  await tl.vote(t);
  const h = electedHistory(historyUpTo(s.termHistory, s.flushRecordLsn), s.flushRecordLsn, t);
  await joinHistory(tl, { term: t, history: h, endLsn: s.flushRecordLsn }, sourceOf(tl), signal);
}

async function walOf(tl: StoreTimeline): Promise<Uint8Array> {
  const s = await tl.snapshot();
  return await tl.readWal(TEST_START, Number(s.flushLsn - TEST_START), s.flushLsn);
}

/**
 * Two members: both got term 1's first records; then term 1's compute went on
 * writing to the member only (never acknowledged by a quorum), while term 2 was
 * elected on the donor and wrote different WAL there.
 */
async function divergedPair(memberFs: FaultyFS | MemoryFS = new MemoryFS()) {
  const donor = await createTestTimeline(new MemoryFS(), "/donor");
  const member = await createTestTimeline(memberFs, "/member");
  const g1 = new WalGen();
  await electAlone(donor, term(1));
  await member.vote(term(1));
  await member.truncateAndSetHistory(term(1), [{ term: term(1), lsn: TEST_START }], TEST_START);
  const common = g1.records(20, 700);
  for (const tl of [donor, member]) await tl.appendWalFromCompute(term(1), TEST_START, g1.bytes(TEST_START, common));
  // Term 2 on the donor starts at the common end and writes its own WAL.
  await electAlone(donor, term(2));
  const g2 = g1.fork(2);
  const d2 = g2.records(30, 900);
  await donor.appendWalFromCompute(term(2), common, g2.bytes(common, d2));
  // Term 1's compute, unaware, keeps writing to the member only.
  const m1 = g1.records(25, 500);
  await member.appendWalFromCompute(term(1), common, g1.bytes(common, m1));
  return { donor, member, common, g2, donorEnd: d2, memberEnd: m1 };
}

test("a divergent member truncates past the common point and fetches the donor's WAL", async () => {
  const { donor, member, common, donorEnd } = await divergedPair();
  const d = await donor.snapshot();
  assert.equal(d.flushRecordLsn, donorEnd);
  await member.vote(term(3));
  await donor.vote(term(3));
  const history = electedHistory(d.termHistory, donorEnd, term(3));
  const s = await joinHistory(member, { term: term(3), history, endLsn: donorEnd }, sourceOf(donor), signal);
  assert.equal(s.flushLsn, donorEnd);
  assert.equal(s.flushRecordLsn, donorEnd, "record boundary known after the fetch");
  assert.deepEqual(s.termHistory, history);
  const dw = await donor.readWal(TEST_START, Number(donorEnd - TEST_START), donorEnd);
  assert.deepEqual(await walOf(member), dw);
  assert.ok(common < donorEnd);
  // Joining again is a no-op (a retried request).
  const again = await joinHistory(member, { term: term(3), history, endLsn: donorEnd }, sourceOf(donor), signal);
  assert.deepEqual(again, s);
});

test("a member refuses to join a term below its promise; WAL of a fenced term is refused", async () => {
  const { donor, member, donorEnd } = await divergedPair();
  await member.vote(term(5));
  const history = electedHistory((await donor.snapshot()).termHistory, donorEnd, term(3));
  await assert.rejects(joinHistory(member, { term: term(3), history, endLsn: donorEnd }, sourceOf(donor), signal), TermRefusedError);
  await assert.rejects(member.appendWalFromCompute(term(1), (await member.snapshot()).flushLsn, new Uint8Array(8)), TermRefusedError);
  assert.deepEqual((await member.vote(term(5))).granted, false, "no second vote in one term");
  assert.deepEqual((await member.vote(term(4))).granted, false);
});

test("a donor serves only WAL of the asked history", async () => {
  const { donor, member, common, donorEnd, memberEnd } = await divergedPair();
  const donorHistory = (await donor.snapshot()).termHistory;
  const bytes = await serveWal(donor, common, 4096, donorEnd, donorHistory);
  assert.equal(bytes.length, 4096);
  // The member's WAL past the common point is term 1's, not term 2's: refused.
  await assert.rejects(serveWal(member, common, 4096, donorEnd, donorHistory), /is not here \(agrees up to/);
  // Below the common point both agree.
  assert.equal((await serveWal(member, TEST_START, 100, common, donorHistory)).length, 100);
  assert.ok(memberEnd > common);
});

test("a crash at any point of a join leaves a truthful state; the retry converges", async () => {
  // Crash at the n-th mutation of the join, for every n until the join completes first.
  let crashes = 0;
  for (let nth = 1; ; nth++) {
    const mem = new MemoryFS();
    const fs = new FaultyFS(mem, { seed: nth });
    const { donor, member, donorEnd } = await divergedPair(fs);
    await member.vote(term(3));
    const history = electedHistory((await donor.snapshot()).termHistory, donorEnd, term(3));
    fs.addFault({ op: "mutation", nth, effect: nth % 3 === 0 ? "torn" : "crash" });
    const target = { term: term(3), history, endLsn: donorEnd };
    let crashed = false;
    try {
      await joinHistory(member, target, sourceOf(donor), signal);
    } catch (e) {
      crashed = fs.crashed;
      if (!crashed) throw e;
    }
    if (!crashed) break; // the join finished before the n-th mutation: every point was covered
    crashes++;
    await fs.powerLoss();
    const reopened = await StoreTimeline.open(new FaultyFS(mem), "/member", TEST_TENANT, TEST_TIMELINE);
    const s = await reopened.snapshot();
    // Truthful: whatever WAL survived matches the history it is labelled with.
    const wal = await walOf(reopened);
    const dw = await donor.readWal(TEST_START, Number(donorEnd - TEST_START), donorEnd);
    const agreesWithDonor = s.termHistory.length === history.length;
    if (agreesWithDonor) assert.deepEqual(wal, dw.subarray(0, wal.length), `crash at mutation ${nth}: adopted history but different bytes`);
    const done = await joinHistory(reopened, target, sourceOf(donor), signal);
    assert.equal(done.flushLsn, donorEnd, `crash at mutation ${nth}: retry ends at ${formatLsn(done.flushLsn)}`);
    assert.deepEqual(await walOf(reopened), dw, `crash at mutation ${nth}: retry converges to the donor's WAL`);
  }
  assert.ok(crashes > 10, `only ${crashes} crash points`);
});
