/**
 * The pageserver's HTTP management API (JSON), on the shared fastify base
 * (src/lib/http.ts: error mapping, body limits, /metrics).
 *
 *   GET    /v1/status
 *   POST   /v1/tenant                          {tenant_id?, config?, generation?}  -> 201 {tenant_id, generation}
 *   GET    /v1/tenant                                                       -> [tenant]
 *   GET    /v1/tenant/:tenant_id                                            -> tenant
 *   PATCH  /v1/tenant/:tenant_id/config        {setting: value, ...}        -> config
 *   DELETE /v1/tenant/:tenant_id
 *   POST   /v1/tenant/:tenant_id/timeline      {new_timeline_id?, ancestor_timeline_id?, ancestor_start_lsn?,
 *                                               pg_version?, import_datadir?, data_checksums?}  -> 201 timeline
 *          (a branch when ancestor_timeline_id is given; else a root bootstrapped from import_datadir — a
 *           cleanly shut-down PostgreSQL 15 data directory on this host — when given, else by initdb;
 *           rules in timeline_api.ts)
 *   GET    /v1/tenant/:tenant_id/timeline/:timeline_id/get_lsn_by_timestamp?timestamp=<RFC 3339>
 *          -> {lsn, kind: present|past|future|nodata, commit_timestamp}  (lsn_by_timestamp.ts)
 *   GET    /v1/tenant/:tenant_id/timeline                                   -> [timeline]
 *   GET    /v1/tenant/:tenant_id/timeline/:timeline_id                      -> timeline (LSNs, layers, ancestor, WAL receiver)
 *   DELETE /v1/tenant/:tenant_id/timeline/:timeline_id
 *   PUT    /v1/tenant/:tenant_id/timeline/:timeline_id/checkpoint           flush open layers now
 *   PUT    /v1/tenant/:tenant_id/timeline/:timeline_id/compact  {force?}    merge level-0 deltas, create image layers where needed
 *   PUT    /v1/tenant/:tenant_id/timeline/:timeline_id/do_gc                GC now (gc.ts): persists the cutoff
 *          (min(last_record_lsn - gcHorizonBytes, LSN at now - pitrIntervalMs)), removes layers no read at or
 *          above it (or at a child's branch point) needs -> {cutoff, retainedBranchPoints, layersTotal,
 *          layersRemoved, removedFiles, bytesRemoved}
 *   POST   /v1/tenant/:tenant_id/attach        {generation, config?}       -> 202 tenant (state "attaching", then
 *          "active" or "broken"; remote storage only; see remote/tenant_remote.ts)
 *   POST   /v1/tenant/:tenant_id/detach                                     -> 200 {detached, generation} after flush,
 *          uploads durable, local copy removed
 *   PUT    /v1/tenant/:tenant_id/timeline/:timeline_id/evict_layers  {layers?: [name]}
 *          -> {evicted, skipped, bytes}: evicts layers the durable remote index holds (all, or the named ones)
 *   GET    /metrics                                                         Prometheus
 *
 * Remote storage (contract B): POST /v1/tenant takes `generation` (default 1);
 * tenant JSON has `state` and `generation`; timeline JSON's
 * `remote_consistent_lsn` is the disk_consistent_lsn of the durable remote
 * index, and `remote` (null without remote storage) details the queue and
 * layer residence.
 *
 * Ids and LSNs from the URL or body are validated here (400 with the
 * offending text); a Broken tenant or timeline is listed with its reason.
 */
import type { FastifyInstance } from "fastify";
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import { createHttpApi } from "../lib/http.js";
import { generateTimelineId, parseTenantId, parseTimelineId, type TenantId } from "../lib/id.js";
import { formatLsn, type Lsn } from "../lib/lsn.js";
import type { Registry } from "../lib/metrics.js";
import { compactLevel0, createImageLayers } from "./compaction.js";
import { createTimelineFromRequest, loadSystemId, registerLsnByTimestampRoute, timelineIdentityJson } from "./timeline_api.js";
import type { Tenant } from "./tenant.js";
import type { TenantManager } from "./tenant_manager.js";
import type { Timeline } from "./timeline.js";
import type { WalReceiverStatus } from "./wal_receiver.js";
import { evictTimelineLayers } from "./remote/eviction.js";
import { RemoteMetrics } from "./remote/metrics.js";

/** What the API needs from the running pageserver besides the tenants. */
export interface PageserverControl {
  readonly tenants: TenantManager;
  /** Called after a timeline is created and ready for WAL (starts its WAL receiver). */
  timelineReady(tl: Timeline): void;
  /** Called before a timeline is deleted (stops its WAL receiver). */
  timelineGone(tl: Timeline): Promise<void>;
  walReceiverStatus(tl: Timeline): WalReceiverStatus | undefined;
  /** Imports a data directory into an empty root timeline (bootstrap). */
  importDatadir(tl: Timeline, datadir: string): Promise<{ lsn: Lsn }>;
}

