// ReplicationStream.readBatch against a scripted server over real TCP: the
// batches, concatenated, are exactly the messages the server sent, however
// the server's bytes were cut into TCP writes (1 byte, odd sizes, all at
// once); the control messages after the WAL (CopyDone, the next-timeline
// row, ReadyForQuery) end the stream cleanly even when they arrive in the
// same chunk as WAL; an ErrorResponse after WAL is thrown only after that
// WAL was returned; a malformed payload is a protocol_violation that closes
// the connection. Push mode (ReplicationStream.consume) gets the same
// guarantees, plus: a throw from its handler closes the connection and is
// what consume rejects with, and pause()/resume() hold deliveries back
// without losing any. The scripted server is a raw socket writing bytes from our
// own serializers (messages.ts, replication.ts), so the split points are ours.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Socket } from "node:net";
import { StrataError } from "../src/lib/errors.js";
import { lsnAdd, parseLsn } from "../src/lib/lsn.js";
import { PgClient, PgServerError, type ReplicationStream } from "../src/wire/client.js";
import { serializeBackend } from "../src/wire/messages.js";
import { FrontendParser } from "../src/wire/parser.js";
import { pgTimestamp, serializeReplicationMessage, type ServerReplicationMessage } from "../src/wire/replication.js";

const START = parseLsn("0/3000000");
const T = pgTimestamp(1234n);

/** WAL payload sizes: small commits, one message larger than a 64 KiB socket read, an empty one. */
const SIZES = [100, 8192, 3, 70000, 0, 777];

function walBytes(n: number, seed: number): Buffer {
  return Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));
}

function expectedMessages(): ServerReplicationMessage[] {
  const out: ServerReplicationMessage[] = [];
  let at = START;
  SIZES.forEach((n, i) => {
    out.push({ kind: "XLogData", dataStart: at, walEnd: at, sendTime: T, data: walBytes(n, i) });
    at = lsnAdd(at, n);
    if (i === 2) out.push({ kind: "PrimaryKeepalive", walEnd: at, sendTime: T, replyRequested: true });
  });
  return out;
}

const copyData = (m: ServerReplicationMessage): Buffer => serializeBackend({ kind: "CopyData", data: serializeReplicationMessage(m) });

type Ending = "copydone" | "error" | "malformed";

/** What the server sends after START_REPLICATION. */
function script(ending: Ending): Buffer {
  return Buffer.concat(scriptMessages(ending));
}

/** The same, one framed message per element. */
function scriptMessages(ending: Ending): Buffer[] {
  const parts: Buffer[] = [serializeBackend({ kind: "CopyBothResponse", format: 0, columnFormats: [] })];
  for (const m of expectedMessages()) parts.push(copyData(m));
  if (ending === "copydone") {
    parts.push(
      serializeBackend({ kind: "CopyDone" }),
      serializeBackend({ kind: "RowDescription", fields: [{ name: "next_tli", tableOid: 0, columnAttr: 0, typeOid: 20, typeSize: 8, typeModifier: -1, format: 0 }, { name: "next_tli_startpos", tableOid: 0, columnAttr: 0, typeOid: 25, typeSize: -1, typeModifier: -1, format: 0 }] }),
      serializeBackend({ kind: "DataRow", values: [Buffer.from("2"), Buffer.from("0/3022000")] }),
      serializeBackend({ kind: "CommandComplete", tag: "SELECT 1" }),
      serializeBackend({ kind: "CommandComplete", tag: "START_STREAMING" }),
      serializeBackend({ kind: "ReadyForQuery", status: "I" }),
    );
  } else if (ending === "error") {
    parts.push(
      serializeBackend({ kind: "ErrorResponse", fields: { severity: "ERROR", code: "XX000", message: "requested WAL segment has been removed" } }),
      serializeBackend({ kind: "ReadyForQuery", status: "I" }),
    );
  } else {
    parts.push(serializeBackend({ kind: "CopyData", data: Buffer.from([0x77, 1, 2, 3]) }));
  }
  return parts;
}

