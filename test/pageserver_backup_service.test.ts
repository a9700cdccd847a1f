/**
 * basebackup / fullbackup over the page service, and timeline bootstrap by
 * initdb, against real parts (issue 6):
 *
 *   HTTP POST timeline (initdb) -> fullbackup over libpq -> fetchBackupIntoDir
 *     -> compute (unmodified PostgreSQL 15, pg_ctl) -> safekeeper (sk_1, in-process)
 *     -> pageserver WAL receiver -> fullbackup at the end LSN -> plain PostgreSQL
 *
 * Checked:
 *   - a root timeline created with neither ancestor nor import_datadir is
 *     bootstrapped by initdb: JSON has system_id (pg_control's), pg_version
 *     15 and initial_lsn = last_record_lsn; the scratch directory is gone;
 *   - a compute started from a fullbackup of it accepts DDL and writes, its
 *     system identifier is the timeline's, and its WAL streamed through the
 *     safekeeper is ingested by the pageserver;
 *   - a fullbackup at the compute's end LSN, started with pg_ctl, has the
 *     same pg_dump as the compute (which wrote nothing since);
 *   - the gzip variant (fetchBackupToFile) is a valid .tar.gz that `tar -tz`
 *     lists, with pg_control last; a basebackup has no relation files;
 *   - malformed commands, unknown tenant/timeline, LSNs below the start or
 *     ahead of ingest (after the bounded wait) are ErrorResponses with the
 *     right SQLSTATE and message; the same connection and another one keep
 *     working; metrics count backups and bytes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { formatLsn, parseLsn, type Lsn } from "../src/lib/lsn.js";
import { generateTenantId, generateTimelineId } from "../src/lib/id.js";
import type { Pageserver } from "../src/pageserver/pageserver.js";
import { fetchBackupToFile } from "../src/pageserver/backup_client.js";
import { PgClient, PgServerError } from "../src/wire/client.js";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";
import type { PgServer } from "./harness/pg_server.js";
import { makeTempDir, removeTempDir, runProgram } from "./harness/tools.js";
import { runPgWaldump } from "./harness/waldump.js";
import { http, startInProcess } from "./safekeeper_helpers.js";
import { assertSameDumpModuloSequences, attachToSafekeeper, getTimeline, pgDump, startComputeFromBackup, startPageserver, waitIngested } from "./pageserver_backup_support.js";

/** Short wait for LSNs ahead of ingest, so the "ahead" error comes quickly. */
const WAIT_LSN_TIMEOUT_MS = 1500;

async function expectPgError(p: Promise<unknown>, sqlstate: string, message: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof PgServerError, `expected a server error, got ${String(e)}`);
    assert.equal(e.sqlstate, sqlstate, e.message);
    assert.match(e.message, message);
    return true;
  });
}

/** Drains a copyOut and returns the bytes received. */
async function drain(client: PgClient, sql: string): Promise<number> {
  let n = 0;
  for await (const chunk of client.copyOut(sql)) n += chunk.length;
  return n;
}

