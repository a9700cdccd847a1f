import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../../lib/errors.js";
import { lsn, type Lsn } from "../../lib/lsn.js";
import { KEY_END, KEY_MIN, relBlockKey, relKeyRange, type Key } from "../key.js";
import { formatLayerFileName, isTempFileName, parseLayerFileName, tempFileName, tryParseLayerFileName, type LayerDesc } from "./layer_name.js";
import { ALL_ONES_KEY } from "./range.js";

const F36 = "F".repeat(36);
const Z36 = "0".repeat(36);

test("delta and image names round-trip, with and without a generation", () => {
  const rel = relKeyRange({ spcOid: 1663, dbOid: 5, relNumber: 16384, fork: 0 });
  const descs: LayerDesc[] = [
    { kind: "delta", keyRange: { start: KEY_MIN, end: KEY_END }, lsnRange: { start: lsn(0x16b3748), end: lsn(0x2000000) } },
    { kind: "delta", keyRange: rel, lsnRange: { start: lsn(1), end: lsn((1n << 64n) - 1n) }, generation: 0 },
    { kind: "image", keyRange: rel, lsnRange: { start: lsn(0x1234), end: lsn(0x1235) }, generation: 0xffffffff },
    { kind: "image", keyRange: { start: relBlockKey({ spcOid: 1, dbOid: 2, relNumber: 3, fork: 2 }, 9), end: KEY_END }, lsnRange: { start: lsn(0), end: lsn(1) } },
  ];
  for (const d of descs) {
    const name = formatLayerFileName(d);
    assert.deepEqual(parseLayerFileName(name), d);
    assert.equal(formatLayerFileName(parseLayerFileName(name)), name);
  }
  assert.equal(formatLayerFileName(descs[0]!), `${Z36}-${F36}__00000000016B3748-0000000002000000`);
  assert.equal(
    formatLayerFileName(descs[2]!),
    `${formatLayerFileName(descs[2]!).slice(0, 73)}__0000000000001234-v1-FFFFFFFF`,
  );
});

test("invalid names are rejected with a reason; tryParse returns undefined", () => {
  const k1 = "0".repeat(35) + "1";
  const k2 = "0".repeat(35) + "2";
  const bad = [
    "",
    "metadata",
    `${k1}-${k2}__0000000000000001-0000000000000002.tmp`,
    `${k1}-${k2.replace("2", "a")}__0000000000000001`, // lower-case hex in a key
    `${k1}-${k2}__000000000000000a`, // lower-case hex
    `${k1}-${k2}__00000000000001`, // short LSN
    `${k1}-${k2}_0000000000000001`, // single underscore
    `${k2}-${k1}__0000000000000001`, // empty (reversed) key range
    `${k1}-${k1}__0000000000000001`, // empty key range
    `${k1}-${k2}__0000000000000002-0000000000000002`, // empty LSN range
    `${k1}-${k2}__0000000000000003-0000000000000002`, // reversed LSN range
    `${k1}-${k2}__FFFFFFFFFFFFFFFF`, // image at the maximum LSN
    `${k1}-${k2}__0000000000000001-v1-0000001`, // short generation
    `${k1}-${k2}__0000000000000001-v2-00000001`, // unknown suffix version
    `${k1}-${k2}__0000000000000001-v1-00000001-extra`,
    `${"0".repeat(37)}-${k2}__0000000000000001`,
  ];
  for (const name of bad) {
    assert.throws(() => parseLayerFileName(name), (e: unknown) => e instanceof StrataError && e.code === "invalid_argument", name);
    assert.equal(tryParseLayerFileName(name), undefined, name);
  }
});

test("KEY_END is written as all F's, and an end of the all-ones key cannot be named", () => {
  const d: LayerDesc = { kind: "delta", keyRange: { start: 5n as Key, end: KEY_END }, lsnRange: { start: lsn(1), end: lsn(2) } };
  assert.ok(formatLayerFileName(d).includes(`-${F36}__`));
  assert.equal(parseLayerFileName(formatLayerFileName(d)).keyRange.end, KEY_END);
  assert.throws(() => formatLayerFileName({ ...d, keyRange: { start: 5n as Key, end: ALL_ONES_KEY } }), /cannot be encoded/);
  assert.throws(() => formatLayerFileName({ ...d, generation: 2 ** 32 }), /generation/);
  assert.throws(() => formatLayerFileName({ ...d, kind: "image", lsnRange: { start: lsn(1), end: lsn(3) } }), /must be \[lsn, lsn\+1\)/);
  assert.throws(() => formatLayerFileName({ ...d, lsnRange: { start: 3n as Lsn, end: 3n as Lsn } }), /is empty/);
});

test("temp names are recognisable and never parse as layers", () => {
  const name = formatLayerFileName({ kind: "image", keyRange: { start: KEY_MIN, end: KEY_END }, lsnRange: { start: lsn(7), end: lsn(8) } });
  const t = tempFileName(name);
  assert.ok(t.startsWith(name + "."));
  assert.ok(isTempFileName(t));
  assert.ok(!isTempFileName(name));
  assert.equal(tryParseLayerFileName(t), undefined);
  assert.ok(isTempFileName("ephemeral-0000000001000000-12-1.tmp"));
});
