/**
 * Native heap redo (src/walredo/heap_redo.ts) against PostgreSQL's own redo:
 * real WAL from a PostgreSQL 15 server running bulk loads and inserts —
 * pgbench -i (COPY FREEZE: MULTI_INSERT+INIT with ALL_FROZEN_SET, then
 * VISIBLE), COPY into pages with free line pointers left by VACUUM
 * (MULTI_INSERT with offsets), INSERT ... SELECT and single-row INSERTs with
 * NULLs, wide and narrow rows (INSERT, INSERT+INIT), inserts into all-visible
 * pages (ALL_VISIBLE_CLEARED), VACUUM FREEZE (VISIBLE) — and for every heap
 * page of those tables `reconstruct` with native heap redo must equal the
 * helper-only replay byte for byte, with the native path actually taken for
 * the records it models. Once without and once with data checksums (VISIBLE
 * then bumps pd_lsn; hint bits are WAL-logged, so more full-page images).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Registry } from "prom-client";
import type { DecodedRecord } from "../src/formats/wal/decoded_record.js";
import { RM_HEAP2_ID, RM_HEAP_ID, XLOG_HEAP2_MULTI_INSERT, XLOG_HEAP2_VISIBLE, XLOG_HEAP_INSERT, XLOG_HEAP_OPMASK } from "../src/formats/wal/rmgr/heap.js";
import { applyHeapRecord, isNativeHeapRecord } from "../src/walredo/heap_redo.js";
import { WalRedoMetrics } from "../src/walredo/metrics.js";
import { reconstruct, type RedoKey } from "../src/walredo/native_redo.js";
import { WalRedoPool } from "../src/walredo/pool.js";
import { redoRecordOf } from "../src/walredo/protocol.js";
import { defaultWalRedoDir } from "../src/walredo/stub.js";
import { startPostgres } from "./harness/pg_server.js";
import { readWal } from "./walredo_consistency_lib.js";

const SETUP = `
CREATE TABLE holes (id int, v text);
INSERT INTO holes SELECT g, repeat('h', g % 50) FROM generate_series(1, 2000) g;
CREATE TABLE ins (id int, a text, b int, c bigint);
CREATE TABLE vis (id int, v text);
INSERT INTO vis SELECT g, 'v' || g FROM generate_series(1, 1500) g;
`;

const WORKLOAD = `
-- holes: free line pointers (VACUUM), then COPY fills them (MULTI_INSERT with offsets)
DELETE FROM holes WHERE id % 3 = 0;
VACUUM holes;
COPY holes (id) FROM PROGRAM 'seq 1 1500';
-- single inserts: NULLs (null bitmap), wide and narrow rows, new pages (INSERT+INIT)
INSERT INTO ins SELECT g, CASE WHEN g % 4 = 0 THEN NULL ELSE repeat('x', g % 300) END, CASE WHEN g % 5 = 0 THEN NULL ELSE g END, g::bigint * 1000000007 FROM generate_series(1, 3000) g;
INSERT INTO ins VALUES (0, NULL, NULL, NULL);
-- all-visible pages get VISIBLE, then inserts clear PD_ALL_VISIBLE (ALL_VISIBLE_CLEARED)
VACUUM (FREEZE) vis;
INSERT INTO vis VALUES (-1, 'late');
DELETE FROM vis WHERE id % 17 = 0;
VACUUM vis;
BEGIN; INSERT INTO vis SELECT g, 'again' FROM generate_series(1, 200) g; COMMIT;
VACUUM (FREEZE) vis;
`;

function isModeled(r: DecodedRecord): "insert" | "multi" | "visible" | undefined {
  const op = r.info & XLOG_HEAP_OPMASK;
  if (r.rmid === RM_HEAP_ID && op === XLOG_HEAP_INSERT) return "insert";
  if (r.rmid === RM_HEAP2_ID && op === XLOG_HEAP2_MULTI_INSERT) return "multi";
  if (r.rmid === RM_HEAP2_ID && op === XLOG_HEAP2_VISIBLE) return "visible";
  return undefined;
}

async function compareHeapPages(dataChecksums: boolean): Promise<void> {
  const pg = await startPostgres({ dataChecksums, settings: { wal_keep_size: "1GB" } });
  let records: DecodedRecord[];
  const rels = new Map<number, string>();
  try {
    await pg.sql(SETUP);
    await pg.checkpoint();
    const start = await pg.currentWalLsn();
    await pg.pgbench(["-i", "-s", "1", "-q"]);
    await pg.sql(WORKLOAD);
    const end = await pg.currentWalLsn();
    for (const name of ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "holes", "ins", "vis"]) {
      rels.set(Number(await pg.sql(`SELECT relfilenode FROM pg_class WHERE relname = '${name}'`)), name);
    }
    await pg.stop(); // everything up to `end` is in the segment files
    records = await readWal(pg.walDir, start, end);
  } finally {
    await pg.destroy();
  }

  // Per heap page (main fork) of the tables: its records from the last base (init, image) on.
  const chains = new Map<string, { key: RedoKey; chain: DecodedRecord[]; name: string }>();
  for (const r of records) {
    for (const b of r.blocks) {
      const name = rels.get(b.rel.relNumber);
      if (name === undefined || b.forkNum !== 0) continue;
      const id = `${b.rel.relNumber}/${b.blockNumber}`;
      let c = chains.get(id);
      if (c === undefined) {
        c = { key: { kind: "rel", rel: b.rel, forkNum: 0, blockNumber: b.blockNumber }, chain: [], name };
        chains.set(id, c);
      }
      if (b.willInit || b.image?.apply === true) c.chain = [];
      c.chain.push(r);
    }
  }

  const pool = new WalRedoPool({ tenantId: "heap-redo", dataChecksums, baseDir: join(defaultWalRedoDir(), "heap-redo"), metrics: new WalRedoMetrics(new Registry()) });
  const nativeApplied = { insert: 0, multi: 0, visible: 0 };
  const nativeInit = { insert: 0, multi: 0 };
  let pages = 0;
  try {
    const jobs: Array<Promise<void>> = [];
    for (const [id, { key, chain, name }] of chains) {
      const first = chain[0]!;
      const fb = first.blocks.find((b) => b.rel.relNumber === (key as { rel: { relNumber: number } }).rel.relNumber && b.forkNum === 0 && b.blockNumber === (key as { blockNumber: number }).blockNumber)!;
      if (!(fb.willInit || fb.image?.apply === true)) continue; // the page's base is older than the captured WAL
      pages++;
      // which records the native path takes on this chain (applied one by one, as reconstruct does)
      let page: Uint8Array | undefined;
      let nativeOk = true;
      for (const r of chain) {
        const b = r.blocks.find((x) => x.rel.relNumber === fb.rel.relNumber && x.forkNum === 0 && x.blockNumber === fb.blockNumber)!;
        const kind = isModeled(r);
        if (kind !== undefined && isNativeHeapRecord(r, b)) {
          const next = applyHeapRecord(page, r, b, { hintBitsLogged: dataChecksums });
          if (next !== undefined) {
            nativeApplied[kind]++;
            if (b.willInit && kind !== "visible") nativeInit[kind]++;
            page = next;
            continue;
          }
        }
        nativeOk = false;
        break; // the rest needs the helper; reconstruct below covers the mixed chain
      }
      jobs.push(
        (async () => {
          const viaNative = await reconstruct(key, undefined, chain, { pool, setChecksum: dataChecksums });
          const viaHelper = await reconstruct(key, undefined, chain, { pool, setChecksum: dataChecksums, nativeHeap: false });
          const direct = await pool.apply({ target: { rel: fb.rel, forkNum: 0, blockNumber: fb.blockNumber }, records: chain.map(redoRecordOf) });
          assert.deepEqual(viaNative, viaHelper, `${name} page ${id}: native heap redo equals PostgreSQL's redo (${chain.length} records)`);
          if (!dataChecksums) assert.deepEqual(viaNative, direct, `${name} page ${id}: equals the helper's replay`);
          if (nativeOk && page !== undefined && !dataChecksums) assert.deepEqual(page, direct, `${name} page ${id}: the all-native chain alone`);
        })(),
      );
      if (jobs.length >= 64) await Promise.all(jobs.splice(0));
    }
    await Promise.all(jobs);
  } finally {
    await pool.close();
  }
  const label = dataChecksums ? "with checksums" : "without checksums";
  assert.ok(pages >= 1600, `${label}: ${pages} heap pages compared`);
  assert.ok(nativeInit.multi >= 1500, `${label}: ${nativeInit.multi} MULTI_INSERT+INIT applied natively`);
  assert.ok(nativeApplied.multi > nativeInit.multi, `${label}: MULTI_INSERT without INIT applied natively (${nativeApplied.multi - nativeInit.multi})`);
  assert.ok(nativeApplied.insert >= 2000, `${label}: ${nativeApplied.insert} INSERTs applied natively`);
  assert.ok(nativeInit.insert >= 10, `${label}: ${nativeInit.insert} INSERT+INIT applied natively`);
  assert.ok(nativeApplied.visible >= 1500, `${label}: ${nativeApplied.visible} VISIBLE (heap page) applied natively`);
}

test("native heap redo equals PostgreSQL's redo on every heap page of a bulk load (no checksums)", async () => {
  await compareHeapPages(false);
});

test("native heap redo equals PostgreSQL's redo with data checksums", async () => {
  await compareHeapPages(true);
});
