/**
 * Helpers shared by the layer tests: a seeded PRNG (so a failing seed is a
 * reproducible case), temp directories, and a corrupt_data expectation.
 * Not imported by production code.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";
import { StrataError } from "../../lib/errors.js";
import { seededRandom } from "../../lib/prng.js";

/** Seeded random helpers over src/lib/prng.ts. */
export class Rng {
  private readonly random: () => number;
  constructor(seed: number) {
    this.random = seededRandom(seed);
  }
  next(): number {
    return this.random();
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  bool(p = 0.5): boolean {
    return this.next() < p;
  }
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  pick<T>(xs: readonly T[]): T {
    assert.ok(xs.length > 0);
    return xs[this.int(xs.length)]!;
  }
}

export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "strata-layers-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Asserts that `fn` rejects with StrataError("corrupt_data") whose message names `path` and an offset. */
export async function assertCorrupt(fn: () => Promise<unknown>, path: string, context: string): Promise<void> {
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err !== undefined, `${context}: corruption was not detected`);
  assert.ok(err instanceof StrataError, `${context}: expected StrataError, got ${String(err)}`);
  assert.equal(err.code, "corrupt_data", `${context}: ${err.message}`);
  assert.ok(err.message.includes(path), `${context}: message does not name the file: ${err.message}`);
  assert.match(err.message, /offset \d+/, `${context}: message does not name an offset: ${err.message}`);
}
