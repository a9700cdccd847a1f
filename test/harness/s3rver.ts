/**
 * Test harness: an S3-compatible endpoint (s3rver, from npm) on a free
 * loopback port, backed by a temp directory.
 *
 * s3rver runs as a child process of the node running the tests, because it
 * encrypts ListObjectsV2 continuation tokens with DES, which Node 20's
 * OpenSSL 3 only offers with `--openssl-legacy-provider` — a flag the test
 * process itself should not need. The child reads its stdin and exits when
 * it closes, so it dies with the test process even after a crash. Readiness
 * is a line on its stdout, bounded by START_TIMEOUT_MS; `stop()` sends
 * SIGTERM (SIGKILL after STOP_GRACE_MS) and removes the directory. A bind
 * that loses the race for the port to another test file retries on a new port.
 *
 * s3rver accepts any credentials; tests use the fixed pair below.
 * Known differences from S3 (documented in docs/remote-storage.md): it
 * writes an object in place while receiving it, so an aborted upload leaves
 * a partial object; and it answers "bytes=0-0" with the whole object.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./ports.js";

/** Any credentials work with s3rver; these are the ones its docs use. */
export const S3RVER_CREDENTIALS = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" } as const;
const START_ATTEMPTS = 3;
/** s3rver starts in well under a second; 30 s covers a loaded 2-core machine. */
const START_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 5_000;

/** Runs in the child: node --openssl-legacy-provider -e LAUNCHER <s3rver module> <port> <dir> <buckets,…> */
const LAUNCHER = `
const [mod, port, directory, buckets] = process.argv.slice(1);
const S3rver = require(mod);
process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();
new S3rver({
  address: "127.0.0.1",
  port: Number(port),
  directory,
  silent: process.env.S3RVER_VERBOSE !== "1",
  configureBuckets: buckets.split(",").filter(Boolean).map((name) => ({ name })),
}).run().then(
  () => console.log("S3RVER_READY"),
  (err) => { console.log("S3RVER_FAILED " + (err && err.code) + " " + (err && err.message)); process.exit(1); },
);
`;

export interface S3rverServer {
  readonly endpoint: string;
  readonly port: number;
  readonly directory: string;
  /** Buckets created at start. */
  readonly buckets: readonly string[];
  stop(): Promise<void>;
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
  await exited;
  clearTimeout(timer);
}

export async function startS3rver(opts: { buckets?: string[] } = {}): Promise<S3rverServer> {
  const mod = createRequire(import.meta.url).resolve("s3rver");
  const buckets = opts.buckets ?? ["strata-test"];
  const directory = await mkdtemp(join(tmpdir(), "strata-s3rver-"));
  let lastError = "";
  for (let attempt = 0; attempt < START_ATTEMPTS; attempt++) {
    const port = await freePort();
    const child = spawn(process.execPath, ["--openssl-legacy-provider", "-e", LAUNCHER, mod, String(port), directory, buckets.join(",")], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    let output = "";
    const ready = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), START_TIMEOUT_MS);
      const onData = (d: Buffer): void => {
        output += d.toString();
        if (output.includes("S3RVER_READY")) {
          clearTimeout(timer);
          resolve(true);
        } else if (output.includes("S3RVER_FAILED")) {
          clearTimeout(timer);
          resolve(false);
        }
      };
      child.stdout?.on("data", onData);
      child.stderr?.on("data", (d: Buffer) => (output += d.toString()));
      child.once("exit", () => {
        clearTimeout(timer);
        resolve(false);
      });
    });
    if (!ready) {
      await stopChild(child);
      lastError = output.slice(-2000);
      if (/EADDRINUSE/.test(output)) continue;
      break;
    }
    if (process.env.S3RVER_VERBOSE === "1") child.stdout?.pipe(process.stderr);
    else child.stdout?.resume();
    child.stderr?.resume();
    let stopped = false;
    return {
      endpoint: `http://127.0.0.1:${port}`,
      port,
      directory,
      buckets,
      async stop() {
        if (stopped) return;
        stopped = true;
        try {
          await stopChild(child);
        } finally {
          await rm(directory, { recursive: true, force: true });
        }
      },
    };
  }
  await rm(directory, { recursive: true, force: true });
  throw new Error(`s3rver did not start: ${lastError}`);
}

/** Runs `fn` with a started s3rver and always stops it. */
export async function withS3rver<T>(opts: { buckets?: string[] }, fn: (s: S3rverServer) => Promise<T>): Promise<T> {
  const s = await startS3rver(opts);
  try {
    return await fn(s);
  } finally {
    await s.stop();
  }
}
