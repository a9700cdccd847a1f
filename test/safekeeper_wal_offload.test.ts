/**
 * Safekeeper WAL offload (issue 7, contract C) against real PostgreSQL 15,
 * with the local-directory backend and with S3 on s3rver:
 * * finished segments appear in remote storage under
 *   wal/<tenant>/<timeline>/<segment>, byte-identical to the safekeeper's
 *   local files and to the primary's pg_wal; backup_lsn is in the timeline
 *   JSON and in the metrics;
 * * retention: with the pageserver's remote-consistent LSN low, nothing is
 *   removed even though it is offloaded; with it (faked) high, segments go
 *   exactly up to the backup LSN;
 * * after the local segments are gone, pg_receivewal streaming from the
 *   timeline's first segment still gets byte-identical segments — served
 *   from remote storage;
 * * storage unreachable: uploads fail with clear logged errors, backup_lsn
 *   stalls, retention removes nothing, commits go on; restarted with
 *   reachable storage, the backup catches up and retention proceeds.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdir, readFile, writeFile, chown } from "node:fs/promises";
import { join } from "node:path";
import { startPostgres, type PgServer } from "./harness/pg_server.js";
import { freePort } from "./harness/ports.js";
import { startS3rver, S3RVER_CREDENTIALS } from "./harness/s3rver.js";
import { makeTempDir, pgUser, PG_BIN_DIR, removeTempDir } from "./harness/tools.js";
import { formatLsn, segmentNumber, segmentStart, walFileName, type Lsn } from "../src/lib/lsn.js";
import { createLogger } from "../src/lib/logging.js";
import { createRegistry } from "../src/lib/metrics.js";
import { createRemoteStorage } from "../src/remote_storage/config.js";
import { downloadBytes } from "../src/remote_storage/remote_storage.js";
import { buildConfig } from "../src/safekeeper/config.js";
import { Safekeeper } from "../src/safekeeper/safekeeper.js";
import { remoteSegmentPath } from "../src/safekeeper/wal_backup.js";
import { http, newIds, SEG, timelineDir, timelineLsn, waitFor, type TimelineIds } from "./safekeeper_helpers.js";

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = "true";

/** Segments each scenario fills and switches (each ~1 MiB of rows, then pg_switch_wal). */
const SEGMENTS = 3;

interface Started {
  sk: Safekeeper;
  logs: string[];
}

async function startSk(dataDir: string, remoteUrl: string): Promise<Started> {
  const logs: string[] = [];
  const config = buildConfig({ id: 1, datadir: dataDir, pgPort: 0, httpPort: 0, remoteStorage: remoteUrl });
  const log = createLogger({ component: "sk-offload-test", level: "info", destination: { write: (s: string) => void logs.push(s) } });
  const sk = await Safekeeper.start({ config, log, registry: createRegistry({ defaultMetrics: false }) });
  return { sk, logs };
}

/** Registers the compute and fills `n` segments (rows, then a switch); returns the timeline start and the end of the last switched segment. */
async function fillSegments(pg: PgServer, sk: Safekeeper, ids: TimelineIds, n: number, table: string): Promise<{ startLsn: Lsn; switchedEnd: Lsn }> {
  const r = await http(sk.httpPort, "PUT", `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}/compute`, { connstr: pg.connString(), term: 1 });
  assert.ok(r.status === 200 || r.status === 201, r.text);
  const startLsn = await timelineLsn(sk.httpPort, ids, "timeline_start_lsn");
  await pg.sql(`CREATE TABLE IF NOT EXISTS ${table} (id int, v text)`, { timeoutMs: 30_000 });
  let switchedEnd = startLsn;
  for (let i = 0; i < n; i++) {
    await pg.sql(`INSERT INTO ${table} SELECT g, md5(g::text) FROM generate_series(1, 8000) g`, { timeoutMs: 30_000 });
    const at = await pg.switchWal();
    switchedEnd = segmentStart(segmentNumber(at, SEG) + 1n, SEG);
  }
  // One commit after the last switch, so commit_lsn passes the switched segment's end.
  await pg.sql(`INSERT INTO ${table} VALUES (0, 'after switch')`, { timeoutMs: 30_000 });
  return { startLsn, switchedEnd };
}

