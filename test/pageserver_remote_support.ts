/**
 * Shared pieces of the pageserver remote-storage tests: an in-process
 * pageserver with remote storage, HTTP waits, page snapshots through the
 * page service, and a fault-injecting HTTP proxy for S3 endpoints.
 */
import http from "node:http";
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { formatLsn, parseLsn, type Lsn } from "../src/lib/lsn.js";
import { createRegistry } from "../src/lib/metrics.js";
import { createLogger } from "../src/lib/logging.js";
import { seededRandom } from "../src/lib/prng.js";
import { defaultPageserverConfig } from "../src/pageserver/config.js";
import { Pageserver } from "../src/pageserver/pageserver.js";
import { PagestreamClient } from "../src/pageserver/pagestream.js";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";
import { startPostgres } from "./harness/pg_server.js";
import { makeTempDir } from "./harness/tools.js";
import { http as httpCall, newIds, waitFor } from "./safekeeper_helpers.js";
import { computeWithSafekeeper } from "./pageserver_chain.js";

export async function startRemotePs(dataDir: string, skPort: number | undefined, remoteStorage: string, extra: { maxLocalLayerBytes?: number; evictionPeriodMs?: number } = {}): Promise<Pageserver> {
  const config = { ...defaultPageserverConfig(dataDir), listenPgPort: 0, listenHttpPort: 0, safekeepers: skPort === undefined ? [] : [`127.0.0.1:${skPort}`], remoteStorage, ...extra };
  config.defaultTenantConfig = { ...config.defaultTenantConfig, checkpointDistanceBytes: 1024 * 1024, checkpointTimeoutMs: 2000 };
  const log = createLogger({ component: "pageserver-test", level: process.env.STRATA_TEST_LOG ?? "warn" });
  return Pageserver.start({ config, log, registry: createRegistry({ defaultMetrics: false }) });
}

export interface TimelineJson {
  last_record_lsn: string;
  disk_consistent_lsn: string;
  remote_consistent_lsn: string;
  remote: null | { generation: number; queue_depth: number; resident_layers: number; remote_only_layers: number; layers_uploaded: number; failed_attempts: number; indexes_uploaded: number };
  layers: { delta: number; image: number };
}

export async function timelineState(port: number, tenantId: string, timelineId: string): Promise<TimelineJson> {
  const r = await httpCall(port, "GET", `/v1/tenant/${tenantId}/timeline/${timelineId}`);
  if (r.status !== 200) throw new Error(`GET timeline: ${r.status} ${r.text}`);
  return r.body as TimelineJson;
}

export async function waitTenantActive(port: number, tenantId: string, timeoutMs = 60_000): Promise<void> {
  await waitFor(`tenant ${tenantId} to become active`, async () => {
    const r = await httpCall(port, "GET", `/v1/tenant/${tenantId}`);
    const state = (r.body as { state?: string; broken_reason?: string }).state;
    if (state === "broken") throw new Error(`tenant broken: ${r.text}`);
    return state === "active";
  }, timeoutMs, 100);
}

export async function waitRemoteConsistent(port: number, tenantId: string, timelineId: string, lsn: Lsn, timeoutMs = 60_000): Promise<void> {
  await waitFor(`remote_consistent_lsn >= ${lsn}`, async () => parseLsn((await timelineState(port, tenantId, timelineId)).remote_consistent_lsn) >= lsn, timeoutMs, 100);
}

export interface RelRef {
  name: string;
  rel: { spcOid: number; dbOid: number; relNumber: number; fork: number };
}

/** Pages of `rels` at `lsn` (every `stride`-th block), keyed "name/lsn/block". */
export async function snapshotPages(client: PagestreamClient, rels: readonly RelRef[], lsn: Lsn, stride = 1, into = new Map<string, Buffer>()): Promise<Map<string, Buffer>> {
  for (const r of rels) {
    const n = await client.nblocks(r.rel, lsn);
    const blocks = Array.from({ length: Math.ceil(n / stride) }, (_, i) => i * stride);
    const pages = await Promise.all(blocks.map((b) => client.getPage(r.rel, b, lsn)));
    into.set(`${r.name}/${lsn}/nblocks`, Buffer.from(String(n)));
    blocks.forEach((b, i) => into.set(`${r.name}/${lsn}/${b}`, Buffer.from(pages[i]!)));
  }
  return into;
}

