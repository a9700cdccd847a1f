/**
 * Acceptance 3 (issue 2): pg_control against real PostgreSQL 15.
 *
 * One cleanly stopped server (data checksums on, so that field is non-zero):
 *  - parse(real file) -> encode is byte-identical;
 *  - every field pg_controldata prints equals ours, and `strata controlfile
 *    show` prints exactly pg_controldata's text;
 *  - a pg_control written by strata with chosen values is read by
 *    pg_controldata with exactly those values and no CRC warning;
 *  - a corrupted byte is a CRC error for strata and for pg_controldata.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { withPostgres } from "./harness/pg_server.js";
import { makeTempDir, removeTempDir, runProgram, runTool } from "./harness/tools.js";
import {
  DbState,
  controlFileDisplayLines,
  encodeControlFile,
  parseControlFile,
  type ControlFileData,
} from "../src/formats/pg_control.js";
import { formatLsn, lsn, parseLsn } from "../src/lib/lsn.js";
import { StrataError } from "../src/lib/errors.js";

const CLI = fileURLToPath(new URL("../src/cli/main.js", import.meta.url));
/** pg_controldata and strata format times in local time; pin the zone so both agree. */
const ENV = { TZ: "UTC", LC_ALL: "C" };

/** pg_controldata's output as label -> value. */
function parsePgControldata(out: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of out.split("\n")) {
    const i = line.indexOf(":");
    if (i <= 0) continue;
    m.set(line.slice(0, i), line.slice(i + 1).trim());
  }
  return m;
}

