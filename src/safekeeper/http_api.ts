/**
 * The safekeeper's HTTP management API (JSON), on the shared fastify base
 * (src/lib/http.ts: error mapping, body limit, `/metrics`).
 *
 *   GET    /v1/status                                  safekeeper id, peers, timelines
 *   GET    /v1/tenant/:tenant/timeline                 timelines of a tenant (states)
 *   POST   /v1/tenant/:tenant/timeline                 create: {timeline_id, system_id, start_lsn,
 *                                                      pg_version?, wal_seg_size?}     -> 201 | 409 exists
 *   GET    /v1/tenant/:tenant/timeline/:timeline       state: LSNs, term, history, peers, feedback, consumers
 *   PUT    /v1/tenant/:tenant/timeline/:timeline/compute
 *                                                      register the compute: {connstr, term, start_lsn?}
 *                                                      -> 200 | 201 (timeline created from the compute's
 *                                                      identity) | 409 (term below the current one)
 *   DELETE /v1/tenant/:tenant/timeline/:timeline       stop streaming, remove the timeline -> 200 | 404
 *   GET    /metrics                                    Prometheus
 *
 * Conventions: LSNs are "X/Y" strings; system ids are decimal strings (u64);
 * terms are JSON numbers (decimal strings accepted on input, and used on
 * output above 2^53). Passwords in connection strings are never echoed.
 * Every malformed request is a 400 with a message naming the field; an
 * unknown tenant or timeline is a 404; a stale term is a 409.
 *
 * Extension point: the consensus module (src/safekeeper/consensus, peers.ts)
 * adds its routes through `SafekeeperExtension.registerRoutes(app, sk)`
 * (safekeeper.ts), called before the server listens; it may use the helpers
 * exported here (`timelineStateJson`, `parseTermField`, `parseLsnField`,
 * `sendStaleTerm`).
 */
import type { FastifyInstance, FastifyReply } from "fastify";
import { StrataError } from "../lib/errors.js";
import { createHttpApi } from "../lib/http.js";
import { parseTenantId, parseTimelineId, type TenantId, type TimelineId } from "../lib/id.js";
import { DEFAULT_WAL_SEG_SIZE_BYTES, formatLsn, parseLsn, type Lsn } from "../lib/lsn.js";
import { isValidWalSegSize } from "../formats/wal/xlog_page.js";
import type { Safekeeper } from "./safekeeper.js";
import { term as toTerm, type Term } from "./term_history.js";
import { StaleTermError, type TimelineState } from "./timeline.js";

/** PostgreSQL 15.0's server_version_num, the default pg_version of an explicitly created timeline. */
const DEFAULT_PG_VERSION = 150000;

function bad(message: string): StrataError {
  return new StrataError("invalid_argument", message);
}

/** A JSON object body, or a 400 naming what arrived instead. */
export function objectBody(body: unknown): Record<string, unknown> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw bad(`Request body must be a JSON object, got ${body === null || body === undefined ? "nothing" : Array.isArray(body) ? "an array" : typeof body}`);
  }
  return body as Record<string, unknown>;
}

export function parseLsnField(v: unknown, field: string): Lsn {
  if (typeof v !== "string") throw bad(`Field ${field} must be an LSN string "X/Y", got ${JSON.stringify(v)}`);
  try {
    return parseLsn(v);
  } catch (e) {
    throw new StrataError("invalid_argument", `Field ${field}: ${(e as Error).message}`, { cause: e });
  }
}

export function parseTermField(v: unknown, field: string): Term {
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) return toTerm(v);
  if (typeof v === "string" && /^[0-9]{1,20}$/.test(v)) {
    try {
      return toTerm(BigInt(v));
    } catch (e) {
      throw new StrataError("invalid_argument", `Field ${field}: ${(e as Error).message}`, { cause: e });
    }
  }
  throw bad(`Field ${field} must be a non-negative integer (number or decimal string), got ${JSON.stringify(v)}`);
}

function parseU64Field(v: unknown, field: string): bigint {
  let n: bigint | undefined;
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) n = BigInt(v);
  else if (typeof v === "string" && /^[0-9]{1,20}$/.test(v)) n = BigInt(v);
  if (n === undefined || n >= 1n << 64n) throw bad(`Field ${field} must be an unsigned 64-bit integer (decimal string), got ${JSON.stringify(v)}`);
  return n;
}

