/**
 * Shared parts of the WAL ingest tests against a real PostgreSQL 15 server
 * (test/walingest*.test.ts).
 *
 * A fresh cluster is stopped cleanly and its data directory copied: that copy
 * is imported (import_datadir.ts) at the end of its shutdown checkpoint
 * record. The server then runs a workload touching every kind of record the
 * pageserver must understand (pgbench, DDL of tables and indexes of every
 * access method, VACUUM with truncation, TRUNCATE, both CREATE DATABASE
 * strategies, DROP DATABASE, prepared transactions, subtransactions,
 * multixacts, a sequence, an unlogged table) and is stopped cleanly again.
 * All WAL after the import point is ingested into a store built from the
 * real layer code and walredo; then the store, read at the last LSN, must
 * match the server's files:
 *   - database directory = base/* + global; each relation directory and
 *     size = the relation files (FSM forks: ingest only knows those WAL
 *     mentions, as PostgreSQL's own standby does; heap files may end in
 *     zero pages that a bulk extension added without WAL);
 *   - every page of every main, VM and init fork equal after PostgreSQL's
 *     own masking (walredo's mask request: hint bits, LSN, unused space);
 *   - pg_xact and pg_multixact pages and segment sizes equal the files;
 *   - relmapper files and pg_twophase files byte-identical;
 *   - next XID / OID / multixact equal pg_control's final checkpoint.
 */
