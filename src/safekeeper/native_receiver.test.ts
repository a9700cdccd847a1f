// NativeWalReceiver + walreceiver/strata-wal-receiver over real sockets and
// real segment files. The "compute" is a plain net server in this file that
// writes hand-framed backend messages (the src/wire serializers where they
// exist, raw bytes for the malformed ones) and parses the standby status
// updates the receiver sends back. What is proven:
// * the byte stream is written to the right offsets of the right segment
//   file however it is split across socket writes (and the safekeeper's
//   leftover bytes), across a segment end with a segment_full pause;
// * pause/resume, notifyAfter and keepalive replies behave as wal_receiver.c's
//   header specifies, with every status update covered by an fsync;
// * garbage, truncated and oversized protocol messages end the stream with a
//   clear reason and text, after the WAL received before them is durable;
// * stop() and kill() end the process with "stopped" and "crashed".
// Every wait is bounded; every receiver is killed and every socket closed in
// `finally`.

import { before, test } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import { readFile, writeFile } from "node:fs/promises";
import net, { type Socket } from "node:net";
import { join } from "node:path";
import { silentLogger } from "../lib/logging.js";
import { seededRandom } from "../lib/prng.js";
import { formatLsn, lsn, lsnAdd, type Lsn } from "../lib/lsn.js";
import { serializeBackend, type ErrorFields } from "../wire/messages.js";
import { BackendParser } from "../wire/parser.js";
import {
  parseClientReplicationMessage,
  pgTimestampNow,
  serializeReplicationCopyData,
  type StandbyStatusUpdate,
} from "../wire/replication.js";
import { makeTempDir, removeTempDir } from "../../test/harness/tools.js";
import { NativeWalReceiver, nativeReceiverAvailable, type ReceiverEnd, type ReceiverProgress } from "./native_receiver.js";

/** Small segments keep the files (and the WAL a test must send to cross one) small. */
const SEG_BYTES = 1 << 20;
const SEG1 = lsn(0x1000000);
const SEG2 = lsn(0x1100000);
/** Bound on any single wait: generous for a loaded 2-core machine, still fails fast. */
const WAIT_MS = 10_000;
/** How long "nothing happens" is watched for (pause, notify and keepalive tests). */
const QUIET_MS = 300;
/** A receiver that answers within this after the event it answers counts as "prompt". */
const PROMPT_MS = 2_000;
const BUCKETS = [0.001, 0.01, 0.1];

before(() => {
  assert.ok(nativeReceiverAvailable(), "walreceiver/strata-wal-receiver is missing: run `make -C walreceiver` (scripts/setup does)");
});

// ---------------------------------------------------------------------------
// Helpers

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `probe` until it returns a value other than undefined/false; fails after `timeoutMs`. */
async function waitFor<T>(what: string, probe: () => T | undefined | false, timeoutMs = WAIT_MS): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** Resolves with the promise's value, or fails after `timeoutMs`. */
async function within<T>(what: string, p: Promise<T>, timeoutMs = WAIT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function randomBytes(rand: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rand() * 256);
  return b;
}

function xlogFrame(at: Lsn, data: Buffer): Buffer {
  return serializeReplicationCopyData({ kind: "XLogData", dataStart: at, walEnd: lsnAdd(at, data.length), sendTime: pgTimestampNow(), data });
}

function keepaliveFrame(walEnd: Lsn, replyRequested: boolean): Buffer {
  return serializeReplicationCopyData({ kind: "PrimaryKeepalive", walEnd, sendTime: pgTimestampNow(), replyRequested });
}

/** A raw typed message: type byte, Int32 length (counting itself), body — for bytes no serializer makes. */
function rawMessage(type: string, body: Buffer, lengthField = 4 + body.length): Buffer {
  const b = Buffer.alloc(5 + body.length);
  b.write(type, 0, "latin1");
  b.writeInt32BE(lengthField, 1);
  body.copy(b, 5);
  return b;
}

function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  if (actual.equals(expected)) return;
  let i = 0;
  while (i < actual.length && i < expected.length && actual[i] === expected[i]) i++;
  assert.fail(`${what}: ${actual.length} bytes vs ${expected.length} expected, first difference at offset ${i} (0x${i.toString(16)})`);
}

