/**
 * Test harness: Azurite's blob service (from npm) as a child process on a
 * free loopback port, with a temp directory for its data.
 *
 * Azurite is started with the node running the tests (`azurite-blob`'s
 * script, found through module resolution, not a shell wrapper, loaded by a
 * small launcher that exits when the test process's end of stdin closes, so
 * a crashed test leaves no server behind), in
 * `--loose --skipApiVersionCheck` mode so a newer @azure/storage-blob talks
 * to it. It serves the well-known development account below. Readiness is a
 * successful TCP connect, bounded by START_TIMEOUT_MS; `stop()` sends
 * SIGTERM, then SIGKILL after STOP_GRACE_MS, and removes the directory.
 * Always stop it (`withAzurite` does, also on failure).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { freePort } from "./ports.js";

/** Azurite's (and the Azure emulator's) published development account. Not a secret. */
export const AZURITE_ACCOUNT = "devstoreaccount1";
export const AZURITE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/** Azurite starts in ~1-2 s; 30 s covers a loaded 2-core machine. */
const START_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 5_000;
const START_ATTEMPTS = 3;

/**
 * Runs in the child: exits when its stdin closes (the test process died),
 * then hands over to azurite-blob's own entry point with its arguments.
 */
const LAUNCHER = `
const script = process.argv[1];
process.argv = [process.argv[0], script, ...process.argv.slice(2)];
process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();
require(script);
`;

export interface AzuriteServer {
  /** Blob service URL including the account: http://127.0.0.1:<port>/devstoreaccount1 */
  readonly endpoint: string;
  readonly port: number;
  readonly connectionString: string;
  stop(): Promise<void>;
}

function azuriteBlobScript(): string {
  const require = createRequire(import.meta.url);
  const pkgPath = require.resolve("azurite/package.json");
  const pkg = JSON.parse(readFileSync(pkgPath, "utf8")) as { bin: Record<string, string> };
  const rel = pkg.bin["azurite-blob"];
  if (rel === undefined) throw new Error("azurite's package.json has no azurite-blob binary");
  return join(dirname(pkgPath), rel);
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host: "127.0.0.1", port });
    sock.once("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.once("error", () => resolve(false));
  });
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
  await exited;
  clearTimeout(timer);
}

export async function startAzurite(): Promise<AzuriteServer> {
  const script = azuriteBlobScript();
  const location = await mkdtemp(join(tmpdir(), "strata-azurite-"));
  let lastError = "";
  for (let attempt = 0; attempt < START_ATTEMPTS; attempt++) {
    const port = await freePort();
    const args = ["--blobHost", "127.0.0.1", "--blobPort", String(port), "--location", location, "--silent", "--skipApiVersionCheck", "--loose"];
    const child = spawn(process.execPath, ["-e", LAUNCHER, script, ...args], { stdio: ["pipe", "pipe", "pipe"] });
    let output = "";
    child.stdout?.on("data", (d: Buffer) => (output += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (output += d.toString()));
    let exited = false;
    child.once("exit", () => (exited = true));
    const deadline = Date.now() + START_TIMEOUT_MS;
    let ready = false;
    while (!exited && Date.now() < deadline) {
      if (await canConnect(port)) {
        ready = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    if (!ready) {
      await stopChild(child);
      lastError = exited ? `azurite exited: ${output.slice(-2000)}` : `azurite not listening after ${START_TIMEOUT_MS} ms: ${output.slice(-2000)}`;
      if (/EADDRINUSE/.test(output)) continue;
      break;
    }
    const endpoint = `http://127.0.0.1:${port}/${AZURITE_ACCOUNT}`;
    let stopped = false;
    return {
      endpoint,
      port,
      connectionString: `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_ACCOUNT_KEY};BlobEndpoint=${endpoint};`,
      async stop() {
        if (stopped) return;
        stopped = true;
        try {
          await stopChild(child);
        } finally {
          await rm(location, { recursive: true, force: true });
        }
      },
    };
  }
  await rm(location, { recursive: true, force: true });
  throw new Error(`Azurite did not start: ${lastError}`);
}

/** Runs `fn` with a started Azurite and always stops it. */
export async function withAzurite<T>(fn: (a: AzuriteServer) => Promise<T>): Promise<T> {
  const a = await startAzurite();
  try {
    return await fn(a);
  } finally {
    await a.stop();
  }
}
