/**
 * Acceptance 4 (issue 4): consumers of the safekeeper's WAL service.
 * * An unmodified PostgreSQL 15 hot standby, made with pg_basebackup from the
 *   primary (`-X none`: every WAL byte it needs comes from the safekeeper),
 *   with primary_conninfo pointing at the safekeeper (tenant and timeline in
 *   `options`), replicates and returns the same query results as the primary.
 * * pg_receivewal streaming from the safekeeper writes segments that are
 *   byte-identical to the primary's (complete ones whole, the partial one
 *   over what it received).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { appendFile, readdir, readFile, writeFile, chown } from "node:fs/promises";
import { join } from "node:path";
import { PgServer, startPostgres } from "./harness/pg_server.js";
import { freePort } from "./harness/ports.js";
import { makeTempDir, pgUser, PG_BIN_DIR, removeTempDir, runToolOk } from "./harness/tools.js";
import { parseLsn, type Lsn } from "../src/lib/lsn.js";
import { http, newIds, readWalRange, startInProcess, timelineLsn, waitFor } from "./safekeeper_helpers.js";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";

const CHECKSUM_SQL = "SELECT count(*) || ':' || sum(id) || ':' || md5(string_agg(v, ',' ORDER BY id)) FROM t";

test("acceptance 4: a vanilla hot standby and pg_receivewal stream from the safekeeper", { timeout: 90_000 }, async () => {
  const pg = await startPostgres({ synchronousStandbyNames: "sk_1", settings: { wal_keep_size: "512MB" } });
  let sk: Safekeeper | undefined;
  let standby: PgServer | undefined;
  const recvDir = await makeTempDir("receivewal");
  let receiver: ReturnType<typeof spawn> | undefined;
  try {
    sk = await startInProcess({ id: 1 });
    const ids = newIds();
    const r = await http(sk.httpPort, "PUT", `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}/compute`, { connstr: pg.connString(), term: 1 });
    assert.equal(r.status, 201, r.text);
    const options = `-c tenant_id=${ids.tenantId} -c timeline_id=${ids.timelineId}`;
    const skConn = `host=127.0.0.1 port=${sk.pgPort} user=postgres`;

    // pg_receivewal from the start: it asks IDENTIFY_SYSTEM and streams from that segment's start.
    let recvErr = "";
    receiver = spawn(join(PG_BIN_DIR, "pg_receivewal"), ["-D", recvDir, "-d", `${skConn} options='${options}'`, "--no-loop", "-v", "-s", "1"], { stdio: ["ignore", "ignore", "pipe"] });
    receiver.stderr!.on("data", (b: Buffer) => (recvErr += b.toString()));
    const receiverExit = new Promise<number | null>((res) => receiver!.on("exit", (code) => res(code)));

    await pg.sql("CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;", { timeoutMs: 30_000 });
    await pg.switchWal();

    // A standby from a base backup taken without WAL: it needs the safekeeper from the backup's start on.
    const base = await makeTempDir("standby");
    const sdata = join(base, "data");
    await runToolOk("pg_basebackup", ["-h", pg.host, "-p", String(pg.port), "-U", "postgres", "-D", sdata, "-X", "none", "-c", "fast"], { asPgUser: true, timeoutMs: 60_000 });
    const port = await freePort();
    const conninfo = `${skConn} application_name=standby1 options=''${options}''`;
    await appendFile(
      join(sdata, "postgresql.conf"),
      `\n# standby of the safekeeper\nport = ${port}\nhot_standby = on\nhot_standby_feedback = on\nprimary_conninfo = '${conninfo}'\nsynchronous_standby_names = ''\nwal_receiver_status_interval = 1\n`,
    );
    await writeFile(join(sdata, "standby.signal"), "");
    const u = pgUser();
    if (u) await chown(join(sdata, "standby.signal"), u.uid, u.gid);
    standby = new PgServer(base, sdata, port);
    await standby.start();

    // More work on the primary while the standby follows.
    await pg.sql("UPDATE t SET v = v || 'u' WHERE id % 7 = 0; DELETE FROM t WHERE id % 11 = 0; INSERT INTO t SELECT g, 'late' FROM generate_series(6000, 6500) g;", { timeoutMs: 30_000 });
    await pg.switchWal();
    await pg.sql("INSERT INTO t VALUES (7000, 'last')", { timeoutMs: 30_000 });
    const target = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    const expected = await pg.sql(CHECKSUM_SQL);
    await waitFor(
      "the standby to replay up to the primary's position",
      async () => {
        try {
          return parseLsn(await standby!.sql("SELECT pg_last_wal_replay_lsn()")) >= target - 8n && (await standby!.sql(CHECKSUM_SQL)) === expected;
        } catch {
          return false;
        }
      },
      40_000,
      250,
    );
    assert.equal(await standby.sql(CHECKSUM_SQL), expected);
    assert.equal(await standby.sql("SELECT pg_is_in_recovery()"), "t");

    // The safekeeper saw the standby's feedback.
    await waitFor(
      "the standby's status updates",
      async () => {
        const st = (await http(sk!.httpPort, "GET", `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`)).body as { consumers: { application_name: string; flush_lsn: string | null }[] };
        const c = st.consumers.find((x) => x.application_name === "standby1");
        return c !== undefined && c.flush_lsn !== null && parseLsn(c.flush_lsn) >= target - 8n;
      },
      20_000,
      200,
    );

    // pg_receivewal: stop it once it has everything, then compare its files with the primary's.
    const servable = await timelineLsn(sk.httpPort, ids, "commit_lsn");
    await waitFor(
      "pg_receivewal to receive up to the commit LSN",
      async () => {
        const names = await readdir(recvDir);
        return names.some((n) => n.endsWith(".partial") && n.startsWith(walNameFor(servable)));
      },
      20_000,
      200,
    );
    await new Promise((res) => setTimeout(res, 1500)); // its last write of the partial segment
    receiver.kill("SIGINT");
    const code = await receiverExit;
    receiver = undefined;
    assert.equal(code, 0, `pg_receivewal exited with ${code}: ${recvErr.slice(-2000)}`);
    const names = (await readdir(recvDir)).sort();
    const complete = names.filter((n) => /^[0-9A-F]{24}$/.test(n));
    assert.ok(complete.length >= 2, `pg_receivewal wrote ${names.join(", ")}`);
    for (const n of complete) {
      const mine = await readFile(join(recvDir, n));
      const theirs = await readFile(join(pg.walDir, n));
      assert.ok(mine.equals(theirs), `segment ${n} from the safekeeper differs from the primary's`);
    }
    const partial = names.find((n) => n.endsWith(".partial"));
    assert.ok(partial !== undefined);
    const segStart = segmentStartOfName(partial.slice(0, 24));
    const got = await readWalRange(recvDir, segStart, servable);
    const want = await readWalRange(pg.walDir, segStart, servable);
    assert.ok(got.equals(want), "the partial segment matches the primary's bytes up to the commit LSN");
    console.log(`pg_receivewal: ${complete.length} complete segments identical to the primary's; standby replayed to ${await standby.sql("SELECT pg_last_wal_replay_lsn()")}`);
  } finally {
    receiver?.kill("SIGKILL");
    await standby?.destroy();
    await sk?.stop();
    await pg.destroy();
    await removeTempDir(recvDir);
    if (sk) await removeTempDir(sk.config.dataDir);
  }
});

function walNameFor(l: Lsn): string {
  const seg = l / BigInt(16 * 1024 * 1024);
  return "00000001" + (seg / 256n).toString(16).toUpperCase().padStart(8, "0") + (seg % 256n).toString(16).toUpperCase().padStart(8, "0");
}

function segmentStartOfName(name: string): Lsn {
  const hi = BigInt("0x" + name.slice(8, 16));
  const lo = BigInt("0x" + name.slice(16, 24));
  return ((hi * 256n + lo) * BigInt(16 * 1024 * 1024)) as Lsn;
}
