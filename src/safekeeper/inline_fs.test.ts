import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InlineIoFS, INLINE_IO_MAX_BYTES } from "./inline_fs.js";

test("InlineIoFS: inline and thread-pool paths read back what was written, in both fsync modes", async () => {
  const dir = await mkdtemp(join(tmpdir(), "strata-inline-"));
  try {
    for (const inlineFsync of [true, false]) {
      const fs = new InlineIoFS({ inlineFsync });
      const path = join(dir, `f-${inlineFsync}`);
      const f = await fs.openFile(path, "create");
      const small = new Uint8Array(1000).map((_, i) => i & 0xff);
      const big = new Uint8Array(INLINE_IO_MAX_BYTES * 3).map((_, i) => (i * 7) & 0xff);
      await f.write(small, 10);
      await f.sync();
      await f.write(big, 5000);
      await f.sync(); // large: goes to the thread pool even in inline mode
      assert.equal(await f.size(), 5000 + big.length);
      const back = new Uint8Array(small.length);
      assert.equal(await f.read(back, 10), small.length);
      assert.deepEqual(back, small);
      const backBig = new Uint8Array(big.length);
      assert.equal(await f.read(backBig, 5000), big.length);
      assert.deepEqual(backBig, big);
      const tail = new Uint8Array(100);
      assert.equal(await f.read(tail, 5000 + big.length - 40), 40, "short read at end of file");
      await f.close();
      const disk = await readFile(path);
      assert.deepEqual(new Uint8Array(disk.subarray(10, 1010)), small);
      await assert.rejects(fs.openFile(join(dir, "missing"), "read"), (e: unknown) => (e as { code?: string }).code === "ENOENT");
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
