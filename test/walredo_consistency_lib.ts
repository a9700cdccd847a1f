/**
 * The acceptance checks of the WAL redo helper against real PostgreSQL 15,
 * shared by the consistency test files (one file per server variant so the
 * runner can overlap them).
 *
 * `runConsistencyWorkload` starts a server, checkpoints (so every block's
 * first change afterwards carries a full-page image), runs a workload under
 * `wal_consistency_checking = 'all'` that exercises heap, btree, hash, GIN,
 * GiST, SP-GiST, BRIN, sequences and generic WAL (bloom), checkpoints again
 * and stops the server; it returns the decoded WAL since the first checkpoint
 * (our own decoder, src/formats/wal) and the final relation files.
 *
 * `checkConsistencyImages` is PostgreSQL's verifyBackupPageConsistency done
 * through strata: each block's records are replayed one request at a time,
 * from the previous replayed version, and wherever a record carries a
 * consistency image (an image without BKPIMAGE_APPLY), the replayed page
 * must equal the image after both are masked by the record's rm_mask.
 *
 * `checkRelationFiles` compares every page of the final relation files with
 * the replay from that block's last full-page image (or initializing record).
 *
 * `checkVariant` runs both for one server variant (compression, checksums,
 * wal_log_hints) with a small workload and asserts the results.
 */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Registry } from "prom-client";
import { formatLsn, segmentNumber, segmentOffset, walFileName, type Lsn } from "../src/lib/lsn.js";
import type { BlockRef, DecodedRecord } from "../src/formats/wal/decoded_record.js";
import { restoreFullPageImage } from "../src/formats/wal/fpi.js";
import { WalStreamDecoder } from "../src/formats/wal/wal_stream_decoder.js";
import { WalRedoMetrics } from "../src/walredo/metrics.js";
import { WalRedoError } from "../src/walredo/process.js";
import { WalRedoPool } from "../src/walredo/pool.js";
import { redoRecordOf } from "../src/walredo/protocol.js";
import { defaultWalRedoDir } from "../src/walredo/stub.js";
import { startPostgres, type PgServerOptions } from "./harness/pg_server.js";

export const RM_NAMES: Record<number, string> = {
  0: "XLOG",
  9: "Heap2",
  10: "Heap",
  11: "Btree",
  12: "Hash",
  13: "Gin",
  14: "Gist",
  15: "Sequence",
  16: "SPGist",
  17: "BRIN",
  20: "Generic",
};

