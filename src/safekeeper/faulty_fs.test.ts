import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NodeDurableFS, writeFileAtomic } from "./durable_fs.js";
import { FaultyFS, InjectedIoError, SimulatedCrash } from "./faulty_fs.js";

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "strata-ffs-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const real = new NodeDurableFS();

test("synced data always survives power loss; unsynced data sometimes does not, sector by sector", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "f");
    await writeFile(path, Buffer.alloc(4096, 1));
    let lostSome = 0;
    let keptSome = 0;
    for (let seed = 1; seed <= 40; seed++) {
      await writeFile(path, Buffer.alloc(4096, 1));
      const fs = new FaultyFS(real, { seed });
      const f = await fs.openFile(path, "readwrite");
      await f.write(new Uint8Array(1024).fill(2), 0);
      await f.sync();
      await f.write(new Uint8Array(2048).fill(3), 1024);
      await fs.powerLoss();
      const after = await readFile(path);
      assert.ok(after.subarray(0, 1024).every((b) => b === 2), `seed ${seed}: synced bytes lost`);
      for (let s = 1024; s < 3072; s += 512) {
        const sector = after.subarray(s, s + 512);
        assert.ok(sector.every((b) => b === 3) || sector.every((b) => b === 1), `seed ${seed}: sector ${s} is a mix`);
        if (sector[0] === 1) lostSome++;
        else keptSome++;
      }
      assert.ok(after.subarray(3072).every((b) => b === 1));
    }
    assert.ok(lostSome > 0 && keptSome > 0);
  });
});

test("renames and unlinks without a directory fsync can be undone; with one they stay", async () => {
  await withDir(async (dir) => {
    let undone = 0;
    for (let seed = 1; seed <= 20; seed++) {
      await writeFile(join(dir, "a"), "A");
      await writeFile(join(dir, "gone"), "G");
      const fs = new FaultyFS(real, { seed });
      await fs.rename(join(dir, "a"), join(dir, "b"));
      await fs.unlink(join(dir, "gone"));
      assert.deepEqual((await fs.readdir(dir)).sort(), ["b"], "stash files are hidden");
      await fs.powerLoss();
      const names = (await readdir(dir)).sort();
      assert.ok(["a,gone", "b,gone", "b"].includes(names.join(",")), `seed ${seed}: ${names.join(",")}`);
      if (names.length > 1) undone++;
      for (const n of names) await rm(join(dir, n));
    }
    assert.ok(undone > 0);

    await writeFile(join(dir, "a"), "A");
    const fs = new FaultyFS(real, { seed: 1 });
    await writeFileAtomic(fs, join(dir, "a"), new TextEncoder().encode("new"));
    await fs.powerLoss();
    assert.equal(await readFile(join(dir, "a"), "utf8"), "new");
    assert.deepEqual(await readdir(dir), ["a"]);
  });
});

test("faults: an injected error leaves the call without effect; a crash stops everything; a failed fsync dooms the data", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "f");
    await writeFile(path, Buffer.alloc(1024, 1));
    const fs = new FaultyFS(real, { faults: [{ op: "rename", nth: 1, effect: "error" }, { op: "sync", nth: 2, effect: "error" }] });
    await assert.rejects(fs.rename(path, join(dir, "g")), InjectedIoError);
    assert.deepEqual(await readdir(dir), ["f"]);
    const f = await fs.openFile(path, "readwrite");
    await f.write(new Uint8Array(512).fill(2), 0);
    await f.sync();
    await f.write(new Uint8Array(512).fill(3), 512);
    await assert.rejects(f.sync(), InjectedIoError);
    await f.sync(); // "succeeds", as Linux would after dropping the pages
    await fs.powerLoss();
    const after = await readFile(path);
    assert.ok(after.subarray(0, 512).every((b) => b === 2));
    assert.ok(after.subarray(512).every((b) => b === 1), "data whose fsync failed is lost even after a later successful fsync");

    const crashing = new FaultyFS(real, { faults: [{ op: "mutation", nth: 2, effect: "crash" }] });
    const g = await crashing.openFile(join(dir, "g"), "create");
    await assert.rejects(g.write(new Uint8Array(10), 0), SimulatedCrash);
    assert.equal(crashing.crashed, true);
    await assert.rejects(crashing.readdir(dir), SimulatedCrash);
    await g.close();
    await crashing.powerLoss();
  });
});

test("a torn write lands a prefix, then the process is dead", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "f");
    await writeFile(path, Buffer.alloc(8192, 0));
    const fs = new FaultyFS(real, { seed: 5, faults: [{ op: "write", nth: 1, effect: "torn" }] });
    const f = await fs.openFile(path, "readwrite");
    await assert.rejects(f.write(new Uint8Array(8192).fill(9), 0), SimulatedCrash);
    const after = await readFile(path);
    const landed = after.indexOf(0);
    assert.ok(landed >= 0 && landed < 8192, "only a prefix landed");
    assert.ok(after.subarray(0, landed).every((b) => b === 9));
    await f.close();
    await fs.powerLoss();
  });
});
