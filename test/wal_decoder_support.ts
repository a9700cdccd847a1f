/**
 * Shared pieces of the WAL decoder integration tests: a workload that makes a
 * real PostgreSQL 15 server write a wide mix of record types, and the
 * comparison of strata's decoder with pg_waldump over the resulting pg_wal.
 *
 * The workload (pgbench init + run after a checkpoint, so FPIs are written;
 * DDL; VACUUM; TRUNCATE; CREATE DATABASE with both strategies; a prepared
 * transaction; a multixact from two concurrent FOR SHARE lockers; several
 * index access methods; a sequence; a logical message; a WAL switch) keeps
 * WAL in the tens of MB. The server is stopped before its WAL is read so
 * both readers see the same bytes.
 */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { withPostgres, type PgServer } from "./harness/pg_server.js";
import { runPgWaldump, type WaldumpRecord } from "./harness/waldump.js";
import { formatLsn, segmentStart, type Lsn } from "../src/lib/lsn.js";
import type { DecodedRecord } from "../src/formats/wal/decoded_record.js";
import { recordTypeName, rmgrName } from "../src/formats/wal/rmgr_names.js";
import { WalFileReader } from "../src/formats/wal/wal_files.js";
import { WalStreamDecoder } from "../src/formats/wal/wal_stream_decoder.js";
import { seededRandom as prng } from "../src/lib/prng.js";

/** Settings every decoder test server uses: keep all WAL, allow 2PC. */
export const DECODER_TEST_SETTINGS = {
  wal_keep_size: "1GB",
  max_prepared_transactions: 4,
  max_wal_size: "1GB",
};

/** Bound on waiting for the FOR SHARE holder to be visibly sleeping. */
const HOLDER_WAIT_MS = 20_000;

export async function runWorkload(pg: PgServer, opts: { pgbenchTransactions?: number } = {}): Promise<void> {
  await pg.pgbench(["-i", "-s", "1", "-q"]);
  await pg.checkpoint();
  await pg.pgbench(["-n", "-c", "2", "-t", String(opts.pgbenchTransactions ?? 150)]);
  await pg.sql(`
    CREATE TABLE t (a int PRIMARY KEY, b text, c int[], p point, r int4range);
    INSERT INTO t SELECT g, md5(g::text), ARRAY[g, g + 1], point(g, g), int4range(g, g + 10) FROM generate_series(1, 3000) g;
    CREATE INDEX t_b ON t (b);
    CREATE INDEX t_hash ON t USING hash (a);
    CREATE INDEX t_gin ON t USING gin (c);
    CREATE INDEX t_gist ON t USING gist (p);
    CREATE INDEX t_spgist ON t USING spgist (r);
    CREATE INDEX t_brin ON t USING brin (a);
    UPDATE t SET b = b || 'x' WHERE a % 3 = 0;
    DELETE FROM t WHERE a % 5 = 0;
    VACUUM t;
    CREATE SEQUENCE s;
    SELECT nextval('s') FROM generate_series(1, 40);
    SELECT pg_logical_emit_message(true, 'strata', 'hello');
    TRUNCATE t;
    DROP TABLE t;
  `);
  await pg.sql("CREATE DATABASE d_wal_log");
  await pg.sql("CREATE DATABASE d_file_copy STRATEGY FILE_COPY");
  await pg.sql("DROP DATABASE d_file_copy");
  await pg.sql("BEGIN; CREATE TABLE two_pc (a int); INSERT INTO two_pc VALUES (1); PREPARE TRANSACTION 'p1';");
  await pg.sql("COMMIT PREPARED 'p1'");
  await makeMultixact(pg);
  await pg.switchWal();
  await pg.pgbench(["-n", "-c", "1", "-t", "30"]);
}

/** Two concurrent FOR SHARE lockers of the same rows: PostgreSQL creates a multixact. */
async function makeMultixact(pg: PgServer): Promise<void> {
  const holder = pg.sql("BEGIN; SELECT 1 FROM pgbench_branches FOR SHARE; SELECT pg_sleep(3); COMMIT;", { timeoutMs: 60_000 });
  const deadline = Date.now() + HOLDER_WAIT_MS;
  for (;;) {
    const n = Number(
      // psql -f sends statement by statement: the holder is the session in pg_sleep.
      await pg.sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND pid <> pg_backend_pid()"),
    );
    if (n > 0) break;
    if (Date.now() > deadline) throw new Error("the FOR SHARE holder never started sleeping");
    await new Promise((r) => setTimeout(r, 100));
  }
  await pg.sql("BEGIN; SELECT 1 FROM pgbench_branches FOR SHARE; COMMIT;");
  await holder;
}

export interface WalDirComparison {
  ours: DecodedRecord[];
  theirs: WaldumpRecord[];
  start: Lsn;
}

/** Decodes pg_wal with strata and with pg_waldump from the first segment, asserting both stop at the end of WAL. */
export async function decodeBoth(walDir: string): Promise<WalDirComparison> {
  const reader = await WalFileReader.open(walDir);
  const start = segmentStart(reader.segments[0]!.segNo, reader.walSegSizeBytes);
  const ours: DecodedRecord[] = [];
  for await (const r of reader.records()) ours.push(r);
  assert.equal(reader.summary?.reason, "end_of_wal", JSON.stringify(reader.summary, (_k, v: unknown) => (typeof v === "bigint" ? formatLsn(v) : v)));
  const w = await runPgWaldump({ path: walDir, start });
  assert.match(w.stderr, /invalid record length at .*: wanted 24, got 0/);
  return { ours, theirs: w.records, start };
}