/** What the two segment files must hold: zeros except the WAL placed at its LSNs. */
class SegmentImages {
  readonly seg1 = Buffer.alloc(SEG_BYTES);
  readonly seg2 = Buffer.alloc(SEG_BYTES);

  place(at: Lsn, data: Buffer): void {
    for (let i = 0; i < data.length; ) {
      const l = at + BigInt(i);
      const [img, segStart] = l < SEG2 ? [this.seg1, SEG1] : [this.seg2, SEG2];
      const off = Number(l - segStart);
      const n = Math.min(data.length - i, SEG_BYTES - off);
      data.copy(img, off, i, i + n);
      i += n;
    }
  }
}

/**
 * The compute's side of the replication connection: sends frames, parses
 * what the receiver sends (only standby status updates are allowed).
 */
class FakeCompute {
  readonly statuses: StandbyStatusUpdate[] = [];
  readonly errors: string[] = [];
  closed = false;
  private buf = Buffer.alloc(0);

  constructor(readonly socket: Socket) {
    socket.setNoDelay(true); // small writes leave as written: the split positions are real
    socket.on("data", (c: Buffer) => this.onData(c));
    socket.on("close", () => {
      this.closed = true;
    });
    socket.on("error", () => undefined); // the receiver exiting resets the connection: 'close' follows
  }

  send(b: Buffer): Promise<void> {
    return new Promise((resolve, reject) => this.socket.write(b, (e) => (e ? reject(e) : resolve())));
  }

  get lastStatus(): StandbyStatusUpdate | undefined {
    return this.statuses[this.statuses.length - 1];
  }

  /** Resolves with the first status update whose flush LSN is at least `l`. */
  flushedTo(l: Lsn): Promise<StandbyStatusUpdate> {
    return waitFor(`a status update with flush >= ${formatLsn(l)}`, () => this.statuses.find((s) => s.flushLsn >= l));
  }

  private onData(c: Buffer): void {
    this.buf = Buffer.concat([this.buf, c]);
    while (this.buf.length >= 5) {
      if (this.buf[0] !== 0x64) {
        this.errors.push(`receiver sent message type 0x${this.buf[0]!.toString(16)}`);
        this.buf = Buffer.alloc(0);
        return;
      }
      const len = this.buf.readInt32BE(1);
      if (this.buf.length < 1 + len) return;
      const m = parseClientReplicationMessage(this.buf.subarray(5, 1 + len));
      if (m.kind === "StandbyStatusUpdate") this.statuses.push(m);
      else this.errors.push(`receiver sent ${m.kind}`);
      this.buf = this.buf.subarray(1 + len);
    }
  }
}

interface Rig {
  readonly dir: string;
  readonly seg1Path: string;
  readonly seg2Path: string;
  readonly compute: FakeCompute;
  readonly receiver: NativeWalReceiver;
  readonly progress: ReceiverProgress[];
  readonly pauses: { reason: "requested" | "segment_full"; progress: ReceiverProgress }[];
}

interface RigOptions {
  writeLsn: Lsn;
  pending?: Buffer;
  heartbeatMs?: number;
}

/** A connected socket pair on 127.0.0.1: [server side, client side]. */
async function socketPair(): Promise<[Socket, Socket]> {
  const server = net.createServer();
  try {
    server.listen(0, "127.0.0.1");
    await within("listen", once(server, "listening"));
    const port = (server.address() as net.AddressInfo).port;
    const accepted = once(server, "connection") as Promise<[Socket]>;
    const client = net.connect(port, "127.0.0.1");
    client.on("error", () => undefined);
    await within("connect", once(client, "connect"));
    const [serverSide] = await within("accept", accepted);
    return [serverSide, client];
  } finally {
    server.close();
  }
}

