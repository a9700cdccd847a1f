/**
 * Branches at LSNs and at times, against real parts (issue 6):
 *
 *   initdb-bootstrapped `main` -> compute (sk_1 synchronous standby) -> safekeeper -> pageserver
 *   workload: after each commit record (LSN from pg_current_wal_lsn(), the compute's clock, a
 *   fingerprint of the table: count, sum, max id)
 *   branch at recorded LSNs and at recorded times (get_lsn_by_timestamp) -> fullbackup -> pg_ctl
 *
 * Checked:
 *   - a branch at an LSN taken from pg_current_wal_lsn() right after a
 *     commit, started from its fullbackup, has exactly the fingerprint of
 *     that moment; so does a branch at the LSN get_lsn_by_timestamp gives
 *     for a time between two commits ("present", the earlier commit's end,
 *     commit_timestamp at or before the time);
 *   - get_lsn_by_timestamp: "nodata" before any commit, "past" before the
 *     first one (the oldest readable LSN), "future" after the last (its
 *     last_record_lsn); a 400 for a malformed timestamp;
 *   - a chain of three branches (main -> b1 -> b2 -> b3), with writes on
 *     b1 and b2 through their own computes: b3 reads through all ancestors
 *     (main's rows up to the branch point, b1's and b2's rows), main and b1
 *     never see the writes of their descendants;
 *   - branch points are refused with a 400 and a precise message below the
 *     ancestor's start, below its GC cutoff (after GC) and beyond its last
 *     record (after the bounded wait); an unaligned LSN is moved to the
 *     next record boundary.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { formatLsn, parseLsn, type Lsn } from "../src/lib/lsn.js";
import { generateTenantId, generateTimelineId, type TimelineId } from "../src/lib/id.js";
import type { Pageserver } from "../src/pageserver/pageserver.js";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";
import type { PgServer } from "./harness/pg_server.js";
import { makeTempDir, removeTempDir } from "./harness/tools.js";
import { http, startInProcess } from "./safekeeper_helpers.js";
import { attachToSafekeeper, getTimeline, startComputeFromBackup, startPageserver, waitIngested, type TimelineJson } from "./pageserver_backup_support.js";

/** Short wait for LSNs ahead of ingest, so "beyond the end" is refused quickly. */
const WAIT_LSN_TIMEOUT_MS = 1500;
/** Workload points recorded on main; branches are made at some of them. */
const POINTS = 4;

interface Point {
  readonly lsn: Lsn;
  readonly time: string;
  readonly fingerprint: string;
}

const FINGERPRINT_SQL = "SELECT count(*) || ',' || coalesce(sum(v), 0) || ',' || coalesce(max(id), 0) FROM t";

async function fingerprint(pg: PgServer): Promise<string> {
  return pg.sql(FINGERPRINT_SQL);
}

