import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../../lib/errors.js";
import { lsn } from "../../lib/lsn.js";
import { term } from "../term_history.js";
import { comparePositions, effectiveHistory, snapshotFromJson, snapshotToJson, type AcceptorSnapshot } from "./acceptor_state.js";

const snap: AcceptorSnapshot = {
  term: term(7),
  termHistory: [
    { term: term(1), lsn: lsn(0x1000000) },
    { term: term(5), lsn: lsn(0x1000800) },
    { term: term(7), lsn: lsn(0x2000000) },
  ],
  flushLsn: lsn(0x1fff000),
  flushRecordLsn: lsn(0x1ffefe8),
  commitLsn: lsn(0x1800000),
  timelineStartLsn: lsn(0x1000000),
};

test("snapshot JSON round trip", () => {
  const j = snapshotToJson(snap);
  assert.equal(j.term, "7");
  assert.equal(j.flush_lsn, "0/1FFF000");
  assert.deepEqual(snapshotFromJson(JSON.parse(JSON.stringify(j)), "test"), snap);
});

test("terms beyond 2^53 survive JSON", () => {
  const big = { ...snap, term: term((1n << 63n) + 5n), termHistory: [{ term: term((1n << 63n) + 5n), lsn: lsn(0x1000000) }] };
  assert.deepEqual(snapshotFromJson(JSON.parse(JSON.stringify(snapshotToJson(big))), "test"), big);
});

test("invalid snapshots from a peer are protocol violations naming the field", () => {
  const j = () => JSON.parse(JSON.stringify(snapshotToJson(snap))) as Record<string, unknown>;
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ ...j(), term: 7 }, /term must be a decimal string/],
    [{ ...j(), term: "-1" }, /decimal string/],
    [{ ...j(), term: "1".repeat(21) }, /at most 20 digits/],
    [{ ...j(), term: "18446744073709551616" }, /outside/],
    [{ ...j(), flush_lsn: "0/ZZ" }, /"flush_lsn"/],
    [{ ...j(), flush_lsn: undefined }, /"flush_lsn" must be an LSN/],
    [{ ...j(), term_history: {} }, /must be an array/],
    [{ ...j(), term_history: [{ term: "2", lsn: "0/10" }, { term: "1", lsn: "0/20" }] }, /not above the previous term/],
    [{ ...j(), flush_record_lsn: "0/2000000" }, /past the flush LSN/],
  ];
  for (const [body, re] of cases) {
    assert.throws(
      () => snapshotFromJson(body, "peer 2"),
      (e: unknown) => e instanceof StrataError && e.code === "protocol_violation" && re.test(e.message) && e.message.includes("peer 2"),
      JSON.stringify(body),
    );
  }
  assert.throws(() => snapshotFromJson(null, "peer 2"), /expected an object/);
  assert.throws(() => snapshotFromJson([], "peer 2"), /expected an object/);
});

test("effective history drops switches past the WAL end; positions compare by last log term first", () => {
  assert.deepEqual(
    effectiveHistory(snap).map((e) => e.term),
    [term(1), term(5)],
  );
  const behindButNewer = { termHistory: [{ term: term(1), lsn: lsn(0) }, { term: term(6), lsn: lsn(100) }], flushRecordLsn: lsn(150) };
  const aheadButOlder = { termHistory: [{ term: term(1), lsn: lsn(0) }, { term: term(5), lsn: lsn(100) }], flushRecordLsn: lsn(900) };
  assert.ok(comparePositions(behindButNewer, aheadButOlder) > 0);
  assert.ok(comparePositions(aheadButOlder, { ...aheadButOlder, flushRecordLsn: lsn(901) }) < 0);
  assert.equal(comparePositions(aheadButOlder, aheadButOlder), 0);
});
