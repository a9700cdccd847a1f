import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../lib/errors.js";
import { lsn, type Lsn } from "../lib/lsn.js";
import {
  appendTerm,
  compareLogPositions,
  decodeTermHistory,
  electedHistory,
  encodeTermHistory,
  highestCommonPoint,
  historyUpTo,
  INVALID_TERM,
  lastLogTerm,
  lastTerm,
  MAX_TERM_HISTORY_ENTRIES,
  term,
  termAt,
  termHistoryEncodedBytes,
  termHistoryProblem,
  type TermHistory,
} from "./term_history.js";
import { seededRandom as rng } from "../lib/prng.js";

const L = (n: number): Lsn => lsn(n);
const h = (...pairs: [number, number][]): TermHistory => pairs.map(([t, l]) => ({ term: term(t), lsn: L(l) }));

function isStrataError(code: string) {
  return (e: unknown) => e instanceof StrataError && e.code === code;
}

test("term() checks the u64 range", () => {
  assert.equal(term(5), 5n);
  assert.equal(term((1n << 64n) - 1n), (1n << 64n) - 1n);
  assert.throws(() => term(-1), isStrataError("invalid_argument"));
  assert.throws(() => term(1n << 64n), isStrataError("invalid_argument"));
  assert.throws(() => term(2 ** 60), isStrataError("invalid_argument"));
});

test("appendTerm keeps terms increasing and LSNs non-decreasing", () => {
  let x: TermHistory = [];
  x = appendTerm(x, term(1), L(100));
  x = appendTerm(x, term(3), L(100)); // a term may start where the previous did (it wrote nothing)
  x = appendTerm(x, term(4), L(200));
  assert.deepEqual(x, h([1, 100], [3, 100], [4, 200]));
  assert.equal(lastTerm(x), 4n);
  assert.equal(lastTerm([]), INVALID_TERM);
  assert.throws(() => appendTerm(x, term(4), L(300)), isStrataError("invalid_argument"));
  assert.throws(() => appendTerm(x, term(2), L(300)), isStrataError("invalid_argument"));
  assert.throws(() => appendTerm(x, term(5), L(199)), isStrataError("invalid_argument"));
  assert.throws(() => appendTerm([], INVALID_TERM, L(0)), isStrataError("invalid_argument"));
  // The input is not modified.
  assert.equal(x.length, 3);
});

test("termAt: last switch at or before the LSN, later term wins on equal LSNs", () => {
  const x = h([1, 100], [2, 200], [3, 200], [5, 400]);
  assert.equal(termAt(x, L(99)), undefined);
  assert.equal(termAt(x, L(100)), 1n);
  assert.equal(termAt(x, L(199)), 1n);
  assert.equal(termAt(x, L(200)), 3n);
  assert.equal(termAt(x, L(399)), 3n);
  assert.equal(termAt(x, L(400)), 5n);
  assert.equal(termAt(x, L(1 << 30)), 5n);
  assert.equal(termAt([], L(5)), undefined);
  assert.equal(lastLogTerm(x, L(50)), INVALID_TERM);
  assert.equal(lastLogTerm(x, L(250)), 3n);
  // Compare against a linear scan on many points.
  for (let p = 0; p < 500; p += 7) {
    let expect: bigint | undefined;
    for (const e of x) if (e.lsn <= BigInt(p)) expect = e.term;
    assert.equal(termAt(x, L(p)), expect, `at ${p}`);
  }
});

test("historyUpTo keeps switches at or before the LSN", () => {
  const x = h([1, 100], [2, 200], [3, 200], [5, 400]);
  assert.deepEqual(historyUpTo(x, L(50)), []);
  assert.deepEqual(historyUpTo(x, L(199)), h([1, 100]));
  assert.deepEqual(historyUpTo(x, L(200)), h([1, 100], [2, 200], [3, 200]));
  assert.deepEqual(historyUpTo(x, L(1000)), x);
});

test("compareLogPositions orders by last log term, then end LSN", () => {
  const a = { history: h([1, 0], [2, 100]), endLsn: L(150) };
  const b = { history: h([1, 0]), endLsn: L(500) }; // more WAL, older term
  const c = { history: h([1, 0], [2, 100]), endLsn: L(160) };
  assert.ok(compareLogPositions(a, b) > 0);
  assert.ok(compareLogPositions(b, a) < 0);
  assert.ok(compareLogPositions(a, c) < 0);
  assert.equal(compareLogPositions(a, a), 0);
  // A term that starts exactly at the end counts as the last log term.
  const d = { history: h([1, 0], [7, 150]), endLsn: L(150) };
  assert.ok(compareLogPositions(d, a) > 0);
});

