/**
 * The record-body parsers against PostgreSQL itself: a real server runs a
 * workload that produces every record type the pageserver interprets
 * (checkpoints, NEXTOID, SWITCH, FPIs; commits/aborts with subtransactions
 * and dropped relations; two-phase PREPARE / COMMIT PREPARED / ROLLBACK
 * PREPARED; ASSIGNMENT; SMGR CREATE / TRUNCATE; CREATE DATABASE with both
 * strategies and DROP DATABASE; relmapper updates; multixacts), on top of
 * the WAL initdb itself wrote.
 *
 * Then every record of those resource managers in the whole WAL, decoded by
 * strata, is parsed and compared with pg_waldump's description of the same
 * LSN: the full text where our parse determines all of it (XLOG, Storage,
 * Database, RelMap, CLOG, MultiXact), and the xids / subxacts / relations /
 * GID / timestamp parts for Transaction records; heap flag bytes for Heap and
 * Heap2 (what heapVmClears reads). The latest online checkpoint and the
 * shutdown checkpoint are compared field by field with pg_controldata.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { withPostgres } from "./harness/pg_server.js";
import { runPgWaldump, type WaldumpRecord } from "./harness/waldump.js";
import { runToolOk } from "./harness/tools.js";
import { formatLsn, lsn, parseLsn } from "../src/lib/lsn.js";
import type { DecodedRecord, RelFileNode } from "../src/formats/wal/decoded_record.js";
import { WalFileReader } from "../src/formats/wal/wal_files.js";
import { parseRmgrRecord, type ParsedRmgrRecord } from "../src/formats/wal/rmgr/index.js";
import { WAL_LEVEL_NAMES, xidEpoch, xidOf, type CheckPoint } from "../src/formats/wal/rmgr/xlog.js";
import { MULTIXACT_STATUS_NAMES } from "../src/formats/wal/rmgr/multixact.js";
import { heapRecordTypeName, heap2RecordTypeName, heapVmClears } from "../src/formats/wal/rmgr/heap.js";
import { restoreBlockImage } from "../src/formats/wal/fpi.js";
import { xactRecordTypeName } from "../src/formats/wal/rmgr/xact.js";

// pg_waldump prints timestamps in the local zone; make that UTC for the children we start.
process.env.TZ = "UTC";

const FORK_SUFFIX = ["", "_fsm", "_vm", "_init"];

/** relpathperm() for the default and global tablespaces. */
function relPath(r: RelFileNode, fork = 0): string {
  const suffix = FORK_SUFFIX[fork] ?? "";
  if (r.spcOid === 1664) return `global/${r.relNumber}${suffix}`;
  if (r.spcOid === 1663) return `base/${r.dbOid}/${r.relNumber}${suffix}`;
  throw new Error(`test does not use tablespace ${r.spcOid}`);
}

