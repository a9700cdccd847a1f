/**
 * The consensus protocol over real HTTP between three safekeeper timelines
 * on real disks (StoreTimeline over NodeDurableFS in temp directories, each
 * behind its own fastify server with the consensus routes): endpoint start,
 * WAL fetched from the donor's range endpoint, divergent WAL truncated,
 * commit_lsn from peer polling, catch-up of a member that missed an
 * election, fencing answers (409) and bad requests (400/404).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import type { FastifyInstance } from "fastify";
import { StrataError } from "../src/lib/errors.js";
import { createHttpApi } from "../src/lib/http.js";
import { silentLogger } from "../src/lib/logging.js";
import { createRegistry } from "../src/lib/metrics.js";
import { formatLsn } from "../src/lib/lsn.js";
import { NodeDurableFS } from "../src/safekeeper/durable_fs.js";
import { lastTerm, term } from "../src/safekeeper/term_history.js";
import { TermRefusedError } from "../src/safekeeper/consensus/acceptor_state.js";
import { startEndpoint } from "../src/safekeeper/consensus/endpoint_start.js";
import { HttpConsensusClient, HttpWalSource, timelinePath } from "../src/safekeeper/consensus/http_client.js";
import { registerConsensusRoutes } from "../src/safekeeper/consensus/http_routes.js";
import { StoreTimeline } from "../src/safekeeper/consensus/store_timeline.js";
import { createTestTimeline, TEST_START, TEST_TENANT, TEST_TIMELINE, WalGen } from "../src/safekeeper/consensus/testing.js";
import { PeerSync } from "../src/safekeeper/peers.js";
import { makeTempDir } from "./harness/tools.js";

interface Member {
  id: number;
  tl: StoreTimeline;
  app: FastifyInstance;
  url: string;
  dir: string;
}

async function startMember(id: number, stop: AbortSignal): Promise<Member> {
  const dir = await makeTempDir(`sk-consensus-${id}-`);
  const tl = await createTestTimeline(new NodeDurableFS(), dir);
  const app = createHttpApi({ log: silentLogger(), registry: createRegistry() });
  registerConsensusRoutes(app, {
    lookup: (tenantId, timelineId) => {
      if (tenantId !== TEST_TENANT || timelineId !== TEST_TIMELINE) throw new StrataError("not_found", `no timeline ${tenantId}/${timelineId}`);
      return tl;
    },
    walSourceFor: (donor, tenantId, timelineId) => new HttpWalSource(donor, tenantId, timelineId),
    signal: stop,
  });
  const url = await app.listen({ host: "127.0.0.1", port: 0 });
  return { id, tl, app, url, dir };
}

async function wal(tl: StoreTimeline): Promise<Buffer> {
  const s = await tl.snapshot();
  return Buffer.from(await tl.readWal(TEST_START, Number(s.flushLsn - TEST_START), s.flushLsn));
}

test("endpoint start, donor fetch, divergence and commit over HTTP", async () => {
  const stop = new AbortController();
  const members = await Promise.all([1, 2, 3].map((id) => startMember(id, stop.signal)));
  const [m1, m2, m3] = members as [Member, Member, Member];
  const safekeepers = members.map((m) => ({ id: m.id, httpUrl: m.url }));
  const signal = AbortSignal.timeout(30_000);
  try {
    // Term 1: empty timeline, starts at the timeline start.
    const first = await startEndpoint({ safekeepers, tenantId: TEST_TENANT, timelineId: TEST_TIMELINE, signal });
    assert.equal(first.term, term(1));
    assert.equal(first.startLsn, TEST_START);

    // The term-1 compute streams to members 1 and 2 only (3 is slow); a tail reaches only member 1.
    const g1 = new WalGen();
    const acked = g1.records(200, 900);
    for (const m of [m1, m2]) await m.tl.appendWalFromCompute(term(1), TEST_START, g1.bytes(TEST_START, acked));
    const tail = g1.records(10, 500);
    await m1.tl.appendWalFromCompute(term(1), acked, g1.bytes(acked, tail));

    // Peer polling computes commit_lsn = the quorum's record end.
    const syncs = members.map(
      (m) => new PeerSync({ selfId: m.id, peers: safekeepers.filter((p) => p.id !== m.id), timelines: () => [m.tl], intervalMs: 20 }),
    );
    for (const s of syncs) await s.tick(signal);
    for (const m of [m1, m2]) assert.equal((await m.tl.snapshot()).commitLsn, acked, `member ${m.id} commit_lsn`);
    assert.equal(syncs[0]!.peerReports(TEST_TENANT, TEST_TIMELINE).get(2)?.snapshot.flushLsn, acked);

    // Member 1 becomes unreachable: term 2 is elected by 2 and 3; 2 is the donor; 3 fetches from it.
    await m1.app.close();
    const second = await startEndpoint({ safekeepers, tenantId: TEST_TENANT, timelineId: TEST_TIMELINE, signal, attempts: 1 });
    assert.equal(second.term, term(2));
    assert.equal(second.startLsn, acked, "start at the most advanced voter's record end");
    assert.equal(second.result.donorId, 2);
    assert.deepEqual(second.result.joined, [2, 3]);
    assert.deepEqual(await wal(m3.tl), await wal(m2.tl));
    assert.equal((await m3.tl.snapshot()).flushLsn, acked);

    // Member 1 (still in term 1, holding the unacknowledged tail) comes back.
    const m1back = await startMemberOn(m1, stop.signal);
    members[0] = m1back;
    const safekeepers2 = members.map((m) => ({ id: m.id, httpUrl: m.url }));
    // A stale coordinator trying term 2 again is refused with 409 and refused_term.
    const stale = new HttpConsensusClient({ id: 2, httpUrl: m2.url, tenantId: TEST_TENANT, timelineId: TEST_TIMELINE, peers: safekeepers2 });
    await assert.rejects(stale.elected({ term: term(1), history: [{ term: term(1), lsn: TEST_START }], startLsn: TEST_START, donorId: 2 }, signal), TermRefusedError);
    const v = await stale.vote(term(2), signal);
    assert.equal(v.granted, false);

    // Term 3 with everyone up: member 1 is behind in terms (last log term 1), so the donor is
    // a term-2 member and member 1's divergent tail is cut.
    const third = await startEndpoint({ safekeepers: safekeepers2, tenantId: TEST_TENANT, timelineId: TEST_TIMELINE, signal });
    assert.equal(third.term, term(3));
    assert.equal(third.startLsn, acked, "the unacknowledged term-1 tail on member 1 loses to term 2's start");
    assert.deepEqual(third.result.joined, [1, 2, 3]);
    for (const m of members) {
      const s = await m.tl.snapshot();
      assert.equal(s.flushLsn, acked, `member ${m.id} ends at ${formatLsn(s.flushLsn)}`);
      assert.equal(lastTerm(s.termHistory), term(3));
    }
    assert.deepEqual(await wal(m1back.tl), await wal(m2.tl));
  } finally {
    stop.abort();
    for (const m of members) await m.app.close().catch(() => undefined);
    for (const m of members) await m.tl.close().catch(() => undefined);
    for (const m of members) await rm(m.dir, { recursive: true, force: true });
  }
});

/** Restarts a member's HTTP server and reopens its timeline from disk (as after a restart). */
async function startMemberOn(old: Member, stop: AbortSignal): Promise<Member> {
  await old.tl.close();
  const tl = await StoreTimeline.open(new NodeDurableFS(), old.dir, TEST_TENANT, TEST_TIMELINE);
  const app = createHttpApi({ log: silentLogger(), registry: createRegistry() });
  registerConsensusRoutes(app, {
    lookup: () => tl,
    walSourceFor: (donor, tenantId, timelineId) => new HttpWalSource(donor, tenantId, timelineId),
    signal: stop,
  });
  const url = await app.listen({ host: "127.0.0.1", port: 0 });
  return { ...old, tl, app, url };
}

