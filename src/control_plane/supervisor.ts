/**
 * Background service processes of a local deployment: start detached,
 * track by pid file, wait for readiness, stop.
 *
 * A service (safekeeper, pageserver) is this same program run with its
 * subcommand (`node dist/src/cli/main.js safekeeper …`), detached into its own
 * process group so it outlives the `strata start` that launched it, with
 * stdout and stderr appended to its log file. The pid file is written right
 * after spawn.
 *
 * Liveness: a pid file is believed only when the process exists AND its
 * command line still names our entry script and the service's subcommand —
 * a dead pid (or a pid the OS reused for something else) makes the pid file
 * stale, and `strata start` starts the service again.
 *
 * Readiness: the service's HTTP `/v1/status` answering 200, polled every
 * READY_POLL_MS up to `readyTimeoutMs`; if the process exits or the wait
 * runs out, the error carries the tail of its log.
 *
 * Stop: SIGTERM (the services flush and exit cleanly), wait up to
 * `stopTimeoutMs`, then SIGKILL; `immediate` sends SIGKILL at once.
 */
import { spawn } from "node:child_process";
import { open, readFile, rm, writeFile } from "node:fs/promises";
import { StrataError } from "../lib/errors.js";
import { sleep } from "../lib/tasks.js";

/** Poll interval of readiness and exit waits. */
export const READY_POLL_MS = 100;
/** Default bound on a service becoming ready (a pageserver loads its tenants first; 2 loaded cores). */
export const DEFAULT_READY_TIMEOUT_MS = 60_000;
/** Default bound on a graceful stop before SIGKILL (a pageserver flushes open layers). */
export const DEFAULT_STOP_TIMEOUT_MS = 30_000;
/** Bound on one readiness probe. */
const PROBE_TIMEOUT_MS = 2_000;
/** How much of a log an error message shows. */
export const LOG_TAIL_BYTES = 4096;

export interface ServiceSpec {
  /** For messages: "pageserver", "safekeeper 2". */
  readonly label: string;
  /** The subcommand, also used to recognise the process ("safekeeper", "pageserver"). */
  readonly subcommand: string;
  readonly args: readonly string[];
  readonly pidFile: string;
  readonly logFile: string;
  /** e.g. http://127.0.0.1:9898/v1/status */
  readonly readyUrl: string;
  readonly readyTimeoutMs?: number;
}

/** The script this program runs from (dist/src/cli/main.js). */
export function entryScript(): string {
  const s = process.argv[1];
  if (s === undefined) throw new StrataError("internal", "Cannot tell which script is running (process.argv[1] is missing)");
  return s;
}

/** Reads a pid file; undefined when missing or not a pid. */
export async function readPidFile(path: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    return undefined;
  }
  const n = Number(text.split("\n")[0]?.trim());
  return Number.isInteger(n) && n > 0 ? n : undefined;
}

/** True when process `pid` exists (signal 0). */
export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** True when `pid` no longer runs: absent, or a zombie waiting to be reaped (Linux /proc state Z). */
export async function processGone(pid: number): Promise<boolean> {
  if (!processExists(pid)) return true;
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // "pid (comm) S ...": the state follows the last ')' (comm may contain spaces and parentheses).
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) === "Z";
  } catch {
    return !processExists(pid);
  }
}

/** The command line of a process (Linux /proc), or undefined. */
async function cmdline(pid: number): Promise<string[] | undefined> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, "utf8");
    return raw.split("\0").filter((s) => s !== "");
  } catch {
    return undefined;
  }
}

/** True when `pid` is alive and is our service `subcommand` (guards against reused pids). */
export async function isOurService(pid: number, subcommand: string): Promise<boolean> {
  if (!processExists(pid)) return false;
  const argv = await cmdline(pid);
  if (argv === undefined) return true; // no /proc: trust the pid
  // A zombie (exited, not yet reaped) has an empty command line.
  return argv.some((a) => a.endsWith("main.js")) && argv.includes(subcommand);
}

