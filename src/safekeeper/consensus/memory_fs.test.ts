import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileAtomic } from "../durable_fs.js";
import { FaultyFS } from "../faulty_fs.js";
import { MemoryFS } from "./memory_fs.js";

const code = (e: unknown) => (e as { code?: string }).code;

test("files: write, read, size, sparse writes zero-fill, create truncates", async () => {
  const fs = new MemoryFS();
  await fs.mkdir("/a/b");
  const f = await fs.openFile("/a/b/x", "create");
  await f.write(new Uint8Array([1, 2, 3]), 0);
  await f.write(new Uint8Array([9]), 10);
  assert.equal(await f.size(), 11);
  const buf = new Uint8Array(20);
  assert.equal(await f.read(buf, 0), 11);
  assert.deepEqual([...buf.subarray(0, 11)], [1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 9]);
  assert.equal(await f.read(buf, 11), 0);
  await f.close();
  await assert.rejects(f.write(new Uint8Array(1), 0), (e) => code(e) === "EBADF");
  const g = await fs.openFile("/a/b/x", "create");
  assert.equal(await g.size(), 0);
  const ro = await fs.openFile("/a/b/x", "read");
  await assert.rejects(ro.write(new Uint8Array(1), 0), (e) => code(e) === "EBADF");
});

test("names: readdir, rename of files and directories, unlink, errors carry Node codes", async () => {
  const fs = new MemoryFS();
  await fs.mkdir("/t/.x.creating");
  await (await fs.openFile("/t/.x.creating/ctl", "create")).write(new Uint8Array([7]), 0);
  await fs.rename("/t/.x.creating", "/t/x");
  assert.deepEqual(await fs.readdir("/t"), ["x"]);
  assert.deepEqual([...(await fs.readFile("/t/x/ctl"))], [7]);
  await fs.rename("/t/x/ctl", "/t/x/ctl2");
  assert.deepEqual(await fs.readdir("/t/x"), ["ctl2"]);
  await fs.unlink("/t/x/ctl2");
  assert.deepEqual(await fs.readdir("/t/x"), []);
  await assert.rejects(fs.openFile("/t/x/none", "read"), (e) => code(e) === "ENOENT");
  await assert.rejects(fs.openFile("/nodir/f", "create"), (e) => code(e) === "ENOENT");
  await assert.rejects(fs.unlink("/t/x/none"), (e) => code(e) === "ENOENT");
  await assert.rejects(fs.readdir("/none"), (e) => code(e) === "ENOENT");
  await assert.rejects(fs.readFile("/t/x"), (e) => code(e) === "EISDIR");
  await assert.rejects(fs.rename("/none", "/t/y"), (e) => code(e) === "ENOENT");
});

test("under FaultyFS, power loss reverts what was not made durable; clone is independent", async () => {
  const mem = new MemoryFS();
  await mem.mkdir("/d");
  const fs = new FaultyFS(mem, { seed: 3 });
  await writeFileAtomic(fs, "/d/ctl", new Uint8Array([1]));
  const f = await fs.openFile("/d/wal", "create");
  await f.write(new Uint8Array(4096).fill(5), 0);
  await f.sync();
  await fs.syncDir("/d");
  await f.write(new Uint8Array(4096).fill(6), 0); // never synced
  const copy = mem.clone();
  await fs.powerLoss();
  const after = await mem.readFile("/d/wal");
  assert.ok(after.every((b) => b === 5 || b === 6));
  assert.deepEqual([...(await mem.readFile("/d/ctl"))], [1]);
  assert.ok((await copy.readFile("/d/wal")).every((b) => b === 6), "the clone kept the state at cloning time");
  assert.ok(mem.bytesHeld > 0);
});
