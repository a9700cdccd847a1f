/**
 * Test support for the `strata` command line: runs the real CLI
 * (`node dist/src/cli/main.js …`) as a child process against a temp repo
 * dir, and always stops the deployment (`strata stop --immediate`) in
 * `withRepo`'s finally, so no service or compute outlives its test file.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { makeTempDir, removeTempDir, runTool } from "./harness/tools.js";

/** dist/src/cli/main.js, next to this compiled file's dist/test/. */
export const CLI = join(dirname(fileURLToPath(import.meta.url)), "..", "src", "cli", "main.js");
/** Bound on one CLI run (endpoint start may wait for the pageserver and run pg_ctl). */
export const CLI_TIMEOUT_MS = 240_000;

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runCli(repoDir: string, args: string[], opts: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<CliResult> {
  const timeoutMs = opts.timeoutMs ?? CLI_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args, "--repo-dir", repoDir], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...opts.env } });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`strata ${args.join(" ")} did not finish within ${timeoutMs} ms; stderr so far:\n${Buffer.concat(err).toString()}`));
    }, timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
  });
}

/** Runs the CLI and fails with its stderr unless it exits 0. */
export async function cliOk(repoDir: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
  const r = await runCli(repoDir, args, opts);
  if (r.code !== 0) throw new Error(`strata ${args.join(" ")} exited ${r.code}:\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

export async function cliJson<T>(repoDir: string, args: string[]): Promise<T> {
  return JSON.parse(await cliOk(repoDir, [...args, "--json"])) as T;
}

/** The last non-empty line of a command's stdout. */
export function lastLine(stdout: string): string {
  const lines = stdout.split("\n").filter((l) => l.trim() !== "");
  return lines[lines.length - 1] ?? "";
}

/** A temp repo dir; the deployment in it is stopped (immediately) and the dir removed afterwards. */
export async function withRepo<T>(fn: (repoDir: string) => Promise<T>): Promise<T> {
  const base = await makeTempDir("cli");
  const repo = join(base, "repo");
  try {
    return await fn(repo);
  } finally {
    if (existsSync(join(repo, "config.json"))) {
      const r = await runCli(repo, ["stop", "--immediate"], { timeoutMs: 120_000 }).catch((e: unknown) => ({ code: -1, stdout: "", stderr: String(e) }));
      if (r.code !== 0) console.error(`cleanup: strata stop --immediate failed: ${r.stderr}`);
    }
    if (process.env.STRATA_KEEP_TEST_DIRS === undefined) await removeTempDir(base);
    else console.error(`kept ${base}`);
  }
}

/** SQL through psql on a connection string; trimmed unaligned output. */
export async function sqlAt(connstr: string, query: string, opts: { timeoutMs?: number } = {}): Promise<string> {
  const r = await runTool("psql", ["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", connstr, "-f", "-"], { input: query, timeoutMs: opts.timeoutMs ?? 60_000 });
  if (r.code !== 0) throw new Error(`psql failed (${r.code}) on ${connstr}: ${r.stderr.trim()}\nquery: ${query.slice(0, 300)}`);
  return r.stdout.trim();
}

/** The port of a postgresql://user@host:port/db connection string. */
export function portOf(connstr: string): number {
  const m = /:(\d+)\//.exec(connstr);
  if (!m) throw new Error(`no port in ${connstr}`);
  return Number(m[1]);
}

export interface StatusJson {
  pageserver: { pid: number | null; pg_port: number; http_port: number; datadir: string };
  safekeepers: { id: number; pid: number | null; pg_port: number; http_port: number; datadir: string }[];
  endpoints: { name: string; branch: string; pid: number | null; port: number; connstr: string }[];
  tenants: {
    id: string;
    timelines: { id: string; branch: string | null; ancestor: string | null; ancestor_lsn: string | null; last_record_lsn: string | null; disk_consistent_lsn: string | null; remote_consistent_lsn: string | null }[];
  }[];
}