function body(req: { body: unknown }): Record<string, unknown> {
  const b = req.body;
  if (b === undefined || b === null) return {};
  if (typeof b !== "object" || Array.isArray(b)) throw new StrataError("invalid_argument", "Request body must be a JSON object");
  return b as Record<string, unknown>;
}

export function tenantJson(t: Tenant) {
  return {
    id: t.tenantId,
    state: t.state,
    ...(t.brokenReason === undefined ? {} : { broken_reason: t.brokenReason }),
    generation: t.generation,
    timelines: t.listTimelines().length,
    config: t.conf,
  };
}

export function timelineJson(tl: Timeline, walReceiver?: WalReceiverStatus) {
  const layers = tl.layerInfos();
  const g = tl.state === "active" ? tl.gaugeSource() : undefined;
  return {
    tenant_id: tl.tenantId,
    timeline_id: tl.timelineId,
    state: tl.state,
    ...(tl.brokenReason === undefined ? {} : { broken_reason: tl.brokenReason }),
    ancestor_timeline_id: tl.ancestorTimelineId ?? null,
    ancestor_lsn: tl.ancestorTimelineId === undefined ? null : formatLsn(tl.ancestorLsn),
    last_record_lsn: formatLsn(tl.lastRecordLsn),
    prev_record_lsn: tl.prevRecordLsn === undefined ? null : formatLsn(tl.prevRecordLsn),
    disk_consistent_lsn: formatLsn(tl.diskConsistentLsn),
    remote_consistent_lsn: formatLsn(tl.remoteConsistentLsn),
    latest_gc_cutoff_lsn: formatLsn(tl.latestGcCutoffLsn),
    initdb_lsn: formatLsn(tl.initdbLsn),
    commit_lsn_seen: formatLsn(tl.remoteCommitLsn),
    pg_version: tl.pgVersion,
    ...timelineIdentityJson(tl),
    layers: {
      delta: layers.filter((l) => l.kind === "delta").length,
      image: layers.filter((l) => l.kind === "image").length,
      bytes: layers.reduce((a, l) => a + l.sizeBytes, 0),
      frozen_in_memory: g?.layerCounts.frozen ?? 0,
      open_in_memory: g?.layerCounts.open ?? 0,
    },
    wal_receiver: walReceiver ?? null,
    remote: remoteJson(tl),
  };
}

function remoteJson(tl: Timeline) {
  const r = tl.remote;
  if (r === undefined) return null;
  const layers = r.allLayers();
  const resident = layers.filter((l) => l.residence?.resident === true).length;
  return {
    generation: r.client.generation,
    queue_depth: r.client.queueDepth,
    stale: r.client.stale,
    resident_layers: resident,
    remote_only_layers: layers.length - resident,
    resident_bytes: r.residentBytes(),
    layers_uploaded: r.client.stats.layersUploaded,
    indexes_uploaded: r.client.stats.indexesUploaded,
    uploaded_bytes: r.client.stats.uploadedBytes,
    deletions: r.client.stats.deletions,
    skipped_deletions: r.client.stats.skippedDeletions,
    failed_attempts: r.client.stats.failedAttempts,
  };
}

