/**
 * Task manager and request context (DESIGN §8).
 *
 * Every long-running activity — WAL receiver, layer flush, compaction, GC,
 * uploads, connections, HTTP requests — is a registered task with a kind, an
 * optional owner tenant/timeline and its own AbortController. Shutting down a
 * timeline, a tenant or the process cancels exactly the tasks it owns and
 * awaits them, bounded by a timeout, so nothing outlives its owner.
 *
 * A task's function receives an AbortSignal and must stop promptly when it
 * fires. A task that throws is logged once here (its owner learns of it from
 * the `done` promise); a task that ignores cancellation past the timeout is
 * reported by `shutdown` rather than awaited forever.
 *
 * A RequestContext travels with every read: which kind of task started it
 * and what to do when the data must first be downloaded from remote storage.
 */
import type { Logger } from "pino";
import { errorFields, silentLogger } from "./logging.js";

export type TaskKind =
  | "wal_receiver"
  | "wal_acceptor"
  | "wal_sender"
  | "layer_flush"
  | "compaction"
  | "gc"
  | "remote_upload"
  | "remote_download"
  | "eviction"
  | "page_service"
  | "http_request"
  | "peer_sync"
  | "backup"
  | "other";

export interface TaskOwner {
  tenantId?: string;
  timelineId?: string;
}

export interface TaskInfo extends TaskOwner {
  id: number;
  kind: TaskKind;
  name: string;
  startedAt: Date;
}

interface Task extends TaskInfo {
  controller: AbortController;
  done: Promise<void>;
}

/** How long shutdown waits for cancelled tasks before reporting them as stuck. */
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 30_000;

export class TaskManager {
  private nextId = 1;
  private readonly tasks = new Map<number, Task>();
  private closed = false;

  constructor(private readonly log: Logger = silentLogger()) {}

  /** Starts `fn` as a task. Returns its info and a promise that settles when it ends (never rejects). */
  spawn(kind: TaskKind, owner: TaskOwner & { name?: string }, fn: (signal: AbortSignal) => Promise<void>): { info: TaskInfo; done: Promise<void>; cancel: () => void } {
    if (this.closed) throw new Error(`task manager is shut down; cannot start ${kind}`);
    const id = this.nextId++;
    const controller = new AbortController();
    const info: TaskInfo = { id, kind, name: owner.name ?? kind, startedAt: new Date(), tenantId: owner.tenantId, timelineId: owner.timelineId };
    const done = (async () => {
      try {
        await fn(controller.signal);
      } catch (err) {
        if (!controller.signal.aborted) {
          this.log.error({ task: info.name, kind, tenant_id: info.tenantId, timeline_id: info.timelineId, ...errorFields(err) }, "task failed");
        }
      } finally {
        this.tasks.delete(id);
      }
    })();
    this.tasks.set(id, { ...info, controller, done });
    return { info, done, cancel: () => controller.abort(new Error(`task ${info.name} cancelled`)) };
  }

  list(filter: TaskOwner & { kind?: TaskKind } = {}): TaskInfo[] {
    return [...this.tasks.values()].filter((t) => matches(t, filter)).map(({ controller: _c, done: _d, ...info }) => info);
  }

  /**
   * Cancels every task matching the filter (all tasks of a timeline, of a
   * tenant, or of the process) and waits for them, at most `timeoutMs`.
   * Returns the tasks that did not finish in time.
   */
  async shutdown(filter: TaskOwner & { kind?: TaskKind } = {}, timeoutMs = DEFAULT_SHUTDOWN_TIMEOUT_MS): Promise<TaskInfo[]> {
    const victims = [...this.tasks.values()].filter((t) => matches(t, filter));
    for (const t of victims) t.controller.abort(new Error(`shutting down ${t.name}`));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), timeoutMs);
    });
    await Promise.race([Promise.all(victims.map((t) => t.done)), timeout]);
    clearTimeout(timer);
    const stuck = victims.filter((t) => this.tasks.has(t.id)).map(({ controller: _c, done: _d, ...info }) => info);
    for (const t of stuck) this.log.warn({ task: t.name, kind: t.kind, tenant_id: t.tenantId, timeline_id: t.timelineId }, "task did not stop in time");
    return stuck;
  }

  /** Shuts down everything and refuses new tasks. */
  async close(timeoutMs = DEFAULT_SHUTDOWN_TIMEOUT_MS): Promise<TaskInfo[]> {
    this.closed = true;
    return this.shutdown({}, timeoutMs);
  }
}

function matches(t: TaskInfo, f: TaskOwner & { kind?: TaskKind }): boolean {
  if (f.kind !== undefined && t.kind !== f.kind) return false;
  if (f.tenantId !== undefined && t.tenantId !== f.tenantId) return false;
  if (f.timelineId !== undefined && t.timelineId !== f.timelineId) return false;
  return true;
}

/** What a read may do when a layer it needs is only in remote storage. */
export type DownloadBehavior = "download" | "warn" | "error";

export interface RequestContext {
  readonly taskKind: TaskKind;
  readonly downloadBehavior: DownloadBehavior;
  readonly signal: AbortSignal;
}

export function requestContext(taskKind: TaskKind, signal: AbortSignal, downloadBehavior: DownloadBehavior = "download"): RequestContext {
  return { taskKind, downloadBehavior, signal };
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
