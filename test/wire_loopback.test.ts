// Our client against our server-side codec over real TCP sockets: every
// authentication method, queries and errors, replication in both directions
// of ending, and hostile peers on each side (garbage, oversized messages,
// silence) — which must produce clear errors, never crashes, and must not
// disturb other connections.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, connect as netConnect, type Server, type Socket } from "node:net";
import { StrataError } from "../src/lib/errors.js";
import { parseLsn, lsnAdd, type Lsn } from "../src/lib/lsn.js";
import { PgClient, PgServerError } from "../src/wire/client.js";
import { PROTOCOL_VERSION_3_0, serializeBackend, serializeFrontend, type BackendMessage } from "../src/wire/messages.js";
import { BackendParser } from "../src/wire/parser.js";
import { parseReplicationCommand } from "../src/wire/repl_command.js";
import {
  parseClientReplicationMessage,
  pgTimestampNow,
  serializeReplicationMessage,
  type ClientReplicationMessage,
} from "../src/wire/replication.js";
import { makeScramVerifier } from "../src/wire/scram.js";
import { ServerConnection, INT4_OID, type AuthMethod } from "../src/wire/server_connection.js";
import { errorFieldsFor } from "../src/wire/sqlstate.js";

const PASSWORD = "correct horse";
const VERIFIER = makeScramVerifier(PASSWORD);
const WAL = Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7) & 0xff));
const START = parseLsn("0/1000028");

function authFor(user: string): AuthMethod {
  if (user === "trusty") return { method: "trust" };
  if (user === "plain") return { method: "password", password: PASSWORD };
  if (user === "scram") return { method: "scram-sha-256", verifier: VERIFIER };
  return { method: "scram-sha-256", verifier: null }; // unknown user: mock exchange
}

/** What the test server saw from replication clients. */
const seen: ClientReplicationMessage[] = [];

async function serve(conn: ServerConnection): Promise<void> {
  for (let m = await conn.read(); m !== null; m = await conn.read()) {
    if (m.kind !== "Query") {
      conn.sendError(new StrataError("protocol_violation", `unexpected ${m.kind}`));
      conn.readyForQuery();
      continue;
    }
    if (conn.startup.replication === "physical") {
      try {
        const cmd = parseReplicationCommand(m.sql);
        if (cmd.kind === "IDENTIFY_SYSTEM") {
          conn.sendRows(
            [{ name: "systemid" }, { name: "timeline", typeOid: INT4_OID }, { name: "xlogpos" }, { name: "dbname" }],
            [["7300000000000000001", "1", "0/1000B00", null]],
            "IDENTIFY_SYSTEM",
          );
        } else if (cmd.kind === "START_REPLICATION") {
          await streamWal(conn, cmd.startLsn, cmd.timeline === 7);
        } else {
          throw new StrataError("unsupported", `${cmd.kind} not served here`);
        }
      } catch (e) {
        conn.sendError(e);
      }
    } else if (m.sql === "SELECT fixed") {
      conn.sendRows([{ name: "a" }, { name: "b" }], [["1", null], ["héllo", ""]], "SELECT 2");
    } else if (m.sql === "SELECT fixed; SELECT fixed") {
      conn.sendRows([{ name: "a" }], [["x"]], "SELECT 1");
      conn.sendRows([{ name: "a" }], [["y"]], "SELECT 1");
    } else if (m.sql === "") {
      conn.send({ kind: "EmptyQueryResponse" });
    } else {
      conn.sendError(new StrataError("invalid_argument", `no such query: ${m.sql}`), { code: "42601", hint: "try SELECT fixed" });
    }
    conn.readyForQuery();
  }
}

/**
 * Streams WAL from `start` in 1000-byte XLogData messages with a keepalive in
 * between, then either waits for the client's CopyDone or (endTimeline) ends
 * the stream itself and reports a next timeline.
 */
async function streamWal(conn: ServerConnection, start: Lsn, endTimeline: boolean): Promise<void> {
  conn.send({ kind: "CopyBothResponse", format: 0, columnFormats: [] });
  for (let off = 0; off < WAL.length; off += 1000) {
    const data = WAL.subarray(off, off + 1000);
    const payload = serializeReplicationMessage({ kind: "XLogData", dataStart: lsnAdd(start, off), walEnd: lsnAdd(start, WAL.length), sendTime: pgTimestampNow(), data });
    conn.send({ kind: "CopyData", data: payload });
    if (off === 1000) {
      conn.send({ kind: "CopyData", data: serializeReplicationMessage({ kind: "PrimaryKeepalive", walEnd: lsnAdd(start, WAL.length), sendTime: pgTimestampNow(), replyRequested: true }) });
    }
  }
  if (endTimeline) conn.send({ kind: "CopyDone" });
  for (let m = await conn.read(); m !== null; m = await conn.read()) {
    if (m.kind === "CopyData") seen.push(parseClientReplicationMessage(m.data));
    else if (m.kind === "CopyDone") break;
  }
  if (!endTimeline) conn.send({ kind: "CopyDone" });
  else conn.sendRows([{ name: "next_tli" }, { name: "next_tli_startpos" }], [["8", "0/1000BB8"]], "SELECT 1");
  conn.send({ kind: "CommandComplete", tag: "START_STREAMING" });
}