import assert from "node:assert/strict";
import { readFile, readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { WalIngest } from "../src/pageserver/walingest.js";
import { importDatadir } from "../src/pageserver/import_datadir.js";
import {
  dbDirEntryId,
  decodeDbDir,
  decodeRelDir,
  decodeRelSize,
  decodeSlruDir,
  decodeSlruSegSize,
  decodeTwoPhaseDir,
  recordVersionLsn,
  relDirEntryId,
  type DatadirReader,
  type DatadirWriter,
} from "../src/pageserver/datadir.js";
import {
  CHECKPOINT_KEY,
  DBDIR_KEY,
  SlruKind,
  TWOPHASE_DIR_KEY,
  relBlockKey,
  relDirKey,
  relSizeKey,
  relmapKey,
  slruBlockKey,
  slruDirKey,
  slruSegSizeKey,
  twoPhaseFileKey,
} from "../src/pageserver/key.js";
import { parseControlFile, type ControlFileData } from "../src/formats/pg_control.js";
import { parseCheckPoint } from "../src/formats/wal/rmgr/xlog.js";
import { WalFileReader } from "../src/formats/wal/wal_files.js";
import { recordTypeName, rmgrName, RM_SMGR_ID as RM_SMGR } from "../src/formats/wal/rmgr_names.js";
import type { WalRedoPool } from "../src/walredo/pool.js";
import type { PgServer } from "./harness/pg_server.js";
import { runProgram } from "./harness/tools.js";
import { requestContext } from "../src/lib/tasks.js";
import { formatLsn, type Lsn } from "../src/lib/lsn.js";

const BLCKSZ = 8192;
const FORK_SUFFIX: Record<string, number> = { "": 0, _fsm: 1, _vm: 2, _init: 3 };
const RM = { heap: 10, btree: 11, hash: 12, gin: 13, gist: 14, seq: 15, spgist: 16, brin: 17 } as const;
const AM_RMID: Record<string, number> = { heap: RM.heap, btree: RM.btree, hash: RM.hash, gin: RM.gin, gist: RM.gist, spgist: RM.spgist, brin: RM.brin };

interface RelFile {
  spc: number;
  db: number;
  relNumber: number;
  fork: number;
  pages: number;
  path: string;
}

/** Relation forks on disk (segment 0 only: test relations stay far below 1 GiB). */
async function relationFiles(dataDir: string): Promise<{ dbs: Set<bigint>; rels: RelFile[]; relmaps: Array<{ spc: number; db: number; path: string }> }> {
  const dbs = new Set<bigint>();
  const rels: RelFile[] = [];
  const relmaps: Array<{ spc: number; db: number; path: string }> = [];
  const scan = async (dir: string, spc: number, db: number) => {
    dbs.add(dbDirEntryId(spc, db));
    for (const name of await readdir(dir)) {
      if (name === "pg_filenode.map") relmaps.push({ spc, db, path: join(dir, name) });
      const m = /^(\d+)(_fsm|_vm|_init)?$/.exec(name);
      if (!m) continue;
      const st = await stat(join(dir, name));
      rels.push({ spc, db, relNumber: Number(m[1]), fork: FORK_SUFFIX[m[2] ?? ""]!, pages: st.size / BLCKSZ, path: join(dir, name) });
    }
  };
  await scan(join(dataDir, "global"), 1664, 0);
  for (const d of await readdir(join(dataDir, "base"))) if (/^\d+$/.test(d)) await scan(join(dataDir, "base", d), 1663, Number(d));
  return { dbs, rels, relmaps };
}

async function slruFiles(dir: string): Promise<Map<number, Buffer>> {
  const out = new Map<number, Buffer>();
  for (const name of await readdir(dir)) if (/^[0-9A-F]{4}$/.test(name)) out.set(parseInt(name, 16), await readFile(join(dir, name)));
  return out;
}

function isZero(b: Uint8Array): boolean {
  return b.every((x) => x === 0);
}

export async function workload(pg: PgServer): Promise<void> {
  await pg.pgbench(["-i", "-s", "1", "-q"]);
  await pg.sql(`
    CREATE TABLE t (id int PRIMARY KEY, v text, arr int[], p point, r int4range);
    INSERT INTO t SELECT g, 'row ' || g, ARRAY[g, g+1], point(g, g), int4range(g, g+10) FROM generate_series(1, 3000) g;
    CREATE INDEX t_hash ON t USING hash (id);
    CREATE INDEX t_gin ON t USING gin (arr);
    CREATE INDEX t_gist ON t USING gist (p);
    CREATE INDEX t_spgist ON t USING spgist (r);
    CREATE INDEX t_brin ON t USING brin (id) WITH (pages_per_range = 4);
    CREATE SEQUENCE s;
    SELECT nextval('s') FROM generate_series(1, 100);
    CREATE UNLOGGED TABLE u (id int PRIMARY KEY, v text);
    INSERT INTO u SELECT g, 'x' FROM generate_series(1, 500) g;
    VACUUM (FREEZE) t;
    -- clear VM bits with updates, and subtransactions
    BEGIN;
    UPDATE t SET v = 'updated' WHERE id % 50 = 0;
    SAVEPOINT a;
    INSERT INTO t SELECT g, 'sub' FROM generate_series(3001, 3100) g;
    SAVEPOINT b;
    DELETE FROM t WHERE id BETWEEN 100 AND 120;
    ROLLBACK TO b;
    RELEASE a;
    COMMIT;
    BEGIN; INSERT INTO t VALUES (99999, 'aborted'); ROLLBACK;
    DELETE FROM t WHERE id > 1500;
    VACUUM t;
    -- truncate the tail through VACUUM (SMGR TRUNCATE of main, FSM and VM;
    -- the VM page keeping the new end is cleared in part)
    CREATE TABLE tr AS SELECT g AS id, repeat('x', 100) AS pad FROM generate_series(1, 20000) g;
    VACUUM (FREEZE) tr;
    DELETE FROM tr WHERE id > 5000;
    VACUUM tr;
    CREATE TABLE big AS SELECT g AS id, repeat('y', 200) AS pad FROM generate_series(1, 5000) g;
    VACUUM big;
    TRUNCATE big;
    INSERT INTO big SELECT g, 'z' FROM generate_series(1, 100) g;
    CREATE TABLE gone (id int);
    INSERT INTO gone SELECT generate_series(1, 1000);
    CREATE INDEX gone_idx ON gone (id);
    DROP INDEX t_gist;
    DROP TABLE gone;
  `);
  await pg.pgbench(["-c", "2", "-j", "2", "-t", "150", "-n"]);
  // two-phase commit: one committed, one rolled back, one left prepared
  await pg.sql(`
    BEGIN; INSERT INTO t VALUES (200001, 'p1'); PREPARE TRANSACTION 'p1';
    CREATE TABLE p2t (id int);
    BEGIN; INSERT INTO p2t VALUES (200002); SAVEPOINT x; INSERT INTO p2t VALUES (200003); PREPARE TRANSACTION 'p2';
    BEGIN; CREATE TABLE in_prepared (id int); INSERT INTO t VALUES (200004, 'p3'); PREPARE TRANSACTION 'p3';
    COMMIT PREPARED 'p1';
    ROLLBACK PREPARED 'p3';
  `);
  // multixacts: a prepared transaction keeps a share lock while others lock the same rows
  await pg.sql(`
    BEGIN; SELECT * FROM t WHERE id <= 40 FOR SHARE; PREPARE TRANSACTION 'm1';
    BEGIN; SELECT * FROM t WHERE id <= 40 FOR SHARE; COMMIT;
    BEGIN; SELECT * FROM t WHERE id <= 20 FOR KEY SHARE; COMMIT;
    COMMIT PREPARED 'm1';
    BEGIN; UPDATE t SET v = 'after multi' WHERE id = 5; COMMIT;
  `);
  // databases: FILE_COPY (then used and dropped), WAL_LOG (kept, with a table)
  await pg.sql(`CREATE DATABASE fc STRATEGY FILE_COPY`);
  await pg.sql(`CREATE TABLE in_fc AS SELECT generate_series(1, 2000) AS id`, { db: "fc" });
  await pg.sql(`CREATE DATABASE fc2 TEMPLATE fc STRATEGY FILE_COPY`);
  await pg.sql(`DROP DATABASE fc`);
  await pg.sql(`CREATE DATABASE wl STRATEGY WAL_LOG`);
  await pg.sql(`CREATE TABLE in_wl (id int PRIMARY KEY); INSERT INTO in_wl SELECT generate_series(1, 3000); VACUUM in_wl;`, { db: "wl" });
  await pg.sql(`VACUUM FULL pgbench_tellers; CLUSTER t USING t_pkey; CHECKPOINT;`);
  await pg.pgbench(["-c", "2", "-j", "2", "-t", "50", "-n"]);
}

/** relfilenode -> rmid of the relation's access method, from every connectable database. */
export async function accessMethods(pg: PgServer): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const dbs = await pg.rows(`SELECT oid, datname FROM pg_database WHERE datallowconn`);
  if (process.env.WALINGEST_DEBUG) console.log(JSON.stringify(dbs));
  for (const [dbOid, datname] of dbs) {
    const rows = await pg.rows(
      `SELECT c.relisshared, pg_relation_filenode(c.oid), c.relkind, coalesce(a.amname, '') FROM pg_class c LEFT JOIN pg_am a ON a.oid = c.relam WHERE pg_relation_filenode(c.oid) IS NOT NULL`,
      { db: datname! },
    );
    for (const [shared, node, kind, am] of rows) {
      const rmid = kind === "S" ? RM.seq : (AM_RMID[am!] ?? RM.heap);
      out.set(`${shared === "t" ? 0 : dbOid}/${node}`, rmid);
    }
  }
  return out;
}

