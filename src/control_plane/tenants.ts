/**
 * Tenants and timelines (branches) of a local deployment: the pageserver's
 * HTTP API (contracts A and B) plus the names and generations only the
 * control plane knows (repo.ts).
 *
 * * Tenant create: `POST /v1/tenant {tenant_id, generation: 1}`, recorded
 *   with generation 1. Attach: the recorded generation + 1 is persisted
 *   BEFORE the pageserver is asked (a crash in between only skips a number;
 *   reusing one could let two attachments share a generation), then
 *   `POST /v1/tenant/:t/attach {generation}` and a bounded wait for "active".
 *   Detach: `POST /v1/tenant/:t/detach`.
 * * Root timeline: `POST /v1/tenant/:t/timeline {new_timeline_id}` — the
 *   pageserver bootstraps it with initdb. Branch: the same with
 *   `ancestor_timeline_id` and `ancestor_start_lsn` (absent: the ancestor's
 *   last record; `--at TIME`: get_lsn_by_timestamp first). The name is
 *   recorded only after the pageserver created the timeline; an id chosen
 *   here makes a retry after a lost answer detectable.
 * * Export: a fullbackup tarball (`fetchBackupToFile`) at an LSN or time.
 *
 * Safekeeper timelines are not created here: the first endpoint start on a
 * branch does it (endpoint.ts), with the pageserver timeline's identity.
 */
import { StrataError } from "../lib/errors.js";
import { generateTenantId, generateTimelineId, parseTenantId, type TenantId, type TimelineId } from "../lib/id.js";
import { formatLsn, parseLsn, type Lsn } from "../lib/lsn.js";
import { sleep } from "../lib/tasks.js";
import { callJson, getOptional } from "./http_client.js";
import type { Progress } from "./progress.js";
import { branchName, branchTimeline, checkName, updateConfig, type RepoConfig, type RepoPaths } from "./repo.js";
import { getPsTimeline, listPsTimelines, LOCALHOST, pageserverApi, type PsTenant, type PsTimeline } from "./services.js";

/** Bound on an attached tenant becoming active (downloading its index from remote storage). */
export const ATTACH_TIMEOUT_MS = 120_000;
const POLL_MS = 200;

export async function createTenant(paths: RepoPaths, c: RepoConfig, opts: { tenantId?: string; setDefault?: boolean } = {}): Promise<TenantId> {
  const id = opts.tenantId !== undefined ? parseTenantId(opts.tenantId) : generateTenantId();
  if (c.tenants[id] !== undefined) throw new StrataError("invalid_argument", `Tenant ${id} already exists`);
  await callJson(pageserverApi(c), "POST", "/v1/tenant", { tenant_id: id, generation: 1 });
  await updateConfig(paths, (cfg) => {
    cfg.tenants[id] = { generation: 1, branches: {} };
    if (opts.setDefault === true || cfg.default_tenant === null) cfg.default_tenant = id;
  });
  return id;
}

export interface TenantListEntry {
  id: string;
  default: boolean;
  generation: number | null;
  state: string;
  branches: Record<string, string>;
}

export async function listTenants(c: RepoConfig): Promise<TenantListEntry[]> {
  const ps = await callJson<PsTenant[]>(pageserverApi(c), "GET", "/v1/tenant");
  const ids = new Set<string>([...Object.keys(c.tenants), ...ps.map((t) => t.id)]);
  return [...ids].sort().map((id) => {
    const p = ps.find((t) => t.id === id);
    return {
      id,
      default: c.default_tenant === id,
      generation: c.tenants[id]?.generation ?? p?.generation ?? null,
      state: p === undefined ? "not on the pageserver" : (p.state ?? "active"),
      branches: { ...(c.tenants[id]?.branches ?? {}) },
    };
  });
}

