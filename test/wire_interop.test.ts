// Our client against a real PostgreSQL 15 server that requires SCRAM-SHA-256
// on TCP: authentication, simple queries, server errors, IDENTIFY_SYSTEM and
// START_REPLICATION, with the streamed WAL compared byte for byte to the
// server's own pg_wal segment files, and status updates / hot standby
// feedback checked through pg_stat_replication.

import { test } from "node:test";
import assert from "node:assert/strict";
import { open, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { formatLsn, lsnAdd, parseLsn, segmentNumber, segmentOffset, walFileName, type Lsn } from "../src/lib/lsn.js";
import { PgClient, PgServerError } from "../src/wire/client.js";
import { pgTimestampNow } from "../src/wire/replication.js";
import { makeScramVerifier, parseScramVerifier } from "../src/wire/scram.js";
import { withPostgres, type PgServer } from "./harness/pg_server.js";
import { makeTempDir, removeTempDir } from "./harness/tools.js";

const PASSWORD = "Tr0ub4dor&3 with spaces";
/** Bound on the streaming phase: the WAL is a few MB on loopback. */
const STREAM_TIMEOUT_MS = 30_000;

/** Reads `length` bytes of WAL at `start` from the server's pg_wal files (timeline 1). */
async function readWal(pg: PgServer, start: Lsn, length: number): Promise<Buffer> {
  const out = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const at = lsnAdd(start, done);
    const file = join(pg.walDir, walFileName(1, segmentNumber(at)));
    const off = segmentOffset(at);
    const n = Math.min(length - done, 16 * 1024 * 1024 - off);
    const fh = await open(file, "r");
    try {
      const { bytesRead } = await fh.read(out, done, n, off);
      assert.equal(bytesRead, n, `short read from ${file}`);
    } finally {
      await fh.close();
    }
    done += n;
  }
  return out;
}

