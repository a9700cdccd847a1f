/**
 * Unit tests of WalIngest's key-space mapping with synthetic records built by
 * the project's own WAL record encoder. A map-backed store keeps every
 * version so each test can check exactly what was put; the integration test
 * (test/walingest.test.ts) checks the result against real PostgreSQL.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../lib/errors.js";
import { lsn, lsnAlign, type Lsn } from "../lib/lsn.js";
import { requestContext } from "../lib/tasks.js";
import { initPage } from "../formats/page.js";
import { decodeRecord, encodeRecord, type BlockRefSpec } from "../formats/wal/xlog_record.js";
import type { DecodedRecord, RelFileNode } from "../formats/wal/decoded_record.js";
import { getClogStatus } from "../formats/wal/rmgr/clog.js";
import { encodeCheckPoint, parseCheckPoint, type CheckPoint } from "../formats/wal/rmgr/xlog.js";
import {
  dbDirEntryId,
  decodeDbDir,
  decodeRelDir,
  decodeRelSize,
  decodeSlruDir,
  decodeSlruSegSize,
  encodeDbDir,
  encodeRelDir,
  encodeSlruDir,
  encodeSlruSegSize,
  isZeroPageMarker,
  redoInputOf,
  relDirEntryId,
  type DatadirPut,
  type DatadirReader,
  type DatadirWriter,
} from "./datadir.js";
import {
  CHECKPOINT_KEY,
  DBDIR_KEY,
  LAST_COMMIT_KEY,
  SlruKind,
  relBlockKey,
  relDirKey,
  relSizeKey,
  relmapKey,
  slruBlockKey,
  slruDirKey,
  slruSegSizeKey,
  type Key,
  type RelTag,
} from "./key.js";
import type { RedoEngine, Value } from "./layers/value.js";
import { WalIngest, fsmLeafToPhysical, fsmTruncateAvail, vmTruncatePage, type FastIngestTarget } from "./walingest.js";
import { decodeLastCommit } from "./lsn_by_timestamp.js";

const ctx = requestContext("other", new AbortController().signal);
const REL: RelFileNode = { spcOid: 1663, dbOid: 5, relNumber: 16384 };
const main = (r: RelFileNode = REL): RelTag => ({ ...r, fork: 0 });

/** A WAL value as the fast path describes it (a copy: the fast path reuses `head`). */
function walValue(willInit: boolean, engine: RedoEngine | undefined, head: Uint8Array, body: Uint8Array): Value {
  return { kind: "wal", willInit, rec: concat(head, body), ...(engine === undefined ? {} : { engine }) };
}

/**
 * Keeps every version; reads return the newest image at or below the LSN.
 * With `fast` (the default) it also offers ingest's synchronous fast path,
 * as the Timeline does; without, every record takes the general path.
 */