/** The workload; `scale` multiplies row counts (WAL volume grows with it). */
export function workloadSql(scale: number): string {
  const n = (x: number) => Math.max(1, Math.round(x * scale));
  return `
SET wal_consistency_checking = 'all';
CREATE TABLE t (id int PRIMARY KEY, v text, n int, arr int[], p point);
-- heap inserts, btree inserts and splits (wide keys split sooner)
INSERT INTO t SELECT g, repeat('v', 40) || g, g % 10, ARRAY[g % 10, g % 7, g], point(g % 100, g / 100) FROM generate_series(1, ${n(1200)}) g;
CREATE INDEX t_v ON t (v);
-- multi-insert (COPY)
COPY t (id, v, n) FROM PROGRAM 'seq ${n(1200) + 1} ${n(1600)} | sed "s/$/\tcopy\t3/"';
-- btree deduplication: many equal keys
CREATE INDEX t_n ON t (n);
INSERT INTO t SELECT g, 'd' || g, 5, ARRAY[g], point(g, g) FROM generate_series(${n(1600) + 1}, ${n(2200)}) g;
-- HOT updates (v is indexed, arr is not), non-HOT updates, deletes, row locks
UPDATE t SET arr = arr || 1 WHERE id % 11 = 0;
UPDATE t SET n = n + 1 WHERE id % 13 = 0;
DELETE FROM t WHERE id % 3 = 0;
SELECT count(*) FROM (SELECT id FROM t WHERE id < 200 FOR UPDATE) s;
-- prune, vacuum, visible; btree vacuum and page deletion after a range delete
VACUUM t;
DELETE FROM t WHERE id > ${n(400)} AND id <= ${n(1400)};
VACUUM t;
VACUUM (FREEZE) t;
-- other access methods, built on existing data, then maintained
CREATE INDEX t_hash ON t USING hash (id);
CREATE INDEX t_gin ON t USING gin (arr);
CREATE INDEX t_gist ON t USING gist (p);
CREATE INDEX t_spgist ON t USING spgist (p);
CREATE INDEX t_brin ON t USING brin (id) WITH (pages_per_range = 1);
CREATE INDEX t_bloom ON t USING bloom (id, n);
INSERT INTO t SELECT g, 'w' || g, g % 10, ARRAY[g % 13, g], point(g % 50, g / 50) FROM generate_series(${n(3000)}, ${n(3000) + n(700)}) g;
UPDATE t SET p = point(p[0] + 0.5, p[1]), arr = arr || 2 WHERE id % 17 = 0;
DELETE FROM t WHERE id % 4 = 0;
VACUUM t;
-- HOT updates: room on the page (fillfactor), no indexed column changes
CREATE TABLE h (id int PRIMARY KEY, v int) WITH (fillfactor = 50);
INSERT INTO h SELECT g, 0 FROM generate_series(1, 200) g;
UPDATE h SET v = v + 1;
UPDATE h SET v = v + 1 WHERE id % 2 = 0;
-- btree page deletion (half-dead, unlink): a load without consistency images,
-- an index built on it, a range of whole leaf pages emptied, then vacuumed
-- with consistency images
SET wal_consistency_checking = '';
CREATE TABLE d (id int, pad text);
INSERT INTO d SELECT g, 'x' FROM generate_series(1, 5000) g;
CREATE INDEX d_id ON d (id);
DELETE FROM d WHERE id BETWEEN 1000 AND 4000;
SET wal_consistency_checking = 'all';
VACUUM d;
CREATE SEQUENCE s;
SELECT count(nextval('s')) FROM generate_series(1, 50);
`;
}

export interface RelationFile {
  readonly name: string;
  /** Resource manager whose rm_mask fits the relation's pages. */
  readonly rmid: number;
  readonly relNumber: number;
  readonly pages: Uint8Array[];
}

export interface WorkloadResult {
  readonly records: DecodedRecord[];
  readonly walBytes: bigint;
  readonly relations: RelationFile[];
}

/** Index access method → resource manager of its WAL (and of its rm_mask). */
const AM_RMID: Record<string, number> = { heap: 10, btree: 11, hash: 12, gin: 13, gist: 14, spgist: 16, brin: 17, bloom: 20 };

export async function runConsistencyWorkload(opts: PgServerOptions, scale: number): Promise<WorkloadResult> {
  const pg = await startPostgres({ ...opts, settings: { ...(opts.settings ?? {}), max_wal_size: "1GB", checkpoint_timeout: "1h", wal_keep_size: "1GB" } });
  try {
    await pg.sql("CREATE EXTENSION bloom");
    await pg.checkpoint();
    const start = await pg.currentWalLsn();
    await pg.sql(workloadSql(scale), { timeoutMs: 120_000 });
    await pg.checkpoint();
    const end = await pg.currentWalLsn();
    const rels = await pg.rows(
      "SELECT c.relname, am.amname, c.relfilenode, pg_relation_size(c.oid) / 8192 FROM pg_class c JOIN pg_am am ON am.oid = c.relam WHERE c.relname IN ('t', 't_pkey', 't_v', 't_n', 't_hash', 't_gin', 't_gist', 't_spgist', 't_brin', 't_bloom', 'h', 'h_pkey', 'd', 'd_id')",
    );
    const paths = new Map<string, string>();
    for (const [name] of rels) paths.set(name!, await pg.relationFilePath(name!));
    await pg.stop();
    const records = await readWal(pg.walDir, start, end);
    const relations: RelationFile[] = [];
    for (const [name, am, relfilenode, nblocks] of rels) {
      const file = await readFile(paths.get(name!)!);
      const pages: Uint8Array[] = [];
      for (let b = 0; b < Number(nblocks); b++) pages.push(new Uint8Array(file.subarray(b * 8192, (b + 1) * 8192)));
      relations.push({ name: name!, rmid: AM_RMID[am!] ?? 0, relNumber: Number(relfilenode), pages });
    }
    return { records, walBytes: end - start, relations };
  } finally {
    await pg.destroy();
  }
}

