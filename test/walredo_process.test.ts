/**
 * The real helper (walredo/strata_walredo.so in a single-user PostgreSQL 15)
 * driven through WalRedoProcess with synthetic but exact WAL records:
 * handshake, replay, checksums, masking, pipelining, every error path of one
 * request, PANIC survival, orderly close, and the start-up version check.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cp, chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { StrataError } from "../src/lib/errors.js";
import { lsn } from "../src/lib/lsn.js";
import { pageChecksum } from "../src/formats/page_checksum.js";
import { getPageChecksumField, setPageLsn } from "../src/formats/page.js";
import { TestHookOp, type RedoRecord } from "../src/walredo/protocol.js";
import { WalRedoError, WalRedoProcessError } from "../src/walredo/process.js";
import { DEFAULT_PG_BIN_DIR } from "../src/walredo/stub.js";
import { REL, RM_HEAP_ID, RecordLayout, commitRecord, corruptRecord, fpiRecord, samplePage, startTestProcess, type TestProcess } from "./walredo_fixtures.js";

let tp: TestProcess;
const target = (blockNumber = 0, forkNum = 0) => ({ rel: REL, forkNum, blockNumber });

before(async () => {
  tp = await startTestProcess({ testHooks: true });
});
after(async () => {
  await tp.dispose();
});

test("HELLO reports the protocol, the exact PostgreSQL version and the stub's settings", () => {
  const h = tp.proc.hello;
  assert.equal(h.protocolVersion, 1);
  assert.equal(h.builtPgVersionNum, h.runningPgVersionNum);
  assert.ok(h.builtPgVersionNum >= 150000 && h.builtPgVersionNum < 160000, `version ${h.builtPgVersionNum}`);
  assert.equal(h.blockSizeBytes, 8192);
  assert.equal(h.dataChecksums, false);
  assert.equal(h.testHooks, true);
  assert.ok(h.pid > 0);
});

test("a full-page image is restored and stamped with the record's end LSN", async () => {
  const layout = new RecordLayout();
  const r = fpiRecord(layout, samplePage(1), { blockNumber: 3 });
  const page = await tp.proc.apply({ target: target(3), records: [r] });
  assert.deepEqual(page, r.expected);
});

test("records apply in order: the last image wins, and a base page is replaced by an image", async () => {
  const layout = new RecordLayout();
  const recs = [1, 2, 3].map((i) => fpiRecord(layout, samplePage(i, i * 3), { blockNumber: 9 }));
  const page = await tp.proc.apply({ target: target(9), basePage: samplePage(99), records: recs });
  assert.deepEqual(page, recs[2]!.expected);
  // no records: the base page comes back untouched
  assert.deepEqual(await tp.proc.apply({ target: target(9), basePage: samplePage(5), records: [] }), samplePage(5));
});

test("images on the FSM, VM and init forks replay too (init forks are flushed only to /dev/null)", async () => {
  for (const forkNum of [1, 2, 3]) {
    const r = fpiRecord(new RecordLayout(), samplePage(forkNum), { forkNum, blockNumber: 0 });
    assert.deepEqual(await tp.proc.apply({ target: target(0, forkNum), records: [r] }), r.expected, `fork ${forkNum}`);
  }
});

test("records for other blocks leave the target unchanged", async () => {
  const r = fpiRecord(new RecordLayout(), samplePage(7), { blockNumber: 1 });
  const base = samplePage(8);
  assert.deepEqual(await tp.proc.apply({ target: target(2), basePage: base, records: [r] }), base);
});

test("setChecksum stamps pd_checksum as PostgreSQL computes it", async () => {
  const r = fpiRecord(new RecordLayout(), samplePage(4), { blockNumber: 12345 });
  const page = await tp.proc.apply({ target: target(12345), records: [r], setChecksum: true });
  assert.equal(getPageChecksumField(page), pageChecksum(page, 12345));
  assert.notEqual(getPageChecksumField(page), 0);
});

test("mask applies the resource manager's rm_mask and refuses malformed pages", async () => {
  const a = samplePage(3);
  const b = samplePage(3);
  setPageLsn(a, lsn(0x1234));
  setPageLsn(b, lsn(0x9999));
  assert.notDeepEqual(a, b);
  const ma = await tp.proc.mask({ rmid: RM_HEAP_ID, blockNumber: 0, page: a });
  const mb = await tp.proc.mask({ rmid: RM_HEAP_ID, blockNumber: 0, page: b });
  assert.deepEqual(ma, mb);
  const bad = samplePage(3);
  new DataView(bad.buffer).setUint16(12, 9000, true); // pd_lower past the page
  await assert.rejects(tp.proc.mask({ rmid: RM_HEAP_ID, blockNumber: 0, page: bad }), (e: unknown) => e instanceof WalRedoError && e.code === "invalid_argument" && /malformed page/.test(e.message));
  await assert.rejects(tp.proc.mask({ rmid: 99, blockNumber: 0, page: a }), /unknown resource manager 99/);
});

test("pipelined requests are answered in order, each with its own page", async () => {
  const layout = new RecordLayout();
  const recs = Array.from({ length: 300 }, (_, i) => fpiRecord(layout, samplePage(i, 1 + (i % 20)), { blockNumber: i }));
  const pages = await Promise.all(recs.map((r, i) => tp.proc.apply({ target: target(i), records: [r] })));
  pages.forEach((p, i) => assert.deepEqual(p, recs[i]!.expected, `request ${i}`));
});

async function assertClean(): Promise<void> {
  const s = await tp.proc.stats();
  assert.equal(s.pinned_buffers, 0, "no buffer stays pinned after a request");
  assert.equal(s.used_buffers, 0, "every touched buffer is dropped after a request");
  assert.equal(s.invalid_pages, 0);
}

interface ErrorCase {
  name: string;
  records: (layout: RecordLayout) => RedoRecord[];
  base?: boolean;
  code: string;
  sqlstate: string;
  message: RegExp;
  recordIndex?: number;
}

const errorCases: ErrorCase[] = [
  { name: "bad CRC", records: (l) => [corruptRecord(fpiRecord(l, samplePage(1)))], code: "corrupt_data", sqlstate: "XX001", message: /incorrect CRC in record at 0\/1000028/, recordIndex: 0 },
  {
    name: "truncated record",
    records: (l) => {
      const r = fpiRecord(l, samplePage(1));
      return [{ ...r, raw: r.raw.subarray(0, r.raw.length - 4) }];
    },
    code: "corrupt_data",
    sqlstate: "XX001",
    message: /says it is \d+ bytes long but \d+ bytes were sent/,
  },
  { name: "record shorter than a header", records: (l) => [{ ...l.place(new Uint8Array(24)), raw: new Uint8Array(10) }], code: "corrupt_data", sqlstate: "XX001", message: /shorter than a record header/ },
  { name: "refused record type (transaction commit)", records: (l) => [commitRecord(l)], code: "unsupported", sqlstate: "0A000", message: /resource manager 1 \(Transaction\).*not a per-page record/ },
  {
    name: "corrupt compressed image",
    records: (l) => [fpiRecord(l, samplePage(1), { compression: "pglz", compressedBytes: new Uint8Array(200).fill(0xa5) })],
    code: "corrupt_data",
    sqlstate: "XX000",
    message: /could not (decompress|restore) image/,
  },
  { name: "no base page for a record that needs one", records: (l) => [fpiRecord(l, samplePage(1), { apply: false })], code: "invalid_argument", sqlstate: "22023", message: /no previous version of the page was sent/ },
  { name: "ERROR inside a redo routine", base: true, records: (l) => [fpiRecord(l, samplePage(1), { apply: false })], code: "corrupt_data", sqlstate: "XX000", message: /unexpected XLogReadBufferForRedo result/ },
  {
    name: "good records, then a bad one",
    records: (l) => [fpiRecord(l, samplePage(1)), fpiRecord(l, samplePage(2)), corruptRecord(fpiRecord(l, samplePage(3)), 30)],
    code: "corrupt_data",
    sqlstate: "XX001",
    message: /incorrect CRC/,
    recordIndex: 2,
  },
  {
    name: "LSNs out of order",
    records: (l) => {
      const a = fpiRecord(l, samplePage(1));
      const b = fpiRecord(l, samplePage(2));
      return [b, a];
    },
    code: "invalid_argument",
    sqlstate: "22023",
    message: /inconsistent LSNs/,
  },
];

for (const c of errorCases) {
  test(`error for that request only: ${c.name}`, async () => {
    const layout = new RecordLayout();
    const records = c.records(layout);
    const err = await tp.proc.apply({ target: target(0), records, ...(c.base ? { basePage: samplePage(42) } : {}) }).then(
      () => assert.fail("expected an error reply"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof WalRedoError, `got ${String(err)}`);
    assert.equal(err.code, c.code, err.message);
    assert.equal(err.sqlstate, c.sqlstate, err.message);
    assert.match(err.message, c.message);
    if (c.recordIndex !== undefined) assert.equal(err.recordIndex, c.recordIndex);
    // the helper still serves, and nothing of the failed request is left behind
    const good = fpiRecord(new RecordLayout(), samplePage(77), { blockNumber: 0 });
    assert.deepEqual(await tp.proc.apply({ target: target(0), records: [good] }), good.expected);
    await assertClean();
  });
}

test("a PANIC in a redo routine (and an ERROR in a critical section) is an error reply, not a crash", async () => {
  const pid = tp.proc.pid;
  for (const op of [TestHookOp.panicInRedo, TestHookOp.errorInCriticalSection]) {
    const err = await tp.proc.testHook(op).then(
      () => assert.fail("expected an error"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof WalRedoError && err.panicCaught, String(err));
  }
  assert.equal(tp.proc.pid, pid);
  assert.ok(tp.proc.alive);
  const s = await tp.proc.stats();
  assert.ok(s.panics_caught! >= 2);
  await assertClean();
});

test("orderly close answers everything sent before EOF, then exits 0", async () => {
  const t = await startTestProcess();
  const layout = new RecordLayout();
  const recs = Array.from({ length: 20 }, (_, i) => fpiRecord(layout, samplePage(i), { blockNumber: i }));
  const pending = recs.map((r, i) => t.proc.apply({ target: target(i), records: [r] }));
  const closed = t.proc.close();
  const pages = await Promise.all(pending);
  pages.forEach((p, i) => assert.deepEqual(p, recs[i]!.expected));
  const info = await closed;
  assert.equal(info.code, 0);
  await t.dispose();
});

test("a killed helper fails its in-flight requests as 'process died'", async () => {
  const t = await startTestProcess({ testHooks: true });
  try {
    const sleeping = t.proc.testHook(TestHookOp.sleepMs, 5000);
    const queued = t.proc.apply({ target: target(0), records: [fpiRecord(new RecordLayout(), samplePage(1))] });
    t.proc.kill("test");
    for (const p of [sleeping, queued]) {
      await assert.rejects(p, (e: unknown) => e instanceof WalRedoProcessError && e.processDied && /ended while a .* request was in flight/.test(e.message));
    }
    assert.equal(t.proc.alive, false);
    await assert.rejects(t.proc.stats(), (e: unknown) => e instanceof WalRedoProcessError);
  } finally {
    await t.dispose();
  }
});

test("a data-checksum stub reports checksums on; a mismatch is refused at start", async () => {
  const t = await startTestProcess({ dataChecksums: true });
  try {
    assert.equal(t.proc.hello.dataChecksums, true);
  } finally {
    await t.dispose();
  }
});

const execFileP = promisify(execFile);

test("a helper built for another minor version refuses to start and says why", async () => {
  // Build a copy of the extension that claims to be for 15.17.
  const dir = await mkdtemp(join(tmpdir(), "strata-walredo-build-"));
  try {
    const src = new URL("../../walredo/", import.meta.url);
    for (const f of ["Makefile", "walredo.h", "walredo_main.c", "walredo_io.c", "walredo_apply.c"]) await cp(new URL(f, src), join(dir, f));
    const h = tp.proc.hello;
    const fake = h.builtPgVersionNum - 1;
    await execFileP("make", ["-s", "-C", dir, `PG_CONFIG=${DEFAULT_PG_BIN_DIR}/pg_config`, `PG_CPPFLAGS=-DWALREDO_BUILT_VERSION_NUM=${fake}`], { timeout: 120_000 });
    await chmod(dir, 0o755);
    const err = await startTestProcess({ extensionPath: join(dir, "strata_walredo.so") }).then(
      async (t) => {
        await t.dispose();
        assert.fail("a mismatched helper started");
      },
      (e: unknown) => e,
    );
    assert.ok(err instanceof StrataError, String(err));
    assert.match(err.message, new RegExp(`built for PostgreSQL 15\\.${fake % 100} \\(server_version_num ${fake}\\) but is running in PostgreSQL 15\\.${h.runningPgVersionNum % 100}`));
    assert.match(err.message, /Rebuild it|exited during start-up/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
