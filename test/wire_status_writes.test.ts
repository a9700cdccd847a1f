// ReplicationStream's status updates and feedback go out through PgClient's
// direct write (one write(2) when nothing is queued on the socket) and fall
// back to the socket's own queue when the kernel's buffer is full. A server
// that stops reading makes the buffers fill: every message must still
// arrive exactly once, in order, byte for byte what the general serializer
// produces, once the server reads again.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Socket } from "node:net";
import { lsn, parseLsn } from "../src/lib/lsn.js";
import { PgClient } from "../src/wire/client.js";
import { serializeBackend } from "../src/wire/messages.js";
import { FrontendParser } from "../src/wire/parser.js";
import { parseClientReplicationMessage, pgTimestamp, type ClientReplicationMessage } from "../src/wire/replication.js";

/** Status updates sent while the server does not read: ~12 MB, more than loopback TCP buffers hold. */
const UPDATES = 300_000;
/** Every this many updates a hot standby feedback goes through `send` (the same write path). */
const FEEDBACK_EVERY = 10_000;
const WAIT_MS = 60_000;

test("status updates and feedback arrive complete and in order when the socket buffer fills and drains", async () => {
  const received: ClientReplicationMessage[] = [];
  let serverSock: Socket | undefined;
  let allIn: () => void = () => undefined;
  const done = new Promise<void>((r) => (allIn = r));
  const expected = UPDATES + Math.floor(UPDATES / FEEDBACK_EVERY);
  const server = createServer((sock) => {
    serverSock = sock;
    sock.on("error", () => undefined);
    const p = new FrontendParser();
    let streaming = false;
    sock.on("data", (b: Buffer) => {
      p.push(b);
      for (let m = p.next(); m !== null; m = p.next()) {
        if (m.kind === "StartupMessage") {
          sock.write(Buffer.concat([serializeBackend({ kind: "AuthenticationOk" }), serializeBackend({ kind: "ReadyForQuery", status: "I" })]));
        } else if (m.kind === "Query") {
          sock.write(serializeBackend({ kind: "CopyBothResponse", format: 0, columnFormats: [] }));
          streaming = true;
          sock.pause(); // stop reading: the client's writes back up
        } else if (m.kind === "CopyData" && streaming) {
          received.push(parseClientReplicationMessage(m.data));
          if (received.length === expected) allIn();
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const client = await PgClient.connect({ host: "127.0.0.1", port: (server.address() as { port: number }).port, user: "u", replication: true, connectTimeoutMs: 5000 });
  try {
    const stream = await client.startReplication({ startLsn: parseLsn("0/1000000"), timeline: 1 });
    const sent: ClientReplicationMessage[] = [];
    for (let i = 1; i <= UPDATES; i++) {
      const write = lsn(BigInt(i) * 8n);
      const flush = lsn(BigInt(i) * 8n - 8n);
      stream.sendStatus(write, flush, flush, i % 2 === 0);
      sent.push({ kind: "StandbyStatusUpdate", writeLsn: write, flushLsn: flush, applyLsn: flush, sendTime: pgTimestamp(0n), replyRequested: i % 2 === 0 });
      if (i % FEEDBACK_EVERY === 0) {
        const fb: ClientReplicationMessage = { kind: "HotStandbyFeedback", sendTime: pgTimestamp(BigInt(i)), xmin: i, xminEpoch: 0, catalogXmin: 0, catalogXminEpoch: 0 };
        stream.send(fb);
        sent.push(fb);
      }
    }
    // The test is only meaningful if the kernel's buffer did fill: the rest waits in the socket's own queue.
    const queued = (client as unknown as { socket: Socket }).socket.writableLength;
    assert.ok(queued > 0, "the socket buffer never filled: the fallback path was not exercised");
    serverSock!.resume();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([done, new Promise((_, rej) => (timer = setTimeout(() => rej(new Error(`only ${received.length} of ${expected} messages arrived`)), WAIT_MS)))]);
    clearTimeout(timer);
    assert.equal(received.length, sent.length);
    // Times are stamped at sending: compare everything else exactly, and the times as plausible.
    const now = BigInt(Date.now() - Date.UTC(2000, 0, 1)) * 1000n;
    for (let k = 0; k < sent.length; k++) {
      const got = received[k]!;
      const want = sent[k]!;
      if (want.kind === "StandbyStatusUpdate" && got.kind === "StandbyStatusUpdate") {
        assert.ok(got.sendTime > now - 600_000_000n && got.sendTime <= now + 1_000_000n, `update ${k}: time ${got.sendTime}`);
        assert.deepEqual({ ...got, sendTime: 0n }, { ...want, sendTime: 0n }, `message ${k}`);
      } else {
        assert.deepEqual(got, want, `message ${k}`);
      }
    }
    assert.equal(client.closed, false);
  } finally {
    await client.close().catch(() => undefined);
    serverSock?.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});