class VersionStore implements DatadirReader, DatadirWriter {
  readonly versions = new Map<Key, Array<{ lsn: Lsn; value: Value }>>();
  last: Lsn = lsn(0);
  constructor(fast = true) {
    if (!fast) this.fastIngestTarget = undefined;
  }
  async put(entries: ReadonlyArray<DatadirPut>): Promise<void> {
    for (const e of entries) this.putOne(e.key, e.lsn, e.value);
  }
  private putOne(key: Key, at: Lsn, value: Value): void {
    const list = this.versions.get(key) ?? [];
    assert.ok(!list.some((v) => v.lsn === at), "one version per key and LSN");
    list.push({ lsn: at, value });
    this.versions.set(key, list);
  }
  /** LSNs of records whose versions came through the fast path. */
  readonly fastLsns = new Set<Lsn>();
  get fastRecords(): number {
    return this.fastLsns.size;
  }
  private readonly slotKeys: Key[] = [];
  private readonly target: FastIngestTarget = {
    put: (key, l, value) => this.fastPut(key, l, value),
    putWal: (key, l, willInit, engine, head, body) => this.fastPut(key, l, walValue(willInit, engine, head, body)),
    slotOf: (key) => {
      const i = this.slotKeys.indexOf(key);
      if (i >= 0) return i;
      this.slotKeys.push(key);
      return this.slotKeys.length - 1;
    },
    putAt: (slot, l, value) => this.fastPut(this.slotKeys[slot]!, l, value),
    putWalAt: (slot, l, willInit, engine, head, body) => this.fastPut(this.slotKeys[slot]!, l, walValue(willInit, engine, head, body)),
    forkSlots: (spcOid, dbOid, relNumber, fork) => ({ slotOf: (blk) => this.target.slotOf(relBlockKey({ spcOid, dbOid, relNumber, fork }, blk)) }),
  };
  private fastPut(key: Key, at: Lsn, value: Value): void {
    assert.ok(at > this.last, "fast puts are above the last record");
    this.fastLsns.add(at);
    // a copy, as a writer must make: the fast path reuses its image pages
    this.putOne(key, at, value.kind === "image" ? { kind: "image", bytes: value.bytes.slice() } : value);
  }
  fastIngestTarget?: (at: Lsn) => FastIngestTarget | undefined = () => this.target;
  finishRecord(end: Lsn): void {
    this.last = end;
  }
  async get(key: Key, at: Lsn): Promise<Uint8Array | undefined> {
    const list = (this.versions.get(key) ?? []).filter((v) => v.lsn <= at);
    const newest = list[list.length - 1];
    if (!newest) return undefined;
    if (isZeroPageMarker(newest.value)) return new Uint8Array(8192);
    if (newest.value.kind !== "image") throw new Error(`test store cannot replay ${key.toString(16)}`);
    return newest.value.bytes;
  }
  latest(key: Key): Value | undefined {
    const list = this.versions.get(key);
    return list?.[list.length - 1]?.value;
  }
  image(key: Key): Uint8Array {
    const v = this.latest(key);
    assert.ok(v?.kind === "image", `latest version of ${key.toString(16)} is an image`);
    return v.bytes;
  }
}

const CHECKPOINT: CheckPoint = {
  redo: lsn(0x1000000),
  thisTimeLineId: 1,
  prevTimeLineId: 1,
  fullPageWrites: true,
  nextXid: (1n << 32n) | 1000n,
  nextOid: 20000,
  nextMulti: 1,
  nextMultiOffset: 0,
  oldestXid: 700,
  oldestXidDb: 1,
  oldestMulti: 1,
  oldestMultiDb: 1,
  time: 0n,
  oldestCommitTsXid: 0,
  newestCommitTsXid: 0,
  oldestActiveXid: 0,
};

/** A store bootstrapped like an import: checkpoint, db dir, an empty rel dir, clog page 0. */
async function setup(cp: CheckPoint = CHECKPOINT, fast = true): Promise<{ store: VersionStore; ingest: WalIngest; rec: (spec: Omit<Parameters<typeof encodeRecord>[0], "prevLsn">) => DecodedRecord }> {
  const store = new VersionStore(fast);
  const at = lsn(0x1000000);
  const img = (bytes: Uint8Array): Value => ({ kind: "image", bytes });
  await store.put([
    { key: CHECKPOINT_KEY, lsn: at, value: img(encodeCheckPoint(cp)) },
    { key: DBDIR_KEY, lsn: at, value: img(encodeDbDir([dbDirEntryId(1663, 5)])) },
    { key: relDirKey(1663, 5), lsn: at, value: img(encodeRelDir([])) },
    { key: slruDirKey(SlruKind.Clog), lsn: at, value: img(encodeSlruDir([0])) },
    { key: slruSegSizeKey(SlruKind.Clog, 0), lsn: at, value: img(encodeSlruSegSize(1)) },
    { key: slruBlockKey(SlruKind.Clog, 0, 0), lsn: at, value: img(new Uint8Array(8192)) },
  ]);
  const ingest = new WalIngest(store, store, { startLsn: at });
  let next = lsn(0x1000028);
  let prev = at;
  const rec = (spec: Omit<Parameters<typeof encodeRecord>[0], "prevLsn">) => {
    const raw = encodeRecord({ ...spec, prevLsn: prev });
    const r = decodeRecord(raw, next, lsn(next + BigInt(raw.length)));
    prev = next;
    next = lsnAlign(r.endLsn);
    return r;
  };
  return { store, ingest, rec };
}

