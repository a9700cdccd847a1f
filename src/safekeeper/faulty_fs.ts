/**
 * FaultyFS — a DurableFS wrapper that injects the failures durable storage
 * must survive: an I/O error on the Nth call, a crash (the process dies
 * before the call takes effect), a torn write (a prefix of the bytes reach
 * the file, then the crash), and power loss (whatever was not yet made
 * durable may be gone).
 *
 * It runs on top of a real DurableFS (normally NodeDurableFS in a temp
 * directory), so code under test does real I/O; the wrapper only records
 * what would not survive a power cut and undoes it on `powerLoss()`:
 * * Data: every write since the file's last successful `sync()` is kept as a
 *   pre-image. Power loss reverts a random choice of them in 512-byte
 *   sectors (all, none, or sector by sector), newest first, so each sector
 *   ends in one of the states it actually went through — disks write
 *   sectors atomically but in any order.
 * * Names: creates, renames and unlinks not yet covered by `syncDir()` of
 *   their directory form a log; power loss undoes a random suffix of it
 *   (newest first). Unlinked and replaced files are kept under a hidden
 *   stash name until their removal is durable, so undoing brings them back.
 * * A failed `sync()` (effect "error") marks the file's unsynced writes as
 *   lost for good, as Linux drops dirty pages after a writeback error: a
 *   later successful sync does not save them. Storage that retries fsync
 *   instead of failing shows up as lost data.
 *
 * After a crash every call throws SimulatedCrash (closing handles is
 * allowed), `powerLoss()` rewrites the disk into a post-crash state, and the
 * test reopens the directory with a fresh file system object.
 * Directory creation (mkdir) is treated as immediately durable.
 *
 * Deterministic for a given seed, so a failing seed is a regression test.
 */
import { basename, dirname, join } from "node:path";
import { isNotFound, type DurableFile, type DurableFS, type OpenMode } from "./durable_fs.js";
import { seededRandom } from "../lib/prng.js";

export type FsOpKind = "open" | "write" | "read" | "sync" | "rename" | "unlink" | "syncDir" | "mkdir" | "readdir" | "readFile";
/** Calls that change the disk; "mutation" in a Fault matches any of them. */
const MUTATIONS: ReadonlySet<FsOpKind> = new Set<FsOpKind>(["open", "write", "sync", "rename", "unlink", "syncDir", "mkdir"]);

/** Sector size for torn writes and partial data loss: the unit disks write atomically. */
export const SECTOR_BYTES = 512;
/** Prefix of hidden names the wrapper keeps unlinked files under. */
const STASH_PREFIX = ".faultyfs-stash-";

export class SimulatedCrash extends Error {
  override name = "SimulatedCrash";
  readonly code = "ESIMCRASH";
}

export class InjectedIoError extends Error {
  override name = "InjectedIoError";
  readonly code = "EIO";
}

export interface Fault {
  /** Which calls count; "mutation" counts every call that changes the disk (opens count only in "create" mode). */
  op: FsOpKind | "mutation";
  /** Fires on the nth matching call (1-based). */
  nth: number;
  /** "error": the call fails with EIO and has no effect; "crash": the process dies before it; "torn" (writes): part of it lands, then the crash. */
  effect: "error" | "crash" | "torn";
  /** Only calls whose path contains this string count. */
  pathIncludes?: string;
}

interface PendingWrite {
  position: number;
  preimage: Uint8Array;
}

type MetaOp =
  | { kind: "create"; path: string; id: number; replaced: string | undefined; dirs: Set<string> }
  | { kind: "rename"; from: string; to: string; id: number; replaced: string | undefined; dirs: Set<string> }
  | { kind: "unlink"; path: string; stash: string; id: number; dirs: Set<string> };

export class FaultyFS implements DurableFS {
  private readonly rand: () => number;
  private readonly faults: { fault: Fault; seen: number }[] = [];
  private isCrashed = false;
  /** Calls per kind, for choosing crash points. */
  readonly counts = new Map<FsOpKind | "mutation", number>();