async function segmentFile(dir: string, segNo: bigint): Promise<Buffer> {
  return await readFile(join(dir, walFileName(1, segNo, SEG)));
}

async function metricValue(sk: Safekeeper, name: string, ids: TimelineIds): Promise<number> {
  const text = (await http(sk.httpPort, "GET", "/metrics")).text;
  const line = text.split("\n").find((l) => l.startsWith(name + "{") && l.includes(ids.timelineId));
  return line === undefined ? NaN : Number(line.slice(line.lastIndexOf(" ") + 1));
}

/** pg_receivewal from the timeline's first segment (a zero-filled .partial makes it start there) until it holds `upTo`'s complete segments. */
async function receiveFromStart(sk: Safekeeper, ids: TimelineIds, startLsn: Lsn, upTo: Lsn): Promise<string> {
  const dir = await makeTempDir("offload-recv");
  const seed = join(dir, walFileName(1, segmentNumber(startLsn, SEG), SEG) + ".partial");
  await writeFile(seed, new Uint8Array(SEG));
  const u = pgUser();
  if (u) await chown(seed, u.uid, u.gid);
  const conn = `host=127.0.0.1 port=${sk.pgPort} user=postgres options='-c tenant_id=${ids.tenantId} -c timeline_id=${ids.timelineId}'`;
  let err = "";
  const proc = spawn(join(PG_BIN_DIR, "pg_receivewal"), ["-D", dir, "-d", conn, "--no-loop", "-s", "1"], { stdio: ["ignore", "ignore", "pipe"] });
  proc.stderr!.on("data", (b: Buffer) => (err += b.toString()));
  const exit = new Promise<number | null>((res) => proc.on("exit", (code) => res(code)));
  try {
    const lastSeg = segmentNumber(upTo, SEG) - 1n;
    await waitFor(`pg_receivewal to complete segment ${walFileName(1, lastSeg, SEG)}`, async () => (await readdir(dir)).includes(walFileName(1, lastSeg, SEG)), 40_000, 200);
  } catch (e) {
    throw new Error(`${(e as Error).message}; pg_receivewal said: ${err.slice(-1500)}`);
  } finally {
    proc.kill("SIGINT");
    await exit;
  }
  return dir;
}

