/**
 * Acceptance 4: full-page images decoded by strata (hole and compression
 * restored) are byte-identical to the page the server holds right after that
 * record — for wal_compression off, pglz, lz4 and zstd; pages with a hole
 * (heap, btree) and without (visibility map).
 *
 * Method: after CHECKPOINT (so the next change of every page logs an image),
 * run one statement, read the WAL it wrote with strata's decoder, and for
 * every block whose *last* record in that range carries an image, compare
 * the restored page — with pd_lsn stamped as redo does (see fpi.ts) — with
 * pageinspect's get_raw_page of the live buffer. Nothing is masked: every
 * byte outside the image's hole must be equal, and pages of the test table
 * and index after INSERT / UPDATE / DELETE / SELECT FOR UPDATE must be equal
 * in every byte. The one legitimate difference is inside the hole: an image
 * never stores the free space and redo restores it as zeros, while a live
 * page that was compacted (VACUUM, opportunistic prune) may still hold stale
 * bytes of removed items there — a PostgreSQL standby has zeros there too.
 * The same statements check heapVmClears: the VM page before the statement,
 * with the clears applied, must equal the VM page after it.
 *
 * One server; each statement sets wal_compression in its own session (the
 * setting is per backend and superuser-settable).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { withPostgres, type PgServer } from "./harness/pg_server.js";
import { runTool } from "./harness/tools.js";
import { formatLsn, parseLsn, type Lsn } from "../src/lib/lsn.js";
import type { DecodedRecord } from "../src/formats/wal/decoded_record.js";
import { WalFileReader } from "../src/formats/wal/wal_files.js";
import { restoreBlockImageForRedo, restoreFullPageImage } from "../src/formats/wal/fpi.js";
import { clearVmBits, heapVmClears, VISIBILITYMAP_ALL_FROZEN, VISIBILITYMAP_ALL_VISIBLE } from "../src/formats/wal/rmgr/heap.js";
import { getPageLsn } from "../src/formats/page.js";

const FORK_NAMES = ["main", "fsm", "vm", "init"] as const;

/** Bound on waiting for the WAL writer to flush (it runs every wal_writer_delay = 200 ms). */
const FLUSH_WAIT_MS = 10_000;

/**
 * Waits until WAL up to `upTo` is written out, so pg_wal holds every record
 * below it. (A transaction whose only WAL is its commit record commits
 * asynchronously, and statements like VACUUM commit nothing, so the WAL
 * writer is what writes their records.)
 */
