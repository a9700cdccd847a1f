/**
 * `strata tenant create | list | attach | detach` (control plane; see
 * src/control_plane/tenants.ts for what each does on the pageserver).
 *
 *   strata tenant create [--tenant-id ID] [--set-default] [--json]
 *   strata tenant list [--json]
 *   strata tenant attach <tenant_id>       generation = recorded + 1 (contract B)
 *   strata tenant detach <tenant_id>
 */
import type { Command } from "commander";
import { loadConfig } from "../control_plane/repo.js";
import { requireServices } from "../control_plane/services.js";
import { attachTenant, createTenant, detachTenant, listTenants } from "../control_plane/tenants.js";
import { action, printJson, progressFor, repoOption, repoPaths, type RepoFlags } from "./cli_common.js";

export function register(program: Command): void {
  const tenant = program.command("tenant").description("tenants of the local deployment");

  repoOption(tenant.command("create"))
    .description("create a tenant on the pageserver (generation 1)")
    .option("--tenant-id <id>", "32 hex digits (default: random)")
    .option("--set-default", "make it the default tenant (the first tenant always is)")
    .option("--json", "machine-readable output")
    .action(
      action("tenant create", async (flags: RepoFlags & { tenantId?: string; setDefault?: boolean }) => {
        const paths = repoPaths(flags);
        const c = await loadConfig(paths);
        await requireServices(paths, c, { pageserver: true, safekeepers: false });
        const id = await createTenant(paths, c, { ...(flags.tenantId !== undefined ? { tenantId: flags.tenantId } : {}), setDefault: flags.setDefault === true });
        if (flags.json) printJson({ tenant_id: id });
        else process.stdout.write(`${id}\n`);
      }),
    );

  repoOption(tenant.command("list"))
    .description("tenants with state, generation and branches")
    .option("--json", "machine-readable output")
    .action(
      action("tenant list", async (flags: RepoFlags) => {
        const paths = repoPaths(flags);
        const list = await listTenants(await loadConfig(paths));
        if (flags.json) printJson(list);
        else for (const t of list) process.stdout.write(`${t.id}${t.default ? " (default)" : ""}  ${t.state}  generation ${t.generation ?? "?"}  branches: ${Object.keys(t.branches).join(", ") || "-"}\n`);
      }),
    );

  repoOption(tenant.command("attach <tenant_id>"))
    .description("attach a tenant from remote storage with the next generation; waits until it is active")
    .option("--json", "machine-readable output")
    .option("--quiet", "no progress lines")
    .action(
      action("tenant attach", async (tenantId: string, flags: RepoFlags) => {
        const paths = repoPaths(flags);
        const c = await loadConfig(paths);
        await requireServices(paths, c, { pageserver: true, safekeepers: false });
        const r = await attachTenant(paths, c, tenantId, progressFor(flags));
        if (flags.json) printJson({ tenant_id: r.tenant, generation: r.generation, state: r.state });
        else process.stdout.write(`tenant ${r.tenant} attached with generation ${r.generation}: ${r.state}\n`);
      }),
    );

  repoOption(tenant.command("detach <tenant_id>"))
    .description("detach a tenant: the pageserver flushes, uploads and removes its local copy")
    .action(
      action("tenant detach", async (tenantId: string, flags: RepoFlags) => {
        const paths = repoPaths(flags);
        const c = await loadConfig(paths);
        await requireServices(paths, c, { pageserver: true, safekeepers: false });
        const t = await detachTenant(c, tenantId);
        process.stdout.write(`tenant ${t} detached\n`);
      }),
    );
}
