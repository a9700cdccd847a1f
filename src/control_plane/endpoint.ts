/**
 * Endpoints (computes): an unmodified PostgreSQL 15 server for one branch,
 * started from a fullbackup of the pageserver (DESIGN.md §1, §3, §6).
 *
 * Start, for branch B (timeline TL) of tenant T:
 *   1. every running safekeeper has timeline TL (created with the
 *      pageserver timeline's system_id and initial_lsn when missing: the
 *      initdb end of a root, the branch point of a branch — usually
 *      mid-segment; the safekeeper keeps only WAL from there on, so each
 *      branch's WAL stays separate from its ancestor's);
 *   2. the endpoint-start protocol (src/safekeeper/consensus/endpoint_start.ts)
 *      elects a new term on a quorum and returns startLsn: the end of the
 *      branch's committed WAL (everything acknowledged lies below it);
 *   3. wait (bounded, with progress) until the pageserver has ingested up to
 *      startLsn;
 *   4. a fullbackup at startLsn is extracted into a fresh data directory
 *      (the old one is removed: the branch's WAL, not the old files, is the
 *      truth);
 *   5. strata's settings (pg_settings.ts) and pg_hba.conf are written;
 *   6. pg_ctl start (bounded);
 *   7. the physical slots sk_<id> are created, reserving WAL from startLsn;
 *   8. the compute is registered with every safekeeper under the new term
 *      (start_lsn = startLsn), and we wait (bounded) until a quorum streams
 *      from it, so the first COMMIT does not stall on missing standbys.
 *
 * Why restart loses nothing: a COMMIT returned only after a quorum fsynced
 * its WAL (synchronous_standby_names); step 2's startLsn is at or past all
 * such WAL; steps 3-4 build the data directory from exactly that WAL.
 *
 * Crash/cancel: any failure leaves the old term fenced (harmless) and the
 * endpoint stopped; running start again redoes every step. One running
 * endpoint per branch (`checkBranchFree`): a second would fence the first.
 *
 * Stop: pg_ctl stop -m fast (shutdown checkpoint streamed to the
 * safekeepers) or -m immediate.
 */
import { appendFile, chmod, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { StrataError } from "../lib/errors.js";
import type { TenantId, TimelineId } from "../lib/id.js";
import { formatLsn, parseLsn, type Lsn } from "../lib/lsn.js";
import { sleep } from "../lib/tasks.js";
import { callJson, getOptional, ServiceHttpError } from "./http_client.js";
import { connstrKeyValue, connstrUri, pgHbaConf, postgresqlConfBlock } from "./pg_settings.js";
import { chownToServerUser, psql, runPgTool, serverUser } from "./pg_tools.js";
import { checkPortFree } from "./ports.js";
import type { Progress } from "./progress.js";
import { branchTimeline, type EndpointConf, type RepoConfig, type RepoPaths, type SafekeeperConf } from "./repo.js";
import { getPsTimeline, LOCALHOST, requireServices, safekeeperApi } from "./services.js";
import { logTail, processExists } from "./supervisor.js";

/** Bound on the pageserver catching up with the branch's WAL before a backup (ingest of tens of MiB on a loaded machine). */
export const PAGESERVER_CATCHUP_TIMEOUT_MS = 180_000;
/** Bound on pg_ctl start/stop (-t). */
export const PG_CTL_TIMEOUT_S = 60;
/** Bound on a quorum of safekeepers connecting to a new compute. */
export const SAFEKEEPERS_CONNECT_TIMEOUT_MS = 30_000;
/** Poll interval of the waits above. */
const POLL_MS = 200;

export interface EndpointStatus {
  name: string;
  tenant_id: string;
  branch: string;
  timeline_id: string | null;
  port: number;
  pid: number | null;
  state: "running" | "stopped";
  connstr: string;
  pgdata: string;
}

/** The postmaster pid of a running compute, from pgdata/postmaster.pid. */
export async function computePid(pgdata: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await readFile(join(pgdata, "postmaster.pid"), "utf8");
  } catch {
    return undefined;
  }
  const pid = Number(text.split("\n")[0]?.trim());
  if (!Number.isInteger(pid) || pid <= 0 || !processExists(pid)) return undefined;
  try {
    const cmd = await readFile(`/proc/${pid}/cmdline`, "utf8");
    if (!cmd.includes("postgres")) return undefined;
  } catch {
    /* no /proc: trust the pid */
  }
  return pid;
}

