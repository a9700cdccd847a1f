/**
 * Acceptance (1) and (2) again with full-page images compressed by lz4 and
 * with data checksums on (the helper's stub then has checksums too, so
 * XLogHintBitIsNeeded() matches the cluster, and FPI_FOR_HINT records
 * appear). A smaller workload than walredo_consistency.test.ts keeps the
 * runtime modest; zstd and wal_log_hints are in
 * walredo_consistency_zstd_hints.test.ts (a file of their own so the runner
 * overlaps them with these).
 */
import { test } from "node:test";
import { checkVariant } from "./walredo_consistency_lib.js";

const SCALE = 0.15;

test("consistency images and relation files with wal_compression=lz4", async () => {
  await checkVariant("lz4", { server: { walCompression: "lz4" }, dataChecksums: false, scale: SCALE });
});

test("consistency images and relation files with data checksums on", async () => {
  await checkVariant("checksums", { server: { dataChecksums: true }, dataChecksums: true, scale: SCALE });
});