/**
 * Bytes of the script written in pieces of the chosen size; the rest goes in
 * 4 KiB pieces. It covers the small messages, the keepalive and the start of
 * the large one, so tiny pieces exercise every kind of split without
 * tens of thousands of writes.
 */
const SMALL_PIECES_PREFIX_BYTES = 12_000;
const LATER_PIECE_BYTES = 4096;

/**
 * A server that accepts any startup, then answers the first Query with
 * `script(ending)` written in pieces of `chunk` bytes (an event-loop turn
 * between pieces, so the client sees many reads); `chunk` 0 writes one
 * whole message per piece (reads that end on message boundaries).
 */
async function withScriptedServer(ending: Ending, chunk: number, fn: (port: number) => Promise<void>): Promise<void> {
  const sockets = new Set<Socket>();
  const server = createServer((sock) => {
    sockets.add(sock);
    sock.setNoDelay(true);
    sock.on("error", () => undefined);
    const p = new FrontendParser();
    sock.on("data", (b: Buffer) => {
      p.push(b);
      for (let m = p.next(); m !== null; m = p.next()) {
        if (m.kind === "StartupMessage") {
          sock.write(Buffer.concat([serializeBackend({ kind: "AuthenticationOk" }), serializeBackend({ kind: "ReadyForQuery", status: "I" })]));
        } else if (m.kind === "Query") {
          void (async () => {
            if (chunk === 0) {
              for (const piece of scriptMessages(ending)) {
                if (sock.destroyed) return;
                sock.write(piece);
                await new Promise((r) => setTimeout(r, 1));
              }
              return;
            }
            const bytes = script(ending);
            for (let off = 0; off < bytes.length && !sock.destroyed; ) {
              const piece = off < SMALL_PIECES_PREFIX_BYTES ? chunk : Math.max(chunk, LATER_PIECE_BYTES);
              sock.write(bytes.subarray(off, off + piece));
              off += piece;
              if (off < bytes.length) await new Promise((r) => setImmediate(r));
            }
          })();
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    await fn((server.address() as { port: number }).port);
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** Reads batches until `null` or an error; returns the messages and the error. */
async function readAll(port: number): Promise<{ msgs: ServerReplicationMessage[]; batches: number; error: unknown; client: PgClient; end: unknown }> {
  const client = await PgClient.connect({ host: "127.0.0.1", port, user: "u", replication: true, connectTimeoutMs: 5000 });
  const stream = await client.startReplication({ startLsn: START, timeline: 1 });
  const msgs: ServerReplicationMessage[] = [];
  let batches = 0;
  let error: unknown = null;
  try {
    for (let b = await stream.readBatch(); b !== null; b = await stream.readBatch()) {
      assert.ok(b.length > 0, "a batch is never empty");
      batches++;
      msgs.push(...b);
    }
  } catch (e) {
    error = e;
  }
  return { msgs, batches, error, client, end: stream.end };
}

const normalize = (ms: ServerReplicationMessage[]) => ms.map((m) => (m.kind === "XLogData" ? { ...m, data: m.data.toString("hex") } : m));

test("readBatch returns exactly the server's messages in order for every write size, and ends at CopyDone", async () => {
  const total = script("copydone").length;
  for (const chunk of [1, 5, 4093, 65536, total]) {
    await withScriptedServer("copydone", chunk, async (port) => {
      const r = await readAll(port);
      try {
        assert.equal(r.error, null, `chunk ${chunk}: ${String(r.error)}`);
        assert.deepEqual(normalize(r.msgs), normalize(expectedMessages()), `chunk ${chunk}`);
        assert.deepEqual(r.end, { nextTimeline: 2, nextTimelineStartLsn: parseLsn("0/3022000") });
        assert.equal(r.client.closed, false, "the connection is back in query mode");
        if (chunk === total) assert.ok(r.batches <= 3, `one write arrives in few batches (got ${r.batches})`);
      } finally {
        await r.client.close();
      }
    });
  }
});

test("readBatch: an ErrorResponse after WAL is thrown after that WAL is returned; a malformed payload closes the connection", async () => {
  await withScriptedServer("error", 1 << 20, async (port) => {
    const r = await readAll(port);
    try {
      assert.deepEqual(normalize(r.msgs), normalize(expectedMessages()));
      assert.ok(r.error instanceof PgServerError && r.error.sqlstate === "XX000" && /segment has been removed/.test(r.error.message), String(r.error));
      assert.equal(r.client.closed, false, "after an ERROR the connection is ready for queries again");
    } finally {
      await r.client.close();
    }
  });
  for (const chunk of [3, 1 << 20]) {
    await withScriptedServer("malformed", chunk, async (port) => {
      const r = await readAll(port);
      assert.ok(r.error instanceof StrataError && r.error.code === "protocol_violation" && /XLogData/.test(r.error.message), String(r.error));
      assert.equal(r.client.closed, true);
      // Messages before the malformed one may or may not have been returned (the connection is lost either way), never out of order.
      assert.deepEqual(normalize(r.msgs), normalize(expectedMessages()).slice(0, r.msgs.length));
    });
  }
});

test("readBatch and iteration do not mix", async () => {
  await withScriptedServer("copydone", 1 << 20, async (port) => {
    const client = await PgClient.connect({ host: "127.0.0.1", port, user: "u", replication: true, connectTimeoutMs: 5000 });
    try {
      const stream = await client.startReplication({ startLsn: START, timeline: 1 });
      assert.equal((await stream.readBatch())?.[0]?.kind, "XLogData");
      await assert.rejects(async () => {
        for await (const m of stream) void m;
      }, /iterated twice/);
    } finally {
      await client.close();
    }
  });
});

/** Consumes in push mode until the stream ends or fails; `onBatch` may act on each delivery. */
async function consumeAll(port: number, onBatch?: (ms: ServerReplicationMessage[], n: number, stream: ReplicationStream) => void, opts: { transientPayloads?: boolean; transientSeen?: { n: number } } = {}) {
  const client = await PgClient.connect({ host: "127.0.0.1", port, user: "u", replication: true, connectTimeoutMs: 5000 });
  const stream = await client.startReplication({ startLsn: START, timeline: 1 });
  const msgs: ServerReplicationMessage[] = [];
  let calls = 0;
  let error: unknown = null;
  try {
    await stream.consume((ms, _more, transient) => {
      assert.ok(ms.length > 0, "a delivery is never empty");
      assert.ok(!transient || opts.transientPayloads === true, "transient deliveries only when asked for");
      if (transient && opts.transientSeen) opts.transientSeen.n++;
      calls++;
      // Payload views are valid only during the call unless kept: copy, as a consumer that keeps them must.
      msgs.push(...ms.map((m) => (m.kind === "XLogData" ? { ...m, data: Buffer.from(m.data) } : m)));
      onBatch?.(ms, calls, stream);
    }, { transientPayloads: opts.transientPayloads ?? false });
  } catch (e) {
    error = e;
  }
  return { msgs, calls, error, client, end: stream.end };
}

test("consume delivers exactly the server's messages in order for every write size, and resolves at CopyDone", async () => {
  const total = script("copydone").length;
  for (const chunk of [1, 5, 4093, 65536, total]) {
    await withScriptedServer("copydone", chunk, async (port) => {
      const r = await consumeAll(port);
      try {
        assert.equal(r.error, null, `chunk ${chunk}: ${String(r.error)}`);
        assert.deepEqual(normalize(r.msgs), normalize(expectedMessages()), `chunk ${chunk}`);
        assert.deepEqual(r.end, { nextTimeline: 2, nextTimelineStartLsn: parseLsn("0/3022000") });
        assert.equal(r.client.closed, false, "the connection is back in query mode");
      } finally {
        await r.client.close();
      }
    });
  }
});

test("consume with transientPayloads: the same messages for every write size; reads of whole messages come in place", async () => {
  const total = script("copydone").length;
  for (const chunk of [0, 1, 5, 4093, 65536, total]) {
    await withScriptedServer("copydone", chunk, async (port) => {
      const transientSeen = { n: 0 };
      const r = await consumeAll(port, undefined, { transientPayloads: true, transientSeen });
      try {
        assert.equal(r.error, null, `chunk ${chunk}: ${String(r.error)}`);
        // The handler copied each payload during its call: anything read in place and then overwritten would differ here.
        assert.deepEqual(normalize(r.msgs), normalize(expectedMessages()), `chunk ${chunk}`);
        assert.deepEqual(r.end, { nextTimeline: 2, nextTimelineStartLsn: parseLsn("0/3022000") });
        if (chunk === 0) assert.ok(transientSeen.n >= 3, `one message per write: ${transientSeen.n} deliveries in place`);
      } finally {
        await r.client.close();
      }
    });
  }
});

test("consume: a throw from the handler closes the connection and is the rejection; server errors and malformed payloads as readBatch", async () => {
  await withScriptedServer("copydone", 1 << 20, async (port) => {
    const boom = new StrataError("protocol_violation", "consumer refused the WAL");
    const r = await consumeAll(port, () => {
      throw boom;
    });
    assert.equal(r.error, boom);
    assert.equal(r.calls, 1, "no delivery after the handler threw");
    assert.equal(r.client.closed, true);
  });
  await withScriptedServer("error", 1 << 20, async (port) => {
    const r = await consumeAll(port);
    try {
      assert.deepEqual(normalize(r.msgs), normalize(expectedMessages()));
      assert.ok(r.error instanceof PgServerError && r.error.sqlstate === "XX000", String(r.error));
      assert.equal(r.client.closed, false, "after an ERROR the connection is ready for queries again");
    } finally {
      await r.client.close();
    }
  });
  for (const chunk of [3, 1 << 20]) {
    await withScriptedServer("malformed", chunk, async (port) => {
      const r = await consumeAll(port);
      assert.ok(r.error instanceof StrataError && r.error.code === "protocol_violation", String(r.error));
      assert.equal(r.client.closed, true);
      assert.deepEqual(normalize(r.msgs), normalize(expectedMessages()).slice(0, r.msgs.length));
    });
  }
});

test("consume: pause() holds deliveries back until resume(), losing nothing", async () => {
  await withScriptedServer("copydone", 7, async (port) => {
    let pausedAt = 0;
    let deliveredWhilePaused = 0;
    let paused = false;
    const r = await consumeAll(port, (_ms, n, stream) => {
      if (paused) deliveredWhilePaused++;
      if (n === 3) {
        paused = true;
        pausedAt = Date.now();
        stream.pause();
        setTimeout(() => {
          paused = false;
          stream.resume();
        }, 150);
      }
    });
    try {
      assert.equal(r.error, null, String(r.error));
      assert.ok(pausedAt > 0, "the handler paused the stream");
      // Bytes already read when pause() ran may still complete a message or two; none after.
      assert.ok(deliveredWhilePaused <= 1, `${deliveredWhilePaused} deliveries while paused`);
      assert.deepEqual(normalize(r.msgs), normalize(expectedMessages()));
    } finally {
      await r.client.close();
    }
  });
});

test("consume and readBatch do not mix", async () => {
  await withScriptedServer("copydone", 1 << 20, async (port) => {
    const client = await PgClient.connect({ host: "127.0.0.1", port, user: "u", replication: true, connectTimeoutMs: 5000 });
    try {
      const stream = await client.startReplication({ startLsn: START, timeline: 1 });
      assert.equal((await stream.readBatch())?.[0]?.kind, "XLogData");
      assert.throws(() => void stream.consume(() => undefined), /consumed twice/);
    } finally {
      await client.close();
    }
  });
});
