/**
 * `strata endpoint start | stop | list`: computes (unmodified PostgreSQL 15)
 * on branches (src/control_plane/endpoint.ts does the work).
 *
 *   strata endpoint start NAME [--branch-name B] [--port P] [--pg-config KEY=VALUE]... [--tenant-id T] [--json]
 *   strata endpoint stop NAME [--immediate]
 *   strata endpoint rejoin NAME [--json]   safekeepers that missed the start join the running compute
 *   strata endpoint list [--json]
 *
 * An endpoint is created by its first start (branch default main, port
 * chosen free unless --port); its branch, port and --pg-config settings
 * persist in the repo config and apply to every later start. Changing the
 * branch or port of a running endpoint is refused. `start` prints the
 * connection string on its last line (an already running endpoint just
 * prints it).
 */
import type { Command } from "commander";
import { StrataError } from "../lib/errors.js";
import { checkBranchFree, computePid, endpointStatus, startEndpointCompute, stopEndpointCompute, unknownEndpoint } from "../control_plane/endpoint.js";
import { parsePgConfigItems } from "../control_plane/pg_settings.js";
import { rejoinEndpoint } from "../control_plane/rejoin.js";
import { allocatePorts, parsePort } from "../control_plane/ports.js";
import { branchTimeline, checkName, chooseTenant, loadConfig, updateConfig } from "../control_plane/repo.js";
import { action, collect, printJson, progressFor, repoOption, repoPaths, type RepoFlags } from "./cli_common.js";

interface StartFlags extends RepoFlags {
  branchName?: string;
  port?: string;
  pgConfig?: string[];
  tenantId?: string;
}

export function register(program: Command): void {
  const ep = program.command("endpoint").description("computes (PostgreSQL 15 servers) on branches");

  repoOption(ep.command("start <name>"))
    .description("start a compute on a branch (fullbackup at the branch's committed end); prints the connection string last")
    .option("--branch-name <name>", "branch (default main for a new endpoint; the recorded one after)")
    .option("--port <port>", "PostgreSQL port (default: chosen free at creation, then persisted)")
    .option("--pg-config <KEY=VALUE>", "postgresql.conf setting, persisted with the endpoint (repeatable)", collect, [])
    .option("--tenant-id <id>", "tenant (default: the default tenant)")
    .option("--json", "machine-readable output")
    .option("--quiet", "no progress lines")
    .action(
      action("endpoint start", async (name: string, flags: StartFlags) => {
        const paths = repoPaths(flags);
        checkName("endpoint", name);
        const settings = parsePgConfigItems(flags.pgConfig ?? []);
        const port = flags.port === undefined ? undefined : parsePort(flags.port);
        let c = await loadConfig(paths);
        const existing = c.endpoints[name];
        const running = existing !== undefined && (await computePid(paths.endpointPgdata(name))) !== undefined;
        if (existing !== undefined) {
          const changes = (flags.branchName !== undefined && flags.branchName !== existing.branch) || (port !== undefined && port !== existing.port) || (flags.tenantId !== undefined && flags.tenantId.toLowerCase() !== existing.tenant_id) || Object.keys(settings).length > 0;
          if (running && changes) throw new StrataError("invalid_argument", `Endpoint ${name} is running (branch ${existing.branch}, port ${existing.port}); stop it before changing its branch, port or settings`);
        }
        const tenant = existing !== undefined && flags.tenantId === undefined ? existing.tenant_id : chooseTenant(c, flags.tenantId);
        const branch = flags.branchName ?? existing?.branch ?? "main";
        branchTimeline(c, tenant, branch); // unknown branch -> clear error before anything changes
        await checkBranchFree(paths, c, name, tenant, branch);
        let chosenPort = port ?? existing?.port;
        if (chosenPort === undefined) {
          const used = [c.pageserver.pg_port, c.pageserver.http_port, ...c.safekeepers.flatMap((s) => [s.pg_port, s.http_port]), ...Object.values(c.endpoints).map((e) => e.port)];
          [chosenPort] = await allocatePorts(1, used);
        }
        const clash = Object.entries(c.endpoints).find(([n, e]) => n !== name && e.port === chosenPort);
        if (clash !== undefined) throw new StrataError("invalid_argument", `Port ${chosenPort} belongs to endpoint ${clash[0]}`);
        c = await updateConfig(paths, (cfg) => {
          const prev = cfg.endpoints[name];
          cfg.endpoints[name] = { tenant_id: tenant, branch, port: chosenPort!, pg_config: { ...(prev?.pg_config ?? {}), ...settings } };
        });
        const r = await startEndpointCompute(paths, c, name, progressFor(flags));
        if (flags.json) printJson({ name, branch, tenant_id: tenant, port: chosenPort, connstr: r.connstr, already_running: r.alreadyRunning, start_lsn: r.startLsn ?? null, term: r.term ?? null });
        else {
          if (r.alreadyRunning) process.stderr.write(`endpoint ${name} is already running\n`);
          process.stdout.write(`${r.connstr}\n`);
        }
      }),
    );

  repoOption(ep.command("stop <name>"))
    .description("stop a compute (pg_ctl -m fast; --immediate: -m immediate)")
    .option("--immediate", "no shutdown checkpoint")
    .action(
      action("endpoint stop", async (name: string, flags: RepoFlags & { immediate?: boolean }) => {
        const paths = repoPaths(flags);
        const c = await loadConfig(paths);
        if (c.endpoints[name] === undefined) throw unknownEndpoint(c, name);
        const was = await stopEndpointCompute(paths, c, name, { immediate: flags.immediate === true });
        process.stdout.write(was ? `endpoint ${name} stopped\n` : `endpoint ${name} was not running\n`);
      }),
    );

  repoOption(ep.command("rejoin <name>"))
    .description("register every reachable safekeeper with the running compute under its term and wait until they caught up")
    .option("--json", "machine-readable output")
    .option("--quiet", "no progress lines")
    .action(
      action("endpoint rejoin", async (name: string, flags: RepoFlags) => {
        const paths = repoPaths(flags);
        const c = await loadConfig(paths);
        const r = await rejoinEndpoint(paths, c, name, progressFor(flags));
        if (r === undefined) throw new StrataError("invalid_argument", `Endpoint ${name} is not running ("strata endpoint start ${name}" starts it on every reachable safekeeper)`);
        if (flags.json) printJson(r);
        else process.stdout.write(`endpoint ${name}: term ${r.term}, safekeepers streaming: ${r.streaming.join(", ") || "none"}${r.registered.length > 0 ? `; registered now: ${r.registered.join(", ")}` : ""}\n`);
        if (r.problems.length > 0) throw new StrataError("unavailable", `Rejoin of endpoint ${name} left problems:\n  ${r.problems.join("\n  ")}`);
      }),
    );

  repoOption(ep.command("list"))
    .description("endpoints with branch, port, pid and connection string")
    .option("--json", "machine-readable output")
    .action(
      action("endpoint list", async (flags: RepoFlags) => {
        const paths = repoPaths(flags);
        const c = await loadConfig(paths);
        const list = [];
        for (const name of Object.keys(c.endpoints)) list.push({ ...(await endpointStatus(paths, c, name)), pg_config: c.endpoints[name]!.pg_config });
        if (flags.json) printJson(list);
        else for (const e of list) process.stdout.write(`${e.name}  ${e.state}${e.pid !== null ? ` (pid ${e.pid})` : ""}  branch ${e.branch}  ${e.connstr}\n`);
      }),
    );
}