interface TestServer {
  port: number;
  server: Server;
  sockets: Set<Socket>;
  acceptErrors: unknown[];
}

async function startTestServer(opts: { maxMessageBytes?: number } = {}): Promise<TestServer> {
  const sockets = new Set<Socket>();
  const acceptErrors: unknown[] = [];
  const server = createServer((sock) => {
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
    ServerConnection.accept(sock, {
      authenticate: (s) => authFor(s.user),
      serverParameters: { server_version: "15.0", client_encoding: "UTF8" },
      startupTimeoutMs: 2000,
      maxMessageBytes: opts.maxMessageBytes,
    })
      .then(serve)
      .catch((e: unknown) => acceptErrors.push(e));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const addr = server.address();
  assert.ok(addr !== null && typeof addr === "object");
  return { port: addr.port, server, sockets, acceptErrors };
}

async function stopTestServer(t: TestServer): Promise<void> {
  for (const s of t.sockets) s.destroy();
  await new Promise<void>((resolve) => t.server.close(() => resolve()));
}

async function withTestServer(fn: (t: TestServer) => Promise<void>, opts: { maxMessageBytes?: number } = {}): Promise<void> {
  const t = await startTestServer(opts);
  try {
    await fn(t);
  } finally {
    await stopTestServer(t);
  }
}

function isStrata(code: string, re?: RegExp) {
  return (e: unknown) => e instanceof StrataError && e.code === code && (re === undefined || re.test(e.message));
}

/** Reads backend messages from a raw socket until it closes (bounded by timeoutMs). */
function readAllBackend(sock: Socket, timeoutMs = 3000): Promise<BackendMessage[]> {
  return new Promise((resolve, reject) => {
    const p = new BackendParser();
    const out: BackendMessage[] = [];
    const timer = setTimeout(() => reject(new Error("server did not close the connection")), timeoutMs);
    sock.on("data", (c: Buffer) => {
      p.push(c);
      for (let m = p.next(); m !== null; m = p.next()) out.push(m);
    });
    sock.on("error", () => undefined);
    sock.on("close", () => {
      clearTimeout(timer);
      resolve(out);
    });
  });
}

function rawConnect(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = netConnect({ host: "127.0.0.1", port }, () => resolve(s));
    s.on("error", reject);
  });
}

const startupBytes = (user: string, extra: [string, string][] = []) =>
  serializeFrontend({ kind: "StartupMessage", protocolVersion: PROTOCOL_VERSION_3_0, parameters: new Map([["user", user], ...extra]) });

test("authentication: trust, cleartext, SCRAM; wrong password, unknown user, missing password", async () => {
  await withTestServer(async ({ port }) => {
    const base = { host: "127.0.0.1", port, connectTimeoutMs: 5000 };
    for (const user of ["trusty", "plain", "scram"]) {
      const c = await PgClient.connect({ ...base, user, password: PASSWORD });
      assert.equal(c.parameters.get("server_version"), "15.0");
      assert.ok(c.processId > 0);
      await c.close();
    }
    for (const user of ["plain", "scram", "nobody"]) {
      await assert.rejects(
        PgClient.connect({ ...base, user, password: "wrong" }),
        (e: unknown) => e instanceof PgServerError && e.sqlstate === "28P01" && /password authentication failed for user/.test(e.message),
        user,
      );
    }
    await assert.rejects(PgClient.connect({ ...base, user: "scram" }), isStrata("invalid_argument", /requires SCRAM-SHA-256 authentication but no password/));
  });
});