export async function attachTenant(paths: RepoPaths, c: RepoConfig, tenantText: string, progress: Progress): Promise<{ tenant: TenantId; generation: number; state: string }> {
  const tenant = parseTenantId(tenantText);
  let generation = 0;
  await updateConfig(paths, (cfg) => {
    const t = (cfg.tenants[tenant] ??= { generation: 0, branches: {} });
    t.generation += 1;
    generation = t.generation;
    if (cfg.default_tenant === null) cfg.default_tenant = tenant;
  });
  await callJson(pageserverApi(c), "POST", `/v1/tenant/${tenant}/attach`, { generation });
  const deadline = Date.now() + ATTACH_TIMEOUT_MS;
  let last = "";
  for (;;) {
    const t = await getOptional<PsTenant>(pageserverApi(c), `/v1/tenant/${tenant}`);
    const state = t?.state ?? "unknown";
    if (state !== last) progress.line(`tenant ${tenant}: ${state}`);
    last = state;
    if (state === "active") return { tenant, generation, state };
    if (state === "broken") throw new StrataError("unavailable", `Attaching tenant ${tenant} failed: ${t?.broken_reason ?? "broken"}`);
    if (Date.now() > deadline) throw new StrataError("timeout", `Tenant ${tenant} is still "${state}" ${ATTACH_TIMEOUT_MS} ms after attach`);
    await sleep(POLL_MS);
  }
}

export async function detachTenant(c: RepoConfig, tenantText: string): Promise<TenantId> {
  const tenant = parseTenantId(tenantText);
  await callJson(pageserverApi(c), "POST", `/v1/tenant/${tenant}/detach`, {});
  return tenant;
}

function checkNewBranch(c: RepoConfig, tenant: TenantId, name: string): void {
  checkName("branch", name);
  if (c.tenants[tenant]?.branches[name] !== undefined) throw new StrataError("invalid_argument", `Branch "${name}" of tenant ${tenant} already exists (timeline ${c.tenants[tenant]!.branches[name]})`);
}

async function recordBranch(paths: RepoPaths, tenant: TenantId, name: string, timeline: TimelineId): Promise<void> {
  await updateConfig(paths, (cfg) => {
    const t = (cfg.tenants[tenant] ??= { generation: 1, branches: {} });
    t.branches[name] = timeline;
  });
}

/** A new root timeline (initdb bootstrap on the pageserver) named `name`. */
export async function createRootBranch(paths: RepoPaths, c: RepoConfig, tenant: TenantId, name: string, progress: Progress): Promise<PsTimeline> {
  checkNewBranch(c, tenant, name);
  const id = generateTimelineId();
  const tl = await progress.step(`creating timeline ${id} (branch ${name}: initdb on the pageserver)`, () =>
    callJson<PsTimeline>(pageserverApi(c), "POST", `/v1/tenant/${tenant}/timeline`, { new_timeline_id: id }),
  );
  await recordBranch(paths, tenant, name, id);
  return tl;
}

/**
 * Normalizes a --at value to RFC 3339 for get_lsn_by_timestamp, keeping
 * sub-millisecond digits (commit timestamps have microseconds). Accepts
 * PostgreSQL's text form too ("2026-01-02 03:04:05.123456+00").
 */
export function normalizeTimestamp(text: string): string {
  const m = /^(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d(?:\.\d{1,9})?)\s*([Zz]|[+-]\d\d(?::?\d\d)?)$/.exec(text.trim());
  if (m) {
    let zone = m[3]!;
    if (/^[zZ]$/.test(zone)) zone = "Z";
    else if (/^[+-]\d\d$/.test(zone)) zone = `${zone}:00`;
    else if (/^[+-]\d{4}$/.test(zone)) zone = `${zone.slice(0, 3)}:${zone.slice(3)}`;
    const out = `${m[1]}T${m[2]}${zone}`;
    if (Number.isNaN(Date.parse(out.replace(/(\.\d{3})\d+/, "$1")))) throw new StrataError("invalid_argument", `Invalid timestamp "${text}"`);
    return out;
  }
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) throw new StrataError("invalid_argument", `Cannot parse timestamp "${text}": expected RFC 3339, e.g. 2026-01-02T03:04:05.123456Z`);
  return new Date(ms).toISOString();
}

export interface LsnByTimestamp {
  lsn: string;
  kind: "present" | "past" | "future" | "nodata";
  commit_timestamp: string | null;
}