test("branches at LSNs and at times, a chain of three, refused branch points", { timeout: 300_000 }, async () => {
  const psDir = await makeTempDir("ps");
  const tenantId = generateTenantId();
  const mainId = generateTimelineId();
  let sk: Safekeeper | undefined;
  let ps: Pageserver | undefined;
  const servers: PgServer[] = [];
  const t0 = Date.now();
  try {
    sk = await startInProcess({ id: 1 });
    ps = await startPageserver(psDir, { safekeeperPort: sk.pgPort });
    const api = ps.httpPort;
    let r = await http(api, "POST", "/v1/tenant", { tenant_id: tenantId, config: { waitLsnTimeoutMs: WAIT_LSN_TIMEOUT_MS } });
    assert.equal(r.status, 201, r.text);
    r = await http(api, "POST", `/v1/tenant/${tenantId}/timeline`, { new_timeline_id: mainId });
    assert.equal(r.status, 201, r.text);
    const main0 = r.body as TimelineJson;
    const byTime = (tl: string, ts: string) => http(api, "GET", `/v1/tenant/${tenantId}/timeline/${tl}/get_lsn_by_timestamp?timestamp=${encodeURIComponent(ts)}`);
    r = await byTime(mainId, new Date().toISOString());
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.body, { lsn: main0.last_record_lsn, kind: "nodata", commit_timestamp: null }, "no commit yet");

    // main's compute and workload
    const main = (await startComputeFromBackup(ps, tenantId, mainId, { synchronousStandby: "sk_1" })).pg;
    servers.push(main);
    await attachToSafekeeper(sk, tenantId, mainId, main);
    await main.sql("CREATE TABLE t (id serial PRIMARY KEY, v int NOT NULL, origin text NOT NULL DEFAULT 'main')");
    const points: Point[] = [];
    for (let i = 0; i < POINTS; i++) {
      const out = await main.sql(
        `BEGIN; INSERT INTO t (v) SELECT g * ${i + 1} FROM generate_series(1, ${500 + 300 * i}) g;` +
          ` UPDATE t SET v = v + 1 WHERE id % ${i + 3} = 0; DELETE FROM t WHERE id % ${17 + i} = 0; COMMIT;` +
          ` SELECT pg_current_wal_lsn() || ' ' || to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || ' ' || (${FINGERPRINT_SQL});`,
      );
      const [l, time, fp] = out.split(" ");
      points.push({ lsn: parseLsn(l!), time: time!, fingerprint: fp! });
      await new Promise((res) => setTimeout(res, 30)); // the next commit's timestamp is later than `time`
    }
    await waitIngested(ps, tenantId, mainId, points.at(-1)!.lsn);
    console.log(`workload: ${POINTS} points ${formatLsn(points[0]!.lsn)}..${formatLsn(points.at(-1)!.lsn)} (${Date.now() - t0} ms)`);

    // get_lsn_by_timestamp at the edges
    r = await byTime(mainId, "2001-02-03T04:05:06Z");
    assert.deepEqual(r.body, { lsn: main0.initial_lsn, kind: "past", commit_timestamp: null }, "before the first commit");
    r = await byTime(mainId, new Date(Date.now() + 3600_000).toISOString());
    const mainNow = await getTimeline(ps, tenantId, mainId);
    const future = r.body as { lsn: string; kind: string; commit_timestamp: string };
    assert.equal(future.kind, "future");
    assert.ok(parseLsn(future.lsn) >= points.at(-1)!.lsn && parseLsn(future.lsn) <= parseLsn(mainNow.last_record_lsn));
    assert.ok(future.commit_timestamp <= points.at(-1)!.time, `last commit ${future.commit_timestamp} at or before ${points.at(-1)!.time}`);
    r = await byTime(mainId, "yesterday");
    assert.equal(r.status, 400);
    assert.match(r.text, /Cannot parse timestamp \\"yesterday\\"/);

    // branches at recorded LSNs and times: each started from its fullbackup has that moment's fingerprint
    const branch = async (ancestor: string, lsnText: string | undefined): Promise<TimelineJson> => {
      const res = await http(api, "POST", `/v1/tenant/${tenantId}/timeline`, { ancestor_timeline_id: ancestor, ...(lsnText === undefined ? {} : { ancestor_start_lsn: lsnText }) });
      assert.equal(res.status, 201, res.text);
      return res.body as TimelineJson;
    };
    const checkBranch = async (tl: TimelineJson, want: string, what: string) => {
      const c = await startComputeFromBackup(ps!, tenantId, tl.timeline_id as TimelineId);
      try {
        assert.equal(await fingerprint(c.pg), want, what);
      } finally {
        await c.pg.destroy();
      }
    };
    // every point is branched once, by LSN (even points) or by time (odd points); the computes run side by side
    const checks: Array<Promise<void>> = [];
    const track = (c: Promise<void>) => {
      c.catch(() => undefined); // reported by Promise.all below, never as an unhandled rejection
      checks.push(c);
    };
    for (let i = 0; i < POINTS; i++) {
      const p = points[i]!;
      if (i % 2 === 0) {
        const atLsn = await branch(mainId, formatLsn(p.lsn));
        assert.equal(atLsn.ancestor_lsn, formatLsn(p.lsn));
        assert.equal(atLsn.initial_lsn, formatLsn(p.lsn));
        assert.equal(atLsn.system_id, main0.system_id);
        track(checkBranch(atLsn, p.fingerprint, `branch at point ${i}'s LSN ${formatLsn(p.lsn)}`));
        continue;
      }
      r = await byTime(mainId, p.time);
      const found = r.body as { lsn: string; kind: string; commit_timestamp: string };
      assert.equal(found.kind, i === POINTS - 1 ? "future" : "present", r.text);
      assert.ok(found.commit_timestamp <= p.time, `${found.commit_timestamp} <= ${p.time}`);
      if (found.kind === "future") {
        assert.ok(parseLsn(found.lsn) >= p.lsn, `future: last_record_lsn ${found.lsn} is at or past the last point`);
      } else {
        const at = parseLsn(found.lsn);
        assert.ok(at <= p.lsn && at > points[i - 1]!.lsn, `the commit ${r.text} lies between points ${i - 1} and ${i}`);
      }
      track(checkBranch(await branch(mainId, found.lsn), p.fingerprint, `branch at point ${i}'s time ${p.time} (LSN ${found.lsn})`));
    }
    await Promise.all(checks);
    console.log(`${POINTS} branches at LSNs and times checked (${Date.now() - t0} ms)`);

    // a chain of three: main -> b1 (writes) -> b2 (writes) -> b3
    const b1 = await branch(mainId, formatLsn(points[2]!.lsn));
    const c1 = (await startComputeFromBackup(ps, tenantId, b1.timeline_id as TimelineId, { synchronousStandby: "sk_1" })).pg;
    servers.push(c1);
    await attachToSafekeeper(sk, tenantId, b1.timeline_id as TimelineId, c1);
    await c1.sql("INSERT INTO t (v, origin) SELECT 1000000 + g, 'b1' FROM generate_series(1, 200) g; DELETE FROM t WHERE id % 5 = 0;");
    const b1Fp = await fingerprint(c1);
    const b1End = await c1.currentWalLsn();
    await waitIngested(ps, tenantId, b1.timeline_id, b1End);
    const b2 = await branch(b1.timeline_id, formatLsn(b1End));
    const c2 = (await startComputeFromBackup(ps, tenantId, b2.timeline_id as TimelineId, { synchronousStandby: "sk_1" })).pg;
    servers.push(c2);
    assert.equal(await fingerprint(c2), b1Fp, "b2 starts with b1's state");
    await attachToSafekeeper(sk, tenantId, b2.timeline_id as TimelineId, c2);
    await c2.sql("INSERT INTO t (v, origin) SELECT 2000000 + g, 'b2' FROM generate_series(1, 300) g; UPDATE t SET v = v + 7 WHERE origin = 'b1';");
    const b2Fp = await fingerprint(c2);
    await waitIngested(ps, tenantId, b2.timeline_id, await c2.currentWalLsn());
    const b3 = await branch(b2.timeline_id, undefined);
    assert.equal(b3.ancestor_timeline_id, b2.timeline_id);
    const c3 = (await startComputeFromBackup(ps, tenantId, b3.timeline_id as TimelineId)).pg;
    servers.push(c3);
    assert.equal(await fingerprint(c3), b2Fp, "b3 reads main's, b1's and b2's history through its ancestors");
    assert.equal(await c3.sql("SELECT string_agg(origin || ':' || n, ',' ORDER BY origin) FROM (SELECT origin, count(*) n FROM t GROUP BY origin) x"), await c2.sql("SELECT string_agg(origin || ':' || n, ',' ORDER BY origin) FROM (SELECT origin, count(*) n FROM t GROUP BY origin) x"));
    assert.equal(await main.sql("SELECT count(*) FROM t WHERE origin <> 'main'"), "0", "main never sees a branch's writes");
    assert.equal(await c1.sql("SELECT count(*) FROM t WHERE origin = 'b2'"), "0", "b1 never sees its child's writes");
    assert.equal(await fingerprint(c1), b1Fp);
    // a time from main's history before b3's branch point: b3's oldest LSN (no commit lies between)
    r = await byTime(b3.timeline_id, points[1]!.time);
    assert.deepEqual((r.body as { kind: string }).kind, "past", r.text);
    r = await byTime(b1.timeline_id, points[2]!.time);
    assert.deepEqual(r.body, { ...(r.body as object), kind: "present", lsn: b1.initial_lsn }, "the commit before b1's branch point, clamped to it");
    console.log(`chain main -> b1 -> b2 -> b3 checked (${Date.now() - t0} ms)`);

    // refused branch points
    const refuse = async (ancestor: string, lsnText: string, pattern: RegExp) => {
      const res = await http(api, "POST", `/v1/tenant/${tenantId}/timeline`, { ancestor_timeline_id: ancestor, ancestor_start_lsn: lsnText });
      assert.equal(res.status, 400, res.text);
      assert.match((res.body as { error: string }).error, pattern);
    };
    await refuse(mainId, formatLsn(parseLsn(main0.initial_lsn) - 8n), /its history starts at/);
    await refuse(b1.timeline_id, formatLsn(points[1]!.lsn), /its history starts at/);
    const beyond = (parseLsn((await getTimeline(ps, tenantId, mainId)).last_record_lsn) + 0x10000n) as Lsn;
    const tw = Date.now();
    await refuse(mainId, formatLsn(beyond), new RegExp(`ahead of the timeline's last record .* \\(waited ${WAIT_LSN_TIMEOUT_MS} ms for WAL\\)`));
    assert.ok(Date.now() - tw >= WAIT_LSN_TIMEOUT_MS - 100);
    await refuse(mainId, "not-an-lsn", /ancestor_start_lsn/);
    const odd = await branch(mainId, formatLsn(points[2]!.lsn + 1n));
    assert.equal(odd.ancestor_lsn, formatLsn(points[2]!.lsn + 8n), "an unaligned LSN moves to the next multiple of 8");
    // GC with a tiny horizon and no PITR window moves main's cutoff past point 2: branching below it is refused
    r = await http(api, "PATCH", `/v1/tenant/${tenantId}/config`, { gcHorizonBytes: 1024, pitrIntervalMs: 0 });
    assert.equal(r.status, 200, r.text);
    r = await http(api, "PUT", `/v1/tenant/${tenantId}/timeline/${mainId}/do_gc`);
    assert.equal(r.status, 200, r.text);
    const cutoff = parseLsn((await getTimeline(ps, tenantId, mainId)).latest_gc_cutoff_lsn);
    assert.ok(cutoff > points[2]!.lsn, `cutoff ${formatLsn(cutoff)}`);
    await refuse(mainId, formatLsn(points[2]!.lsn), /below its GC cutoff/);
    r = await byTime(mainId, "2001-02-03T04:05:06Z");
    assert.equal((r.body as { lsn: string }).lsn, formatLsn(cutoff), "past = the oldest readable LSN, now the GC cutoff");
    // the branches made before GC still read their history
    assert.equal(await fingerprint(c3), b2Fp);
    await checkBranch(b3, b2Fp, "b3 after GC on main");
    console.log(`refusals and GC checked (${Date.now() - t0} ms)`);
  } finally {
    for (const s of servers.reverse()) await s.destroy().catch(() => undefined);
    await ps?.stop().catch(() => undefined);
    await sk?.stop().catch(() => undefined);
    await removeTempDir(psDir);
  }
});
