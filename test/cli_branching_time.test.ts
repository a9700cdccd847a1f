/**
 * Issue 6 acceptance 2, branches at recorded times: 10 points of pgbench on
 * main, a branch at each recorded wall-clock time (`--at`, resolved by the
 * pageserver's get_lsn_by_timestamp), a compute on each: table fingerprints
 * equal the recorded ones, pg_amcheck --heapallindexed clean, branch writes
 * invisible to main and siblings (cli_branching_lib.ts).
 */
import { test } from "node:test";
import { branchingScenario } from "./cli_branching_lib.js";

test("branches at 10 recorded times: fingerprints match, amcheck clean, writes isolated", { timeout: 360_000 }, async () => {
  await branchingScenario("time");
});