/**
 * nextval() WAL-logs SEQ_LOG_VALS (32) values ahead: the record (and so redo)
 * has last_value + log_cnt with log_cnt 0, the server's page the value
 * handed out and the remaining log_cnt. True when the masked pages differ
 * exactly that way.
 */
function sequenceLoggedAhead(ours: Uint8Array, server: Uint8Array): boolean {
  const vs = new DataView(server.buffer, server.byteOffset, server.byteLength);
  const vo = new DataView(ours.buffer, ours.byteOffset, ours.byteLength);
  const lpOff = vs.getUint32(24, true) & 0x7fff;
  const data = lpOff + server[lpOff + 22]!; // t_hoff
  if (vo.getUint32(24, true) !== vs.getUint32(24, true) || data + 17 > BLCKSZ) return false;
  const ok =
    vo.getBigInt64(data, true) === vs.getBigInt64(data, true) + vs.getBigInt64(data + 8, true) &&
    vo.getBigInt64(data + 8, true) === 0n;
  const rest = (x: Uint8Array) => Buffer.concat([x.subarray(0, data), x.subarray(data + 16)]);
  return ok && rest(ours).equals(rest(server));
}

/** Fallback for relations of databases we cannot connect to (template0): the special space tells btree from heap. */
function guessRmid(page: Uint8Array): number {
  const special = new DataView(page.buffer, page.byteOffset).getUint16(16, true);
  return special === BLCKSZ ? RM.heap : RM.btree;
}

