/**
 * FaultInjectingRemoteStorage — a RemoteStorage that fails, delays or cuts
 * short calls to the storage it wraps, on purpose, for tests of the layers
 * above (upload queue ordering, attach, WAL offload) and of the retry wrapper.
 *
 * Faults are described by rules. A rule picks calls by kind (and optionally
 * by path prefix), then by ordinal ("the 2nd and 3rd upload"), by chance ("10%
 * of downloads", from a seeded generator so a failing seed replays exactly),
 * or every call; `maxHits` bounds how often it fires. A hit can
 * - delay the call (`delayMs`, abortable through the call's signal),
 * - fail it with an injected error — `before` the inner call (the request
 *   never reached storage) or `after` it (the storage did the work but the
 *   answer was lost: the case that tests idempotency),
 * - cut a download's stream after `truncateAfterBytes` bytes with a transient
 *   io_error, as a reset connection would.
 *
 * Counters of calls per kind and of injected faults let tests assert how
 * often the layer above tried. Everything not hit passes straight through.
 */
import { Transform, type Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { RemoteStorageError, invalidArgument, ioError, notFound, type RemoteOpOptions } from "./errors.js";
import type { RemotePath, RemotePrefix } from "./remote_path.js";
import {
  paginate,
  type Download,
  type DownloadOptions,
  type ListOptions,
  type ListPage,
  type ListPageOptions,
  type RemoteObjectInfo,
  type RemoteStorage,
  type UploadBody,
  type UploadOptions,
} from "./remote_storage.js";
import { seededRandom } from "../lib/prng.js";

export type RemoteOpKind = "list" | "upload" | "download" | "head" | "delete" | "deleteMany" | "copy";

export const REMOTE_OP_KINDS: readonly RemoteOpKind[] = ["list", "upload", "download", "head", "delete", "deleteMany", "copy"];

/** What an injected failure looks like to the caller. */
export type InjectedError = "transient" | "permanent" | "not_found" | "timeout";

export interface FaultRule {
  /** Kinds of call this rule applies to (default: all). `exists` counts as head. */
  ops?: readonly RemoteOpKind[];
  /** Only calls whose path (or list prefix, or copy source) starts with this. */
  pathPrefix?: string;
  /** Hit exactly these calls, by 1-based ordinal among calls of their kind. */
  nth?: readonly number[];
  /** Hit each call with this probability (seeded). */
  fraction?: number;
  /** Stop after this many hits (default unlimited). */
  maxHits?: number;
  /** Wait this long before doing anything else. */
  delayMs?: number;
  /** Fail the call with this error. */
  error?: InjectedError;
  /** Fail before the inner call (default) or after it succeeded. */
  when?: "before" | "after";
  /** Downloads only: end the stream with a transient error after this many bytes. */
  truncateAfterBytes?: number;
}

/** A rule as installed: its hit count can be read. */
export interface InstalledFaultRule extends Readonly<FaultRule> {
  readonly hits: number;
}

type MutableRule = FaultRule & { hits: number };

export class FaultInjectingRemoteStorage implements RemoteStorage {
  private rules: MutableRule[] = [];
  private readonly random: () => number;
  private readonly counts = new Map<RemoteOpKind, number>();
  /** Faults injected so far (all rules). */
  injected = 0;

  constructor(
    readonly inner: RemoteStorage,
    opts: { seed?: number } = {},
  ) {
    this.random = seededRandom(opts.seed ?? 1);
  }

  /** Installs a rule; rules are consulted in the order they were added. */
  addRule(rule: FaultRule): InstalledFaultRule {
    if (rule.fraction !== undefined && !(rule.fraction >= 0 && rule.fraction <= 1)) throw invalidArgument(`fault rule fraction ${rule.fraction} is not in [0, 1]`);
    if (rule.nth?.some((n) => !Number.isSafeInteger(n) || n < 1)) throw invalidArgument("fault rule nth values are 1-based call ordinals");
    const installed: MutableRule = { ...rule, hits: 0 };
    this.rules.push(installed);
    return installed;
  }

  removeRule(rule: InstalledFaultRule): void {
    this.rules = this.rules.filter((r) => r !== rule);
  }

  clearRules(): void {
    this.rules = [];
  }

  /** Calls of one kind seen so far (hit or not). */
  calls(kind: RemoteOpKind): number {
    return this.counts.get(kind) ?? 0;
  }

  describe(): string {
    return `faulty(${this.inner.describe()})`;
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  list(prefix: RemotePrefix, opts?: ListOptions): AsyncIterable<ListPage> {
    return paginate(this, prefix, opts);
  }

  listPage(prefix: RemotePrefix, opts?: ListPageOptions): Promise<ListPage> {
    return this.intercept("list", prefix, opts, () => this.inner.listPage(prefix, opts));
  }

  upload(path: RemotePath, body: UploadBody, opts?: UploadOptions): Promise<void> {
    return this.intercept("upload", path, opts, () => this.inner.upload(path, body, opts), () => {
      if (typeof body === "object" && !(body instanceof Uint8Array)) body.destroy();
    });
  }

  async download(path: RemotePath, opts?: DownloadOptions): Promise<Download> {
    let cut: number | undefined;
    const dl = await this.intercept("download", path, opts, () => this.inner.download(path, opts), undefined, (rule) => {
      if (rule.truncateAfterBytes !== undefined) cut = rule.truncateAfterBytes;
    });
    if (cut === undefined || cut >= dl.sizeBytes) return dl;
    return { ...dl, stream: truncated(dl.stream, cut, `download "${path}"`) };
  }

  head(path: RemotePath, opts?: RemoteOpOptions): Promise<RemoteObjectInfo> {
    return this.intercept("head", path, opts, () => this.inner.head(path, opts));
  }

  exists(path: RemotePath, opts?: RemoteOpOptions): Promise<boolean> {
    return this.intercept("head", path, opts, () => this.inner.exists(path, opts));
  }

  delete(path: RemotePath, opts?: RemoteOpOptions): Promise<void> {
    return this.intercept("delete", path, opts, () => this.inner.delete(path, opts));
  }

  deleteMany(paths: readonly RemotePath[], opts?: RemoteOpOptions): Promise<void> {
    return this.intercept("deleteMany", paths[0] ?? "", opts, () => this.inner.deleteMany(paths, opts));
  }

  copy(from: RemotePath, to: RemotePath, opts?: RemoteOpOptions): Promise<void> {
    return this.intercept("copy", from, opts, () => this.inner.copy(from, to, opts));
  }

  private async intercept<T>(
    kind: RemoteOpKind,
    path: string,
    opts: RemoteOpOptions | undefined,
    call: () => Promise<T>,
    onFailBefore?: () => void,
    onHit?: (rule: MutableRule) => void,
  ): Promise<T> {
    const ordinal = (this.counts.get(kind) ?? 0) + 1;
    this.counts.set(kind, ordinal);
    const hits = this.rules.filter((r) => this.matches(r, kind, path, ordinal));
    let failBefore: MutableRule | undefined;
    let failAfter: MutableRule | undefined;
    for (const rule of hits) {
      rule.hits++;
      this.injected++;
      onHit?.(rule);
      if (rule.delayMs !== undefined && rule.delayMs > 0) {
        try {
          await sleep(rule.delayMs, undefined, opts?.signal ? { signal: opts.signal } : {});
        } catch (err) {
          throw new RemoteStorageError("cancelled", `${kind} "${path}": cancelled during an injected delay`, { transient: false, cause: err });
        }
      }
      if (rule.error !== undefined) {
        if (rule.when === "after") failAfter ??= rule;
        else failBefore ??= rule;
      }
    }
    if (failBefore) {
      onFailBefore?.();
      throw injectedError(failBefore.error as InjectedError, kind, path, ordinal, "before");
    }
    const result = await call();
    if (failAfter) throw injectedError(failAfter.error as InjectedError, kind, path, ordinal, "after");
    return result;
  }

  private matches(rule: MutableRule, kind: RemoteOpKind, path: string, ordinal: number): boolean {
    if (rule.ops !== undefined && !rule.ops.includes(kind)) return false;
    if (rule.pathPrefix !== undefined && !path.startsWith(rule.pathPrefix)) return false;
    if (rule.maxHits !== undefined && rule.hits >= rule.maxHits) return false;
    if (rule.nth !== undefined && !rule.nth.includes(ordinal)) return false;
    if (rule.fraction !== undefined && !(this.random() < rule.fraction)) return false;
    return true;
  }
}

function injectedError(kind: InjectedError, op: RemoteOpKind, path: string, ordinal: number, when: string): RemoteStorageError {
  const what = `injected fault (${when}) in ${op} #${ordinal} "${path}"`;
  switch (kind) {
    case "transient":
      return ioError(`${what}: transient io_error`, true);
    case "permanent":
      return ioError(`${what}: permanent io_error`, false);
    case "not_found":
      return notFound(what);
    case "timeout":
      return new RemoteStorageError("timeout", `${what}: timed out`, { transient: true });
  }
}

/** Passes `limit` bytes of `source`, then fails like a reset connection. */
function truncated(source: Readable, limit: number, what: string): Readable {
  let passed = 0;
  const out = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      const room = limit - passed;
      if (chunk.length < room) {
        passed += chunk.length;
        cb(null, chunk);
        return;
      }
      passed = limit;
      if (room > 0) this.push(chunk.subarray(0, room));
      source.destroy();
      cb(ioError(`${what}: injected connection reset after ${limit} bytes`, true));
    },
  });
  source.on("error", (err) => out.destroy(err));
  // pipe() feeds `out` before anyone reads it; keep the error for a later reader.
  out.on("error", () => undefined);
  out.on("close", () => {
    if (!source.destroyed) source.destroy();
  });
  return source.pipe(out);
}
