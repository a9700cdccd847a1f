/**
 * Layer residence: whether a layer file is on local disk, and the machinery
 * that brings it back when a read needs it (DESIGN §7, §8).
 *
 * With remote storage, a historic layer is either *resident* (its file is in
 * the timeline directory) or *remote-only* (evicted, or never downloaded
 * since an attach). The layer map holds both alike; a PersistentLayer with a
 * `residence` asks it before opening the file:
 *
 *   read -> PersistentLayer.reader() -> residence.ensureResident()
 *             -> (not resident) the request context allows it? -> download -> open
 *
 * The request context of the read in progress travels in an
 * AsyncLocalStorage (`runWithReadContext`), so the layer code deep in the
 * read path does not need a parameter threaded through every call: a
 * context with downloadBehavior "error" refuses the download (unavailable),
 * "warn" logs and downloads, "download" (and no context at all: internal
 * work such as compaction) downloads.
 *
 * Concurrency: one download per layer at a time (concurrent readers share
 * its promise; a failed download is retried by the next read). Eviction and
 * download are serialized through `transition`; eviction refuses while a
 * read is in flight (`inflightReads`), so a reader never has its file
 * closed underneath it. The access time (`lastAccessMs`) is what the
 * disk-usage eviction policy sorts by.
 *
 * Crash safety is the downloader's: it writes a temp file (removed at
 * timeline load), verifies size and checksum, fsyncs and renames.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { StrataError } from "../../lib/errors.js";
import type { RequestContext } from "../../lib/tasks.js";

const readContext = new AsyncLocalStorage<RequestContext>();

/** Runs `fn` with `ctx` as the read context seen by layer downloads inside it. */
export function runWithReadContext<T>(ctx: RequestContext, fn: () => Promise<T>): Promise<T> {
  return readContext.run(ctx, fn);
}

export function currentReadContext(): RequestContext | undefined {
  return readContext.getStore();
}

export interface LayerResidenceHooks {
  /** Downloads the file into place (temp + verify + rename). */
  download(signal: AbortSignal | undefined): Promise<void>;
  /** Removes the local file (after the reader was closed). */
  removeLocal(): Promise<void>;
  /** Called when a read wants a remote-only layer but its context forbids downloading ("warn" too). */
  onDownloadPolicy?(behavior: "warn" | "error", ctx: RequestContext): void;
}

export class LayerResidence {
  private _resident: boolean;
  lastAccessMs: number;
  inflightReads = 0;
  private downloading: Promise<void> | undefined;
  private transition: Promise<unknown> = Promise.resolve();

  constructor(
    readonly fileName: string,
    readonly sizeBytes: number,
    resident: boolean,
    private readonly hooks: LayerResidenceHooks,
  ) {
    this._resident = resident;
    this.lastAccessMs = resident ? Date.now() : 0;
  }

  get resident(): boolean {
    return this._resident;
  }

  touch(): void {
    this.lastAccessMs = Date.now();
  }

  /** Makes the file local (downloading at most once concurrently); honours the read context's policy. */
  async ensureResident(): Promise<void> {
    if (this._resident) return;
    const ctx = currentReadContext();
    if (ctx !== undefined && ctx.downloadBehavior !== "download") {
      this.hooks.onDownloadPolicy?.(ctx.downloadBehavior, ctx);
      if (ctx.downloadBehavior === "error") {
        throw new StrataError("unavailable", `Layer ${this.fileName} is not resident and this ${ctx.taskKind} request may not download it`);
      }
    }
    if (this.downloading === undefined) {
      const signal = ctx?.signal;
      const run = this.transition
        .catch(() => undefined)
        .then(async () => {
          if (this._resident) return;
          await this.hooks.download(signal);
          this._resident = true;
          this.touch();
        });
      this.transition = run;
      this.downloading = run;
      void run.finally(() => {
        if (this.downloading === run) this.downloading = undefined;
      }).catch(() => undefined);
    }
    await this.downloading;
  }

  /**
   * Evicts: `close` releases the reader, then the local file is removed.
   * Returns false (nothing done) when not resident or a read is in flight.
   */
  async evict(close: () => Promise<void>): Promise<boolean> {
    if (!this._resident || this.inflightReads > 0 || this.downloading !== undefined) return false;
    this._resident = false;
    const run = this.transition
      .catch(() => undefined)
      .then(async () => {
        await close();
        await this.hooks.removeLocal();
      });
    this.transition = run;
    await run;
    return true;
  }
}