async function pgControldata(dataDir: string): Promise<string> {
  const r = await runTool("pg_controldata", ["-D", dataDir], { env: ENV });
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

test("pg_control: real file round trip, pg_controldata agreement, strata-written file, CRC error", { timeout: 120_000 }, async () => {
  await withPostgres({ dataChecksums: true }, async (pg) => {
    await pg.sql("CREATE TABLE t (a int); INSERT INTO t SELECT generate_series(1, 1000);");
    await pg.stop("fast");
    const realPath = join(pg.dataDir, "global", "pg_control");
    const real = new Uint8Array(await readFile(realPath));
    assert.equal(real.length, 8192);

    // 1. exact round trip
    const cf = parseControlFile(real);
    assert.deepEqual(encodeControlFile(cf), real, "parse -> encode must reproduce the real file byte for byte");
    assert.equal(cf.state, DbState.shutdowned);
    assert.equal(cf.dataChecksumVersion, 1);

    // 2. every field pg_controldata prints matches
    const expectedText = await pgControldata(pg.dataDir);
    const theirs = parsePgControldata(expectedText);
    const ours = controlFileDisplayLines(cf);
    assert.equal(ours.length, theirs.size, "same number of fields");
    for (const [label, value] of ours) assert.equal(value, theirs.get(label), label);

    // ... and the command line prints the same text
    const show = await runProgram(process.execPath, [CLI, "controlfile", "show", realPath], { env: ENV });
    assert.equal(show.code, 0, show.stderr);
    assert.equal(show.stdout, expectedText);
    const showDir = await runProgram(process.execPath, [CLI, "controlfile", "show", pg.dataDir, "--json"], { env: ENV });
    assert.equal(showDir.code, 0, showDir.stderr);
    const json = JSON.parse(showDir.stdout) as { systemIdentifier: string; checkPoint: string; checkPointCopy: { nextXid: string } };
    assert.equal(json.systemIdentifier, theirs.get("Database system identifier"));
    assert.equal(json.checkPoint, theirs.get("Latest checkpoint location"));
    assert.equal(json.checkPointCopy.nextXid, theirs.get("Latest checkpoint's NextXID"));

    // 3. a pg_control written by strata, read by pg_controldata
    const dir = await makeTempDir("ctl");
    try {
      await mkdir(join(dir, "global"));
      const mine: ControlFileData = {
        ...cf,
        state: DbState.inProduction,
        time: 1_900_000_000n,
        checkPoint: parseLsn("3/4567ABC8"),
        checkPointCopy: {
          ...cf.checkPointCopy,
          redo: parseLsn("3/4567AB00"),
          thisTimeLineId: 7,
          prevTimeLineId: 6,
          fullPageWrites: false,
          nextXid: (5n << 32n) | 123456n,
          nextOid: 987654,
          nextMulti: 4321,
          nextMultiOffset: 8765,
          oldestXid: 3333,
          oldestXidDb: 5,
          oldestActiveXid: 4444,
          oldestMulti: 22,
          oldestMultiDb: 16384,
          oldestCommitTsXid: 11,
          newestCommitTsXid: 12,
          time: 1_899_999_999n,
        },
        unloggedLsn: lsn(0x2000),
        minRecoveryPoint: parseLsn("3/4567AC00"),
        minRecoveryPointTli: 7,
        backupStartPoint: parseLsn("2/10"),
        backupEndPoint: parseLsn("2/20"),
        backupEndRequired: true,
        walLevel: 2,
        walLogHints: true,
        maxConnections: 321,
        maxWorkerProcesses: 9,
        maxWalSenders: 11,
        maxPreparedXacts: 12,
        maxLocksPerXact: 128,
        trackCommitTimestamp: true,
        dataChecksumVersion: 0,
        mockAuthenticationNonce: Uint8Array.from({ length: 32 }, (_, i) => 255 - i),
      };
      await writeFile(join(dir, "global", "pg_control"), encodeControlFile(mine));
      const out = await pgControldata(dir);
      assert.doesNotMatch(out, /WARNING/);
      const read = parsePgControldata(out);
      const want: Record<string, string> = {
        "Database cluster state": "in production",
        "pg_control last modified": "Sun Mar 17 17:46:40 2030",
        "Latest checkpoint location": "3/4567ABC8",
        "Latest checkpoint's REDO location": "3/4567AB00",
        "Latest checkpoint's REDO WAL file": "000000070000000300000045",
        "Latest checkpoint's TimeLineID": "7",
        "Latest checkpoint's PrevTimeLineID": "6",
        "Latest checkpoint's full_page_writes": "off",
        "Latest checkpoint's NextXID": "5:123456",
        "Latest checkpoint's NextOID": "987654",
        "Latest checkpoint's NextMultiXactId": "4321",
        "Latest checkpoint's NextMultiOffset": "8765",
        "Latest checkpoint's oldestXID": "3333",
        "Latest checkpoint's oldestXID's DB": "5",
        "Latest checkpoint's oldestActiveXID": "4444",
        "Latest checkpoint's oldestMultiXid": "22",
        "Latest checkpoint's oldestMulti's DB": "16384",
        "Latest checkpoint's oldestCommitTsXid": "11",
        "Latest checkpoint's newestCommitTsXid": "12",
        "Time of latest checkpoint": "Sun Mar 17 17:46:39 2030",
        "Fake LSN counter for unlogged rels": "0/2000",
        "Minimum recovery ending location": "3/4567AC00",
        "Min recovery ending loc's timeline": "7",
        "Backup start location": "2/10",
        "Backup end location": "2/20",
        "End-of-backup record required": "yes",
        "wal_level setting": "logical",
        "wal_log_hints setting": "on",
        "max_connections setting": "321",
        "max_worker_processes setting": "9",
        "max_wal_senders setting": "11",
        "max_prepared_xacts setting": "12",
        "max_locks_per_xact setting": "128",
        "track_commit_timestamp setting": "on",
        "Data page checksum version": "0",
        "Mock authentication nonce": Array.from({ length: 32 }, (_, i) => (255 - i).toString(16)).join(""),
        "Database system identifier": cf.systemIdentifier.toString(),
      };
      for (const [label, value] of Object.entries(want)) assert.equal(read.get(label), value, label);
      // and every line agrees with our own rendering of what we wrote
      for (const [label, value] of controlFileDisplayLines(mine)) assert.equal(read.get(label), value, label);

      // 4. one corrupted byte: CRC error in strata and a warning from pg_controldata
      const corrupt = encodeControlFile(mine);
      corrupt[40 + 32] = (corrupt[40 + 32] ?? 0) ^ 0x01; // nextOid
      assert.throws(() => parseControlFile(corrupt), (e: unknown) => e instanceof StrataError && e.code === "corrupt_data");
      await writeFile(join(dir, "global", "pg_control"), corrupt);
      assert.match(await pgControldata(dir), /Calculated CRC checksum does not match value stored in file/);
      const bad = await runProgram(process.execPath, [CLI, "controlfile", "show", dir], { env: ENV });
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /CRC mismatch.*\[corrupt_data\]/);
      console.log(`pg_control: ${ours.length} pg_controldata fields agree; checkpoint ${formatLsn(cf.checkPoint)}`);
    } finally {
      await removeTempDir(dir);
    }
  });
});
