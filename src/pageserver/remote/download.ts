/**
 * Downloads from remote storage: the list of a tenant's timelines, the
 * newest index of a timeline, and layer files (on demand, DESIGN §7).
 *
 * A layer download is crash-safe and verified: the bytes go to a temp file
 * next to the final name (`<name>.<random>.tmp`, which a timeline load
 * removes as garbage), their size and CRC32C are checked against the index
 * while streaming, the file is fsynced, renamed into place and the directory
 * fsynced. A mismatch is corrupt_data and nothing becomes visible. Retries
 * of transient errors are the RetryingRemoteStorage wrapper's (bounded): a
 * read that needs a layer while storage is down fails with that error,
 * the next read tries again.
 *
 * "Newest index wins" (contract B): of the `index_part.json-<generation>`
 * objects of a timeline, the one with the highest generation not above the
 * reader's own generation. Indexes of higher generations belong to a newer
 * attachment elsewhere and are never read or written by this one.
 */
import { createWriteStream } from "node:fs";
import { open, rename, unlink } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { Transform } from "node:stream";
import { StrataError } from "../../lib/errors.js";
import { isIdText, parseTimelineId, type TenantId, type TimelineId } from "../../lib/id.js";
import { baseName } from "../../remote_storage/remote_path.js";
import { downloadBytes, listAll, type RemoteStorage } from "../../remote_storage/remote_storage.js";
import { crc32c } from "../../formats/crc32c.js";
import { fsyncDir } from "../layers/layer_file.js";
import { tempFileName } from "../layers/layer_name.js";
import { parseIndexPart, pickNewestIndex, remoteIndexPath, remoteLayerPath, timelinePrefix, timelinesPrefix, type IndexLayerMeta, type IndexPart } from "./index_part.js";
import type { RemoteMetrics } from "./metrics.js";

export function crcHex(crc: number): string {
  return (crc >>> 0).toString(16).padStart(8, "0");
}

/** Timeline ids that have objects under `tenants/<tenant>/timelines/`. */
export async function listRemoteTimelines(storage: RemoteStorage, tenantId: TenantId, signal?: AbortSignal): Promise<TimelineId[]> {
  const { prefixes } = await listAll(storage, timelinesPrefix(tenantId), { delimiter: "/", ...(signal === undefined ? {} : { signal }) });
  const out: TimelineId[] = [];
  for (const p of prefixes) {
    const id = p.slice(timelinesPrefix(tenantId).length).replace(/\/$/, "");
    if (isIdText(id)) out.push(parseTimelineId(id));
  }
  return out.sort();
}

/** Base names of every object of one timeline. */
export async function listTimelineObjects(storage: RemoteStorage, tenantId: TenantId, timelineId: TimelineId, signal?: AbortSignal): Promise<string[]> {
  const { objects } = await listAll(storage, timelinePrefix(tenantId, timelineId), signal === undefined ? {} : { signal });
  return objects.map((o) => baseName(o.path));
}

/** The newest index not above `maxGeneration`, or undefined when the timeline has none. */
export async function downloadNewestIndex(
  storage: RemoteStorage,
  tenantId: TenantId,
  timelineId: TimelineId,
  maxGeneration: number,
  opts: { signal?: AbortSignal; metrics?: RemoteMetrics } = {},
): Promise<IndexPart | undefined> {
  const names = await listTimelineObjects(storage, tenantId, timelineId, opts.signal);
  const gen = pickNewestIndex(names, maxGeneration);
  if (gen === undefined) return undefined;
  const path = remoteIndexPath(tenantId, timelineId, gen);
  const bytes = await downloadBytes(storage, path, opts.signal === undefined ? {} : { signal: opts.signal });
  opts.metrics?.downloads.labels("index").inc();
  opts.metrics?.downloadedBytes.inc(bytes.length);
  const ix = parseIndexPart(bytes, path);
  if (ix.generation !== gen) throw new StrataError("corrupt_data", `Invalid index_part.json ${path}: it says generation ${ix.generation}, its name ${gen}`);
  return ix;
}

/** Downloads one layer into `dir/<name>` (temp, verify, fsync, rename). */
export async function downloadLayerFile(
  storage: RemoteStorage,
  where: { tenantId: TenantId; timelineId: TimelineId; dir: string },
  name: string,
  meta: IndexLayerMeta,
  opts: { signal?: AbortSignal; metrics?: RemoteMetrics } = {},
): Promise<void> {
  const path = remoteLayerPath(where.tenantId, where.timelineId, name, meta.generation);
  const tmp = join(where.dir, tempFileName(name));
  try {
    const dl = await storage.download(path, opts.signal === undefined ? {} : { signal: opts.signal });
    let crc = 0;
    let size = 0;
    const check = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        crc = crc32c(chunk, crc);
        size += chunk.length;
        cb(null, chunk);
      },
    });
    await pipeline(dl.stream, check, createWriteStream(tmp, { flags: "wx" }));
    if (size !== meta.fileSizeBytes || crcHex(crc) !== meta.checksumCrc32c) {
      throw new StrataError(
        "corrupt_data",
        `Downloaded layer ${path}: ${size} bytes with CRC32C ${crcHex(crc)}, the index says ${meta.fileSizeBytes} bytes with ${meta.checksumCrc32c}`,
      );
    }
    const fh = await open(tmp, "r");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, join(where.dir, name));
    await fsyncDir(where.dir);
    opts.metrics?.downloads.labels("layer").inc();
    opts.metrics?.downloadedBytes.inc(size);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}