test("a member that missed an election catches up from a peer through peer sync", async () => {
  const stop = new AbortController();
  const members = await Promise.all([1, 2, 3].map((id) => startMember(id, stop.signal)));
  const safekeepers = members.map((m) => ({ id: m.id, httpUrl: m.url }));
  const signal = AbortSignal.timeout(30_000);
  try {
    await startEndpoint({ safekeepers, tenantId: TEST_TENANT, timelineId: TEST_TIMELINE, signal });
    const g = new WalGen();
    const end = g.records(400, 2000); // ~800 KiB: several fetch chunks
    for (const m of members.slice(0, 2)) await m.tl.appendWalFromCompute(term(1), TEST_START, g.bytes(TEST_START, end));
    // Member 3 promised term 2 (a vote) but the coordinator died before telling it the history.
    await members[2]!.tl.vote(term(2));
    for (const m of members.slice(0, 2)) {
      await m.tl.vote(term(2));
      const s = await m.tl.snapshot();
      await m.tl.truncateAndSetHistory(term(2), [...s.termHistory, { term: term(2), lsn: end }], end);
    }
    const sync = new PeerSync({ selfId: 3, peers: safekeepers.filter((p) => p.id !== 3), timelines: () => [members[2]!.tl], intervalMs: 20 });
    const run = sync.run(stop.signal);
    const deadline = Date.now() + 20_000;
    while ((await members[2]!.tl.snapshot()).flushLsn < end && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const s3 = await members[2]!.tl.snapshot();
    assert.equal(s3.flushLsn, end);
    assert.equal(lastTerm(s3.termHistory), term(2));
    assert.deepEqual(await wal(members[2]!.tl), await wal(members[0]!.tl));
    stop.abort();
    await run;
  } finally {
    stop.abort();
    for (const m of members) await m.app.close().catch(() => undefined);
    for (const m of members) await m.tl.close().catch(() => undefined);
    for (const m of members) await rm(m.dir, { recursive: true, force: true });
  }
});

test("bad consensus requests get precise 4xx answers", async () => {
  const stop = new AbortController();
  const m = await startMember(1, stop.signal);
  const base = m.url + timelinePath(TEST_TENANT, TEST_TIMELINE);
  const post = (path: string, body: unknown) => fetch(base + path, { method: "POST", body: typeof body === "string" ? body : JSON.stringify(body), headers: { "content-type": "application/json" } });
  try {
    const cases: [Promise<Response>, number, RegExp][] = [
      [post("/vote", { term: "x" }), 400, /term must be a decimal string/],
      [post("/vote", { term: -1 }), 400, /term/],
      [post("/vote", "{not json"), 400, /JSON/i],
      [post("/vote", [1]), 400, /JSON object/],
      [post("/elected", { term: "1", term_history: [], start_lsn: "0/1000000", donor: { id: 1, http_url: m.url } }), 400, /must end with term 1/],
      [post("/elected", { term: "1", term_history: [{ term: "1", lsn: "0/100000" }], start_lsn: "0/100000", donor: { id: 1, http_url: "ftp://x" } }), 400, /http_url/],
      [post("/wal", { start_lsn: "0/100000", end_lsn: "0/100010", max_bytes: 1e9, term_history: [] }), 400, /max_bytes/],
      [post("/wal", { start_lsn: "0/100010", end_lsn: "0/100000", max_bytes: 10, term_history: [] }), 400, /before start/],
      [post("/wal", { start_lsn: "0/100000", end_lsn: "0/200000", max_bytes: 10, term_history: [{ term: "1", lsn: "0/100000" }] }), 503, /is not here/],
      [fetch(m.url + timelinePath(TEST_TENANT, "ffff0000000000000000000000000002" as never) + "/state"), 404, /no timeline/],
      [fetch(m.url + "/v1/tenant/zz/timeline/yy/consensus/state"), 400, /Cannot parse tenant id/],
    ];
    for (const [p, status, re] of cases) {
      const res = await p;
      const body = await res.text();
      assert.equal(res.status, status, body);
      assert.match(body, re);
    }
    // Still serving after all that.
    const ok = await fetch(base + "/state");
    assert.equal(ok.status, 200);
  } finally {
    stop.abort();
    await m.app.close();
    await m.tl.close();
    await rm(m.dir, { recursive: true, force: true });
  }
});