export async function endpointStatus(paths: RepoPaths, c: RepoConfig, name: string): Promise<EndpointStatus> {
  const e = c.endpoints[name];
  if (e === undefined) throw unknownEndpoint(c, name);
  const pid = (await computePid(paths.endpointPgdata(name))) ?? null;
  return {
    name,
    tenant_id: e.tenant_id,
    branch: e.branch,
    timeline_id: c.tenants[e.tenant_id]?.branches[e.branch] ?? null,
    port: e.port,
    pid,
    state: pid === null ? "stopped" : "running",
    connstr: connstrUri(e.port),
    pgdata: paths.endpointPgdata(name),
  };
}

export function unknownEndpoint(c: RepoConfig, name: string): StrataError {
  const known = Object.keys(c.endpoints);
  return new StrataError("not_found", `Unknown endpoint "${name}"${known.length > 0 ? ` (endpoints: ${known.join(", ")})` : " (there are none yet)"}`);
}

interface SkTimeline {
  flush_lsn: string;
  commit_lsn: string;
  compute: { connected: boolean } | null;
}

/** Step 1: the timeline exists on every running safekeeper. Returns the safekeepers that have it. */
export async function ensureSafekeeperTimelines(c: RepoConfig, tenant: TenantId, timeline: TimelineId, progress: Progress): Promise<number[]> {
  let ps;
  try {
    ps = await getPsTimeline(c, tenant, timeline);
  } catch (e) {
    if (e instanceof ServiceHttpError && e.status === 404) {
      throw new StrataError("not_found", `${e.message} (a pageserver that lost its local copy gets it back with "strata tenant attach ${tenant}")`, { cause: e });
    }
    throw e;
  }
  if (ps.system_id === undefined || ps.system_id === null || ps.initial_lsn === undefined) {
    throw new StrataError("unsupported", `The pageserver's timeline ${timeline} does not report system_id/initial_lsn (contract A); cannot create it on the safekeepers`);
  }
  const ok: number[] = [];
  for (const sk of c.safekeepers) {
    const api = safekeeperApi(sk);
    try {
      const have = await getOptional<SkTimeline>(api, `/v1/tenant/${tenant}/timeline/${timeline}`, { timeoutMs: 10_000 });
      if (have === undefined) {
        try {
          await callJson(api, "POST", `/v1/tenant/${tenant}/timeline`, { timeline_id: timeline, system_id: ps.system_id, start_lsn: ps.initial_lsn, pg_version: 150000 }, { timeoutMs: 30_000 });
          progress.line(`safekeeper ${sk.id}: created timeline ${timeline} starting at ${ps.initial_lsn}`);
        } catch (e) {
          if (!(e instanceof ServiceHttpError && e.status === 409)) throw e;
        }
      }
      ok.push(sk.id);
    } catch (e) {
      progress.line(`safekeeper ${sk.id}: ${(e as Error).message} (continuing without it)`);
    }
  }
  return ok;
}

/** Step 3: waits until the pageserver's last_record_lsn reaches `target`. */
async function waitForPageserver(c: RepoConfig, tenant: TenantId, timeline: TimelineId, target: Lsn, progress: Progress, timeoutMs = PAGESERVER_CATCHUP_TIMEOUT_MS): Promise<void> {
  const t0 = Date.now();
  let lastLine = 0;
  for (;;) {
    const tl = await getPsTimeline(c, tenant, timeline);
    const at = parseLsn(tl.last_record_lsn);
    if (at >= target) return;
    if (tl.state === "broken") throw new StrataError("unavailable", `Timeline ${timeline} is broken on the pageserver; it cannot catch up with ${formatLsn(target)}`);
    const elapsed = Date.now() - t0;
    if (elapsed > timeoutMs) {
      throw new StrataError("timeout", `The pageserver reached only ${formatLsn(at)} of ${formatLsn(target)} for timeline ${timeline} within ${timeoutMs} ms (see the pageserver's log, pageserver/pageserver.log in the repo dir)`);
    }
    if (Date.now() - lastLine >= 1000) {
      lastLine = Date.now();
      progress.line(`waiting for the pageserver to ingest WAL up to ${formatLsn(target)}: at ${formatLsn(at)}, ${target - at} bytes behind`);
    }
    await sleep(POLL_MS);
  }
}

async function pgCtlStart(paths: RepoPaths, name: string): Promise<void> {
  const r = await runPgTool("pg_ctl", ["start", "-D", paths.endpointPgdata(name), "-l", paths.endpointLog(name), "-w", "-t", String(PG_CTL_TIMEOUT_S)], {
    asServerUser: true,
    timeoutMs: (PG_CTL_TIMEOUT_S + 15) * 1000,
  });
  if (r.code !== 0) {
    throw new StrataError("unavailable", `pg_ctl start of endpoint ${name} failed (exit ${r.code}): ${r.stderr.trim()}\n--- the end of ${paths.endpointLog(name)} ---\n${await logTail(paths.endpointLog(name))}`);
  }
}