/** Sets up the segment files, the connection and the receiver (on segment 1), runs `body`, tears everything down. */
async function withRig(opts: RigOptions, body: (rig: Rig) => Promise<void>): Promise<void> {
  const dir = await makeTempDir("native-receiver");
  let serverSide: Socket | undefined;
  let client: Socket | undefined;
  let receiver: NativeWalReceiver | undefined;
  try {
    const seg1Path = join(dir, "seg1.partial");
    const seg2Path = join(dir, "seg2.partial");
    await writeFile(seg1Path, Buffer.alloc(SEG_BYTES));
    await writeFile(seg2Path, Buffer.alloc(SEG_BYTES));
    [serverSide, client] = await socketPair();
    const compute = new FakeCompute(serverSide);
    const progress: ReceiverProgress[] = [];
    const pauses: Rig["pauses"] = [];
    receiver = new NativeWalReceiver({
      socket: client,
      pending: opts.pending ?? Buffer.alloc(0),
      segmentPath: seg1Path,
      segmentStartLsn: SEG1,
      segmentSizeBytes: SEG_BYTES,
      writeLsn: opts.writeLsn,
      buckets: BUCKETS,
      statusIntervalMs: 10_000,
      heartbeatMs: opts.heartbeatMs ?? 50,
      onProgress: (p) => progress.push(p),
      onPaused: (reason, p) => pauses.push({ reason, progress: p }),
      log: silentLogger(),
    });
    // As pumpNative does: the child has its own descriptor; ours must not read the stream.
    const closed = once(client, "close");
    client.destroy();
    await within("client socket close", closed);
    await body({ dir, seg1Path, seg2Path, compute, receiver, progress, pauses });
  } finally {
    if (receiver !== undefined) {
      receiver.kill();
      await within("receiver exit", receiver.ended);
    }
    client?.destroy();
    serverSide?.destroy();
    await removeTempDir(dir);
  }
}

/** Whole-file check of both segments against the expected images. */
async function assertSegments(rig: Rig, images: SegmentImages): Promise<void> {
  assertSameBytes(await readFile(rig.seg1Path), images.seg1, "segment 1");
  assertSameBytes(await readFile(rig.seg2Path), images.seg2, "segment 2");
}

function sum(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}

// ---------------------------------------------------------------------------
// Streaming

test("pseudo-random WAL split at arbitrary byte positions streams across a segment end into both files", async () => {
  const rand = seededRandom(20261129);
  const randInt = (n: number) => Math.floor(rand() * n);
  const start = lsnAdd(SEG1, 0x80000 + 123); // mid-segment, not 8-aligned
  const total = SEG_BYTES; // ends in the second segment, 0x80000 + 123 past its start
  const end = lsnAdd(start, total);
  const wal = randomBytes(rand, total);
  const notice: ErrorFields = { severity: "NOTICE", code: "00000", message: "a notice in the middle of the stream" };

  const frames: Buffer[] = [];
  let straddling = 0;
  for (let off = 0; off < total; ) {
    const r = rand();
    const size = Math.min(total - off, r < 0.1 ? 0 : r < 0.3 ? 1 + randInt(64) : 1 + randInt(24_000));
    const at = lsnAdd(start, off);
    if (at < SEG2 && at + BigInt(size) > SEG2) straddling++;
    frames.push(xlogFrame(at, wal.subarray(off, off + size)));
    off += size;
    if (rand() < 0.1) frames.push(keepaliveFrame(lsnAdd(start, off), false));
    if (rand() < 0.03) frames.push(serializeBackend({ kind: "NoticeResponse", fields: notice }));
  }
  assert.equal(straddling, 1, "the seed gives one XLogData message that crosses the segment end");
  const stream = Buffer.concat(frames);
  // The safekeeper's leftover bytes: three whole messages and half of the fourth.
  const pendingLen = frames[0]!.length + frames[1]!.length + frames[2]!.length + Math.floor(frames[3]!.length / 2);
  const images = new SegmentImages();
  images.place(start, wal);

  await withRig({ writeLsn: start, pending: stream.subarray(0, pendingLen) }, async (rig) => {
    let chunks = 0;
    const sending = (async () => {
      for (let pos = pendingLen; pos < stream.length; ) {
        const n = rand() < 0.2 ? 1 + randInt(7) : 1 + randInt(40_000);
        await rig.compute.send(stream.subarray(pos, pos + n));
        pos += n;
        chunks++;
        if (rand() < 0.3) await sleep(1);
      }
    })();
    try {
      const paused = await waitFor("the segment_full pause", () => rig.pauses[0]);
      assert.equal(paused.reason, "segment_full");
      assert.equal(paused.progress.flushLsn, SEG2, "paused with the first segment flushed to its end");
      assert.equal(paused.progress.writeLsn, SEG2);
      // The status update at the segment end went out before the pause.
      assert.equal((await rig.compute.flushedTo(SEG2)).flushLsn, SEG2);
      const seg1 = await readFile(rig.seg1Path);
      assertSameBytes(seg1, images.seg1, "segment 1 at the pause");
      // Nothing of the second segment is written before the resume.
      assertSameBytes(await readFile(rig.seg2Path), Buffer.alloc(SEG_BYTES), "segment 2 before the resume");
      rig.receiver.resume({ path: rig.seg2Path, startLsn: SEG2 });

      await within("all WAL sent", sending);
      const last = await rig.compute.flushedTo(end);
      assert.equal(last.writeLsn, end);
      assert.equal(last.flushLsn, end);
      assert.equal(last.applyLsn, end);
      assert.deepEqual(rig.compute.errors, []);
      for (let i = 1; i < rig.compute.statuses.length; i++) {
        const [a, b] = [rig.compute.statuses[i - 1]!, rig.compute.statuses[i]!];
        assert.ok(b.flushLsn >= a.flushLsn && b.flushLsn <= b.writeLsn, `status updates ${i - 1}, ${i} are ordered`);
      }
      await assertSegments(rig, images);

      const p = await waitFor("progress at the end LSN", () => rig.receiver.progress.flushLsn === end && rig.receiver.progress);
      assert.equal(p.writeLsn, end);
      assert.equal(p.bytesWritten, total);
      assert.ok(p.fsyncs > 0);
      assert.equal(p.bucketCounts.length, BUCKETS.length + 1);
      assert.equal(sum(p.bucketCounts), p.fsyncs);
      assert.ok(p.fsyncSeconds >= 0);
      assert.equal(rig.pauses.length, 1);
      assert.ok(chunks > 20, `the stream went out in ${chunks} writes`);
    } finally {
      await sending.catch(() => undefined);
    }
  });
});

