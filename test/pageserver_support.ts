/**
 * Shared pieces of the pageserver's end-to-end tests against real PostgreSQL 15.
 *
 * `runCapturedWorkload` starts a server, creates pageinspect, stops it
 * cleanly (so its data directory can be imported at the end of the shutdown
 * checkpoint), starts it again and runs pgbench plus DDL, capturing at a few
 * quiet moments the insert LSN together with raw buffer pages of the pgbench
 * tables (time travel references). At the end it checkpoints, records every
 * relation fork's file, and stops the server; the WAL from the import LSN to
 * the end stays in pg_wal for the test to ingest.
 *
 * `comparePages` decides page equality as PostgreSQL's wal_consistency_checking
 * does: byte-identical, or identical after both pages went through the
 * resource manager's rm_mask in the redo helper (hint bits, unused space,
 * LSN/checksum). Visibility-map pages are compared with only the LSN and
 * checksum fields masked (their bitmap is all of their content).
 */
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { parseControlFile } from "../src/formats/pg_control.js";
import type { DecodedRecord } from "../src/formats/wal/decoded_record.js";
import { WalStreamDecoder } from "../src/formats/wal/wal_stream_decoder.js";
import { lsnAlign, parseLsn, segmentNumber, segmentOffset, walFileName, type Lsn } from "../src/lib/lsn.js";
import type { WalRedoPool } from "../src/walredo/pool.js";
import { startPostgres, type PgServer } from "./harness/pg_server.js";

export interface RelFork {
  readonly name: string;
  readonly spcOid: number;
  readonly dbOid: number;
  readonly relNumber: number;
  readonly fork: number;
  readonly rmid: number;
  readonly file: Uint8Array;
}

export interface Snapshot {
  readonly label: string;
  readonly lsn: Lsn;
  readonly pages: Array<{ relation: string; relNumber: number; block: number; page: Uint8Array }>;
}

export interface CapturedWorkload {
  readonly pg: PgServer;
  readonly dataDirCopy: string;
  readonly importLsn: Lsn;
  readonly endLsn: Lsn;
  readonly dbOid: number;
  readonly snapshots: Snapshot[];
  readonly relations: RelFork[];
}

/** Index access method -> resource manager whose rm_mask fits its pages. */
const AM_RMID: Record<string, number> = { heap: 10, btree: 11, hash: 12, gin: 13, gist: 14, spgist: 16, brin: 17 };
const RM_SEQ_ID = 15;

/** Quiet-moment capture of the pgbench tables' pages and the WAL insert position. */
async function snapshot(pg: PgServer, label: string, blocks: Array<[string, number]>): Promise<Snapshot> {
  const sel = blocks.map(([r, b]) => `encode(get_raw_page('${r}', 'main', ${b}), 'hex')`).join(", ");
  const rows = await pg.rows(`SELECT ${sel}, pg_current_wal_insert_lsn(), ${blocks.map(([r]) => `pg_relation_filenode('${r}')`).join(", ")}`);
  const row = rows[0]!;
  const n = blocks.length;
  return {
    label,
    lsn: parseLsn(row[n]!),
    pages: blocks.map(([relation, block], i) => ({ relation, block, relNumber: Number(row[n + 1 + i]), page: new Uint8Array(Buffer.from(row[i]!, "hex")) })),
  };
}

const SNAP_BLOCKS: Array<[string, number]> = [
  ["pgbench_branches", 0],
  ["pgbench_tellers", 0],
  ["pgbench_accounts", 0],
  ["pgbench_accounts", 7],
  ["pgbench_accounts", 100],
  ["pgbench_accounts_pkey", 1],
];

