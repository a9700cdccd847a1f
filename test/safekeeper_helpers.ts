/**
 * Helpers shared by the safekeeper service tests (test/safekeeper_*.test.ts):
 * in-process and child-process safekeepers, HTTP calls, bounded waits, and
 * byte comparison of the safekeeper's WAL segments with a primary's pg_wal.
 */
import { openSync } from "node:fs";
import { spawn, type ChildProcess } from "node:child_process";
import { copyFile, mkdir, readFile, readdir, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { request } from "node:http";
import { buildConfig } from "../src/safekeeper/config.js";
import { Safekeeper } from "../src/safekeeper/safekeeper.js";
import { generateTenantId, generateTimelineId, type TenantId, type TimelineId } from "../src/lib/id.js";
import { formatLsn, parseLsn, segmentNumber, segmentOffset, segmentStart, walFileName, type Lsn } from "../src/lib/lsn.js";
import { createRegistry } from "../src/lib/metrics.js";
import { createLogger } from "../src/lib/logging.js";
import { makeTempDir } from "./harness/tools.js";

export const SEG = 16 * 1024 * 1024;

export interface TimelineIds {
  tenantId: TenantId;
  timelineId: TimelineId;
}

export function newIds(): TimelineIds {
  return { tenantId: generateTenantId(), timelineId: generateTimelineId() };
}

/** An in-process safekeeper on free ports (logs to stderr at warn unless STRATA_TEST_LOG is set). */
export async function startInProcess(opts: { id?: number; dataDir?: string; password?: string; walReceiver?: "native" | "node" } = {}): Promise<Safekeeper> {
  const dataDir = opts.dataDir ?? (await makeTempDir("sk"));
  const config = buildConfig({
    id: opts.id ?? 1,
    datadir: dataDir,
    pgPort: 0,
    httpPort: 0,
    ...(opts.password ? { password: opts.password } : {}),
    ...(opts.walReceiver !== undefined ? { walReceiver: opts.walReceiver } : {}),
  });
  const log = createLogger({ component: "safekeeper-test", level: process.env.STRATA_TEST_LOG ?? "warn" });
  return await Safekeeper.start({ config, log, registry: createRegistry({ defaultMetrics: false }) });
}

export interface HttpResult {
  status: number;
  body: unknown;
  text: string;
}

/** One HTTP request with a JSON (or raw string) body; bounded. */
export function http(port: number, method: string, path: string, body?: unknown, opts: { raw?: string; contentType?: string } = {}): Promise<HttpResult> {
  const payload = opts.raw ?? (body === undefined ? undefined : JSON.stringify(body));
  return new Promise((resolvePromise, reject) => {
    const req = request(
      {
        host: "127.0.0.1",
        port,
        method,
        path,
        headers: payload === undefined ? {} : { "content-type": opts.contentType ?? "application/json", "content-length": Buffer.byteLength(payload) },
        timeout: 60_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let parsed: unknown = undefined;
          try {
            parsed = JSON.parse(text);
          } catch {
            /* not JSON (metrics) */
          }
          resolvePromise({ status: res.statusCode ?? 0, body: parsed, text });
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on("error", reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

/** Polls `cond` every `intervalMs` until true; throws with `what` after `timeoutMs`. */
export async function waitFor(what: string, cond: () => Promise<boolean> | boolean, timeoutMs: number, intervalMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Reads LSN field `name` of a timeline's HTTP state. */
export async function timelineLsn(port: number, ids: TimelineIds, name: string): Promise<Lsn> {
  const r = await http(port, "GET", `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`);
  if (r.status !== 200) throw new Error(`GET timeline: ${r.status} ${r.text}`);
  return parseLsn((r.body as Record<string, string>)[name]!);
}

/** The bytes of WAL [from, to) from a directory of segment files (`.partial` accepted). */
export async function readWalRange(dir: string, from: Lsn, to: Lsn): Promise<Buffer> {
  const parts: Buffer[] = [];
  const names = new Set(await readdir(dir));
  for (let seg = segmentNumber(from, SEG); segmentStart(seg, SEG) < to; seg++) {
    const name = walFileName(1, seg, SEG);
    const file = names.has(name) ? name : names.has(name + ".partial") ? name + ".partial" : undefined;
    if (file === undefined) throw new Error(`segment ${name} missing in ${dir}`);
    const bytes = await readFile(join(dir, file));
    const a = seg === segmentNumber(from, SEG) ? segmentOffset(from, SEG) : 0;
    const segEnd = segmentStart(seg + 1n, SEG);
    const b = to < segEnd ? segmentOffset(to, SEG) : SEG;
    parts.push(bytes.subarray(a, b));
  }
  return Buffer.concat(parts);
}

/** Asserts WAL [from, to) is byte-identical in two directories; returns the byte count. */
export async function compareWal(primaryWalDir: string, skDir: string, from: Lsn, to: Lsn): Promise<number> {
  const a = await readWalRange(primaryWalDir, from, to);
  const b = await readWalRange(skDir, from, to);
  if (a.length !== b.length) throw new Error(`WAL range lengths differ: ${a.length} vs ${b.length}`);
  if (!a.equals(b)) {
    let i = 0;
    while (i < a.length && a[i] === b[i]) i++;
    throw new Error(`WAL differs at ${formatLsn(from + BigInt(i))} (byte ${i} of [${formatLsn(from)}, ${formatLsn(to)}))`);
  }
  return a.length;
}

/** Copies a safekeeper timeline's segments into a fresh directory with plain names (pg_waldump ignores `.partial`). */
export async function copySegmentsForWaldump(skDir: string): Promise<string> {
  const out = await makeTempDir("skwal");
  for (const name of await readdir(skDir)) {
    if (!/^[0-9A-F]{24}(\.partial)?$/.test(name)) continue;
    await copyFile(join(skDir, name), join(out, name.replace(/\.partial$/, "")));
  }
  return out;
}

export function timelineDir(dataDir: string, ids: TimelineIds): string {
  return join(dataDir, ids.tenantId, ids.timelineId);
}

// ---------------------------------------------------------------------------
// Child-process safekeeper (`node dist/src/cli/main.js safekeeper ...`)
// ---------------------------------------------------------------------------

/** A `strata <command>` child process. */
export interface StrataChild {
  proc: ChildProcess;
  stderr: () => string;
  exited: Promise<number | null>;
}
export type ChildSafekeeper = StrataChild;

const MAIN_JS = resolve("dist/src/cli/main.js");
/** Bound on a child answering /v1/status after spawn. */
const CHILD_START_TIMEOUT_MS = 30_000;
/** Tail of a child's stderr kept for failure messages. */
const STDERR_KEEP_CHARS = 500_000;

/**
 * Spawns `node <mainJs> <command> <args…> --log-level info` and waits until
 * its HTTP API on `httpPort` answers /v1/status (failing at once, with its
 * stderr, if it exits first). `mainJs`: another build's
 * dist/src/cli/main.js (the benchmark compares builds); default this one.
 * STRATA_CHILD_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") adds
 * node flags, for profiling a benchmark's child; STRATA_CHILD_STDOUT=FILE
 * appends the child's stdout (where V8's --trace-* flags print) to FILE.
 */
export async function startStrataChild(opts: { command: string; args: string[]; httpPort: number; mainJs?: string; nodeArgs?: string[]; env?: Record<string, string> }): Promise<StrataChild> {
  const mainJs = opts.mainJs ?? MAIN_JS;
  await stat(mainJs);
  const nodeArgs = [...(process.env.STRATA_CHILD_NODE_ARGS ?? "").split(" ").filter((a) => a !== ""), ...(opts.nodeArgs ?? [])];
  const proc = spawn(process.execPath, [...nodeArgs, mainJs, opts.command, ...opts.args, "--log-level", "info"], {
    stdio: ["ignore", process.env.STRATA_CHILD_STDOUT ? openSync(process.env.STRATA_CHILD_STDOUT, "a") : "ignore", "pipe"],
    env: { ...process.env, ...opts.env },
  });
  let err = "";
  proc.stderr!.on("data", (b: Buffer) => {
    err += b.toString("utf8");
    if (err.length > 2 * STDERR_KEEP_CHARS) err = err.slice(-STDERR_KEEP_CHARS);
  });
  const exited = new Promise<number | null>((r) => proc.on("exit", (code) => r(code)));
  let dead = false;
  void exited.then(() => (dead = true));
  await waitFor(
    `the ${opts.command} child to answer /v1/status`,
    async () => {
      if (dead) throw new Error(`${opts.command} child exited early:\n${err.slice(-3000)}`);
      try {
        return (await http(opts.httpPort, "GET", "/v1/status")).status === 200;
      } catch {
        return false;
      }
    },
    CHILD_START_TIMEOUT_MS,
    100,
  );
  return { proc, stderr: () => err, exited };
}

/** `strata safekeeper` as a child process (see startStrataChild). */
export async function startChild(args: { id: number; dataDir: string; pgPort: number; httpPort: number; mainJs?: string; nodeArgs?: string[]; extraArgs?: string[] }): Promise<ChildSafekeeper> {
  await mkdir(args.dataDir, { recursive: true });
  return await startStrataChild({
    command: "safekeeper",
    args: ["--id", String(args.id), "--datadir", args.dataDir, "--pg-port", String(args.pgPort), "--http-port", String(args.httpPort), ...(args.extraArgs ?? [])],
    httpPort: args.httpPort,
    ...(args.mainJs !== undefined ? { mainJs: args.mainJs } : {}),
    ...(args.nodeArgs !== undefined ? { nodeArgs: args.nodeArgs } : {}),
  });
}

/** Stops a child (SIGTERM, then SIGKILL after a bound). */
export async function stopChild(c: ChildSafekeeper, signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
  if (c.proc.exitCode !== null || c.proc.signalCode !== null) return c.proc.exitCode;
  c.proc.kill(signal);
  const t = setTimeout(() => c.proc.kill("SIGKILL"), 15_000);
  try {
    return await c.exited;
  } finally {
    clearTimeout(t);
  }
}
