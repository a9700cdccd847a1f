import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StrataError } from "../lib/errors.js";
import { generateTimelineId } from "../lib/id.js";
import { lsn, type Lsn } from "../lib/lsn.js";
import { decodeMetadata, encodeMetadata, METADATA_FILE_BYTES, readMetadata, writeMetadata, type TimelineMetadata } from "./metadata.js";
import { parseHostPort, parseTenantConfig, DEFAULT_TENANT_CONFIG } from "./config.js";

const sample: TimelineMetadata = {
  diskConsistentLsn: lsn(0x1_16b3_7480n),
  prevRecordLsn: lsn(0x1_6b3_7400n),
  ancestorTimelineId: generateTimelineId(),
  ancestorLsn: lsn(0x1_0000_0028n),
  latestGcCutoffLsn: lsn(0x100n),
  initdbLsn: lsn(0x16b_3700n),
  pgVersion: 15,
};

test("metadata round-trips, with and without an ancestor", () => {
  assert.deepEqual(decodeMetadata(encodeMetadata(sample)), sample);
  const root: TimelineMetadata = { ...sample, ancestorTimelineId: undefined, ancestorLsn: 0n as Lsn, prevRecordLsn: undefined };
  assert.deepEqual(decodeMetadata(encodeMetadata(root)), root);
  assert.equal(encodeMetadata(sample).length, METADATA_FILE_BYTES);
});

test("every flipped byte and every truncation of a metadata file is corrupt_data", () => {
  const good = encodeMetadata(sample);
  for (let off = 0; off < good.length; off++) {
    const bad = Buffer.from(good);
    bad[off] = bad[off]! ^ 0x40;
    assert.throws(() => decodeMetadata(bad, "m"), (e: unknown) => e instanceof StrataError && (e.code === "corrupt_data" || e.code === "unsupported") && /offset \d+/.test(e.message), `flip at ${off}`);
  }
  for (const len of [0, 1, 100, METADATA_FILE_BYTES - 1]) {
    assert.throws(() => decodeMetadata(good.subarray(0, len)), (e: unknown) => e instanceof StrataError && e.code === "corrupt_data");
  }
});

test("writeMetadata replaces atomically and leaves no temp file; missing file is not_found", async () => {
  const dir = await mkdtemp(join(tmpdir(), "strata-meta-"));
  try {
    await assert.rejects(readMetadata(dir), (e: unknown) => e instanceof StrataError && e.code === "not_found");
    await writeMetadata(dir, sample);
    const next = { ...sample, diskConsistentLsn: lsn(0x2_0000_0000n) };
    await writeMetadata(dir, next);
    assert.deepEqual(await readMetadata(dir), next);
    assert.deepEqual(await readdir(dir), ["metadata"]);
    const bytes = await readFile(join(dir, "metadata"));
    bytes[9] = bytes[9]! ^ 1;
    await writeFile(join(dir, "metadata"), bytes);
    await assert.rejects(readMetadata(dir), (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && e.message.includes(dir));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("tenant config: defaults, overrides, unknown and out-of-range settings refused", () => {
  assert.deepEqual(parseTenantConfig(undefined), DEFAULT_TENANT_CONFIG);
  assert.equal(parseTenantConfig({ checkpointDistanceBytes: 65536 }).checkpointDistanceBytes, 65536);
  assert.throws(() => parseTenantConfig({ checkpointDistance: 1 }), /Unknown tenant config setting "checkpointDistance"/);
  assert.throws(() => parseTenantConfig({ checkpointDistanceBytes: 1 }), /must be an integer in/);
  assert.throws(() => parseTenantConfig({ gcHorizonBytes: "1" }), /must be an integer/);
  assert.throws(() => parseTenantConfig([1]), /JSON object/);
  assert.deepEqual(parseHostPort("127.0.0.1:5454"), { host: "127.0.0.1", port: 5454 });
  assert.deepEqual(parseHostPort("[::1]:80"), { host: "::1", port: 80 });
  assert.throws(() => parseHostPort("localhost"), /expected host:port/);
  assert.throws(() => parseHostPort("h:70000"), /expected host:port/);
});