export async function metricValue(port: number, name: string): Promise<number> {
  const r = await httpCall(port, "GET", "/metrics");
  let sum = 0;
  for (const line of r.text.split("\n")) if (line.startsWith(name) && (line[name.length] === " " || line[name.length] === "{")) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  return sum;
}

/**
 * An HTTP proxy in front of an S3 endpoint that misbehaves at random (seeded):
 * answers 503 SlowDown, resets the connection, or delays the request.
 * `down = true` fails every request with 503 (storage outage).
 */
export class FaultyProxy {
  down = false;
  failed = 0;
  reset = 0;
  delayed = 0;
  forwarded = 0;
  private readonly server: http.Server;
  private readonly random: () => number;

  private constructor(private readonly target: URL, private readonly opts: { failFraction: number; resetFraction: number; delayFraction: number; maxDelayMs: number; seed: number }) {
    this.random = seededRandom(opts.seed);
    this.server = http.createServer((req, res) => this.handle(req, res));
  }

  static async start(targetEndpoint: string, opts: { failFraction: number; resetFraction: number; delayFraction: number; maxDelayMs: number; seed: number }): Promise<FaultyProxy> {
    const p = new FaultyProxy(new URL(targetEndpoint), opts);
    await new Promise<void>((resolve) => p.server.listen(0, "127.0.0.1", resolve));
    return p;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const r = this.random();
    if (this.down || r < this.opts.failFraction) {
      this.failed++;
      req.resume();
      res.writeHead(503, { "content-type": "application/xml" });
      res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>injected by the test proxy</Message></Error>');
      return;
    }
    if (r < this.opts.failFraction + this.opts.resetFraction) {
      this.reset++;
      req.socket.destroy();
      return;
    }
    const delay = r < this.opts.failFraction + this.opts.resetFraction + this.opts.delayFraction ? Math.floor(this.random() * this.opts.maxDelayMs) : 0;
    if (delay > 0) this.delayed++;
    setTimeout(() => {
      this.forwarded++;
      const up = http.request(
        { host: this.target.hostname, port: this.target.port, method: req.method, path: req.url, headers: req.headers },
        (upRes) => {
          res.writeHead(upRes.statusCode ?? 502, upRes.headers);
          upRes.pipe(res);
        },
      );
      up.on("error", () => res.destroy());
      req.pipe(up);
    }, delay);
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * Acceptance 1 with a small workload on one backend: compute -> safekeeper ->
 * pageserver uploading to `url`; pages noted at two LSNs on main and at the
 * branch point of a branch; stop, delete the local directory, attach
 * (generation 2) into an empty one: every noted page byte-identical; a second
 * attach is refused; detach removes the tenant.
 */
export async function roundTrip(label: string, url: string): Promise<void> {
  const pg = await startPostgres({ synchronousStandbyNames: "sk_1", settings: { autovacuum: false, checkpoint_timeout: "1h", max_wal_size: "1GB" } });
  const ids = newIds();
  const psDir = await makeTempDir("ps");
  let sk: Safekeeper | undefined;
  let ps: Pageserver | undefined;
  const clients: PagestreamClient[] = [];
  try {
    const chain = await computeWithSafekeeper(pg, ids);
    sk = chain.sk;
    const copy = chain.importDir;
    ps = await startRemotePs(psDir, sk.pgPort, url);
    assert.equal((await httpCall(ps.httpPort, "POST", "/v1/tenant", { tenant_id: ids.tenantId })).status, 201);
    let r = await httpCall(ps.httpPort, "POST", `/v1/tenant/${ids.tenantId}/timeline`, { new_timeline_id: ids.timelineId, import_datadir: copy });
    assert.equal(r.status, 201, r.text);

    await pg.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, repeat('x', g % 300) FROM generate_series(1, 20000) g;", { timeoutMs: 60_000 });
    const lsn1 = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    await pg.sql("UPDATE t SET v = 'u' WHERE id % 4 = 0; DELETE FROM t WHERE id % 13 = 0;", { timeoutMs: 60_000 });
    const lsn2 = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    await waitFor("ingest", async () => parseLsn((await timelineState(ps!.httpPort, ids.tenantId, ids.timelineId)).last_record_lsn) >= lsn2, 60_000, 100);
    r = await httpCall(ps.httpPort, "POST", `/v1/tenant/${ids.tenantId}/timeline`, { ancestor_timeline_id: ids.timelineId, ancestor_start_lsn: formatLsn(lsn1) });
    assert.equal(r.status, 201, r.text);
    const branchId = (r.body as { timeline_id: string }).timeline_id;
    assert.equal((await httpCall(ps.httpPort, "PUT", `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}/checkpoint`)).status, 200);
    await waitRemoteConsistent(ps.httpPort, ids.tenantId, ids.timelineId, lsn2);
    await waitFor("the branch's index", async () => (await timelineState(ps!.httpPort, ids.tenantId, branchId)).remote?.queue_depth === 0, 30_000, 100);

    const dbOid = Number(await pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'"));
    const rels: RelRef[] = [];
    for (const name of ["t", "t_pkey"]) rels.push({ name, rel: { spcOid: 1663, dbOid, relNumber: Number(await pg.sql(`SELECT pg_relation_filenode('${name}')`)), fork: 0 } });
    const noted = async (port: number) => {
      const main = await PagestreamClient.connect({ host: "127.0.0.1", port, user: "postgres", tenantId: ids.tenantId, timelineId: ids.timelineId });
      const branch = await PagestreamClient.connect({ host: "127.0.0.1", port, user: "postgres", tenantId: ids.tenantId, timelineId: branchId as never });
      clients.push(main, branch);
      const m = await snapshotPages(main, rels, lsn2);
      await snapshotPages(main, rels, lsn1, 1, m);
      for (const [k, v] of await snapshotPages(branch, rels, lsn1)) m.set(`branch/${k}`, v);
      return m;
    };
    const expected = await noted(ps.pgPort);
    for (const c of clients.splice(0)) await c.close();
    await ps.stop();
    ps = undefined;
    await rm(psDir, { recursive: true, force: true });

    ps = await startRemotePs(psDir, sk.pgPort, url);
    const t0 = Date.now();
    r = await httpCall(ps.httpPort, "POST", `/v1/tenant/${ids.tenantId}/attach`, { generation: 2 });
    assert.equal(r.status, 202, r.text);
    await waitTenantActive(ps.httpPort, ids.tenantId);
    const attachMs = Date.now() - t0;
    const got = await noted(ps.pgPort);
    for (const [k, v] of expected) assert.deepEqual(got.get(k), v, `${label}: page ${k}`);
    // Attach again with a generation that is not higher: refused while attached.
    r = await httpCall(ps.httpPort, "POST", `/v1/tenant/${ids.tenantId}/attach`, { generation: 2 });
    assert.equal(r.status, 400, r.text);
    // Detach: waits for uploads, removes the local copy; the tenant is gone from this pageserver.
    for (const c of clients.splice(0)) await c.close();
    r = await httpCall(ps.httpPort, "POST", `/v1/tenant/${ids.tenantId}/detach`);
    assert.equal(r.status, 200, r.text);
    assert.equal((await httpCall(ps.httpPort, "GET", `/v1/tenant/${ids.tenantId}`)).status, 404);
    console.log(`${label}: attach active after ${attachMs} ms; ${expected.size} noted entries (main at 2 LSNs, branch at its branch point) byte-identical; detach ok`);
  } finally {
    for (const c of clients) await c.close().catch(() => undefined);
    await ps?.stop().catch(() => undefined);
    await sk?.stop().catch(() => undefined);
    await pg.destroy();
    await rm(psDir, { recursive: true, force: true });
  }
}
