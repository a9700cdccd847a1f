import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { StrataError } from "../../lib/errors.js";
import { lsn, type Lsn } from "../../lib/lsn.js";
import { KEY_END, type Key } from "../key.js";
import { DeltaLayerReader } from "./delta_layer.js";
import { stopFlushWorker } from "./flush_worker.js";
import { FLUSH_GROUP_BYTES } from "./frozen_layer_flush.js";
import { InMemoryLayer } from "./inmemory_layer.js";
import { Rng, withTempDir } from "./test_support.js";
import type { Value } from "./value.js";

const START = lsn(0x5000000);

/**
 * A frozen layer of `n` random versions over `keyCount` keys (WAL records,
 * images; several keys per LSN as ingest puts them), plus — when `bigKey` —
 * one key whose versions exceed a flush group (the value-by-value path).
 */
function frozenLayer(dir: string, rng: Rng, n: number, keyCount: number, bigKey: boolean): InMemoryLayer {
  const layer = InMemoryLayer.create({ dir, startLsn: START });
  let l: Lsn = START;
  for (let i = 0; i < n; i++) {
    l = lsn(l + BigInt(1 + rng.int(300)));
    const keys = new Set<number>();
    for (let k = 1 + rng.int(3); k > 0; k--) keys.add(1 + rng.int(keyCount));
    for (const k of keys) {
      // keys spread over the whole 144-bit space, so the sort by key is tested on big numbers too
      const key = ((BigInt(k) << 120n) + BigInt(rng.int(1000))) as Key;
      const value: Value = rng.bool(0.1)
        ? { kind: "image", bytes: rng.bytes(8192) }
        : { kind: "wal", willInit: rng.bool(0.1), rec: rng.bytes(rng.int(300)), ...(rng.bool(0.5) ? { engine: "postgres" as const } : {}) };
      layer.put(key, l, value);
    }
  }
  if (bigKey) {
    const big = (KEY_END - 1n) as Key;
    const piece = Math.ceil(FLUSH_GROUP_BYTES / 3) + 1024;
    for (let i = 0; i < 4; i++) {
      l = lsn(l + 8n);
      layer.put(big, l, { kind: "image", bytes: rng.bytes(piece) });
    }
  }
  layer.freeze(lsn(l + 1n));
  return layer;
}

async function onlyFile(dir: string): Promise<string> {
  const names = (await readdir(dir)).filter((n) => !n.startsWith("ephemeral-"));
  assert.equal(names.length, 1, `one layer file in ${dir}: ${names.join(", ")}`);
  return names[0]!;
}

test("the flush worker writes byte-for-byte the file the main thread writes (small and large layers)", async () => {
  try {
    await withTempDir(async (dir) => {
      const cases = [
        { n: 3000, keys: 200, bigKey: false, opts: {} },
        { n: 20_000, keys: 3000, bigKey: true, opts: { indexPageSizeBytes: 1024 } },
      ];
      let c = 0;
      for (const { n, keys, bigKey, opts } of cases) {
        const layer = frozenLayer(dir, new Rng(11 + c), n, keys, bigKey);
        try {
          const here = join(dir, `main-${c}`);
          const there = join(dir, `worker-${c}`);
          await mkdir(here);
          await mkdir(there);
          const a = await layer.writeDeltaLayer(here, opts);
          const b = await layer.writeDeltaLayerOffThread(there, opts);
          assert.equal(a.name, b.name);
          assert.deepEqual(b.header, a.header);
          assert.deepEqual(b.desc, a.desc);
          assert.equal(await onlyFile(there), b.name);
          const [x, y] = [await readFile(a.path), await readFile(b.path)];
          assert.ok(x.length > (bigKey ? FLUSH_GROUP_BYTES : 0), `case ${c}: ${x.length} bytes`);
          assert.ok(x.equals(y), `case ${c}: the two files differ`);
          // And the file reads back: every version, in (key, LSN) order.
          const r = await DeltaLayerReader.open(b.path);
          let count = 0;
          for await (const _ of r.iterateEncoded()) count++;
          await r.close();
          assert.equal(count, a.header.entryCount);
        } finally {
          layer.close();
        }
        c++;
      }
    });
  } finally {
    await stopFlushWorker();
  }
});

test("flush worker: cancellation, errors with their code, stop and restart", async () => {
  try {
    await withTempDir(async (dir) => {
      const layer = frozenLayer(dir, new Rng(5), 2000, 100, false);
      try {
        // Cancelled before it starts: "cancelled", nothing left behind.
        const ac = new AbortController();
        ac.abort();
        await assert.rejects(layer.writeDeltaLayerOffThread(dir, { signal: ac.signal }), (e: unknown) => e instanceof StrataError && e.code === "cancelled");
        assert.deepEqual((await readdir(dir)).filter((n) => !n.startsWith("ephemeral-")), []);

        // Cancelled while running: either cancelled (no file) or finished (one complete file), never a .tmp.
        const ac2 = new AbortController();
        const running = layer.writeDeltaLayerOffThread(dir, { signal: ac2.signal });
        ac2.abort();
        const outcome = await running.then(() => "done", (e: unknown) => (e instanceof StrataError ? e.code : String(e)));
        assert.ok(outcome === "done" || outcome === "cancelled", outcome);
        const left = (await readdir(dir)).filter((n) => !n.startsWith("ephemeral-"));
        assert.deepEqual(left.filter((n) => n.endsWith(".tmp")), []);
        assert.equal(left.length, outcome === "done" ? 1 : 0);

        // A StrataError in the worker keeps its code and message (the path it failed on).
        const missing = join(dir, "no-such-dir");
        await assert.rejects(layer.writeDeltaLayerOffThread(missing), (e: unknown) => {
          return e instanceof StrataError && e.code === "io_error" && e.message.includes(missing);
        });

        // Stopping the worker under a flush rejects that flush; the next one starts a new worker.
        const sub = join(dir, "after-stop");
        await mkdir(sub);
        const pending = layer.writeDeltaLayerOffThread(sub);
        await stopFlushWorker();
        const stopped = await pending.then(() => "done", (e: unknown) => (e instanceof StrataError ? e.code : String(e)));
        assert.ok(stopped === "done" || stopped === "cancelled", stopped);
        const sub2 = join(dir, "restarted");
        await mkdir(sub2);
        const w = await layer.writeDeltaLayerOffThread(sub2);
        assert.equal(await onlyFile(sub2), w.name);
        // A flush sent to the new thread while the old one is still exiting is not failed by that exit.
        const sub3 = join(dir, "during-exit");
        await mkdir(sub3);
        const stopping = stopFlushWorker();
        const next = layer.writeDeltaLayerOffThread(sub3);
        await stopping;
        const written = await next;
        assert.equal(await onlyFile(sub3), written.name);
      } finally {
        layer.close();
      }
    });
  } finally {
    await stopFlushWorker();
  }
});