/** Asserts record-for-record equality of strata's decoding and pg_waldump's listing. */
export function assertSameAsWaldump(ours: readonly DecodedRecord[], theirs: readonly WaldumpRecord[]): void {
  assert.equal(ours.length, theirs.length, "record count");
  for (let i = 0; i < theirs.length; i++) {
    const o = ours[i]!;
    const t = theirs[i]!;
    const where = `record ${i} at ${formatLsn(t.lsn)}`;
    assert.equal(formatLsn(o.lsn), formatLsn(t.lsn), where);
    assert.equal(formatLsn(o.prevLsn), formatLsn(t.prevLsn), where);
    assert.equal(rmgrName(o.rmid), t.rmgr, where);
    const type = recordTypeName(o.rmid, o.info);
    assert.equal(type.split(" ")[0], t.type, where);
    assert.equal(o.totalLength, t.totalLen, where);
    let fpiLen = 0;
    for (const b of o.blocks) if (b.image) fpiLen += b.image.bytes.length;
    assert.equal(o.totalLength - fpiLen, t.recLen, where);
    assert.equal(o.xid, t.xid, where);
    assert.equal(o.blocks.length, t.blocks.length, `${where}: block count`);
    for (let j = 0; j < t.blocks.length; j++) {
      const ob = o.blocks[j]!;
      const tb = t.blocks[j]!;
      assert.deepEqual(
        { spc: ob.rel.spcOid, db: ob.rel.dbOid, rel: ob.rel.relNumber, fork: ob.forkNum, blk: ob.blockNumber, fpw: ob.image !== undefined, verify: ob.image ? !ob.image.apply : false },
        { spc: tb.spc, db: tb.db, rel: tb.rel, fork: tb.fork, blk: tb.blk, fpw: tb.fpw, verify: tb.fpwForVerification },
        `${where}: block ${j}`,
      );
    }
  }
}

/** The segments of `reader` as byte arrays, in LSN order. */
export async function readSegments(reader: WalFileReader): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for (const s of reader.segments) out.push(new Uint8Array(await readFile(s.path)));
  return out;
}

/**
 * Decodes whole segments fed in random-sized chunks (1 byte to 64 KiB) until
 * the end of WAL; returns the records.
 */
export function decodeInRandomChunks(segments: readonly Uint8Array[], start: Lsn, walSegSizeBytes: number, seed: number): DecodedRecord[] {
  const rnd = prng(seed);
  const d = new WalStreamDecoder(start, { walSegSizeBytes });
  const out: DecodedRecord[] = [];
  try {
    for (const seg of segments) {
      for (let i = 0; i < seg.length; ) {
        const n = 1 + Math.floor(rnd() ** 3 * 65536);
        d.feed(seg.subarray(i, i + n));
        i += n;
        for (let r = d.next(); r !== undefined; r = d.next()) out.push(r);
      }
    }
  } catch (e) {
    if (!(e instanceof Error && "endOfWal" in e && e.endOfWal === true)) throw e;
  }
  return out;
}

/**
 * Acceptance test body: a server with `compression` runs the workload; strata
 * must list exactly what pg_waldump lists, also when fed in random chunks.
 */
export async function checkDecoderAgainstWaldump(compression: "off" | "pglz" | "lz4" | "zstd", seed: number): Promise<string> {
  return await withPostgres({ walCompression: compression, settings: DECODER_TEST_SETTINGS }, async (pg) => {
    await runWorkload(pg);
    await pg.stop();
    const { ours, theirs, start } = await decodeBoth(pg.walDir);
    assertSameAsWaldump(ours, theirs);

    const types = new Set(ours.map((r) => `${rmgrName(r.rmid)}/${recordTypeName(r.rmid, r.info)}`));
    for (const t of [
      "XLOG/SWITCH",
      "XLOG/CHECKPOINT_ONLINE",
      "XLOG/FPI",
      "Transaction/PREPARE",
      "Transaction/COMMIT_PREPARED",
      "MultiXact/CREATE_ID",
      "Database/CREATE_WAL_LOG",
      "Database/CREATE_FILE_COPY",
      "Database/DROP",
      "Heap/HOT_UPDATE",
      "Heap2/PRUNE",
      "Btree/INSERT_LEAF",
      "Hash/INSERT",
      "Gin/INSERT",
      "Gist/PAGE_UPDATE",
      "SPGist/ADD_LEAF",
      "BRIN/CREATE_INDEX",
      "Sequence/LOG",
      "LogicalMessage/MESSAGE",
      "Storage/CREATE",
    ]) {
      assert.ok(types.has(t), `workload produced no ${t} record (have: ${[...types].sort().join(", ")})`);
    }
    const images = ours.flatMap((r) => r.blocks.flatMap((b) => (b.image ? [b.image] : [])));
    assert.ok(images.length > 100, `only ${images.length} full-page images`);
    const methods = new Set(images.map((i) => i.compression));
    if (compression === "off") assert.deepEqual([...methods], ["none"]);
    else assert.ok(methods.has(compression), `no ${compression}-compressed image among ${images.length}`);

    const reader = await WalFileReader.open(pg.walDir);
    const segments = await readSegments(reader);
    for (const s of [seed, seed + 1]) {
      const chunked = decodeInRandomChunks(segments, start, reader.walSegSizeBytes, s);
      assert.equal(chunked.length, ours.length, `seed ${s}: record count`);
      for (let i = 0; i < ours.length; i++) {
        assert.equal(chunked[i]!.lsn, ours[i]!.lsn);
        assert.ok(Buffer.from(chunked[i]!.raw).equals(Buffer.from(ours[i]!.raw)), `seed ${s}: record ${i} bytes`);
      }
    }
    return (
      `${ours.length} records (${types.size} rmgr/type pairs, ${images.length} images) identical to pg_waldump ` +
      `over ${segments.length} segments; same again fed in random chunks (seeds ${seed}, ${seed + 1})`
    );
  });
}