test("pause(): reports 'requested'; WAL sent while paused is neither written nor acknowledged until resume()", async () => {
  const rand = seededRandom(2);
  const start = lsnAdd(SEG1, 100);
  const a = randomBytes(rand, 1000);
  const aEnd = lsnAdd(start, a.length);
  const b = randomBytes(rand, 3000);
  const bEnd = lsnAdd(aEnd, b.length);
  await withRig({ writeLsn: start }, async (rig) => {
    const images = new SegmentImages();
    await rig.compute.send(xlogFrame(start, a));
    images.place(start, a);
    await rig.compute.flushedTo(aEnd);

    rig.receiver.pause();
    const paused = await waitFor("the requested pause", () => rig.pauses[0]);
    assert.equal(paused.reason, "requested");
    assert.equal(paused.progress.flushLsn, aEnd);
    const statusesAtPause = rig.compute.statuses.length;

    await rig.compute.send(Buffer.concat([xlogFrame(aEnd, b.subarray(0, 1000)), xlogFrame(lsnAdd(aEnd, 1000), b.subarray(1000))]));
    await sleep(QUIET_MS);
    await assertSegments(rig, images); // only A
    assert.equal(rig.compute.statuses.length, statusesAtPause, "no status update while paused");
    assert.equal(rig.receiver.progress.flushLsn, aEnd);

    rig.receiver.resume();
    images.place(aEnd, b);
    const s = await rig.compute.flushedTo(bEnd);
    assert.equal(s.flushLsn, bEnd);
    await assertSegments(rig, images);
    assert.equal(rig.pauses.length, 1);
  });
});

