import { test } from "node:test";
import assert from "node:assert/strict";
import { lsn, type Lsn } from "../../lib/lsn.js";
import { term, type TermHistory } from "../term_history.js";
import { quorumCommitLsn, quorumSize } from "./commit_lsn.js";

const L = (n: number): Lsn => lsn(0x1000000 + n);
const h = (...entries: [number, number][]): TermHistory => entries.map(([t, at]) => ({ term: term(t), lsn: L(at) }));
const rep = (history: TermHistory, rec: number) => ({ termHistory: history, flushRecordLsn: L(rec) });

test("quorum size is N/2+1", () => {
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7].map(quorumSize), [1, 2, 2, 3, 3, 4, 4]);
  assert.throws(() => quorumSize(0), /at least one/);
});

test("commit_lsn is the q-th highest agreeing position in the current term", () => {
  const H = h([1, 0], [2, 100]);
  const self = { term: term(2), ...rep(H, 500) };
  assert.equal(quorumCommitLsn({ self, peers: [rep(H, 300), rep(H, 700)], members: 3 }), L(500));
  assert.equal(quorumCommitLsn({ self, peers: [rep(H, 300)], members: 3 }), L(300));
  // 5 members, q = 3: self 500, peers 300 and 700 agree; the third highest is 300.
  assert.equal(quorumCommitLsn({ self, peers: [rep(H, 300), rep(H, 700)], members: 5 }), L(300));
  // Not enough members heard from.
  assert.equal(quorumCommitLsn({ self, peers: [rep(H, 300)], members: 5 }), undefined);
});

test("peers that have not joined the current term count nothing (figure 8)", () => {
  // Self joined term 3 at 200; a peer still holds term 1 WAL up to 400 that agrees with
  // self's term-1 WAL up to 100 — agreement in an older term is not counted.
  const self = { term: term(3), ...rep(h([1, 0], [3, 200]), 250) };
  const oldPeer = rep(h([1, 0]), 400);
  assert.equal(quorumCommitLsn({ self, peers: [oldPeer], members: 3 }), undefined);
  const joined = rep(h([1, 0], [3, 200]), 220);
  assert.equal(quorumCommitLsn({ self, peers: [oldPeer, joined], members: 3 }), L(220));
});

test("a peer that moved on to a later term counts up to where that term began", () => {
  const self = { term: term(2), ...rep(h([1, 0], [2, 100]), 500) };
  const movedOn = rep(h([1, 0], [2, 100], [4, 300]), 900);
  assert.equal(quorumCommitLsn({ self, peers: [movedOn], members: 3 }), L(300));
});

test("a safekeeper that promised a term it has not joined computes nothing", () => {
  const H = h([1, 0], [2, 100]);
  assert.equal(quorumCommitLsn({ self: { term: term(3), ...rep(H, 500) }, peers: [rep(H, 500), rep(H, 500)], members: 3 }), undefined);
  assert.equal(quorumCommitLsn({ self: { term: term(0), ...rep([], 0) }, peers: [], members: 1 }), undefined);
});

test("history entries past the flush record LSN are ignored", () => {
  // Self persisted term 3's history but its WAL has not reached 300 yet: it is still in term 2.
  const self = { term: term(3), ...rep(h([1, 0], [2, 100], [3, 300]), 250) };
  assert.equal(quorumCommitLsn({ self, peers: [rep(h([1, 0], [2, 100], [3, 300]), 320)], members: 3 }), undefined);
});

test("a peer with a contradictory history is not counted", () => {
  const self = { term: term(2), ...rep(h([1, 0], [2, 100]), 500) };
  const liar = rep(h([1, 0], [2, 50]), 500); // term 2 starting elsewhere: impossible in a correct cluster
  assert.equal(quorumCommitLsn({ self, peers: [liar], members: 3 }), undefined);
});

test("a single member commits its own record end", () => {
  const self = { term: term(1), ...rep(h([1, 0]), 77) };
  assert.equal(quorumCommitLsn({ self, peers: [], members: 1 }), L(77));
  assert.throws(() => quorumCommitLsn({ self, peers: [rep(h([1, 0]), 1)], members: 1 }), /peer reports/);
});
