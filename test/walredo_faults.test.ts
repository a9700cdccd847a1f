/**
 * Acceptance (3): faults with real PostgreSQL 15 WAL, through the pool.
 * Each faulty request — a record with a bad CRC, a truncated record, a
 * corrupt compressed (pglz) full-page image, a refused record type, a record
 * whose redo routine PANICs — gets a clear error of its own while good
 * requests sent alongside it succeed on the same helper; killing the helper
 * mid-request costs nothing but a retry.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Registry } from "prom-client";
import { StrataError } from "../src/lib/errors.js";
import { initPage } from "../src/formats/page.js";
import type { BlockRef, DecodedRecord } from "../src/formats/wal/decoded_record.js";
import { sealRecord } from "../src/formats/wal/xlog_record.js";
import { WalRedoMetrics } from "../src/walredo/metrics.js";
import { WalRedoError } from "../src/walredo/process.js";
import { WalRedoPool } from "../src/walredo/pool.js";
import { redoRecordOf, type ApplyRequest, type RedoRecord } from "../src/walredo/protocol.js";
import { defaultWalRedoDir } from "../src/walredo/stub.js";
import { startPostgres } from "./harness/pg_server.js";
import { readWal } from "./walredo_consistency_lib.js";

let records: DecodedRecord[] = [];
let pool: WalRedoPool;
let registry: Registry;
/** Block 0 of table f: its record chain, starting with a compressed FPI. */
const chain: { record: DecodedRecord; block: BlockRef }[] = [];
let goodRequest: ApplyRequest;
let goodPage: Uint8Array;

before(async () => {
  const pg = await startPostgres({ walCompression: "pglz", settings: { wal_keep_size: "1GB" } });
  try {
    await pg.sql("CREATE TABLE f (id int, v text); INSERT INTO f VALUES (0, 'seed')");
    await pg.checkpoint();
    const start = await pg.currentWalLsn();
    // one statement per row: a heap INSERT record per row, the first with a pglz FPI
    await pg.sql(Array.from({ length: 20 }, (_, i) => `INSERT INTO f VALUES (${i + 1}, '${"x".repeat(50)}');`).join("\n"));
    await pg.checkpoint();
    const end = await pg.currentWalLsn();
    const rel = Number(await pg.sql("SELECT relfilenode FROM pg_class WHERE relname = 'f'"));
    await pg.stop();
    records = await readWal(pg.walDir, start, end);
    for (const record of records) {
      for (const block of record.blocks) {
        if (block.rel.relNumber === rel && block.forkNum === 0 && block.blockNumber === 0) chain.push({ record, block });
      }
    }
  } finally {
    await pg.destroy();
  }
  assert.ok(chain.length >= 20, `chain of ${chain.length} records`);
  assert.equal(chain[0]!.block.image?.compression, "pglz", "the chain starts with a pglz-compressed image");
  registry = new Registry();
  pool = new WalRedoPool({ tenantId: "faults", dataChecksums: false, pipelineDepth: 8, baseDir: join(defaultWalRedoDir(), "faults"), metrics: new WalRedoMetrics(registry), testHooks: true });
  const b = chain[0]!.block;
  goodRequest = { target: { rel: b.rel, forkNum: 0, blockNumber: 0 }, records: chain.map((s) => redoRecordOf(s.record)) };
  goodPage = await pool.apply(goodRequest);
});

after(async () => {
  await pool?.close();
});

/** Sends the bad request between good ones; returns its error. */
async function faulty(records: RedoRecord[], basePage?: Uint8Array): Promise<WalRedoError> {
  const pidBefore = pool.processes().map((p) => p.pid);
  const bad = pool.apply({ ...goodRequest, records, ...(basePage ? { basePage } : {}) }).then(
    () => assert.fail("the faulty request succeeded"),
    (e: unknown) => e,
  );
  const goods = Array.from({ length: 5 }, () => pool.apply(goodRequest));
  const err = await bad;
  for (const g of goods) assert.deepEqual(await g, goodPage, "a good request beside the faulty one");
  assert.deepEqual(pool.processes().map((p) => p.pid), pidBefore, "the same helper kept serving");
  assert.ok(err instanceof WalRedoError, String(err));
  const [s] = await pool.stats();
  assert.equal(s!.pinned_buffers, 0);
  assert.equal(s!.used_buffers, 0);
  return err;
}

