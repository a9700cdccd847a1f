/**
 * `index_part.json`: the durable description of one timeline in remote
 * storage, and the remote layout (object names) with generations.
 *
 * Remote layout (relative to the storage's configured prefix; DESIGN §7):
 *
 *   tenants/<tenant_id>/timelines/<timeline_id>/<layer file name>-<generation:8 hex>
 *   tenants/<tenant_id>/timelines/<timeline_id>/index_part.json-<generation:8 hex>
 *
 * Every object a pageserver writes carries the generation of the attachment
 * that wrote it (contract B: the control plane hands out generations, one per
 * attach). Two pageservers that both believe they hold a tenant therefore
 * never write the same object name, and the newest index — the one with the
 * highest generation not above the reader's own — is the truth on attach.
 * The local file name of a layer has no generation (layer_name.ts); the index
 * maps each local name to the generation of its remote object.
 *
 * The index (JSON, UTF-8), format version INDEX_PART_VERSION:
 *
 *   {
 *     "version": 1,
 *     "generation": 2,                      // of the pageserver that wrote this index
 *     "disk_consistent_lsn": "0/3000028",   // every layer below is listed; = remote_consistent_lsn
 *     "metadata": {
 *       "disk_consistent_lsn": "0/3000028",
 *       "prev_record_lsn": "0/3000000" | null,
 *       "ancestor_timeline_id": "<32 hex>" | null,
 *       "ancestor_lsn": "0/0",
 *       "latest_gc_cutoff_lsn": "0/0",
 *       "initdb_lsn": "0/14EE0B0",          // initial LSN (root: import/initdb end; branch: the ancestor's)
 *       "pg_version": 15
 *     },
 *     "layers": {
 *       "<layer file name>": { "file_size": 123456, "generation": 1, "checksum_crc32c": "0a1b2c3d" }
 *     }
 *   }
 *
 * Invariants a valid index keeps (checked by `parseIndexPart`; a violation
 * is corrupt_data naming the field): the top-level and metadata
 * disk_consistent_lsn agree; every layer name is canonical and has no
 * generation suffix; every layer lies at or below disk_consistent_lsn (the
 * same rule timeline.ts applies to local files); layer generations are not
 * above the index's generation; sizes are non-negative safe integers.
 *
 * Parsing is pure and never trusts the bytes: JSON that does not parse,
 * a missing or mistyped field, an unknown version — each a clear
 * StrataError with the path of the field.
 */
import { StrataError } from "../../lib/errors.js";
import { parseTimelineId, type TenantId, type TimelineId } from "../../lib/id.js";
import { formatLsn, INVALID_LSN, parseLsn, type Lsn } from "../../lib/lsn.js";
import { remotePath, parseRemotePrefix, type RemotePath, type RemotePrefix } from "../../remote_storage/remote_path.js";
import { tryParseLayerFileName } from "../layers/layer_name.js";
import type { TimelineMetadata } from "../metadata.js";

export const INDEX_PART_VERSION = 1;
export const INDEX_PART_FILE_NAME = "index_part.json";
/** Generations are u32, like Neon's; 0 is never handed out (contract B: 1 on create). */
export const MAX_GENERATION = 0xffffffff;
/**
 * An index larger than this is refused before parsing: ~64 MiB holds about
 * 300k layers, far above the ~10k a timeline should ever have.
 */
export const MAX_INDEX_PART_BYTES = 64 * 1024 * 1024;

/** What the index says about one layer. */
export interface IndexLayerMeta {
  readonly fileSizeBytes: number;
  readonly generation: number;
  /** CRC32C of the whole file, 8 lower-case hex digits. */
  readonly checksumCrc32c: string;
}

export interface IndexPart {
  readonly version: number;
  readonly generation: number;
  readonly metadata: TimelineMetadata;
  readonly layers: ReadonlyMap<string, IndexLayerMeta>;
}

// ------------------------------------------------------------------ layout

export function formatGeneration(g: number): string {
  checkGeneration(g, "generation");
  return g.toString(16).padStart(8, "0");
}

export function checkGeneration(g: unknown, what: string): number {
  if (typeof g !== "number" || !Number.isInteger(g) || g < 1 || g > MAX_GENERATION) {
    throw new StrataError("invalid_argument", `${what} must be an integer in [1, ${MAX_GENERATION}], got ${JSON.stringify(g)}`);
  }
  return g;
}

export function tenantPrefix(tenantId: TenantId): RemotePrefix {
  return parseRemotePrefix(`tenants/${tenantId}/`);
}

