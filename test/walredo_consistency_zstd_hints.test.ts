/**
 * Acceptance (1) and (2) for two more server variants, with the small
 * workload of walredo_consistency_variants.test.ts:
 * - wal_compression=zstd: every full-page image the helper restores was
 *   zstd-compressed, decompressed by PostgreSQL's own reader in the helper
 *   (and by strata's decoder for the expected consistency images).
 * - wal_log_hints=on without data checksums: the helpers run with
 *   wal_log_hints=on too, so XLogHintBitIsNeeded() is true during redo as on
 *   the cluster (heap VISIBLE redo then stamps the heap page's LSN), and the
 *   cluster writes FPI_FOR_HINT records, which the replays include.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { checkVariant } from "./walredo_consistency_lib.js";

const SCALE = 0.15;
const RM_XLOG_ID = 0;
/** XLOG_FPI_FOR_HINT (catalog/pg_control.h). */
const XLOG_FPI_FOR_HINT = 0xa0;

test("consistency images and relation files with wal_compression=zstd", async () => {
  await checkVariant("zstd", {
    server: { walCompression: "zstd" },
    dataChecksums: false,
    scale: SCALE,
    inspect: async (records) => {
      const images = records.flatMap((r) => r.blocks.flatMap((b) => (b.image ? [b.image] : [])));
      const zstd = images.filter((i) => i.compression === "zstd").length;
      console.log(`zstd: ${images.length} images, ${zstd} zstd-compressed`);
      assert.ok(zstd > 1000, `only ${zstd} of ${images.length} images are zstd-compressed`);
    },
  });
});

test("consistency images and relation files with wal_log_hints=on (no checksums)", async () => {
  await checkVariant("hints", {
    server: { settings: { wal_log_hints: "on" } },
    dataChecksums: false,
    walLogHints: true,
    scale: SCALE,
    inspect: async (records, pool) => {
      const hintImages = records.filter((r) => r.rmid === RM_XLOG_ID && (r.info & 0xf0) === XLOG_FPI_FOR_HINT).length;
      console.log(`hints: ${hintImages} FPI_FOR_HINT records`);
      assert.ok(hintImages > 0, "the cluster wrote no FPI_FOR_HINT record: wal_log_hints had no effect");
      const [st] = await pool.stats();
      assert.ok(st, "a helper runs");
      const hello = pool.processInSlot(st.slot)!.hello;
      assert.equal(hello.walLogHints, true, "the helper runs with wal_log_hints=on");
      assert.equal(hello.dataChecksums, false);
    },
  });
});
