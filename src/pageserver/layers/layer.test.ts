import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFile } from "node:fs/promises";
import { join } from "node:path";
import { StrataError } from "../../lib/errors.js";
import { lsn } from "../../lib/lsn.js";
import type { Key } from "../key.js";
import { DeltaLayerWriter } from "./delta_layer.js";
import { PersistentLayer } from "./layer.js";
import { formatLayerFileName } from "./layer_name.js";
import { assertCorrupt, withTempDir } from "./test_support.js";

test("PersistentLayer opens lazily, once, and refuses a file whose header disagrees with its name", async () => {
  await withTempDir(async (dir) => {
    const keyRange = { start: 10n as Key, end: 20n as Key };
    const lsnRange = { start: lsn(100), end: lsn(200) };
    const w = await DeltaLayerWriter.create({ dir, keyRange, lsnRange });
    await w.put(15n as Key, lsn(150), { kind: "wal", willInit: true, rec: new Uint8Array([1, 2]) });
    const written = await w.finish();

    const layer = PersistentLayer.fromFileName(dir, written.name);
    assert.equal(layer.isOpen, false);
    const [a, b] = await Promise.all([layer.reader(), layer.reader()]);
    assert.equal(a, b);
    assert.deepEqual(await layer.getValues(15n as Key, lsnRange), [
      { key: 15n as Key, lsn: lsn(150), value: { kind: "wal", willInit: true, rec: new Uint8Array([1, 2]) } },
    ]);
    await layer.close();
    assert.equal(layer.isOpen, false);

    // The same bytes under another layer's name: detected at open.
    const liar = { kind: "delta" as const, keyRange, lsnRange: { start: lsn(100), end: lsn(300) } };
    await copyFile(written.path, join(dir, formatLayerFileName(liar)));
    const wrong = new PersistentLayer(dir, liar);
    await assertCorrupt(() => wrong.getValues(15n as Key, lsnRange), wrong.path, "renamed file");
    assert.equal(wrong.isOpen, false, "a failed open is not cached");

    const missing = new PersistentLayer(dir, { ...liar, lsnRange: { start: lsn(1), end: lsn(2) } });
    await assert.rejects(missing.getValues(15n as Key, lsnRange), (e: unknown) => e instanceof StrataError && e.code === "not_found");
    assert.throws(() => PersistentLayer.fromFileName(dir, "metadata"), (e: unknown) => e instanceof StrataError && e.code === "invalid_argument");
  });
});