export function timelinesPrefix(tenantId: TenantId): RemotePrefix {
  return parseRemotePrefix(`tenants/${tenantId}/timelines/`);
}

export function timelinePrefix(tenantId: TenantId, timelineId: TimelineId): RemotePrefix {
  return parseRemotePrefix(`tenants/${tenantId}/timelines/${timelineId}/`);
}

export function remoteLayerPath(tenantId: TenantId, timelineId: TimelineId, layerFileName: string, generation: number): RemotePath {
  return remotePath("tenants", tenantId, "timelines", timelineId, `${layerFileName}-${formatGeneration(generation)}`);
}

export function remoteIndexPath(tenantId: TenantId, timelineId: TimelineId, generation: number): RemotePath {
  return remotePath("tenants", tenantId, "timelines", timelineId, `${INDEX_PART_FILE_NAME}-${formatGeneration(generation)}`);
}

const GEN_SUFFIX_RE = /^(.*)-([0-9a-f]{8})$/;

/** Splits a remote object's base name into what it is: an index of a generation, a layer, or neither. */
export function parseRemoteObjectName(baseName: string): { kind: "index"; generation: number } | { kind: "layer"; layerFileName: string; generation: number } | undefined {
  const m = GEN_SUFFIX_RE.exec(baseName);
  if (m === null) return undefined;
  const generation = Number.parseInt(m[2]!, 16);
  if (generation < 1) return undefined;
  if (m[1] === INDEX_PART_FILE_NAME) return { kind: "index", generation };
  const desc = tryParseLayerFileName(m[1]!);
  if (desc === undefined || desc.generation !== undefined) return undefined;
  return { kind: "layer", layerFileName: m[1]!, generation };
}

/** The newest index generation not above `maxGeneration`, from a listing's base names. */
export function pickNewestIndex(baseNames: Iterable<string>, maxGeneration: number): number | undefined {
  let best: number | undefined;
  for (const n of baseNames) {
    const p = parseRemoteObjectName(n);
    if (p?.kind !== "index" || p.generation > maxGeneration) continue;
    if (best === undefined || p.generation > best) best = p.generation;
  }
  return best;
}

// ------------------------------------------------------------------ format

export function formatIndexPart(ix: IndexPart): string {
  const m = ix.metadata;
  const layers: Record<string, { file_size: number; generation: number; checksum_crc32c: string }> = {};
  for (const name of [...ix.layers.keys()].sort()) {
    const l = ix.layers.get(name)!;
    layers[name] = { file_size: l.fileSizeBytes, generation: l.generation, checksum_crc32c: l.checksumCrc32c };
  }
  return (
    JSON.stringify(
      {
        version: ix.version,
        generation: ix.generation,
        disk_consistent_lsn: formatLsn(m.diskConsistentLsn),
        metadata: {
          disk_consistent_lsn: formatLsn(m.diskConsistentLsn),
          prev_record_lsn: m.prevRecordLsn === undefined ? null : formatLsn(m.prevRecordLsn),
          ancestor_timeline_id: m.ancestorTimelineId ?? null,
          ancestor_lsn: formatLsn(m.ancestorTimelineId === undefined ? INVALID_LSN : m.ancestorLsn),
          latest_gc_cutoff_lsn: formatLsn(m.latestGcCutoffLsn),
          initdb_lsn: formatLsn(m.initdbLsn),
          pg_version: m.pgVersion,
        },
        layers,
      },
      null,
      1,
    ) + "\n"
  );
}

function corrupt(where: string, problem: string): never {
  throw new StrataError("corrupt_data", `Invalid index_part.json ${where}: ${problem}`);
}

function field(obj: Record<string, unknown>, key: string, where: string): unknown {
  if (!(key in obj)) corrupt(where, `field "${key}" is missing`);
  return obj[key];
}

function objectAt(v: unknown, where: string, path: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) corrupt(where, `${path} must be an object`);
  return v as Record<string, unknown>;
}

function lsnAt(v: unknown, where: string, path: string): Lsn {
  if (typeof v !== "string") corrupt(where, `${path} must be an LSN string, got ${JSON.stringify(v)}`);
  try {
    return parseLsn(v);
  } catch (e) {
    corrupt(where, `${path}: ${(e as Error).message}`);
  }
}