test("initdb bootstrap, compute from fullbackup, streamed ingest, fullbackup at the end equals the compute", { timeout: 300_000 }, async () => {
  const psDir = await makeTempDir("ps");
  const outDir = await makeTempDir("bbout");
  const tenantId = generateTenantId();
  const timelineId = generateTimelineId();
  let sk: Safekeeper | undefined;
  let ps: Pageserver | undefined;
  const servers: PgServer[] = [];
  const clients: PgClient[] = [];
  try {
    sk = await startInProcess({ id: 1 });
    ps = await startPageserver(psDir, { safekeeperPort: sk.pgPort });
    let r = await http(ps.httpPort, "POST", "/v1/tenant", { tenant_id: tenantId, config: { waitLsnTimeoutMs: WAIT_LSN_TIMEOUT_MS } });
    assert.equal(r.status, 201, r.text);

    // 1. bootstrap by initdb
    const t0 = Date.now();
    r = await http(ps.httpPort, "POST", `/v1/tenant/${tenantId}/timeline`, { new_timeline_id: timelineId });
    assert.equal(r.status, 201, r.text);
    const created = r.body as { system_id: string; pg_version: number; initial_lsn: string; last_record_lsn: string; ancestor_timeline_id: null };
    console.log(`initdb bootstrap: ${Date.now() - t0} ms, initial_lsn ${created.initial_lsn}, system_id ${created.system_id}`);
    assert.match(created.system_id, /^[1-9][0-9]*$/);
    assert.equal(created.pg_version, 15);
    assert.equal(created.initial_lsn, created.last_record_lsn);
    assert.ok(parseLsn(created.initial_lsn) > 0n);
    assert.deepEqual((await readdir(psDir)).filter((n) => n.startsWith("tmp_initdb-")), [], "initdb scratch directory removed");

    // 2. a compute from a fullbackup of it, streaming its WAL through the safekeeper
    const compute = await startComputeFromBackup(ps, tenantId, timelineId, { synchronousStandby: "sk_1" });
    servers.push(compute.pg);
    const pg = compute.pg;
    console.log(`fullbackup of the fresh timeline: ${compute.bytes} bytes, ${compute.files} files`);
    assert.equal(await pg.sql("SELECT system_identifier FROM pg_control_system()"), created.system_id);
    assert.equal((await stat(pg.dataDir)).mode & 0o777, 0o700, "data directory mode");
    await attachToSafekeeper(sk, tenantId, timelineId, pg);
    await pg.sql(
      "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) DEFAULT 0);" +
        "CREATE INDEX ON accounts (owner);" +
        "INSERT INTO accounts SELECT g, 'owner ' || (g % 97), g * 1.5 FROM generate_series(1, 20000) g;" +
        "CREATE SEQUENCE s; SELECT nextval('s') FROM generate_series(1, 10);" +
        "CREATE VIEW rich AS SELECT * FROM accounts WHERE balance > 1000;",
      { timeoutMs: 60_000 },
    );
    await pg.sql("UPDATE accounts SET balance = balance + 1 WHERE id % 7 = 0; DELETE FROM accounts WHERE id % 13 = 0;", { timeoutMs: 60_000 });
    await pg.sql("CREATE DATABASE second; ", { timeoutMs: 60_000 });
    await pg.sql("CREATE TABLE notes (id serial PRIMARY KEY, body text); INSERT INTO notes (body) SELECT repeat('n', g) FROM generate_series(1, 500) g;", { db: "second" });
    const endLsn = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    await waitIngested(ps, tenantId, timelineId, endLsn);
    const endInfo = await getTimeline(ps, tenantId, timelineId);
    console.log(`compute WAL ${created.initial_lsn}..${formatLsn(endLsn)} ingested (last_record_lsn ${endInfo.last_record_lsn})`);

    // 3. fullbackup at the end LSN, started with pg_ctl: same pg_dump as the compute
    const restored = await startComputeFromBackup(ps, tenantId, timelineId, { lsn: endLsn });
    servers.push(restored.pg);
    assert.equal(await restored.pg.sql("SELECT pg_is_in_recovery()"), "f");
    assertSameDumpModuloSequences(await pgDump(restored.pg), await pgDump(pg), "postgres database");
    assertSameDumpModuloSequences(await pgDump(restored.pg, "second"), await pgDump(pg, "second"), "second database");
    assert.equal(await restored.pg.sql("INSERT INTO accounts VALUES (999999, 'new') RETURNING id"), "999999", "the restored server accepts writes");
    console.log(`fullbackup at ${formatLsn(endLsn)}: ${restored.bytes} bytes, ${restored.files} files; pg_dump identical`);

    // 4. gzip to a file: a valid .tar.gz, pg_control last; basebackup without relation files
    const gzPath = join(outDir, "backup.tar.gz");
    let progressCalls = 0;
    const gz = await fetchBackupToFile({ host: "127.0.0.1", port: ps.pgPort, tenantId, timelineId, lsn: endLsn, full: true, gzip: true, onProgress: () => progressCalls++ }, gzPath);
    const listed = await runProgram("/bin/tar", ["-tzf", gzPath]);
    assert.equal(listed.code, 0, listed.stderr);
    const members = listed.stdout.trim().split("\n");
    assert.equal(members.at(-1), "global/pg_control");
    assert.ok(members.includes("PG_VERSION") && members.some((m) => /^base\/\d+\/\d+$/.test(m)) && members.some((m) => m.startsWith("pg_wal/")), members.slice(0, 20).join(" "));
    assert.equal((await stat(gzPath)).size, gz.bytes);
    assert.ok(progressCalls > 0);
    assert.ok(gz.bytes < restored.bytes / 2, `gzip ${gz.bytes} bytes vs tar ${restored.bytes}`);
    assert.deepEqual((await readdir(outDir)).sort(), ["backup.tar.gz"], "no temp file left");
    const tarPath = join(outDir, "base.tar");
    const plain = await fetchBackupToFile({ host: "127.0.0.1", port: ps.pgPort, tenantId, timelineId, full: false }, tarPath);
    const baseMembers = (await runProgram("/bin/tar", ["-tf", tarPath])).stdout.trim().split("\n");
    assert.ok(!baseMembers.some((m) => /^base\/\d+\/\d+$/.test(m)), "basebackup has no relation files");
    assert.ok(baseMembers.includes("global/pg_filenode.map") && baseMembers.includes("pg_xact/0000"));
    console.log(`gzip fullbackup ${gz.bytes} bytes (${members.length} members); basebackup ${plain.bytes} bytes`);
    // the generated segment reads with pg_waldump from its first byte: NOOP filler, then the checkpoint at the backup LSN
    const walMember = baseMembers.find((m) => m.startsWith("pg_wal/0"))!;
    const untar = await runProgram("/bin/tar", ["-xf", tarPath, "-C", outDir, walMember]);
    assert.equal(untar.code, 0, untar.stderr);
    const dump = await runPgWaldump({ path: join(outDir, walMember) });
    const last = dump.records.at(-1)!;
    assert.equal(`${last.rmgr}/${last.type}`, "XLOG/CHECKPOINT_SHUTDOWN", dump.stderr);
    assert.ok(last.lsn >= endLsn, `checkpoint at ${formatLsn(last.lsn)}, the timeline's last record`);
    assert.ok(dump.records.length >= 2 && dump.records.slice(0, -1).every((x) => x.type === "NOOP"), dump.records.map((x) => x.type).join(","));
    assert.equal(formatLsn(dump.records[0]!.lsn), formatLsn((last.lsn - (last.lsn % (16n << 20n)) + 40n) as Lsn), "the chain starts at the segment's first record");

    // 5. errors: precise ErrorResponses, the connection and others keep working
    const c1 = await PgClient.connect({ host: "127.0.0.1", port: ps.pgPort, user: "strata" });
    clients.push(c1);
    const c2 = await PgClient.connect({ host: "127.0.0.1", port: ps.pgPort, user: "strata" });
    clients.push(c2);
    await expectPgError(drain(c1, "fullbackup"), "22023", /expected 2 or 3 arguments/);
    await expectPgError(drain(c1, `fullbackup ${tenantId} not-a-timeline`), "22023", /invalid timeline id/);
    await expectPgError(drain(c1, `fullbackup ${tenantId} ${timelineId} 0/ZZ`), "22023", /invalid LSN/);
    await expectPgError(drain(c1, `fullbackup ${tenantId} ${timelineId} --zip`), "22023", /unknown option "--zip"/);
    await expectPgError(drain(c1, `fullbackup ${generateTenantId()} ${timelineId}`), "42704", /Tenant [0-9a-f]+ not found/);
    await expectPgError(drain(c1, `fullbackup ${tenantId} ${generateTimelineId()}`), "42704", /Timeline [0-9a-f]+ of tenant [0-9a-f]+ not found/);
    const below = (parseLsn(created.initial_lsn) - 0x1000n) as Lsn;
    await expectPgError(drain(c1, `fullbackup ${tenantId} ${timelineId} ${formatLsn(below)}`), "22023", /history starts at/);
    const ahead = (parseLsn(endInfo.last_record_lsn) + 0x100000n) as Lsn;
    const tw = Date.now();
    await expectPgError(drain(c1, `fullbackup ${tenantId} ${timelineId} ${formatLsn(ahead)}`), "57014", new RegExp(`Timed out after ${WAIT_LSN_TIMEOUT_MS} ms waiting for WAL at ${formatLsn(ahead)}`));
    assert.ok(Date.now() - tw >= WAIT_LSN_TIMEOUT_MS - 100, "waited before refusing");
    await expectPgError(drain(c1, "frobnicate"), "0A000", /Unknown page service command/);
    // the same connection, and another one at the same time, still serve backups
    const [n1, n2] = await Promise.all([drain(c1, `basebackup ${tenantId} ${timelineId}`), drain(c2, `basebackup ${tenantId} ${timelineId} ${formatLsn(endLsn)} --gzip`)]);
    assert.ok(n1 > 0 && n2 > 0 && n2 < n1, `basebackup ${n1} bytes, gzip ${n2}`);
    // an unaligned LSN (a record's exact end) is moved to the next multiple of 8
    assert.ok((await drain(c2, `basebackup ${tenantId} ${timelineId} ${formatLsn(endLsn - 3n)}`)) > 0);
    // a client that leaves mid-stream: its connection closes, the backup stops, others are served
    const c3 = await PgClient.connect({ host: "127.0.0.1", port: ps.pgPort, user: "strata" });
    clients.push(c3);
    for await (const chunk of c3.copyOut(`fullbackup ${tenantId} ${timelineId}`)) {
      assert.ok(chunk.length > 0);
      break;
    }
    assert.ok(c3.closed, "abandoning a COPY OUT closes the client connection");
    assert.ok((await drain(c2, `fullbackup ${tenantId} ${timelineId} ${formatLsn(endLsn)} --gzip`)) > 0);

    r = await http(ps.httpPort, "GET", "/metrics");
    assert.match(r.text, /strata_pageserver_backups_total\{kind="fullbackup",result="ok"\} [4-9]/);
    assert.match(r.text, /strata_pageserver_backups_total\{kind="fullbackup",result="error"\} [1-9]/);
    assert.match(r.text, /strata_pageserver_backup_bytes_total\{kind="basebackup"\} [1-9]/);
    assert.match(r.text, /strata_pageserver_backup_seconds_count\{kind="fullbackup"\} [1-9]/);
  } finally {
    for (const c of clients) await c.close().catch(() => undefined);
    for (const s of servers.reverse()) await s.destroy().catch(() => undefined);
    await ps?.stop().catch(() => undefined);
    await sk?.stop().catch(() => undefined);
    await removeTempDir(psDir);
    await removeTempDir(outDir);
  }
});
