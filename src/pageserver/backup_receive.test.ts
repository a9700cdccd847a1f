/**
 * backup_receive.ts: the framer re-parses a stream split at every offset
 * (payloads as views of the pushed chunks, never copies; other messages
 * decoded as the wire codec does) and refuses malformed framing with the
 * stream offset; the session against the real ServerConnection delivers
 * the payload in order and in bounded batches, and reports a server error
 * (before and during the COPY), a lost connection, a server that asks
 * for a password, and cancellation precisely.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server, type Socket } from "node:net";
import { StrataError } from "../lib/errors.js";
import { serializeBackend, type BackendMessage } from "../wire/messages.js";
import { ServerConnection, type AuthMethod } from "../wire/server_connection.js";
import { PgServerError } from "../wire/client.js";
import { CopyOutFramer, copyOutBatches, MAX_BATCH_BYTES, type CopyOutBatch } from "./backup_receive.js";

function collect(framer: CopyOutFramer, chunks: Buffer[]): { data: Buffer; views: Buffer[]; messages: BackendMessage[] } {
  const views: Buffer[] = [];
  const messages: BackendMessage[] = [];
  for (const c of chunks) framer.push(c, { data: (v) => views.push(v), message: (m) => messages.push(m) });
  return { data: Buffer.concat(views), views, messages };
}

const payload = Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7) & 0xff));
const stream = Buffer.concat([
  serializeBackend({ kind: "AuthenticationOk" }),
  serializeBackend({ kind: "ParameterStatus", name: "server_version", value: "15" }),
  serializeBackend({ kind: "ReadyForQuery", status: "I" }),
  serializeBackend({ kind: "CopyOutResponse", format: 0, columnFormats: [] }),
  serializeBackend({ kind: "CopyData", data: payload.subarray(0, 1000) }),
  serializeBackend({ kind: "CopyData", data: Buffer.alloc(0) }),
  serializeBackend({ kind: "NoticeResponse", fields: { severity: "NOTICE", code: "00000", message: "hi" } }),
  serializeBackend({ kind: "CopyData", data: payload.subarray(1000) }),
  serializeBackend({ kind: "CopyDone" }),
  serializeBackend({ kind: "CommandComplete", tag: "COPY 0" }),
  serializeBackend({ kind: "ReadyForQuery", status: "I" }),
]);
const expectedKinds = ["AuthenticationOk", "ParameterStatus", "ReadyForQuery", "CopyOutResponse", "NoticeResponse", "CopyDone", "CommandComplete", "ReadyForQuery"];

test("the framer passes payloads through as views, however the stream is split", () => {
  const whole = collect(new CopyOutFramer(), [stream]);
  assert.deepEqual(whole.data, payload);
  assert.deepEqual(whole.messages.map((m) => m.kind), expectedKinds);
  assert.deepEqual(whole.messages[1], { kind: "ParameterStatus", name: "server_version", value: "15" });
  for (let cut = 1; cut < stream.length; cut++) {
    const a = Buffer.from(stream.subarray(0, cut));
    const b = Buffer.from(stream.subarray(cut));
    const r = collect(new CopyOutFramer(), [a, b]);
    assert.deepEqual(r.data, payload, `cut at ${cut}`);
    assert.deepEqual(r.messages.map((m) => m.kind), expectedKinds, `cut at ${cut}`);
    for (const v of r.views) assert.ok(v.buffer === a.buffer || v.buffer === b.buffer, "a payload view, not a copy");
  }
  // one byte at a time
  const bytes = collect(new CopyOutFramer(), Array.from(stream, (x) => Buffer.from([x])));
  assert.deepEqual(bytes.data, payload);
  assert.deepEqual(bytes.messages.map((m) => m.kind), expectedKinds);
});

test("the framer refuses malformed framing with the stream offset", () => {
  const ok = serializeBackend({ kind: "AuthenticationOk" });
  const badLength = Buffer.from([0x64, 0, 0, 0, 3]);
  assert.throws(() => collect(new CopyOutFramer(), [ok, badLength]), (e: unknown) => e instanceof StrataError && e.code === "protocol_violation" && /at byte 9: message length 3 is below 4/.test(e.message));
  assert.throws(() => collect(new CopyOutFramer(), [Buffer.from([0x01, 0, 0, 0, 4])]), /at byte 0: unknown message type 0x1/);
  assert.throws(() => collect(new CopyOutFramer(), [Buffer.from([0x45, 0, 0x10, 0, 5])]), /at byte 0: ErrorResponse of 1048577 bytes exceeds the 1048576-byte bound/);
  assert.throws(() => collect(new CopyOutFramer(16), [serializeBackend({ kind: "ParameterStatus", name: "a_long_parameter", value: "x" })]), /ParameterStatus of 19 bytes exceeds the 16-byte bound/);
  // a body the codec rejects: ReadyForQuery with a bad status
  assert.throws(() => collect(new CopyOutFramer(), [Buffer.from([0x5a, 0, 0, 0, 5, 0x58])]), (e: unknown) => e instanceof StrataError && e.code === "protocol_violation");
  // a stream cut inside a message is not at a boundary
  const f = new CopyOutFramer();
  collect(f, [stream.subarray(0, 3)]);
  assert.equal(f.atMessageBoundary, false);
  collect(f, [stream.subarray(3)]);
  assert.equal(f.atMessageBoundary, true);
});

/** A server that runs `script(conn, socket, query)` for each query after startup with `auth`. */
async function startServer(script: (conn: ServerConnection, socket: Socket, query: string) => Promise<void>, auth: AuthMethod = { method: "trust" }): Promise<{ server: Server; port: number }> {
  const server = createServer((socket) => {
    void (async () => {
      const conn = await ServerConnection.accept(socket, { authenticate: () => auth, serverParameters: {} }).catch(() => undefined);
      if (conn === undefined) return;
      for (;;) {
        const m = await conn.read().catch(() => null);
        if (m === null) return;
        if (m.kind !== "Query") continue;
        await script(conn, socket, m.sql);
      }
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const addr = server.address();
  return { server, port: typeof addr === "object" && addr !== null ? addr.port : 0 };
}

async function drain(it: AsyncIterable<CopyOutBatch>): Promise<{ data: Buffer; batches: number[] }> {
  const parts: Buffer[] = [];
  const batches: number[] = [];
  for await (const b of it) {
    assert.equal(b.views.reduce((n, v) => n + v.length, 0), b.bytes);
    batches.push(b.bytes);
    parts.push(Buffer.concat(b.views)); // copied: the ring reuses the bytes once released
    b.release();
  }
  return { data: Buffer.concat(parts), batches };
}

const big = Buffer.from(Array.from({ length: 3 << 20 }, (_, i) => (i * 31 + (i >> 11)) & 0xff));

test("a COPY OUT session: payload in order, batches bounded; errors reported precisely", async () => {
  const { server, port } = await startServer(async (conn, socket, q) => {
    if (q === "refuse") {
      conn.sendError(new StrataError("invalid_argument", "no such timeline"));
      conn.readyForQuery();
      return;
    }
    conn.send({ kind: "CopyOutResponse", format: 0, columnFormats: [] });
    const upTo = q === "fail" || q === "hangup" ? 1 << 20 : big.length;
    for (let off = 0; off < upTo; off += 100_000) conn.send({ kind: "CopyData", data: big.subarray(off, Math.min(upTo, off + 100_000)) });
    if (q === "hangup") {
      socket.destroy();
      return;
    }
    if (q === "fail") conn.sendError(new StrataError("corrupt_data", "page reconstruction failed"));
    else {
      conn.send({ kind: "CopyDone" });
      conn.send({ kind: "CommandComplete", tag: "COPY 0" });
    }
    conn.readyForQuery();
  });
  const base = { host: "127.0.0.1", port, user: "strata", batchBytes: 256 * 1024 };
  try {
    const r = await drain(copyOutBatches({ ...base, query: "fullbackup x" }));
    assert.deepEqual(r.data, big);
    assert.ok(r.batches.slice(0, -1).every((n) => n >= base.batchBytes && n < base.batchBytes + 100_000), `batch sizes ${r.batches.join(",")}`);

    await assert.rejects(drain(copyOutBatches({ ...base, query: "refuse" })), (e: unknown) => e instanceof PgServerError && e.sqlstate === "22023" && /Query "refuse".*no such timeline/.test(e.message));
    await assert.rejects(drain(copyOutBatches({ ...base, query: "fail" })), (e: unknown) => e instanceof PgServerError && /after \d+ bytes of COPY OUT.*page reconstruction failed/.test(e.message));
    await assert.rejects(drain(copyOutBatches({ ...base, query: "hangup" })), (e: unknown) => e instanceof StrataError && e.code === "io_error" && /closed by the server after \d+ bytes of COPY OUT/.test(e.message));

    // cancelled mid-stream, and a consumer that stops early: the connection is closed, nothing hangs
    const ac = new AbortController();
    await assert.rejects(
      (async () => {
        for await (const _ of copyOutBatches({ ...base, query: "fullbackup x", signal: ac.signal })) ac.abort();
      })(),
      (e: unknown) => e instanceof StrataError && e.code === "cancelled",
    );
    for await (const _ of copyOutBatches({ ...base, query: "fullbackup x" })) break;
  } finally {
    server.close();
  }
});

test("the receive ring wraps around and pauses the socket while batches are held, without losing or reordering a byte", async () => {
  const total = 40 << 20;
  const chunk = Buffer.from(Array.from({ length: 1 << 20 }, (_, i) => (i * 13 + (i >> 9)) & 0xff));
  const expectedAt = (pos: number) => (chunk[pos % chunk.length]! + Math.floor(pos / chunk.length)) & 0xff;
  const { server, port } = await startServer(async (conn) => {
    conn.send({ kind: "CopyOutResponse", format: 0, columnFormats: [] });
    for (let off = 0, k = 0; off < total; off += chunk.length, k++) {
      const piece = Buffer.from(chunk.map((b) => (b + k) & 0xff)).subarray(0, 300_001); // odd sizes: views straddle reads
      conn.send({ kind: "CopyData", data: piece });
      conn.send({ kind: "CopyData", data: Buffer.from(chunk.subarray(300_001).map((b) => (b + k) & 0xff)) });
    }
    conn.send({ kind: "CopyDone" });
    conn.send({ kind: "CommandComplete", tag: "COPY 0" });
    conn.readyForQuery();
  });
  try {
    const held: Array<{ b: CopyOutBatch; at: number }> = [];
    let heldBytes = 0;
    let maxHeld = 0;
    let pos = 0;
    // checked when released, not when received: a ring slot read into too early would show here
    const check = (b: CopyOutBatch, at: number) => {
      for (const v of b.views) {
        for (let i = 0; i < v.length; i += 4099) assert.equal(v[i], expectedAt(at + i), `byte ${at + i}`);
        assert.equal(v.at(-1), expectedAt(at + v.length - 1), `byte ${at + v.length - 1}`);
        at += v.length;
      }
    };
    for await (const b of copyOutBatches({ host: "127.0.0.1", port, user: "strata", query: "q", batchBytes: 1 << 20 })) {
      held.push({ b, at: pos });
      pos += b.bytes;
      heldBytes += b.bytes;
      maxHeld = Math.max(maxHeld, heldBytes);
      // a slow consumer holding two batches while it waits for the next (within MAX_BATCH_BYTES's budget): the ring must not overwrite them
      if (held.length > 2) {
        await new Promise((r) => setTimeout(r, 2));
        const old = held.shift()!;
        check(old.b, old.at);
        heldBytes -= old.b.bytes;
        old.b.release();
      }
    }
    for (const h of held) check(h.b, h.at);
    await assert.rejects(drain(copyOutBatches({ host: "127.0.0.1", port, user: "strata", query: "q", batchBytes: MAX_BATCH_BYTES + 1 })), /COPY OUT batch of \d+ bytes is outside 1\.\.\d+/);
    assert.equal(pos, total);
    assert.ok(maxHeld <= 8 << 20, `held ${maxHeld} bytes`);
  } finally {
    server.close();
  }
});

test("a server that asks for a password is refused as unsupported", async () => {
  const { server, port } = await startServer(async () => undefined, { method: "password", password: "secret" });
  try {
    await assert.rejects(drain(copyOutBatches({ host: "127.0.0.1", port, user: "strata", query: "x", batchBytes: 1024 })), (e: unknown) => e instanceof StrataError && e.code === "unsupported" && /AuthenticationCleartextPassword/.test(e.message));
  } finally {
    server.close();
  }
});