function intAt(v: unknown, where: string, path: string, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) corrupt(where, `${path} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
  return v;
}

/** Parses and validates an index; `where` names the object in errors. */
export function parseIndexPart(bytes: Uint8Array | string, where = INDEX_PART_FILE_NAME): IndexPart {
  const size = typeof bytes === "string" ? Buffer.byteLength(bytes) : bytes.length;
  if (size > MAX_INDEX_PART_BYTES) corrupt(where, `${size} bytes, more than the limit ${MAX_INDEX_PART_BYTES}`);
  let json: unknown;
  try {
    json = JSON.parse(typeof bytes === "string" ? bytes : Buffer.from(bytes).toString("utf8"));
  } catch (e) {
    corrupt(where, `not JSON (${(e as Error).message})`);
  }
  const top = objectAt(json, where, "the document");
  const version = field(top, "version", where);
  if (version !== INDEX_PART_VERSION) {
    throw new StrataError("unsupported", `index_part.json ${where}: format version ${JSON.stringify(version)}, this build reads ${INDEX_PART_VERSION}`);
  }
  const generation = intAt(field(top, "generation", where), where, "generation", 1, MAX_GENERATION);
  const topDisk = lsnAt(field(top, "disk_consistent_lsn", where), where, "disk_consistent_lsn");
  const md = objectAt(field(top, "metadata", where), where, "metadata");
  const prev = field(md, "prev_record_lsn", where);
  const anc = field(md, "ancestor_timeline_id", where);
  let ancestorTimelineId: TimelineId | undefined;
  if (anc !== null) {
    if (typeof anc !== "string") corrupt(where, `metadata.ancestor_timeline_id must be a timeline id or null`);
    try {
      ancestorTimelineId = parseTimelineId(anc);
    } catch (e) {
      corrupt(where, `metadata.ancestor_timeline_id: ${(e as Error).message}`);
    }
  }
  const metadata: TimelineMetadata = {
    diskConsistentLsn: lsnAt(field(md, "disk_consistent_lsn", where), where, "metadata.disk_consistent_lsn"),
    prevRecordLsn: prev === null ? undefined : lsnAt(prev, where, "metadata.prev_record_lsn"),
    ancestorTimelineId,
    ancestorLsn: lsnAt(field(md, "ancestor_lsn", where), where, "metadata.ancestor_lsn"),
    latestGcCutoffLsn: lsnAt(field(md, "latest_gc_cutoff_lsn", where), where, "metadata.latest_gc_cutoff_lsn"),
    initdbLsn: lsnAt(field(md, "initdb_lsn", where), where, "metadata.initdb_lsn"),
    pgVersion: intAt(field(md, "pg_version", where), where, "metadata.pg_version", 1, 1000),
  };
  if (metadata.diskConsistentLsn !== topDisk) {
    corrupt(where, `disk_consistent_lsn ${formatLsn(topDisk)} disagrees with metadata.disk_consistent_lsn ${formatLsn(metadata.diskConsistentLsn)}`);
  }
  if (ancestorTimelineId !== undefined && metadata.diskConsistentLsn < metadata.ancestorLsn) {
    corrupt(where, `disk_consistent_lsn ${formatLsn(metadata.diskConsistentLsn)} is below the ancestor LSN ${formatLsn(metadata.ancestorLsn)}`);
  }
  const layersObj = objectAt(field(top, "layers", where), where, "layers");
  const layers = new Map<string, IndexLayerMeta>();
  for (const [name, v] of Object.entries(layersObj)) {
    const path = `layers["${name}"]`;
    const desc = tryParseLayerFileName(name);
    if (desc === undefined || desc.generation !== undefined) corrupt(where, `${path}: not a canonical layer file name`);
    const beyond = desc.kind === "delta" ? desc.lsnRange.end > metadata.diskConsistentLsn + 1n : desc.lsnRange.start > metadata.diskConsistentLsn;
    if (beyond) corrupt(where, `${path}: layer lies above disk_consistent_lsn ${formatLsn(metadata.diskConsistentLsn)}`);
    const o = objectAt(v, where, path);
    const checksum = field(o, "checksum_crc32c", where);
    if (typeof checksum !== "string" || !/^[0-9a-f]{8}$/.test(checksum)) corrupt(where, `${path}.checksum_crc32c must be 8 lower-case hex digits`);
    layers.set(name, {
      fileSizeBytes: intAt(field(o, "file_size", where), where, `${path}.file_size`, 0, Number.MAX_SAFE_INTEGER),
      generation: intAt(field(o, "generation", where), where, `${path}.generation`, 1, generation),
      checksumCrc32c: checksum,
    });
  }
  return { version: INDEX_PART_VERSION, generation, metadata, layers };
}