  private nextId = 1;
  private stashSeq = 0;
  private readonly idOfPath = new Map<string, number>();
  private readonly pathOfId = new Map<number, string>();
  private readonly unsynced = new Map<number, PendingWrite[]>();
  /** Writes whose fsync failed: lost at power loss whatever happens later. */
  private readonly doomed = new Map<number, PendingWrite[]>();
  private meta: MetaOp[] = [];
  private readonly openInner = new Set<DurableFile>();

  constructor(
    private readonly inner: DurableFS,
    opts: { seed?: number; faults?: Fault[] } = {},
  ) {
    this.rand = seededRandom(opts.seed ?? 1);
    for (const f of opts.faults ?? []) this.addFault(f);
  }

  addFault(fault: Fault): void {
    this.faults.push({ fault, seen: 0 });
  }

  get crashed(): boolean {
    return this.isCrashed;
  }

  /** Total calls that changed (or would have changed) the disk. */
  get mutations(): number {
    return this.counts.get("mutation") ?? 0;
  }

  // -------------------------------------------------------------------------
  // DurableFS
  // -------------------------------------------------------------------------

  async openFile(path: string, mode: OpenMode): Promise<DurableFile> {
    const effect = this.enter("open", path, mode === "create");
    if (effect !== undefined) this.fire(effect);
    if (mode === "create") {
      // Truncating an existing file is, for crash purposes, replacing it by a new one.
      const replaced = (await this.innerExists(path)) ? await this.moveToStash(path) : undefined;
      const f = await this.inner.openFile(path, "create");
      const id = this.newId(path);
      this.meta.push({ kind: "create", path, id, replaced, dirs: new Set([dirname(path)]) });
      return this.wrap(f, id);
    }
    const f = await this.inner.openFile(path, mode);
    return this.wrap(f, this.idFor(path));
  }

  async readFile(path: string): Promise<Uint8Array> {
    const effect = this.enter("readFile", path, false);
    if (effect !== undefined) this.fire(effect);
    return await this.inner.readFile(path);
  }

  async rename(from: string, to: string): Promise<void> {
    const effect = this.enter("rename", from, true);
    if (effect !== undefined) this.fire(effect);
    const id = this.idFor(from);
    // Replacing a file is one atomic step: undone together with the rename.
    const replaced = (await this.innerExists(to)) ? await this.moveToStash(to) : undefined;
    await this.inner.rename(from, to);
    this.movePath(from, to, id);
    this.meta.push({ kind: "rename", from, to, id, replaced, dirs: new Set([dirname(from), dirname(to)]) });
  }

  async unlink(path: string): Promise<void> {
    const effect = this.enter("unlink", path, true);
    if (effect !== undefined) this.fire(effect);
    if (!(await this.innerExists(path))) {
      await this.inner.unlink(path); // throws the real ENOENT
      return;
    }
    const stash = await this.moveToStash(path);
    this.meta.push({ kind: "unlink", path, stash, id: this.idOfPath.get(stash)!, dirs: new Set([dirname(path)]) });
  }

  async readdir(dir: string): Promise<string[]> {
    const effect = this.enter("readdir", dir, false);
    if (effect !== undefined) this.fire(effect);
    return (await this.inner.readdir(dir)).filter((n) => !n.startsWith(STASH_PREFIX));
  }

  async mkdir(dir: string): Promise<void> {
    const effect = this.enter("mkdir", dir, true);
    if (effect !== undefined) this.fire(effect);
    await this.inner.mkdir(dir);
  }

  async syncDir(dir: string): Promise<void> {
    const effect = this.enter("syncDir", dir, true);
    if (effect !== undefined) this.fire(effect);
    await this.inner.syncDir(dir);
    const still: MetaOp[] = [];
    for (const m of this.meta) {
      m.dirs.delete(dir);
      if (m.dirs.size > 0) {
        still.push(m);
        continue;
      }
      // Durable now: an unlinked or replaced file can really go.
      await this.dropStashOf(m);
    }
    this.meta = still;
  }

