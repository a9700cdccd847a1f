/**
 * `basebackup` and `fullbackup` on the page service (issue 6, contract A):
 *
 *   basebackup <tenant_id> <timeline_id> [<lsn X/Y>] [--gzip]
 *   fullbackup <tenant_id> <timeline_id> [<lsn X/Y>] [--gzip]
 *
 *   client --Query--> PageService.serve -> backupCommand -> timelineBackupLsn (bounded wait)
 *                                                        -> basebackup.ts (tar stream)
 *   client <-- CopyOutResponse, CopyData* (<= COPY_CHUNK_BYTES each), CopyDone, CommandComplete
 *
 * No LSN = the timeline's last_record_lsn. A requested LSN is first moved
 * to a record boundary (`roundToRecordBoundary`, basebackup.ts), then, if
 * it is ahead of ingest, waited for (bounded by the tenant's
 * wait_lsn_timeout, cancelled with the connection); then checked against
 * the GC cutoff and the timeline's start. Every failure before the first
 * byte (malformed command, unknown tenant or timeline, LSN out of range,
 * missing state) is an ErrorResponse with the StrataError's SQLSTATE and a
 * message naming the values; the connection stays usable.
 *
 * Streaming and back-pressure: the tar (or tar.gz) stream is read only as
 * fast as the socket takes it — when `send` reports a full socket buffer
 * the loop waits for 'drain' — so memory stays at the stream buffers plus
 * the basebackup's prefetch window, never the database. A failure after
 * CopyOutResponse (a page that cannot be reconstructed) becomes an
 * ErrorResponse, which ends the COPY for the client: it can never mistake
 * a truncated archive for a complete one (pg_control is also the last
 * member). A client that goes away aborts the backup: no more pages are
 * read.
 *
 * Observability: one info log line per backup (tenant, timeline, lsn, kind,
 * bytes, duration) and Prometheus metrics
 *   strata_pageserver_backups_total{kind,result}   kind = basebackup|fullbackup, result = ok|error
 *   strata_pageserver_backup_bytes_total{kind}     bytes sent (compressed when gzip)
 *   strata_pageserver_backup_seconds{kind}         duration of successful backups
 */
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import { parseTenantId, parseTimelineId, type TenantId, type TimelineId } from "../lib/id.js";
import { errorFields } from "../lib/logging.js";
import { formatLsn, parseLsn, type Lsn } from "../lib/lsn.js";
import { Counter, Histogram, type Registry } from "../lib/metrics.js";
import { requestContext, type RequestContext } from "../lib/tasks.js";
import type { ServerConnection } from "../wire/server_connection.js";
import { basebackup, roundToRecordBoundary, timelineBackupLsn } from "./basebackup.js";
import { scanReader, scanRunReader } from "./getpage.js";
import { runWithReadContext } from "./layers/residence.js";
import type { PageServiceCommand } from "./page_service.js";
import type { TenantManager } from "./tenant_manager.js";

/**
 * Largest CopyData payload sent. The tar stream can hand over big buffers
 * (a 16 MiB generated WAL segment, 2 MiB page runs); clients bound message
 * sizes (ours: 1 MiB by default), and 256 KiB keeps the per-message work
 * (header, parse, one queue entry on each side) a small share at ~GB/s.
 */
export const COPY_CHUNK_BYTES = 256 * 1024;
/** Backup durations span milliseconds (a basebackup) to many minutes (a fullbackup of a large database). */
const BACKUP_SECONDS_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];

export type BackupKind = "basebackup" | "fullbackup";

export interface BackupRequest {
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  readonly lsn: Lsn | undefined;
  readonly gzip: boolean;
}

