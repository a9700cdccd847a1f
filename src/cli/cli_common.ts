/**
 * Shared plumbing of the control-plane commands (init, start, stop, status,
 * up, tenant, timeline, endpoint): the `--repo-dir` option, one error
 * handler, JSON output, and the probe of what the service commands support.
 *
 * Errors: every command runs inside `action()`. A StrataError (or an LSN
 * parse error) is printed as one line `strata <command>: <message>` on
 * stderr — no stack trace — and mapped to an exit code a script can test:
 *
 *   2  misuse: invalid argument, unsupported            (EXIT_USAGE)
 *   3  unknown tenant, branch, endpoint, deployment     (EXIT_NOT_FOUND)
 *   4  a service is down, a port is in use, a timeout  (EXIT_UNAVAILABLE)
 *   1  anything else (I/O, corrupt config, internal)
 *
 * An unexpected exception (a bug) prints its stack, exit code 1.
 */
import { Command } from "commander";
import { StrataError } from "../lib/errors.js";
import { LsnError } from "../lib/lsn.js";
import { createProgress, type Progress } from "../control_plane/progress.js";
import { RepoPaths, resolveRepoDir } from "../control_plane/repo.js";
import type { ServiceCapabilities } from "../control_plane/services.js";

export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_NOT_FOUND = 3;
export const EXIT_UNAVAILABLE = 4;

export interface RepoFlags {
  repoDir?: string;
  json?: boolean;
  quiet?: boolean;
}

/** Adds --repo-dir to a command. */
export function repoOption(cmd: Command): Command {
  return cmd.option("--repo-dir <dir>", "deployment directory (default: $STRATA_REPO_DIR, else ./.strata)");
}

export function repoPaths(flags: RepoFlags): RepoPaths {
  return new RepoPaths(resolveRepoDir(flags.repoDir));
}

export function progressFor(flags: RepoFlags): Progress {
  return createProgress({ quiet: flags.quiet === true });
}

export function exitCodeFor(e: unknown): number {
  if (e instanceof LsnError) return EXIT_USAGE;
  if (!(e instanceof StrataError)) return EXIT_FAILURE;
  switch (e.code) {
    case "invalid_argument":
    case "unsupported":
      return EXIT_USAGE;
    case "not_found":
      return EXIT_NOT_FOUND;
    case "unavailable":
    case "timeout":
      return EXIT_UNAVAILABLE;
    default:
      return EXIT_FAILURE;
  }
}

/** Wraps a command's action with the shared error handling. */
export function action<A extends unknown[]>(name: string, fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (e) {
      const expected = e instanceof StrataError || e instanceof LsnError;
      process.stderr.write(`strata ${name}: ${expected ? (e as Error).message : ((e as Error).stack ?? String(e))}\n`);
      process.exitCode = exitCodeFor(e);
    }
  };
}

export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v, null, 2) + "\n");
}

export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

let caps: ServiceCapabilities | undefined;

/** Which optional flags `strata pageserver` / `strata safekeeper` declare (contracts B and C). */
export async function serviceCapabilities(): Promise<ServiceCapabilities> {
  if (caps !== undefined) return caps;
  const probe = new Command();
  (await import("./pageserver.js")).register(probe);
  (await import("./safekeeper.js")).register(probe);
  const has = (cmd: string, flag: string) => probe.commands.find((c) => c.name() === cmd)?.options.some((o) => o.long === flag) === true;
  caps = { pageserverRemoteStorage: has("pageserver", "--remote-storage"), safekeeperRemoteStorage: has("safekeeper", "--remote-storage") };
  return caps;
}
