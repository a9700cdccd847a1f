/**
 * Acceptance (1) and (2) of the WAL redo helper against real PostgreSQL 15,
 * default settings: every wal_consistency_checking image of a workload over
 * heap, btree, hash, GIN, GiST, SP-GiST, BRIN, sequences and bloom (generic
 * WAL) is reproduced by replay from the previous version; and every page of
 * the checkpointed relation files equals (after masking) the replay from its
 * last full-page image. Variants with lz4 and data checksums are in
 * walredo_consistency_variants.test.ts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Registry } from "prom-client";
import { WalRedoMetrics } from "../src/walredo/metrics.js";
import { WalRedoPool } from "../src/walredo/pool.js";
import { defaultWalRedoDir } from "../src/walredo/stub.js";
import { join } from "node:path";
import { checkConsistencyImages, checkRelationFiles, runConsistencyWorkload } from "./walredo_consistency_lib.js";

const REQUIRED_TYPES = [
  "Heap 0x00",
  "Heap 0x10",
  "Heap 0x20",
  "Heap 0x40",
  "Heap 0x60",
  "Heap2 0x10",
  "Heap2 0x20",
  "Heap2 0x30",
  "Heap2 0x40",
  "Heap2 0x50",
  "Btree 0x00",
  "Btree 0x10",
  "Btree 0x60",
  "Btree 0xc0",
  "Btree 0xb0",
  "Btree 0x80",
];

test("replay reproduces every consistency image, and the checkpointed relation files", async () => {
  const w = await runConsistencyWorkload({}, 0.4);
  const pool = new WalRedoPool({ tenantId: "consistency", dataChecksums: false, processes: 2, baseDir: join(defaultWalRedoDir(), "consistency"), metrics: new WalRedoMetrics(new Registry()) });
  try {
    const st = await checkConsistencyImages(pool, w.records);
    console.log(`WAL ${w.walBytes} bytes, ${w.records.length} records; consistency:`, JSON.stringify({ ...st, mismatches: st.mismatches.slice(0, 10), errors: st.errors.slice(0, 10) }));
    assert.deepEqual(st.errors, []);
    assert.deepEqual(st.mismatches, []);
    for (const rm of ["Heap", "Heap2", "Btree", "Hash", "Gin", "Gist", "SPGist", "BRIN", "Sequence", "Generic"]) {
      assert.ok((st.perRmgr[`${rm} fork 0`] ?? 0) > 0, `no ${rm} consistency image was checked`);
    }
    // the workload reaches the record types acceptance names (heap: insert,
    // delete, update, HOT update, lock; heap2: prune, vacuum, freeze, visible,
    // multi-insert; btree: leaf/upper inserts, dedup, vacuum, half-dead, unlink)
    for (const type of REQUIRED_TYPES) assert.ok((st.perType[type] ?? 0) > 0, `no consistency image of ${type} was checked`);
    const files = await checkRelationFiles(pool, w.records, w.relations);
    console.log("relation files:", JSON.stringify({ ...files, mismatches: files.mismatches.slice(0, 10) }));
    assert.deepEqual(files.mismatches, []);
    assert.equal(files.noHistory, 0);
    assert.ok(files.pages > 50, `only ${files.pages} pages compared`);
  } finally {
    await pool.close();
  }
});