export function buildHttpApi(ps: PageserverControl, opts: { log: Logger; registry: Registry }): FastifyInstance {
  const app = createHttpApi(opts);
  const tenants = ps.tenants;
  const tenantOf = (p: { tenant_id: string }): Tenant => tenants.get(parseTenantId(p.tenant_id));
  const timelineOf = (p: { tenant_id: string; timeline_id: string }): Timeline => tenantOf(p).getTimeline(parseTimelineId(p.timeline_id));

  app.get("/v1/status", async () => ({ tenants: tenants.list().length, timelines: tenants.allTimelines().length }));

  app.post("/v1/tenant", async (req, reply) => {
    const b = body(req);
    const id: TenantId | undefined = b.tenant_id === undefined ? undefined : parseTenantId(String(b.tenant_id));
    const t = await tenants.createTenant(id, b.config, b.generation === undefined ? 1 : (b.generation as number));
    t.activate();
    return reply.status(201).send({ tenant_id: t.tenantId, generation: t.generation });
  });
  app.post<{ Params: { tenant_id: string } }>("/v1/tenant/:tenant_id/attach", async (req, reply) => {
    const b = body(req);
    if (b.generation === undefined) throw new StrataError("invalid_argument", "attach needs a generation (a positive integer above any this tenant had)");
    const t = await tenants.attachTenant(parseTenantId(req.params.tenant_id), b.generation as number, b.config);
    return reply.status(202).send(tenantJson(t));
  });
  app.post<{ Params: { tenant_id: string } }>("/v1/tenant/:tenant_id/detach", async (req) => {
    const t = tenantOf(req.params);
    await tenants.detachTenant(t.tenantId, async (x) => {
      for (const tl of x.listTimelines()) await ps.timelineGone(tl);
    });
    return { detached: t.tenantId, generation: t.generation };
  });
  app.get("/v1/tenant", async () => tenants.list().map(tenantJson));
  app.get<{ Params: { tenant_id: string } }>("/v1/tenant/:tenant_id", async (req) => tenantJson(tenantOf(req.params)));
  app.patch<{ Params: { tenant_id: string } }>("/v1/tenant/:tenant_id/config", async (req) => tenantOf(req.params).updateConfig(body(req)));
  app.delete<{ Params: { tenant_id: string } }>("/v1/tenant/:tenant_id", async (req) => {
    const t = tenantOf(req.params);
    for (const tl of t.listTimelines()) await ps.timelineGone(tl);
    await tenants.deleteTenant(t.tenantId);
    return { deleted: t.tenantId };
  });

  app.post<{ Params: { tenant_id: string } }>("/v1/tenant/:tenant_id/timeline", async (req, reply) => {
    const t = tenantOf(req.params);
    const b = body(req);
    const id = b.new_timeline_id === undefined ? generateTimelineId() : parseTimelineId(String(b.new_timeline_id));
    const tl = await createTimelineFromRequest(t, id, b, { workDir: tenants.opts.dataDir, log: opts.log, importDatadir: (x, dir) => ps.importDatadir(x, dir) });
    ps.timelineReady(tl);
    return reply.status(201).send(timelineJson(tl, ps.walReceiverStatus(tl)));
  });
  app.get<{ Params: { tenant_id: string } }>("/v1/tenant/:tenant_id/timeline", async (req) => {
    const list = tenantOf(req.params).listTimelines();
    for (const tl of list) await loadSystemId(tl).catch(() => undefined);
    return list.map((tl) => timelineJson(tl, ps.walReceiverStatus(tl)));
  });
  app.get<{ Params: { tenant_id: string; timeline_id: string } }>("/v1/tenant/:tenant_id/timeline/:timeline_id", async (req) => {
    const tl = timelineOf(req.params);
    await loadSystemId(tl).catch(() => undefined);
    return timelineJson(tl, ps.walReceiverStatus(tl));
  });
  registerLsnByTimestampRoute(app, timelineOf);
  app.delete<{ Params: { tenant_id: string; timeline_id: string } }>("/v1/tenant/:tenant_id/timeline/:timeline_id", async (req) => {
    const tl = timelineOf(req.params);
    const t = tenantOf(req.params);
    if (t.listTimelines().some((c) => c.ancestorTimelineId === tl.timelineId)) {
      throw new StrataError("invalid_argument", `Timeline ${tl.timelineId} has child timelines; delete them first`);
    }
    await ps.timelineGone(tl);
    await t.deleteTimeline(tl.timelineId);
    // Remote objects too, or the next attach would bring the timeline back.
    const remoteDeleted = t.remote === undefined ? 0 : (await t.remote.deleteTimeline(tl.timelineId)).deleted;
    return { deleted: tl.timelineId, remote_objects_deleted: remoteDeleted };
  });
  app.put<{ Params: { tenant_id: string; timeline_id: string } }>("/v1/tenant/:tenant_id/timeline/:timeline_id/checkpoint", async (req) => {
    const tl = timelineOf(req.params);
    await tl.checkpoint();
    return timelineJson(tl, ps.walReceiverStatus(tl));
  });
  app.put<{ Params: { tenant_id: string; timeline_id: string } }>("/v1/tenant/:tenant_id/timeline/:timeline_id/compact", async (req) => {
    const tl = timelineOf(req.params);
    await tl.checkpoint();
    const force = body(req).force === true;
    return tl.withCompactionLock(async () => {
      const level0 = await compactLevel0(tl, { force });
      const images = await createImageLayers(tl, { force });
      return { level0, images };
    });
  });
  app.put<{ Params: { tenant_id: string; timeline_id: string } }>("/v1/tenant/:tenant_id/timeline/:timeline_id/evict_layers", async (req) => {
    const tl = timelineOf(req.params);
    if (tl.remote === undefined) throw new StrataError("invalid_argument", `Timeline ${tl.timelineId} has no remote storage; its layers cannot be evicted`);
    const names = body(req).layers;
    if (names !== undefined && (!Array.isArray(names) || names.some((n) => typeof n !== "string"))) throw new StrataError("invalid_argument", "layers must be an array of layer file names");
    return evictTimelineLayers(tl, { ...(names === undefined ? {} : { names: names as string[] }), metrics: RemoteMetrics.of(opts.registry) });
  });
  app.put<{ Params: { tenant_id: string; timeline_id: string } }>("/v1/tenant/:tenant_id/timeline/:timeline_id/do_gc", async (req) => {
    return tenantOf(req.params).gcTimeline(parseTimelineId(req.params.timeline_id));
  });
  return app;
}
