/**
 * Data checksums against real PostgreSQL 15 (issue 2).
 *
 * A server initialized with --data-checksums gets tables, indexes, updates
 * and VACUUM (so heap, btree, FSM and VM pages exist), then a clean stop
 * (every page flushed). Every page of every relation file must pass
 * `validatePage` with checksum verification; a flipped byte must fail — and
 * `pg_checksums --check` must agree with us both ways, including after
 * strata re-stamps the corrupted page's checksum with `setPageChecksum`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { withPostgres } from "./harness/pg_server.js";
import { runTool } from "./harness/tools.js";
import { BLCKSZ, linePointerCount, pageIsNew, validatePage } from "../src/formats/page.js";
import { pageChecksum, setPageChecksum, verifyPageChecksum } from "../src/formats/page_checksum.js";
import { StrataError } from "../src/lib/errors.js";

/** RELSEG_SIZE: blocks per 1 GiB relation segment file. */
const RELSEG_SIZE_BLOCKS = 131072;
const RELATION_FILE = /^(\d+)(_fsm|_vm|_init)?(?:\.(\d+))?$/;

async function relationFiles(dataDir: string): Promise<{ path: string; firstBlock: number }[]> {
  const dirs = [join(dataDir, "global")];
  for (const db of await readdir(join(dataDir, "base"))) dirs.push(join(dataDir, "base", db));
  const out: { path: string; firstBlock: number }[] = [];
  for (const dir of dirs) {
    for (const name of await readdir(dir)) {
      const m = RELATION_FILE.exec(name);
      if (!m) continue;
      out.push({ path: join(dir, name), firstBlock: Number(m[3] ?? 0) * RELSEG_SIZE_BLOCKS });
    }
  }
  return out;
}

test("every page of a checksummed cluster verifies; corruption is detected like pg_checksums does", { timeout: 120_000 }, async () => {
  await withPostgres({ dataChecksums: true }, async (pg) => {
    await pg.sql(`
      CREATE TABLE t (id int PRIMARY KEY, v text);
      INSERT INTO t SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 20000) g;
      UPDATE t SET v = 'x' WHERE id % 7 = 0;
      DELETE FROM t WHERE id % 11 = 0;
      CREATE INDEX t_v ON t (v);
      VACUUM t;
    `);
    const tPath = await pg.relationFilePath("t");
    await pg.stop("fast");

    let files = 0;
    let pages = 0;
    let newPages = 0;
    let linePointers = 0;
    const t0 = process.hrtime.bigint();
    for (const { path, firstBlock } of await relationFiles(pg.dataDir)) {
      const bytes = new Uint8Array(await readFile(path));
      assert.equal(bytes.length % BLCKSZ, 0, path);
      files++;
      for (let i = 0; i < bytes.length / BLCKSZ; i++) {
        const page = bytes.subarray(i * BLCKSZ, (i + 1) * BLCKSZ);
        const blockNumber = firstBlock + i;
        validatePage(page, { blockNumber, checksums: true, context: `${path} block ${blockNumber}` });
        if (pageIsNew(page)) newPages++;
        else linePointers += linePointerCount(page);
        pages++;
      }
    }
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    console.log(`checksums: ${pages} pages in ${files} relation files verified (${newPages} new), ${linePointers} line pointers, ${ms.toFixed(0)} ms incl. reads`);
    assert.ok(pages > 500, `expected a few hundred pages, got ${pages}`);
    assert.ok(files > 200);

    // Flip one byte in block 3 of t: both we and pg_checksums report it.
    const before = await runTool("pg_checksums", ["--check", "-D", pg.dataDir]);
    assert.equal(before.code, 0, before.stderr + before.stdout);
    const file = new Uint8Array(await readFile(tPath));
    const block = 3;
    const page = file.subarray(block * BLCKSZ, (block + 1) * BLCKSZ);
    page[5000] = (page[5000] ?? 0) ^ 0x10;
    assert.ok(!verifyPageChecksum(page, block));
    assert.throws(() => validatePage(page, { blockNumber: block, checksums: true }), (e: unknown) => e instanceof StrataError && e.code === "corrupt_data");
    await writeFile(tPath, file);
    const after = await runTool("pg_checksums", ["--check", "-D", pg.dataDir]);
    assert.equal(after.code, 1);
    assert.match(after.stderr, /checksum verification failed in file .* block 3: calculated checksum ([0-9A-F]+) but block contains/);
    const calculated = Number.parseInt(/calculated checksum ([0-9A-F]+)/.exec(after.stderr)![1]!, 16);
    assert.equal(pageChecksum(page, block), calculated, "same checksum as PostgreSQL for the corrupted page");

    // Re-stamp the checksum with strata: PostgreSQL accepts the page again.
    setPageChecksum(page, block);
    await writeFile(tPath, file);
    const fixed = await runTool("pg_checksums", ["--check", "-D", pg.dataDir]);
    assert.equal(fixed.code, 0, fixed.stderr + fixed.stdout);
  });
});