function copyRecord(r: DecodedRecord): Uint8Array {
  return new Uint8Array(r.raw);
}

test("bad CRC in a real record", async () => {
  const raw = copyRecord(chain[3]!.record);
  raw[raw.length - 2] = raw[raw.length - 2]! ^ 0x10;
  const err = await faulty([{ ...redoRecordOf(chain[3]!.record), raw }], goodPage);
  assert.equal(err.code, "corrupt_data");
  assert.match(err.message, /incorrect CRC in record at [0-9A-F]+\/[0-9A-F]+/);
});

test("truncated record", async () => {
  const r = redoRecordOf(chain[3]!.record);
  const err = await faulty([{ ...r, raw: r.raw.subarray(0, r.raw.length - 7) }], goodPage);
  assert.equal(err.code, "corrupt_data");
  assert.match(err.message, /says it is \d+ bytes long but \d+ bytes were sent \(truncated record\?\)/);
});

test("corrupt compressed full-page image (CRC recomputed, so decompression itself must fail)", async () => {
  const first = chain[0]!;
  const raw = copyRecord(first.record);
  const img = first.block.image!.bytes;
  const at = img.byteOffset - first.record.raw.byteOffset;
  raw.fill(0xff, at, at + img.length);
  sealRecord(raw);
  const err = await faulty([{ ...redoRecordOf(first.record), raw }]);
  assert.equal(err.code, "corrupt_data");
  assert.match(err.message, /could not (decompress|restore) image/);
  assert.equal(err.recordIndex, 0);
});

test("refused record type (a real transaction commit)", async () => {
  const commit = records.find((r) => r.rmid === 1)!;
  assert.ok(commit, "the WAL holds a commit record");
  const err = await faulty([redoRecordOf(commit)], goodPage);
  assert.equal(err.code, "unsupported");
  assert.match(err.message, /refusing record at .* of resource manager 1 \(Transaction\).*not a per-page record/);
});

test("a real redo routine's PANIC (heap insert onto a page without room for its offset) is caught", async () => {
  // The 6th insert targets offset 7; on an empty page heap_xlog_insert finds
  // the offset past the page's items and calls elog(PANIC).
  const insert = chain[5]!.record;
  const err = await faulty([redoRecordOf(insert)], initPage(0));
  assert.equal(err.panicCaught, true);
  assert.match(err.message, /invalid max offset number|failed to add tuple/);
  assert.match(err.message, /WAL redo at .* for Heap\/INSERT/);
});

test("killing the helper mid-request: the requests in flight are retried and succeed", async () => {
  const pid = pool.processes()[0]!.pid;
  // a slow request first, so the replays are surely still in flight at the kill
  const slow = pool.testHook(1, 300);
  const inFlight = Array.from({ length: 7 }, () => pool.apply(goodRequest));
  assert.equal(pool.processes()[0]!.inFlight, 8);
  pool.processInSlot(0)!.kill("test: kill mid-request");
  await slow;
  for (const p of inFlight) assert.deepEqual(await p, goodPage);
  assert.notEqual(pool.processes()[0]!.pid, pid);
  const restarts = (await registry.getSingleMetric("strata_walredo_restarts_total")!.get()).values.reduce((n, v) => n + v.value, 0);
  assert.equal(restarts, 1);
  // and faults keep being per-request on the new helper
  const err = await pool.apply({ ...goodRequest, records: [{ ...goodRequest.records[1]!, raw: goodRequest.records[1]!.raw.subarray(0, 30) }], basePage: goodPage }).then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof StrataError && err.code === "corrupt_data");
});
