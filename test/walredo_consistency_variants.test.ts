/**
 * Acceptance (1) and (2) again with full-page images compressed by lz4 and
 * with data checksums on (the helper's stub then has checksums too, so
 * XLogHintBitIsNeeded() matches the cluster, and FPI_FOR_HINT records
 * appear). A smaller workload than walredo_consistency.test.ts keeps the
 * runtime modest.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Registry } from "prom-client";
import { WalRedoMetrics } from "../src/walredo/metrics.js";
import { WalRedoPool } from "../src/walredo/pool.js";
import { defaultWalRedoDir } from "../src/walredo/stub.js";
import type { PgServerOptions } from "./harness/pg_server.js";
import { checkConsistencyImages, checkRelationFiles, runConsistencyWorkload } from "./walredo_consistency_lib.js";

const SCALE = 0.15;

async function variant(name: string, server: PgServerOptions, dataChecksums: boolean): Promise<void> {
  const w = await runConsistencyWorkload(server, SCALE);
  const pool = new WalRedoPool({ tenantId: name, dataChecksums, processes: 2, baseDir: join(defaultWalRedoDir(), "consistency"), metrics: new WalRedoMetrics(new Registry()) });
  try {
    const st = await checkConsistencyImages(pool, w.records, { setChecksum: dataChecksums });
    console.log(`${name}: WAL ${w.walBytes} bytes, ${w.records.length} records; consistency:`, JSON.stringify({ ...st, perType: undefined, mismatches: st.mismatches.slice(0, 10), errors: st.errors.slice(0, 10) }));
    assert.deepEqual(st.errors, []);
    assert.deepEqual(st.mismatches, []);
    assert.ok(st.checked > 1000, `only ${st.checked} checks`);
    for (const rm of ["Heap", "Btree", "Hash", "Gin", "Gist", "SPGist", "BRIN", "Generic"]) {
      assert.ok((st.perRmgr[`${rm} fork 0`] ?? 0) > 0, `no ${rm} consistency image was checked`);
    }
    // with checksums, replayed pages are stamped: byte-identical pages then
    // also prove the helper's checksum equals the one PostgreSQL wrote
    const files = await checkRelationFiles(pool, w.records, w.relations, { setChecksum: dataChecksums });
    console.log(`${name}: relation files:`, JSON.stringify({ ...files, mismatches: files.mismatches.slice(0, 10) }));
    assert.deepEqual(files.mismatches, []);
    assert.equal(files.noHistory, 0);
    assert.ok(files.identical > 0, "some replayed pages are byte-identical to the files");
  } finally {
    await pool.close();
  }
}

test("consistency images and relation files with wal_compression=lz4", async () => {
  await variant("lz4", { walCompression: "lz4" }, false);
});

test("consistency images and relation files with data checksums on", async () => {
  await variant("checksums", { dataChecksums: true }, true);
});
