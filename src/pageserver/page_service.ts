/**
 * The page service: the pageserver's libpq endpoint.
 *
 * Commands (simple queries after the startup handshake):
 *   pagestream <tenant_id> <timeline_id>   -> CopyBoth, the pagestream
 *       sub-protocol (pagestream.ts): exists / nblocks / getpage / dbsize /
 *       SLRU segment requests, each at its request LSN, pipelined;
 *   basebackup / fullbackup <tenant_id> <timeline_id> [lsn] [--gzip] -> CopyOut,
 *       the tar (backup_service.ts, registered at construction through
 *       `registerCommand`, the hook for further commands); an unknown
 *       command is refused with feature_not_supported.
 *
 * Each connection is a TaskManager task (kind page_service) so shutdown
 * cancels and awaits it. Within a pagestream, up to MAX_PAGESTREAM_IN_FLIGHT
 * requests are worked on concurrently and answered strictly in request
 * order; the reader stops reading while that many are outstanding
 * (back-pressure to the client). A request's failure (not found, timeout
 * waiting for WAL, corrupt layer) becomes an error response for that
 * request only, logged and counted; a malformed message is a protocol
 * violation that ends the connection with FATAL.
 *
 * Authentication: trust (the page service listens on a private network, as
 * Neon's does without JWT auth); adding JWT/password auth is a setting of
 * the ServerConnection when needed.
 */
import { createServer, type Server, type Socket } from "node:net";
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import { parseTenantId, parseTimelineId } from "../lib/id.js";
import { errorFields } from "../lib/logging.js";
import { formatLsn, type Lsn } from "../lib/lsn.js";
import { requestContext, type RequestContext, type TaskManager } from "../lib/tasks.js";
import { ServerConnection } from "../wire/server_connection.js";
import { sqlstateOf } from "../wire/sqlstate.js";
import { backupCommand } from "./backup_service.js";
import { dbSizeBytes, listDatabases, readSlruSegment, relExists, relSize } from "./getpage.js";
import { relBlockKey } from "./key.js";
import type { PageserverMetrics } from "./metrics.js";
import { decodeRequest, encodeResponse, MAX_PAGESTREAM_IN_FLIGHT, MAX_PAGESTREAM_MESSAGE_BYTES, type PagestreamRequest, type PagestreamResponse } from "./pagestream.js";
import type { TenantManager } from "./tenant_manager.js";
import type { Timeline } from "./timeline.js";

/** A command handler beyond pagestream (basebackup, fullbackup): gets the words after the command name. */
export type PageServiceCommand = (conn: ServerConnection, args: string[], ctx: RequestContext) => Promise<void>;

export interface PageServiceOptions {
  readonly tenants: TenantManager;
  readonly tasks: TaskManager;
  readonly log: Logger;
  readonly metrics: PageserverMetrics;
}

export class PageService {
  private server: Server | undefined;
  private readonly commands = new Map<string, PageServiceCommand>();
  private readonly sockets = new Set<Socket>();

  constructor(private readonly opts: PageServiceOptions) {
    const deps = { tenants: opts.tenants, log: opts.log, registry: opts.metrics.registry };
    this.registerCommand("basebackup", backupCommand(deps, "basebackup"));
    this.registerCommand("fullbackup", backupCommand(deps, "fullbackup"));
  }

  /** Adds a command (lower-case first word), e.g. "basebackup". */
  registerCommand(name: string, handler: PageServiceCommand): void {
    this.commands.set(name.toLowerCase(), handler);
  }