test("notifyAfter(lsn): progress arrives promptly once the flush LSN passes lsn, though the heartbeat is a minute", async () => {
  const rand = seededRandom(3);
  const start = lsnAdd(SEG1, 4096);
  await withRig({ writeLsn: start, heartbeatMs: 60_000 }, async (rig) => {
    const aEnd = lsnAdd(start, 100);
    await rig.compute.send(xlogFrame(start, randomBytes(rand, 100)));
    await rig.compute.flushedTo(aEnd);
    await sleep(QUIET_MS);
    assert.equal(rig.progress.length, 0, "no progress report without a notify or a heartbeat");

    rig.receiver.notifyAfter(lsnAdd(aEnd, 50));
    const bEnd = lsnAdd(aEnd, 30);
    await rig.compute.send(xlogFrame(aEnd, randomBytes(rand, 30)));
    await rig.compute.flushedTo(bEnd);
    await sleep(QUIET_MS);
    assert.equal(rig.progress.length, 0, "flush LSN not yet past the notify LSN");

    const cEnd = lsnAdd(bEnd, 30);
    const sentAt = Date.now();
    await rig.compute.send(xlogFrame(bEnd, randomBytes(rand, 30)));
    const p = await waitFor("the notified progress", () => rig.progress[0], PROMPT_MS);
    assert.ok(Date.now() - sentAt < PROMPT_MS);
    assert.equal(p.flushLsn, cEnd);
    assert.equal(p.writeLsn, cEnd);

    // A notify LSN already passed answers at once; one reached exactly (not passed) does not.
    rig.receiver.notifyAfter(cEnd);
    await sleep(QUIET_MS);
    assert.equal(rig.progress.length, 1, "flush == notify LSN is not past it");
    rig.receiver.notifyAfter(lsnAdd(cEnd, -1));
    const q = await waitFor("progress for an already passed LSN", () => rig.progress[1], PROMPT_MS);
    assert.equal(q.flushLsn, cEnd);
  });
});

test("a keepalive asking for a reply gets a status update at once; one not asking gets none", async () => {
  const start = lsnAdd(SEG1, 8192);
  await withRig({ writeLsn: start }, async (rig) => {
    await rig.compute.send(keepaliveFrame(lsnAdd(start, 1_000_000), false));
    await sleep(QUIET_MS);
    assert.equal(rig.compute.statuses.length, 0);

    const sentAt = Date.now();
    await rig.compute.send(keepaliveFrame(lsnAdd(start, 1_000_000), true));
    const s = await waitFor("the keepalive reply", () => rig.compute.lastStatus, PROMPT_MS);
    assert.ok(Date.now() - sentAt < PROMPT_MS);
    assert.equal(s.writeLsn, start);
    assert.equal(s.flushLsn, start);
    assert.equal(s.applyLsn, start);
    assert.equal(rig.compute.statuses.length, 1);
    assert.deepEqual(rig.compute.errors, []);
  });
});

// ---------------------------------------------------------------------------
// How the stream ends

interface EndCase {
  name: string;
  /** The bad message (or, with `close`, the bytes before the server closes); `next` is the LSN after WAL B. */
  bad: (next: Lsn) => Buffer;
  close?: boolean;
  reason: ReceiverEnd["reason"];
  detail: (next: Lsn, bad: Buffer) => RegExp | Buffer;
}


const errorFields: ErrorFields = {
  severity: "FATAL",
  severityNonLocalized: "FATAL",
  code: "57P01",
  message: "terminating connection due to administrator command",
  file: "postgres.c",
  line: "3209",
  routine: "ProcessInterrupts",
};

