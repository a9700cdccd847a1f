/**
 * A tenant's remote storage: its generation, the attach procedure, detach,
 * and remote deletion of a timeline (DESIGN §7, contract B).
 *
 * Local files (next to the tenant's config.json):
 *   attachment.json   {"generation": N, "remote_storage": bool} — the generation
 *                      this pageserver holds the tenant under (written before
 *                      anything is uploaded), and whether its layers live in
 *                      remote storage (then some may exist only there: a start
 *                      without remote storage must not serve the tenant).
 *   attaching         marker: an attach (or a start-up load) has not finished.
 *
 * Attach (HTTP POST /v1/tenant/:id/attach {generation}) and every start-up
 * with remote storage run the same idempotent steps, as a task:
 *   1. list `tenants/<id>/timelines/` and download each timeline's newest
 *      index not above our generation ("newest index wins");
 *   2. for each, create the local timeline directory and write its metadata
 *      from the index unless local metadata is at least as new (a local
 *      copy behind the index loses its layer files that the index lacks:
 *      they could overlap the index's layers);
 *   3. load the timelines (layers the index lists but the disk lacks are
 *      remote-only; reads download them), start them, remove the marker.
 * The tenant is listed at once with state "attaching"; it becomes "active"
 * after step 3, or "broken" with the reason when an index is corrupt.
 * Transient storage errors are retried forever with backoff (cancellable by
 * shutdown). A crash at any point leaves the marker; the next start runs
 * the steps again (they only ever move local state towards the index).
 *
 * Detach: stop WAL receivers (the caller), flush every timeline, wait until
 * each upload queue is empty (everything durable remotely), stop the tenant
 * and remove its local directory.
 */
import { mkdir, open, readdir, readFile, rename, unlink } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { StrataError } from "../../lib/errors.js";
import type { TenantId, TimelineId } from "../../lib/id.js";
import { errorFields } from "../../lib/logging.js";
import { sleep } from "../../lib/tasks.js";
import type { RemoteStorage } from "../../remote_storage/remote_storage.js";
import { fsyncDir } from "../layers/layer_file.js";
import { tryParseLayerFileName } from "../layers/layer_name.js";
import { METADATA_FILE_NAME, readMetadata, writeMetadata } from "../metadata.js";
import { downloadNewestIndex, listRemoteTimelines, listTimelineObjects } from "./download.js";
import { checkGeneration, MAX_GENERATION, parseRemoteObjectName, pickNewestIndex, remoteIndexPath, remoteLayerPath, type IndexPart } from "./index_part.js";
import type { RemoteMetrics } from "./metrics.js";
import type { TimelineRemoteFactory } from "./timeline_remote.js";

export const ATTACHMENT_FILE_NAME = "attachment.json";
export const ATTACHING_MARKER_NAME = "attaching";
/**
 * Failpoint for crash tests: when set, attach sleeps this long after step 2
 * (local metadata written) and before step 3, so a test can kill -9 the
 * process halfway through an attach. Never set in production.
 */
const ATTACH_FAILPOINT_ENV = "STRATA_FAILPOINT_ATTACH_PAUSE_MS";
/** Backoff of the attach task between failed attempts (storage down): from... */
const ATTACH_RETRY_BASE_MS = 500;
/** ...to at most this. */
const ATTACH_RETRY_MAX_MS = 10_000;

export class TenantRemote implements TimelineRemoteFactory {
  private readonly indexes = new Map<TimelineId, IndexPart>();

  constructor(
    readonly storage: RemoteStorage,
    readonly tenantId: TenantId,
    readonly generation: number,
    readonly metrics: RemoteMetrics | undefined,
    private readonly log: Logger,
  ) {}

  indexFor(timelineId: TimelineId): IndexPart | undefined {
    return this.indexes.get(timelineId);
  }

  /** Steps 1 and 2 of the header. Idempotent. */
  async prepare(tenantDir: string, signal?: AbortSignal): Promise<{ timelines: number }> {
    const opts = { ...(signal === undefined ? {} : { signal }), ...(this.metrics === undefined ? {} : { metrics: this.metrics }) };
    const ids = await listRemoteTimelines(this.storage, this.tenantId, signal);
    this.indexes.clear();
    for (const id of ids) {
      const ix = await downloadNewestIndex(this.storage, this.tenantId, id, this.generation, opts);
      if (ix !== undefined) this.indexes.set(id, ix);
      const newest = pickNewestIndex(await listTimelineObjects(this.storage, this.tenantId, id, signal), MAX_GENERATION);
      if (newest !== undefined && newest > this.generation) {
        // The control plane handed out a generation that is not the newest: this attachment is stale from the start.
        this.log.warn({ timeline_id: id, generation: this.generation, newest_generation: newest }, "remote storage holds an index of a newer generation; this attachment will not delete anything");
      }
    }
    const tdir = join(tenantDir, "timelines");
    await mkdir(tdir, { recursive: true });
    for (const [id, ix] of this.indexes) {
      const dir = join(tdir, id);
      await mkdir(dir, { recursive: true });
      const local = await readMetadata(dir).catch(() => undefined);
      if (local !== undefined && local.diskConsistentLsn >= ix.metadata.diskConsistentLsn) continue;
      if (local !== undefined) {
        for (const n of await readdir(dir)) {
          if (n !== METADATA_FILE_NAME && tryParseLayerFileName(n) !== undefined && !ix.layers.has(n)) await unlink(join(dir, n));
        }
      }
      await writeMetadata(dir, ix.metadata);
      await fsyncDir(tdir);
    }
    this.log.info({ timelines: this.indexes.size, generation: this.generation }, "remote indexes downloaded");
    return { timelines: this.indexes.size };
  }

