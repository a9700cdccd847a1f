/**
 * The storage services of a local deployment — N safekeepers and one
 * pageserver — as background processes: init, start, stop, status.
 *
 * `initRepo` creates the repo dir and its config (ports free at that moment,
 * persisted). `startServices` starts whatever is not running (safekeepers
 * first: the pageserver streams from them), each detached with pid file and
 * log (supervisor.ts), and waits for each to answer `/v1/status`.
 * `stopServices` stops the pageserver before the safekeepers (it flushes and
 * reports to them on the way down). Endpoints are stopped before either by
 * the caller (endpoint.ts), so no compute waits on a missing quorum.
 *
 * Flags that depend on other engineers' work (`--remote-storage` of the
 * services, contracts B and C) are passed only when the service's command
 * line declares them (`ServiceCapabilities`, probed by the CLI layer).
 */
import { chmod, mkdir } from "node:fs/promises";
import { StrataError } from "../lib/errors.js";
import { callJson, type ServiceApi } from "./http_client.js";
import { allocatePorts, checkPortFree } from "./ports.js";
import type { Progress } from "./progress.js";
import { CONFIG_VERSION, isInitialized, saveConfig, withConfigLock, type RepoConfig, type RepoPaths, type SafekeeperConf } from "./repo.js";
import { runningPid, startService, stopService, type ServiceSpec } from "./supervisor.js";

/** Most safekeepers a local deployment may have (each is a process on this machine). */
export const MAX_SAFEKEEPERS = 7;
export const LOCALHOST = "127.0.0.1";

/** Which optional flags the services' command lines declare. */
export interface ServiceCapabilities {
  readonly pageserverRemoteStorage: boolean;
  readonly safekeeperRemoteStorage: boolean;
}

export function pageserverApi(c: RepoConfig): ServiceApi {
  return { label: "pageserver", baseUrl: `http://${LOCALHOST}:${c.pageserver.http_port}` };
}

export function safekeeperApi(sk: SafekeeperConf): ServiceApi {
  return { label: `safekeeper ${sk.id}`, baseUrl: `http://${LOCALHOST}:${sk.http_port}` };
}

export interface InitOptions {
  readonly safekeepers: number;
  readonly remoteStorage?: string;
}

/** Creates the repo dir and config.json; refuses an initialized one. */
export async function initRepo(paths: RepoPaths, opts: InitOptions): Promise<RepoConfig> {
  if (!Number.isInteger(opts.safekeepers) || opts.safekeepers < 1 || opts.safekeepers > MAX_SAFEKEEPERS) {
    throw new StrataError("invalid_argument", `--safekeepers must be an integer in [1, ${MAX_SAFEKEEPERS}], got ${opts.safekeepers}`);
  }
  const remote = opts.remoteStorage ?? `file://${paths.defaultRemoteStorage}`;
  // A bad URL is refused now, not when the pageserver starts. (Loaded lazily: the storage SDKs are heavy.)
  const { parseRemoteStorageUrl } = await import("../remote_storage/config.js");
  parseRemoteStorageUrl(remote);
  await mkdir(paths.root, { recursive: true });
  // PostgreSQL processes run as the postgres user when we are root: they must traverse the repo dir.
  await chmod(paths.root, 0o755);
  return withConfigLock(paths, async () => {
    if (await isInitialized(paths)) throw new StrataError("invalid_argument", `${paths.root} already holds a deployment (config.json exists)`);
    const ports = await allocatePorts(2 + 2 * opts.safekeepers);
    const take = () => ports.shift()!;
    const config: RepoConfig = {
      version: CONFIG_VERSION,
      pageserver: { pg_port: take(), http_port: take() },
      safekeepers: Array.from({ length: opts.safekeepers }, (_, i) => ({ id: i + 1, pg_port: take(), http_port: take() })),
      remote_storage: remote,
      default_tenant: null,
      tenants: {},
      endpoints: {},
    };
    if (remote.startsWith("file://")) await mkdir(paths.defaultRemoteStorage, { recursive: true });
    for (const sk of config.safekeepers) await mkdir(paths.safekeeperData(sk.id), { recursive: true });
    await mkdir(paths.pageserverData, { recursive: true });
    await mkdir(paths.endpointsRoot, { recursive: true, mode: 0o755 });
    await saveConfig(paths, config);
    return config;
  });
}

export function safekeeperSpec(paths: RepoPaths, c: RepoConfig, sk: SafekeeperConf, caps: ServiceCapabilities): ServiceSpec {
  const args = ["--id", String(sk.id), "--datadir", paths.safekeeperData(sk.id), "--pg-port", String(sk.pg_port), "--http-port", String(sk.http_port), "--listen-host", LOCALHOST];
  const peers = c.safekeepers.filter((p) => p.id !== sk.id).map((p) => `${p.id}=${LOCALHOST}:${p.pg_port}:${p.http_port}`);
  if (peers.length > 0) args.push("--peers", peers.join(","));
  if (caps.safekeeperRemoteStorage) args.push("--remote-storage", c.remote_storage);
  return {
    label: `safekeeper ${sk.id}`,
    subcommand: "safekeeper",
    args,
    pidFile: paths.safekeeperPid(sk.id),
    logFile: paths.safekeeperLog(sk.id),
    readyUrl: `${safekeeperApi(sk).baseUrl}/v1/status`,
  };
}

