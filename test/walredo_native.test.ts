/**
 * TypeScript-native redo against real PostgreSQL 15: starting from a
 * server's SLRU files at a checkpoint, applying the WAL that followed
 * natively must reproduce the files the server wrote at the next checkpoint —
 * pg_xact (commits and aborts with subtransactions), pg_multixact offsets and
 * members; the visibility map rebuilt by `reconstruct` (helper for VISIBLE,
 * native for the bits heap records clear) must equal the `_vm` file byte for
 * byte; an unlogged index's init fork rebuilt from its full-page image must
 * equal the `_init` file; heap pages rebuilt by `reconstruct` (native image,
 * then the helper) must equal the helper-only replay.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Registry } from "prom-client";
import type { DecodedRecord } from "../src/formats/wal/decoded_record.js";
import { heapVmClears, vmBlockOf } from "../src/formats/wal/rmgr/heap.js";
import { WalRedoMetrics } from "../src/walredo/metrics.js";
import { engineFor, reconstruct, type RedoKey } from "../src/walredo/native_redo.js";
import { WalRedoPool } from "../src/walredo/pool.js";
import { redoRecordOf } from "../src/walredo/protocol.js";
import { defaultWalRedoDir } from "../src/walredo/stub.js";
import { startPostgres } from "./harness/pg_server.js";
import { readWal } from "./walredo_consistency_lib.js";

const SLRU_FILES = { clog: "pg_xact/0000", multixact_offsets: "pg_multixact/offsets/0000", multixact_members: "pg_multixact/members/0000" } as const;

const WORKLOAD = `
-- commits and aborts with subtransactions (savepoints, exception blocks)
BEGIN; INSERT INTO x VALUES (1); SAVEPOINT a; INSERT INTO x VALUES (2); RELEASE a; SAVEPOINT b; INSERT INTO x VALUES (3); ROLLBACK TO b; COMMIT;
BEGIN; INSERT INTO x VALUES (4); SAVEPOINT a; INSERT INTO x VALUES (5); ROLLBACK;
DO $$ BEGIN FOR i IN 1..100 LOOP BEGIN INSERT INTO x VALUES (1000 + i); IF i % 3 = 0 THEN RAISE EXCEPTION 'undo'; END IF; EXCEPTION WHEN raise_exception THEN NULL; END; END LOOP; END $$;
-- multixacts: the parent locks a row, a subtransaction updates it
DO $$ BEGIN FOR i IN 1..150 LOOP PERFORM 1 FROM m WHERE id = i FOR SHARE; BEGIN UPDATE m SET v = v + 1 WHERE id = i; EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$;
-- visibility map: set (VACUUM FREEZE), then cleared by updates, deletes and locks, set again, cleared again
INSERT INTO vmt SELECT g, 'v' || g FROM generate_series(1, 3000) g;
VACUUM (FREEZE) vmt;
UPDATE vmt SET v = 'u' WHERE id % 97 = 0;
DELETE FROM vmt WHERE id % 89 = 0;
VACUUM (FREEZE) vmt;
SELECT count(*) FROM (SELECT id FROM vmt WHERE id % 83 = 0 FOR UPDATE) s;
VACUUM vmt;
INSERT INTO vmt VALUES (0, 'late');
-- an unlogged table: its index's init fork is written with a full-page image
CREATE UNLOGGED TABLE u (id int PRIMARY KEY);
`;

function sameRel(a: { spcOid: number; dbOid: number; relNumber: number }, relNumber: number): boolean {
  return a.relNumber === relNumber;
}

test("native redo reproduces pg_xact, pg_multixact, the visibility map and an init fork", async () => {
  const pg = await startPostgres({ settings: { wal_keep_size: "1GB" } });
  let records: DecodedRecord[];
  const before: Record<string, Uint8Array> = {};
  const after: Record<string, Uint8Array> = {};
  let vmtRel: number;
  let initRel: number;
  let vmFile: Uint8Array;
  let initFile: Uint8Array;
  let heapFile: Uint8Array;
  try {
    await pg.sql("CREATE TABLE x (id int); CREATE TABLE m (id int PRIMARY KEY, v int); INSERT INTO m SELECT g, 0 FROM generate_series(1, 150) g; CREATE TABLE vmt (id int, v text)");
    await pg.checkpoint();
    for (const [k, f] of Object.entries(SLRU_FILES)) before[k] = new Uint8Array((await readFile(join(pg.dataDir, f))).subarray(0, 8192));
    const start = await pg.currentWalLsn();
    await pg.sql(WORKLOAD);
    await pg.checkpoint();
    const end = await pg.currentWalLsn();
    vmtRel = Number(await pg.sql("SELECT relfilenode FROM pg_class WHERE relname = 'vmt'"));
    initRel = Number(await pg.sql("SELECT relfilenode FROM pg_class WHERE relname = 'u_pkey'"));
    const vmtPath = await pg.relationFilePath("vmt");
    const initPath = (await pg.relationFilePath("u_pkey")) + "_init";
    await pg.stop();
    for (const [k, f] of Object.entries(SLRU_FILES)) after[k] = new Uint8Array((await readFile(join(pg.dataDir, f))).subarray(0, 8192));
    vmFile = new Uint8Array((await readFile(vmtPath + "_vm")).subarray(0, 8192));
    initFile = new Uint8Array((await readFile(initPath)).subarray(0, 8192));
    heapFile = new Uint8Array(await readFile(vmtPath));
    records = await readWal(pg.walDir, start, end);
  } finally {
    await pg.destroy();
  }

  // SLRU pages: what ingest files under each key, applied natively.
  const slruRecords = (slru: "clog" | "multixact_offsets" | "multixact_members") =>
    records.filter((r) => {
      try {
        return engineFor({ kind: "slru", slru, pageno: 0 }, { kind: "wal", record: r }) === "native";
      } catch {
        return false;
      }
    });
  const xactCount = slruRecords("clog").length;
  const multiCount = records.filter((r) => r.rmid === 6 && (r.info & 0xf0) === 0x20).length;
  assert.ok(xactCount >= 3, `${xactCount} commit/abort records`);
  assert.ok(multiCount >= 100, `${multiCount} multixacts created`);
  assert.ok(records.some((r) => r.rmid === 1 && (r.info & 0x80) !== 0), "some commit/abort carries subtransactions");
  for (const slru of ["clog", "multixact_offsets", "multixact_members"] as const) {
    const key: RedoKey = { kind: "slru", slru, pageno: 0 };
    const page = await reconstruct(key, before[slru], slruRecords(slru));
    assert.notDeepEqual(after[slru], before[slru], `${slru} changed during the workload`);
    assert.deepEqual(page, after[slru], `${slru} page 0 rebuilt natively equals the server's file`);
  }

  const pool = new WalRedoPool({ tenantId: "native", dataChecksums: false, baseDir: join(defaultWalRedoDir(), "native"), metrics: new WalRedoMetrics(new Registry()) });
  try {
    // Visibility map page 0: records referencing it (VISIBLE: helper, or its
    // image: native) and heap records clearing its bits (native).
    const vmKey: RedoKey = { kind: "rel", rel: { spcOid: 0, dbOid: 0, relNumber: 0 }, forkNum: 2, blockNumber: 0 };
    const vmRecords = records.filter(
      (r) =>
        r.blocks.some((b) => sameRel(b.rel, vmtRel) && b.forkNum === 2 && b.blockNumber === 0) ||
        ((r.rmid === 9 || r.rmid === 10) && heapVmClears(r).some((c) => sameRel(c.rel, vmtRel) && vmBlockOf(c.heapBlock) === 0)),
    );
    const rel = vmRecords.flatMap((r) => r.blocks).find((b) => sameRel(b.rel, vmtRel))!.rel;
    const key: RedoKey = { ...vmKey, rel };
    const engines = vmRecords.map((r) => engineFor(key, { kind: "wal", record: r }));
    assert.ok(engines.filter((e) => e === "native").length >= 10, "native VM clears");
    assert.ok(engines.includes("helper"), "VISIBLE records replayed by the helper");
    const vm = await reconstruct(key, undefined, vmRecords, { pool });
    assert.deepEqual(vm, vmFile, "the visibility map page equals the _vm file byte for byte");

    // Init fork of the unlogged index: its full-page image, natively.
    const initRecords = records.filter((r) => r.blocks.some((b) => sameRel(b.rel, initRel) && b.forkNum === 3 && b.blockNumber === 0));
    assert.ok(initRecords.length >= 1);
    const initRelNode = initRecords[0]!.blocks.find((b) => sameRel(b.rel, initRel))!.rel;
    const initKey: RedoKey = { kind: "rel", rel: initRelNode, forkNum: 3, blockNumber: 0 };
    assert.equal(engineFor(initKey, { kind: "wal", record: initRecords[0]! }), "native");
    const initPage = await reconstruct(initKey, undefined, initRecords);
    // The file was written before log_newpage stamped the LSN into the page.
    assert.deepEqual(initPage.subarray(8), initFile.subarray(8), "the init fork page equals the _init file (LSN aside)");

    // Heap pages: reconstruct (native image, then helper batches) == helper-only replay.
    let compared = 0;
    for (let blk = 0; blk * 8192 < heapFile.length && blk < 8; blk++) {
      const steps = records.filter((r) => r.blocks.some((b) => sameRel(b.rel, vmtRel) && b.forkNum === 0 && b.blockNumber === blk));
      let from = -1;
      steps.forEach((r, i) => {
        const b = r.blocks.find((x) => sameRel(x.rel, vmtRel) && x.forkNum === 0 && x.blockNumber === blk)!;
        if (b.willInit || b.image?.apply) from = i;
      });
      if (from < 0) continue;
      const chain = steps.slice(from);
      const hk: RedoKey = { kind: "rel", rel, forkNum: 0, blockNumber: blk };
      const viaReconstruct = await reconstruct(hk, undefined, chain, { pool });
      const viaHelper = await pool.apply({ target: { rel, forkNum: 0, blockNumber: blk }, records: chain.map(redoRecordOf) });
      assert.deepEqual(viaReconstruct, viaHelper, `heap block ${blk}`);
      compared++;
    }
    assert.ok(compared >= 4, `${compared} heap pages compared`);
  } finally {
    await pool.close();
  }
});