async function waitForFlush(pg: PgServer, upTo: Lsn): Promise<void> {
  const deadline = Date.now() + FLUSH_WAIT_MS;
  for (;;) {
    const flushed = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    if (flushed >= upTo) return;
    if (Date.now() > deadline) throw new Error(`WAL not flushed to ${formatLsn(upTo)} within ${FLUSH_WAIT_MS} ms (at ${formatLsn(flushed)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function recordsBetween(pg: PgServer, start: Lsn, end: Lsn): Promise<DecodedRecord[]> {
  const reader = await WalFileReader.open(pg.walDir, { start, end });
  const out: DecodedRecord[] = [];
  for await (const r of reader.records()) if (r.lsn >= start) out.push(r);
  return out;
}

interface Compared {
  rel: string;
  fork: string;
  blk: number;
  hole: boolean;
  /** Byte-identical, hole included (else stale bytes in the live page's free space). */
  identical: boolean;
  compression: string;
  recordLsn: string;
}

/** Runs `statement` after a CHECKPOINT and compares every block image with the live page. */
async function runAndCompare(
  pg: PgServer,
  compression: string,
  statement: string,
  vmRel: string | undefined,
): Promise<{ compared: Compared[]; vmChecked: boolean; clears: number }> {
  // One psql call each for: checkpoint + start position (+ VM page before), the
  // statement, and all live pages after it — the machine is shared.
  const pre = (
    await pg.sql(
      `CHECKPOINT; SELECT pg_current_wal_lsn();` +
        (vmRel !== undefined ? ` SELECT encode(get_raw_page('${vmRel}', 'vm', 0), 'hex');` : ""),
    )
  ).split("\n");
  const start = parseLsn(pre[0] ?? "");
  const vmBefore = vmRel !== undefined ? Buffer.from(pre[1] ?? "", "hex") : undefined;
  // The statement's own output (if any) comes first; the insert LSN is the last line.
  const out = await pg.sql(`SET wal_compression = '${compression}'; ${statement}; SELECT pg_current_wal_insert_lsn();`);
  const end = parseLsn(out.split("\n").at(-1) ?? "");
  await waitForFlush(pg, end);
  const records = await recordsBetween(pg, start, end).catch(async (e: unknown) => {
    const dump = await runTool("pg_waldump", ["-p", pg.walDir, "-s", formatLsn(start)]);
    throw new Error(`reading ${formatLsn(start)}..${formatLsn(end)}: ${String(e)}\n${dump.stdout.slice(-4000)}${dump.stderr}`);
  });
  assert.ok(records.length > 0, `no WAL between ${formatLsn(start)} and ${formatLsn(end)} for: ${statement}`);

  // The last record touching each block decides what the live page must be.
  const last = new Map<string, { rec: DecodedRecord; blockId: number }>();
  for (const rec of records) {
    for (const b of rec.blocks) {
      last.set(`${b.rel.spcOid}/${b.rel.dbOid}/${b.rel.relNumber}/${b.forkNum}/${b.blockNumber}`, { rec, blockId: b.id });
    }
  }
  const withImage = [...last.values()].filter(({ rec, blockId }) => rec.blocks.find((x) => x.id === blockId)!.image !== undefined);
  const queries = withImage.map(({ rec, blockId }) => {
    const b = rec.blocks.find((x) => x.id === blockId)!;
    const rel = `pg_filenode_relation(0, ${b.rel.relNumber})::regclass`;
    return `SELECT ${rel}::text, encode(get_raw_page(${rel}::text, '${FORK_NAMES[b.forkNum]}', ${b.blockNumber}), 'hex')`;
  });
  if (vmRel !== undefined) queries.push(`SELECT '${vmRel}', encode(get_raw_page('${vmRel}', 'vm', 0), 'hex')`);
  const livePages = queries.length > 0 ? await pg.rows(queries.join(" UNION ALL ")) : [];
  assert.equal(livePages.length, queries.length);

  const compared: Compared[] = [];
  for (const [i, { rec, blockId }] of withImage.entries()) {
    const b = rec.blocks.find((x) => x.id === blockId)!;
    assert.ok(b.image !== undefined);
    assert.ok(b.image.apply, "without wal_consistency_checking every image is applied");
    const [name, hex] = livePages[i]!;
    assert.ok(name !== undefined && name !== "" && hex !== undefined, `relfilenode ${b.rel.relNumber} not found`);
    const fork = FORK_NAMES[b.forkNum]!;
    const live = new Uint8Array(Buffer.from(hex, "hex"));
    assert.equal(live.length, 8192);
    const restored = restoreBlockImageForRedo(rec, blockId);
    const where = `${name} ${fork} blk ${b.blockNumber} image of ${formatLsn(rec.lsn)} (${compression}, hole ${b.image.holeOffset}+${b.image.holeLength})`;
    const diffs: number[] = [];
    for (let i = 0; i < live.length; i++) if (restored[i] !== live[i]) diffs.push(i);
    // The only bytes allowed to differ are in the hole: an image never stores
    // the free space, and redo restores it as zeros, while the live page may
    // still hold stale bytes of items an earlier compaction removed (a
    // PostgreSQL standby's copy has zeros there too).
    const holeStart = b.image.holeOffset;
    const holeEnd = holeStart + b.image.holeLength;
    const outsideHole = diffs.filter((i) => i < holeStart || i >= holeEnd);
    assert.deepEqual(
      outsideHole,
      [],
      `page differs outside the hole at ${outsideHole.length} bytes (${outsideHole.slice(0, 16).map((i) => `${i}: ${restored[i]} vs ${live[i]}`).join(", ")}): ${where}\nafter: ${statement}`,
    );
    // The image itself was taken before PageSetLSN: it carries the page's previous LSN.
    const raw = restoreFullPageImage(b.image);
    assert.ok(getPageLsn(raw) < rec.lsn, `${where}: image LSN ${formatLsn(getPageLsn(raw))} not older than the record`);
    assert.deepEqual(raw.subarray(8), restored.subarray(8), where);
    compared.push({
      rel: name,
      fork,
      blk: b.blockNumber,
      hole: b.image.holeLength > 0,
      identical: diffs.length === 0,
      compression: b.image.compression,
      recordLsn: formatLsn(rec.lsn),
    });
  }

  let vmChecked = false;
  let clears = 0;
  if (vmRel !== undefined && vmBefore !== undefined) {
    const touchesVm = records.some((r) => r.blocks.some((b) => b.forkNum === 2));
    if (!touchesVm) {
      const expected = new Uint8Array(vmBefore);
      for (const rec of records) {
        for (const c of heapVmClears(rec)) {
          assert.equal(c.heapBlock, 0);
          clearVmBits(expected, c.heapBlock, (c.clearAllVisible ? VISIBILITYMAP_ALL_VISIBLE : 0) | (c.clearAllFrozen ? VISIBILITYMAP_ALL_FROZEN : 0));
          clears++;
        }
      }
      const vmAfter = new Uint8Array(Buffer.from(livePages.at(-1)![1]!, "hex"));
      assert.deepEqual(vmAfter, expected, `VM page after: ${statement}`);
      vmChecked = true;
    }
  }
  return { compared, vmChecked, clears };
}

test("FPIs restored by strata equal the live pages for wal_compression off, pglz, lz4, zstd", async () => {
  await withPostgres({ settings: { autovacuum: false } }, async (pg) => {
    await pg.sql("CREATE EXTENSION pageinspect");
    const summary: string[] = [];
    for (const compression of ["off", "pglz", "lz4", "zstd"]) {
      const t = `f_${compression}`;
      await pg.sql(
        `CREATE TABLE ${t} (id int, v text);
         INSERT INTO ${t} SELECT g, repeat('x', 20) || g FROM generate_series(1, 40) g;
         CREATE INDEX ${t}_id ON ${t} (id);
         VACUUM (FREEZE) ${t};`,
      );
      const all: Compared[] = [];
      const steps: Array<[string, string | undefined, number]> = [
        // [statement, relation whose VM page to check, expected VM clears]
        [`BEGIN; SELECT count(*) FROM (SELECT * FROM ${t} WHERE id = 3 FOR UPDATE) s; COMMIT;`, t, 1],
        [`INSERT INTO ${t} VALUES (1000, 'new row');`, t, 1],
        [`UPDATE ${t} SET v = 'updated' WHERE id = 5;`, t, 0],
        [`DELETE FROM ${t} WHERE id = 7;`, t, 0],
        [`VACUUM ${t};`, undefined, 0],
      ];
      let vmChecks = 0;
      for (const [statement, vmRel, expectedClears] of steps) {
        const r = await runAndCompare(pg, compression, statement, vmRel);
        all.push(...r.compared);
        // DML on our table and index, whose free space is still all zeros, must
        // give fully identical pages. (Catalog pages an opportunistic prune
        // compacted may keep stale bytes in their free space.)
        if (vmRel !== undefined) {
          for (const c of r.compared.filter((x) => x.rel.startsWith(t))) {
            assert.ok(c.identical, `not byte-identical after: ${statement}: ${JSON.stringify(c)}`);
          }
        }
        if (r.vmChecked) {
          vmChecks++;
          assert.equal(r.clears, expectedClears, `VM clears for: ${statement}`);
        }
      }
      assert.equal(vmChecks, 4, "the VM page was checked after each DML statement");
      const expectedMethod = compression === "off" ? "none" : compression;
      assert.ok(all.length >= 6, `only ${all.length} images compared with ${compression}`);
      assert.ok(all.some((c) => c.hole), `no image with a hole (${compression})`);
      assert.ok(all.some((c) => !c.hole), `no image without a hole (${compression})`);
      assert.ok(all.some((c) => c.fork === "vm"), "a visibility-map image was compared");
      assert.ok(all.some((c) => c.rel.endsWith("_id")), "a btree image was compared");
      for (const c of all) assert.ok(c.compression === expectedMethod || c.compression === "none", JSON.stringify(c));
      if (compression !== "off") assert.ok(all.some((c) => c.compression === expectedMethod), `no ${compression}-compressed image`);
      summary.push(
        `${compression}: ${all.length} pages compared, ${all.filter((c) => c.identical).length} byte-identical ` +
          `(${all.filter((c) => c.hole).length} with hole, ` +
          `${all.filter((c) => c.compression !== "none").length} compressed)`,
      );
    }
    console.log(`# FPI restore: ${summary.join("; ")}`);
  });
});
