/**
 * Bootstrap of a root timeline by PostgreSQL's own initdb (issue 6):
 *
 *   POST /v1/tenant/:t/timeline {no ancestor, no import_datadir}
 *     -> bootstrapWithInitdb: mkdtemp <pageserver datadir>/tmp_initdb-XXXX
 *          -> initdb -D <tmp>/data (as the PostgreSQL user when we are root)
 *          -> import(<tmp>/data): the pageserver's import path (import_datadir.ts)
 *             at the end of initdb's shutdown checkpoint record
 *          -> rm -r <tmp>   (always: success, failure, cancellation)
 *
 * Why initdb: bootstrap mode writes no WAL for the template catalogs, so the
 * first state of a cluster exists only as files; importing them as images
 * at the checkpoint's end LSN gives a timeline from which a fullbackup
 * starts an unmodified PostgreSQL, and whose WAL (from that compute)
 * continues at exactly that LSN. The cluster's system identifier, locale
 * (C), encoding (UTF8) and superuser (`postgres`, trust authentication in
 * the generated pg_hba.conf) come from this run.
 *
 * Where initdb runs: a temp directory inside the pageserver's data
 * directory (same file system as the layers, cleaned up with it), owned by
 * the run-as user. PostgreSQL refuses to run as root; when the pageserver
 * is root, initdb runs as the unprivileged PostgreSQL user
 * (walredo/stub.ts `defaultRunAsUser`), which must be able to reach the
 * directory: when a parent of the data directory is closed to that user
 * (e.g. a 0700 directory owned by root), the temp directory goes under the
 * system temp directory instead, and the log says so.
 *
 * Crash safety: a crash mid-bootstrap leaves a `tmp_initdb-*` directory
 * (the next bootstrap removes those older than STALE_INITDB_DIR_MS, which
 * no running bootstrap can be: initdb is bounded by INITDB_TIMEOUT_MS)
 * and a timeline with versions above its last_record_lsn of 0: the HTTP API
 * deletes a timeline whose bootstrap failed, and a timeline that never
 * finished its import has no data and is refused by backups and branches.
 */
