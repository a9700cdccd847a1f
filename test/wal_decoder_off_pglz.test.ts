/**
 * Acceptance 1 (wal_compression = off and pglz): strata's WAL decoder lists
 * exactly the records pg_waldump lists for a real server's workload — same
 * count, LSNs, rmgrs, types, lengths, xids and block references — whole and
 * fed in random-sized chunks. Split from the other compression methods to
 * keep each test file within its time budget.
 */
import { test } from "node:test";
import { checkDecoderAgainstWaldump } from "./wal_decoder_support.js";

test("wal_compression=off: decoder matches pg_waldump", { timeout: 120_000 }, async (t) => {
  t.diagnostic(await checkDecoderAgainstWaldump("off", 11));
});

test("wal_compression=pglz: decoder matches pg_waldump", { timeout: 120_000 }, async (t) => {
  t.diagnostic(await checkDecoderAgainstWaldump("pglz", 21));
});
