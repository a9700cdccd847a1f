import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../../lib/errors.js";
import { decodeValue, encodedValueSize, encodeValue, encodeValueInto, isBase, type Value } from "./value.js";
import { Rng } from "./test_support.js";

test("every value shape round-trips with the documented overhead", () => {
  const rng = new Rng(1);
  const cases: Value[] = [
    { kind: "image", bytes: rng.bytes(8192) },
    { kind: "image", bytes: new Uint8Array(0) },
    { kind: "image", bytes: rng.bytes(4) },
  ];
  for (const willInit of [false, true]) {
    for (const engine of [undefined, "postgres", "native"] as const) {
      for (const len of [0, 1, 57, 9000]) {
        cases.push(engine === undefined ? { kind: "wal", willInit, rec: rng.bytes(len) } : { kind: "wal", willInit, rec: rng.bytes(len), engine });
      }
    }
  }
  for (const v of cases) {
    const enc = encodeValue(v);
    assert.equal(enc.length, encodedValueSize(v));
    assert.equal(enc.length, (v.kind === "image" ? v.bytes.length + 1 : v.rec.length + 2));
    assert.deepEqual(decodeValue(enc), v);
    // Encoding in place writes exactly those bytes at the offset and nothing around them.
    const into = new Uint8Array(enc.length + 10).fill(0xee);
    assert.equal(encodeValueInto(v, into, 7), enc.length);
    assert.deepEqual(into.subarray(7, 7 + enc.length), enc);
    assert.ok(into.subarray(0, 7).every((b) => b === 0xee) && into.subarray(7 + enc.length).every((b) => b === 0xee));
  }
});

test("isBase: images and will-init records only", () => {
  assert.equal(isBase({ kind: "image", bytes: new Uint8Array(1) }), true);
  assert.equal(isBase({ kind: "wal", willInit: true, rec: new Uint8Array(1) }), true);
  assert.equal(isBase({ kind: "wal", willInit: false, rec: new Uint8Array(1) }), false);
});

test("invalid encodings are corrupt_data with the origin in the message", () => {
  const bad: Array<[number[], RegExp]> = [
    [[], /empty value/],
    [[0x00, 1, 2], /unknown value tag 0x0/],
    [[0x03], /unknown value tag 0x3/],
    [[0x02], /no flags byte/],
    [[0x02, 0x08], /reserved WAL value flag bits/],
    [[0x02, 0x80, 1], /reserved WAL value flag bits/],
    [[0x02, 0x06], /unknown redo engine code 3/],
  ];
  for (const [bytes, re] of bad) {
    assert.throws(
      () => decodeValue(Uint8Array.from(bytes), "layer X offset 7"),
      (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && re.test(e.message) && e.message.includes("layer X offset 7"),
      `bytes ${JSON.stringify(bytes)}`,
    );
  }
});
