import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { StrataError } from "../../lib/errors.js";
import { lz4CompressBlock, lz4DecompressBlock } from "./lz4.js";
import { seededRandom as rng } from "../../lib/prng.js";

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

/**
 * Compresses with the reference `lz4` command-line tool and extracts the raw
 * block from its frame (magic, FLG, BD, [content size], HC, then one block:
 * u32 size with the high bit meaning "stored uncompressed", data, end mark).
 */
function referenceBlock(input: Uint8Array): { block: Uint8Array; stored: boolean } {
  const r = spawnSync("lz4", ["-c", "-B4", "--no-frame-crc", "-BI"], { input, maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`lz4 failed: ${r.stderr.toString()}`);
  const f = new Uint8Array(r.stdout);
  const v = new DataView(f.buffer, f.byteOffset, f.byteLength);
  assert.equal(v.getUint32(0, true), 0x184d2204);
  const flg = f[4] as number;
  let p = 6 + ((flg & 0x08) !== 0 ? 8 : 0) + ((flg & 0x01) !== 0 ? 4 : 0) + 1;
  const word = v.getUint32(p, true);
  p += 4;
  const size = word & 0x7fffffff;
  return { block: f.subarray(p, p + size), stored: (word & 0x80000000) !== 0 };
}

const haveLz4Cli = spawnSync("lz4", ["--version"]).status === 0;

test("decodes blocks written by the reference lz4 implementation", { skip: haveLz4Cli ? false : "lz4 CLI not installed (scripts/setup installs it)" }, () => {
  let checked = 0;
  for (let seed = 1; seed <= 25; seed++) {
    const input = pageLike(seed, 512 + ((seed * 1013) % 7680));
    const { block, stored } = referenceBlock(input);
    if (stored) continue;
    assert.deepEqual(lz4DecompressBlock(block, input.length), input, `seed ${seed}`);
    checked++;
  }
  const zeros = referenceBlock(new Uint8Array(8192));
  assert.equal(zeros.stored, false);
  assert.deepEqual(lz4DecompressBlock(zeros.block, 8192), new Uint8Array(8192));
  assert.ok(checked >= 20, `only ${checked} compressed reference blocks`);
});

test("hand-built block: literals, overlapping match, long literal and match lengths", () => {
  // token 0x1f: 1 literal 'x', match len 15+... : ext byte 10 -> 4+15+10 = 29; offset 1; then last sequence 5 literals.
  const block = Uint8Array.from([0x1f, 0x78, 0x01, 0x00, 10, 0x50, 0x61, 0x62, 0x63, 0x64, 0x65]);
  const out = lz4DecompressBlock(block, 100);
  assert.equal(Buffer.from(out).toString("latin1"), "x".repeat(30) + "abcde");
  // 300 literals: nibble 15 + 255 + 30
  const lits = new Uint8Array(300).map((_, i) => i & 0xff);
  const b2 = Uint8Array.from([0xf0, 255, 30, ...lits]);
  assert.deepEqual(lz4DecompressBlock(b2, 300), lits);
  // empty block: a single zero token
  assert.deepEqual(lz4DecompressBlock(Uint8Array.of(0), 0), new Uint8Array(0));
});

test("round trip through the writer; the reference tool decodes the writer's blocks too", () => {
  const inputs: Uint8Array[] = [new Uint8Array(0), Uint8Array.of(1, 2, 3), new Uint8Array(8192), new Uint8Array(100).fill(9)];
  for (let seed = 1; seed <= 30; seed++) inputs.push(pageLike(seed, 1 + ((seed * 331) % 8192)));
  for (const input of inputs) {
    const c = lz4CompressBlock(input);
    assert.deepEqual(lz4DecompressBlock(c, input.length), input);
  }
  if (haveLz4Cli) {
    // Wrap our block in a minimal frame (FLG 0x60: version 1, independent blocks; BD 0x40: 64 KiB) and let lz4 -d decode it.
    const input = pageLike(77, 8192);
    const c = lz4CompressBlock(input);
    const frame = Buffer.concat([
      Buffer.from([0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x82]),
      Buffer.from(new Uint32Array([c.length]).buffer),
      Buffer.from(c),
      Buffer.from([0, 0, 0, 0]),
    ]);
    const r = spawnSync("lz4", ["-d", "-c"], { input: frame });
    assert.equal(r.status, 0, r.stderr.toString());
    assert.deepEqual(new Uint8Array(r.stdout), input);
  }
});

function assertCorrupt(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && re.test(e.message));
}

test("corrupt blocks fail with precise errors", () => {
  assertCorrupt(() => lz4DecompressBlock(new Uint8Array(0), 10), /empty input/);
  assertCorrupt(() => lz4DecompressBlock(Uint8Array.from([0x10, 0x61, 0x00, 0x00, 0x00]), 10), /match offset 0/);
  assertCorrupt(() => lz4DecompressBlock(Uint8Array.from([0x10, 0x61, 0x02, 0x00, 0x00]), 10), /reaches before the start/);
  assertCorrupt(() => lz4DecompressBlock(Uint8Array.from([0x10, 0x61, 0x01]), 10), /offset cut off/);
  assertCorrupt(() => lz4DecompressBlock(Uint8Array.from([0x50, 0x61]), 10), /5 literals but only 1/);
  assertCorrupt(() => lz4DecompressBlock(Uint8Array.from([0xf0, 255]), 1000), /literal length cut off/);
  assertCorrupt(() => lz4DecompressBlock(Uint8Array.from([0x30, 1, 2, 3]), 2), /overflow the 2-byte output/);
  assertCorrupt(() => lz4DecompressBlock(Uint8Array.from([0x1f, 0x61, 0x01, 0x00]), 100), /match length cut off/);
  assertCorrupt(() => lz4DecompressBlock(Uint8Array.from([0x1f, 0x61, 0x01, 0x00, 200, 0x00]), 100), /match overflows/);
  // A block that ends after a match (no final literal-only sequence) is incomplete.
  assertCorrupt(() => lz4DecompressBlock(Uint8Array.from([0x10, 0x61, 0x01, 0x00]), 100), /token was expected/);
});

test("random and mutated input never crashes or hangs: only StrataError or a result", () => {
  const r = rng(4242);
  const base = lz4CompressBlock(pageLike(3, 8192));
  let errors = 0;
  for (let i = 0; i < 3000; i++) {
    let input: Uint8Array;
    if (i % 2 === 0) {
      input = Uint8Array.from({ length: Math.floor(r() * 600) }, () => Math.floor(r() * 256));
    } else {
      input = base.slice(0, Math.floor(r() * (base.length + 1)));
      for (let k = 0; k < 4; k++) input[Math.floor(r() * input.length)] = Math.floor(r() * 256);
    }
    try {
      assert.ok(lz4DecompressBlock(input, 8192).length <= 8192);
    } catch (e) {
      assert.ok(e instanceof StrataError, `seed 4242 case ${i}: ${String(e)}`);
      errors++;
    }
  }
  assert.ok(errors > 100);
});
