/**
 * `strata timeline create | list | branch | export` (control plane; see
 * src/control_plane/tenants.ts).
 *
 *   strata timeline create --branch-name NAME [--tenant-id T] [--json]
 *   strata timeline list [--tenant-id T] [--json]               branch tree with LSNs
 *   strata timeline branch --branch-name NAME [--ancestor-branch-name B (main)]
 *                          [--ancestor-start-lsn X/Y | --at TIMESTAMP] [--json]
 *   strata timeline export --branch-name B [--lsn X/Y | --at TIMESTAMP] -o FILE.tar[.gz]
 */
import type { Command } from "commander";
import { chooseTenant, loadConfig } from "../control_plane/repo.js";
import { requireServices } from "../control_plane/services.js";
import { createBranch, createRootBranch, exportBranch, formatTimelineTree, listTimelines } from "../control_plane/tenants.js";
import { action, printJson, progressFor, repoOption, repoPaths, type RepoFlags } from "./cli_common.js";
import { StrataError } from "../lib/errors.js";

interface TlFlags extends RepoFlags {
  tenantId?: string;
  branchName?: string;
}

function need(v: string | undefined, flag: string): string {
  if (v === undefined) throw new StrataError("invalid_argument", `${flag} is required`);
  return v;
}

export function register(program: Command): void {
  const tl = program.command("timeline").description("timelines (branches) of a tenant");

  repoOption(tl.command("create"))
    .description("create a root timeline (initdb on the pageserver) named --branch-name")
    .option("--branch-name <name>", "its branch name")
    .option("--tenant-id <id>", "tenant (default: the default tenant)")
    .option("--json", "machine-readable output")
    .option("--quiet", "no progress lines")
    .action(
      action("timeline create", async (flags: TlFlags) => {
        const paths = repoPaths(flags);
        const c = await loadConfig(paths);
        const tenant = chooseTenant(c, flags.tenantId);
        await requireServices(paths, c, { pageserver: true, safekeepers: false });
        const t = await createRootBranch(paths, c, tenant, need(flags.branchName, "--branch-name"), progressFor(flags));
        if (flags.json) printJson({ branch: flags.branchName, ...t });
        else process.stdout.write(`branch ${flags.branchName}: timeline ${t.timeline_id} at ${t.last_record_lsn}\n`);
      }),
    );

  repoOption(tl.command("list"))
    .description("the branch tree of a tenant with ancestor, last-record, disk- and remote-consistent LSNs")
    .option("--tenant-id <id>", "tenant (default: the default tenant)")
    .option("--json", "machine-readable output")
    .action(
      action("timeline list", async (flags: TlFlags) => {
        const paths = repoPaths(flags);
        const c = await loadConfig(paths);
        const tenant = chooseTenant(c, flags.tenantId);
        await requireServices(paths, c, { pageserver: true, safekeepers: false });
        const list = await listTimelines(c, tenant);
        if (flags.json) printJson(list);
        else process.stdout.write(formatTimelineTree(list).join("\n") + "\n");
      }),
    );

  repoOption(tl.command("branch"))
    .description("create a branch of another branch at an LSN, a time, or its end (no data is copied)")
    .option("--branch-name <name>", "the new branch's name")
    .option("--ancestor-branch-name <name>", "branch to branch from (default main)")
    .option("--ancestor-start-lsn <lsn>", "branch point X/Y (default: the ancestor's last record)")
    .option("--at <timestamp>", "branch point = the last commit at or before this time (RFC 3339)")
    .option("--tenant-id <id>", "tenant (default: the default tenant)")
    .option("--json", "machine-readable output")
    .option("--quiet", "no progress lines")
    .action(
      action("timeline branch", async (flags: TlFlags & { ancestorBranchName?: string; ancestorStartLsn?: string; at?: string }) => {
        const paths = repoPaths(flags);
        const c = await loadConfig(paths);
        const tenant = chooseTenant(c, flags.tenantId);
        const name = need(flags.branchName, "--branch-name");
        await requireServices(paths, c, { pageserver: true, safekeepers: false });
        const r = await createBranch(
          paths,
          c,
          tenant,
          {
            name,
            ancestor: flags.ancestorBranchName ?? "main",
            ...(flags.ancestorStartLsn !== undefined ? { lsn: flags.ancestorStartLsn } : {}),
            ...(flags.at !== undefined ? { at: flags.at } : {}),
          },
          progressFor(flags),
        );
        if (flags.json) printJson({ branch: name, ...r.timeline, ...(r.lsnFromTimestamp ? { lsn_by_timestamp: r.lsnFromTimestamp } : {}) });
        else process.stdout.write(`branch ${name}: timeline ${r.timeline.timeline_id} from ${flags.ancestorBranchName ?? "main"} at ${r.timeline.ancestor_lsn}\n`);
      }),
    );

  repoOption(tl.command("export"))
    .description("write a fullbackup tarball of a branch at an LSN or time; `tar -x` it and pg_ctl start a plain PostgreSQL 15")
    .option("--branch-name <name>", "branch (default main)")
    .option("--lsn <lsn>", "at this LSN X/Y (a record boundary; default: the branch's last record)")
    .option("--at <timestamp>", "at the last commit at or before this time (RFC 3339)")
    .option("-o, --output <file>", "FILE.tar or FILE.tar.gz")
    .option("--tenant-id <id>", "tenant (default: the default tenant)")
    .option("--json", "machine-readable output")
    .option("--quiet", "no progress lines")
    .action(
      action("timeline export", async (flags: TlFlags & { lsn?: string; at?: string; output?: string }) => {
        const paths = repoPaths(flags);
        const c = await loadConfig(paths);
        const tenant = chooseTenant(c, flags.tenantId);
        await requireServices(paths, c, { pageserver: true, safekeepers: false });
        const r = await exportBranch(
          c,
          tenant,
          { branch: flags.branchName ?? "main", output: need(flags.output, "-o FILE"), ...(flags.lsn !== undefined ? { lsn: flags.lsn } : {}), ...(flags.at !== undefined ? { at: flags.at } : {}) },
          progressFor(flags),
        );
        if (flags.json) printJson(r);
        else process.stdout.write(`wrote ${r.path}: ${r.bytes} bytes, fullbackup at ${r.lsn}\n`);
      }),
    );
}