async function offloadScenario(label: string, remoteUrl: string): Promise<void> {
  const pg = await startPostgres({ synchronousStandbyNames: "sk_1", settings: { wal_keep_size: "512MB" } });
  const dataDir = await makeTempDir("sk-offload");
  let started: Started | undefined;
  let recvDir: string | undefined;
  const checker = createRemoteStorage(remoteUrl);
  try {
    started = await startSk(dataDir, remoteUrl);
    const sk = started.sk;
    const ids = newIds();
    const { startLsn, switchedEnd } = await fillSegments(pg, sk, ids, SEGMENTS, "t");
    await waitFor(`backup_lsn to reach ${formatLsn(switchedEnd)}`, async () => (await timelineLsn(sk.httpPort, ids, "backup_lsn")) >= switchedEnd, 40_000, 200);
    const backupLsn = await timelineLsn(sk.httpPort, ids, "backup_lsn");
    assert.equal(backupLsn % BigInt(SEG), 0n, "backup_lsn is a segment boundary");

    // Remote segments: byte-identical to the safekeeper's files and to the primary's pg_wal.
    const tlDir = timelineDir(dataDir, ids);
    const firstSeg = segmentNumber(startLsn, SEG);
    const endSeg = segmentNumber(backupLsn, SEG);
    for (let seg = firstSeg; seg < endSeg; seg++) {
      const remote = await downloadBytes(checker, remoteSegmentPath(ids.tenantId, ids.timelineId, seg, SEG));
      assert.ok(remote.equals(await segmentFile(tlDir, seg)), `${label}: remote segment ${seg} differs from the safekeeper's file`);
      assert.ok(remote.equals(await segmentFile(pg.walDir, seg)), `${label}: remote segment ${seg} differs from the primary's pg_wal`);
    }
    const uploaded = Number(endSeg - firstSeg);
    assert.ok(uploaded >= SEGMENTS, `${label}: ${uploaded} segments offloaded`);
    assert.equal(await metricValue(sk, "strata_safekeeper_backup_lsn", ids), Number(backupLsn));
    assert.ok((await metricValue(sk, "strata_safekeeper_wal_backup_segments_total", ids)) >= uploaded);

    // Retention: a low remote-consistent LSN keeps everything, offloaded or not.
    const tl = sk.findTimeline(ids.tenantId, ids.timelineId)!;
    assert.equal(await tl.removeOldWal(), 0, "nothing removed below a low remote-consistent LSN");
    // A (faked) pageserver that has everything: segments go, exactly up to the backup LSN.
    tl.recordPageserverFeedback({ lastReceivedLsn: tl.flushLsn, diskConsistentLsn: tl.flushLsn, remoteConsistentLsn: tl.flushLsn });
    await tl.persistProgressNow();
    const backupNow = tl.backupLsn;
    const removed = await tl.removeOldWal();
    assert.ok(removed >= 1, `${label}: removed ${removed}`);
    assert.ok(tl.oldestLsn <= backupNow && segmentNumber(tl.oldestLsn, SEG) === segmentNumber(tl.retentionHorizonLsn(), SEG), `${label}: oldest local ${formatLsn(tl.oldestLsn)}, backup ${formatLsn(backupNow)}`);
    assert.ok(tl.oldestLsn > startLsn, "the first segments are gone locally");

    // pg_receivewal from the timeline's first segment: the removed segments come from remote storage.
    recvDir = await receiveFromStart(sk, ids, startLsn, backupNow);
    for (let seg = firstSeg; seg < segmentNumber(backupNow, SEG); seg++) {
      assert.ok((await segmentFile(recvDir, seg)).equals(await segmentFile(pg.walDir, seg)), `${label}: pg_receivewal's segment ${seg} differs from the primary's`);
    }
    assert.ok((await metricValue(sk, "strata_safekeeper_remote_wal_downloads_total", ids)) >= 1, "served from remote storage");
    console.log(
      `${label}: ${uploaded} segments offloaded byte-identical (backup_lsn ${formatLsn(backupLsn)}), ${removed} removed locally down to ${formatLsn(tl.oldestLsn)}, pg_receivewal got ${Number(segmentNumber(backupNow, SEG) - firstSeg)} identical segments from ${formatLsn(startLsn)}`,
    );
  } finally {
    await started?.sk.stop();
    await checker.close();
    await pg.destroy();
    await removeTempDir(dataDir);
    if (recvDir) await removeTempDir(recvDir);
  }
}

test("WAL offload to a local directory: identical remote segments, retention by backup LSN, old WAL served from remote", { timeout: 90_000 }, async () => {
  const root = await makeTempDir("remote-wal");
  try {
    await offloadScenario("local", `file://${root}/prefix`);
  } finally {
    await removeTempDir(root);
  }
});

test("WAL offload to S3 (s3rver): identical remote segments, retention by backup LSN, old WAL served from remote", { timeout: 90_000 }, async () => {
  process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
  const s3 = await startS3rver();
  try {
    await offloadScenario("s3", `s3://${s3.buckets[0]}/sk-prefix?endpoint=${s3.endpoint}&force_path_style=true&region=us-east-1`);
  } finally {
    await s3.stop();
  }
});

