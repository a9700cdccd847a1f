/**
 * `strata init | start | stop | status | up`: the local deployment as a whole.
 *
 *   strata init [--safekeepers N] [--remote-storage URL]   repo dir + config (ports chosen free, persisted)
 *   strata start                                           start whatever is not running, then
 *                                                          rejoin safekeepers to running endpoints
 *                                                          (control_plane/rejoin.ts)
 *   strata stop [--immediate]                              endpoints, then pageserver, then safekeepers
 *   strata status [--json]                                 services, endpoints, tenants and timelines
 *   strata up [--safekeepers N]                            init if needed, start, default tenant,
 *                                                          branch main, endpoint main; prints the
 *                                                          connection string on the last line
 *
 * All take --repo-dir (else $STRATA_REPO_DIR, else ./.strata). Progress goes
 * to stderr; stdout carries only results. `up` is idempotent: every step
 * checks first, so running it on a deployment that is up just prints the
 * connection string.
 */
import type { Command } from "commander";
import { allocatePorts } from "../control_plane/ports.js";
import { isInitialized, loadConfig, updateConfig, type RepoConfig, type RepoPaths } from "../control_plane/repo.js";
import { initRepo, pageserverStatus, safekeeperStatuses, startServices, stopServices } from "../control_plane/services.js";
import { endpointStatus, startEndpointCompute, stopEndpointCompute } from "../control_plane/endpoint.js";
import { createRootBranch, createTenant, listTimelines } from "../control_plane/tenants.js";
import { endpointSafekeeperLinks, rejoinAllEndpoints } from "../control_plane/rejoin.js";
import type { Progress } from "../control_plane/progress.js";
import { action, printJson, progressFor, repoOption, repoPaths, serviceCapabilities, type RepoFlags } from "./cli_common.js";
import { StrataError } from "../lib/errors.js";
import type { TenantId, TimelineId } from "../lib/id.js";

/** The branch and endpoint `strata up` creates. */
export const MAIN_BRANCH = "main";
export const MAIN_ENDPOINT = "main";

function safekeeperCount(text: string | undefined): number {
  if (text === undefined) return 1;
  const n = Number(text);
  if (!/^[0-9]+$/.test(text) || !Number.isInteger(n)) throw new StrataError("invalid_argument", `--safekeepers must be a positive integer, got "${text}"`);
  return n;
}

/** Stops every running endpoint (fast or immediate). */
export async function stopAllEndpoints(paths: RepoPaths, c: RepoConfig, immediate: boolean, progress: Progress): Promise<void> {
  for (const name of Object.keys(c.endpoints)) {
    if (await stopEndpointCompute(paths, c, name, { immediate })) progress.line(`endpoint ${name} stopped`);
  }
}

/** Adds an endpoint to the config when missing (port chosen free). */
export async function ensureEndpointConf(paths: RepoPaths, name: string, tenant: TenantId, branch: string): Promise<RepoConfig> {
  const c = await loadConfig(paths);
  if (c.endpoints[name] !== undefined) return c;
  const used = [c.pageserver.pg_port, c.pageserver.http_port, ...c.safekeepers.flatMap((s) => [s.pg_port, s.http_port]), ...Object.values(c.endpoints).map((e) => e.port)];
  const [port] = await allocatePorts(1, used);
  return updateConfig(paths, (cfg) => {
    cfg.endpoints[name] ??= { tenant_id: tenant, branch, port: port!, pg_config: {} };
  });
}

