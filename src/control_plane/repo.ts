/**
 * The repository directory of a local strata deployment (the `neon_local`
 * of this system): where `strata init` writes the configuration and where
 * every service and compute keeps its data, pid file and log.
 *
 *   <repo>/config.json                     this module's RepoConfig
 *   <repo>/config.lock                     held while a command rewrites config.json
 *   <repo>/pageserver/{data/,pageserver.pid,pageserver.log}
 *   <repo>/safekeepers/sk<id>/{data/,safekeeper.pid,safekeeper.log}
 *   <repo>/endpoints/<name>/{pgdata/,compute.log}   (pid: pgdata/postmaster.pid)
 *   <repo>/remote_storage/                  the default (file://) remote storage
 *
 * Which directory: `--repo-dir DIR`, else `$STRATA_REPO_DIR`, else `./.strata`.
 *
 * The configuration is the control plane's memory: ports chosen at init (free
 * at that moment, then persisted so a restart uses the same ones and several
 * deployments can run side by side), the remote storage URL, the default
 * tenant, per tenant the branch name -> timeline id mapping and the attach
 * generation counter (contract B: the control plane is the generation
 * authority), and every endpoint's settings. Services know nothing of branch
 * names or endpoints; only this file does.
 *
 * Crash safety: config.json is replaced atomically (write temp, fsync,
 * rename), so a crash leaves the old or the new version. Concurrent commands
 * serialize their read-modify-write through an exclusive lock file; a lock
 * older than LOCK_STALE_MS is a leftover of a killed command and is taken over.
 * The file is validated on load: a hand-edited or foreign file is a clear
 * StrataError, never a crash deep inside a command.
 */
import { open, readFile, rename, rm, stat, writeFile, mkdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import { StrataError } from "../lib/errors.js";
import { parseTenantId, parseTimelineId, type TenantId, type TimelineId } from "../lib/id.js";
import { sleep } from "../lib/tasks.js";

/** Environment variable naming the repo dir when --repo-dir is absent. */
export const REPO_DIR_ENV = "STRATA_REPO_DIR";
/** The repo dir when neither --repo-dir nor $STRATA_REPO_DIR is given. */
export const DEFAULT_REPO_DIR = ".strata";
/** Version of config.json's shape; a different one is refused rather than misread. */
export const CONFIG_VERSION = 1;
/** How long a command waits for another one's config lock (they hold it for milliseconds). */
export const LOCK_WAIT_MS = 10_000;
/** A lock file older than this was left by a killed command (no command holds it this long). */
export const LOCK_STALE_MS = 60_000;
/** Endpoint names become directory names and appear in messages: keep them simple. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

export interface ServicePorts {
  pg_port: number;
  http_port: number;
}

export interface SafekeeperConf extends ServicePorts {
  id: number;
}

export interface TenantConf {
  /** The generation of the tenant's latest attachment (1 at create; +1 per attach). */
  generation: number;
  /** Branch name -> timeline id. */
  branches: Record<string, TimelineId>;
}

export interface EndpointConf {
  tenant_id: TenantId;
  branch: string;
  port: number;
  /** Persisted postgresql.conf settings given with --pg-config KEY=VALUE. */
  pg_config: Record<string, string>;
}

export interface RepoConfig {
  version: number;
  pageserver: ServicePorts;
  safekeepers: SafekeeperConf[];
  remote_storage: string;
  default_tenant: TenantId | null;
  tenants: Record<string, TenantConf>;
  endpoints: Record<string, EndpointConf>;
}

/** The repo dir chosen by flag, environment or default, as an absolute path. */
export function resolveRepoDir(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  const chosen = flag ?? env[REPO_DIR_ENV] ?? DEFAULT_REPO_DIR;
  if (chosen.trim() === "") throw new StrataError("invalid_argument", "The repo dir must not be empty (--repo-dir or $STRATA_REPO_DIR)");
  return resolve(chosen);
}

/** Validates a user-given name (branch, endpoint). */
export function checkName(kind: string, name: string): string {
  if (!NAME_RE.test(name)) throw new StrataError("invalid_argument", `Invalid ${kind} name "${name}": use 1-63 letters, digits, '_', '.', '-', starting with a letter or digit`);
  return name;
}