test("client interoperates with PostgreSQL 15 over SCRAM-SHA-256: queries and physical replication", { timeout: 120_000 }, async () => {
  const pwDir = await makeTempDir("pwfile");
  const pwFile = join(pwDir, "pw");
  await writeFile(pwFile, PASSWORD + "\n", { mode: 0o644 });
  // The harness's own psql calls must authenticate too.
  process.env.PGPASSWORD = PASSWORD;
  try {
    await withPostgres(
      {
        initdbArgs: ["--auth-host=scram-sha-256", `--pwfile=${pwFile}`],
        settings: { password_encryption: "scram-sha-256", wal_sender_timeout: "60s" },
      },
      async (pg) => {
        const base = { host: pg.host, port: pg.port, user: "postgres", connectTimeoutMs: 10_000 };

        // PostgreSQL's stored verifier is exactly what our derivation produces from the password.
        const stored = parseScramVerifier(await pg.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'"));
        assert.deepEqual(makeScramVerifier(PASSWORD, { salt: stored.salt, iterations: stored.iterations }), stored);

        // Wrong and missing passwords.
        await assert.rejects(
          PgClient.connect({ ...base, password: "nope" }),
          (e: unknown) => e instanceof PgServerError && e.sqlstate === "28P01" && e.fields.severity === "FATAL",
        );
        await assert.rejects(PgClient.connect({ ...base }), /requires SCRAM-SHA-256 authentication but no password/);

        // A normal connection: queries, types as text, NULLs, UTF-8, errors.
        const c = await PgClient.connect({ ...base, password: PASSWORD, applicationName: "strata-wire-test" });
        try {
          assert.match(c.parameters.get("server_version") ?? "", /^15\./);
          assert.equal(c.parameters.get("client_encoding"), "UTF8");
          const [r] = await c.simpleQuery("SELECT 1 AS one, NULL::text AS nothing, 'héllo ✓'::text AS s, 2::bigint * 3 AS six");
          assert.deepEqual(r!.rows, [["1", null, "héllo ✓", "6"]]);
          assert.deepEqual(r!.fields.map((f) => [f.name, f.typeOid]), [["one", 23], ["nothing", 25], ["s", 25], ["six", 20]]);
          assert.equal(r!.commandTag, "SELECT 1");
          await assert.rejects(
            c.simpleQuery("SELECT * FROM no_such_table"),
            (e: unknown) => e instanceof PgServerError && e.sqlstate === "42P01" && e.fields.position === "15",
          );
          const results = await c.simpleQuery("CREATE TABLE t (id int, pad text); INSERT INTO t VALUES (1, 'x'); SELECT count(*) FROM t");
          assert.deepEqual(results.map((x) => x.commandTag), ["CREATE TABLE", "INSERT 0 1", "SELECT 1"]);
          assert.equal((await c.simpleQuery("SELECT current_setting('application_name')"))[0]!.rows[0]![0], "strata-wire-test");
        } finally {
          await c.close();
        }

        // Replication connection: IDENTIFY_SYSTEM agrees with pg_control.
        const rc = await PgClient.connect({ ...base, password: PASSWORD, replication: true, applicationName: "sk_test" });
        try {
          const id = await rc.identifySystem();
          assert.equal(id.systemId, await pg.sql("SELECT system_identifier FROM pg_control_system()"));
          assert.equal(id.timeline, 1);
          assert.equal(id.dbName, null);
          // TIMELINE_HISTORY of timeline 1 does not exist: a clear server error, connection still usable.
          await assert.rejects(rc.simpleQuery("TIMELINE_HISTORY 1"), (e: unknown) => e instanceof PgServerError && e.sqlstate === "58P01");

          // Stream from an unaligned position inside the current segment while a few MB of WAL are written.
          const start = id.xlogPos;
          const stream = await rc.startReplication({ startLsn: start, timeline: 1 });
          await pg.sql("INSERT INTO t SELECT g, repeat('strata', 50) FROM generate_series(1, 20000) g; SELECT pg_switch_wal();");
          const target = await pg.currentWalLsn();
          const chunks: Buffer[] = [];
          let next = start;
          let messages = 0;
          let keepalives = 0;
          const deadline = Date.now() + STREAM_TIMEOUT_MS;
          for await (const m of stream) {
            assert.ok(Date.now() < deadline, `streaming did not reach ${formatLsn(target)} in time (at ${formatLsn(next)})`);
            if (m.kind === "XLogData") {
              assert.equal(formatLsn(m.dataStart), formatLsn(next), "XLogData is contiguous");
              assert.ok(m.walEnd >= m.dataStart);
              chunks.push(m.data);
              next = lsnAdd(next, m.data.length);
              messages++;
            } else {
              keepalives++;
            }
            stream.sendStatusUpdate({ writeLsn: next, flushLsn: next, applyLsn: start });
            if (next >= target) break;
          }
          const streamed = Buffer.concat(chunks);
          assert.ok(streamed.length > 2_000_000, `streamed ${streamed.length} bytes`);
          // Byte-identical to the server's WAL files over [start, next).
          const onDisk = await readWal(pg, start, streamed.length);
          assert.ok(streamed.equals(onDisk), "streamed WAL differs from pg_wal");

          // The server parsed our status update: pg_stat_replication shows our flush LSN.
          stream.sendStatusUpdate({ writeLsn: next, flushLsn: next, applyLsn: next, replyRequested: false });
          const xid = BigInt(await pg.sql("SELECT txid_current()"));
          stream.send({
            kind: "HotStandbyFeedback",
            sendTime: pgTimestampNow(),
            xmin: Number(xid & 0xffffffffn),
            xminEpoch: Number(xid >> 32n),
            catalogXmin: 0,
            catalogXminEpoch: 0,
          });
          let row: string[] | undefined;
          for (let i = 0; i < 50; i++) {
            row = (await pg.rows("SELECT flush_lsn, backend_xmin FROM pg_stat_replication WHERE application_name = 'sk_test'"))[0];
            if (row && row[0] === formatLsn(next) && row[1] === String(xid & 0xffffffffn)) break;
            await new Promise((r) => setTimeout(r, 100));
          }
          assert.deepEqual(row, [formatLsn(next), String(xid & 0xffffffffn)]);

          await stream.stop();
          // Back in query mode on the same connection.
          assert.equal((await rc.identifySystem()).systemId, id.systemId);
          console.log(`streamed ${streamed.length} bytes of WAL in ${messages} XLogData messages (+${keepalives} keepalives) from ${formatLsn(start)} to ${formatLsn(next)}; identical to pg_wal`);
        } finally {
          await rc.close();
        }
        // Starting beyond the end of WAL is refused by PostgreSQL with a clear error.
        const rc2 = await PgClient.connect({ ...base, password: PASSWORD, replication: true });
        try {
          // (PostgreSQL enters copy mode first and reports the error as the stream's first message.)
          const ahead = await rc2.startReplication({ startLsn: parseLsn("FF/0"), timeline: 1 });
          await assert.rejects(
            (async () => {
              for await (const m of ahead) assert.fail(`unexpected ${m.kind}`);
            })(),
            (e: unknown) => e instanceof PgServerError && /ahead of the WAL flush position/.test(e.message),
          );
          assert.equal((await rc2.identifySystem()).timeline, 1);
        } finally {
          await rc2.close();
        }
      },
    );
  } finally {
    delete process.env.PGPASSWORD;
    await removeTempDir(pwDir);
  }
});
