/**
 * Test harness: running PostgreSQL's own tools, and temp directories.
 *
 * PostgreSQL refuses to run as root, and CI runs the suite as root. Server
 * processes (initdb, postgres, pg_ctl) therefore run as the unprivileged
 * `postgres` user when we are root (`asPgUser`), and temp directories they
 * write into are handed to that user. Client tools (psql, pg_waldump, …) run
 * as whoever we are. Every tool invocation has a timeout: a hung tool fails
 * the test instead of hanging CI.
 */
import { spawn, execFileSync } from "node:child_process";
import { mkdtemp, chown, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const PG_BIN_DIR = "/usr/lib/postgresql/15/bin";
/** Default bound on one tool run; long enough for initdb on a loaded 2-core machine. */
export const DEFAULT_TOOL_TIMEOUT_MS = 120_000;

export interface PgUser {
  uid: number;
  gid: number;
  name: string;
}

let cachedPgUser: PgUser | null | undefined;

/** The user PostgreSQL processes run as: `postgres` when we are root, else ourselves (null). */
export function pgUser(): PgUser | null {
  if (cachedPgUser !== undefined) return cachedPgUser;
  if (process.getuid?.() !== 0) {
    cachedPgUser = null;
    return null;
  }
  const name = process.env.STRATA_PG_USER ?? "postgres";
  const uid = Number(execFileSync("id", ["-u", name], { encoding: "utf8" }).trim());
  const gid = Number(execFileSync("id", ["-g", name], { encoding: "utf8" }).trim());
  cachedPgUser = { uid, gid, name };
  return cachedPgUser;
}

export interface ToolResult {
  stdout: string;
  stderr: string;
  code: number;
}

export interface RunOptions {
  asPgUser?: boolean;
  cwd?: string;
  input?: string | Uint8Array;
  timeoutMs?: number;
  env?: Record<string, string>;
  /** Keep stdout as bytes (for binary output); `stdout` is then latin1. */
  binary?: boolean;
}

/** Runs a program (absolute path, or a name resolved in PG_BIN_DIR). Never rejects on exit code. */
export function runProgram(path: string, args: string[], opts: RunOptions = {}): Promise<ToolResult & { stdoutBytes: Buffer }> {
  const user = opts.asPgUser ? pgUser() : null;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TOOL_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = spawn(path, args, {
      cwd: opts.cwd ?? tmpdir(),
      env: { ...process.env, LC_ALL: "C", ...opts.env },
      stdio: ["pipe", "pipe", "pipe"],
      ...(user ? { uid: user.uid, gid: user.gid } : {}),
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${path} ${args.join(" ")} did not finish within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const stdoutBytes = Buffer.concat(out);
      resolve({
        stdout: stdoutBytes.toString(opts.binary ? "latin1" : "utf8"),
        stdoutBytes,
        stderr: Buffer.concat(err).toString("utf8"),
        code: code ?? (signal ? 128 : 1),
      });
    });
    child.stdin.on("error", () => {
      /* the tool may exit before reading its input; its exit code says what happened */
    });
    if (opts.input !== undefined) child.stdin.end(opts.input);
    else child.stdin.end();
  });
}

/** Runs a PostgreSQL tool from PG_BIN_DIR. */
export function runTool(name: string, args: string[], opts: RunOptions = {}): Promise<ToolResult> {
  return runProgram(join(PG_BIN_DIR, name), args, opts);
}

/** Like runTool, but rejects with the tool's stderr when it exits non-zero. */
export async function runToolOk(name: string, args: string[], opts: RunOptions = {}): Promise<string> {
  const r = await runTool(name, args, opts);
  if (r.code !== 0) {
    throw new Error(`${name} ${args.join(" ")} exited with ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
  }
  return r.stdout;
}

/** A fresh temp directory, writable by the PostgreSQL user too. */
export async function makeTempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `strata-${prefix}-`));
  const user = pgUser();
  if (user) await chown(dir, user.uid, user.gid);
  return dir;
}

export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}