import { execFile } from "node:child_process";
import { chown, mkdir, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import type { Logger } from "pino";
import { StrataError } from "../lib/errors.js";
import { formatLsn, type Lsn } from "../lib/lsn.js";
import { DEFAULT_PG_BIN_DIR, defaultRunAsUser, type RunAsUser } from "../walredo/stub.js";

/** Prefix of initdb scratch directories in the pageserver data directory. */
export const INITDB_TEMP_PREFIX = "tmp_initdb-";
/** Superuser of bootstrapped clusters (trust authentication from this host). */
export const BOOTSTRAP_SUPERUSER = "postgres";
/** Bound on one initdb run: ~2 s on an idle machine, much more on a loaded 2-core CI box. */
export const INITDB_TIMEOUT_MS = 50_000;

export interface InitdbBootstrapOptions {
  /** The pageserver's data directory (the scratch directory is made inside it). */
  readonly workDir: string;
  readonly pgBinDir?: string;
  /** Who runs initdb; default: ourselves, or the PostgreSQL user when we are root. */
  readonly runAs?: RunAsUser | null;
  readonly dataChecksums?: boolean;
  readonly signal?: AbortSignal;
  readonly log: Logger;
}

/** True when `uid`/`gid` can traverse every directory from / down to `dir` (owner/group/other x bits; no supplementary groups). */
export async function userCanReach(dir: string, user: { uid: number; gid: number }): Promise<boolean> {
  for (let d = resolve(dir); ; d = dirname(d)) {
    const st = await stat(d);
    const bit = st.uid === user.uid ? 0o100 : st.gid === user.gid ? 0o010 : 0o001;
    if ((st.mode & bit) === 0) return false;
    if (dirname(d) === d) return true;
  }
}

/** Scratch directories older than this are leftovers of a crash (a live bootstrap is bounded by the initdb timeout). */
export const STALE_INITDB_DIR_MS = 10 * 60 * 1000;

/** Removes initdb scratch directories left by a crash (older than `olderThanMs`). */
export async function removeStaleInitdbDirs(workDir: string, olderThanMs = STALE_INITDB_DIR_MS): Promise<number> {
  let n = 0;
  for (const name of await readdir(workDir).catch(() => [] as string[])) {
    if (!name.startsWith(INITDB_TEMP_PREFIX)) continue;
    const path = join(workDir, name);
    const st = await stat(path).catch(() => undefined);
    if (st === undefined || Date.now() - st.mtimeMs < olderThanMs) continue;
    await rm(path, { recursive: true, force: true });
    n++;
  }
  return n;
}

function runInitdb(pgBinDir: string, dataDir: string, cwd: string, opts: InitdbBootstrapOptions, runAs: RunAsUser | null): Promise<void> {
  const args = ["-D", dataDir, "-U", BOOTSTRAP_SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"];
  if (opts.dataChecksums === true) args.push("--data-checksums");
  return new Promise((resolvePromise, reject) => {
    execFile(
      join(pgBinDir, "initdb"),
      args,
      {
        timeout: INITDB_TIMEOUT_MS,
        killSignal: "SIGKILL",
        env: { PATH: "/usr/bin:/bin", LC_ALL: "C" },
        cwd,
        ...(opts.signal === undefined ? {} : { signal: opts.signal }),
        ...(runAs ? { uid: runAs.uid, gid: runAs.gid } : {}),
      },
      (err, _stdout, stderr) => {
        if (err === null) return resolvePromise();
        if (opts.signal?.aborted === true) return reject(new StrataError("cancelled", "initdb was cancelled", { cause: err }));
        const killed = (err as { killed?: boolean }).killed === true;
        const why = killed ? `did not finish within ${INITDB_TIMEOUT_MS} ms` : String(stderr).trim() || err.message;
        reject(new StrataError(killed ? "timeout" : "io_error", `initdb for a new timeline failed: ${why}`, { cause: err }));
      },
    );
  });
}

/**
 * Runs initdb into a scratch directory and hands the result to `importDir`
 * (which imports it into the new root timeline and returns the LSN), then
 * removes the scratch directory whatever happened.
 */
export async function bootstrapWithInitdb(opts: InitdbBootstrapOptions, importDir: (dataDir: string) => Promise<{ lsn: Lsn }>): Promise<{ lsn: Lsn; durationMs: number }> {
  const t0 = Date.now();
  const pgBinDir = opts.pgBinDir ?? DEFAULT_PG_BIN_DIR;
  const runAs = opts.runAs === undefined ? defaultRunAsUser() : opts.runAs;
  await mkdir(opts.workDir, { recursive: true });
  const stale = await removeStaleInitdbDirs(opts.workDir);
  if (stale > 0) opts.log.info({ work_dir: opts.workDir, removed: stale }, "removed initdb scratch directories left by a crash");
  let parent = opts.workDir;
  if (runAs !== null && !(await userCanReach(opts.workDir, runAs))) {
    parent = tmpdir();
    opts.log.info({ work_dir: opts.workDir, user: runAs.name, temp_dir: parent }, "initdb runs under the system temp directory: the pageserver data directory is closed to the PostgreSQL user");
  }
  const scratch = await mkdtemp(join(parent, INITDB_TEMP_PREFIX));
  try {
    if (runAs !== null) await chown(scratch, runAs.uid, runAs.gid);
    const dataDir = join(scratch, "data");
    await runInitdb(pgBinDir, dataDir, scratch, opts, runAs);
    opts.signal?.throwIfAborted();
    const { lsn } = await importDir(dataDir);
    const durationMs = Date.now() - t0;
    opts.log.info({ lsn: formatLsn(lsn), duration_ms: durationMs, data_checksums: opts.dataChecksums === true }, "timeline bootstrapped by initdb");
    return { lsn, durationMs };
  } finally {
    await rm(scratch, { recursive: true, force: true }).catch((e: unknown) => opts.log.warn({ dir: scratch, err: (e as Error).message }, "cannot remove initdb scratch directory"));
  }
}