export interface Fixture {
  readonly snap: string;
  readonly snapCf: ControlFileData;
  readonly dataDir: string;
  readonly walDir: string;
  readonly ams: Map<string, number>;
  readonly twoPhaseOnServer: string[][];
  readonly walLogDbOid: number;
  /** For rm_mask requests. */
  readonly pool: WalRedoPool;
}

/** Stops `pg`, copies its cleanly stopped data directory to `snap` (owners and modes kept), starts it again. */
export async function snapshotStoppedCluster(pg: PgServer, snap: string): Promise<void> {
  await pg.stop("fast");
  const copy = await runProgram("/bin/cp", ["-a", pg.dataDir, snap]);
  assert.equal(copy.code, 0, copy.stderr);
  await pg.start();
}

/** The fixture of a workload run on `pg` (still running: the catalog facts are queried) from snapshot `snap`. */
export async function serverFixture(pg: PgServer, snap: string, pool: WalRedoPool): Promise<Fixture> {
  return {
    snap,
    snapCf: parseControlFile(new Uint8Array(await readFile(join(snap, "global", "pg_control")))),
    dataDir: pg.dataDir,
    walDir: pg.walDir,
    ams: await accessMethods(pg),
    twoPhaseOnServer: await pg.rows(`SELECT transaction::text, gid FROM pg_prepared_xacts`),
    walLogDbOid: Number(await pg.sql(`SELECT oid FROM pg_database WHERE datname = 'wl'`)),
    pool,
  };
}

export type Store = DatadirReader & DatadirWriter & { readonly lastRecordLsn: Lsn };

/** Imports the snapshot into `store`, ingests all WAL after it, and compares the result with the server's files. */
export async function ingestAndCompare(label: string, store: Store, fx: Fixture, expect: { recordTypes: readonly string[]; truncateFlags?: number; multixacts?: boolean }): Promise<void> {
  const ctx = requestContext("other", new AbortController().signal);
  const snapCf = fx.snapCf;
  const tStart = Date.now();
  // import + ingest everything after the snapshot's shutdown checkpoint
  const reader = await WalFileReader.open(fx.walDir, { start: snapCf.checkPoint });
  let ingest: WalIngest | undefined;
  let importLsn: Lsn | undefined;
  let records = 0;
  const seenTypes = new Set<string>();
  let truncateFlags = 0;
  let walBytes = 0n;
  for await (const batch of reader.batches()) {
    for (const rec of batch) {
      if (importLsn === undefined) {
        assert.equal(rec.lsn, snapCf.checkPoint, "first record read is the snapshot's checkpoint");
        importLsn = recordVersionLsn(rec);
        const summary = await importDatadir(fx.snap, importLsn, store);
        assert.ok(summary.relationBlocks > 1000, `imported ${summary.relationBlocks} blocks`);
        ingest = new WalIngest(store, store, { startLsn: importLsn });
        continue;
      }
      await ingest!.ingestRecord(rec, ctx);
      seenTypes.add(`${rmgrName(rec.rmid)}/${recordTypeName(rec.rmid, rec.info)}`);
      if (rec.rmid === RM_SMGR && (rec.info & 0xf0) === 0x20) truncateFlags |= new DataView(rec.mainData.buffer, rec.mainData.byteOffset).getUint32(16, true);
      records++;
      walBytes = rec.endLsn - importLsn;
    }
  }
  assert.ok(ingest && importLsn !== undefined);
  const endLsn = store.lastRecordLsn;
  // the workload reached the record types this test is about
  for (const t of expect.recordTypes) {
    assert.ok([...seenTypes].some((s) => s.startsWith(t)), `the workload wrote no ${t} record (seen: ${[...seenTypes].sort().join(", ")})`);
  }
  if (expect.truncateFlags !== undefined) assert.equal(truncateFlags, expect.truncateFlags, "SMGR TRUNCATE flags seen");
  const tIngest = Date.now();
  const ingestMs = tIngest - tStart;

  const summary = await compareWithServer(store, fx, endLsn);
  assert.deepEqual(ingest.ingestCounters, summary.counters);
  if (expect.multixacts) assert.ok(summary.counters.nextMulti > 1, "the workload created multixacts");
  console.log(
    `walingest (${label}): ${records} records, ${(Number(walBytes) / 1048576).toFixed(1)} MiB WAL from ${formatLsn(importLsn)} to ${formatLsn(endLsn)}; ` +
      `ingest ${ingestMs} ms (${(Number(walBytes) / 1048576 / (ingestMs / 1000)).toFixed(1)} MiB/s incl. import); stats ${JSON.stringify(ingest.stats)}; ${summary.text}`,
  );
}

