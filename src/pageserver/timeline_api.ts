/**
 * Timeline creation, identity and time -> LSN for the HTTP API (issue 6,
 * contract A). http_api.ts routes requests here; this module owns the
 * rules.
 *
 *   POST /v1/tenant/:t/timeline
 *     {new_timeline_id?, ancestor_timeline_id, ancestor_start_lsn?}  -> a branch (O(1))
 *     {new_timeline_id?, import_datadir, pg_version?}                -> a root imported from a stopped cluster
 *     {new_timeline_id?, pg_version?, data_checksums?}               -> a root bootstrapped by initdb (bootstrap.ts)
 *   GET  /v1/tenant/:t/timeline/:tl/get_lsn_by_timestamp?timestamp=<RFC 3339>
 *     -> {lsn, kind: present|past|future|nodata, commit_timestamp}    (lsn_by_timestamp.ts)
 *   timeline JSON adds system_id (pg_control's, decimal string), initial_lsn.
 *
 * Branch points (the rule, shared with basebackup.ts's "Which LSNs"): the
 * requested LSN X is moved to the record boundary denoting the same state
 * (`roundToRecordBoundary`: unaligned -> next multiple of 8, inside a WAL
 * page header -> past it), so a compute's pg_current_wal_lsn() after a
 * commit and a commit end from get_lsn_by_timestamp both work, and a
 * fullbackup of the child at X sees exactly the transactions whose commit
 * records end at or before X. X must be
 *   - at or above the ancestor's start (its initial LSN: initdb/import end
 *     of a root, branch point of a branch) and its GC cutoff   -> 400 otherwise;
 *   - at or below the ancestor's last_record_lsn after a bounded wait
 *     (BRANCH_WAIT_LSN_TIMEOUT_MS, at most the tenant's wait_lsn_timeout)
 *                                                               -> 400 "ahead of ..." otherwise.
 * No ancestor_start_lsn = the ancestor's last_record_lsn. An ancestor that
 * was never bootstrapped (no data) cannot be branched.
 *
 * system_id is read once from the timeline's pg_control value (a branch
 * has its ancestor's) and cached per timeline; null while a root is empty.
 */
import type { FastifyInstance } from "fastify";
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import { parseTimelineId, type TimelineId } from "../lib/id.js";
import { formatLsn, lsnMax, parseLsn, type Lsn } from "../lib/lsn.js";
import { requestContext } from "../lib/tasks.js";
import { parseControlFile } from "../formats/pg_control.js";
import { roundToRecordBoundary } from "./basebackup.js";
import { bootstrapWithInitdb } from "./bootstrap.js";
import { CONTROLFILE_KEY } from "./key.js";
import { findLsnByTimestamp, formatPgMicrosRfc3339, parseRfc3339ToPgMicros } from "./lsn_by_timestamp.js";
import type { Tenant } from "./tenant.js";
import type { Timeline } from "./timeline.js";

/**
 * Longest a branch request waits for the ancestor to ingest up to the
 * requested LSN: a compute's LSN is normally ingested within milliseconds;
 * the HTTP request itself is cut off at 60 s.
 */
export const BRANCH_WAIT_LSN_TIMEOUT_MS = 30_000;

/** The only PostgreSQL major version strata serves. */
export const SUPPORTED_PG_VERSION = 15;

const systemIds = new WeakMap<Timeline, bigint>();

/** Reads (once) the cluster's system identifier from the timeline's pg_control; undefined while it has none. */
export async function loadSystemId(tl: Timeline): Promise<bigint | undefined> {
  const cached = systemIds.get(tl);
  if (cached !== undefined) return cached;
  if (tl.state !== "active" || tl.lastRecordLsn === 0n) return undefined;
  const v = await tl.collectVersions(CONTROLFILE_KEY, tl.lastRecordLsn);
  if (v.image === undefined) return undefined;
  const id = parseControlFile(v.image.bytes).systemIdentifier;
  systemIds.set(tl, id);
  return id;
}

/** The LSN a timeline starts at: a root's initdb/import end, a branch's ancestor LSN. */
export function initialLsn(tl: Timeline): Lsn {
  return tl.ancestor !== undefined || tl.ancestorTimelineId !== undefined ? tl.ancestorLsn : tl.initdbLsn;
}

/** The fields contract A adds to the timeline JSON (system_id needs `loadSystemId` first; null until then). */
export function timelineIdentityJson(tl: Timeline): { system_id: string | null; initial_lsn: string } {
  const id = systemIds.get(tl);
  return { system_id: id === undefined ? null : id.toString(), initial_lsn: formatLsn(initialLsn(tl)) };
}

/** Oldest LSN a timeline can be read and branched at. */
export function oldestReadableLsn(tl: Timeline): Lsn {
  return lsnMax(tl.latestGcCutoffLsn, initialLsn(tl));
}

function lsnField(v: unknown, what: string): Lsn {
  if (typeof v !== "string") throw new StrataError("invalid_argument", `${what} must be an LSN string like "0/16B3748"`);
  try {
    return parseLsn(v);
  } catch (e) {
    throw new StrataError("invalid_argument", `${what}: ${(e as Error).message}`);
  }
}

/**
 * The branch point for a branch of `parent` at `requested` (undefined: its
 * last record), waiting (bounded) for ingest; 400 with the values when out
 * of range (see the header).
 */