/** pg_waldump's timestamptz_to_str in UTC: "2026-11-29 03:51:55.020875 UTC". */
function pgTimestamp(usSince2000: bigint): string {
  const POSTGRES_EPOCH_UNIX_S = 946684800n;
  const secs = usSince2000 / 1_000_000n + POSTGRES_EPOCH_UNIX_S;
  const d = new Date(Number(secs) * 1000);
  const iso = d.toISOString(); // 2026-11-29T03:51:55.000Z
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)}.${String(usSince2000 % 1_000_000n).padStart(6, "0")} UTC`;
}

/** The part of pg_waldump's desc after the type word ("" when there is none). */
function descBody(w: WaldumpRecord): string {
  return w.desc.slice(w.type.length).trim();
}

/** desc text PostgreSQL prints for records whose content our parse fully determines; undefined = not fully comparable. */
function expectedDesc(p: ParsedRmgrRecord): string | undefined {
  switch (p.rmgr) {
    case "XLOG": {
      const b = p.body;
      switch (b.type) {
        case "CHECKPOINT_SHUTDOWN":
        case "CHECKPOINT_ONLINE": {
          const c = b.checkpoint;
          return (
            `redo ${formatLsn(c.redo)}; tli ${c.thisTimeLineId}; prev tli ${c.prevTimeLineId}; fpw ${c.fullPageWrites}; ` +
            `xid ${xidEpoch(c.nextXid)}:${xidOf(c.nextXid)}; oid ${c.nextOid}; multi ${c.nextMulti}; offset ${c.nextMultiOffset}; ` +
            `oldest xid ${c.oldestXid} in DB ${c.oldestXidDb}; oldest multi ${c.oldestMulti} in DB ${c.oldestMultiDb}; ` +
            `oldest/newest commit timestamp xid: ${c.oldestCommitTsXid}/${c.newestCommitTsXid}; ` +
            `oldest running xid ${c.oldestActiveXid}; ${b.type === "CHECKPOINT_SHUTDOWN" ? "shutdown" : "online"}`
          );
        }
        case "NEXTOID":
          return `${b.nextOid}`;
        case "SWITCH":
        case "NOOP":
        case "FPI":
        case "FPI_FOR_HINT":
          return "";
        case "BACKUP_END":
          return formatLsn(b.startLsn);
        case "FPW_CHANGE":
          return String(b.fullPageWrites);
        case "RESTORE_POINT":
          return b.name;
        case "PARAMETER_CHANGE": {
          const x = b.params;
          return (
            `max_connections=${x.maxConnections} max_worker_processes=${x.maxWorkerProcesses} ` +
            `max_wal_senders=${x.maxWalSenders} max_prepared_xacts=${x.maxPreparedXacts} ` +
            `max_locks_per_xact=${x.maxLocksPerXact} wal_level=${WAL_LEVEL_NAMES[x.walLevel] ?? "?"} ` +
            `wal_log_hints=${x.walLogHints ? "on" : "off"} track_commit_timestamp=${x.trackCommitTimestamp ? "on" : "off"}`
          );
        }
        default:
          return undefined;
      }
    }
    case "Storage":
      return p.body.type === "CREATE"
        ? relPath(p.body.rel, p.body.forkNum)
        : `${relPath(p.body.rel)} to ${p.body.blkno} blocks flags ${p.body.flags}`;
    case "Database": {
      const b = p.body;
      if (b.type === "CREATE_FILE_COPY") return `copy dir ${b.srcTablespaceId}/${b.srcDbId} to ${b.tablespaceId}/${b.dbId}`;
      if (b.type === "CREATE_WAL_LOG") return `create dir ${b.tablespaceId}/${b.dbId}`;
      return `dir${b.tablespaceIds.map((t) => ` ${t}/${b.dbId}`).join("")}`;
    }
    case "RelMap":
      return `database ${p.body.dbId} tablespace ${p.body.tsId} size ${p.body.nbytes}`;
    case "CLOG":
      return p.body.type === "ZEROPAGE" ? `page ${p.body.pageno}` : `page ${p.body.pageno}; oldestXact ${p.body.oldestXact}`;
    case "MultiXact": {
      const b = p.body;
      if (b.type === "ZERO_OFF_PAGE" || b.type === "ZERO_MEM_PAGE") return `${b.pageno}`;
      if (b.type === "TRUNCATE_ID") return `offsets [${b.startTruncOff}, ${b.endTruncOff}), members [${b.startTruncMemb}, ${b.endTruncMemb})`;
      const members = b.members.map((m) => `${m.xid} (${MULTIXACT_STATUS_NAMES[m.status] ?? "unk"})`).join(" ");
      return `${b.mid} offset ${b.moff} nmembers ${b.members.length}: ${members}`;
    }
    default:
      return undefined;
  }
}

/** Compares the structural parts of Transaction records with pg_waldump's desc. */
function checkXact(p: ParsedRmgrRecord & { rmgr: "Transaction" }, w: WaldumpRecord, rec: DecodedRecord): void {
  const b = p.body;
  const body = descBody(w);
  const where = `${formatLsn(rec.lsn)} ${w.desc}`;
  assert.equal(rec.xid, w.xid, `${where}: record xid`);
  const list = (label: string): string[] => {
    const m = new RegExp(`; ${label.replace(/[()]/g, "\\$&")}:((?: [^ ;]+)*)`).exec(body);
    return m ? m[1]!.trim().split(" ") : [];
  };
  switch (b.type) {
    case "COMMIT":
    case "COMMIT_PREPARED":
    case "ABORT":
    case "ABORT_PREPARED": {
      const prefix = b.twophaseXid !== undefined ? `${b.twophaseXid}: ` : "";
      assert.ok(body.startsWith(`${prefix}${pgTimestamp(b.xactTime)}`), `${where}: expected to start with ${prefix}${pgTimestamp(b.xactTime)}`);
      assert.deepEqual(list("rels"), b.droppedRels.map((r) => relPath(r)), where);
      assert.deepEqual(list("subxacts"), b.subxacts.map(String), where);
      break;
    }
    case "PREPARE":
      assert.ok(body.startsWith(`gid ${b.gid}: ${pgTimestamp(b.preparedAt)}`), where);
      assert.equal(b.xid, rec.xid, where);
      assert.deepEqual(list("rels(commit)"), b.commitRels.map((r) => relPath(r)), where);
      assert.deepEqual(list("rels(abort)"), b.abortRels.map((r) => relPath(r)), where);
      assert.deepEqual(list("subxacts"), b.subxacts.map(String), where);
      break;
    case "ASSIGNMENT":
      assert.equal(body, `xtop ${b.xtop}: subxacts: ${b.subxacts.join(" ")}`, where);
      break;
    case "INVALIDATION":
      break;
  }
}

function typeName(rec: DecodedRecord, p: ParsedRmgrRecord): string {
  switch (p.rmgr) {
    case "Transaction":
      return xactRecordTypeName(rec.info) ?? "?";
    case "Heap":
      return heapRecordTypeName(rec.info) ?? "?";
    case "Heap2":
      return heap2RecordTypeName(rec.info) ?? "?";
    default:
      return p.body.type;
  }
}

/** pg_controldata output as a map of label -> value. */
async function controlData(dataDir: string): Promise<Map<string, string>> {
  const out = await runToolOk("pg_controldata", ["-D", dataDir]);
  const m = new Map<string, string>();
  for (const line of out.split("\n")) {
    const i = line.indexOf(":");
    if (i > 0) m.set(line.slice(0, i).trim(), line.slice(i + 1).trim());
  }
  return m;
}

/** strftime("%c") in the C locale, UTC: "Sun Nov 29 03:59:29 2026". */
function cTime(unixSeconds: bigint): string {
  const d = new Date(Number(unixSeconds) * 1000);
  const days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
  const months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const p2 = (n: number): string => String(n).padStart(2, "0");
  return `${days[d.getUTCDay()]} ${months[d.getUTCMonth()]} ${String(d.getUTCDate()).padStart(2, " ")} ${p2(d.getUTCHours())}:${p2(d.getUTCMinutes())}:${p2(d.getUTCSeconds())} ${d.getUTCFullYear()}`;
}

function checkControlData(cd: Map<string, string>, c: CheckPoint, what: string): void {
  const eq = (label: string, value: string | number): void => assert.equal(cd.get(label), String(value), `${what}: ${label}`);
  eq("Latest checkpoint's REDO location", formatLsn(c.redo));
  eq("Latest checkpoint's TimeLineID", c.thisTimeLineId);
  eq("Latest checkpoint's PrevTimeLineID", c.prevTimeLineId);
  eq("Latest checkpoint's full_page_writes", c.fullPageWrites ? "on" : "off");
  eq("Latest checkpoint's NextXID", `${xidEpoch(c.nextXid)}:${xidOf(c.nextXid)}`);
  eq("Latest checkpoint's NextOID", c.nextOid);
  eq("Latest checkpoint's NextMultiXactId", c.nextMulti);
  eq("Latest checkpoint's NextMultiOffset", c.nextMultiOffset);
  eq("Latest checkpoint's oldestXID", c.oldestXid);
  eq("Latest checkpoint's oldestXID's DB", c.oldestXidDb);
  eq("Latest checkpoint's oldestActiveXID", c.oldestActiveXid);
  eq("Latest checkpoint's oldestMultiXid", c.oldestMulti);
  eq("Latest checkpoint's oldestMulti's DB", c.oldestMultiDb);
  eq("Latest checkpoint's oldestCommitTsXid", c.oldestCommitTsXid);
  eq("Latest checkpoint's newestCommitTsXid", c.newestCommitTsXid);
  eq("Time of latest checkpoint", cTime(c.time));
}

async function readAll(walDir: string): Promise<DecodedRecord[]> {
  const reader = await WalFileReader.open(walDir);
  const out: DecodedRecord[] = [];
  for await (const r of reader.records()) out.push(r);
  return out;
}

async function checkpointAt(walDir: string, at: string): Promise<CheckPoint> {
  const l = parseLsn(at);
  const reader = await WalFileReader.open(walDir, { start: l });
  for await (const r of reader.records()) {
    if (r.lsn !== l) continue;
    const p = parseRmgrRecord(r);
    assert.ok(p?.rmgr === "XLOG" && (p.body.type === "CHECKPOINT_ONLINE" || p.body.type === "CHECKPOINT_SHUTDOWN"), `no checkpoint at ${at}`);
    return p.body.checkpoint;
  }
  throw new Error(`no record at ${at}`);
}

const WORKLOAD = `
CREATE TABLE a (id int PRIMARY KEY, v text);
INSERT INTO a SELECT g, 'v' || g FROM generate_series(1, 200) g;
BEGIN; INSERT INTO a VALUES (1001, 'x'); SAVEPOINT s1; INSERT INTO a VALUES (1002, 'y');
  SAVEPOINT s2; INSERT INTO a VALUES (1003, 'z'); RELEASE s2; COMMIT;