test("electedHistory: donor's history up to the start LSN plus the new term", () => {
  assert.deepEqual(electedHistory(h([1, 0], [2, 100], [4, 300]), L(250), term(9)), h([1, 0], [2, 100], [9, 250]));
  assert.deepEqual(electedHistory([], L(0), term(1)), h([1, 0]));
  assert.throws(() => electedHistory(h([5, 0]), L(10), term(5)), isStrataError("invalid_argument"));
});

test("highestCommonPoint on the situations of the endpoint-start protocol", () => {
  const open = (x: TermHistory) => ({ history: x, endLsn: undefined });
  const at = (x: TermHistory, end: number) => ({ history: x, endLsn: L(end) });
  // Same history, follower behind: common up to the follower's end.
  assert.deepEqual(highestCommonPoint(open(h([1, 0], [2, 100])), at(h([1, 0], [2, 100]), 120)), { term: 2n, lsn: 120n });
  // Follower lags inside an older term: it keeps everything it has.
  assert.deepEqual(highestCommonPoint(open(h([1, 0], [2, 100])), at(h([1, 0]), 50)), { term: 1n, lsn: 50n });
  // Follower has term-1 WAL past where term 2 started: truncate at 100.
  assert.deepEqual(highestCommonPoint(open(h([1, 0], [2, 100])), at(h([1, 0]), 150)), { term: 1n, lsn: 100n });
  // Follower holds WAL of a losing term 2 from 80: diverged at 80.
  assert.deepEqual(highestCommonPoint(open(h([1, 0], [3, 100])), at(h([1, 0], [2, 80]), 150)), { term: 1n, lsn: 80n });
  // Equal LSNs: term 2 was elected at 100 but the donor has none of its WAL.
  assert.deepEqual(highestCommonPoint(open(h([1, 0], [2, 100], [3, 100])), at(h([1, 0], [2, 100]), 130)), { term: 2n, lsn: 100n });
  // Symmetric in its arguments.
  assert.deepEqual(highestCommonPoint(at(h([1, 0], [2, 80]), 150), open(h([1, 0], [3, 100]))), { term: 1n, lsn: 80n });
  // Two closed histories.
  assert.deepEqual(highestCommonPoint(at(h([1, 0], [2, 100]), 300), at(h([1, 0], [2, 100]), 200)), { term: 2n, lsn: 200n });
  // Nothing in common.
  assert.equal(highestCommonPoint(open(h([2, 0])), at(h([1, 0]), 10)), undefined);
  assert.equal(highestCommonPoint(open(h([2, 0])), at([], 0)), undefined);
});

