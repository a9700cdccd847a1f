import { test } from "node:test";
import assert from "node:assert/strict";
import { crc32c } from "../../formats/crc32c.js";
import { copyWithCrc32c, crc32cU64 } from "./crc_copy.js";
import { Rng } from "./test_support.js";

test("copyWithCrc32c copies exactly the span and returns crc32c's value, for every length around the native threshold", () => {
  const rng = new Rng(21);
  const src = rng.bytes(2000);
  for (let len = 0; len <= 600; len++) {
    const start = rng.int(1000);
    const previous = rng.bool(0.5) ? 0 : rng.int(0x1_0000_0000);
    const dst = new Uint8Array(len + 20).fill(0xee);
    const crc = copyWithCrc32c(src, start, start + len, dst, 7, previous);
    assert.equal(crc, crc32c(src.subarray(start, start + len), previous), `length ${len}`);
    assert.deepEqual(dst.subarray(7, 7 + len), src.subarray(start, start + len), `copy of length ${len}`);
    assert.ok(dst.subarray(0, 7).every((b) => b === 0xee) && dst.subarray(7 + len).every((b) => b === 0xee), `bytes around a copy of length ${len}`);
  }
});

test("crc32cU64 equals crc32c over the 8 big-endian bytes, extreme and random values", () => {
  const rng = new Rng(22);
  const cases: Array<[number, number]> = [[0, 0], [0xffffffff, 0xffffffff], [0x1fffff, 0xffffffff], [1, 0], [0, 1], [0x80000000, 0x80000000]];
  for (let i = 0; i < 2000; i++) cases.push([rng.int(0x1_0000_0000), rng.int(0x1_0000_0000)]);
  const b = Buffer.alloc(8);
  for (const [hi, lo] of cases) {
    b.writeUInt32BE(hi, 0);
    b.writeUInt32BE(lo, 4);
    for (const previous of [0, 0xdeadbeef, crc32c(Buffer.from("key"))]) {
      assert.equal(crc32cU64(hi, lo, previous), crc32c(b, previous), `${hi.toString(16)}:${lo.toString(16)} from ${previous}`);
    }
  }
});