CREATE TABLE dropme (x int); INSERT INTO dropme VALUES (1); DROP TABLE dropme;
BEGIN; CREATE TABLE aborted (x int); INSERT INTO aborted VALUES (1); SAVEPOINT s; INSERT INTO aborted VALUES (2); ROLLBACK;
BEGIN; INSERT INTO a VALUES (2001, 'p'); SAVEPOINT q; INSERT INTO a VALUES (2002, 'q'); PREPARE TRANSACTION 'gx1';
COMMIT PREPARED 'gx1';
BEGIN; CREATE TABLE p2 (x int); PREPARE TRANSACTION 'gx2';
ROLLBACK PREPARED 'gx2';
BEGIN; SELECT count(*) FROM (SELECT * FROM a WHERE id = 1 FOR SHARE) s; SAVEPOINT m; UPDATE a SET v = 'mx' WHERE id = 1; COMMIT;
DO $$ BEGIN FOR i IN 1..70 LOOP BEGIN INSERT INTO a VALUES (5000 + i, 's'); EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$;
CREATE TABLE shrink (x int); INSERT INTO shrink SELECT generate_series(1, 5000); DELETE FROM shrink; VACUUM shrink;
TRUNCATE a;
CREATE DATABASE d_wal;
CREATE DATABASE d_copy STRATEGY FILE_COPY;
DROP DATABASE d_wal;
DROP DATABASE d_copy;
VACUUM FULL pg_class;
VACUUM FULL pg_database;
SELECT pg_switch_wal();
CHECKPOINT;
`;

test("record bodies parsed by strata agree with pg_waldump and pg_controldata", async () => {
  await withPostgres({ settings: { autovacuum: false, max_prepared_transactions: 5, wal_keep_size: "1GB" } }, async (pg) => {
    await pg.sql(WORKLOAD);

    // Latest (online) checkpoint vs pg_controldata while running.
    const cdOnline = await controlData(pg.dataDir);
    const online = await checkpointAt(pg.walDir, cdOnline.get("Latest checkpoint location")!);
    checkControlData(cdOnline, online, "online checkpoint");

    // Shutdown checkpoint vs pg_controldata after a clean stop; then all WAL is on disk.
    await pg.stop("fast");
    const cdShutdown = await controlData(pg.dataDir);
    assert.equal(cdShutdown.get("Database cluster state"), "shut down");
    const shutdownAt = cdShutdown.get("Latest checkpoint location")!;
    const shutdown = await checkpointAt(pg.walDir, shutdownAt);
    checkControlData(cdShutdown, shutdown, "shutdown checkpoint");

    const records = await readAll(pg.walDir);
    const first = records[0]!;
    const dump = await runPgWaldump({ path: pg.walDir, start: lsn(first.lsn) });
    const byLsn = new Map(dump.records.map((w) => [w.lsn, w]));
    assert.ok(records.length > 1000, `only ${records.length} records`);
    assert.equal(records.at(-1)!.lsn, parseLsn(shutdownAt), "the last record is the shutdown checkpoint");

    const seen = new Map<string, number>();
    let fullDesc = 0;
    let heapFlags = 0;
    let images = 0;
    let vmClears = 0;
    for (const rec of records) {
      // Every block image in the WAL restores (initdb's, CREATE DATABASE's, btree, heap, ...).
      for (const b of rec.blocks) {
        if (b.image === undefined) continue;
        assert.equal(restoreBlockImage(rec, b.id).length, 8192);
        images++;
      }
      vmClears += heapVmClears(rec).length;
      const p = parseRmgrRecord(rec);
      if (p === undefined) continue;
      const w = byLsn.get(rec.lsn);
      assert.ok(w, `pg_waldump has no record at ${formatLsn(rec.lsn)}`);
      assert.equal(p.rmgr, w.rmgr, formatLsn(rec.lsn));
      const type = typeName(rec, p);
      assert.equal(type, w.type, `${formatLsn(rec.lsn)} ${w.desc}`);
      const key = `${p.rmgr} ${type}`;
      seen.set(key, (seen.get(key) ?? 0) + 1);
      const expected = expectedDesc(p);
      if (expected !== undefined) {
        assert.equal(descBody(w), expected, `${formatLsn(rec.lsn)}: ${w.desc}`);
        fullDesc++;
      } else if (p.rmgr === "Transaction") {
        checkXact(p, w, rec);
      } else if (p.rmgr === "Heap" || p.rmgr === "Heap2") {
        const m = /flags 0x([0-9A-F]{2})/.exec(w.desc);
        if (m && "flags" in p.body) {
          assert.equal(p.body.flags, parseInt(m[1]!, 16), `${formatLsn(rec.lsn)} ${w.desc}`);
          heapFlags++;
        }
      }
    }

    const mustSee = [
      "XLOG CHECKPOINT_SHUTDOWN",
      "XLOG CHECKPOINT_ONLINE",
      "XLOG NEXTOID",
      "XLOG SWITCH",
      "XLOG FPI",
      "XLOG PARAMETER_CHANGE",
      "Transaction COMMIT",
      "Transaction ABORT",
      "Transaction PREPARE",
      "Transaction COMMIT_PREPARED",
      "Transaction ABORT_PREPARED",
      "Transaction ASSIGNMENT",
      "Storage CREATE",
      "Storage TRUNCATE",
      "Database CREATE_WAL_LOG",
      "Database CREATE_FILE_COPY",
      "Database DROP",
      "RelMap UPDATE",
      "MultiXact CREATE_ID",
      "CLOG ZEROPAGE",
      "MultiXact ZERO_MEM_PAGE",
      "Heap INSERT",
      "Heap LOCK",
      "Heap2 MULTI_INSERT",
    ];
    for (const k of mustSee) assert.ok(seen.has(k), `workload produced no ${k}; saw ${[...seen.keys()].join(", ")}`);

    // Spot checks of what the workload did, on top of agreeing with pg_waldump.
    const xacts = records.map((r) => ({ r, p: parseRmgrRecord(r) })).filter((x) => x.p?.rmgr === "Transaction");
    const withSubxacts = xacts.filter((x) => x.p!.body.type === "COMMIT" && x.p!.body.subxacts.length >= 2);
    assert.ok(withSubxacts.length > 0, "a commit with subtransactions");
    const abortWithRels = xacts.filter((x) => x.p!.body.type === "ABORT" && x.p!.body.droppedRels.length > 0);
    assert.ok(abortWithRels.length > 0, "an abort that drops the relation it created");
    // COMMIT PREPARED names the prepared transaction by XID (its GID only at wal_level=logical).
    const prepared = xacts.map((x) => x.p!.body).find((b) => b.type === "PREPARE" && b.gid === "gx1");
    assert.ok(prepared?.type === "PREPARE", "gx1 was prepared");
    const committed = xacts.map((x) => x.p!.body).find((b) => b.type === "COMMIT_PREPARED" && b.twophaseXid === prepared.xid);
    assert.ok(committed?.type === "COMMIT_PREPARED", `COMMIT PREPARED of xid ${prepared.xid}`);
    assert.deepEqual(committed.subxacts, prepared.subxacts);
    assert.equal(prepared.subxacts.length, 1);

    const counts = [...seen.entries()].sort().map(([k, v]) => `${k}=${v}`).join(", ");
    assert.ok(images > 1000, `only ${images} block images`);
    console.log(
      `# rmgr: ${records.length} records decoded, ${images} block images restored, ${vmClears} VM clears; ` +
        `${fullDesc} descs identical to pg_waldump, ${heapFlags} heap flag bytes checked; ${counts}`,
    );
  });
});