export async function lsnByTimestamp(c: RepoConfig, tenant: TenantId, timeline: TimelineId, at: string): Promise<LsnByTimestamp> {
  const ts = normalizeTimestamp(at);
  return callJson<LsnByTimestamp>(pageserverApi(c), "GET", `/v1/tenant/${tenant}/timeline/${timeline}/get_lsn_by_timestamp?timestamp=${encodeURIComponent(ts)}`);
}

function parseLsnArg(text: string, flag: string): Lsn {
  try {
    return parseLsn(text);
  } catch (e) {
    throw new StrataError("invalid_argument", `${flag}: ${(e as Error).message}`, { cause: e });
  }
}

export interface BranchOptions {
  name: string;
  ancestor: string;
  lsn?: string;
  at?: string;
}

/** Creates branch `name` from branch `ancestor` at an LSN, a time, or the ancestor's end. */
export async function createBranch(paths: RepoPaths, c: RepoConfig, tenant: TenantId, opts: BranchOptions, progress: Progress): Promise<{ timeline: PsTimeline; lsnFromTimestamp?: LsnByTimestamp }> {
  checkNewBranch(c, tenant, opts.name);
  if (opts.lsn !== undefined && opts.at !== undefined) throw new StrataError("invalid_argument", "Give --ancestor-start-lsn or --at, not both");
  const ancestorId = branchTimeline(c, tenant, opts.ancestor);
  let lsn: Lsn | undefined = opts.lsn === undefined ? undefined : parseLsnArg(opts.lsn, "--ancestor-start-lsn");
  let byTime: LsnByTimestamp | undefined;
  if (opts.at !== undefined) {
    byTime = await lsnByTimestamp(c, tenant, ancestorId, opts.at);
    if (byTime.kind === "nodata") throw new StrataError("not_found", `Branch "${opts.ancestor}" has no commits to place ${opts.at} among`);
    lsn = parseLsn(byTime.lsn);
    progress.line(`--at ${opts.at}: LSN ${byTime.lsn} (${byTime.kind}${byTime.commit_timestamp ? `, last commit at ${byTime.commit_timestamp}` : ""})`);
  }
  const id = generateTimelineId();
  const body: Record<string, string> = { new_timeline_id: id, ancestor_timeline_id: ancestorId };
  if (lsn !== undefined) body.ancestor_start_lsn = formatLsn(lsn);
  const tl = await callJson<PsTimeline>(pageserverApi(c), "POST", `/v1/tenant/${tenant}/timeline`, body);
  await recordBranch(paths, tenant, opts.name, id);
  return { timeline: tl, ...(byTime ? { lsnFromTimestamp: byTime } : {}) };
}

export interface TimelineListEntry {
  id: string;
  branch: string | null;
  ancestor: string | null;
  ancestor_branch: string | null;
  ancestor_lsn: string | null;
  last_record_lsn: string | null;
  disk_consistent_lsn: string | null;
  remote_consistent_lsn: string | null;
  state: string;
}

/** Every timeline of `tenant`: the pageserver's view joined with branch names (pageserver down: names only). */
export async function listTimelines(c: RepoConfig, tenant: TenantId): Promise<TimelineListEntry[]> {
  let ps: PsTimeline[] | undefined;
  let psState = "pageserver not reachable";
  try {
    ps = await listPsTimelines(c, tenant);
  } catch (e) {
    if (e instanceof StrataError && e.code === "not_found") psState = "tenant not on the pageserver";
    else if (!(e instanceof StrataError && e.code === "unavailable")) throw e;
  }
  const ids = new Set<string>([...Object.values(c.tenants[tenant]?.branches ?? {}), ...(ps ?? []).map((t) => t.timeline_id)]);
  return [...ids].map((id) => {
    const p = ps?.find((t) => t.timeline_id === id);
    const anc = p?.ancestor_timeline_id ?? null;
    return {
      id,
      branch: branchName(c, tenant, id) ?? null,
      ancestor: anc,
      ancestor_branch: anc === null ? null : (branchName(c, tenant, anc) ?? null),
      ancestor_lsn: p?.ancestor_lsn ?? null,
      last_record_lsn: p?.last_record_lsn ?? null,
      disk_consistent_lsn: p?.disk_consistent_lsn ?? null,
      remote_consistent_lsn: p?.remote_consistent_lsn ?? null,
      state: p === undefined ? (ps === undefined ? psState : "missing on the pageserver") : (p.state ?? "active"),
    };
  });
}