const endCases: EndCase[] = [
  {
    name: "XLogData past the expected LSN (a gap)",
    bad: (next) => xlogFrame(lsnAdd(next, 8), Buffer.alloc(16, 7)),
    reason: "protocol",
    detail: (next) => new RegExp(`WAL at ${formatLsn(lsnAdd(next, 8))}, expected ${formatLsn(next)}$`),
  },
  {
    name: "XLogData before the expected LSN (an overlap)",
    bad: (next) => xlogFrame(lsnAdd(next, -8), Buffer.alloc(16, 7)),
    reason: "protocol",
    detail: (next) => new RegExp(`WAL at ${formatLsn(lsnAdd(next, -8))}, expected ${formatLsn(next)}$`),
  },
  {
    name: "a message with length 0x7fffffff",
    bad: () => rawMessage("d", Buffer.from("w-and-then-nothing"), 0x7fffffff),
    reason: "protocol",
    detail: () => /message type 0x64 with length 2147483647/,
  },
  {
    name: "a message with length 2 (below its own size)",
    bad: () => rawMessage("d", Buffer.alloc(0), 2),
    reason: "protocol",
    detail: () => /message type 0x64 with length 2 /,
  },
  {
    name: "garbage bytes",
    bad: () => Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "latin1"),
    reason: "protocol",
    detail: () => /message type 0x47 with length \d+/,
  },
  {
    name: "CopyData of an unknown kind",
    bad: () => rawMessage("d", Buffer.from("q0123456789", "latin1")),
    reason: "protocol",
    detail: () => /CopyData of kind 0x71/,
  },
  {
    name: "an empty CopyData",
    bad: () => rawMessage("d", Buffer.alloc(0)),
    reason: "protocol",
    detail: () => /empty CopyData/,
  },
  {
    name: "XLogData shorter than its header (truncated)",
    bad: () => rawMessage("d", Buffer.from("w0123456789", "latin1")),
    reason: "protocol",
    detail: () => /XLogData of 11 bytes is shorter than its header/,
  },
  {
    name: "a keepalive shorter than 18 bytes (truncated)",
    bad: () => rawMessage("d", Buffer.from("k01234567", "latin1")),
    reason: "protocol",
    detail: () => /keepalive of 9 bytes/,
  },
  {
    name: "a message type not allowed during replication (ReadyForQuery)",
    bad: () => serializeBackend({ kind: "ReadyForQuery", status: "I" }),
    reason: "protocol",
    detail: () => /unexpected message type 0x5a during replication/,
  },
  {
    name: "an ErrorResponse",
    bad: () => serializeBackend({ kind: "ErrorResponse", fields: errorFields }),
    reason: "server_error",
    detail: (_next, bad) => bad,
  },
  {
    name: "CopyDone",
    bad: () => serializeBackend({ kind: "CopyDone" }),
    reason: "copy_done",
    detail: (next) => new RegExp(`ended the replication stream at ${formatLsn(next)}$`),
  },
  {
    name: "the server closing the connection",
    bad: () => Buffer.alloc(0),
    close: true,
    reason: "connection",
    detail: () => /the compute closed the replication connection at [0-9A-F]+\/[0-9A-F]+$/,
  },
  {
    name: "the server closing the connection in the middle of a message (truncated)",
    bad: (next) => xlogFrame(next, Buffer.alloc(64, 9)).subarray(0, 40),
    close: true,
    reason: "connection",
    detail: () => /the compute closed the replication connection/,
  },
];

/**
 * One receiver: WAL A, acknowledged; then WAL B and the bad input in ONE
 * socket write (so they usually arrive in one read); then the end.
 * Returns what the end and the files say about A and B.
 */
async function runEndCase(c: EndCase): Promise<{ end: ReceiverEnd; aEnd: Lsn; bEnd: Lsn; seg1: Buffer; images: { a: SegmentImages; ab: SegmentImages } }> {
  const rand = seededRandom(c.name.length);
  const start = lsnAdd(SEG1, 4096 + 5);
  const a = randomBytes(rand, 2000);
  const aEnd = lsnAdd(start, a.length);
  const b = randomBytes(rand, 1500);
  const bEnd = lsnAdd(aEnd, b.length);
  let result: { end: ReceiverEnd; seg1: Buffer } | undefined;
  await withRig({ writeLsn: start }, async (rig) => {
    await rig.compute.send(xlogFrame(start, a));
    await rig.compute.flushedTo(aEnd);
    await rig.compute.send(Buffer.concat([xlogFrame(aEnd, b), c.bad(bEnd)]));
    if (c.close === true) rig.compute.socket.end();
    const end = await within("the end of the stream", rig.receiver.ended);
    result = { end, seg1: await readFile(rig.seg1Path) };
  });
  const imgA = new SegmentImages();
  imgA.place(start, a);
  const imgAB = new SegmentImages();
  imgAB.place(start, a);
  imgAB.place(aEnd, b);
  return { ...result!, aEnd, bEnd, images: { a: imgA, ab: imgAB } };
}