export async function statusJson(paths: RepoPaths, c: RepoConfig) {
  const ps = await pageserverStatus(paths, c);
  const sks = await safekeeperStatuses(paths, c);
  const endpoints = [];
  for (const name of Object.keys(c.endpoints)) {
    const s = await endpointStatus(paths, c, name);
    // Which safekeepers stream from a running compute (one bounded read per safekeeper).
    const safekeepers = s.state === "running" && s.timeline_id !== null ? await endpointSafekeeperLinks(c, s.tenant_id as TenantId, s.timeline_id as TimelineId, s.port) : [];
    endpoints.push({ name, branch: s.branch, tenant_id: s.tenant_id, timeline_id: s.timeline_id, pid: s.pid, port: s.port, connstr: s.connstr, state: s.state, pgdata: s.pgdata, safekeepers });
  }
  const tenants = [];
  for (const id of Object.keys(c.tenants)) {
    const tls = ps.pid === null ? [] : await listTimelines(c, id as TenantId).catch(() => []);
    const named = Object.entries(c.tenants[id]!.branches);
    const timelines =
      tls.length > 0
        ? tls
        : named.map(([branch, tl]) => ({ id: tl, branch, ancestor: null, ancestor_branch: null, ancestor_lsn: null, last_record_lsn: null, disk_consistent_lsn: null, remote_consistent_lsn: null, state: "unknown" }));
    tenants.push({ id, default: c.default_tenant === id, generation: c.tenants[id]!.generation, timelines });
  }
  return {
    repo_dir: paths.root,
    remote_storage: c.remote_storage,
    pageserver: { pid: ps.pid, pg_port: ps.pg_port, http_port: ps.http_port, datadir: ps.datadir, state: ps.state },
    safekeepers: sks.map((s) => ({ id: s.id, pid: s.pid, pg_port: s.pg_port, http_port: s.http_port, datadir: s.datadir, state: s.state })),
    endpoints,
    tenants,
  };
}

function printStatus(s: Awaited<ReturnType<typeof statusJson>>): void {
  const out: string[] = [];
  const pid = (p: number | null) => (p === null ? "stopped" : `pid ${p}`);
  out.push(`repo ${s.repo_dir}  remote storage ${s.remote_storage}`);
  out.push(`pageserver      ${pid(s.pageserver.pid)}  pg ${s.pageserver.pg_port}  http ${s.pageserver.http_port}  ${s.pageserver.datadir}`);
  for (const sk of s.safekeepers) out.push(`safekeeper ${sk.id}    ${pid(sk.pid)}  pg ${sk.pg_port}  http ${sk.http_port}  ${sk.datadir}`);
  for (const e of s.endpoints) {
    const sks = e.safekeepers.length === 0 ? "" : `  safekeepers ${e.safekeepers.map((k) => `${k.id}:${k.state}`).join(" ")}`;
    out.push(`endpoint ${e.name}  ${pid(e.pid)}  branch ${e.branch}  ${e.connstr}${sks}`);
  }
  for (const t of s.tenants) {
    out.push(`tenant ${t.id}${t.default ? " (default)" : ""}  generation ${t.generation}`);
    for (const tl of t.timelines) {
      out.push(
        `  ${tl.branch ?? "(unnamed)"} ${tl.id}${tl.ancestor ? ` from ${tl.ancestor_branch ?? tl.ancestor}@${tl.ancestor_lsn}` : ""}  last_record ${tl.last_record_lsn ?? "?"}  disk_consistent ${tl.disk_consistent_lsn ?? "?"}  remote_consistent ${tl.remote_consistent_lsn ?? "?"}`,
      );
    }
  }
  process.stdout.write(out.join("\n") + "\n");
}