test("highestCommonPoint rejects impossible inputs", () => {
  assert.throws(
    () => highestCommonPoint({ history: h([1, 0], [2, 100]), endLsn: undefined }, { history: h([1, 0], [2, 90]), endLsn: L(200) }),
    (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && e.message.includes("Term 2 starts at 0/64 in one history and at 0/5A"),
  );
  assert.throws(() => highestCommonPoint({ history: h([1, 0]), endLsn: undefined }, { history: h([1, 0]), endLsn: undefined }), isStrataError("invalid_argument"));
  // A term starting past the safekeeper's own WAL end.
  assert.throws(() => highestCommonPoint({ history: h([1, 0]), endLsn: undefined }, { history: h([1, 0], [2, 300]), endLsn: L(200) }), isStrataError("corrupt_data"));
  // Unordered history.
  assert.throws(() => highestCommonPoint({ history: h([2, 0], [1, 10]), endLsn: undefined }, { history: h([1, 0]), endLsn: L(5) }), isStrataError("corrupt_data"));
});

test("termHistoryProblem names the broken rule", () => {
  assert.equal(termHistoryProblem(h([1, 0], [2, 0], [3, 50])), undefined);
  assert.match(termHistoryProblem(h([0, 0]))!, /term 0/);
  assert.match(termHistoryProblem(h([2, 0], [2, 10]))!, /not above/);
  assert.match(termHistoryProblem(h([1, 10], [2, 5]))!, /before the previous/);
  assert.match(termHistoryProblem(h([1, 10]), L(5))!, /past the WAL end/);
});

test("encode/decode round trip and invalid cases", () => {
  const x = h([1, 0], [2, 0x1000000], [7, 0x1000000], [0x7fffffff, 2 ** 52]);
  const big = [...x, { term: term((1n << 64n) - 1n), lsn: lsn((1n << 64n) - 1n) }];
  for (const hist of [[], x, big]) {
    const buf = new Uint8Array(termHistoryEncodedBytes(hist) + 3);
    const end = encodeTermHistory(hist, buf, 3);
    assert.equal(end, buf.length);
    const back = decodeTermHistory(buf, 3, "test");
    assert.deepEqual(back.history, hist);
    assert.equal(back.end, buf.length);
    // Every truncation is "truncated", never a crash.
    for (let cut = 3; cut < buf.length; cut++) {
      assert.throws(() => decodeTermHistory(buf.subarray(0, cut), 3, "test"), isStrataError("truncated"), `cut ${cut}`);
    }
  }
  // A garbage count is corrupt, without allocating for it.
  const garbage = new Uint8Array(8);
  new DataView(garbage.buffer).setUint32(0, MAX_TERM_HISTORY_ENTRIES + 1, true);
  assert.throws(() => decodeTermHistory(garbage, 0, "file x"), (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && e.message.startsWith("file x"));
  // A decodable but unordered history is corrupt.
  const unordered = h([3, 0], [2, 10]);
  const ub = new Uint8Array(termHistoryEncodedBytes(unordered));
  encodeTermHistory(unordered, ub, 0);
  assert.throws(() => decodeTermHistory(ub, 0, "peer"), isStrataError("corrupt_data"));
  assert.throws(() => encodeTermHistory(x, new Uint8Array(10), 0), RangeError);
});

/**
 * A model of three safekeepers through many elections. WAL is an array of
 * "which term wrote this unit"; each election picks a quorum, takes its most
 * advanced member as donor, syncs the quorum with highestCommonPoint +
 * truncate + copy, then the new term streams some units to some members.
 * Checked: the kept prefix is always identical to the donor's WAL, and WAL
 * acknowledged by a quorum is never lost by a later term.
 */
test("random elections: common points never keep divergent WAL, committed WAL survives", () => {
  let truncations = 0;
  for (let seed = 1; seed <= 300; seed++) {
    const rand = rng(seed);
    const sks = [0, 1, 2].map(() => ({ history: [] as TermHistory, wal: [] as number[] }));
    let committed: number[] = [];
    for (let t = 1; t <= 12; t++) {
      const out = Math.floor(rand() * 3);
      const quorum = sks.filter((_, i) => i !== out);
      // The donor: most advanced WAL in the quorum.
      let donor = quorum[0]!;
      for (const s of quorum) {
        if (compareLogPositions({ history: s.history, endLsn: L(s.wal.length) }, { history: donor.history, endLsn: L(donor.wal.length) }) > 0) donor = s;
      }
      // Committed WAL is on a quorum, so every quorum contains it; the donor must hold it.
      assert.deepEqual(donor.wal.slice(0, committed.length), committed, `seed ${seed} term ${t}: donor lost committed WAL`);
      const startLsn = L(donor.wal.length);
      const propHistory = electedHistory(donor.history, startLsn, term(t));
      const propWal = donor.wal.slice();
      for (const s of quorum) {
        const cp = highestCommonPoint({ history: propHistory, endLsn: undefined }, { history: s.history, endLsn: L(s.wal.length) });
        const keep = cp === undefined ? 0 : Number(cp.lsn);
        assert.ok(keep <= s.wal.length);
        if (keep < s.wal.length) truncations++;
        assert.deepEqual(s.wal.slice(0, keep), propWal.slice(0, keep), `seed ${seed} term ${t}: kept divergent WAL`);
        s.wal = s.wal.slice(0, keep).concat(propWal.slice(keep));
        s.history = propHistory;
      }
      // The new term writes some units; each quorum member receives a prefix.
      const units = Math.floor(rand() * 4);
      const newWal = propWal.concat(new Array<number>(units).fill(t));
      const acks: number[] = [];
      for (const s of quorum) {
        const got = donor.wal.length + Math.floor(rand() * (units + 1));
        s.wal = newWal.slice(0, got);
        acks.push(got);
      }
      const minAck = Math.min(...acks);
      if (minAck > committed.length) committed = newWal.slice(0, minAck);
      for (const s of sks) assert.equal(termHistoryProblem(s.history, L(s.wal.length)), undefined);
    }
  }
  // The model really exercises divergence (a follower holding WAL the new term does not have).
  assert.ok(truncations > 100, `only ${truncations} truncations`);
});