  // -------------------------------------------------------------------------
  // Power loss
  // -------------------------------------------------------------------------

  /**
   * Turns the disk into a state it could be in after a power cut now: undoes
   * a random suffix of the non-durable name changes and a random part of the
   * unsynced writes. The wrapper is dead afterwards (every call throws).
   */
  async powerLoss(): Promise<void> {
    this.isCrashed = true;
    for (const f of this.openInner) await f.close().catch(() => undefined);
    this.openInner.clear();

    // Names: keep a random prefix of the log, undo the rest newest first.
    const keep = Math.floor(this.rand() * (this.meta.length + 1));
    for (let i = this.meta.length - 1; i >= keep; i--) {
      const m = this.meta[i]!;
      switch (m.kind) {
        case "create":
          await this.inner.unlink(m.path).catch((e: unknown) => {
            if (!isNotFound(e)) throw e;
          });
          this.forget(m.id);
          if (m.replaced !== undefined) await this.restoreStash(m.replaced, m.path);
          break;
        case "rename":
          await this.inner.rename(m.to, m.from);
          this.movePath(m.to, m.from, m.id);
          if (m.replaced !== undefined) await this.restoreStash(m.replaced, m.to);
          break;
        case "unlink":
          await this.inner.rename(m.stash, m.path);
          this.movePath(m.stash, m.path, m.id);
          break;
      }
    }
    for (let i = 0; i < keep; i++) await this.dropStashOf(this.meta[i]!);
    this.meta = [];

    // Data: revert unsynced writes (doomed ones always), newest first.
    const ids = new Set([...this.unsynced.keys(), ...this.doomed.keys()]);
    for (const id of ids) {
      const path = this.pathOfId.get(id);
      if (path === undefined || path.includes(STASH_PREFIX)) continue;
      const f = await this.inner.openFile(path, "readwrite").catch((e: unknown) => {
        if (isNotFound(e)) return undefined;
        throw e;
      });
      if (f === undefined) continue;
      try {
        const pending = this.unsynced.get(id) ?? [];
        for (let i = pending.length - 1; i >= 0; i--) {
          const w = pending[i]!;
          const mode = this.rand();
          if (mode < 0.3) continue; // this write reached the disk
          const all = mode < 0.6;
          for (let s = 0; s < w.preimage.length; s += SECTOR_BYTES) {
            if (all || this.rand() < 0.5) await f.write(w.preimage.subarray(s, Math.min(s + SECTOR_BYTES, w.preimage.length)), w.position + s);
          }
        }
        const lost = this.doomed.get(id) ?? [];
        for (let i = lost.length - 1; i >= 0; i--) await f.write(lost[i]!.preimage, lost[i]!.position);
      } finally {
        await f.close();
      }
    }
    this.unsynced.clear();
    this.doomed.clear();
  }

  // -------------------------------------------------------------------------
  // Internals
  // -------------------------------------------------------------------------

  /** Counts a call and returns the effect of a fault that fires on it. */
  private enter(op: FsOpKind, path: string, mutates: boolean): Fault["effect"] | undefined {
    if (this.isCrashed) throw new SimulatedCrash(`simulated crash: ${op} ${path} after the crash`);
    this.counts.set(op, (this.counts.get(op) ?? 0) + 1);
    if (mutates && MUTATIONS.has(op)) this.counts.set("mutation", (this.counts.get("mutation") ?? 0) + 1);
    let effect: Fault["effect"] | undefined;
    for (const f of this.faults) {
      const matches = (f.fault.op === op || (f.fault.op === "mutation" && mutates)) && (f.fault.pathIncludes === undefined || path.includes(f.fault.pathIncludes));
      if (!matches) continue;
      f.seen++;
      if (f.seen === f.fault.nth && effect === undefined) effect = f.fault.effect;
    }
    return effect;
  }