function parseIntField(v: unknown, field: string, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) throw bad(`Field ${field} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
  return v;
}

function checkKeys(body: Record<string, unknown>, allowed: readonly string[]): void {
  for (const k of Object.keys(body)) if (!allowed.includes(k)) throw bad(`Unknown field ${JSON.stringify(k)}; expected ${allowed.join(", ")}`);
}

function ids(params: unknown): { tenantId: TenantId; timelineId?: TimelineId } {
  const p = params as { tenant?: string; timeline?: string };
  return {
    tenantId: parseTenantId(p.tenant ?? ""),
    ...(p.timeline !== undefined ? { timelineId: parseTimelineId(p.timeline) } : {}),
  };
}

/** A term as JSON: a number when exact, else a decimal string. */
export function termJson(t: bigint): number | string {
  return t <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(t) : t.toString();
}

/** Hides the password in a connection string (key=value or URI form). */
export function redactConnstr(connstr: string): string {
  return connstr
    .replace(/(password\s*=\s*)('(?:\\.|[^'])*'|\S+)/gi, "$1***")
    .replace(/^(postgres(?:ql)?:\/\/[^:/@]*:)[^@]*@/i, "$1***@");
}

export function timelineStateJson(s: TimelineState): Record<string, unknown> {
  return {
    tenant_id: s.tenantId,
    timeline_id: s.timelineId,
    system_id: s.systemId.toString(),
    pg_version: s.pgVersion,
    wal_seg_size: s.walSegSizeBytes,
    timeline_start_lsn: formatLsn(s.timelineStartLsn),
    term: termJson(s.term),
    term_history: s.termHistory.map((e) => ({ term: termJson(e.term), lsn: formatLsn(e.lsn) })),
    oldest_lsn: formatLsn(s.oldestLsn),
    write_lsn: formatLsn(s.writeLsn),
    flush_lsn: formatLsn(s.flushLsn),
    flush_record_lsn: formatLsn(s.flushRecordLsn),
    commit_lsn: formatLsn(s.commitLsn),
    backup_lsn: formatLsn(s.backupLsn),
    remote_consistent_lsn: formatLsn(s.remoteConsistentLsn),
    peer_horizon_lsn: formatLsn(s.peerHorizonLsn),
    peers: [...s.peerFlushLsns].map(([id, l]) => ({ id, flush_lsn: formatLsn(l) })),
    pageserver_feedback:
      s.pageserverFeedback === undefined
        ? null
        : {
            last_received_lsn: formatLsn(s.pageserverFeedback.lastReceivedLsn),
            disk_consistent_lsn: formatLsn(s.pageserverFeedback.diskConsistentLsn),
            remote_consistent_lsn: formatLsn(s.pageserverFeedback.remoteConsistentLsn),
            received_at: s.pageserverFeedback.receivedAt,
          },
    compute:
      s.compute === undefined
        ? null
        : {
            connstr: redactConnstr(s.compute.connstr),
            term: termJson(s.compute.term),
            start_lsn: s.compute.startLsn === undefined ? null : formatLsn(s.compute.startLsn),
            registered_at: s.compute.registeredAt,
            connected: s.computeConnected,
          },
    consumers: s.consumers.map((c) => ({
      kind: c.kind,
      application_name: c.applicationName,
      remote_address: c.remoteAddress,
      connected_at: c.connectedAt,
      start_lsn: formatLsn(c.startLsn),
      sent_lsn: formatLsn(c.sentLsn),
      write_lsn: c.writeLsn === undefined ? null : formatLsn(c.writeLsn),
      flush_lsn: c.flushLsn === undefined ? null : formatLsn(c.flushLsn),
      apply_lsn: c.applyLsn === undefined ? null : formatLsn(c.applyLsn),
      hot_standby_xmin: c.hotStandbyXmin === undefined ? null : c.hotStandbyXmin.toString(),
      last_reply_at: c.lastReplyAt ?? null,
    })),
  };
}

/** Answers a StaleTermError with 409 Conflict (fencing: a newer compute owns the timeline). */
export function sendStaleTerm(reply: FastifyReply, e: StaleTermError): FastifyReply {
  return reply.status(409).send({ error: e.message, code: "stale_term", current_term: termJson(e.currentTerm), requested_term: termJson(e.requestedTerm) });
}

/** Builds the API for `sk` (not yet listening). */
export function buildHttpApi(sk: Safekeeper): FastifyInstance {
  const app = createHttpApi({ log: sk.log, registry: sk.registry });

  app.get("/v1/status", async () => ({
    id: sk.config.id,
    peers: sk.config.peers.map((p) => ({ id: p.id, host: p.host, pg_port: p.pgPort, http_port: p.httpPort })),
    pg_port: sk.pgPort,
    http_port: sk.httpPort,
    timelines: sk.listTimelines().map((t) => ({ tenant_id: t.tenantId, timeline_id: t.timelineId })),
  }));

  app.get("/v1/tenant/:tenant/timeline", async (req) => {
    const { tenantId } = ids(req.params);
    const tls = sk.listTimelines().filter((t) => t.tenantId === tenantId);
    await Promise.all(tls.map((t) => t.refreshExternal()));
    return tls.map((t) => timelineStateJson(t.getState()));
  });

  app.post("/v1/tenant/:tenant/timeline", async (req, reply) => {
    const { tenantId } = ids(req.params);
    const body = objectBody(req.body);
    checkKeys(body, ["timeline_id", "system_id", "start_lsn", "pg_version", "wal_seg_size"]);
    if (typeof body.timeline_id !== "string") throw bad(`Field timeline_id must be a 32-hex-digit string, got ${JSON.stringify(body.timeline_id)}`);
    const timelineId = parseTimelineId(body.timeline_id);
    const systemId = parseU64Field(body.system_id, "system_id");
    const startLsn = parseLsnField(body.start_lsn, "start_lsn");
    const pgVersion = body.pg_version === undefined ? DEFAULT_PG_VERSION : parseIntField(body.pg_version, "pg_version", 150000, 159999);
    const walSegSizeBytes = body.wal_seg_size === undefined ? DEFAULT_WAL_SEG_SIZE_BYTES : parseIntField(body.wal_seg_size, "wal_seg_size", 1 << 20, 1 << 30);
    if (!isValidWalSegSize(walSegSizeBytes)) throw bad(`Field wal_seg_size ${walSegSizeBytes} is not a power of two between 1 MiB and 1 GiB`);
    if (sk.findTimeline(tenantId, timelineId) !== undefined) {
      return reply.status(409).send({ error: `Timeline ${tenantId}/${timelineId} already exists`, code: "exists" });
    }
    const tl = await sk.createTimeline({ tenantId, timelineId, systemId, pgVersion, walSegSizeBytes, startLsn });
    return reply.status(201).send(timelineStateJson(tl.getState()));
  });

  app.get("/v1/tenant/:tenant/timeline/:timeline", async (req) => {
    const { tenantId, timelineId } = ids(req.params);
    const tl = sk.getTimeline(tenantId, timelineId!);
    await tl.refreshExternal();
    return timelineStateJson(tl.getState());
  });

  app.put("/v1/tenant/:tenant/timeline/:timeline/compute", async (req, reply) => {
    const { tenantId, timelineId } = ids(req.params);
    const body = objectBody(req.body);
    checkKeys(body, ["connstr", "term", "start_lsn"]);
    if (typeof body.connstr !== "string" || body.connstr.trim() === "") throw bad(`Field connstr must be a non-empty libpq connection string`);
    const t = parseTermField(body.term, "term");
    if (t === 0n) throw bad("Field term must be at least 1");
    const startLsn = body.start_lsn === undefined || body.start_lsn === null ? undefined : parseLsnField(body.start_lsn, "start_lsn");
    try {
      const { timeline, created } = await sk.registerCompute(tenantId, timelineId!, { connstr: body.connstr, term: t, startLsn });
      return reply.status(created ? 201 : 200).send(timelineStateJson(timeline.getState()));
    } catch (e) {
      if (e instanceof StaleTermError) return sendStaleTerm(reply, e);
      throw e;
    }
  });

  app.delete("/v1/tenant/:tenant/timeline/:timeline", async (req) => {
    const { tenantId, timelineId } = ids(req.params);
    await sk.deleteTimeline(tenantId, timelineId!);
    return { deleted: true, tenant_id: tenantId, timeline_id: timelineId };
  });

  return app;
}