/** Paths inside a repo dir. */
export class RepoPaths {
  constructor(readonly root: string) {}
  get config(): string {
    return join(this.root, "config.json");
  }
  get lock(): string {
    return join(this.root, "config.lock");
  }
  get pageserverDir(): string {
    return join(this.root, "pageserver");
  }
  get pageserverData(): string {
    return join(this.pageserverDir, "data");
  }
  get pageserverPid(): string {
    return join(this.pageserverDir, "pageserver.pid");
  }
  get pageserverLog(): string {
    return join(this.pageserverDir, "pageserver.log");
  }
  safekeeperDir(id: number): string {
    return join(this.root, "safekeepers", `sk${id}`);
  }
  safekeeperData(id: number): string {
    return join(this.safekeeperDir(id), "data");
  }
  safekeeperPid(id: number): string {
    return join(this.safekeeperDir(id), "safekeeper.pid");
  }
  safekeeperLog(id: number): string {
    return join(this.safekeeperDir(id), "safekeeper.log");
  }
  get endpointsRoot(): string {
    return join(this.root, "endpoints");
  }
  endpointDir(name: string): string {
    return join(this.endpointsRoot, name);
  }
  endpointPgdata(name: string): string {
    return join(this.endpointDir(name), "pgdata");
  }
  endpointLog(name: string): string {
    return join(this.endpointDir(name), "compute.log");
  }
  get defaultRemoteStorage(): string {
    return join(this.root, "remote_storage");
  }
}

function bad(path: string, what: string): StrataError {
  return new StrataError("corrupt_data", `${path}: ${what}`);
}

function port(v: unknown, path: string, field: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > 65535) throw bad(path, `${field} must be a port number, got ${JSON.stringify(v)}`);
  return v;
}

function obj(v: unknown, path: string, field: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw bad(path, `${field} must be an object`);
  return v as Record<string, unknown>;
}

function str(v: unknown, path: string, field: string): string {
  if (typeof v !== "string") throw bad(path, `${field} must be a string`);
  return v;
}

/** Validates parsed JSON as a RepoConfig (pure; `path` only names the file in errors). */
export function parseRepoConfig(json: unknown, path = "config.json"): RepoConfig {
  const o = obj(json, path, "the document");
  if (o.version !== CONFIG_VERSION) throw bad(path, `unsupported config version ${JSON.stringify(o.version)} (this strata writes ${CONFIG_VERSION})`);
  const ps = obj(o.pageserver, path, "pageserver");
  if (!Array.isArray(o.safekeepers) || o.safekeepers.length === 0) throw bad(path, "safekeepers must be a non-empty array");
  const safekeepers = o.safekeepers.map((s, i) => {
    const so = obj(s, path, `safekeepers[${i}]`);
    if (typeof so.id !== "number" || !Number.isInteger(so.id) || so.id < 1) throw bad(path, `safekeepers[${i}].id must be a positive integer`);
    return { id: so.id, pg_port: port(so.pg_port, path, `safekeepers[${i}].pg_port`), http_port: port(so.http_port, path, `safekeepers[${i}].http_port`) };
  });
  const tenants: Record<string, TenantConf> = {};
  for (const [tid, t] of Object.entries(obj(o.tenants ?? {}, path, "tenants"))) {
    const to = obj(t, path, `tenants.${tid}`);
    const branches: Record<string, TimelineId> = {};
    for (const [name, tl] of Object.entries(obj(to.branches ?? {}, path, `tenants.${tid}.branches`))) branches[name] = parseTimelineId(str(tl, path, `tenants.${tid}.branches.${name}`));
    const generation = to.generation;
    if (typeof generation !== "number" || !Number.isInteger(generation) || generation < 1) throw bad(path, `tenants.${tid}.generation must be a positive integer`);
    tenants[parseTenantId(tid)] = { generation, branches };
  }
  const endpoints: Record<string, EndpointConf> = {};
  for (const [name, e] of Object.entries(obj(o.endpoints ?? {}, path, "endpoints"))) {
    const eo = obj(e, path, `endpoints.${name}`);
    const pgConfig: Record<string, string> = {};
    for (const [k, v] of Object.entries(obj(eo.pg_config ?? {}, path, `endpoints.${name}.pg_config`))) pgConfig[k] = str(v, path, `endpoints.${name}.pg_config.${k}`);
    endpoints[name] = {
      tenant_id: parseTenantId(str(eo.tenant_id, path, `endpoints.${name}.tenant_id`)),
      branch: str(eo.branch, path, `endpoints.${name}.branch`),
      port: port(eo.port, path, `endpoints.${name}.port`),
      pg_config: pgConfig,
    };
  }
  return {
    version: CONFIG_VERSION,
    pageserver: { pg_port: port(ps.pg_port, path, "pageserver.pg_port"), http_port: port(ps.http_port, path, "pageserver.http_port") },
    safekeepers,
    remote_storage: str(o.remote_storage, path, "remote_storage"),
    default_tenant: o.default_tenant === null || o.default_tenant === undefined ? null : parseTenantId(str(o.default_tenant, path, "default_tenant")),
    tenants,
    endpoints,
  };
}

