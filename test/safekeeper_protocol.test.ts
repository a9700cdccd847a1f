/**
 * Acceptance 5 (issue 4): garbage, truncated and oversized protocol messages
 * and bad HTTP requests get clear errors, and a client streaming WAL from the
 * same safekeeper at the same time is unaffected (it keeps receiving WAL
 * byte-identical to the primary's while the others misbehave).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { startPostgres } from "./harness/pg_server.js";
import { removeTempDir } from "./harness/tools.js";
import { formatLsn, lsn as toLsn, parseLsn, type Lsn } from "../src/lib/lsn.js";
import { PgClient, PgServerError } from "../src/wire/client.js";
import { PROTOCOL_VERSION_3_0, serializeFrontend, type BackendMessage } from "../src/wire/messages.js";
import { BackendParser } from "../src/wire/parser.js";
import { http, newIds, readWalRange, startInProcess, timelineLsn, waitFor } from "./safekeeper_helpers.js";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";

/** Sends `chunks` on a raw connection and collects the server's messages until it closes (bounded). */
async function raw(port: number, chunks: Buffer[], opts: { end?: boolean; waitMs?: number } = {}): Promise<{ messages: BackendMessage[]; closed: boolean }> {
  const socket: Socket = connect({ host: "127.0.0.1", port });
  const parser = new BackendParser({ maxMessageBytes: 1 << 20 });
  const messages: BackendMessage[] = [];
  let closed = false;
  socket.on("data", (b: Buffer) => {
    if (b.length === 1 && b[0] === 0x4e && messages.length === 0) return; // 'N' to an SSLRequest
    parser.push(b);
    for (let m = parser.next(); m !== null; m = parser.next()) messages.push(m);
  });
  const done = new Promise<void>((res) => socket.on("close", () => ((closed = true), res())));
  socket.on("error", () => undefined);
  await new Promise<void>((res) => socket.once("connect", () => res()));
  for (const c of chunks) socket.write(c);
  if (opts.end) socket.end();
  await Promise.race([done, new Promise((res) => setTimeout(res, opts.waitMs ?? 3000))]);
  socket.destroy();
  return { messages, closed };
}

function startup(params: Record<string, string>): Buffer {
  return serializeFrontend({ kind: "StartupMessage", protocolVersion: PROTOCOL_VERSION_3_0, parameters: new Map(Object.entries(params)) });
}

function errorOf(messages: BackendMessage[]): { severity: string; code: string; message: string } {
  const e = messages.find((m): m is Extract<BackendMessage, { kind: "ErrorResponse" }> => m.kind === "ErrorResponse");
  assert.ok(e, `expected an ErrorResponse, got ${messages.map((m) => m.kind).join(", ")}`);
  return { severity: e.fields.severity, code: e.fields.code, message: e.fields.message };
}