/** The pid of the running service, or undefined (a stale pid file is removed). */
export async function runningPid(pidFile: string, subcommand: string): Promise<number | undefined> {
  const pid = await readPidFile(pidFile);
  if (pid === undefined) return undefined;
  if (await isOurService(pid, subcommand)) return pid;
  await rm(pidFile, { force: true });
  return undefined;
}

/** The last `bytes` of a log file (for error messages). */
export async function logTail(path: string, bytes = LOG_TAIL_BYTES): Promise<string> {
  try {
    const text = await readFile(path, "utf8");
    return text.length > bytes ? "…" + text.slice(-bytes) : text;
  } catch {
    return "(no log)";
  }
}

async function probe(url: string): Promise<boolean> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
    await res.arrayBuffer();
    return res.ok;
  } catch {
    return false;
  }
}

/** Starts the service detached and waits until it is ready. Returns its pid. */
export async function startService(spec: ServiceSpec): Promise<number> {
  const log = await open(spec.logFile, "a");
  let pid: number | undefined;
  try {
    await log.write(`\n--- ${new Date().toISOString()} strata starts ${spec.label}: ${spec.subcommand} ${spec.args.join(" ")}\n`);
    const child = spawn(process.execPath, [entryScript(), spec.subcommand, ...spec.args], {
      detached: true,
      stdio: ["ignore", log.fd, log.fd],
      env: process.env,
    });
    pid = child.pid;
    if (pid === undefined) {
      const err = await new Promise<Error>((resolve) => child.once("error", resolve));
      throw new StrataError("io_error", `Cannot start ${spec.label}: ${err.message}`, { cause: err });
    }
    child.unref();
  } finally {
    await log.close();
  }
  await writeFile(spec.pidFile, `${pid}\n`);
  const timeoutMs = spec.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await probe(spec.readyUrl)) return pid;
    if (!(await isOurService(pid, spec.subcommand))) {
      await rm(spec.pidFile, { force: true });
      throw new StrataError("unavailable", `${spec.label} exited during start-up; the end of ${spec.logFile}:\n${await logTail(spec.logFile)}`);
    }
    if (Date.now() > deadline) {
      await stopPid(pid, spec.subcommand, { immediate: true });
      await rm(spec.pidFile, { force: true });
      throw new StrataError("timeout", `${spec.label} did not answer ${spec.readyUrl} within ${timeoutMs} ms; the end of ${spec.logFile}:\n${await logTail(spec.logFile)}`);
    }
    await sleep(READY_POLL_MS);
  }
}

/** Signals `pid` and waits for it to go; SIGKILL after the bound. Returns how it ended. */
export async function stopPid(pid: number, subcommand: string, opts: { immediate?: boolean; timeoutMs?: number } = {}): Promise<"stopped" | "killed" | "not_running"> {
  if (!(await isOurService(pid, subcommand))) return "not_running";
  const signal = opts.immediate ? "SIGKILL" : "SIGTERM";
  try {
    process.kill(pid, signal);
  } catch {
    return "not_running";
  }
  const deadline = Date.now() + (opts.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS);
  // Wait until the process is really gone (its command line empties while it exits, before its ports are free).
  while (Date.now() < deadline) {
    if (await processGone(pid)) return opts.immediate ? "killed" : "stopped";
    await sleep(READY_POLL_MS);
  }
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    /* exited just now */
  }
  for (let i = 0; i < 50 && !(await processGone(pid)); i++) await sleep(READY_POLL_MS);
  return "killed";
}

/** Stops the service of a pid file (if running) and removes the pid file. */
export async function stopService(pidFile: string, subcommand: string, opts: { immediate?: boolean; timeoutMs?: number } = {}): Promise<"stopped" | "killed" | "not_running"> {
  const pid = await runningPid(pidFile, subcommand);
  if (pid === undefined) return "not_running";
  const r = await stopPid(pid, subcommand, opts);
  await rm(pidFile, { force: true });
  return r;
}