for (const c of endCases) {
  test(`${c.name} ends the stream with "${c.reason}" after the acknowledged WAL is durable`, async () => {
    const { end, aEnd, bEnd, seg1, images } = await runEndCase(c);
    assert.equal(end.reason, c.reason, `detail: ${end.detail.toString("latin1")}`);
    const want = c.detail(bEnd, c.bad(bEnd));
    if (Buffer.isBuffer(want)) assert.ok(end.detail.equals(want), "detail is the whole raw message");
    else assert.match(end.detail.toString("utf8"), want);
    assert.ok(end.progress.flushLsn >= aEnd, `flush ${formatLsn(end.progress.flushLsn)} covers WAL A (${formatLsn(aEnd)})`);
    assert.equal(end.progress.flushLsn, end.progress.writeLsn, "what was written is fsynced before the end");
    // A is in the file; past A, either B (written) or zeros.
    assertSameBytes(seg1.subarray(0, Number(aEnd - SEG1)), images.a.seg1.subarray(0, Number(aEnd - SEG1)), "segment 1 up to the end of A");
    const flushOff = Number(end.progress.flushLsn - SEG1);
    assertSameBytes(seg1.subarray(0, flushOff), images.ab.seg1.subarray(0, flushOff), "segment 1 up to the reported flush LSN");
    assertSameBytes(seg1.subarray(flushOff), Buffer.alloc(SEG_BYTES - flushOff), "segment 1 past the reported flush LSN");
  });
}

for (const c of endCases) {
  test(`${c.name}: WAL arriving in the same read before it is written and fsynced first`, async () => {
    const { end, bEnd, seg1, images } = await runEndCase(c);
    assert.equal(end.reason, c.reason);
    assert.equal(end.progress.flushLsn, bEnd, `flush ${formatLsn(end.progress.flushLsn)} vs end of WAL B ${formatLsn(bEnd)}`);
    assertSameBytes(seg1, images.ab.seg1, "segment 1");
  });
}

test("an ErrorResponse's detail decodes (BackendParser) into the fields the server sent", async () => {
  const c = endCases.find((x) => x.reason === "server_error")!;
  const { end } = await runEndCase(c);
  assert.equal(end.reason, "server_error");
  const parser = new BackendParser();
  parser.push(end.detail);
  const m = parser.next();
  assert.deepEqual(m, { kind: "ErrorResponse", fields: errorFields });
  assert.equal(parser.next(), null);
  assert.equal(parser.bufferedBytes, 0);
});

// ---------------------------------------------------------------------------
// stop() and kill()

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test("stop(): ends with 'stopped' after a last cycle, the process exits and the connection closes", async () => {
  const start = lsnAdd(SEG1, 64);
  await withRig({ writeLsn: start }, async (rig) => {
    const aEnd = lsnAdd(start, 500);
    await rig.compute.send(xlogFrame(start, Buffer.alloc(500, 0xab)));
    await rig.compute.flushedTo(aEnd);
    const pid = rig.receiver.pid!;
    const end = await within("stop", rig.receiver.stop());
    assert.equal(end.reason, "stopped");
    assert.equal(end.detail.length, 0);
    assert.equal(end.progress.flushLsn, aEnd);
    assert.equal(end.progress.bytesWritten, 500);
    assert.equal(alive(pid), false, "the receiver process is gone");
    await waitFor("the compute to see the connection close", () => rig.compute.closed);
    assert.equal(await within("stop again", rig.receiver.stop()), end, "stop() after the end returns the same end");
  });
});

test("kill(): ends with 'crashed', naming the signal, with the last reported progress", async () => {
  const start = lsnAdd(SEG1, 64);
  await withRig({ writeLsn: start }, async (rig) => {
    const aEnd = lsnAdd(start, 500);
    await rig.compute.send(xlogFrame(start, Buffer.alloc(500, 0xcd)));
    await rig.compute.flushedTo(aEnd);
    await waitFor("the heartbeat progress", () => rig.receiver.progress.flushLsn === aEnd);
    const pid = rig.receiver.pid!;
    rig.receiver.kill();
    const end = await within("the crash", rig.receiver.ended);
    assert.equal(end.reason, "crashed");
    assert.match(end.detail.toString("utf8"), /exited \(signal SIGKILL\) without reporting why/);
    assert.equal(end.progress.flushLsn, aEnd);
    assert.equal(alive(pid), false);
    await waitFor("the compute to see the connection close", () => rig.compute.closed);
  });
});