/** Parses the words after `basebackup` / `fullbackup` (pure; invalid_argument with the usage on any error). */
export function parseBackupArgs(kind: BackupKind, args: readonly string[]): BackupRequest {
  const usage = `Usage: ${kind} <tenant_id> <timeline_id> [<lsn X/Y>] [--gzip]`;
  const positional: string[] = [];
  let gzip = false;
  for (const a of args) {
    if (a === "") continue;
    if (a.startsWith("--")) {
      if (a.toLowerCase() !== "--gzip") throw new StrataError("invalid_argument", `${kind}: unknown option "${a}". ${usage}`);
      gzip = true;
    } else {
      positional.push(a);
    }
  }
  if (positional.length < 2 || positional.length > 3) {
    throw new StrataError("invalid_argument", `${kind}: expected 2 or 3 arguments, got ${positional.length}. ${usage}`);
  }
  const wrap = <T>(what: string, fn: () => T): T => {
    try {
      return fn();
    } catch (e) {
      throw new StrataError("invalid_argument", `${kind}: invalid ${what}: ${(e as Error).message}. ${usage}`, { cause: e });
    }
  };
  const tenantId = wrap("tenant id", () => parseTenantId(positional[0]!));
  const timelineId = wrap("timeline id", () => parseTimelineId(positional[1]!));
  const lsn = positional[2] === undefined ? undefined : wrap("LSN", () => parseLsn(positional[2]!));
  return { tenantId, timelineId, lsn, gzip };
}

class BackupMetrics {
  readonly backups: Counter<"kind" | "result">;
  readonly bytes: Counter<"kind">;
  readonly seconds: Histogram<"kind">;
  constructor(registry: Registry) {
    const registers = [registry];
    this.backups = new Counter({ name: "strata_pageserver_backups_total", help: "Base backups served by the page service, by kind and result", labelNames: ["kind", "result"], registers });
    this.bytes = new Counter({ name: "strata_pageserver_backup_bytes_total", help: "Bytes of base backups sent (after gzip)", labelNames: ["kind"], registers });
    this.seconds = new Histogram({ name: "strata_pageserver_backup_seconds", help: "Duration of successful base backups", labelNames: ["kind"], buckets: BACKUP_SECONDS_BUCKETS, registers });
  }
}

/** One metric set per registry (two page services on one registry would otherwise register twice). */
const metricsByRegistry = new WeakMap<Registry, BackupMetrics>();
function backupMetrics(registry: Registry): BackupMetrics {
  let m = metricsByRegistry.get(registry);
  if (m === undefined) {
    m = new BackupMetrics(registry);
    metricsByRegistry.set(registry, m);
  }
  return m;
}

export interface BackupCommandDeps {
  readonly tenants: TenantManager;
  readonly log: Logger;
  readonly registry: Registry;
}

/** CopyData message header: type byte 'd' and the int32 length (itself included). */
const COPY_DATA_HEADER_BYTES = 5;

/** Resolves when the socket drained or closed. */
function drainOrClose(conn: ServerConnection): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      conn.socket.removeListener("drain", done);
      conn.socket.removeListener("close", done);
      resolve();
    };
    conn.socket.once("drain", done);
    conn.socket.once("close", done);
  });
}

/**
 * Sends `data` as CopyData messages, waiting for the socket to drain when
 * its buffer is full. Each message is its 5-byte header plus a view of
 * `data` (no copy), written corked so a chunk's messages leave in one
 * writev. `release(data)` runs when the socket has written the last piece
 * (or failed): the backup may then reuse the chunk's buffer.
 */
async function sendCopyData(conn: ServerConnection, data: Uint8Array, signal: AbortSignal, release: (chunk: Uint8Array) => void): Promise<void> {
  const socket = conn.socket;
  socket.cork();
  try {
    for (let off = 0; off < data.length; off += COPY_CHUNK_BYTES) {
      signal.throwIfAborted();
      const len = Math.min(COPY_CHUNK_BYTES, data.length - off);
      const header = Buffer.allocUnsafe(COPY_DATA_HEADER_BYTES);
      header[0] = 0x64; // 'd'
      header.writeInt32BE(4 + len, 1);
      conn.send(header);
      const piece = Buffer.from(data.buffer, data.byteOffset + off, len);
      const last = off + len >= data.length;
      // The chunk goes back to its pool (basebackup.ts release) once the socket has written its last piece.
      const sent = last && socket.writable ? socket.write(piece, () => release(data)) : conn.send(piece);
      if (sent) continue;
      if (socket.destroyed || !socket.writable) throw new StrataError("io_error", "The client closed the connection during the backup");
      socket.uncork();
      await drainOrClose(conn);
      socket.cork();
    }
  } finally {
    socket.uncork();
  }
}