  /** Deletes a timeline's remote objects of generations up to ours (skipped when a newer generation exists). */
  async deleteTimeline(timelineId: TimelineId, signal?: AbortSignal): Promise<{ deleted: number }> {
    const names = await listTimelineObjects(this.storage, this.tenantId, timelineId, signal);
    const parsed = names.map(parseRemoteObjectName).filter((p) => p !== undefined);
    if (parsed.some((p) => p.kind === "index" && p.generation > this.generation)) {
      this.log.warn({ timeline_id: timelineId }, "a newer generation holds this timeline remotely; remote objects kept");
      return { deleted: 0 };
    }
    const paths = parsed.map((p) => (p.kind === "index" ? remoteIndexPath(this.tenantId, timelineId, p.generation) : remoteLayerPath(this.tenantId, timelineId, p.layerFileName, p.generation)));
    // Layers first, the indexes last: a crash in between leaves an index whose layers are gone only for a deleted timeline.
    const layers = paths.filter((p) => !p.includes("/index_part.json-"));
    await this.storage.deleteMany(layers, signal === undefined ? {} : { signal });
    await this.storage.deleteMany(paths.filter((p) => p.includes("/index_part.json-")), signal === undefined ? {} : { signal });
    return { deleted: paths.length };
  }
}

/** Runs `prepare` until it succeeds (transient errors retried with backoff); corrupt or unsupported indexes throw. */
export async function prepareWithRetries(remote: TenantRemote, tenantDir: string, log: Logger, signal: AbortSignal): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await remote.prepare(tenantDir, signal);
      const pauseMs = Number(process.env[ATTACH_FAILPOINT_ENV] ?? "0");
      if (pauseMs > 0) {
        log.warn({ pause_ms: pauseMs }, `failpoint ${ATTACH_FAILPOINT_ENV}: pausing halfway through the attach`);
        await sleep(pauseMs, signal);
      }
      return;
    } catch (e) {
      if (signal.aborted) throw new StrataError("cancelled", "attach cancelled", { cause: e });
      if (e instanceof StrataError && (e.code === "corrupt_data" || e.code === "unsupported" || e.code === "invalid_argument")) throw e;
      const waitMs = Math.min(ATTACH_RETRY_MAX_MS, ATTACH_RETRY_BASE_MS * 2 ** Math.min(attempt - 1, 20));
      log.warn({ attempt, retry_in_ms: waitMs, ...errorFields(e) }, "attach: downloading remote indexes failed; will retry");
      await sleep(waitMs, signal).catch(() => undefined);
    }
  }
}

// ------------------------------------------------------------------ local attachment state

export async function readGeneration(tenantDir: string): Promise<number> {
  return (await readAttachment(tenantDir)).generation;
}

export async function readAttachment(tenantDir: string): Promise<{ generation: number; remoteStorage: boolean }> {
  let text: string;
  try {
    text = await readFile(join(tenantDir, ATTACHMENT_FILE_NAME), "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return { generation: 1, remoteStorage: false }; // tenants created before generations existed
    throw e;
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new StrataError("corrupt_data", `${join(tenantDir, ATTACHMENT_FILE_NAME)} is not JSON: ${(e as Error).message}`);
  }
  try {
    const o = v as { generation?: unknown; remote_storage?: unknown } | null;
    return { generation: checkGeneration(o?.generation, `${ATTACHMENT_FILE_NAME} generation`), remoteStorage: o?.remote_storage === true };
  } catch (e) {
    throw new StrataError("corrupt_data", (e as Error).message);
  }
}

async function writeSmallFile(dir: string, name: string, text: string): Promise<void> {
  const tmp = join(dir, `${name}.${process.pid}.${Date.now()}.tmp`);
  const fh = await open(tmp, "wx");
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, join(dir, name));
  await fsyncDir(dir);
}

export async function writeGeneration(tenantDir: string, generation: number, remoteStorage: boolean): Promise<void> {
  await writeSmallFile(tenantDir, ATTACHMENT_FILE_NAME, JSON.stringify({ generation, remote_storage: remoteStorage }) + "\n");
}

export async function writeAttachingMarker(tenantDir: string): Promise<void> {
  await writeSmallFile(tenantDir, ATTACHING_MARKER_NAME, "");
}

export async function removeAttachingMarker(tenantDir: string): Promise<void> {
  await unlink(join(tenantDir, ATTACHING_MARKER_NAME)).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== "ENOENT") throw e;
  });
  await fsyncDir(tenantDir);
}

export async function hasAttachingMarker(tenantDir: string): Promise<boolean> {
  try {
    await readFile(join(tenantDir, ATTACHING_MARKER_NAME));
    return true;
  } catch {
    return false;
  }
}
