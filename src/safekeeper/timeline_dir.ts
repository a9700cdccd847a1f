/**
 * A safekeeper timeline's directory: its control file and its WAL, together.
 *
 * Layout under the safekeeper's data directory (one meaning per path, so an
 * operator can read the tree):
 *
 *   <root>/<tenant id>/<timeline id>/safekeeper.control
 *   <root>/<tenant id>/<timeline id>/000000010000000000000003          (complete segments)
 *   <root>/<tenant id>/<timeline id>/000000010000000000000004.partial  (the one being written)
 *
 * Creation is atomic: the directory is built as `.<timeline id>.creating`
 * (control file written and fsynced), then renamed into place and the
 * tenant directory fsynced. After a crash a timeline either exists with a
 * valid control file or does not exist; a leftover `.creating` directory is
 * ignored by listing and reused by the next create.
 *
 * Ordering rules for the layers above (the endpoint-start protocol):
 * * WAL is truncated (WalStorage.truncate, durable when it returns) before
 *   the control file records the new term history, so after a crash the
 *   control file never describes WAL that is no longer there as the new
 *   term's, and the protocol simply runs again.
 * * The term is persisted before voting for it: a restarted safekeeper must
 *   not vote twice in one term.
 * * Concurrent creates of one timeline must be serialized by the caller
 *   (the HTTP layer); the loser of a race gets io_error from the rename.
 * * `persistProgress` stores the WAL's recovery start (the flush LSN hint)
 *   with other progress LSNs; calling it rarely only makes recovery decode
 *   more WAL on open, never loses WAL.
 */
import { join } from "node:path";
import { StrataError } from "../lib/errors.js";
import { isIdText, parseTenantId, parseTimelineId, type TenantId, type TimelineId } from "../lib/id.js";
import { CONTROL_FILE_NAME, ControlFile, storeControlFile, type TimelinePersistentState } from "./control_file.js";
import { isNotFound, type DurableFS } from "./durable_fs.js";
import { WalStorage } from "./wal_storage.js";

/** Suffix of a timeline directory under construction. */
const CREATING_SUFFIX = ".creating";

export function tenantDirPath(root: string, tenantId: TenantId): string {
  return join(root, tenantId);
}

export function timelineDirPath(root: string, tenantId: TenantId, timelineId: TimelineId): string {
  return join(root, tenantId, timelineId);
}

export interface TimelineRef {
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
}

export class TimelineStore {
  private constructor(
    readonly dir: string,
    readonly control: ControlFile,
    readonly wal: WalStorage,
  ) {}

  get tenantId(): TenantId {
    return this.control.state.tenantId;
  }

  get timelineId(): TimelineId {
    return this.control.state.timelineId;
  }

  /**
   * Creates a timeline directory with `initial` as its control file and no
   * WAL; invalid_argument if the timeline already exists.
   */
  static async create(fs: DurableFS, root: string, initial: TimelinePersistentState): Promise<TimelineStore> {
    const tenantDir = tenantDirPath(root, initial.tenantId);
    const dir = timelineDirPath(root, initial.tenantId, initial.timelineId);
    const building = join(tenantDir, `.${initial.timelineId}${CREATING_SUFFIX}`);
    await ioStep(`create tenant directory`, tenantDir, () => fs.mkdir(tenantDir));
    if (await exists(fs, tenantDir, initial.timelineId)) {
      throw new StrataError("invalid_argument", `Timeline ${initial.tenantId}/${initial.timelineId} already exists in ${root}`);
    }
    await ioStep(`create directory`, building, () => fs.mkdir(building));
    await storeControlFile(fs, join(building, CONTROL_FILE_NAME), initial);
    await ioStep("rename", building, () => fs.rename(building, dir));
    await ioStep("fsync directory", tenantDir, () => fs.syncDir(tenantDir));
    // The tenant directory itself may be new: make its name durable too.
    await ioStep("fsync directory", root, () => fs.syncDir(root));
    return await TimelineStore.open(fs, root, initial.tenantId, initial.timelineId);
  }

  /** Opens an existing timeline: loads its control file and recovers its WAL. not_found if missing. */
  static async open(fs: DurableFS, root: string, tenantId: TenantId, timelineId: TimelineId): Promise<TimelineStore> {
    const dir = timelineDirPath(root, tenantId, timelineId);
    const control = await ControlFile.load(fs, join(dir, CONTROL_FILE_NAME)).catch((e: unknown) => {
      if (e instanceof StrataError && e.code === "not_found") {
        throw new StrataError("not_found", `Timeline ${tenantId}/${timelineId} does not exist in ${root}`, { cause: e });
      }
      throw e;
    });
    const s = control.state;
    if (s.tenantId !== tenantId || s.timelineId !== timelineId) {
      throw new StrataError("corrupt_data", `Control file in ${dir} belongs to timeline ${s.tenantId}/${s.timelineId}`);
    }
    const wal = await WalStorage.open({
      fs,
      dir,
      walSegSizeBytes: s.walSegSizeBytes,
      timelineStartLsn: s.timelineStartLsn,
      flushLsnHint: s.flushLsnHint,
      systemId: s.systemId,
    });
    return new TimelineStore(dir, control, wal);
  }

  /** Every timeline under `root` (in no particular order). */
  static async list(fs: DurableFS, root: string): Promise<TimelineRef[]> {
    const out: TimelineRef[] = [];
    for (const tenant of await listDir(fs, root)) {
      if (!isIdText(tenant)) continue;
      const tenantId = parseTenantId(tenant);
      for (const timeline of await listDir(fs, join(root, tenant))) {
        if (!isIdText(timeline)) continue; // also skips `.creating` leftovers
        out.push({ tenantId, timelineId: parseTimelineId(timeline) });
      }
    }
    return out;
  }

  /**
   * Stores progress: the WAL's current recovery start as the flush LSN hint,
   * plus any other fields `update` changes. No I/O when nothing changed.
   */
  async persistProgress(update: (s: TimelinePersistentState) => TimelinePersistentState = (s) => s): Promise<boolean> {
    return await this.control.persist((s) => ({ ...update(s), flushLsnHint: this.wal.recoveryStartLsn }));
  }

  async close(): Promise<void> {
    await this.wal.close();
  }
}

async function listDir(fs: DurableFS, dir: string): Promise<string[]> {
  try {
    return await fs.readdir(dir);
  } catch (e) {
    if (isNotFound(e)) return [];
    throw new StrataError("io_error", `Cannot list ${dir}`, { cause: e });
  }
}

async function exists(fs: DurableFS, dir: string, name: string): Promise<boolean> {
  return (await listDir(fs, dir)).includes(name);
}

async function ioStep(what: string, path: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof StrataError) throw e;
    throw new StrataError("io_error", `Cannot ${what} ${path}`, { cause: e });
  }
}