/** Step 8's wait: a quorum of safekeepers reports the compute connected. */
async function waitForSafekeepersConnected(c: RepoConfig, tenant: TenantId, timeline: TimelineId, ids: readonly number[], progress: Progress): Promise<void> {
  const q = Math.floor(c.safekeepers.length / 2) + 1;
  const deadline = Date.now() + SAFEKEEPERS_CONNECT_TIMEOUT_MS;
  for (;;) {
    let connected = 0;
    for (const sk of c.safekeepers.filter((s) => ids.includes(s.id))) {
      const s = await getOptional<SkTimeline>(safekeeperApi(sk), `/v1/tenant/${tenant}/timeline/${timeline}`, { timeoutMs: 5_000 }).catch(() => undefined);
      if (s?.compute?.connected === true) connected++;
    }
    if (connected >= q) return;
    if (Date.now() > deadline) {
      progress.line(`warning: only ${connected} of ${c.safekeepers.length} safekeepers stream from the compute after ${SAFEKEEPERS_CONNECT_TIMEOUT_MS} ms (need ${q}); commits wait until a quorum does`);
      return;
    }
    await sleep(POLL_MS);
  }
}

/** One writer per branch: a second compute would fence the first (its commits would hang). */
export async function checkBranchFree(paths: RepoPaths, c: RepoConfig, name: string, tenant: TenantId, branch: string): Promise<void> {
  for (const [other, oe] of Object.entries(c.endpoints)) {
    if (other !== name && oe.tenant_id === tenant && oe.branch === branch && (await computePid(paths.endpointPgdata(other))) !== undefined) {
      throw new StrataError("invalid_argument", `Branch "${branch}" already has a running endpoint (${other}); stop it first ("strata endpoint stop ${other}")`);
    }
  }
}

export interface StartEndpointResult {
  connstr: string;
  alreadyRunning: boolean;
  startLsn?: string;
  term?: string;
  backupBytes?: number;
}

