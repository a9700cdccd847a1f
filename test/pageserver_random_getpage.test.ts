/**
 * Random GetPage@LSN across keys and LSNs, differential: the same WAL of a
 * real PostgreSQL 15 pgbench+DDL run is ingested into two timelines —
 *   A: the full storage machinery: 1 MiB checkpoint distance (many delta
 *      files), level-0 merges and image layers created part-way, then more
 *      WAL on top, a restart (reload from disk), and the materialized page
 *      cache on;
 *   B: the reference: one in-memory layer, nothing flushed or compacted,
 *      page cache off — every read replays from the imported base or the
 *      latest full-page image.
 * Ten thousand random (block, LSN) reads must return identical bytes (pd_lsn
 * included): layer files, the layer map's search across L0/L1/image layers,
 * reload and the cache change nothing that is served.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { generateTenantId, generateTimelineId } from "../src/lib/id.js";
import { formatLsn, type Lsn } from "../src/lib/lsn.js";
import { createRegistry } from "../src/lib/metrics.js";
import { silentLogger } from "../src/lib/logging.js";
import { TaskManager } from "../src/lib/tasks.js";
import { WalRedoManager } from "../src/walredo/pool.js";
import { importDatadir } from "../src/pageserver/import_datadir.js";
import { WalIngest } from "../src/pageserver/walingest.js";
import { internalContext } from "../src/pageserver/getpage.js";
import { relBlockKey } from "../src/pageserver/key.js";
import { PageserverMetrics } from "../src/pageserver/metrics.js";
import { TenantManager } from "../src/pageserver/tenant_manager.js";
import { compactLevel0, createImageLayers } from "../src/pageserver/compaction.js";
import { Rng } from "../src/pageserver/layers/test_support.js";
import { makeTempDir } from "./harness/tools.js";
import { readWal, runCapturedWorkload } from "./pageserver_support.js";

const ctx = internalContext();
// The acceptance count of issue 5 (ten thousand); ~7 s of the test on a loaded 2-core machine.
const REQUESTS = 10_000;

test("random GetPage@LSN: layered, compacted, reloaded, cached storage = in-memory replay reference", { timeout: 170_000 }, async () => {
  const w = await runCapturedWorkload({ pgbenchTransactions: 100 });
  const dirA = await makeTempDir("psA");
  const dirB = await makeTempDir("psB");
  const tasks = new TaskManager();
  const mk = (dataDir: string, cachePages: number) =>
    new TenantManager({ dataDir, tasks, log: silentLogger(), metrics: new PageserverMetrics(createRegistry({ defaultMetrics: false })), redo: new WalRedoManager(), pageCachePages: cachePages });
  let a = mk(dirA, 4096);
  const b = mk(dirB, 0);
  try {
    await a.loadAll();
    await b.loadAll();
    const ids = { ta: generateTenantId(), tb: generateTenantId(), tl: generateTimelineId() };
    let tla = await (await a.createTenant(ids.ta, { checkpointDistanceBytes: 1024 * 1024, compactionTargetSizeBytes: 2 * 1024 * 1024 })).createTimeline(ids.tl);
    const tlb = await (await b.createTenant(ids.tb, { checkpointDistanceBytes: 16 * 1024 * 1024 * 1024 })).createTimeline(ids.tl);
    await importDatadir(w.dataDirCopy, w.importLsn, tla);
    await importDatadir(w.dataDirCopy, w.importLsn, tlb);
    const records = await readWal(w.pg.walDir, w.importLsn, w.endLsn);
    const ia = new WalIngest(tla, tla, { startLsn: tla.lastRecordLsn });
    const ib = new WalIngest(tlb, tlb, { startLsn: tlb.lastRecordLsn });
    const mid = Math.floor(records.length * 0.6);
    for (const [i, rec] of records.entries()) {
      await ia.ingestRecord(rec, ctx);
      await ib.ingestRecord(rec, ctx);
      if (i === mid) {
        await tla.checkpoint();
        const l0 = await compactLevel0(tla, { force: true });
        const img = await createImageLayers(tla, { force: true });
        console.log(`part-way at ${formatLsn(tla.lastRecordLsn)}: merged ${l0.inputs} L0 -> ${l0.outputs} L1; ${img.layers} image layer(s), ${img.keys} keys`);
      }
    }
    await tla.checkpoint();
    // Reload A from disk.
    await a.shutdown({ flush: true });
    a = mk(dirA, 4096);
    await a.loadAll();
    tla = a.timeline(ids.ta, ids.tl);
    assert.equal(tla.lastRecordLsn, tlb.lastRecordLsn);
    const kinds = tla.layerInfos().reduce<Record<string, number>>((m, l) => ({ ...m, [l.kind]: (m[l.kind] ?? 0) + 1 }), {});
    console.log(`A: ${JSON.stringify(kinds)} layer files; B: everything in one in-memory layer`);

    const rels = w.relations.filter((r) => r.fork === 0 && r.file.length > 0 && r.rmid !== 15);
    const rng = new Rng(20261129);
    const lsns = records.map((r) => (r.endLsn + 7n) & ~7n).filter((l) => l >= w.importLsn) as Lsn[];
    let same = 0;
    let absentBoth = 0;
    const t0 = Date.now();
    for (let i = 0; i < REQUESTS; i += 16) {
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          const r = rng.pick(rels);
          const key = relBlockKey(r, rng.int(r.file.length / 8192));
          // Half the requests at record boundaries, half anywhere in the range.
          const at = rng.bool() ? rng.pick(lsns) : ((w.importLsn + BigInt(rng.int(Number(tlb.lastRecordLsn - w.importLsn) + 1))) as Lsn);
          const [pa, pb] = await Promise.all([tla.get(key, at, ctx), tlb.get(key, at, ctx)]);
          if (pa === undefined && pb === undefined) {
            absentBoth++;
            return;
          }
          assert.ok(pa !== undefined && pb !== undefined, `${r.name} at ${formatLsn(at)}: one side has no version`);
          assert.ok(Buffer.from(pa).equals(Buffer.from(pb)), `${r.name} block of key ${key.toString(16)} at ${formatLsn(at)} differs`);
          same++;
        }),
      );
    }
    console.log(`${same} random reads byte-identical (+${absentBoth} absent on both) in ${Date.now() - t0} ms; A cache ${JSON.stringify(a.pageCache.stats())}`);
    assert.ok(same > REQUESTS / 2);
  } finally {
    await a.shutdown().catch(() => undefined);
    await b.shutdown().catch(() => undefined);
    await tasks.close(5000);
    await w.pg.destroy();
    await rm(dirA, { recursive: true, force: true });
    await rm(dirB, { recursive: true, force: true });
  }
});
