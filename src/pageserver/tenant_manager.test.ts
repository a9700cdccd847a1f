import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StrataError } from "../lib/errors.js";
import { generateTenantId, generateTimelineId } from "../lib/id.js";
import { lsn, type Lsn } from "../lib/lsn.js";
import { createRegistry } from "../lib/metrics.js";
import { silentLogger } from "../lib/logging.js";
import { TaskManager } from "../lib/tasks.js";
import { WalRedoManager } from "../walredo/pool.js";
import { internalContext } from "./getpage.js";
import { relBlockKey } from "./key.js";
import { PageserverMetrics } from "./metrics.js";
import { TenantManager } from "./tenant_manager.js";

const REL = { spcOid: 1663, dbOid: 5, relNumber: 16384, fork: 0 };
const ctx = internalContext();

function manager(dataDir: string, tasks = new TaskManager()): TenantManager {
  return new TenantManager({ dataDir, tasks, log: silentLogger(), metrics: new PageserverMetrics(createRegistry({ defaultMetrics: false })), redo: new WalRedoManager(), pageCachePages: 64 });
}

test("tenants and timelines: create, reload, branch chains load ancestors first, broken ones reported, delete", async () => {
  const dataDir = await mkdtemp(join(tmpdir(), "strata-tm-"));
  try {
    let m = manager(dataDir);
    await m.loadAll();
    const a = await m.createTenant(undefined, { checkpointDistanceBytes: 65536 });
    await assert.rejects(m.createTenant(a.tenantId), /already exists/);
    await assert.rejects(m.createTenant(generateTenantId(), { bogus: 1 }), /Unknown tenant config setting/);
    const root = await a.createTimeline(generateTimelineId());
    // A root bootstrapped by hand: one page version at 0/1000.
    const page = new Uint8Array(8192).fill(3);
    await root.put([{ key: relBlockKey(REL, 0), lsn: lsn(0x1000), value: { kind: "image", bytes: page } }]);
    root.finishRecord(lsn(0x1000));
    const page2 = new Uint8Array(8192).fill(4);
    await root.put([{ key: relBlockKey(REL, 0), lsn: lsn(0x2000), value: { kind: "image", bytes: page2 } }]);
    root.finishRecord(lsn(0x2000));
    const child = await a.createTimeline(generateTimelineId(), { ancestorTimelineId: root.timelineId, ancestorLsn: lsn(0x1000) });
    const grandchild = await a.createTimeline(generateTimelineId(), { ancestorTimelineId: child.timelineId });
    assert.deepEqual(await grandchild.get(relBlockKey(REL, 0), lsn(0x1000), ctx), page);
    await assert.rejects(a.deleteTimeline(root.timelineId), /child timeline/);
    // A second tenant with a damaged config.
    const b = await m.createTenant(generateTenantId());
    await m.shutdown({ flush: true });

    await writeFile(join(b.dir, "config.json"), "{ not json");
    await mkdir(join(dataDir, "tenants", "not-a-tenant"));
    m = manager(dataDir);
    await m.loadAll();
    assert.equal(m.list().length, 2);
    const a2 = m.get(a.tenantId);
    assert.equal(a2.state, "active");
    assert.equal(a2.listTimelines().length, 3);
    assert.equal(a2.conf.checkpointDistanceBytes, 65536);
    const gc2 = a2.getTimeline(grandchild.timelineId);
    assert.equal(gc2.state, "active");
    assert.equal(gc2.ancestor?.ancestor?.timelineId, root.timelineId);
    assert.deepEqual(await gc2.get(relBlockKey(REL, 0), lsn(0x1000), ctx), page);
    assert.deepEqual(await a2.getTimeline(root.timelineId).get(relBlockKey(REL, 0), lsn(0x2000) as Lsn, ctx), page2);
    const b2 = m.get(b.tenantId);
    assert.equal(b2.state, "broken");
    assert.match(b2.brokenReason ?? "", /config\.json/);
    assert.throws(() => m.get(generateTenantId()), (e: unknown) => e instanceof StrataError && e.code === "not_found");

    // Delete leaves, then the tenant.
    await a2.deleteTimeline(gc2.timelineId);
    assert.equal(a2.listTimelines().length, 2);
    assert.ok(!(await readdir(join(a2.dir, "timelines"))).includes(gc2.timelineId));
    await m.deleteTenant(a2.tenantId);
    assert.ok(!(await readdir(join(dataDir, "tenants"))).includes(a2.tenantId));
    await m.shutdown();
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
});
