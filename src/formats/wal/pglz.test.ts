import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../../lib/errors.js";
import { pglzCompress, pglzDecompress } from "./pglz.js";
import { seededRandom as rng } from "../../lib/prng.js";

/** A page-like buffer: runs, repeated tuples, some noise. */
function pageLike(seed: number, size: number): Uint8Array {
  const r = rng(seed);
  const out = new Uint8Array(size);
  let i = 0;
  while (i < size) {
    const kind = r();
    const len = Math.min(size - i, 1 + Math.floor(r() * 300));
    if (kind < 0.3) out.fill(Math.floor(r() * 256), i, i + len);
    else if (kind < 0.6 && i > 40) {
      const from = Math.floor(r() * (i - 1));
      for (let k = 0; k < len; k++) out[i + k] = out[from + k] as number;
    } else for (let k = 0; k < len; k++) out[i + k] = Math.floor(r() * 256);
    i += len;
  }
  return out;
}

test("decodes PostgreSQL's documented example: literals then an overlapping match", () => {
  // "11234" as literals, then a 16-byte match at offset 4 -> "112341234123412341234".
  const stream = Uint8Array.from([0x20, 0x31, 0x31, 0x32, 0x33, 0x34, 0x0d, 0x04]);
  const out = pglzDecompress(stream, 21, true);
  assert.equal(Buffer.from(out).toString("latin1"), "112341234123412341234");
});

test("decodes an extended-length match tag (length 18 + extension byte)", () => {
  // literal 'a', then match len 18+100 = 118 at offset 1 -> 119 x 'a'.
  const stream = Uint8Array.from([0x02, 0x61, 0x0f, 0x01, 100]);
  assert.deepEqual(pglzDecompress(stream, 119, true), new Uint8Array(119).fill(0x61));
});

test("a match is clipped at rawSize, as PostgreSQL does", () => {
  const stream = Uint8Array.from([0x02, 0x61, 0x0f, 0x01, 100]);
  assert.deepEqual(pglzDecompress(stream, 50, false), new Uint8Array(50).fill(0x61));
  // With check_complete the stream must end exactly there too: here it does (the tag was the last item).
  assert.deepEqual(pglzDecompress(stream, 50, true), new Uint8Array(50).fill(0x61));
});

test("round trip through the writer for page-like, zero, random and tiny inputs", () => {
  const inputs: Uint8Array[] = [new Uint8Array(0), Uint8Array.of(7), new Uint8Array(8192), new Uint8Array(4000).fill(0xab)];
  for (let seed = 1; seed <= 40; seed++) inputs.push(pageLike(seed, 1 + ((seed * 977) % 8192)));
  const r = rng(99);
  inputs.push(Uint8Array.from({ length: 5000 }, () => Math.floor(r() * 256)));
  for (const input of inputs) {
    const c = pglzCompress(input);
    assert.deepEqual(pglzDecompress(c, input.length, true), input);
  }
  // The writer actually compresses: a zero page becomes tiny.
  assert.ok(pglzCompress(new Uint8Array(8192)).length < 200);
});

function assertCorrupt(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && re.test(e.message));
}

test("corrupt streams fail with precise errors", () => {
  // offset 0
  assertCorrupt(() => pglzDecompress(Uint8Array.from([0x02, 0x61, 0x00, 0x00]), 10, true), /match offset 0/);
  // offset beyond what was produced
  assertCorrupt(() => pglzDecompress(Uint8Array.from([0x02, 0x61, 0x00, 0x02]), 10, true), /reaches before the start/);
  // match tag at the very start (nothing produced yet)
  assertCorrupt(() => pglzDecompress(Uint8Array.from([0x01, 0x00, 0x01]), 10, true), /reaches before the start/);
  // tag cut off
  assertCorrupt(() => pglzDecompress(Uint8Array.from([0x02, 0x61, 0x00]), 10, true), /match tag cut off/);
  // extension byte cut off
  assertCorrupt(() => pglzDecompress(Uint8Array.from([0x02, 0x61, 0x0f, 0x01]), 100, true), /extended match length cut off/);
  // check_complete: too little output
  assertCorrupt(() => pglzDecompress(Uint8Array.from([0x00, 0x61, 0x62]), 10, true), /input ended after 2 of 10/);
  // check_complete: input left over
  assertCorrupt(() => pglzDecompress(Uint8Array.from([0x00, 0x61, 0x62, 0x63]), 2, true), /1 input bytes left over/);
  // without check_complete a short result is returned, not an error
  assert.deepEqual(pglzDecompress(Uint8Array.from([0x00, 0x61, 0x62]), 10, false), Uint8Array.of(0x61, 0x62));
});

test("random and mutated input never crashes or hangs: only StrataError or a result", () => {
  const r = rng(12345);
  const base = pglzCompress(pageLike(7, 8192));
  let errors = 0;
  const started = Date.now();
  for (let i = 0; i < 3000; i++) {
    let input: Uint8Array;
    if (i % 2 === 0) {
      input = Uint8Array.from({ length: Math.floor(r() * 600) }, () => Math.floor(r() * 256));
    } else {
      input = base.slice(0, Math.floor(r() * (base.length + 1)));
      for (let k = 0; k < 4; k++) input[Math.floor(r() * input.length)] = Math.floor(r() * 256);
    }
    try {
      const out = pglzDecompress(input, 8192, i % 3 !== 0);
      assert.ok(out.length <= 8192);
    } catch (e) {
      assert.ok(e instanceof StrataError, `seed 12345 case ${i}: ${String(e)}`);
      errors++;
    }
  }
  assert.ok(errors > 100);
  assert.ok(Date.now() - started < 20_000);
});
