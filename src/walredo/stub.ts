/**
 * Stub data directories for walredo helpers, and who the helpers run as.
 *
 * A helper is a single-user PostgreSQL backend, which insists on a data
 * directory. It needs only `PG_VERSION`, `global/pg_control`, empty
 * configuration files and an empty `pg_notify/`, and it never writes there
 * except `postmaster.pid` (it never runs StartupXLOG). `pg_control` matters:
 * its data-checksums flag changes what some redo routines do
 * (XLogHintBitIsNeeded), so it must match the tenant's cluster.
 *
 * Templates: `initdb` runs once per (PostgreSQL version, checksum setting)
 * into a cache directory, and only the two files are kept. initdb runs into
 * a private temp directory that is renamed into place, so concurrent
 * processes (parallel test files) creating the same template never see a
 * half-written one; the loser of the rename race uses the winner's.
 *
 * Stubs: one directory per pool slot (the postmaster.pid lock allows one
 * process per directory), owned by the run-as user, mode 0700 as PostgreSQL
 * demands. A slot's restarted helper reuses its directory: PostgreSQL then
 * finds and removes the shared-memory segments a killed predecessor left
 * behind (they are keyed by the directory).
 *
 * PostgreSQL refuses to run as root; when strata runs as root the helpers run
 * as an unprivileged user (`postgres` unless STRATA_PG_USER says otherwise).
 */
import { execFile, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, chown, copyFile, mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StrataError } from "../lib/errors.js";

export const DEFAULT_PG_BIN_DIR = "/usr/lib/postgresql/15/bin";

/** Bound on one initdb run (a loaded 2-core CI machine takes a few seconds). */
const INITDB_TIMEOUT_MS = 120_000;

export interface RunAsUser {
  readonly uid: number;
  readonly gid: number;
  readonly name: string;
}

let cachedRunAs: RunAsUser | null | undefined;

/**
 * The user helpers run as: null (ourselves) unless we are root, then the
 * unprivileged PostgreSQL user.
 */
export function defaultRunAsUser(): RunAsUser | null {
  if (cachedRunAs !== undefined) return cachedRunAs;
  if (process.getuid?.() !== 0) {
    cachedRunAs = null;
    return null;
  }
  const name = process.env.STRATA_PG_USER ?? "postgres";
  try {
    const uid = Number(execFileSync("id", ["-u", name], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", name], { encoding: "utf8" }).trim());
    cachedRunAs = { uid, gid, name };
  } catch (cause) {
    throw new StrataError("unsupported", `running as root, but the user "${name}" that WAL redo helpers must run as does not exist`, { cause });
  }
  return cachedRunAs;
}

/** Where templates and stubs live unless configured: per uid, under the temp dir. */
export function defaultWalRedoDir(): string {
  return join(tmpdir(), `strata-walredo-${process.getuid?.() ?? "user"}`);
}

export interface TemplateOptions {
  readonly dataChecksums: boolean;
  readonly cacheDir: string;
  readonly pgBinDir: string;
  readonly runAs: RunAsUser | null;
}

/** A directory holding PG_VERSION and global/pg_control for one checksum setting. */
export interface StubTemplate {
  readonly dir: string;
  readonly dataChecksums: boolean;
}

const templatesInFlight = new Map<string, Promise<StubTemplate>>();

function runInitdb(pgBinDir: string, dataDir: string, dataChecksums: boolean, runAs: RunAsUser | null): Promise<void> {
  const args = ["-D", dataDir, "-A", "trust", "-U", "postgres", "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C"];
  if (dataChecksums) args.push("--data-checksums");
  return new Promise((resolve, reject) => {
    execFile(
      join(pgBinDir, "initdb"),
      args,
      { timeout: INITDB_TIMEOUT_MS, env: { PATH: "/usr/bin:/bin", LC_ALL: "C" }, cwd: tmpdir(), ...(runAs ? { uid: runAs.uid, gid: runAs.gid } : {}) },
      (err, _stdout, stderr) => {
        if (err) {
          reject(new StrataError("io_error", `initdb for a walredo stub template failed: ${String(stderr).trim() || err.message}`, { cause: err }));
        } else {
          resolve();
        }
      },
    );
  });
}

async function pgVersionOf(pgBinDir: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(join(pgBinDir, "postgres"), ["--version"], { timeout: 10_000 }, (err, stdout) => {
      if (err) reject(new StrataError("io_error", `cannot run ${join(pgBinDir, "postgres")} --version`, { cause: err }));
      // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> "15.18"
      else resolve(/\(PostgreSQL\) ([0-9][0-9.]*)/.exec(String(stdout))?.[1] ?? String(stdout).trim().replace(/[^0-9A-Za-z.]+/g, "_"));
    });
  });
}

