import { test } from "node:test";
import assert from "node:assert/strict";
import { parseWaldumpLine, pgWaldump } from "./waldump.js";
import { withPostgres } from "./pg_server.js";
import { formatLsn } from "../../src/lib/lsn.js";

test("parses pg_waldump lines with several block references, forks and FPW kinds", () => {
  const r = parseWaldumpLine(
    "rmgr: Heap2       len (rec/tot):     64/  8256, tx:          0, lsn: 0/01782540, prev 0/01782500, desc: VISIBLE cutoff xid 727 flags 0x01, blkref #0: rel 1663/5/16390 fork vm blk 0 FPW, blkref #1: rel 1663/5/16390 blk 1",
  );
  assert.ok(r);
  assert.equal(r.rmgr, "Heap2");
  assert.equal(r.type, "VISIBLE");
  assert.equal(r.recLen, 64);
  assert.equal(r.totalLen, 8256);
  assert.equal(formatLsn(r.lsn), "0/1782540");
  assert.equal(formatLsn(r.prevLsn), "0/1782500");
  assert.equal(r.desc, "VISIBLE cutoff xid 727 flags 0x01");
  assert.deepEqual(r.blocks, [
    { spc: 1663, db: 5, rel: 16390, fork: 2, blk: 0, fpw: true, fpwForVerification: false },
    { spc: 1663, db: 5, rel: 16390, fork: 0, blk: 1, fpw: false, fpwForVerification: false },
  ]);
  const v = parseWaldumpLine(
    "rmgr: Heap        len (rec/tot):    193/  5729, tx:        728, lsn: 0/0177F6E8, prev 0/0177F658, desc: INPLACE off 1, blkref #0: rel 1663/5/1259 blk 1 FPW for WAL verification",
  );
  assert.equal(v?.blocks[0]?.fpwForVerification, true);
  assert.equal(parseWaldumpLine("pg_waldump: error: error in WAL record at 0/1784648: invalid magic number"), undefined);
});

test("pg_waldump of a real server's WAL lists the records of a committed insert", async () => {
  await withPostgres({}, async (pg) => {
    await pg.sql("CREATE TABLE w(a int)");
    const start = await pg.currentWalLsn();
    await pg.sql("INSERT INTO w VALUES (1)");
    const end = await pg.currentWalLsn();
    const recs = await pgWaldump({ path: pg.walDir, start, end });
    const relfilenode = Number(await pg.sql("SELECT relfilenode FROM pg_class WHERE relname = 'w'"));
    const insert = recs.find((r) => r.rmgr === "Heap" && r.type.startsWith("INSERT"));
    assert.ok(insert, recs.map((r) => `${r.rmgr} ${r.desc}`).join("\n") || "no records");
    assert.equal(insert.blocks[0]?.rel, relfilenode);
    assert.ok(recs.some((r) => r.rmgr === "Transaction" && r.type === "COMMIT"));
  });
});
