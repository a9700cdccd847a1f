/**
 * The compute -> safekeeper -> pageserver chain that the pageserver's
 * integration tests build, in one place:
 *
 * * `computeWithSafekeeper(pg, ids)`: the compute's data directory copied
 *   while it is cleanly stopped (what a new timeline imports: the import LSN
 *   is the shutdown checkpoint, so the WAL the safekeeper streams from the
 *   restarted compute continues exactly there), then an in-process
 *   safekeeper sk_1 with the compute registered at term 1 (the compute's
 *   synchronous_standby_names must name sk_1).
 * * `startPageserverChild(...)`: `strata pageserver` as a child process (for
 *   tests that kill -9 it), waited for until its HTTP API answers.
 *
 * Callers stop what they get back (try/finally), as with every server.
 */
import assert from "node:assert/strict";
import { cp } from "node:fs/promises";
import type { Safekeeper } from "../src/safekeeper/safekeeper.js";
import type { PgServer } from "./harness/pg_server.js";
import { http, startInProcess, startStrataChild, type StrataChild } from "./safekeeper_helpers.js";


export interface ComputeWithSafekeeper {
  /** The compute's data directory as of its clean shutdown: import it as the timeline's start. */
  importDir: string;
  sk: Safekeeper;
}

export async function computeWithSafekeeper(pg: PgServer, ids: { tenantId: string; timelineId: string }): Promise<ComputeWithSafekeeper> {
  await pg.stop("fast");
  const importDir = `${pg.dataDir}.import`;
  await cp(pg.dataDir, importDir, { recursive: true });
  await pg.start();
  const sk = await startInProcess({ id: 1 });
  try {
    const r = await http(sk.httpPort, "PUT", `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}/compute`, { connstr: pg.connString(), term: 1 });
    assert.equal(r.status, 201, r.text);
  } catch (e) {
    await sk.stop();
    throw e;
  }
  return { importDir, sk };
}

export type PageserverChild = StrataChild;

/**
 * `strata pageserver` with 1 MiB checkpoint distance (so a small workload
 * flushes layers), streaming from the safekeeper at `skPort`; `args` adds
 * flags (e.g. `--remote-storage URL`), `env` environment (fail points).
 */
export async function startPageserverChild(opts: {
  dataDir: string;
  pgPort: number;
  httpPort: number;
  skPort: number;
  args?: string[];
  env?: Record<string, string>;
}): Promise<PageserverChild> {
  return await startStrataChild({
    command: "pageserver",
    args: [
      "--datadir",
      opts.dataDir,
      "--pg-port",
      String(opts.pgPort),
      "--http-port",
      String(opts.httpPort),
      "--safekeepers",
      `127.0.0.1:${opts.skPort}`,
      "--checkpoint-distance",
      String(1024 * 1024),
      ...(opts.args ?? []),
    ],
    httpPort: opts.httpPort,
    ...(opts.env !== undefined ? { env: opts.env } : {}),
  });
}