/** Decodes WAL from `start` (a record start) to `end` out of the segment files. */
export async function readWal(walDir: string, start: Lsn, end: Lsn): Promise<DecodedRecord[]> {
  const decoder = new WalStreamDecoder(start);
  const out: DecodedRecord[] = [];
  let seg = segmentNumber(start);
  let offset = segmentOffset(start);
  while (true) {
    const bytes = await readFile(join(walDir, walFileName(1, seg)));
    decoder.feed(bytes.subarray(offset));
    for (let r = decoder.next(); r; r = decoder.next()) {
      if (r.lsn >= end) return out;
      out.push(r);
    }
    if (segmentNumber(end) <= seg) return out;
    seg++;
    offset = 0;
  }
}

export interface ConsistencyStats {
  /** Replay requests sent (one per record and block). */
  replayed: number;
  /** Consistency images compared. */
  checked: number;
  /** ... of which were byte-identical even before masking. */
  identical: number;
  mismatches: string[];
  errors: string[];
  /** Blocks whose first record needed a page we never saw. */
  skippedNoBase: number;
  /** Checks PostgreSQL itself would skip (page LSN newer than the record). */
  skippedNewer: number;
  /** Checks per rmgr name and fork. */
  perRmgr: Record<string, number>;
  /** Checks per record type ("Heap 0x40"; heap op bits without XLOG_HEAP_INIT_PAGE). */
  perType: Record<string, number>;
}

/** Record type key for coverage: rmgr name and the type bits of xl_info. */
export function recordType(rmid: number, info: number): string {
  const bits = rmid === 9 || rmid === 10 ? info & 0x70 : info & 0xf0;
  return `${RM_NAMES[rmid] ?? rmid} 0x${bits.toString(16).padStart(2, "0")}`;
}

interface BlockStep {
  readonly record: DecodedRecord;
  readonly block: BlockRef;
}

function blockKey(b: BlockRef): string {
  return `${b.rel.spcOid}/${b.rel.dbOid}/${b.rel.relNumber}/${b.forkNum}/${b.blockNumber}`;
}

function groupByBlock(records: readonly DecodedRecord[]): Map<string, BlockStep[]> {
  const byBlock = new Map<string, BlockStep[]>();
  for (const record of records) {
    for (const block of record.blocks) {
      const k = blockKey(block);
      let list = byBlock.get(k);
      if (!list) byBlock.set(k, (list = []));
      list.push({ record, block });
    }
  }
  return byBlock;
}

