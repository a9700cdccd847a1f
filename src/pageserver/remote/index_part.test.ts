import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../../lib/errors.js";
import { generateTenantId, generateTimelineId } from "../../lib/id.js";
import { lsn, type Lsn } from "../../lib/lsn.js";
import { KEY_END, KEY_MIN } from "../key.js";
import { formatLayerFileName } from "../layers/layer_name.js";
import type { TimelineMetadata } from "../metadata.js";
import {
  formatIndexPart, parseIndexPart, parseRemoteObjectName, pickNewestIndex, remoteIndexPath, remoteLayerPath, INDEX_PART_VERSION, type IndexPart,
} from "./index_part.js";

const delta = formatLayerFileName({ kind: "delta", keyRange: { start: KEY_MIN, end: KEY_END }, lsnRange: { start: lsn(0x100n), end: lsn(0x2001n) } });
const image = formatLayerFileName({ kind: "image", keyRange: { start: KEY_MIN, end: KEY_END }, lsnRange: { start: lsn(0x2000n), end: lsn(0x2001n) } });

const meta: TimelineMetadata = {
  diskConsistentLsn: lsn(0x2000n),
  prevRecordLsn: lsn(0x1fd0n),
  ancestorTimelineId: generateTimelineId(),
  ancestorLsn: lsn(0x100n),
  latestGcCutoffLsn: lsn(0x180n),
  initdbLsn: lsn(0x80n),
  pgVersion: 15,
};

const sample: IndexPart = {
  version: INDEX_PART_VERSION,
  generation: 3,
  metadata: meta,
  layers: new Map([
    [delta, { fileSizeBytes: 12345, generation: 1, checksumCrc32c: "0a1b2c3d" }],
    [image, { fileSizeBytes: 999, generation: 3, checksumCrc32c: "ffffffff" }],
  ]),
};

test("index_part.json round-trips, root and branch", () => {
  const back = parseIndexPart(formatIndexPart(sample));
  assert.deepEqual(back, sample);
  const root: IndexPart = { ...sample, metadata: { ...meta, ancestorTimelineId: undefined, ancestorLsn: 0n as Lsn, prevRecordLsn: undefined }, layers: new Map() };
  assert.deepEqual(parseIndexPart(Buffer.from(formatIndexPart(root))), root);
  const json = JSON.parse(formatIndexPart(sample)) as Record<string, unknown>;
  assert.equal(json.disk_consistent_lsn, "0/2000");
  assert.deepEqual((json.layers as Record<string, unknown>)[delta], { file_size: 12345, generation: 1, checksum_crc32c: "0a1b2c3d" });
});

test("index_part.json: every kind of damage is a clear error", () => {
  const good = JSON.parse(formatIndexPart(sample)) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  const cases: Array<[string, (j: Record<string, any>) => unknown, RegExp]> = [ // eslint-disable-line @typescript-eslint/no-explicit-any
    ["not json", () => "{", /not JSON/],
    ["array", () => [], /document must be an object/],
    ["missing layers", (j) => ({ ...j, layers: undefined }), /"layers" is missing|layers must be an object/],
    ["bad lsn", (j) => ({ ...j, disk_consistent_lsn: "zz" }), /disk_consistent_lsn/],
    ["disagreeing lsns", (j) => ({ ...j, disk_consistent_lsn: "0/3000" }), /disagrees/],
    ["generation 0", (j) => ({ ...j, generation: 0 }), /generation must be an integer/],
    ["layer gen above index gen", (j) => ({ ...j, layers: { ...j.layers, [delta]: { ...j.layers[delta], generation: 4 } } }), /generation must be an integer in \[1, 3\]/],
    ["bad layer name", (j) => ({ ...j, layers: { "not-a-layer": j.layers[delta] } }), /not a canonical layer file name/],
    ["layer above disk_consistent", (j) => ({ ...j, disk_consistent_lsn: "0/1000", metadata: { ...j.metadata, disk_consistent_lsn: "0/1000" } }), /above disk_consistent_lsn/],
    ["bad checksum", (j) => ({ ...j, layers: { [delta]: { ...j.layers[delta], checksum_crc32c: "XYZ" } } }), /checksum_crc32c/],
    ["negative size", (j) => ({ ...j, layers: { [delta]: { ...j.layers[delta], file_size: -1 } } }), /file_size/],
    ["bad ancestor", (j) => ({ ...j, metadata: { ...j.metadata, ancestor_timeline_id: "abc" } }), /ancestor_timeline_id/],
  ];
  for (const [name, mutate, re] of cases) {
    const v = mutate(structuredClone(good));
    const text = typeof v === "string" ? v : JSON.stringify(v);
    assert.throws(() => parseIndexPart(text, "test"), (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && re.test(e.message), name);
  }
  assert.throws(() => parseIndexPart(JSON.stringify({ ...good, version: 2 })), (e: unknown) => e instanceof StrataError && e.code === "unsupported");
});

test("remote layout: generation suffixes, newest index not above our own wins", () => {
  const t = generateTenantId();
  const tl = generateTimelineId();
  assert.equal(remoteIndexPath(t, tl, 2), `tenants/${t}/timelines/${tl}/index_part.json-00000002`);
  assert.equal(remoteLayerPath(t, tl, delta, 0x1a), `tenants/${t}/timelines/${tl}/${delta}-0000001a`);
  assert.deepEqual(parseRemoteObjectName(`${delta}-0000001a`), { kind: "layer", layerFileName: delta, generation: 26 });
  assert.deepEqual(parseRemoteObjectName("index_part.json-00000003"), { kind: "index", generation: 3 });
  assert.equal(parseRemoteObjectName("index_part.json"), undefined);
  assert.equal(parseRemoteObjectName("junk-00000001"), undefined);
  const names = ["index_part.json-00000001", "index_part.json-00000005", "index_part.json-00000003", `${delta}-00000009`];
  assert.equal(pickNewestIndex(names, 10), 5);
  assert.equal(pickNewestIndex(names, 4), 3);
  assert.equal(pickNewestIndex(names, 0), undefined);
});