  async listen(port: number, host = "127.0.0.1"): Promise<number> {
    const server = createServer((socket) => this.onConnection(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve());
    });
    const addr = server.address();
    return typeof addr === "object" && addr !== null ? addr.port : port;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (s !== undefined) await new Promise<void>((resolve) => s.close(() => resolve()));
    await this.opts.tasks.shutdown({ kind: "page_service" }, 5_000);
    for (const sock of this.sockets) sock.destroy();
  }

  private onConnection(socket: Socket): void {
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    try {
      this.opts.tasks.spawn("page_service", { name: `page_service ${socket.remoteAddress}:${socket.remotePort}` }, (signal) => this.serve(socket, signal));
    } catch {
      socket.destroy(); // shutting down
    }
  }

  private async serve(socket: Socket, signal: AbortSignal): Promise<void> {
    const onAbort = () => socket.destroy();
    signal.addEventListener("abort", onAbort, { once: true });
    let conn: ServerConnection;
    try {
      conn = await ServerConnection.accept(socket, {
        authenticate: () => ({ method: "trust" }),
        serverParameters: { server_version: "15.0 (strata pageserver)", client_encoding: "UTF8" },
        signal,
        maxMessageBytes: MAX_PAGESTREAM_MESSAGE_BYTES,
      });
    } catch {
      signal.removeEventListener("abort", onAbort);
      return; // refused or broken handshake: already answered
    }
    try {
      for (;;) {
        const m = await conn.read();
        if (m === null) return;
        if (m.kind !== "Query") {
          conn.sendError(new StrataError("protocol_violation", `Unexpected ${m.kind}; the page service takes simple queries`));
          conn.readyForQuery();
          continue;
        }
        const words = m.sql.trim().replace(/;$/, "").split(/\s+/);
        const cmd = (words[0] ?? "").toLowerCase();
        try {
          if (cmd === "pagestream") {
            await this.pagestream(conn, words.slice(1), signal);
            conn.send({ kind: "CommandComplete", tag: "COPY 0" });
          } else {
            const handler = this.commands.get(cmd);
            if (handler === undefined) throw new StrataError("unsupported", `Unknown page service command "${words[0] ?? ""}"`);
            await handler(conn, words.slice(1), requestContext("page_service", signal));
          }
        } catch (e) {
          if (e instanceof StrataError && e.code === "protocol_violation") {
            conn.send({ kind: "ErrorResponse", fields: { severity: "FATAL", severityNonLocalized: "FATAL", code: "08P01", message: e.message } });
            conn.close();
            return;
          }
          this.opts.log.warn({ command: cmd, ...errorFields(e) }, "page service command failed");
          conn.sendError(e);
        }
        conn.readyForQuery();
      }
    } catch (e) {
      if (!signal.aborted) this.opts.log.warn(errorFields(e), "page service connection failed");
    } finally {
      signal.removeEventListener("abort", onAbort);
      conn.close();
    }
  }

  private async pagestream(conn: ServerConnection, args: string[], signal: AbortSignal): Promise<void> {
    if (args.length !== 2) throw new StrataError("invalid_argument", "Usage: pagestream <tenant_id> <timeline_id>");
    const tl = this.opts.tenants.timeline(parseTenantId(args[0]!), parseTimelineId(args[1]!));
    if (tl.state !== "active") throw new StrataError("unavailable", `Timeline ${tl.timelineId} is ${tl.state}${tl.brokenReason ? `: ${tl.brokenReason}` : ""}`);
    conn.send({ kind: "CopyBothResponse", format: 0, columnFormats: [] });
    const ctx = requestContext("page_service", signal);
    // Requests are worked on concurrently; a writer sends their responses in request order.
    const queue: Array<Promise<Buffer>> = [];
    let wakeWriter: (() => void) | undefined;
    let wakeReader: (() => void) | undefined;
    const wake = (which: "reader" | "writer") => {
      const w = which === "reader" ? wakeReader : wakeWriter;
      if (which === "reader") wakeReader = undefined;
      else wakeWriter = undefined;
      if (w !== undefined) w();
    };
    let readerDone = false;
    const writer = (async () => {
      for (;;) {
        const head = queue[0];
        if (head === undefined) {
          if (readerDone) return;
          await new Promise<void>((resolve) => (wakeWriter = resolve));
          continue;
        }
        const out = await head;
        void queue.shift(); // the head, already awaited above
        wake("reader");
        if (!conn.send({ kind: "CopyData", data: out }) && !conn.socket.destroyed) {
          await new Promise<void>((resolve) => {
            conn.socket.once("drain", resolve);
            conn.socket.once("close", resolve);
          });
        }
      }
    })();
    try {
      for (;;) {
        while (queue.length >= MAX_PAGESTREAM_IN_FLIGHT) await new Promise<void>((resolve) => (wakeReader = resolve));
        const m = await conn.read();
        if (m === null) return;
        if (m.kind === "CopyDone") break;
        if (m.kind !== "CopyData") throw new StrataError("protocol_violation", `Unexpected ${m.kind} in pagestream; expected CopyData or CopyDone`);
        queue.push(this.handle(tl, decodeRequest(m.data), ctx));
        wake("writer");
      }
      readerDone = true;
      wake("writer");
      await writer;
      conn.send({ kind: "CopyDone" });
    } finally {
      readerDone = true;
      wake("writer");
    }
  }

  /** Serves one request; never rejects: failures become error responses. */
  private async handle(tl: Timeline, req: PagestreamRequest, ctx: RequestContext): Promise<Buffer> {
    const t0 = process.hrtime.bigint();
    let resp: PagestreamResponse;
    try {
      resp = await this.answer(tl, req, ctx);
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      this.opts.log.warn({ tenant_id: tl.tenantId, timeline_id: tl.timelineId, request: req.kind, lsn: formatLsn(req.lsn), ...errorFields(e) }, "page service request failed");
      resp = { kind: "error", id: req.id, sqlstate: sqlstateOf(e), message };
    }
    this.opts.metrics.getpageSeconds.labels(req.kind).observe(Number(process.hrtime.bigint() - t0) / 1e9);
    return encodeResponse(resp);
  }

  private async answer(tl: Timeline, req: PagestreamRequest, ctx: RequestContext): Promise<PagestreamResponse> {
    const lsn: Lsn = req.lsn;
    switch (req.kind) {
      case "exists":
        await tl.prepareRead(lsn, ctx);
        return { kind: "exists", id: req.id, exists: await relExists(tl, req.rel, lsn, ctx) };
      case "nblocks":
        await tl.prepareRead(lsn, ctx);
        return { kind: "nblocks", id: req.id, blocks: await relSize(tl, req.rel, lsn, ctx) };
      case "getpage": {
        await tl.prepareRead(lsn, ctx);
        return { kind: "getpage", id: req.id, page: await tl.getPage(relBlockKey(req.rel, req.block), lsn, ctx) };
      }
      case "dbsize": {
        await tl.prepareRead(lsn, ctx);
        let total = 0n;
        for (const d of await listDatabases(tl, lsn, ctx)) if (d.dbOid === req.dbOid) total += await dbSizeBytes(tl, d.spcOid, d.dbOid, lsn, ctx);
        return { kind: "dbsize", id: req.id, bytes: total };
      }
      case "slru":
        await tl.prepareRead(lsn, ctx);
        return { kind: "slru", id: req.id, data: await readSlruSegment(tl, req.slru, req.segNo, lsn, ctx) };
    }
  }
}