/** What compareWithServer checked. */
export interface CompareSummary {
  /** pg_control's final checkpoint counters (equal to the store's checkpoint value). */
  counters: { nextFullXid: bigint; nextOid: number; nextMulti: number; nextMultiOffset: number };
  forks: number;
  pages: number;
  slruPages: number;
  text: string;
}

/**
 * Compares `store` read at `at` with the stopped server's files (fx.dataDir): database and relation
 * directories, relation sizes, every page of every main, VM and init fork (masked as
 * wal_consistency_checking does), SLRU segments, relmapper files, two-phase files, counters.
 */
export async function compareWithServer(store: DatadirReader, fx: Fixture, at: Lsn): Promise<CompareSummary> {
  const ctx = requestContext("other", new AbortController().signal);
  const tIngest = Date.now();
  const finalCf = parseControlFile(new Uint8Array(await readFile(join(fx.dataDir, "global", "pg_control"))));
  const disk = await relationFiles(fx.dataDir);

  // database directory
  const dbDir = decodeDbDir((await store.get(DBDIR_KEY, at, ctx))!);
  assert.deepEqual([...dbDir].sort(), [...disk.dbs].sort(), "database directory");

  // relation directories and sizes
  const byDb = new Map<bigint, RelFile[]>();
  for (const r of disk.rels) {
    const k = dbDirEntryId(r.spc, r.db);
    byDb.set(k, [...(byDb.get(k) ?? []), r]);
  }
  let forksChecked = 0;
  let trailingZeroPages = 0;
  const toCompare: Array<{ rel: RelFile; blocks: number }> = [];
  for (const [k, files] of byDb) {
    const spc = Number(k >> 32n);
    const db = Number(k & 0xffffffffn);
    const dir = decodeRelDir((await store.get(relDirKey(spc, db), at, ctx))!);
    const diskIds = new Set(files.map((f) => relDirEntryId(f.relNumber, f.fork)));
    for (const id of dir) assert.ok(diskIds.has(id), `db ${db}: rel ${Math.floor(id / 4)} fork ${id % 4} is in the rel dir but has no file`);
    for (const f of files) {
      const id = relDirEntryId(f.relNumber, f.fork);
      const unloggedMain = f.fork === 0 && files.some((x) => x.relNumber === f.relNumber && x.fork === 3);
      if (!dir.has(id)) {
        // FSM forks are created and written without WAL; so are unlogged main forks
        assert.ok(f.fork === 1 || unloggedMain, `db ${db}: ${f.path} (fork ${f.fork}) missing from the rel dir`);
        continue;
      }
      const tag = { spcOid: spc, dbOid: db, relNumber: f.relNumber, fork: f.fork };
      const size = decodeRelSize((await store.get(relSizeKey(tag), at, ctx))!);
      assert.ok(size !== undefined, `${f.path}: size says dropped`);
      forksChecked++;
      if (f.fork === 1 || unloggedMain) continue;
      if (size !== f.pages) {
        assert.ok(f.fork === 0 && size < f.pages, `${f.path}: size ${size}, file has ${f.pages} blocks`);
        const bytes = await readFile(f.path);
        for (let b = size; b < f.pages; b++) assert.ok(isZero(bytes.subarray(b * BLCKSZ, (b + 1) * BLCKSZ)), `${f.path}: block ${b} beyond our size ${size} is not empty`);
        trailingZeroPages += f.pages - size;
      }
      toCompare.push({ rel: f, blocks: size });
    }
  }

  // pages
  let pages = 0;
  let identical = 0;
  let zeroOnBoth = 0;
  let vmBitsLostByWalLog = 0;
  let sequencesLoggedAhead = 0;
  const mismatches: string[] = [];
  const queue = toCompare.flatMap(({ rel, blocks }) => Array.from({ length: blocks }, (_, blk) => ({ rel, blk })));
  const fileCache = new Map<string, Buffer>();
  const fileOf = async (p: string) => {
    let b = fileCache.get(p);
    if (!b) fileCache.set(p, (b = await readFile(p)));
    return b;
  };
  const workers = Array.from({ length: 4 }, async () => {
    for (let item = queue.shift(); item; item = queue.shift()) {
      const { rel, blk } = item;
      const diskPage = new Uint8Array((await fileOf(rel.path)).subarray(blk * BLCKSZ, (blk + 1) * BLCKSZ));
      const ours = (await store.get(relBlockKey({ spcOid: rel.spc, dbOid: rel.db, relNumber: rel.relNumber, fork: rel.fork }, blk), at, ctx)) ?? new Uint8Array(BLCKSZ);
      pages++;
      if (Buffer.compare(Buffer.from(ours), Buffer.from(diskPage)) === 0) {
        identical++;
        if (isZero(ours)) zeroOnBoth++;
        continue;
      }
      if (isZero(ours) !== isZero(diskPage)) {
        mismatches.push(`${rel.path} block ${blk}: ${isZero(ours) ? "ours is empty" : "server's is empty"}`);
        continue;
      }
      let a: Uint8Array = ours;
      let b: Uint8Array = diskPage;
      if (rel.fork === 2) {
        // VM pages: no rm_mask; compare without pd_lsn / checksum (bytes 0..7, 8..9)
        a = new Uint8Array(ours);
        b = new Uint8Array(diskPage);
        a.fill(0, 0, 10);
        b.fill(0, 0, 10);
        if (rel.db === fx.walLogDbOid && a.every((x, i) => (x & ~b[i]!) === 0)) {
          // CREATE DATABASE ... WAL_LOG logs VM pages as "standard" pages
          // (log_newpage_buffer(buf, true) in RelationCopyStorageUsingBuffer),
          // so the FPI drops everything between pd_lower and pd_upper: the
          // map. PostgreSQL's own standby ends with these bits clear, too
          // (clear bits are always safe); ours may only lack bits, never add.
          vmBitsLostByWalLog++;
          continue;
        }
      } else {
        const rmid = fx.ams.get(`${rel.db}/${rel.relNumber}`) ?? guessRmid(diskPage);
        [a, b] = await Promise.all([fx.pool.mask({ rmid, blockNumber: blk, page: ours }), fx.pool.mask({ rmid, blockNumber: blk, page: diskPage })]);
        if (rmid === RM.seq && sequenceLoggedAhead(a, b)) {
          sequencesLoggedAhead++;
          continue;
        }
        if (rmid === RM.spgist && blk === 0) {
          // SP-GiST metapage: the cached-pages area is updated without WAL
          a.fill(0, 28, 28 + 64);
          b.fill(0, 28, 28 + 64);
        }
      }
      if (Buffer.compare(Buffer.from(a), Buffer.from(b)) !== 0) {
        const diffs: number[] = [];
        for (let i = 0; i < BLCKSZ && diffs.length < 8; i++) if (a[i] !== b[i]) diffs.push(i);
        mismatches.push(`${rel.path} block ${blk} (first differing bytes ${diffs.map((i) => `${i}: ours ${a[i]} server ${b[i]}`).join(", ")})`);
      }
    }
  });
  await Promise.all(workers);
  assert.deepEqual(mismatches.slice(0, 20), [], `${mismatches.length} of ${pages} pages differ`);

  // SLRUs
  let slruPages = 0;
  for (const [kind, dir] of [
    [SlruKind.Clog, "pg_xact"],
    [SlruKind.MultiXactOffsets, "pg_multixact/offsets"],
    [SlruKind.MultiXactMembers, "pg_multixact/members"],
  ] as const) {
    const files = await slruFiles(join(fx.dataDir, dir));
    const segs = decodeSlruDir((await store.get(slruDirKey(kind), at, ctx))!);
    assert.deepEqual([...segs].sort(), [...files.keys()].sort(), `${dir} segments`);
    for (const [seg, bytes] of files) {
      const n = decodeSlruSegSize((await store.get(slruSegSizeKey(kind, seg), at, ctx))!);
      assert.equal(n, bytes.length / BLCKSZ, `${dir}/${seg} pages`);
      for (let p = 0; p < n; p++) {
        const ours = (await store.get(slruBlockKey(kind, seg, p), at, ctx)) ?? new Uint8Array(BLCKSZ);
        assert.ok(Buffer.from(ours).equals(bytes.subarray(p * BLCKSZ, (p + 1) * BLCKSZ)), `${dir}/${seg} page ${p} differs`);
        slruPages++;
      }
    }
  }

  // relmapper files
  for (const m of disk.relmaps) {
    const ours = await store.get(relmapKey(m.spc, m.db), at, ctx);
    assert.ok(ours && Buffer.from(ours).equals(await readFile(m.path)), `${m.path} differs`);
  }

  // two-phase state: the prepared transaction left over ('p2'), as the shutdown checkpoint wrote it
  const twoPhase = decodeTwoPhaseDir((await store.get(TWOPHASE_DIR_KEY, at, ctx))!);
  assert.deepEqual([...twoPhase].map(String).sort(), fx.twoPhaseOnServer.map((r) => r[0]!).sort());
  for (const xid of twoPhase) {
    const file = await readFile(join(fx.dataDir, "pg_twophase", xid.toString(16).toUpperCase().padStart(8, "0")));
    assert.ok(Buffer.from((await store.get(twoPhaseFileKey(xid), at, ctx))!).equals(file), `two-phase file of ${xid}`);
  }

  // counters
  const cp = parseCheckPoint((await store.get(CHECKPOINT_KEY, at, ctx))!);
  const want = finalCf.checkPointCopy;
  assert.equal(cp.nextXid, want.nextXid, "nextXid");
  assert.equal(cp.nextOid, want.nextOid, "nextOid");
  assert.equal(cp.nextMulti, want.nextMulti, "nextMulti");
  assert.equal(cp.nextMultiOffset, want.nextMultiOffset, "nextMultiOffset");

  return {
    counters: { nextFullXid: want.nextXid, nextOid: want.nextOid, nextMulti: want.nextMulti, nextMultiOffset: want.nextMultiOffset },
    forks: forksChecked,
    pages,
    slruPages,
    text:
      `${forksChecked} forks, ${pages} pages compared (${identical} identical, ${zeroOnBoth} zero), ` +
      `${sequencesLoggedAhead} sequences logged ahead, ${vmBitsLostByWalLog} VM pages with bits lost by CREATE DATABASE WAL_LOG, ${trailingZeroPages} unlogged zero pages at heap ends, ${slruPages} SLRU pages; compare ${Date.now() - tIngest} ms`,
  };
}