export async function resolveBranchLsn(parent: Timeline, requested: Lsn | undefined, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<Lsn> {
  if (parent.state !== "active") throw new StrataError("invalid_argument", `Cannot branch from timeline ${parent.timelineId}: it is ${parent.state}`);
  if (parent.lastRecordLsn === 0n) throw new StrataError("invalid_argument", `Cannot branch from timeline ${parent.timelineId}: it has no data yet (never bootstrapped)`);
  if (requested === undefined) return parent.lastRecordLsn;
  const at = roundToRecordBoundary(requested);
  const start = initialLsn(parent);
  if (at < start) {
    throw new StrataError("invalid_argument", `Cannot branch from timeline ${parent.timelineId} at ${formatLsn(requested)}: its history starts at ${formatLsn(start)}`);
  }
  if (at < parent.latestGcCutoffLsn) {
    throw new StrataError("invalid_argument", `Cannot branch from timeline ${parent.timelineId} at ${formatLsn(requested)}: below its GC cutoff ${formatLsn(parent.latestGcCutoffLsn)}, that history is gone`);
  }
  if (at > parent.lastRecordLsn) {
    const timeoutMs = Math.min(opts.timeoutMs ?? BRANCH_WAIT_LSN_TIMEOUT_MS, parent.deps.conf().waitLsnTimeoutMs);
    try {
      await parent.waitForLsn(at, { timeoutMs, ...(opts.signal === undefined ? {} : { signal: opts.signal }) });
    } catch (e) {
      if (e instanceof StrataError && e.code === "timeout") {
        throw new StrataError(
          "invalid_argument",
          `Cannot branch from timeline ${parent.timelineId} at ${formatLsn(requested)}: it is ahead of the timeline's last record ${formatLsn(parent.lastRecordLsn)} (waited ${timeoutMs} ms for WAL)`,
          { cause: e },
        );
      }
      throw e;
    }
  }
  return at;
}

export interface CreateTimelineRequestDeps {
  /** The pageserver's data directory (initdb scratch space). */
  readonly workDir: string;
  readonly log: Logger;
  readonly importDatadir: (tl: Timeline, datadir: string) => Promise<{ lsn: Lsn }>;
}

/**
 * Creates the timeline a POST /v1/tenant/:t/timeline body asks for (see
 * the header). A root whose import or initdb fails is deleted again.
 */
export async function createTimelineFromRequest(t: Tenant, id: TimelineId, b: Record<string, unknown>, deps: CreateTimelineRequestDeps): Promise<Timeline> {
  if (b.ancestor_timeline_id !== undefined) {
    if (b.import_datadir !== undefined) throw new StrataError("invalid_argument", "A branch cannot also import a data directory");
    const parent = t.getTimeline(parseTimelineId(String(b.ancestor_timeline_id)));
    const requested = b.ancestor_start_lsn === undefined || b.ancestor_start_lsn === null ? undefined : lsnField(b.ancestor_start_lsn, "ancestor_start_lsn");
    const at = await resolveBranchLsn(parent, requested);
    const child = await t.createTimeline(id, { ancestorTimelineId: parent.timelineId, ancestorLsn: at });
    await loadSystemId(child).catch(() => undefined);
    return child;
  }
  const pgVersion = b.pg_version === undefined ? SUPPORTED_PG_VERSION : Number(b.pg_version);
  if (pgVersion !== SUPPORTED_PG_VERSION) throw new StrataError("unsupported", `pg_version ${String(b.pg_version)}: only PostgreSQL ${SUPPORTED_PG_VERSION} is supported`);
  if (b.data_checksums !== undefined && typeof b.data_checksums !== "boolean") throw new StrataError("invalid_argument", "data_checksums must be true or false");
  const tl = await t.createTimeline(id, { pgVersion });
  try {
    let lsn: Lsn;
    if (b.import_datadir !== undefined) {
      ({ lsn } = await deps.importDatadir(tl, String(b.import_datadir)));
    } else {
      ({ lsn } = await bootstrapWithInitdb(
        { workDir: deps.workDir, dataChecksums: b.data_checksums === true, log: deps.log.child({ tenant_id: t.tenantId, timeline_id: id }) },
        (dataDir) => deps.importDatadir(tl, dataDir),
      ));
    }
    await tl.setInitdbLsn(lsn);
  } catch (e) {
    await t.deleteTimeline(id).catch(() => undefined);
    throw e;
  }
  await loadSystemId(tl);
  return tl;
}

/** GET .../get_lsn_by_timestamp (see lsn_by_timestamp.ts for the rule). */
export function registerLsnByTimestampRoute(app: FastifyInstance, timelineOf: (p: { tenant_id: string; timeline_id: string }) => Timeline): void {
  app.get<{ Params: { tenant_id: string; timeline_id: string }; Querystring: { timestamp?: string } }>(
    "/v1/tenant/:tenant_id/timeline/:timeline_id/get_lsn_by_timestamp",
    async (req) => {
      const tl = timelineOf(req.params);
      const text = req.query.timestamp;
      if (typeof text !== "string" || text === "") throw new StrataError("invalid_argument", `Query parameter "timestamp" (RFC 3339) is required`);
      const ts = parseRfc3339ToPgMicros(text);
      if (tl.state !== "active") throw new StrataError("unavailable", `Timeline ${tl.timelineId} is ${tl.state}${tl.brokenReason === undefined ? "" : `: ${tl.brokenReason}`}`);
      if (tl.lastRecordLsn === 0n) throw new StrataError("invalid_argument", `Timeline ${tl.timelineId} has no data yet (never bootstrapped)`);
      const ctx = requestContext("http_request", AbortSignal.timeout(BRANCH_WAIT_LSN_TIMEOUT_MS));
      const r = await findLsnByTimestamp(tl, ts, { lo: oldestReadableLsn(tl), hi: tl.lastRecordLsn }, ctx);
      return { lsn: formatLsn(r.lsn), kind: r.kind, commit_timestamp: r.commit === undefined ? null : formatPgMicrosRfc3339(r.commit.timestampUs) };
    },
  );
}
