/**
 * The consensus routes of a safekeeper's HTTP API (added to the fastify
 * instance of http_api.ts through the safekeeper's extension point, or to a
 * bare `createHttpApi` in tests):
 *
 *   GET  /v1/tenant/:tenant/timeline/:timeline/consensus/state
 *        -> acceptor snapshot {term, term_history, flush_lsn, flush_record_lsn, commit_lsn, timeline_start_lsn}
 *   POST /v1/tenant/:tenant/timeline/:timeline/consensus/vote      {term}
 *        -> {granted, state}   (the term is durable before the answer)
 *   POST /v1/tenant/:tenant/timeline/:timeline/consensus/elected   {term, term_history, start_lsn, donor: {id, http_url}}
 *        -> state once this member holds the elected history's WAL up to start_lsn
 *   POST /v1/tenant/:tenant/timeline/:timeline/consensus/wal       {start_lsn, end_lsn, max_bytes, term_history}
 *        -> application/octet-stream: WAL from start_lsn (at most max_bytes, not past end_lsn),
 *           only if it belongs to term_history here (recovery.ts serveWal)
 *
 * Conventions as in http_api.ts: LSNs "X/Y"; terms decimal strings (JSON
 * numbers accepted). A refused term is HTTP 409 with `refused_term: true`,
 * so the caller can tell "you are stale" from "try again". Malformed bodies
 * are 400 naming the field.
 */
import type { FastifyInstance, FastifyReply } from "fastify";
import { StrataError } from "../../lib/errors.js";
import { parseTenantId, parseTimelineId, type TenantId, type TimelineId } from "../../lib/id.js";
import { formatLsn, type Lsn } from "../../lib/lsn.js";
import {
  parseLsnField,
  parseTermHistoryJson,
  parseTermText,
  snapshotToJson,
  TermRefusedError,
  type ConsensusTimeline,
} from "./acceptor_state.js";
import { electedHistoryProblem, PEER_FETCH_CHUNK_BYTES, joinHistory, serveWal, type WalSource } from "./recovery.js";

/** Server-side bound on one member's join: a bit above the coordinator's own timeout (http_client.ts), so the coordinator gives up first. */
export const JOIN_TIMEOUT_MS = 60_000;

export interface ConsensusRoutesOptions {
  /** The timeline, or StrataError("not_found"). */
  lookup(tenantId: TenantId, timelineId: TimelineId): ConsensusTimeline;
  /** Where a member fetches WAL from a donor (default: its HTTP range endpoint). */
  walSourceFor(donor: { id: number; httpUrl: string }, tenantId: TenantId, timelineId: TimelineId): WalSource;
  /** Aborts long requests (a member's join) when the safekeeper stops. */
  signal: AbortSignal;
}

type Params = { tenant: string; timeline: string };

function objectBody(body: unknown): Record<string, unknown> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new StrataError("invalid_argument", "Request body must be a JSON object");
  return body as Record<string, unknown>;
}

/** Client input errors are 400s, whatever the parser called them. */
function asBadRequest<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof StrataError && e.code === "protocol_violation") throw new StrataError("invalid_argument", e.message);
    throw e;
  }
}

function termOf(v: unknown, context: string) {
  return parseTermText(typeof v === "number" && Number.isSafeInteger(v) ? String(v) : v, context);
}

async function refusalAware<T>(reply: FastifyReply, fn: () => Promise<T>): Promise<T | FastifyReply> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof TermRefusedError) return reply.status(409).send({ error: e.message, code: e.code, refused_term: true });
    throw e;
  }
}

export function registerConsensusRoutes(app: FastifyInstance, opts: ConsensusRoutesOptions): void {
  const base = "/v1/tenant/:tenant/timeline/:timeline/consensus";
  const timelineOf = (p: Params) => {
    const tenantId = asBadRequest(() => parseTenantId(p.tenant));
    const timelineId = asBadRequest(() => parseTimelineId(p.timeline));
    return { tenantId, timelineId, tl: opts.lookup(tenantId, timelineId) };
  };

  app.get<{ Params: Params }>(`${base}/state`, async (req) => {
    const { tl } = timelineOf(req.params);
    return snapshotToJson(await tl.snapshot());
  });

  app.post<{ Params: Params }>(`${base}/vote`, async (req) => {
    const { tl } = timelineOf(req.params);
    const body = objectBody(req.body);
    const t = asBadRequest(() => termOf(body.term, `vote: "term"`));
    const v = await tl.vote(t);
    return { granted: v.granted, state: snapshotToJson(v.snapshot) };
  });

  app.post<{ Params: Params }>(`${base}/elected`, async (req, reply) => {
    const { tenantId, timelineId, tl } = timelineOf(req.params);
    const body = objectBody(req.body);
    const parsed = asBadRequest(() => {
      const t = termOf(body.term, `elected: "term"`);
      const history = parseTermHistoryJson(body.term_history, `elected: "term_history"`);
      const startLsn = parseLsnField(body, "start_lsn", "elected");
      const donorRaw = objectBody(body.donor);
      const id = donorRaw.id;
      const httpUrl = donorRaw.http_url;
      if (typeof id !== "number" || !Number.isSafeInteger(id) || id < 0) throw new StrataError("invalid_argument", `elected: "donor.id" must be a non-negative integer`);
      if (typeof httpUrl !== "string" || !/^https?:\/\//.test(httpUrl)) throw new StrataError("invalid_argument", `elected: "donor.http_url" must be an http(s) URL`);
      const problem = electedHistoryProblem(history, t, startLsn);
      if (problem !== undefined) throw new StrataError("invalid_argument", `elected: ${problem}`);
      return { t, history, startLsn, donor: { id, httpUrl } };
    });
    return await refusalAware(reply, async () => {
      const source = opts.walSourceFor(parsed.donor, tenantId, timelineId);
      const s = await joinHistory(tl, { term: parsed.t, history: parsed.history, endLsn: parsed.startLsn }, source, AbortSignal.any([opts.signal, AbortSignal.timeout(JOIN_TIMEOUT_MS)]));
      return snapshotToJson(s);
    });
  });

  app.post<{ Params: Params }>(`${base}/wal`, async (req, reply) => {
    const { tl } = timelineOf(req.params);
    const body = objectBody(req.body);
    const { startLsn, endLsn, maxBytes, history } = asBadRequest(() => {
      const startLsn: Lsn = parseLsnField(body, "start_lsn", "wal");
      const endLsn: Lsn = parseLsnField(body, "end_lsn", "wal");
      const maxBytes = body.max_bytes;
      if (typeof maxBytes !== "number" || !Number.isSafeInteger(maxBytes) || maxBytes < 1 || maxBytes > PEER_FETCH_CHUNK_BYTES) {
        throw new StrataError("invalid_argument", `wal: "max_bytes" must be an integer in [1, ${PEER_FETCH_CHUNK_BYTES}]`);
      }
      if (endLsn < startLsn) throw new StrataError("invalid_argument", `wal: end ${formatLsn(endLsn)} is before start ${formatLsn(startLsn)}`);
      return { startLsn, endLsn, maxBytes, history: parseTermHistoryJson(body.term_history, `wal: "term_history"`) };
    });
    const bytes = await serveWal(tl, startLsn, maxBytes, endLsn, history);
    return reply.header("content-type", "application/octet-stream").send(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  });
}