  /** Applies "error" and "crash" (a "torn" fault on anything but a write is a crash). */
  private fire(effect: Fault["effect"]): void {
    if (effect === "error") throw new InjectedIoError("injected I/O error");
    this.isCrashed = true;
    throw new SimulatedCrash("simulated crash");
  }

  private wrap(f: DurableFile, id: number): DurableFile {
    this.openInner.add(f);
    return {
      path: f.path,
      write: async (data: Uint8Array, position: number): Promise<void> => {
        const effect = this.enter("write", f.path, true);
        if (effect === "error" || effect === "crash") this.fire(effect);
        let n = data.length;
        if (effect === "torn") n = Math.floor(this.rand() * data.length);
        const preimage = new Uint8Array(n);
        await f.read(preimage, position); // bytes past the end stay zero
        await f.write(data.subarray(0, n), position);
        const list = this.unsynced.get(id) ?? [];
        list.push({ position, preimage });
        this.unsynced.set(id, list);
        if (effect === "torn") this.fire("crash");
      },
      read: async (into: Uint8Array, position: number): Promise<number> => {
        const effect = this.enter("read", f.path, false);
        if (effect !== undefined) this.fire(effect);
        return await f.read(into, position);
      },
      sync: async (): Promise<void> => {
        const effect = this.enter("sync", f.path, true);
        if (effect === "error") {
          const lost = this.unsynced.get(id) ?? [];
          this.doomed.set(id, [...(this.doomed.get(id) ?? []), ...lost]);
          this.unsynced.delete(id);
        }
        if (effect !== undefined) this.fire(effect);
        await f.sync();
        this.unsynced.delete(id);
      },
      size: async (): Promise<number> => {
        if (this.isCrashed) throw new SimulatedCrash("simulated crash: size after the crash");
        return await f.size();
      },
      close: async (): Promise<void> => {
        if (!this.openInner.delete(f)) return;
        await f.close();
      },
    };
  }

  private async innerExists(path: string): Promise<boolean> {
    try {
      return (await this.inner.readdir(dirname(path))).includes(basename(path));
    } catch (e) {
      if (isNotFound(e)) return false;
      throw e;
    }
  }

  /** Moves `path` aside under a hidden name (until its removal is durable); returns that name. */
  private async moveToStash(path: string): Promise<string> {
    const id = this.idFor(path);
    const stash = join(dirname(path), `${STASH_PREFIX}${++this.stashSeq}`);
    await this.inner.rename(path, stash);
    this.movePath(path, stash, id);
    return stash;
  }

  private async restoreStash(stash: string, path: string): Promise<void> {
    const id = this.idOfPath.get(stash);
    await this.inner.rename(stash, path);
    if (id !== undefined) this.movePath(stash, path, id);
  }

  private async dropStashOf(m: MetaOp): Promise<void> {
    const stash = m.kind === "unlink" ? m.stash : m.replaced;
    if (stash !== undefined) await this.dropStash(stash);
  }

  private async dropStash(stash: string): Promise<void> {
    const id = this.idOfPath.get(stash);
    await this.inner.unlink(stash).catch((e: unknown) => {
      if (!isNotFound(e)) throw e;
    });
    if (id !== undefined) this.forget(id);
  }

  private idFor(path: string): number {
    let id = this.idOfPath.get(path);
    if (id === undefined) id = this.newId(path);
    return id;
  }

  private newId(path: string): number {
    const id = this.nextId++;
    this.idOfPath.set(path, id);
    this.pathOfId.set(id, path);
    return id;
  }

  private movePath(from: string, to: string, id: number): void {
    if (this.idOfPath.get(from) === id) this.idOfPath.delete(from);
    this.idOfPath.set(to, id);
    this.pathOfId.set(id, to);
  }

  private forget(id: number): void {
    const p = this.pathOfId.get(id);
    if (p !== undefined && this.idOfPath.get(p) === id) this.idOfPath.delete(p);
    this.pathOfId.delete(id);
    this.unsynced.delete(id);
    this.doomed.delete(id);
  }
}
