/**
 * The remote-storage HTTP surface of the pageserver (contract B), without
 * PostgreSQL: tenant creation with a generation, attach/detach and their
 * error cases, state and generation in the tenant JSON, a restart that
 * loads the tenant through the attach path, and a restart *without* remote
 * storage refusing to serve a tenant whose layers may live only remotely.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { generateTenantId } from "../src/lib/id.js";
import { createRegistry } from "../src/lib/metrics.js";
import { createLogger } from "../src/lib/logging.js";
import { defaultPageserverConfig } from "../src/pageserver/config.js";
import { Pageserver } from "../src/pageserver/pageserver.js";
import { makeTempDir } from "./harness/tools.js";
import { http } from "./safekeeper_helpers.js";
import { startRemotePs, waitTenantActive } from "./pageserver_remote_support.js";

async function startLocalOnly(dataDir: string): Promise<Pageserver> {
  const config = { ...defaultPageserverConfig(dataDir), listenPgPort: 0, listenHttpPort: 0 };
  return Pageserver.start({ config, log: createLogger({ component: "pageserver-test", level: "fatal" }), registry: createRegistry({ defaultMetrics: false }) });
}

test("HTTP: create with generation, attach/detach and their errors, restart through the attach path", { timeout: 60_000 }, async () => {
  const dataDir = await makeTempDir("ps");
  const remoteDir = await makeTempDir("remote");
  const url = `file://${remoteDir}`;
  let ps: Pageserver | undefined;
  try {
    ps = await startLocalOnly(dataDir);
    const t = generateTenantId();
    let r = await http(ps.httpPort, "POST", `/v1/tenant/${t}/attach`, { generation: 2 });
    assert.equal(r.status, 400, r.text);
    assert.match(r.text, /no remote storage/);
    await ps.stop();

    ps = await startRemotePs(dataDir, undefined, url);
    r = await http(ps.httpPort, "POST", "/v1/tenant", { tenant_id: t, generation: 0 });
    assert.equal(r.status, 400, r.text);
    r = await http(ps.httpPort, "POST", "/v1/tenant", { tenant_id: t, generation: 1 });
    assert.equal(r.status, 201, r.text);
    assert.deepEqual(r.body, { tenant_id: t, generation: 1 });
    r = await http(ps.httpPort, "GET", `/v1/tenant/${t}`);
    assert.equal((r.body as { state: string; generation: number }).state, "active");
    assert.equal((r.body as { generation: number }).generation, 1);
    r = await http(ps.httpPort, "POST", `/v1/tenant/${t}/attach`, { generation: 2 });
    assert.equal(r.status, 400, "attach of a tenant that is attached here");
    r = await http(ps.httpPort, "POST", `/v1/tenant/${generateTenantId()}/attach`, {});
    assert.equal(r.status, 400, "attach without a generation");
    r = await http(ps.httpPort, "POST", `/v1/tenant/${generateTenantId()}/attach`, { generation: "2" });
    assert.equal(r.status, 400, "a generation must be an integer");
    r = await http(ps.httpPort, "POST", `/v1/tenant/${t}/detach`);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.body, { detached: t, generation: 1 });
    assert.equal((await http(ps.httpPort, "GET", `/v1/tenant/${t}`)).status, 404);
    r = await http(ps.httpPort, "POST", `/v1/tenant/${t}/attach`, { generation: 2 });
    assert.equal(r.status, 202, r.text);
    assert.ok(["attaching", "active"].includes((r.body as { state: string }).state));
    await waitTenantActive(ps.httpPort, t, 10_000);
    assert.equal(((await http(ps.httpPort, "GET", `/v1/tenant/${t}`)).body as { generation: number }).generation, 2);
    r = await http(ps.httpPort, "PUT", `/v1/tenant/${t}/timeline/00000000000000000000000000000001/evict_layers`, {});
    assert.equal(r.status, 404, r.text);

    // Restart: the tenant loads through the attach path and keeps its generation.
    await ps.stop();
    ps = await startRemotePs(dataDir, undefined, url);
    await waitTenantActive(ps.httpPort, t, 10_000);
    assert.equal(((await http(ps.httpPort, "GET", `/v1/tenant/${t}`)).body as { generation: number }).generation, 2);
    await ps.stop();

    // Without remote storage the tenant is reported broken, not served from an incomplete local copy.
    ps = await startLocalOnly(dataDir);
    r = await http(ps.httpPort, "GET", `/v1/tenant/${t}`);
    assert.equal((r.body as { state: string }).state, "broken", r.text);
    assert.match((r.body as { broken_reason: string }).broken_reason, /--remote-storage/);
  } finally {
    await ps?.stop().catch(() => undefined);
    await rm(dataDir, { recursive: true, force: true });
    await rm(remoteDir, { recursive: true, force: true });
  }
});
