/**
 * A three-safekeeper cluster for the multi-safekeeper acceptance tests
 * (safekeeper_consensus_pg.test.ts, safekeeper_consensus_fencing.test.ts):
 * safekeeper processes with the consensus extension
 * (safekeeper_consensus_node.ts) that the tests kill with SIGKILL, timeline
 * bootstrap (create on every member, elect term 1 with the endpoint-start
 * protocol, register the compute), and small helpers.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { resolve } from "node:path";
import type { PgServer } from "./harness/pg_server.js";
import { freePort } from "./harness/ports.js";
import { makeTempDir, removeTempDir } from "./harness/tools.js";
import { formatLsn, segmentNumber, segmentStart, type Lsn } from "../src/lib/lsn.js";
import { startEndpoint } from "../src/safekeeper/consensus/endpoint_start.js";
import { term } from "../src/safekeeper/term_history.js";
import { http, waitFor, SEG, type TimelineIds } from "./safekeeper_helpers.js";

export const NODE_JS = resolve("dist/test/safekeeper_consensus_node.js");
export const PGBENCH_SECONDS = 12;
/** A commit that does not return within this while a quorum is down counts as stalled. */
export const STALL_CHECK_MS = 3_000;

export interface Sk {
  id: number;
  dataDir: string;
  pgPort: number;
  httpPort: number;
  peers: string[];
  proc?: ChildProcess;
  exited?: Promise<number | null>;
  stderr: string;
}

export async function spawnSk(sk: Sk): Promise<void> {
  const proc = spawn(process.execPath, [NODE_JS, JSON.stringify({ id: sk.id, dataDir: sk.dataDir, pgPort: sk.pgPort, httpPort: sk.httpPort, peers: sk.peers })], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  sk.proc = proc;
  proc.stderr!.on("data", (b: Buffer) => {
    sk.stderr += b.toString("utf8");
    if (sk.stderr.length > 1_000_000) sk.stderr = sk.stderr.slice(-500_000);
  });
  sk.exited = new Promise((r) => proc.on("exit", (code) => r(code)));
  await waitFor(
    `safekeeper ${sk.id} to answer /v1/status`,
    async () => {
      if (proc.exitCode !== null) throw new Error(`safekeeper ${sk.id} exited:\n${sk.stderr.slice(-3000)}`);
      try {
        return (await http(sk.httpPort, "GET", "/v1/status")).status === 200;
      } catch {
        return false;
      }
    },
    30_000,
    100,
  );
}

export async function kill(sk: Sk, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
  if (sk.proc === undefined || sk.proc.exitCode !== null || sk.proc.signalCode !== null) return;
  sk.proc.kill(signal);
  const t = setTimeout(() => sk.proc?.kill("SIGKILL"), 15_000);
  await sk.exited;
  clearTimeout(t);
}

/** Cluster start attempts: a port probed free can be taken by a concurrent test file before our child binds it. */
const CLUSTER_START_ATTEMPTS = 3;

export async function startCluster(): Promise<Sk[]> {
  for (let attempt = 1; ; attempt++) {
    const sks: Sk[] = [];
    for (const id of [1, 2, 3]) sks.push({ id, dataDir: await makeTempDir(`skc${id}`), pgPort: await freePort(), httpPort: await freePort(), peers: [], stderr: "" });
    for (const sk of sks) sk.peers = sks.filter((p) => p !== sk).map((p) => `${p.id}=127.0.0.1:${p.pgPort}:${p.httpPort}`);
    const started = await Promise.allSettled(sks.map(spawnSk));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed === undefined) return sks;
    await stopCluster(sks);
    if (attempt >= CLUSTER_START_ATTEMPTS || !String(failed.reason).includes("EADDRINUSE")) throw failed.reason;
  }
}

export async function stopCluster(sks: Sk[]): Promise<void> {
  for (const sk of sks) await kill(sk, "SIGTERM").catch(() => undefined);
  for (const sk of sks) await removeTempDir(sk.dataDir).catch(() => undefined);
}

/** Creates the timeline on every safekeeper (same start and system id), elects term 1, registers the compute. */
export async function bootstrap(pg: PgServer, sks: Sk[], ids: TimelineIds): Promise<{ startLsn: Lsn }> {
  const systemId = await pg.sql("SELECT system_identifier FROM pg_control_system()");
  const startLsn = segmentStart(segmentNumber(await pg.currentWalLsn(), SEG), SEG);
  for (const sk of sks) {
    const r = await http(sk.httpPort, "POST", `/v1/tenant/${ids.tenantId}/timeline`, { timeline_id: ids.timelineId, system_id: systemId, start_lsn: formatLsn(startLsn) });
    assert.equal(r.status, 201, r.text);
  }
  const first = await elect(sks, ids);
  assert.equal(first.term, term(1));
  assert.equal(first.startLsn, startLsn);
  await register(pg, sks, ids, 1, startLsn);
  return { startLsn };
}

export async function elect(sks: Sk[], ids: TimelineIds) {
  return await startEndpoint({
    safekeepers: sks.map((s) => ({ id: s.id, httpUrl: `http://127.0.0.1:${s.httpPort}` })),
    tenantId: ids.tenantId,
    timelineId: ids.timelineId,
    signal: AbortSignal.timeout(60_000),
  });
}

export async function register(pg: PgServer, sks: Sk[], ids: TimelineIds, t: number, startLsn: Lsn): Promise<void> {
  for (const sk of sks) {
    const r = await http(sk.httpPort, "PUT", `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}/compute`, { connstr: pg.connString(), term: t, start_lsn: formatLsn(startLsn) });
    assert.ok(r.status === 200 || r.status === 201, `register on safekeeper ${sk.id}: ${r.status} ${r.text}`);
  }
}

export async function historyRows(pg: PgServer): Promise<number> {
  return Number(await pg.sql("SELECT count(*) FROM pgbench_history"));
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