export async function runCapturedWorkload(opts: { pgbenchTransactions: number; settings?: Record<string, string | number | boolean> }): Promise<CapturedWorkload> {
  const pg = await startPostgres({
    settings: { max_wal_size: "1GB", checkpoint_timeout: "1h", wal_keep_size: "1GB", autovacuum: false, max_prepared_transactions: 5, ...(opts.settings ?? {}) },
  });
  try {
    await pg.sql("CREATE EXTENSION pageinspect");
    await pg.stop("fast");
    const cf = parseControlFile(new Uint8Array(await readFile(join(pg.dataDir, "global", "pg_control"))));
    // The import LSN: the end of the shutdown checkpoint record, where the next record starts.
    const first = await readWal(pg.walDir, cf.checkPoint, (cf.checkPoint + 1n) as Lsn, 1);
    const importLsn = lsnAlign(first[0]!.endLsn, 8);
    const { cp } = await import("node:fs/promises");
    const dataDirCopy = `${pg.dataDir}.import`;
    await cp(pg.dataDir, dataDirCopy, { recursive: true });
    await pg.start();

    const snapshots: Snapshot[] = [];
    await pg.pgbench(["-i", "-s", "1", "-q"]);
    snapshots.push(await snapshot(pg, "after pgbench -i", SNAP_BLOCKS));
    await pg.pgbench(["-c", "2", "-t", String(Math.ceil(opts.pgbenchTransactions / 2)), "-n"]);
    snapshots.push(await snapshot(pg, "after pgbench run 1", SNAP_BLOCKS));
    await pg.sql(`
      CREATE TABLE t (id int PRIMARY KEY, v text);
      INSERT INTO t SELECT g, repeat('x', g % 300) FROM generate_series(1, 20000) g;
      CREATE INDEX t_v ON t (v);
      DELETE FROM t WHERE id % 7 = 0;
      VACUUM t;
      CREATE TABLE gone (a int); INSERT INTO gone SELECT generate_series(1, 1000); DROP TABLE gone;
      CREATE TABLE tr (a int); INSERT INTO tr SELECT generate_series(1, 5000); TRUNCATE tr; INSERT INTO tr VALUES (1);
      CREATE SEQUENCE s; SELECT count(nextval('s')) FROM generate_series(1, 100);
      BEGIN; INSERT INTO t VALUES (100001, 'prepared'); PREPARE TRANSACTION 'p1';
      COMMIT PREPARED 'p1';
      CREATE DATABASE db2;
    `);
    await pg.pgbench(["-c", "2", "-t", String(Math.ceil(opts.pgbenchTransactions / 2)), "-n"]);
    snapshots.push(await snapshot(pg, "after DDL and pgbench run 2", SNAP_BLOCKS));
    await pg.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0; VACUUM pgbench_accounts;");
    snapshots.push(await snapshot(pg, "after update and vacuum", SNAP_BLOCKS));
    await pg.checkpoint();
    const dbOid = Number(await pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'"));
    const rels = await pg.rows(`
      SELECT c.relname, pg_relation_filepath(c.oid), COALESCE(am.amname, ''), c.relkind
      FROM pg_class c LEFT JOIN pg_am am ON am.oid = c.relam
      WHERE c.relkind IN ('r', 'i', 't', 'S', 'm') AND pg_relation_filepath(c.oid) IS NOT NULL
      ORDER BY c.oid`);
    await pg.stop("fast");
    const cf2 = parseControlFile(new Uint8Array(await readFile(join(pg.dataDir, "global", "pg_control"))));
    const endLsn = cf2.checkPoint; // the shutdown checkpoint: everything before it is in the files
    const relations: RelFork[] = [];
    for (const [name, path, am, kind] of rels) {
      const m = /^(?:global\/(\d+)|base\/(\d+)\/(\d+))$/.exec(path!);
      if (m === null) continue;
      const spcOid = m[1] !== undefined ? 1664 : 1663;
      const db = m[1] !== undefined ? 0 : Number(m[2]);
      const relNumber = Number(m[1] ?? m[3]);
      const rmid = kind === "S" ? RM_SEQ_ID : (AM_RMID[am!] ?? 10);
      for (const [fork, suffix] of [[0, ""], [2, "_vm"]] as const) {
        const file = await readRelationFile(join(pg.dataDir, path!) + suffix);
        if (file === undefined) continue;
        relations.push({ name: name! + suffix, spcOid, dbOid: db, relNumber, fork, rmid, file });
      }
    }
    return { pg, dataDirCopy, importLsn, endLsn, dbOid, snapshots, relations };
  } catch (e) {
    await pg.destroy();
    throw e;
  }
}

/** All 1 GiB segments of a relation fork, concatenated; undefined when the fork has no file. */
async function readRelationFile(path: string): Promise<Uint8Array | undefined> {
  let first: Buffer;
  try {
    first = await readFile(path);
  } catch {
    return undefined;
  }
  const parts = [first];
  for (let seg = 1; ; seg++) {
    try {
      parts.push(await readFile(`${path}.${seg}`));
    } catch {
      break;
    }
  }
  return new Uint8Array(Buffer.concat(parts));
}

/** Decodes WAL records starting at `start` (a record start) and beginning before `end`, from segment files. */
export async function readWal(walDir: string, start: Lsn, end: Lsn, limit = Number.MAX_SAFE_INTEGER): Promise<DecodedRecord[]> {
  const decoder = new WalStreamDecoder(start);
  const out: DecodedRecord[] = [];
  let seg = segmentNumber(start);
  let offset = segmentOffset(start);
  const names = new Set(await readdir(walDir));
  for (;;) {
    const name = walFileName(1, seg);
    if (!names.has(name)) return out;
    const bytes = await readFile(join(walDir, name));
    decoder.feed(bytes.subarray(offset));
    for (;;) {
      let r: DecodedRecord | undefined;
      try {
        r = decoder.next() ?? undefined;
      } catch (e) {
        if ((e as { endOfWal?: boolean }).endOfWal === true) return out; // zeros after the last record
        throw e;
      }
      if (r === undefined) break;
      if (r.lsn >= end) return out;
      out.push(r);
      if (out.length >= limit) return out;
    }
    seg++;
    offset = 0;
  }
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

export type PageVerdict = "identical" | "masked_equal" | "different";

/** wal_consistency_checking-style equality of a page we produced and PostgreSQL's page. */
export async function comparePages(pool: WalRedoPool, rmid: number, fork: number, block: number, ours: Uint8Array, theirs: Uint8Array): Promise<PageVerdict> {
  if (equal(ours, theirs)) return "identical";
  if (fork === 2) {
    const a = new Uint8Array(ours);
    const b = new Uint8Array(theirs);
    a.fill(0, 0, 10);
    b.fill(0, 0, 10);
    return equal(a, b) ? "masked_equal" : "different";
  }
  if (theirs.every((x) => x === 0) || ours.every((x) => x === 0)) return "different";
  const [a, b] = await Promise.all([pool.mask({ rmid, blockNumber: block, page: ours }), pool.mask({ rmid, blockNumber: block, page: theirs })]);
  return equal(a, b) ? "masked_equal" : "different";
}