export function pageserverSpec(paths: RepoPaths, c: RepoConfig, caps: ServiceCapabilities): ServiceSpec {
  const args = [
    "--datadir", paths.pageserverData,
    "--pg-port", String(c.pageserver.pg_port),
    "--http-port", String(c.pageserver.http_port),
    "--listen-host", LOCALHOST,
    "--safekeepers", c.safekeepers.map((s) => `${LOCALHOST}:${s.pg_port}`).join(","),
  ];
  if (caps.pageserverRemoteStorage) args.push("--remote-storage", c.remote_storage);
  return {
    label: "pageserver",
    subcommand: "pageserver",
    args,
    pidFile: paths.pageserverPid,
    logFile: paths.pageserverLog,
    readyUrl: `${pageserverApi(c).baseUrl}/v1/status`,
  };
}

async function startOne(spec: ServiceSpec, ports: readonly number[], progress: Progress): Promise<"started" | "running"> {
  if ((await runningPid(spec.pidFile, spec.subcommand)) !== undefined) return "running";
  for (const p of ports) await checkPortFree(p, spec.label);
  await progress.step(`starting ${spec.label}`, () => startService(spec));
  return "started";
}

/** Starts every service that is not running; returns what it did per service. */
export async function startServices(paths: RepoPaths, c: RepoConfig, caps: ServiceCapabilities, progress: Progress): Promise<Record<string, "started" | "running">> {
  const out: Record<string, "started" | "running"> = {};
  await mkdir(paths.pageserverData, { recursive: true });
  for (const sk of c.safekeepers) await mkdir(paths.safekeeperData(sk.id), { recursive: true });
  const sks = await Promise.all(c.safekeepers.map((sk) => startOne(safekeeperSpec(paths, c, sk, caps), [sk.pg_port, sk.http_port], progress)));
  c.safekeepers.forEach((sk, i) => (out[`safekeeper ${sk.id}`] = sks[i]!));
  out.pageserver = await startOne(pageserverSpec(paths, c, caps), [c.pageserver.pg_port, c.pageserver.http_port], progress);
  return out;
}

/** Stops the pageserver, then the safekeepers. */
export async function stopServices(paths: RepoPaths, c: RepoConfig, opts: { immediate?: boolean }, progress: Progress): Promise<void> {
  const r = await stopService(paths.pageserverPid, "pageserver", opts);
  if (r !== "not_running") progress.line(`pageserver ${r}`);
  const sks = await Promise.all(c.safekeepers.map((sk) => stopService(paths.safekeeperPid(sk.id), "safekeeper", opts)));
  c.safekeepers.forEach((sk, i) => {
    if (sks[i] !== "not_running") progress.line(`safekeeper ${sk.id} ${sks[i]}`);
  });
}

/** Throws a clear "service down" error unless the pageserver and a quorum of safekeepers run. */
export async function requireServices(paths: RepoPaths, c: RepoConfig, opts: { pageserver?: boolean; safekeepers?: boolean } = { pageserver: true, safekeepers: true }): Promise<void> {
  if (opts.pageserver !== false && (await runningPid(paths.pageserverPid, "pageserver")) === undefined) {
    throw new StrataError("unavailable", `The pageserver is not running (pid file ${paths.pageserverPid}); run "strata start"`);
  }
  if (opts.safekeepers !== false) {
    const up = [];
    for (const sk of c.safekeepers) if ((await runningPid(paths.safekeeperPid(sk.id), "safekeeper")) !== undefined) up.push(sk.id);
    const q = Math.floor(c.safekeepers.length / 2) + 1;
    if (up.length < q) throw new StrataError("unavailable", `Only ${up.length} of ${c.safekeepers.length} safekeepers are running (need ${q}); run "strata start"`);
  }
}

export interface ServiceStatus {
  pid: number | null;
  pg_port: number;
  http_port: number;
  datadir: string;
  state: "running" | "stopped";
}

export async function pageserverStatus(paths: RepoPaths, c: RepoConfig): Promise<ServiceStatus> {
  const pid = (await runningPid(paths.pageserverPid, "pageserver")) ?? null;
  return { pid, pg_port: c.pageserver.pg_port, http_port: c.pageserver.http_port, datadir: paths.pageserverData, state: pid === null ? "stopped" : "running" };
}

export async function safekeeperStatuses(paths: RepoPaths, c: RepoConfig): Promise<(ServiceStatus & { id: number })[]> {
  return Promise.all(
    c.safekeepers.map(async (sk) => {
      const pid = (await runningPid(paths.safekeeperPid(sk.id), "safekeeper")) ?? null;
      return { id: sk.id, pid, pg_port: sk.pg_port, http_port: sk.http_port, datadir: paths.safekeeperData(sk.id), state: pid === null ? ("stopped" as const) : ("running" as const) };
    }),
  );
}

/** Pageserver timeline JSON (the fields the control plane reads; contract A). */
export interface PsTimeline {
  tenant_id: string;
  timeline_id: string;
  state?: string;
  ancestor_timeline_id: string | null;
  ancestor_lsn: string | null;
  last_record_lsn: string;
  disk_consistent_lsn: string;
  remote_consistent_lsn: string;
  latest_gc_cutoff_lsn?: string;
  initdb_lsn?: string;
  system_id?: string | null;
  pg_version?: number;
  initial_lsn?: string;
}

export interface PsTenant {
  id: string;
  state?: string;
  generation?: number;
  broken_reason?: string;
}

export function listPsTimelines(c: RepoConfig, tenant: string): Promise<PsTimeline[]> {
  return callJson<PsTimeline[]>(pageserverApi(c), "GET", `/v1/tenant/${tenant}/timeline`);
}

export function getPsTimeline(c: RepoConfig, tenant: string, timeline: string): Promise<PsTimeline> {
  return callJson<PsTimeline>(pageserverApi(c), "GET", `/v1/tenant/${tenant}/timeline/${timeline}`);
}