/** The branch tree as text lines: roots first, children indented under their ancestor, by ancestor LSN. */
export function formatTimelineTree(entries: readonly TimelineListEntry[]): string[] {
  const lines: string[] = [];
  const byParent = new Map<string | null, TimelineListEntry[]>();
  const ids = new Set(entries.map((e) => e.id));
  for (const e of entries) {
    const parent = e.ancestor !== null && ids.has(e.ancestor) ? e.ancestor : null;
    byParent.set(parent, [...(byParent.get(parent) ?? []), e]);
  }
  const lsnKey = (e: TimelineListEntry) => (e.ancestor_lsn === null ? 0n : parseLsn(e.ancestor_lsn));
  // Iterative depth-first walk (STYLE: loop, don't recurse).
  const stack: { e: TimelineListEntry; depth: number }[] = [];
  const push = (parent: string | null, depth: number) => {
    const kids = [...(byParent.get(parent) ?? [])].sort((a, b) => (lsnKey(a) < lsnKey(b) ? 1 : lsnKey(a) > lsnKey(b) ? -1 : 0));
    for (const k of kids) stack.push({ e: k, depth });
  };
  push(null, 0);
  while (stack.length > 0) {
    const { e, depth } = stack.pop()!;
    const indent = depth === 0 ? "" : `${"  ".repeat(depth - 1)}└ `;
    const at = e.ancestor_lsn === null ? "" : ` @${e.ancestor_lsn}`;
    lines.push(`${indent}${e.branch ?? "(unnamed)"} ${e.id}${at}  last_record ${e.last_record_lsn ?? "?"}  disk_consistent ${e.disk_consistent_lsn ?? "?"}  remote_consistent ${e.remote_consistent_lsn ?? "?"}${e.state === "active" ? "" : `  [${e.state}]`}`);
    push(e.id, depth + 1);
  }
  return lines;
}

export interface ExportOptions {
  branch: string;
  lsn?: string;
  at?: string;
  output: string;
}

/** Writes a fullbackup tarball (gzip when the name ends in .gz) of a branch at an LSN/time/its end. */
export async function exportBranch(c: RepoConfig, tenant: TenantId, opts: ExportOptions, progress: Progress): Promise<{ bytes: number; lsn: string | null; path: string }> {
  if (opts.lsn !== undefined && opts.at !== undefined) throw new StrataError("invalid_argument", "Give --lsn or --at, not both");
  if (!/\.tar(\.gz)?$|\.tgz$/.test(opts.output)) throw new StrataError("invalid_argument", `-o ${opts.output}: the file name must end in .tar, .tar.gz or .tgz`);
  const timeline = branchTimeline(c, tenant, opts.branch);
  let lsn: Lsn | undefined = opts.lsn === undefined ? undefined : parseLsnArg(opts.lsn, "--lsn");
  if (opts.at !== undefined) {
    const r = await lsnByTimestamp(c, tenant, timeline, opts.at);
    if (r.kind === "nodata") throw new StrataError("not_found", `Branch "${opts.branch}" has no commits to place ${opts.at} among`);
    lsn = parseLsn(r.lsn);
    progress.line(`--at ${opts.at}: LSN ${r.lsn} (${r.kind})`);
  }
  if (lsn === undefined) lsn = parseLsn((await getPsTimeline(c, tenant, timeline)).last_record_lsn);
  const gzip = /\.gz$|\.tgz$/.test(opts.output);
  const counter = progress.bytes(`fullbackup of ${opts.branch} at ${formatLsn(lsn)}`);
  const { fetchBackupToFile } = await import("../pageserver/backup_client.js");
  const r = await fetchBackupToFile(
    { host: LOCALHOST, port: c.pageserver.pg_port, tenantId: tenant, timelineId: timeline, lsn, full: true, gzip, onProgress: (n) => counter.update(n) },
    opts.output,
  );
  counter.done(r.bytes);
  return { bytes: r.bytes, lsn: formatLsn(lsn), path: opts.output };
}