/** Starts endpoint `name` (already in the config). */
export async function startEndpointCompute(paths: RepoPaths, c: RepoConfig, name: string, progress: Progress, signal: AbortSignal = new AbortController().signal): Promise<StartEndpointResult> {
  const e: EndpointConf | undefined = c.endpoints[name];
  if (e === undefined) throw unknownEndpoint(c, name);
  const pgdata = paths.endpointPgdata(name);
  if ((await computePid(pgdata)) !== undefined) return { connstr: connstrUri(e.port), alreadyRunning: true };
  const tenant = e.tenant_id;
  const timeline = branchTimeline(c, tenant, e.branch);
  await checkBranchFree(paths, c, name, tenant, e.branch);
  await requireServices(paths, c);
  await checkPortFree(e.port, `endpoint ${name}`);

  // Loaded here, not at module load: every other command starts faster without them.
  const { fetchBackupIntoDir } = await import("../pageserver/backup_client.js");
  const { startEndpoint } = await import("../safekeeper/consensus/endpoint_start.js");

  // 1-2. Safekeepers: timeline, election.
  const skIds = await progress.step(`endpoint ${name}: safekeeper timelines for branch ${e.branch}`, () => ensureSafekeeperTimelines(c, tenant, timeline, progress));
  const members = c.safekeepers.map((sk) => ({ id: sk.id, httpUrl: safekeeperApi(sk).baseUrl }));
  const elected = await progress.step(`endpoint ${name}: electing a term on the safekeepers`, () => startEndpoint({ safekeepers: members, tenantId: tenant, timelineId: timeline, signal }));
  const startLsn = elected.startLsn;
  progress.line(`endpoint ${name}: term ${elected.term}, WAL starts at ${formatLsn(startLsn)}`);

  // 3. Pageserver catches up.
  await waitForPageserver(c, tenant, timeline, startLsn, progress);

  // 4. Fresh data directory from a fullbackup.
  const dir = paths.endpointDir(name);
  await mkdir(dir, { recursive: true, mode: 0o755 });
  await rm(pgdata, { recursive: true, force: true });
  const counter = progress.bytes(`endpoint ${name}: fullbackup at ${formatLsn(startLsn)}`);
  const owner = serverUser();
  const backup = await fetchBackupIntoDir(
    {
      host: LOCALHOST,
      port: c.pageserver.pg_port,
      tenantId: tenant,
      timelineId: timeline,
      lsn: startLsn,
      full: true,
      signal,
      onProgress: (n) => counter.update(n),
      ...(owner !== null ? { owner: { uid: owner.uid, gid: owner.gid } } : {}),
    },
    pgdata,
  );
  counter.done(backup.bytes);

  // 5. Configuration.
  await appendFile(join(pgdata, "postgresql.conf"), postgresqlConfBlock({ port: e.port, socketDir: dir, safekeeperIds: c.safekeepers.map((s) => s.id), user: e.pg_config }));
  await writeFile(join(pgdata, "pg_hba.conf"), pgHbaConf());
  for (const f of ["postmaster.pid", "standby.signal", "recovery.signal"]) await rm(join(pgdata, f), { force: true });
  await chmod(pgdata, 0o700);
  // The endpoint dir holds the Unix socket and the log: the server user writes there.
  for (const p of [dir, join(pgdata, "postgresql.conf"), join(pgdata, "pg_hba.conf")]) await chownToServerUser(p);

  // 6. Start.
  await progress.step(`endpoint ${name}: starting PostgreSQL on port ${e.port}`, () => pgCtlStart(paths, name));

  // 7. Slots, reserving WAL from startLsn for every safekeeper.
  await ensureComputeSlots(e.port, c);

  // 8. Register with the safekeepers under the new term.
  const q = Math.floor(c.safekeepers.length / 2) + 1;
  let registered = 0;
  const errors: string[] = [];
  for (const sk of c.safekeepers) {
    try {
      await registerCompute(sk, tenant, timeline, connstrKeyValue(e.port), elected.term, formatLsn(startLsn));
      registered++;
    } catch (err) {
      errors.push((err as Error).message);
    }
  }
  if (registered < q) {
    await stopEndpointCompute(paths, c, name, { immediate: true }).catch(() => undefined);
    throw new StrataError("unavailable", `Only ${registered} of ${c.safekeepers.length} safekeepers accepted the compute (need ${q}): ${errors.join("; ")}`);
  }
  await waitForSafekeepersConnected(c, tenant, timeline, skIds, progress);
  return { connstr: connstrUri(e.port), alreadyRunning: false, startLsn: formatLsn(startLsn), term: elected.term.toString(), backupBytes: backup.bytes };
}

/**
 * Creates the physical slots sk_<id> of every configured safekeeper on the
 * compute at `port` where missing (reserving WAL from now on); returns the
 * names of the slots it created.
 */
export async function ensureComputeSlots(port: number, c: RepoConfig): Promise<string[]> {
  const slots = c.safekeepers.map((sk) => `sk_${sk.id}`);
  const created = await psql(
    port,
    slots.map((s) => `SELECT '${s}' FROM pg_create_physical_replication_slot('${s}', true) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '${s}');`).join("\n"),
  );
  return created === "" ? [] : created.split("\n");
}

/** Registers the compute at `connstr` with safekeeper `sk` for the timeline under `term`, its WAL starting at `startLsn`. */
export async function registerCompute(sk: SafekeeperConf, tenant: TenantId, timeline: TimelineId, connstr: string, term: bigint, startLsn: string | null): Promise<void> {
  await callJson(safekeeperApi(sk), "PUT", `/v1/tenant/${tenant}/timeline/${timeline}/compute`, { connstr, term: term.toString(), start_lsn: startLsn }, { timeoutMs: 30_000 });
}

/** Stops endpoint `name` (fast: shutdown checkpoint; immediate: no checkpoint). Returns false when it was not running. */
export async function stopEndpointCompute(paths: RepoPaths, c: RepoConfig, name: string, opts: { immediate?: boolean } = {}): Promise<boolean> {
  if (c.endpoints[name] === undefined) throw unknownEndpoint(c, name);
  const pgdata = paths.endpointPgdata(name);
  const pid = await computePid(pgdata);
  if (pid === undefined) return false;
  const r = await runPgTool("pg_ctl", ["stop", "-D", pgdata, "-m", opts.immediate ? "immediate" : "fast", "-w", "-t", String(PG_CTL_TIMEOUT_S)], {
    asServerUser: true,
    timeoutMs: (PG_CTL_TIMEOUT_S + 15) * 1000,
  });
  if (r.code !== 0) {
    // pg_ctl could not stop it in time: the postmaster gets SIGKILL (its children exit on postmaster death).
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* gone */
    }
  }
  return true;
}