test("acceptance 5: malformed libpq input and bad HTTP requests get clear errors; a concurrent stream is unaffected", { timeout: 90_000 }, async () => {
  const pg = await startPostgres({ synchronousStandbyNames: "sk_1" });
  let sk: Safekeeper | undefined;
  let streamer: PgClient | undefined;
  try {
    sk = await startInProcess({ id: 1 });
    const ids = newIds();
    const base = `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`;
    const r = await http(sk.httpPort, "PUT", `${base}/compute`, { connstr: pg.connString(), term: 1 });
    assert.equal(r.status, 201, r.text);
    const startLsn = parseLsn((r.body as { timeline_start_lsn: string }).timeline_start_lsn);
    const options = `-c tenant_id=${ids.tenantId} -c timeline_id=${ids.timelineId}`;
    const good = { user: "postgres", database: "postgres", replication: "true", options };
    const port = sk.pgPort;

    // A well-behaved consumer streams the whole time.
    streamer = await PgClient.connect({ host: "127.0.0.1", port, user: "postgres", replication: true, options, applicationName: "steady" });
    const stream = await streamer.startReplication({ startLsn });
    const received: Buffer[] = [];
    let receivedEnd: Lsn = startLsn;
    let stopRequested = false;
    const consuming = (async () => {
      for await (const m of stream) {
        if (stopRequested) break;
        if (m.kind === "XLogData") {
          assert.equal(m.dataStart, receivedEnd);
          received.push(m.data);
          receivedEnd = toLsn(receivedEnd + BigInt(m.data.length));
          stream.sendStatusUpdate({ writeLsn: receivedEnd, flushLsn: receivedEnd, applyLsn: receivedEnd });
        } else if (m.replyRequested) {
          stream.sendStatusUpdate({ writeLsn: receivedEnd, flushLsn: receivedEnd, applyLsn: receivedEnd });
        }
      }
    })().catch((e: unknown) => e);
    const load = pg.sql("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;", { timeoutMs: 30_000 });

    // 1. Garbage instead of a startup packet.
    let x = await raw(port, [Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n")]);
    assert.equal(errorOf(x.messages).code, "08P01");
    assert.equal(x.closed, true);
    // 2. A truncated startup packet, then the client hangs up: the server just closes.
    x = await raw(port, [startup(good).subarray(0, 11)], { end: true });
    assert.equal(x.closed, true);
    // 3. An oversized message after a good startup.
    const huge = Buffer.alloc(5);
    huge[0] = 0x51; // 'Q'
    huge.writeInt32BE(100 * 1024 * 1024, 1);
    x = await raw(port, [startup(good), huge]);
    let err = errorOf(x.messages.filter((m) => m.kind === "ErrorResponse"));
    assert.equal(err.code, "08P01");
    assert.match(err.message, /exceeds the limit/);
    assert.equal(x.closed, true);
    // 4. An unknown message type.
    x = await raw(port, [startup(good), Buffer.from([0x7e, 0, 0, 0, 4])]);
    err = errorOf(x.messages);
    assert.equal(err.code, "08P01");
    assert.match(err.message, /unknown message type/);
    // 5. A malformed standby status update inside CopyBoth.
    const shortReply = serializeFrontend({ kind: "CopyData", data: Buffer.from([0x72, 1, 2, 3]) });
    x = await raw(port, [startup(good), serializeFrontend({ kind: "Query", sql: `START_REPLICATION PHYSICAL ${formatLsn(startLsn)}` }), shortReply]);
    assert.ok(x.messages.some((m) => m.kind === "CopyBothResponse"));
    err = errorOf(x.messages);
    assert.equal(err.severity, "FATAL");
    assert.equal(err.code, "08P01");
    assert.match(err.message, /standby status update/);
    assert.equal(x.closed, true);
    // 6. A garbage CopyData tag.
    x = await raw(port, [startup(good), serializeFrontend({ kind: "Query", sql: `START_REPLICATION ${formatLsn(startLsn)}` }), serializeFrontend({ kind: "CopyData", data: Buffer.from("zz") })]);
    assert.match(errorOf(x.messages).message, /pageserver feedback|unknown tag|Malformed/);
    // 7. Not a replication connection; an unknown timeline; options naming only the tenant.
    x = await raw(port, [startup({ user: "postgres", database: "postgres", options })]);
    assert.equal(errorOf(x.messages).code, "0A000");
    x = await raw(port, [startup({ ...good, options: `-c tenant_id=${"ab".repeat(16)} -c timeline_id=${"cd".repeat(16)}` })]);
    assert.match(errorOf(x.messages).message, /does not exist/);
    x = await raw(port, [startup({ ...good, options: `-c tenant_id=${ids.tenantId}` })]);
    assert.match(errorOf(x.messages).message, /both tenant_id and timeline_id/);
    x = await raw(port, [startup({ ...good, options: `-c tenant_id=nothex -c timeline_id=${ids.timelineId}` })]);
    assert.match(errorOf(x.messages).message, /Cannot parse tenant id/);

    // 8. Bad commands get an ERROR and the connection stays usable.
    const c = await PgClient.connect({ host: "127.0.0.1", port, user: "postgres", replication: true, options });
    try {
      await assert.rejects(c.simpleQuery("START_REPLICATION PHYSICAL nonsense"), (e: unknown) => e instanceof PgServerError && e.sqlstate === "42601");
      await assert.rejects(c.simpleQuery("BASE_BACKUP"), (e: unknown) => e instanceof PgServerError && e.sqlstate === "0A000");
      await assert.rejects(c.simpleQuery("TIMELINE_HISTORY 2"), (e: unknown) => e instanceof PgServerError && e.sqlstate === "58P01");
      await assert.rejects(c.simpleQuery("SHOW shared_buffers"), (e: unknown) => e instanceof PgServerError && e.sqlstate === "42704");
      await assert.rejects(c.startReplication({ startLsn: parseLsn("FF/0") }), (e: unknown) => e instanceof PgServerError && /ahead of the WAL flush position/.test(e.message));
      await assert.rejects(c.startReplication({ startLsn: startLsn, timeline: 2 }), (e: unknown) => e instanceof PgServerError && /timeline 2/.test(e.message));
      const ident = await c.identifySystem();
      assert.equal(ident.systemId, await pg.sql("SELECT system_identifier FROM pg_control_system()"));
      assert.equal(ident.timeline, 1);
      const [show] = await c.simpleQuery("SHOW wal_segment_size");
      assert.equal(show!.rows[0]![0], "16MB");
      const [slot] = await c.simpleQuery("READ_REPLICATION_SLOT anything");
      assert.deepEqual(slot!.rows[0], ["physical", null, null]);
    } finally {
      await c.close();
    }

    // 9. Bad HTTP requests.
    const bad = async (method: string, path: string, body: unknown, status: number, pattern: RegExp, raw?: string) => {
      const res = await http(sk!.httpPort, method, path, body, raw !== undefined ? { raw } : {});
      assert.equal(res.status, status, `${method} ${path}: ${res.text}`);
      assert.match((res.body as { error: string }).error, pattern, res.text);
    };
    await bad("PUT", `${base}/compute`, undefined, 400, /JSON|Body/i, "{not json");
    await bad("PUT", `${base}/compute`, [1, 2], 400, /must be a JSON object, got an array/);
    await bad("PUT", `${base}/compute`, { connstr: pg.connString() }, 400, /term must be a non-negative integer/);
    await bad("PUT", `${base}/compute`, { connstr: pg.connString(), term: "x1" }, 400, /term must be a non-negative integer/);
    await bad("PUT", `${base}/compute`, { connstr: pg.connString(), term: 0 }, 400, /at least 1/);
    await bad("PUT", `${base}/compute`, { connstr: pg.connString(), term: 1, extra: true }, 400, /Unknown field "extra"/);
    await bad("PUT", `${base}/compute`, { connstr: "host=/var/run user=x", term: 1 }, 400, /Unix socket/);
    await bad("PUT", `${base}/compute`, { connstr: "host=x port=99999", term: 1 }, 400, /invalid port/);
    await bad("PUT", `${base}/compute`, { connstr: pg.connString(), term: 1, start_lsn: "12345" }, 400, /start_lsn.*missing "\/"/);
    await bad("GET", `/v1/tenant/xyz/timeline/${ids.timelineId}`, undefined, 400, /Cannot parse tenant id "xyz"/);
    await bad("GET", `/v1/tenant/${ids.tenantId}/timeline/${"0".repeat(32)}`, undefined, 404, /does not exist/);
    await bad("POST", `/v1/tenant/${ids.tenantId}/timeline`, { timeline_id: ids.timelineId, system_id: "1", start_lsn: "0/1000000" }, 409, /already exists/);
    await bad("POST", `/v1/tenant/${ids.tenantId}/timeline`, { timeline_id: "0".repeat(32), system_id: "-1", start_lsn: "0/1000000" }, 400, /system_id must be an unsigned 64-bit integer/);
    await bad("POST", `/v1/tenant/${ids.tenantId}/timeline`, { timeline_id: "0".repeat(32), system_id: "1", start_lsn: "0/1000000", wal_seg_size: 3000000 }, 400, /wal_seg_size/);
    await bad("DELETE", `/v1/tenant/${ids.tenantId}/timeline/${"0".repeat(32)}`, undefined, 404, /does not exist/);
    await bad("PUT", `${base}/compute`, undefined, 413, /too large/i, JSON.stringify({ connstr: "x".repeat(2 * 1024 * 1024), term: 1 }));
    await bad("GET", "/v1/nothing", undefined, 404, /no route/);

    // The steady consumer kept streaming through all of it.
    await load;
    const end = parseLsn(await pg.sql("SELECT pg_current_wal_flush_lsn()"));
    await waitFor("the steady consumer to receive the load's WAL", () => receivedEnd >= end - 8n, 20_000);
    const got = Buffer.concat(received);
    const want = await readWalRange(pg.walDir, startLsn, receivedEnd);
    assert.ok(got.equals(want), "the concurrent stream received exactly the primary's WAL");
    const metrics = (await http(sk.httpPort, "GET", "/metrics")).text;
    const perr = /strata_safekeeper_protocol_errors_total (\d+)/.exec(metrics);
    assert.ok(perr && Number(perr[1]) >= 4, `protocol errors counted: ${perr?.[1]}`);
    assert.ok(receivedEnd <= (await timelineLsn(sk.httpPort, ids, "commit_lsn")), "nothing past commit_lsn was sent");
    // End streaming the protocol's way: CopyDone both ways, then the connection is usable again.
    stopRequested = true;
    await pg.sql("INSERT INTO t VALUES (0, 'wake the consumer')", { timeoutMs: 30_000 });
    assert.equal(await consuming, undefined);
    await stream.stop();
    const again = await streamer.identifySystem();
    assert.equal(again.timeline, 1);
  } finally {
    if (streamer && !streamer.closed) await streamer.close();
    await sk?.stop();
    await pg.destroy();
    if (sk) await removeTempDir(sk.config.dataDir);
  }
});


test("WAL service with a password: SCRAM-SHA-256, wrong passwords refused; single-timeline default without options", { timeout: 30_000 }, async () => {
  const sk = await startInProcess({ id: 7, password: "s3cret" });
  try {
    const ids = newIds();
    const r = await http(sk.httpPort, "POST", `/v1/tenant/${ids.tenantId}/timeline`, { timeline_id: ids.timelineId, system_id: "7001", start_lsn: "0/3000000", pg_version: 150018 });
    assert.equal(r.status, 201, r.text);
    await assert.rejects(
      PgClient.connect({ host: "127.0.0.1", port: sk.pgPort, user: "postgres", replication: true, password: "wrong" }),
      (e: unknown) => e instanceof PgServerError && e.sqlstate === "28P01",
    );
    await assert.rejects(PgClient.connect({ host: "127.0.0.1", port: sk.pgPort, user: "postgres", replication: true }), /requires SCRAM-SHA-256 authentication/);
    // No options: the only timeline is used.
    const c = await PgClient.connect({ host: "127.0.0.1", port: sk.pgPort, user: "postgres", replication: true, password: "s3cret" });
    try {
      const ident = await c.identifySystem();
      assert.equal(ident.systemId, "7001");
      assert.equal(formatLsn(ident.xlogPos), "0/3000000");
      const [v] = await c.simpleQuery("SHOW server_version_num");
      assert.equal(v!.rows[0]![0], "150018");
    } finally {
      await c.close();
    }
    // With two timelines, a connection must say which.
    const other = newIds();
    assert.equal((await http(sk.httpPort, "POST", `/v1/tenant/${other.tenantId}/timeline`, { timeline_id: other.timelineId, system_id: "7002", start_lsn: "0/3000000" })).status, 201);
    await assert.rejects(PgClient.connect({ host: "127.0.0.1", port: sk.pgPort, user: "postgres", replication: true, password: "s3cret" }), /holds 2 timelines/);
    // Deleting a timeline removes it from the API and the WAL service.
    assert.equal((await http(sk.httpPort, "DELETE", `/v1/tenant/${other.tenantId}/timeline/${other.timelineId}`)).status, 200);
    assert.equal((await http(sk.httpPort, "GET", `/v1/tenant/${other.tenantId}/timeline/${other.timelineId}`)).status, 404);
    const c2 = await PgClient.connect({ host: "127.0.0.1", port: sk.pgPort, user: "postgres", replication: true, password: "s3cret" });
    await c2.close();
  } finally {
    await sk.stop();
    await removeTempDir(sk.config.dataDir);
  }
});