export function register(program: Command): void {
  repoOption(program.command("init"))
    .description("create a local deployment (repo dir, ports, configuration)")
    .option("--safekeepers <n>", "number of safekeepers (default 1)")
    .option("--remote-storage <url>", "remote storage URL (file:///path, s3://bucket/prefix?..., azure://container/prefix?...); default file://<repo>/remote_storage")
    .action(
      action("init", async (flags: RepoFlags & { safekeepers?: string; remoteStorage?: string }) => {
        const paths = repoPaths(flags);
        const c = await initRepo(paths, { safekeepers: safekeeperCount(flags.safekeepers), ...(flags.remoteStorage !== undefined ? { remoteStorage: flags.remoteStorage } : {}) });
        process.stdout.write(`initialized ${paths.root}: pageserver pg ${c.pageserver.pg_port} http ${c.pageserver.http_port}; ${c.safekeepers.map((s) => `safekeeper ${s.id} pg ${s.pg_port} http ${s.http_port}`).join("; ")}; remote storage ${c.remote_storage}\n`);
      }),
    );

  repoOption(program.command("start"))
    .description("start the safekeepers and the pageserver (whatever is not running), then rejoin safekeepers to running endpoints")
    .option("--quiet", "no progress lines")
    .action(
      action("start", async (flags: RepoFlags) => {
        const paths = repoPaths(flags);
        const c = await loadConfig(paths);
        const progress = progressFor(flags);
        const r = await startServices(paths, c, await serviceCapabilities(), progress);
        process.stdout.write(Object.entries(r).map(([k, v]) => `${k}: ${v === "started" ? "started" : "already running"}`).join("\n") + "\n");
        // Safekeepers that missed an endpoint start (or were down) join the running computes.
        const joined = await rejoinAllEndpoints(paths, c, progress);
        for (const j of joined) process.stdout.write(`endpoint ${j.endpoint}: term ${j.term}, safekeepers streaming: ${j.streaming.join(", ") || "none"}\n`);
      }),
    );

  repoOption(program.command("stop"))
    .description("stop endpoints, then the pageserver, then the safekeepers")
    .option("--immediate", "no clean shut-down: SIGKILL the services, pg_ctl -m immediate the computes")
    .action(
      action("stop", async (flags: RepoFlags & { immediate?: boolean }) => {
        const paths = repoPaths(flags);
        const c = await loadConfig(paths);
        const progress = progressFor(flags);
        await stopAllEndpoints(paths, c, flags.immediate === true, progress);
        await stopServices(paths, c, { immediate: flags.immediate === true }, progress);
        process.stdout.write("stopped\n");
      }),
    );

  repoOption(program.command("status"))
    .description("services, endpoints, tenants and timelines with their LSNs")
    .option("--json", "machine-readable output")
    .action(
      action("status", async (flags: RepoFlags) => {
        const paths = repoPaths(flags);
        const s = await statusJson(paths, await loadConfig(paths));
        if (flags.json) printJson(s);
        else printStatus(s);
      }),
    );

  repoOption(program.command("up"))
    .description("bring everything up: init if needed, start services, default tenant, branch main, endpoint main; prints the connection string last")
    .option("--safekeepers <n>", "number of safekeepers when initializing (default 1)")
    .option("--remote-storage <url>", "remote storage URL when initializing (default file://<repo>/remote_storage)")
    .option("--quiet", "no progress lines")
    .action(
      action("up", async (flags: RepoFlags & { safekeepers?: string; remoteStorage?: string }) => {
        const paths = repoPaths(flags);
        const progress = progressFor(flags);
        if (!(await isInitialized(paths))) {
          await progress.step(`initializing ${paths.root}`, () =>
            initRepo(paths, { safekeepers: safekeeperCount(flags.safekeepers), ...(flags.remoteStorage !== undefined ? { remoteStorage: flags.remoteStorage } : {}) }),
          );
        } else if (flags.safekeepers !== undefined && safekeeperCount(flags.safekeepers) !== (await loadConfig(paths)).safekeepers.length) {
          progress.line(`note: ${paths.root} is already initialized with ${(await loadConfig(paths)).safekeepers.length} safekeeper(s); --safekeepers is ignored`);
        }
        let c = await loadConfig(paths);
        await startServices(paths, c, await serviceCapabilities(), progress);
        if (c.default_tenant === null) {
          const t = await progress.step("creating the default tenant", () => createTenant(paths, c, { setDefault: true }));
          progress.line(`tenant ${t}`);
          c = await loadConfig(paths);
        }
        const tenant = c.default_tenant!;
        if (c.tenants[tenant]?.branches[MAIN_BRANCH] === undefined) {
          await createRootBranch(paths, c, tenant, MAIN_BRANCH, progress);
        }
        await ensureEndpointConf(paths, MAIN_ENDPOINT, tenant, MAIN_BRANCH);
        c = await loadConfig(paths);
        const r = await startEndpointCompute(paths, c, MAIN_ENDPOINT, progress);
        if (r.alreadyRunning) progress.line(`endpoint ${MAIN_ENDPOINT} is already running`);
        process.stdout.write(`${r.connstr}\n`);
      }),
    );
}