async function buildTemplate(opts: TemplateOptions, finalDir: string): Promise<StubTemplate> {
  await mkdir(opts.cacheDir, { recursive: true, mode: 0o755 });
  // initdb (as the run-as user) writes into a scratch directory it owns.
  const scratch = await mkdtemp(join(opts.cacheDir, "initdb-"));
  const staging = await mkdtemp(join(opts.cacheDir, "template-staging-"));
  try {
    if (opts.runAs) await chown(scratch, opts.runAs.uid, opts.runAs.gid);
    const dataDir = join(scratch, "data");
    await runInitdb(opts.pgBinDir, dataDir, opts.dataChecksums, opts.runAs);
    await mkdir(join(staging, "global"));
    await copyFile(join(dataDir, "PG_VERSION"), join(staging, "PG_VERSION"));
    await copyFile(join(dataDir, "global", "pg_control"), join(staging, "global", "pg_control"));
    await chmod(staging, 0o755);
    try {
      await rename(staging, finalDir);
    } catch (e) {
      // Another process won the race; its template is equivalent.
      if (!existsSync(join(finalDir, "global", "pg_control"))) throw e;
    }
    return { dir: finalDir, dataChecksums: opts.dataChecksums };
  } finally {
    await rm(scratch, { recursive: true, force: true });
    await rm(staging, { recursive: true, force: true });
  }
}

/** Returns the cached template for this checksum setting, creating it once. */
export async function ensureStubTemplate(opts: TemplateOptions): Promise<StubTemplate> {
  const version = await pgVersionOf(opts.pgBinDir);
  const finalDir = join(opts.cacheDir, `template-pg${version}-checksums-${opts.dataChecksums ? "on" : "off"}`);
  if (existsSync(join(finalDir, "global", "pg_control"))) return { dir: finalDir, dataChecksums: opts.dataChecksums };
  let p = templatesInFlight.get(finalDir);
  if (!p) {
    p = buildTemplate(opts, finalDir).finally(() => templatesInFlight.delete(finalDir));
    templatesInFlight.set(finalDir, p);
  }
  return p;
}

/** Creates a fresh stub directory from a template under `parentDir`. */
export async function createStubDir(template: StubTemplate, parentDir: string, runAs: RunAsUser | null): Promise<string> {
  await mkdir(parentDir, { recursive: true, mode: 0o755 });
  const dir = await mkdtemp(join(parentDir, "stub-"));
  await mkdir(join(dir, "global"));
  await mkdir(join(dir, "pg_notify"));
  await copyFile(join(template.dir, "PG_VERSION"), join(dir, "PG_VERSION"));
  await writeFile(join(dir, "global", "pg_control"), await readFile(join(template.dir, "global", "pg_control")));
  await writeFile(join(dir, "postgresql.conf"), "");
  await writeFile(join(dir, "postgresql.auto.conf"), "");
  await chmod(dir, 0o700);
  if (runAs) {
    for (const p of ["", "global", "pg_notify", "PG_VERSION", "global/pg_control", "postgresql.conf", "postgresql.auto.conf"]) {
      await chown(join(dir, p), runAs.uid, runAs.gid);
    }
  }
  return dir;
}

/** Removes a dead helper's lock file so the next helper can use the directory. */
export async function clearStaleLock(stubDir: string): Promise<void> {
  await rm(join(stubDir, "postmaster.pid"), { force: true });
}

export async function removeStubDir(stubDir: string): Promise<void> {
  await rm(stubDir, { recursive: true, force: true });
}