/** Page LSN (pd_lsn: xlogid, xrecoff). */
function pageLsn(page: Uint8Array): bigint {
  const v = new DataView(page.buffer, page.byteOffset, page.byteLength);
  return (BigInt(v.getUint32(0, true)) << 32n) | BigInt(v.getUint32(4, true));
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** Runs `fn` over items with at most `limit` in flight. */
async function forEachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

export async function checkConsistencyImages(pool: WalRedoPool, records: readonly DecodedRecord[], opts: { setChecksum?: boolean } = {}): Promise<ConsistencyStats> {
  const st: ConsistencyStats = { replayed: 0, checked: 0, identical: 0, mismatches: [], errors: [], skippedNoBase: 0, skippedNewer: 0, perRmgr: {}, perType: {} };
  const chains = [...groupByBlock(records).entries()];
  await forEachLimited(chains, 16, async ([key, steps]) => {
    let page: Uint8Array | undefined;
    for (const { record, block } of steps) {
      const initializes = block.willInit || (block.image?.apply ?? false);
      if (!initializes && !page) {
        st.skippedNoBase++;
        continue;
      }
      const target = { rel: block.rel, forkNum: block.forkNum, blockNumber: block.blockNumber };
      try {
        page = await pool.apply({ target, records: [redoRecordOf(record)], ...(initializes ? {} : { basePage: page! }), setChecksum: opts.setChecksum ?? false });
      } catch (e) {
        if (!(e instanceof WalRedoError)) throw e;
        st.errors.push(`${key} at ${formatLsn(record.lsn)} (${RM_NAMES[record.rmid] ?? record.rmid} 0x${record.info.toString(16)}): ${e.message}`);
        page = undefined;
        continue;
      }
      st.replayed++;
      if (!block.image || block.image.apply) continue;
      const alignedEnd = (record.endLsn + 7n) & ~7n;
      if (pageLsn(page) > alignedEnd) {
        st.skippedNewer++;
        continue;
      }
      const image = restoreFullPageImage(block.image, { lsn: record.lsn, blockId: block.id });
      st.checked++;
      const name = `${RM_NAMES[record.rmid] ?? record.rmid} fork ${block.forkNum}`;
      st.perRmgr[name] = (st.perRmgr[name] ?? 0) + 1;
      const type = recordType(record.rmid, record.info);
      st.perType[type] = (st.perType[type] ?? 0) + 1;
      if (equalBytes(page, image)) {
        st.identical++;
        continue;
      }
      const [a, b] = await Promise.all([
        pool.mask({ rmid: record.rmid, blockNumber: block.blockNumber, page }),
        pool.mask({ rmid: record.rmid, blockNumber: block.blockNumber, page: image }),
      ]);
      if (!equalBytes(a, b)) st.mismatches.push(`${key} at ${formatLsn(record.lsn)} (${name} info 0x${record.info.toString(16)})`);
    }
  });
  return st;
}

export interface FileCheckStats {
  pages: number;
  identical: number;
  maskedEqual: number;
  mismatches: string[];
  /** Pages with no initializing record in the WAL we read (none expected). */
  noHistory: number;
  /** All-zero pages (extended, never written): nothing to compare. */
  zeroPages: number;
}

/**
 * Bytes PostgreSQL changes without WAL beyond what rm_mask hides: SP-GiST's
 * metapage caches recently used pages (SpGistUpdateMetaPage marks the buffer
 * dirty without logging), at [MAXALIGN(SizeOfPageHeaderData) + 4 (magic),
 * + 8 cached pages x 8 bytes).
 */
function unloggedRange(rel: RelationFile, blk: number): [number, number] | undefined {
  if (rel.rmid === 16 && blk === 0) return [28, 28 + 8 * 8];
  return undefined;
}

/** Every page of the final relation files vs the replay from the block's last image. */
export async function checkRelationFiles(pool: WalRedoPool, records: readonly DecodedRecord[], relations: readonly RelationFile[], opts: { setChecksum?: boolean } = {}): Promise<FileCheckStats> {
  const st: FileCheckStats = { pages: 0, identical: 0, maskedEqual: 0, mismatches: [], noHistory: 0, zeroPages: 0 };
  // relation number / fork / block -> steps (the tablespace and database are the test's only ones)
  const byBlock = new Map<string, BlockStep[]>();
  for (const [k, steps] of groupByBlock(records)) byBlock.set(k.split("/").slice(2).join("/"), steps);
  const work: { rel: RelationFile; blk: number; disk: Uint8Array }[] = [];
  for (const rel of relations) rel.pages.forEach((disk, blk) => work.push({ rel, blk, disk }));
  await forEachLimited(work, 16, async ({ rel, blk, disk }) => {
    if (disk.every((b) => b === 0)) {
      st.zeroPages++;
      return;
    }
    const steps = byBlock.get(`${rel.relNumber}/0/${blk}`);
    let from = -1;
    steps?.forEach((s, i) => {
      if (s.block.willInit || s.block.image?.apply) from = i;
    });
    if (!steps || from < 0) {
      st.noHistory++;
      return;
    }
    st.pages++;
    const first = steps[from]!;
    const target = { rel: first.block.rel, forkNum: 0, blockNumber: blk };
    const page = await pool.apply({ target, records: steps.slice(from).map((s) => redoRecordOf(s.record)), setChecksum: opts.setChecksum ?? false });
    if (equalBytes(page, disk)) {
      st.identical++;
      return;
    }
    const [a, b] = await Promise.all([pool.mask({ rmid: rel.rmid, blockNumber: blk, page }), pool.mask({ rmid: rel.rmid, blockNumber: blk, page: disk })]);
    const hint = unloggedRange(rel, blk);
    if (hint) {
      a.fill(0, hint[0], hint[1]);
      b.fill(0, hint[0], hint[1]);
    }
    if (equalBytes(a, b)) st.maskedEqual++;
    else st.mismatches.push(`${rel.name} block ${blk}`);
  });
  return st;
}

export interface VariantOptions {
  /** The source cluster's settings. */
  readonly server: PgServerOptions;
  /** The helpers' settings, which must match the cluster's. */
  readonly dataChecksums: boolean;
  readonly walLogHints?: boolean;
  /** Row-count multiplier of the workload. */
  readonly scale: number;
  /** Called with the workload's records and the pool before the checks (extra assertions). */
  readonly inspect?: (records: readonly DecodedRecord[], pool: WalRedoPool) => Promise<void>;
}

/**
 * Acceptance (1) and (2) for one server variant: every consistency image is
 * reproduced (all access methods present), and the checkpointed relation
 * files equal the replay from their last image. With checksums, replayed
 * pages are stamped, so byte-identical pages also prove the helper's
 * checksum equals the one PostgreSQL wrote.
 */
export async function checkVariant(name: string, v: VariantOptions): Promise<void> {
  const w = await runConsistencyWorkload(v.server, v.scale);
  const pool = new WalRedoPool({
    tenantId: name,
    dataChecksums: v.dataChecksums,
    walLogHints: v.walLogHints ?? false,
    processes: 2,
    baseDir: join(defaultWalRedoDir(), "consistency"),
    metrics: new WalRedoMetrics(new Registry()),
  });
  try {
    await v.inspect?.(w.records, pool);
    const st = await checkConsistencyImages(pool, w.records, { setChecksum: v.dataChecksums });
    console.log(`${name}: WAL ${w.walBytes} bytes, ${w.records.length} records; consistency:`, JSON.stringify({ ...st, perType: undefined, mismatches: st.mismatches.slice(0, 10), errors: st.errors.slice(0, 10) }));
    assert.deepEqual(st.errors, []);
    assert.deepEqual(st.mismatches, []);
    assert.ok(st.checked > 1000, `only ${st.checked} checks`);
    for (const rm of ["Heap", "Btree", "Hash", "Gin", "Gist", "SPGist", "BRIN", "Generic"]) {
      assert.ok((st.perRmgr[`${rm} fork 0`] ?? 0) > 0, `no ${rm} consistency image was checked`);
    }
    const files = await checkRelationFiles(pool, w.records, w.relations, { setChecksum: v.dataChecksums });
    console.log(`${name}: relation files:`, JSON.stringify({ ...files, mismatches: files.mismatches.slice(0, 10) }));
    assert.deepEqual(files.mismatches, []);
    assert.equal(files.noHistory, 0);
    assert.ok(files.identical > 0, "some replayed pages are byte-identical to the files");
  } finally {
    await pool.close();
  }
}