/** True when `dir` holds an initialized deployment. */
export async function isInitialized(paths: RepoPaths): Promise<boolean> {
  try {
    await stat(paths.config);
    return true;
  } catch {
    return false;
  }
}

/** Loads and validates config.json; a missing one is "not initialized". */
export async function loadConfig(paths: RepoPaths): Promise<RepoConfig> {
  let text: string;
  try {
    text = await readFile(paths.config, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") {
      throw new StrataError("not_found", `No strata deployment in ${paths.root} (run "strata init" or "strata up", or pass --repo-dir)`);
    }
    throw new StrataError("io_error", `Cannot read ${paths.config}: ${(e as Error).message}`, { cause: e });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new StrataError("corrupt_data", `${paths.config} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  return parseRepoConfig(json, paths.config);
}

/** Writes config.json atomically (temp file, fsync, rename). Caller holds the lock. */
export async function saveConfig(paths: RepoPaths, config: RepoConfig): Promise<void> {
  await mkdir(paths.root, { recursive: true });
  const tmp = `${paths.config}.tmp`;
  const fh = await open(tmp, "w", 0o644);
  try {
    await fh.writeFile(JSON.stringify(config, null, 2) + "\n");
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, paths.config);
}

/** Runs `fn` holding the config lock (exclusive create of config.lock). */
export async function withConfigLock<T>(paths: RepoPaths, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      const fh = await open(paths.lock, "wx");
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw new StrataError("io_error", `Cannot create ${paths.lock}: ${(e as Error).message}`, { cause: e });
      const st = await stat(paths.lock).catch(() => undefined);
      if (st !== undefined && Date.now() - st.mtimeMs > LOCK_STALE_MS) {
        await rm(paths.lock, { force: true });
        continue;
      }
      if (Date.now() > deadline) throw new StrataError("timeout", `Another strata command holds ${paths.lock} for more than ${LOCK_WAIT_MS} ms (remove the file if no command is running)`);
      await sleep(50);
    }
  }
  try {
    return await fn();
  } finally {
    await rm(paths.lock, { force: true });
  }
}

/** Read-modify-write of config.json under the lock; returns the new config. */
export async function updateConfig(paths: RepoPaths, mutate: (c: RepoConfig) => void | Promise<void>): Promise<RepoConfig> {
  return withConfigLock(paths, async () => {
    const c = await loadConfig(paths);
    await mutate(c);
    await saveConfig(paths, c);
    return c;
  });
}

/** The tenant a command means: --tenant-id, else the default tenant. */
export function chooseTenant(config: RepoConfig, flag: string | undefined): TenantId {
  if (flag !== undefined) {
    const t = parseTenantId(flag);
    if (config.tenants[t] === undefined) throw new StrataError("not_found", `Unknown tenant ${t} (strata tenant list shows the known ones)`);
    return t;
  }
  if (config.default_tenant === null) throw new StrataError("not_found", `No default tenant yet: run "strata tenant create" or "strata up", or pass --tenant-id`);
  return config.default_tenant;
}

/** The timeline id of branch `name` of `tenant`, or a not_found error listing the branches. */
export function branchTimeline(config: RepoConfig, tenant: TenantId, name: string): TimelineId {
  const t = config.tenants[tenant];
  const tl = t?.branches[name];
  if (tl === undefined) {
    const known = Object.keys(t?.branches ?? {});
    throw new StrataError("not_found", `Unknown branch "${name}" of tenant ${tenant}${known.length > 0 ? ` (branches: ${known.join(", ")})` : " (it has no branches yet)"}`);
  }
  return tl;
}

/** The branch name of a timeline, if it has one. */
export function branchName(config: RepoConfig, tenant: TenantId, timeline: string): string | undefined {
  for (const [name, tl] of Object.entries(config.tenants[tenant]?.branches ?? {})) if (tl === timeline) return name;
  return undefined;
}

/** Writes a small text file (pid files). */
export async function writeTextFile(path: string, text: string): Promise<void> {
  await writeFile(path, text);
}
