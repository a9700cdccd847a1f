/**
 * Shared parts of the backup and branching tests: an in-process pageserver
 * (and safekeeper) wired like a deployment, computes started from a
 * fullbackup fetched over the page service (fetchBackupIntoDir), their
 * registration with the safekeeper, pg_dump and table fingerprints.
 */
import assert from "node:assert/strict";
import { appendFile } from "node:fs/promises";
import { join } from "node:path";
import { formatLsn, parseLsn, type Lsn } from "../src/lib/lsn.js";
import { createRegistry } from "../src/lib/metrics.js";
import { createLogger } from "../src/lib/logging.js";
import type { TenantId, TimelineId } from "../src/lib/id.js";
import { defaultPageserverConfig, type TenantConfig } from "../src/pageserver/config.js";
import { Pageserver } from "../src/pageserver/pageserver.js";
import { fetchBackupIntoDir } from "../src/pageserver/backup_client.js";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";
import { PgServer } from "./harness/pg_server.js";
import { freePort } from "./harness/ports.js";
import { makeTempDir, pgUser, runTool } from "./harness/tools.js";
import { http, waitFor } from "./safekeeper_helpers.js";

export async function startPageserver(dataDir: string, opts: { safekeeperPort?: number; tenantConfig?: Partial<TenantConfig> } = {}): Promise<Pageserver> {
  const config = { ...defaultPageserverConfig(dataDir), listenPgPort: 0, listenHttpPort: 0, safekeepers: opts.safekeeperPort === undefined ? [] : [`127.0.0.1:${opts.safekeeperPort}`] };
  config.defaultTenantConfig = { ...config.defaultTenantConfig, checkpointDistanceBytes: 4 * 1024 * 1024, checkpointTimeoutMs: 2000, ...opts.tenantConfig };
  const log = createLogger({ component: "pageserver-test", level: process.env.STRATA_TEST_LOG ?? "warn" });
  return Pageserver.start({ config, log, registry: createRegistry({ defaultMetrics: false }) });
}

export interface TimelineJson {
  timeline_id: string;
  ancestor_timeline_id: string | null;
  ancestor_lsn: string | null;
  last_record_lsn: string;
  latest_gc_cutoff_lsn: string;
  system_id: string | null;
  pg_version: number;
  initial_lsn: string;
}

export async function getTimeline(ps: Pageserver, tenant: TenantId, timeline: string): Promise<TimelineJson> {
  const r = await http(ps.httpPort, "GET", `/v1/tenant/${tenant}/timeline/${timeline}`);
  assert.equal(r.status, 200, r.text);
  return r.body as TimelineJson;
}

/** Waits until the pageserver has ingested `lsn` on the timeline. */
export async function waitIngested(ps: Pageserver, tenant: TenantId, timeline: string, lsn: Lsn, timeoutMs = 30_000): Promise<void> {
  await waitFor(`the pageserver to ingest ${formatLsn(lsn)}`, async () => parseLsn((await getTimeline(ps, tenant, timeline)).last_record_lsn) >= lsn, timeoutMs, 50);
}

/** postgresql.conf additions of a test compute. */
function computeConf(opts: { synchronousStandby?: string }): string {
  const lines = [
    "listen_addresses = '127.0.0.1'",
    "unix_socket_directories = ''",
    "fsync = off",
    "shared_buffers = '32MB'",
    "autovacuum = off",
    "wal_level = replica",
    "max_wal_senders = 10",
    "max_replication_slots = 10",
    "checkpoint_timeout = '1h'",
    "max_wal_size = '1GB'",
    "log_min_messages = warning",
  ];
  if (opts.synchronousStandby !== undefined) lines.push(`synchronous_standby_names = '${opts.synchronousStandby}'`);
  return `\n# test compute\n${lines.join("\n")}\n`;
}

/**
 * A plain PostgreSQL 15 started (pg_ctl) on a fullbackup of `timeline` at
 * `lsn` (default: its last record) fetched over the page service.
 */
export async function startComputeFromBackup(
  ps: Pageserver,
  tenantId: TenantId,
  timelineId: TimelineId,
  opts: { lsn?: Lsn; synchronousStandby?: string } = {},
): Promise<{ pg: PgServer; bytes: number; files: number }> {
  const baseDir = await makeTempDir("compute");
  const dataDir = join(baseDir, "data");
  const pg = new PgServer(baseDir, dataDir, await freePort());
  try {
    const user = pgUser();
    const got = await fetchBackupIntoDir(
      { host: "127.0.0.1", port: ps.pgPort, tenantId, timelineId, full: true, ...(opts.lsn === undefined ? {} : { lsn: opts.lsn }), ...(user ? { owner: user } : {}) },
      dataDir,
    );
    await appendFile(join(dataDir, "postgresql.conf"), computeConf(opts));
    await pg.start();
    return { pg, ...got };
  } catch (e) {
    await pg.destroy();
    throw e;
  }
}

/**
 * Registers `pg` as the compute of the timeline on the safekeeper, which
 * creates its timeline from the compute's identity (WAL from the start of
 * the segment holding the compute's first record).
 */
export async function attachToSafekeeper(sk: Safekeeper, tenantId: TenantId, timelineId: TimelineId, pg: PgServer): Promise<void> {
  const r = await http(sk.httpPort, "PUT", `/v1/tenant/${tenantId}/timeline/${timelineId}/compute`, { connstr: pg.connString(), term: 1 });
  assert.ok(r.status === 200 || r.status === 201, r.text);
}

/** pg_dump of a database without the per-run random \restrict lines (PostgreSQL 15.14+). */
export async function pgDump(pg: PgServer, db = "postgres"): Promise<string> {
  const r = await runTool("pg_dump", ["-h", pg.host, "-p", String(pg.port), "-U", "postgres", "-d", db]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.replace(/^\\(un)?restrict .*$/gm, "");
}

export function assertSameDump(actual: string, expected: string, what: string): void {
  if (actual === expected) return;
  const a = actual.split("\n");
  const e = expected.split("\n");
  let i = 0;
  while (i < a.length && i < e.length && a[i] === e[i]) i++;
  assert.fail(`${what}: dumps differ first at line ${i + 1}: got ${JSON.stringify(a[i]?.slice(0, 200))}, expected ${JSON.stringify(e[i]?.slice(0, 200))} (${a.length} vs ${e.length} lines)`);
}

const SETVAL = /^SELECT pg_catalog\.setval\('([^']+)', (\d+), (true|false)\);$/gm;

/**
 * Dumps equal except for sequence positions, which must not be behind:
 * sequences WAL-log SEQ_LOG_VALS (32) values ahead, so any server started
 * from WAL state (a standby, PITR, a backup at an LSN) continues past the
 * last value the original handed out.
 */
export function assertSameDumpModuloSequences(actual: string, expected: string, what: string): void {
  const positions = (d: string) => new Map([...d.matchAll(SETVAL)].map((m) => [m[1]!, Number(m[2])]));
  const want = positions(expected);
  for (const [seq, v] of positions(actual)) assert.ok(v >= (want.get(seq) ?? 0), `${what}: sequence ${seq} at ${v}, behind the original's ${want.get(seq)}`);
  const mask = (d: string) => d.replace(SETVAL, "SELECT pg_catalog.setval('$1', N, true);");
  assertSameDump(mask(actual), mask(expected), what);
}
