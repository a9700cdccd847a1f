import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { mkdtemp, open, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DIRECT_IO_ALIGN, DirectFileWriter } from "./direct_file_writer.js";
import { StrataError } from "../lib/errors.js";

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "dfw-"));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Whether the filesystem under `dir` accepts O_DIRECT opens (where it does, the writer must use it). */
async function directSupported(dir: string): Promise<boolean> {
  try {
    const fh = await open(join(dir, "probe"), constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT, 0o600);
    await fh.close();
    return true;
  } catch {
    return false;
  }
}

/** Writes `data` through a writer in pieces of pseudo-random sizes (1 byte .. 3 staging areas). */
async function writeInPieces(path: string, data: Buffer, stageBytes: number, direct: boolean, seed: number): Promise<DirectFileWriter> {
  const w = await DirectFileWriter.create(path, 0o600, { stageBytes, direct });
  let x = seed;
  let off = 0;
  while (off < data.length) {
    const batch: Buffer[] = [];
    for (let k = 0; k < 3 && off < data.length; k++) {
      x = (x * 1103515245 + 12345) >>> 0;
      const n = Math.min(data.length - off, 1 + (x % (3 * stageBytes)));
      batch.push(data.subarray(off, off + n));
      off += n;
    }
    await w.write(batch);
    assert.equal(w.bytesWritten, off);
  }
  assert.equal(await w.finish(), data.length);
  return w;
}

test("every length round-trips byte for byte, directly where the filesystem allows it and through the page cache", async () => {
  await withDir(async (dir) => {
    const supported = await directSupported(dir);
    const stage = 2 * DIRECT_IO_ALIGN;
    const lengths = [0, 1, 511, DIRECT_IO_ALIGN - 1, DIRECT_IO_ALIGN, DIRECT_IO_ALIGN + 1, stage, stage + 1, 2 * stage, 7 * stage + 4093, 1 << 20];
    let i = 0;
    for (const direct of [true, false]) {
      for (const len of lengths) {
        const data = randomBytes(len);
        const path = join(dir, `f${i++}`);
        const w = await writeInPieces(path, data, stage, direct, len + 1);
        assert.equal(w.direct, direct && supported, `direct I/O used for ${len} bytes`);
        const back = await readFile(path);
        assert.equal(back.length, len);
        assert.ok(back.equals(data), `${len} bytes (${direct ? "direct" : "buffered"}) read back differ`);
      }
    }
  });
});

test("default staging areas: a multi-area file written in large batches", async () => {
  await withDir(async (dir) => {
    const data = randomBytes(9 * 1024 * 1024 + 123);
    const path = join(dir, "big");
    const w = await DirectFileWriter.create(path, 0o640);
    for (let off = 0; off < data.length; off += 1 << 20) await w.write([data.subarray(off, Math.min(data.length, off + (1 << 20)))]);
    assert.equal(await w.finish(), data.length);
    assert.ok((await readFile(path)).equals(data));
    assert.equal((await stat(path)).mode & 0o777, 0o640 & ~process.umask());
  });
});

test("refuses an existing file, a bad staging size and use after finish or abort", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "exists");
    await writeFile(path, "keep me");
    await assert.rejects(DirectFileWriter.create(path, 0o600), (e: NodeJS.ErrnoException) => e.code === "EEXIST");
    assert.equal(await readFile(path, "utf8"), "keep me");
    await assert.rejects(DirectFileWriter.create(join(dir, "odd"), 0o600, { stageBytes: 1000 }), (e: unknown) => e instanceof StrataError && e.code === "invalid_argument" && /1000 bytes/.test(e.message));

    const done = await DirectFileWriter.create(join(dir, "done"), 0o600);
    await done.write([Buffer.from("abc")]);
    assert.equal(await done.finish(), 3);
    await assert.rejects(done.write([Buffer.from("more")]), (e: unknown) => e instanceof StrataError && /already closed/.test(e.message));
    assert.equal(await readFile(join(dir, "done"), "utf8"), "abc");

    const aborted = await DirectFileWriter.create(join(dir, "aborted"), 0o600);
    await aborted.write([randomBytes(3 * DIRECT_IO_ALIGN)]);
    await aborted.abort();
    await aborted.abort(); // idempotent
    await assert.rejects(aborted.finish(), (e: unknown) => e instanceof StrataError && /already closed/.test(e.message));
  });
});
