import { test } from "node:test";
import assert from "node:assert/strict";
import { TaskManager, sleep } from "./tasks.js";

test("shutdown cancels exactly the owner's tasks and awaits them", async () => {
  const tm = new TaskManager();
  const finished: string[] = [];
  const loop = (name: string) => async (signal: AbortSignal) => {
    try {
      while (true) await sleep(5, signal);
    } finally {
      finished.push(name);
    }
  };
  tm.spawn("wal_receiver", { tenantId: "t1", timelineId: "a", name: "a" }, loop("a"));
  tm.spawn("layer_flush", { tenantId: "t1", timelineId: "b", name: "b" }, loop("b"));
  tm.spawn("gc", { tenantId: "t2", name: "c" }, loop("c"));
  assert.equal(tm.list().length, 3);
  assert.deepEqual(await tm.shutdown({ tenantId: "t1", timelineId: "a" }), []);
  assert.deepEqual(finished, ["a"]);
  assert.deepEqual(await tm.shutdown({ tenantId: "t1" }), []);
  assert.deepEqual(finished.sort(), ["a", "b"]);
  assert.deepEqual(tm.list().map((t) => t.name), ["c"]);
  await tm.close();
  assert.equal(tm.list().length, 0);
  assert.throws(() => tm.spawn("other", {}, async () => undefined), /shut down/);
});

test("a task that ignores cancellation is reported, not awaited forever", async () => {
  const tm = new TaskManager();
  let release!: () => void;
  const stubborn = new Promise<void>((r) => (release = r));
  tm.spawn("other", { name: "stubborn" }, () => stubborn);
  const stuck = await tm.shutdown({}, 50);
  assert.deepEqual(stuck.map((t) => t.name), ["stubborn"]);
  release();
});

test("sleep rejects with the abort reason", async () => {
  const ac = new AbortController();
  const p = sleep(10_000, ac.signal);
  ac.abort(new Error("stop"));
  await assert.rejects(p, /stop/);
});