test("simple queries: rows, NULLs, UTF-8, several statements, empty query, errors keep the connection usable", async () => {
  await withTestServer(async ({ port }) => {
    const c = await PgClient.connect({ host: "127.0.0.1", port, user: "trusty" });
    try {
      const [r] = await c.simpleQuery("SELECT fixed");
      assert.deepEqual(r!.rows, [["1", null], ["héllo", ""]]);
      assert.deepEqual(r!.fields.map((f) => f.name), ["a", "b"]);
      assert.equal(r!.commandTag, "SELECT 2");
      assert.equal((await c.simpleQuery("SELECT fixed; SELECT fixed")).length, 2);
      assert.deepEqual(await c.simpleQuery(""), []);
      await assert.rejects(c.simpleQuery("bogus"), (e: unknown) => e instanceof PgServerError && e.sqlstate === "42601" && e.fields.hint === "try SELECT fixed");
      assert.equal((await c.simpleQuery("SELECT fixed"))[0]!.rows.length, 2);
      const big = await c.simpleQuery("SELECT fixed", { maxResultBytes: 3 }).catch((e: unknown) => e);
      assert.ok(isStrata("invalid_argument", /exceeds 3 bytes/)(big));
      assert.equal(c.closed, true, "a result over the limit closes the connection");
    } finally {
      await c.close();
    }
  });
});

test("replication: XLogData and keepalives in order, status updates reach the server, stop() returns to query mode", async () => {
  seen.length = 0;
  await withTestServer(async ({ port }) => {
    const c = await PgClient.connect({ host: "127.0.0.1", port, user: "scram", password: PASSWORD, replication: true });
    try {
      const id = await c.identifySystem();
      assert.deepEqual(id, { systemId: "7300000000000000001", timeline: 1, xlogPos: parseLsn("0/1000B00"), dbName: null });
      const stream = await c.startReplication({ slot: "sk_1", startLsn: START, timeline: 1 });
      const received: Buffer[] = [];
      let next = START;
      let keepalives = 0;
      for await (const m of stream) {
        if (m.kind === "XLogData") {
          assert.equal(m.dataStart, next);
          received.push(m.data);
          next = lsnAdd(next, m.data.length);
          stream.sendStatusUpdate({ writeLsn: next, flushLsn: next, applyLsn: START });
          if (next === lsnAdd(START, WAL.length)) break;
        } else {
          keepalives++;
          assert.equal(m.replyRequested, true);
          stream.send({ kind: "HotStandbyFeedback", sendTime: pgTimestampNow(), xmin: 735, xminEpoch: 0, catalogXmin: 0, catalogXminEpoch: 0 });
        }
      }
      stream.send({ kind: "PageserverFeedback", lastReceivedLsn: next, diskConsistentLsn: START, remoteConsistentLsn: START, replyTime: pgTimestampNow() });
      await stream.stop();
      assert.deepEqual(Buffer.concat(received), WAL);
      assert.equal(keepalives, 1);
      // Back in query mode on the same connection.
      assert.equal((await c.identifySystem()).timeline, 1);
      const kinds = seen.map((m) => m.kind);
      assert.deepEqual(kinds.filter((k) => k === "StandbyStatusUpdate").length, 3);
      assert.ok(kinds.includes("HotStandbyFeedback") && kinds.at(-1) === "PageserverFeedback");
      const last = seen.filter((m) => m.kind === "StandbyStatusUpdate").at(-1);
      assert.equal(last?.kind === "StandbyStatusUpdate" && last.flushLsn, lsnAdd(START, WAL.length));
      // A command the server does not serve: clear error, connection still usable.
      await assert.rejects(c.simpleQuery("BASE_BACKUP"), (e: unknown) => e instanceof PgServerError && e.sqlstate === "0A000");
      await assert.rejects(c.simpleQuery("START_REPLICATION 0/1 TIMELINE 0"), (e: unknown) => e instanceof PgServerError && e.sqlstate === "42601");
      assert.equal((await c.identifySystem()).timeline, 1);
    } finally {
      await c.close();
    }
  });
});

test("replication: the server ends the stream and names the next timeline", async () => {
  await withTestServer(async ({ port }) => {
    const c = await PgClient.connect({ host: "127.0.0.1", port, user: "trusty", replication: true });
    try {
      const stream = await c.startReplication({ startLsn: START, timeline: 7 });
      let bytes = 0;
      for await (const m of stream) if (m.kind === "XLogData") bytes += m.data.length;
      assert.equal(bytes, WAL.length);
      assert.deepEqual(stream.end, { nextTimeline: 8, nextTimelineStartLsn: parseLsn("0/1000BB8") });
      assert.equal((await c.identifySystem()).systemId, "7300000000000000001");
    } finally {
      await c.close();
    }
  });
});