test("storage unreachable: uploads fail with logged errors, nothing is removed, commits go on; reachable again, backup and retention proceed", { timeout: 90_000 }, async () => {
  process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
  const pg = await startPostgres({ synchronousStandbyNames: "sk_1", settings: { wal_keep_size: "512MB" } });
  const dataDir = await makeTempDir("sk-offload-down");
  const deadPort = await freePort(); // nothing listens there
  const deadUrl = `s3://strata-test/down?endpoint=http://127.0.0.1:${deadPort}&force_path_style=true&region=us-east-1&max_attempts=2&timeout_ms=2000`;
  let started: Started | undefined;
  let s3: Awaited<ReturnType<typeof startS3rver>> | undefined;
  try {
    started = await startSk(dataDir, deadUrl);
    const sk = started.sk;
    const ids = newIds();
    const { startLsn, switchedEnd } = await fillSegments(pg, sk, ids, 2, "d");
    const tl = sk.findTimeline(ids.tenantId, ids.timelineId)!;
    tl.recordPageserverFeedback({ lastReceivedLsn: tl.flushLsn, diskConsistentLsn: tl.flushLsn, remoteConsistentLsn: tl.flushLsn });
    await tl.persistProgressNow();
    const logs = started.logs;
    await waitFor("a logged upload failure", () => logs.some((l) => l.includes("WAL segment upload failed")), 30_000, 100);
    const failure = JSON.parse(logs.find((l) => l.includes("WAL segment upload failed"))!) as { level: number; segment: string; err: string; retry_in_ms: number };
    assert.equal(failure.level, 40, "logged as a warning");
    assert.match(failure.segment, new RegExp(`^wal/${ids.tenantId}/${ids.timelineId}/[0-9A-F]{24}$`));
    assert.ok(failure.err.length > 0 && failure.retry_in_ms >= 1000, JSON.stringify(failure));
    assert.equal(await timelineLsn(sk.httpPort, ids, "backup_lsn"), startLsn, "backup_lsn stalls");
    assert.equal(await tl.removeOldWal(), 0, "nothing removed while storage is down");
    assert.equal(tl.oldestLsn, startLsn);
    // The service goes on: commits return and the WAL keeps flowing.
    const before = await timelineLsn(sk.httpPort, ids, "flush_lsn");
    await pg.sql("INSERT INTO d SELECT g, 'down' FROM generate_series(1, 1000) g", { timeoutMs: 30_000 });
    assert.ok((await timelineLsn(sk.httpPort, ids, "flush_lsn")) > before, "the commit's WAL is flushed here");
    console.log(`storage down: ${logs.filter((l) => l.includes("WAL segment upload failed")).length} logged failures (${failure.err.slice(0, 120)}), backup_lsn stays ${formatLsn(startLsn)}, nothing removed`);

    // Storage reachable again (a restart with a live endpoint): the backup resumes from the stored backup_lsn.
    await sk.stop();
    started = undefined;
    s3 = await startS3rver();
    started = await startSk(dataDir, `s3://${s3.buckets[0]}/down?endpoint=${s3.endpoint}&force_path_style=true&region=us-east-1`);
    const sk2 = started.sk;
    await waitFor(`backup_lsn to reach ${formatLsn(switchedEnd)} after the outage`, async () => (await timelineLsn(sk2.httpPort, ids, "backup_lsn")) >= switchedEnd, 40_000, 200);
    const tl2 = sk2.findTimeline(ids.tenantId, ids.timelineId)!;
    assert.ok((await tl2.removeOldWal()) >= 1, "retention proceeds once the WAL is offloaded");
    assert.ok(tl2.oldestLsn > startLsn && tl2.oldestLsn <= tl2.backupLsn);
  } finally {
    await started?.sk.stop();
    await s3?.stop();
    await pg.destroy();
    await removeTempDir(dataDir);
  }
});
