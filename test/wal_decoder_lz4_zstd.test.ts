/**
 * Acceptance 1 (wal_compression = lz4 and zstd): strata's WAL decoder lists
 * exactly the records pg_waldump lists for a real server's workload — same
 * count, LSNs, rmgrs, types, lengths, xids and block references — whole and
 * fed in random-sized chunks. Split from the other compression methods to
 * keep each test file within its time budget.
 */
import { test } from "node:test";
import { checkDecoderAgainstWaldump } from "./wal_decoder_support.js";

test("wal_compression=lz4: decoder matches pg_waldump", { timeout: 120_000 }, async (t) => {
  t.diagnostic(await checkDecoderAgainstWaldump("lz4", 31));
});

test("wal_compression=zstd: decoder matches pg_waldump", { timeout: 120_000 }, async (t) => {
  t.diagnostic(await checkDecoderAgainstWaldump("zstd", 41));
});
