/**
 * Loopback ports for a local deployment.
 *
 * `strata init` asks the OS for free ports (bind to port 0) for every
 * service and persists them, so several deployments (tests) run side by side
 * and a restart reuses the same ports. Before starting a service the control
 * plane checks that its port is still free (`checkPortFree`): a port taken by
 * some other program is a clear "port in use" error, not a service that dies
 * in its log.
 */
import { createServer } from "node:net";
import { StrataError } from "../lib/errors.js";

/** Attempts to find a port not already chosen in the same batch. */
const FREE_PORT_ATTEMPTS = 50;

function listenOnce(port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(port, host, () => {
      const addr = srv.address();
      const p = typeof addr === "object" && addr !== null ? addr.port : 0;
      srv.close(() => resolve(p));
    });
  });
}

/** `count` distinct free loopback ports, none of them in `avoid`. */
export async function allocatePorts(count: number, avoid: Iterable<number> = [], host = "127.0.0.1"): Promise<number[]> {
  const taken = new Set(avoid);
  const out: number[] = [];
  for (let attempt = 0; out.length < count; attempt++) {
    if (attempt >= FREE_PORT_ATTEMPTS + count) throw new StrataError("unavailable", `Could not find ${count} free loopback ports`);
    const p = await listenOnce(0, host);
    if (!taken.has(p)) {
      taken.add(p);
      out.push(p);
    }
  }
  return out;
}

/** True when nothing listens on host:port (we could bind it). */
export async function isPortFree(port: number, host = "127.0.0.1"): Promise<boolean> {
  try {
    await listenOnce(port, host);
    return true;
  } catch {
    return false;
  }
}

/** Throws a clear "port in use" error when `port` is taken. */
export async function checkPortFree(port: number, what: string, host = "127.0.0.1"): Promise<void> {
  if (!(await isPortFree(port, host))) {
    throw new StrataError("unavailable", `Port ${port} (${what}) is in use by another program; stop it or change the port in the repo's config.json`);
  }
}

/** Parses a --port value. */
export function parsePort(text: string, flag = "--port"): number {
  const n = Number(text);
  if (!/^[0-9]+$/.test(text) || !Number.isInteger(n) || n < 1 || n > 65535) throw new StrataError("invalid_argument", `${flag} must be a port number in [1, 65535], got "${text}"`);
  return n;
}