/** The page service handler for `basebackup` (full = false) or `fullbackup` (full = true). */
export function backupCommand(deps: BackupCommandDeps, kind: BackupKind): PageServiceCommand {
  const metrics = backupMetrics(deps.registry);
  return async (conn: ServerConnection, args: string[], ctx: RequestContext): Promise<void> => {
    const t0 = process.hrtime.bigint();
    let req: BackupRequest | undefined;
    let bytes = 0;
    // Aborted by the connection's task (shutdown) or when the client goes away mid-stream.
    const abort = new AbortController();
    const onParentAbort = () => abort.abort(ctx.signal.reason);
    ctx.signal.addEventListener("abort", onParentAbort, { once: true });
    const onClose = () => abort.abort(new StrataError("io_error", "The client closed the connection during the backup"));
    conn.socket.once("close", onClose);
    try {
      req = parseBackupArgs(kind, args);
      const tl = deps.tenants.timeline(req.tenantId, req.timelineId);
      if (tl.state !== "active") throw new StrataError("unavailable", `Timeline ${tl.timelineId} is ${tl.state}${tl.brokenReason ? `: ${tl.brokenReason}` : ""}`);
      if (tl.lastRecordLsn === 0n) throw new StrataError("invalid_argument", `Timeline ${tl.timelineId} has no data yet (a root timeline that was never bootstrapped)`);
      const requested = req.lsn === undefined ? undefined : roundToRecordBoundary(req.lsn);
      const at = await timelineBackupLsn(tl, requested, { signal: abort.signal });
      // The whole backup (its streaming continues after `basebackup` returns) runs in one read context, for layer downloads.
      const readCtx = requestContext("backup", abort.signal);
      const readPage = scanReader(tl, at.lsn, readCtx);
      const readPageRun = scanRunReader(tl, at.lsn, readCtx);
      const gzip = req.gzip;
      const bb = await runWithReadContext(readCtx, () => basebackup(tl, {
        lsn: at.lsn,
        ...(at.prevRecordLsn === undefined ? {} : { prevRecordLsn: at.prevRecordLsn }),
        full: kind === "fullbackup",
        gzip,
        bounds: at.bounds,
        signal: abort.signal,
        ctx: readCtx,
        readPage,
        readPageRun,
      }));
      conn.send({ kind: "CopyOutResponse", format: 0, columnFormats: [] });
      try {
        for await (const chunk of bb.stream as AsyncIterable<Uint8Array>) {
          await sendCopyData(conn, chunk, abort.signal, bb.release);
          bytes += chunk.length;
        }
      } catch (e) {
        bb.stream.destroy();
        throw e;
      }
      const stats = await bb.finished;
      conn.send({ kind: "CopyDone" });
      conn.send({ kind: "CommandComplete", tag: "COPY 0" });
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      metrics.backups.labels(kind, "ok").inc();
      metrics.bytes.labels(kind).inc(bytes);
      metrics.seconds.labels(kind).observe(seconds);
      deps.log.info(
        {
          tenant_id: req.tenantId, timeline_id: req.timelineId, kind, lsn: formatLsn(at.lsn), requested_lsn: req.lsn === undefined ? null : formatLsn(req.lsn),
          gzip: req.gzip, bytes, tar_entries: stats.tarEntries, chunks_allocated: stats.chunksAllocated, relation_bytes: bb.summary.relationBytes, duration_ms: Math.round(seconds * 1000),
        },
        "backup sent",
      );
    } catch (e) {
      metrics.backups.labels(kind, "error").inc();
      if (bytes > 0) metrics.bytes.labels(kind).inc(bytes);
      deps.log.warn(
        { tenant_id: req?.tenantId ?? null, timeline_id: req?.timelineId ?? null, kind, args: args.join(" "), bytes, duration_ms: Math.round(Number(process.hrtime.bigint() - t0) / 1e6), ...errorFields(e) },
        "backup failed",
      );
      throw e;
    } finally {
      ctx.signal.removeEventListener("abort", onParentAbort);
      conn.socket.removeListener("close", onClose);
    }
  };
}
