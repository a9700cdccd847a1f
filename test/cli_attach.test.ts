/**
 * `strata tenant detach | attach` with the default local-directory remote
 * storage (issue 7 acceptance 1's flow for the local backend, through the
 * command line; contract B's generations come from the repo config):
 *   - detach, then attach: generation 1 -> 2, the tenant is active again
 *     and a compute on main has every row;
 *   - more rows, `strata stop`, delete the pageserver's whole data
 *     directory (`pageserver.datadir` of `strata status --json`),
 *     `strata start`: the compute cannot start (clear error naming
 *     `strata tenant attach`, exit 3); attach (generation 3): every row is
 *     back, including those written after the first attach.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { cliJson, cliOk, lastLine, runCli, sqlAt, withRepo, type StatusJson } from "./cli_support.js";

test("tenant detach/attach with generations; a wiped pageserver gets its tenant back by attach", { timeout: 180_000 }, async () => {
  await withRepo(async (repo) => {
    const main = lastLine(await cliOk(repo, ["up", "--safekeepers", "1", "--quiet"]));
    await sqlAt(main, "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 5000)");
    await cliOk(repo, ["endpoint", "stop", "main"]);
    const tenant = (await cliJson<{ id: string; generation: number }[]>(repo, ["tenant", "list"]))[0]!;
    assert.equal(tenant.generation, 1);

    await cliOk(repo, ["tenant", "detach", tenant.id]);
    const detached = await cliJson<{ id: string; state: string }[]>(repo, ["tenant", "list"]);
    assert.equal(detached[0]!.state, "not on the pageserver");
    const a1 = await cliJson<{ generation: number; state: string }>(repo, ["tenant", "attach", tenant.id, "--quiet"]);
    assert.deepEqual([a1.generation, a1.state], [2, "active"]);
    assert.equal(lastLine(await cliOk(repo, ["endpoint", "start", "main", "--quiet"])), main);
    assert.equal(await sqlAt(main, "SELECT count(*) FROM t"), "5000");
    await sqlAt(main, "INSERT INTO t SELECT generate_series(5001, 6000)");

    // Lose the pageserver's disk entirely.
    const s = await cliJson<StatusJson>(repo, ["status"]);
    await cliOk(repo, ["stop"]);
    await rm(s.pageserver.datadir, { recursive: true, force: true });
    await cliOk(repo, ["start", "--quiet"]);
    const refused = await runCli(repo, ["endpoint", "start", "main", "--quiet"]);
    assert.equal(refused.code, 3, refused.stderr);
    assert.match(refused.stderr, /strata tenant attach/);
    const a2 = await cliJson<{ generation: number; state: string }>(repo, ["tenant", "attach", tenant.id, "--quiet"]);
    assert.deepEqual([a2.generation, a2.state], [3, "active"]);
    assert.equal(lastLine(await cliOk(repo, ["endpoint", "start", "main", "--quiet"])), main);
    assert.equal(await sqlAt(main, "SELECT count(*), sum(x) FROM t"), `6000|${(6000 * 6001) / 2}`);
    const after = await cliJson<StatusJson>(repo, ["status"]);
    assert.equal(after.tenants[0]!.timelines[0]!.branch, "main");
    console.log(`attach: detach/attach and wipe/attach kept all 6000 rows; generations 1 -> 2 -> 3`);
  });
});