function heapInsert(blockNumber: number, opts: { init?: boolean; flags?: number; rel?: RelFileNode } = {}): Omit<Parameters<typeof encodeRecord>[0], "prevLsn"> {
  const block: BlockRefSpec = { id: 0, forkNum: 0, rel: opts.rel ?? REL, blockNumber, willInit: opts.init ?? false, data: new Uint8Array(40) };
  return { rmid: 10, info: opts.init ? 0x80 : 0x00, xid: 1001, mainData: new Uint8Array([1, 0, opts.flags ?? 0]), blocks: [block] };
}

function u32s(...vals: number[]): Uint8Array {
  const out = new Uint8Array(vals.length * 4);
  vals.forEach((v, i) => new DataView(out.buffer).setUint32(i * 4, v >>> 0, true));
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

/** xl_xact_commit / abort with subxacts and dropped relations (XLOG_XACT_HAS_INFO). */
function xactCompletion(info: number, xid: number, subxacts: number[], rels: RelFileNode[]): Omit<Parameters<typeof encodeRecord>[0], "prevLsn"> {
  const xinfo = (subxacts.length ? 2 : 0) | (rels.length ? 4 : 0);
  const body = concat(
    new Uint8Array(8),
    u32s(xinfo),
    subxacts.length ? u32s(subxacts.length, ...subxacts) : new Uint8Array(0),
    rels.length ? u32s(rels.length, ...rels.flatMap((r) => [r.spcOid, r.dbOid, r.relNumber])) : new Uint8Array(0),
  );
  return { rmid: 1, info: info | 0x80, xid, mainData: body };
}

test("a block beyond the end extends the fork: rel dir entry, size, zero-page markers for the gap, will-init record", async () => {
  const { store, ingest, rec } = await setup();
  const r1 = rec(heapInsert(3));
  await ingest.ingestRecord(r1, ctx);
  assert.deepEqual([...decodeRelDir(store.image(relDirKey(1663, 5)))], [relDirEntryId(REL.relNumber, 0)]);
  assert.equal(decodeRelSize(store.image(relSizeKey(main()))), 4);
  for (const b of [0, 1, 2]) assert.ok(isZeroPageMarker(store.latest(relBlockKey(main(), b))!), `block ${b} is a zero page`);
  const v3 = store.latest(relBlockKey(main(), 3))!;
  assert.ok(v3.kind === "wal" && v3.willInit && v3.engine === "postgres", "the extending record needs no older version");
  assert.equal(store.last, lsnAlign(r1.endLsn));

  // a record on an existing block is not will-init
  await ingest.ingestRecord(rec(heapInsert(1)), ctx);
  const v1 = store.latest(relBlockKey(main(), 1))!;
  assert.ok(v1.kind === "wal" && !v1.willInit);
  const input = redoInputOf(v1);
  assert.equal(input.kind, "wal");

  // truncate to 1 block, then touch block 2 again: the stale versions of block 1 and 2 are shadowed
  const trunc = concat(u32s(1, REL.spcOid, REL.dbOid, REL.relNumber, 7));
  await ingest.ingestRecord(rec({ rmid: 2, info: 0x20, mainData: trunc }), ctx);
  assert.equal(decodeRelSize(store.image(relSizeKey(main()))), 1);
  await ingest.ingestRecord(rec(heapInsert(2)), ctx);
  assert.equal(decodeRelSize(store.image(relSizeKey(main()))), 3);
  assert.ok(isZeroPageMarker(store.latest(relBlockKey(main(), 1))!));
  const v2 = store.latest(relBlockKey(main(), 2))!;
  assert.ok(v2.kind === "wal" && v2.willInit);
});

test("full-page images with APPLY are stored as page images stamped with the record's end", async () => {
  const { store, ingest, rec } = await setup();
  const page = initPage(0);
  const r = rec({ rmid: 0, info: 0xb0, blocks: [{ id: 0, forkNum: 0, rel: REL, blockNumber: 0, image: { bytes: page } }] });
  await ingest.ingestRecord(r, ctx);
  const img = store.image(relBlockKey(main(), 0));
  assert.equal(new DataView(img.buffer, img.byteOffset).getUint32(4, true), Number(lsnAlign(r.endLsn) & 0xffffffffn));
  // an XLOG FPI whose image is not to be applied is corrupt
  const bad = rec({ rmid: 0, info: 0xb0, blocks: [{ id: 0, forkNum: 0, rel: REL, blockNumber: 1, image: { bytes: page, apply: false } }] });
  await assert.rejects(async () => ingest.ingestRecord(bad, ctx), (e: unknown) => e instanceof StrataError && e.code === "corrupt_data");
});

test("heap records that clear VM bits put a native record on the VM page", async () => {
  const { store, ingest, rec } = await setup();
  await ingest.ingestRecord(rec(heapInsert(33000, { init: true, flags: 1 /* XLH_INSERT_ALL_VISIBLE_CLEARED */ })), ctx);
  const vmTag = { ...REL, fork: 2 };
  // heap block 33000 is on VM page 1 (32672 heap blocks per page)
  const v = store.latest(relBlockKey(vmTag, 1))!;
  assert.ok(v.kind === "wal" && v.engine === "native" && v.willInit, "VM page 1 created by the clear");
  assert.equal(decodeRelSize(store.image(relSizeKey(vmTag))), 2);
  assert.ok(isZeroPageMarker(store.latest(relBlockKey(vmTag, 0))!));
});

test("commit: clog bits for the xid and subxacts, dropped relations leave the rel dir with a dropped size", async () => {
  const { store, ingest, rec } = await setup();
  await ingest.ingestRecord(rec({ rmid: 2, info: 0x10, mainData: u32s(REL.spcOid, REL.dbOid, REL.relNumber, 0) }), ctx);
  await ingest.ingestRecord(rec({ rmid: 2, info: 0x10, mainData: u32s(REL.spcOid, REL.dbOid, REL.relNumber, 1) }), ctx);
  assert.equal(decodeRelDir(store.image(relDirKey(1663, 5))).size, 2);
  assert.equal(decodeRelSize(store.image(relSizeKey(main()))), 0);

  // subxact 40000 lives on clog page 1, which does not exist: redo reads it as zeros
  await ingest.ingestRecord(rec(xactCompletion(0x00, 1001, [1002, 40000], [REL])), ctx);
  const p0 = store.latest(slruBlockKey(SlruKind.Clog, 0, 0))!;
  assert.ok(p0.kind === "wal" && p0.engine === "native");
  const p1 = store.image(slruBlockKey(SlruKind.Clog, 0, 1));
  assert.equal(getClogStatus(p1, 40000), 1);
  assert.equal(decodeSlruSegSize(store.image(slruSegSizeKey(SlruKind.Clog, 0))), 2);
  assert.equal(decodeRelDir(store.image(relDirKey(1663, 5))).size, 0);
  assert.equal(decodeRelSize(store.image(relSizeKey(main()))), undefined);
  assert.equal(decodeRelSize(store.image(relSizeKey({ ...REL, fork: 1 }))), undefined);
  assert.equal(ingest.ingestCounters!.nextFullXid, (1n << 32n) | 40001n);
});

test("every COMMIT records (commit time, end LSN, xid) under the last-commit key; ABORT does not", async () => {
  const { store, ingest, rec } = await setup();
  const withTime = (info: number, xid: number, timeUs: bigint) => {
    const spec = xactCompletion(info, xid, [], []);
    new DataView(spec.mainData!.buffer, spec.mainData!.byteOffset).setBigInt64(0, timeUs, true);
    return spec;
  };
  const c1 = rec(withTime(0x00, 1001, 817_000_000_000_001n));
  await ingest.ingestRecord(c1, ctx);
  assert.deepEqual(decodeLastCommit(store.image(LAST_COMMIT_KEY)), { timestampUs: 817_000_000_000_001n, endLsn: lsnAlign(c1.endLsn), xid: 1001 });
  await ingest.ingestRecord(rec(withTime(0x20, 1002, 817_000_000_000_002n)), ctx); // ABORT
  assert.equal(store.versions.get(LAST_COMMIT_KEY)!.length, 1, "an abort changes no visible state");
  const c3 = rec(withTime(0x00, 1003, 817_000_000_000_003n));
  await ingest.ingestRecord(c3, ctx);
  const v = store.versions.get(LAST_COMMIT_KEY)!;
  assert.deepEqual(v.map((x) => x.lsn), [lsnAlign(c1.endLsn), lsnAlign(c3.endLsn)], "stored at each commit's end");
  assert.equal(decodeLastCommit(store.image(LAST_COMMIT_KEY)).xid, 1003);
});

test("next XID follows AdvanceNextFullTransactionIdPastXid across the epoch boundary; checkpoint value carries the counters", async () => {
  const { store, ingest, rec } = await setup({ ...CHECKPOINT, nextXid: (7n << 32n) | 0xfffffff0n });
  await ingest.ingestRecord(rec({ ...heapInsert(0, { init: true }), xid: 0xfffffffa }), ctx);
  assert.equal(ingest.ingestCounters!.nextFullXid, (7n << 32n) | 0xfffffffbn);
  await ingest.ingestRecord(rec({ ...heapInsert(0, { init: true }), xid: 0xffffffff }), ctx);
  assert.equal(ingest.ingestCounters!.nextFullXid, (8n << 32n) | 3n, "wraps past the special XIDs");
  await ingest.ingestRecord(rec({ ...heapInsert(0, { init: true }), xid: 5 }), ctx);
  assert.equal(ingest.ingestCounters!.nextFullXid, (8n << 32n) | 6n);
  await ingest.ingestRecord(rec({ ...heapInsert(0, { init: true }), xid: 4 }), ctx);
  assert.equal(ingest.ingestCounters!.nextFullXid, (8n << 32n) | 6n, "older XIDs do not move it");
  assert.equal(parseCheckPoint(store.image(CHECKPOINT_KEY)).nextXid, (8n << 32n) | 6n, "stored with the counters");
  // NEXTOID, then a shutdown checkpoint sets everything outright
  await ingest.ingestRecord(rec({ rmid: 0, info: 0x30, mainData: u32s(30000) }), ctx);
  assert.equal(ingest.ingestCounters!.nextOid, 30000);
  const cp = { ...CHECKPOINT, nextXid: (9n << 32n) | 100n, nextOid: 40000, nextMulti: 5, nextMultiOffset: 10 };
  await ingest.ingestRecord(rec({ rmid: 0, info: 0x00, mainData: encodeCheckPoint(cp) }), ctx);
  assert.deepEqual(ingest.ingestCounters, { nextFullXid: cp.nextXid, nextOid: 40000, nextMulti: 5, nextMultiOffset: 10 });
  assert.deepEqual(parseCheckPoint(store.image(CHECKPOINT_KEY)), cp);
  // an online checkpoint with older values moves nothing back and does not replay nextOid
  await ingest.ingestRecord(rec({ rmid: 0, info: 0x10, mainData: encodeCheckPoint({ ...cp, nextXid: (9n << 32n) | 50n, nextOid: 1 }) }), ctx);
  assert.deepEqual(ingest.ingestCounters, { nextFullXid: cp.nextXid, nextOid: 40000, nextMulti: 5, nextMultiOffset: 10 });
});

test("CREATE DATABASE FILE_COPY copies the source's relations, blocks and relmapper file; DROP DATABASE removes them", async () => {
  const { store, ingest, rec } = await setup();
  await ingest.ingestRecord(rec({ rmid: 0, info: 0xb0, blocks: [{ id: 0, forkNum: 0, rel: REL, blockNumber: 1, image: { bytes: initPage(0) } }] }), ctx);
  await store.put([{ key: relmapKey(1663, 5), lsn: store.last, value: { kind: "image", bytes: new Uint8Array(512).fill(7) } }]);
  // xl_dbase_create_file_copy_rec: db_id, tablespace_id, src_db_id, src_tablespace_id
  await ingest.ingestRecord(rec({ rmid: 4, info: 0x00, mainData: u32s(77, 1663, 5, 1663) }), ctx);
  assert.deepEqual([...decodeDbDir(store.image(DBDIR_KEY))].sort(), [dbDirEntryId(1663, 5), dbDirEntryId(1663, 77)].sort());
  const dst = { spcOid: 1663, dbOid: 77, relNumber: REL.relNumber, fork: 0 };
  assert.deepEqual([...decodeRelDir(store.image(relDirKey(1663, 77)))], [relDirEntryId(REL.relNumber, 0)]);
  assert.equal(decodeRelSize(store.image(relSizeKey(dst))), 2);
  assert.ok(isZeroPageMarker(store.latest(relBlockKey(dst, 0))!), "block without versions copies as a zero page");
  assert.equal(store.image(relBlockKey(dst, 1)).length, 8192);
  assert.deepEqual(store.image(relmapKey(1663, 77)), new Uint8Array(512).fill(7));
  // xl_dbase_drop_rec: db_id, ntablespaces, tablespace_ids[]
  await ingest.ingestRecord(rec({ rmid: 4, info: 0x20, mainData: u32s(77, 1, 1663) }), ctx);
  assert.deepEqual([...decodeDbDir(store.image(DBDIR_KEY))], [dbDirEntryId(1663, 5)]);
  assert.equal(decodeRelDir(store.image(relDirKey(1663, 77))).size, 0);
  assert.equal(decodeRelSize(store.image(relSizeKey(dst))), undefined);
});

test("multixact CREATE_ID: offsets (own and next page), members, counters; a pre-initialized page is not zeroed again", async () => {
  const { store, ingest, rec } = await setup();
  // multixact 2047 is the last on offsets page 0; the next one (2048) starts page 1, which does not exist
  await store.put([
    { key: slruDirKey(SlruKind.MultiXactOffsets), lsn: store.last, value: { kind: "image", bytes: encodeSlruDir([0]) } },
    { key: slruSegSizeKey(SlruKind.MultiXactOffsets, 0), lsn: store.last, value: { kind: "image", bytes: encodeSlruSegSize(1) } },
  ]);
  const body = concat(u32s(2047, 100, 2), u32s(1001, 1, 1002, 3));
  await ingest.ingestRecord(rec({ rmid: 6, info: 0x20, xid: 1002, mainData: body }), ctx);
  for (const [kind, seg, blk] of [
    [SlruKind.MultiXactOffsets, 0, 0],
    [SlruKind.MultiXactOffsets, 0, 1],
    [SlruKind.MultiXactMembers, 0, 0],
  ] as const) {
    const v = store.latest(slruBlockKey(kind, seg, blk));
    assert.ok(v?.kind === "wal" && v.engine === "native", `${SlruKind[kind]} page ${blk}`);
  }
  assert.equal(decodeSlruSegSize(store.image(slruSegSizeKey(SlruKind.MultiXactOffsets, 0))), 2);
  assert.equal(ingest.ingestCounters!.nextMulti, 2048);
  assert.equal(ingest.ingestCounters!.nextMultiOffset, 102);
  // ZERO_OFF_PAGE for page 1 right after: skipped, as multixact_redo does
  const before = store.versions.get(slruBlockKey(SlruKind.MultiXactOffsets, 0, 1))!.length;
  await ingest.ingestRecord(rec({ rmid: 6, info: 0x00, mainData: u32s(1) }), ctx);
  assert.equal(store.versions.get(slruBlockKey(SlruKind.MultiXactOffsets, 0, 1))!.length, before);
  // ZERO_MEM_PAGE creates segment 1 of the members SLRU
  await ingest.ingestRecord(rec({ rmid: 6, info: 0x10, mainData: u32s(32) }), ctx);
  assert.deepEqual([...decodeSlruDir(store.image(slruDirKey(SlruKind.MultiXactMembers)))].sort(), [1]);
  const z = store.latest(slruBlockKey(SlruKind.MultiXactMembers, 1, 0))!;
  assert.ok(z.kind === "wal" && z.willInit);
});

test("skipped records are counted; unknown and unsupported records stop ingest", async () => {
  const { ingest, rec } = await setup();
  // STANDBY RUNNING_XACTS (info 0x10): xl_running_xacts
  await ingest.ingestRecord(rec({ rmid: 8, info: 0x10, mainData: new Uint8Array(24) }), ctx);
  // LOGICAL MESSAGE
  await ingest.ingestRecord(rec({ rmid: 21, info: 0x00, mainData: new Uint8Array(24) }), ctx);
  assert.deepEqual(ingest.stats.skipped, { "Standby/RUNNING_XACTS": 1, "LogicalMessage/MESSAGE": 1 });
  const code = (c: string) => (e: unknown) => e instanceof StrataError && e.code === c;
  await assert.rejects(async () => ingest.ingestRecord(rec({ rmid: 1, info: 0x70, mainData: new Uint8Array(8) }), ctx), code("unsupported"), "unknown XACT type");
  await assert.rejects(async () => ingest.ingestRecord(rec({ rmid: 18, info: 0x00, mainData: u32s(1) }), ctx), code("unsupported"), "commit timestamps");
  await assert.rejects(async () => ingest.ingestRecord(rec({ rmid: 130, info: 0x00, mainData: u32s(1) }), ctx), code("unsupported"), "custom rmgr");
});

test("a timeline without a checkpoint cannot be ingested into", async () => {
  const store = new VersionStore();
  const ingest = new WalIngest(store, store, { startLsn: lsn(0x1000000) });
  const raw = encodeRecord({ rmid: 0, info: 0x30, prevLsn: lsn(0), mainData: u32s(5) });
  await assert.rejects(async () => ingest.ingestRecord(decodeRecord(raw, lsn(0x1000028), lsn(0x1000028 + raw.length)), ctx), /has no checkpoint/);
});

test("VM and FSM truncation helpers follow visibilitymap_prepare_truncate and fsm_truncate_avail", () => {
  const vm = initPage(0);
  vm.fill(0xff, 24);
  vmTruncatePage(vm, 32672 + 5); // keep heap blocks 0..4 of VM page 1
  assert.equal(vm[24], 0xff);
  assert.equal(vm[25], 0x03, "heap block 4 keeps its bits, 5..7 cleared");
  assert.ok(vm.subarray(26).every((b) => b === 0));

  assert.equal(fsmLeafToPhysical(0), 2, "root, one inner page, then the first leaf");
  assert.equal(fsmLeafToPhysical(1), 3);
  assert.equal(fsmLeafToPhysical(4069), 4069 + 3, "the second inner page precedes leaf 4069");
  const fsm = initPage(0);
  const nodes = fsm.subarray(28);
  const leaf0 = 4095; // first leaf node
  nodes[leaf0 + 1] = 10;
  nodes[leaf0 + 100] = 200;
  // rebuild the inner nodes as PostgreSQL keeps them: each node = max of its children
  for (let n = 4094; n >= 0; n--) nodes[n] = Math.max(nodes[2 * n + 1] ?? 0, 2 * n + 2 < 8164 ? nodes[2 * n + 2]! : 0);
  assert.equal(nodes[0], 200);
  fsmTruncateAvail(fsm, 50);
  assert.equal(nodes[leaf0 + 100], 0);
  assert.equal(nodes[leaf0 + 1], 10);
  assert.equal(nodes[0], 10, "root rebuilt");
});

test("fast path: the records it takes are stored exactly as the general path stores them (same versions, counters, stats)", async () => {
  const btree = (blockNumber: number, image?: Uint8Array): Omit<Parameters<typeof encodeRecord>[0], "prevLsn"> => ({
    rmid: 11, // Btree INSERT_LEAF
    info: 0x00,
    xid: 0,
    mainData: new Uint8Array([1, 0]),
    blocks: [{ id: 0, forkNum: 0, rel: IDX, blockNumber, data: new Uint8Array(16), ...(image === undefined ? {} : { image: { bytes: image } }) }],
  });
  const IDX: RelFileNode = { spcOid: 1663, dbOid: 5, relNumber: 16390 };
  const update = (from: number, to: number, xid: number, flags = 0): Omit<Parameters<typeof encodeRecord>[0], "prevLsn"> => ({
    rmid: 10, // Heap UPDATE: new tuple on block ref 0, old on block ref 1
    info: 0x20,
    xid,
    mainData: concat(u32s(xid), new Uint8Array([1, 0, 0, flags]), u32s(0), new Uint8Array([2, 0])),
    blocks: [
      { id: 0, forkNum: 0, rel: REL, blockNumber: to, data: new Uint8Array(30) },
      { id: 1, forkNum: 0, rel: REL, blockNumber: from },
    ],
  });
  const specs: Array<Omit<Parameters<typeof encodeRecord>[0], "prevLsn">> = [
    { rmid: 2, info: 0x10, mainData: u32s(REL.spcOid, REL.dbOid, REL.relNumber, 0) }, // SMGR CREATE main
    { rmid: 2, info: 0x10, mainData: u32s(REL.spcOid, REL.dbOid, REL.relNumber, 2) }, // SMGR CREATE vm
    { rmid: 2, info: 0x10, mainData: u32s(IDX.spcOid, IDX.dbOid, IDX.relNumber, 0) },
    heapInsert(0, { init: true }), // extends by one (fast: size 0 -> 1)
    heapInsert(0),
    heapInsert(1, { init: true }),
    heapInsert(5), // a gap: general path
    heapInsert(2, { flags: 1 }), // clears VM bits on VM page 0, beyond the VM fork's end (0 blocks): extends it
    heapInsert(3, { flags: 1 }), // VM page 0 now inside
    update(2, 4, 1002, 0x01 | 0x04), // old and new tuples clear bits on one VM page: one value
    update(4, 6, 1003), // extends by one with two blocks in the record
    btree(0, initPage(0)), // FPI on an index block: extends the index
    btree(0),
    btree(0, initPage(0)),
    { rmid: 0, info: 0xb0, blocks: [{ id: 0, forkNum: 0, rel: REL, blockNumber: 1, image: { bytes: initPage(0) } }] }, // XLOG FPI_FOR_HINT
    xactCompletion(0x00, 1001, [1002, 1003], []), // COMMIT, clog page 0 exists
    xactCompletion(0x20, 1004, [], []), // ABORT
    xactCompletion(0x00, 1005, [40000], []), // a subxact on a clog page that does not exist: general path
    xactCompletion(0x00, 1006, [40001], []), // now it exists
    { ...heapInsert(6), xid: 50000 }, // advances nextXid: checkpoint value
    xactCompletion(0x00, 1007, [], [IDX]), // drops a relation: general path
  ];
  const fast = await setup(CHECKPOINT, true);
  const general = await setup(CHECKPOINT, false);
  for (const spec of specs) {
    await fast.ingest.ingestRecord(fast.rec(spec), ctx);
    await general.ingest.ingestRecord(general.rec(spec), ctx);
  }
  assert.ok(fast.store.fastRecords >= 12, `the fast path took ${fast.store.fastRecords} records`);
  assert.equal(general.store.fastRecords, 0);
  const sorted = (m: Map<Key, unknown>) => [...m].sort((a, b) => (a[0] < b[0] ? -1 : 1));
  assert.deepEqual(sorted(fast.store.versions), sorted(general.store.versions));
  assert.deepEqual(fast.ingest.stats, general.ingest.stats);
  assert.deepEqual(fast.ingest.ingestCounters, general.ingest.ingestCounters);
  assert.equal(fast.store.last, general.store.last);
  // the VM page cleared by both tuples of one update holds one value at that record
  const vm = fast.store.versions.get(relBlockKey({ ...REL, fork: 2 }, 0))!;
  assert.equal(new Set(vm.map((v) => v.lsn)).size, vm.length);
});
