import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { withPostgres, startPostgres } from "./pg_server.js";
import { runTool } from "./tools.js";
import { formatLsn } from "../../src/lib/lsn.js";

test("harness: a real server runs SQL, reports WAL positions and serves raw pages", async () => {
  await withPostgres({ dataChecksums: true, walCompression: "lz4" }, async (pg) => {
    assert.equal(await pg.sql("SHOW wal_compression"), "lz4");
    assert.equal(await pg.sql("SHOW data_checksums"), "on");
    assert.match(await pg.sql("SELECT version()"), /PostgreSQL 15\./);
    await pg.sql("CREATE TABLE t(a int, b text); INSERT INTO t SELECT g, 'x' || g FROM generate_series(1, 500) g");
    const before = await pg.currentWalLsn();
    await pg.sql("INSERT INTO t VALUES (0, 'y')");
    assert.ok((await pg.currentWalLsn()) > before);
    assert.deepEqual(await pg.rows("SELECT a, b FROM t WHERE a IN (1, 2) ORDER BY a"), [["1", "x1"], ["2", "x2"]]);
    await pg.checkpoint();
    const page = await pg.rawPage("t", "main", 0);
    assert.equal(page.length, 8192);
    const path = await pg.relationFilePath("t");
    assert.ok(existsSync(path), path);
    const out = await pg.pgbench(["-i", "-s", "1", "-q"]);
    assert.match(out, /done/);
    const sw = await pg.switchWal();
    assert.ok(sw > before, formatLsn(sw));
  });
});

test("harness: servers are removed after stop, and a stopped server can start again", async () => {
  const pg = await startPostgres({});
  try {
    await pg.sql("CREATE TABLE keep(x int); INSERT INTO keep VALUES (42)");
    await pg.stop();
    await pg.start();
    assert.equal(await pg.sql("SELECT x FROM keep"), "42");
  } finally {
    await pg.destroy();
  }
  assert.equal(existsSync(pg.baseDir), false);
  const r = await runTool("pg_ctl", ["status", "-D", pg.dataDir]);
  assert.notEqual(r.code, 0);
});