test("server side: garbage, oversized and truncated messages get FATAL 08P01, other connections unaffected", async () => {
  await withTestServer(
    async (t) => {
      const good = await PgClient.connect({ host: "127.0.0.1", port: t.port, user: "trusty" });
      try {
        const cases: [string, Buffer, RegExp][] = [
          ["garbage after startup", Buffer.concat([startupBytes("trusty"), Buffer.from("GET / HTTP/1.1\r\n\r\n")]), /unknown message type "G"/],
          ["oversized query", Buffer.concat([startupBytes("trusty"), serializeFrontend({ kind: "Query", sql: "x".repeat(5000) })]), /Query length 5005 exceeds the limit of 4096 bytes/],
          ["truncated C-string", Buffer.concat([startupBytes("trusty"), Buffer.from([0x51, 0, 0, 0, 6, 0x41, 0x42])]), /query string .* no NUL terminator/],
          ["oversized startup packet", Buffer.from([0, 1, 0, 0, 0, 3, 0, 0]), /startup packet length 65536 is outside/],
          ["protocol 2.0", Buffer.from([0, 0, 0, 8, 0, 2, 0, 0]), /unsupported frontend protocol 2\.0/],
          ["no user", startupBytes("", [["database", "x"]]), /No user name specified/],
          ["bad replication value", startupBytes("trusty", [["replication", "maybe"]]), /invalid value for parameter "replication"/],
        ];
        for (const [name, bytes, re] of cases) {
          const sock = await rawConnect(t.port);
          const done = readAllBackend(sock);
          sock.write(bytes);
          const msgs = await done;
          const err = msgs.find((m) => m.kind === "ErrorResponse");
          assert.ok(err?.kind === "ErrorResponse", `${name}: expected an ErrorResponse, got ${msgs.map((m) => m.kind).join(",")}`);
          assert.equal(err.fields.severity, "FATAL", name);
          assert.match(err.fields.message, re, name);
          if (!/no user|replication value/.test(name)) assert.equal(err.fields.code, "08P01", name);
        }
        // SSL and GSS encryption requests are refused with 'N' and the startup continues.
        const sock = await rawConnect(t.port);
        const replies: Buffer[] = [];
        sock.on("data", (b: Buffer) => replies.push(b));
        sock.write(serializeFrontend({ kind: "SSLRequest" }));
        sock.write(serializeFrontend({ kind: "GSSENCRequest" }));
        sock.write(startupBytes("trusty"));
        await new Promise((r) => setTimeout(r, 200));
        const all = Buffer.concat(replies);
        assert.equal(all.subarray(0, 2).toString(), "NN");
        const p = new BackendParser();
        p.push(all.subarray(2));
        assert.equal(p.next()?.kind, "AuthenticationOk");
        sock.destroy();
        // The first connection never noticed.
        assert.equal((await good.simpleQuery("SELECT fixed"))[0]!.rows.length, 2);
      } finally {
        await good.close();
      }
    },
    { maxMessageBytes: 4096 },
  );
});

test("client side: hostile or silent servers give clear errors; connect timeout and abort", async () => {
  let behaviour: "garbage" | "silent" | "bad-error" = "garbage";
  const server = createServer((sock) => {
    sock.on("error", () => undefined);
    sock.once("data", () => {
      if (behaviour === "garbage") sock.write(Buffer.from("\x00\x01\x02garbage"));
      if (behaviour === "bad-error") sock.write(Buffer.concat([serializeBackend({ kind: "AuthenticationOk" }), Buffer.from("E\0\0\0\x0cSERROR\0\0", "latin1")]));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  try {
    const base = { host: "127.0.0.1", port, user: "u", connectTimeoutMs: 300 };
    await assert.rejects(PgClient.connect(base), isStrata("protocol_violation", /unknown message type 0x00/));
    behaviour = "bad-error";
    await assert.rejects(PgClient.connect(base), isStrata("protocol_violation", /missing one of the always-present fields/));
    behaviour = "silent";
    const t0 = Date.now();
    await assert.rejects(PgClient.connect(base), isStrata("timeout", /longer than 300 ms/));
    assert.ok(Date.now() - t0 < 2000);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    await assert.rejects(PgClient.connect({ ...base, connectTimeoutMs: 5000, signal: ac.signal }), isStrata("cancelled"));
    await assert.rejects(PgClient.connect({ ...base, signal: AbortSignal.abort() }));
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
  // Nothing listening.
  await assert.rejects(PgClient.connect({ host: "127.0.0.1", port, user: "u" }), isStrata("io_error", /ECONNREFUSED/));
});

test("errorFieldsFor maps StrataError codes to SQLSTATEs", () => {
  assert.equal(errorFieldsFor(new StrataError("unsupported", "x")).code, "0A000");
  assert.equal(errorFieldsFor(new StrataError("protocol_violation", "x"), "FATAL").severity, "FATAL");
  assert.equal(errorFieldsFor(new Error("boom")).code, "XX000");
});
