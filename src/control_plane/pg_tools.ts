/**
 * Running PostgreSQL 15's programs (pg_ctl, psql, initdb) for computes.
 *
 * PostgreSQL refuses to run as root. When strata runs as root, server-side
 * programs (pg_ctl and the postgres it starts) run as the unprivileged
 * PostgreSQL user (`defaultRunAsUser`, the same rule the WAL redo helpers
 * follow), and the directories they own are handed to that user. Client
 * programs (psql) run as ourselves. Every run is bounded by a timeout: a hung
 * tool is an error, not a hung command line.
 */
import { spawn } from "node:child_process";
import { chown } from "node:fs/promises";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { StrataError } from "../lib/errors.js";
import { defaultRunAsUser, DEFAULT_PG_BIN_DIR, type RunAsUser } from "../walredo/stub.js";

export const PG_BIN_DIR = process.env.STRATA_PG_BIN_DIR ?? DEFAULT_PG_BIN_DIR;
/** Default bound on one tool run. */
export const PG_TOOL_TIMEOUT_MS = 120_000;
/** Longest output kept from a tool (error messages). */
const MAX_OUTPUT_BYTES = 1 << 20;

export interface PgToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** The user server processes run as (null: ourselves). */
export function serverUser(): RunAsUser | null {
  return defaultRunAsUser();
}

/** Runs `PG_BIN_DIR/name args`; never rejects on a non-zero exit (the result says). */
export function runPgTool(name: string, args: readonly string[], opts: { asServerUser?: boolean; timeoutMs?: number; input?: string } = {}): Promise<PgToolResult> {
  const user = opts.asServerUser ? serverUser() : null;
  const timeoutMs = opts.timeoutMs ?? PG_TOOL_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = spawn(join(PG_BIN_DIR, name), args, {
      cwd: tmpdir(),
      env: { ...process.env, LC_ALL: "C" },
      stdio: ["pipe", "pipe", "pipe"],
      ...(user ? { uid: user.uid, gid: user.gid } : {}),
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    child.stdout.on("data", (b: Buffer) => {
      outBytes += b.length;
      if (outBytes <= MAX_OUTPUT_BYTES) out.push(b);
    });
    child.stderr.on("data", (b: Buffer) => err.push(b));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new StrataError("io_error", `Cannot run ${name}: ${e.message}`, { cause: e }));
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const stderr = Buffer.concat(err).toString("utf8").slice(-MAX_OUTPUT_BYTES);
      if (signal === "SIGKILL" && code === null) {
        resolve({ code: 124, stdout: Buffer.concat(out).toString("utf8"), stderr: `${stderr}\n${name} did not finish within ${timeoutMs} ms` });
        return;
      }
      resolve({ code: code ?? 1, stdout: Buffer.concat(out).toString("utf8"), stderr });
    });
    child.stdin.on("error", () => {
      /* the tool may exit before reading its input */
    });
    child.stdin.end(opts.input ?? "");
  });
}

/** Like runPgTool, but a non-zero exit is a StrataError carrying the tool's stderr. */
export async function runPgToolOk(name: string, args: readonly string[], opts: { asServerUser?: boolean; timeoutMs?: number; input?: string } = {}): Promise<string> {
  const r = await runPgTool(name, args, opts);
  if (r.code !== 0) throw new StrataError("io_error", `${name} ${args.join(" ")} failed (exit ${r.code}): ${(r.stderr.trim() || r.stdout.trim()).slice(-2000)}`);
  return r.stdout;
}

/** Hands `path` (not recursively) to the server user when we are root. */
export async function chownToServerUser(path: string): Promise<void> {
  const user = serverUser();
  if (user === null) return;
  await chown(path, user.uid, user.gid);
}

/** One SQL statement through psql as the compute's superuser; trimmed unaligned output. */
export async function psql(port: number, sql: string, opts: { db?: string; timeoutMs?: number } = {}): Promise<string> {
  const out = await runPgToolOk("psql", ["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-d", opts.db ?? "postgres", "-f", "-"], {
    input: sql,
    timeoutMs: opts.timeoutMs ?? 60_000,
  });
  return out.trim();
}
