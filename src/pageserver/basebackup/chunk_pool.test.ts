import { test } from "node:test";
import assert from "node:assert/strict";
import { ChunkPool } from "./chunk_pool.js";

test("ChunkPool lends views of recycled buffers and ignores chunks it did not lend", () => {
  const pool = new ChunkPool(1024, 2);
  const a = pool.acquire(1024);
  const b = pool.acquire(100);
  assert.equal(a.length, 1024);
  assert.equal(b.length, 100);
  assert.notEqual(a.buffer, b.buffer, "two outstanding chunks never share memory");
  assert.equal(pool.outstanding, 2);
  pool.release(new Uint8Array(100)); // not lent: no-op
  pool.release(b.subarray(0, 10)); // a different view: no-op
  assert.equal(pool.outstanding, 2);
  pool.release(b);
  pool.release(b); // twice: no-op
  assert.equal(pool.outstanding, 1);
  const c = pool.acquire(512);
  assert.equal(c.buffer, b.buffer, "the released buffer is reused");
  assert.equal(pool.allocated, 2, "two buffers allocated, the third lend reused one");
  assert.equal(c.byteOffset, b.byteOffset);
  assert.throws(() => pool.acquire(1025), /assertion failed/);
  assert.throws(() => pool.acquire(0), /assertion failed/);
});

test("ChunkPool keeps at most maxIdle buffers", () => {
  const pool = new ChunkPool(64, 1);
  const xs = [pool.acquire(64), pool.acquire(64), pool.acquire(64)];
  for (const x of xs) pool.release(x);
  const y = pool.acquire(64);
  const z = pool.acquire(64);
  assert.equal(y.buffer, xs[0]!.buffer, "one idle buffer kept");
  assert.ok(xs.every((x) => x.buffer !== z.buffer), "the others were dropped");
});
