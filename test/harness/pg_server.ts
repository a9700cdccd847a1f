/**
 * Test harness: a real PostgreSQL 15 server in a temp directory.
 *
 * `startPostgres(opts)` runs initdb (optionally with data checksums) into a
 * fresh temp directory, writes the requested settings, starts the server on
 * a free loopback port (no Unix socket) and returns a `PgServer` with helpers
 * for what tests need: SQL through real `psql`, `pgbench`, WAL positions,
 * CHECKPOINT, raw pages through pageinspect, relation file paths.
 *
 * Lifetime: every server is registered in a process-wide set. `stop()`
 * removes it; a process `exit` hook stops any server a failing test left
 * running (immediate mode) and removes its directory, so no server outlives
 * its test file. `withPostgres` is the try/finally form tests should prefer.
 */
import { execFileSync } from "node:child_process";
import { rmSync, existsSync } from "node:fs";
import { writeFile, appendFile, readFile } from "node:fs/promises";
import { join } from "node:path";
import { parseLsn, type Lsn } from "../../src/lib/lsn.js";
import { freePort } from "./ports.js";
import { makeTempDir, pgUser, PG_BIN_DIR, removeTempDir, runProgram, runTool, runToolOk } from "./tools.js";

export { PG_BIN_DIR } from "./tools.js";

/** Bound on server start-up and shut-down (pg_ctl -t). */
const PG_CTL_TIMEOUT_S = 60;
/** Start attempts: a concurrent test file may grab our port between probe and bind. */
const START_ATTEMPTS = 3;
const SUPERUSER = "postgres";

export interface PgServerOptions {
  walLevel?: "minimal" | "replica" | "logical";
  dataChecksums?: boolean;
  walCompression?: "off" | "pglz" | "lz4" | "zstd";
  fullPageWrites?: boolean;
  synchronousStandbyNames?: string;
  /** Extra postgresql.conf settings. */
  settings?: Record<string, string | number | boolean>;
  initdbArgs?: string[];
}

const running = new Set<PgServer>();
process.on("exit", () => {
  for (const s of running) s.killSync();
});

function confValue(v: string | number | boolean): string {
  if (typeof v === "boolean") return v ? "on" : "off";
  if (typeof v === "number") return String(v);
  return `'${v.replace(/'/g, "''")}'`;
}

export class PgServer {
  readonly host = "127.0.0.1";
  readonly walDir: string;
  private started = false;

  constructor(
    readonly baseDir: string,
    readonly dataDir: string,
    public port: number,
  ) {
    this.walDir = join(dataDir, "pg_wal");
  }

  connString(db = "postgres"): string {
    return `host=${this.host} port=${this.port} user=${SUPERUSER} dbname=${db}`;
  }

  get logFile(): string {
    return join(this.baseDir, "server.log");
  }

  /** Runs SQL through psql; returns trimmed stdout (unaligned, tuples only). Rejects on error. */
  async sql(query: string, opts: { db?: string; timeoutMs?: number } = {}): Promise<string> {
    const r = await runTool(
      "psql",
      ["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", this.host, "-p", String(this.port), "-U", SUPERUSER, "-d", opts.db ?? "postgres", "-f", "-"],
      { input: query, timeoutMs: opts.timeoutMs },
    );
    if (r.code !== 0) throw new Error(`psql failed (${r.code}): ${r.stderr.trim()}\nquery: ${query.slice(0, 500)}`);
    return r.stdout.trim();
  }

  /** Runs a query and splits the result into rows and fields. */
  async rows(query: string, opts: { db?: string } = {}): Promise<string[][]> {
    const r = await runTool(
      "psql",
      ["-X", "-A", "-t", "-q", "-F", "\x1f", "-v", "ON_ERROR_STOP=1", "-h", this.host, "-p", String(this.port), "-U", SUPERUSER, "-d", opts.db ?? "postgres", "-f", "-"],
      { input: query },
    );
    if (r.code !== 0) throw new Error(`psql failed (${r.code}): ${r.stderr.trim()}\nquery: ${query.slice(0, 500)}`);
    return r.stdout.split("\n").filter((l) => l.length > 0).map((l) => l.split("\x1f"));
  }

  async currentWalLsn(): Promise<Lsn> {
    return parseLsn(await this.sql("SELECT pg_current_wal_lsn()"));
  }

  async checkpoint(): Promise<void> {
    await this.sql("CHECKPOINT");
  }

  /** pg_switch_wal(); returns the LSN it reports (end of the switch record). */
  async switchWal(): Promise<Lsn> {
    return parseLsn(await this.sql("SELECT pg_switch_wal()"));
  }

  async pgbench(args: string[], opts: { db?: string; timeoutMs?: number } = {}): Promise<string> {
    const r = await runTool(
      "pgbench",
      ["-h", this.host, "-p", String(this.port), "-U", SUPERUSER, ...args, opts.db ?? "postgres"],
      { timeoutMs: opts.timeoutMs ?? 300_000 },
    );
    if (r.code !== 0) throw new Error(`pgbench ${args.join(" ")} failed (${r.code}): ${r.stderr.trim()}`);
    return r.stdout + r.stderr;
  }

  /** An 8 KiB page through pageinspect's get_raw_page (the buffer-cache version). */
  async rawPage(relation: string, fork: "main" | "fsm" | "vm" | "init", block: number, opts: { db?: string } = {}): Promise<Buffer> {
    const hex = await this.sql(
      `CREATE EXTENSION IF NOT EXISTS pageinspect; SELECT encode(get_raw_page('${relation.replace(/'/g, "''")}', '${fork}', ${block}), 'hex')`,
      opts,
    );
    const page = Buffer.from(hex, "hex");
    if (page.length !== 8192) throw new Error(`get_raw_page returned ${page.length} bytes`);
    return page;
  }

  /** Absolute path of the relation's first segment file. */
  async relationFilePath(relation: string, opts: { db?: string } = {}): Promise<string> {
    const rel = await this.sql(`SELECT pg_relation_filepath('${relation.replace(/'/g, "''")}')`, opts);
    return join(this.dataDir, rel);
  }

  /** Starts the server (again); retries on a port taken by someone else. */
  async start(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const r = await runTool(
        "pg_ctl",
        ["start", "-D", this.dataDir, "-l", this.logFile, "-w", "-t", String(PG_CTL_TIMEOUT_S), "-o", `-p ${this.port}`],
        { asPgUser: true, timeoutMs: (PG_CTL_TIMEOUT_S + 10) * 1000 },
      );
      if (r.code === 0) break;
      const log = existsSync(this.logFile) ? await readFile(this.logFile, "utf8") : "";
      if (attempt < START_ATTEMPTS && /could not bind|Address already in use/.test(log)) {
        this.port = await freePort();
        continue;
      }
      throw new Error(`pg_ctl start failed (${r.code}): ${r.stderr.trim()}\n--- server log tail ---\n${log.slice(-3000)}`);
    }
    this.started = true;
    running.add(this);
  }

  async stop(mode: "fast" | "immediate" = "fast"): Promise<void> {
    if (!this.started) return;
    await runToolOk("pg_ctl", ["stop", "-D", this.dataDir, "-m", mode, "-w", "-t", String(PG_CTL_TIMEOUT_S)], {
      asPgUser: true,
      timeoutMs: (PG_CTL_TIMEOUT_S + 10) * 1000,
    });
    this.started = false;
  }

  /** Stops the server (if running) and removes its directory. */
  async destroy(): Promise<void> {
    try {
      await this.stop("fast");
    } catch {
      await this.stop("immediate").catch(() => undefined);
    } finally {
      running.delete(this);
      await removeTempDir(this.baseDir);
    }
  }

  /** Last-resort synchronous clean-up from the process exit hook. */
  killSync(): void {
    try {
      if (this.started) {
        const user = pgUser();
        execFileSync(join(PG_BIN_DIR, "pg_ctl"), ["stop", "-D", this.dataDir, "-m", "immediate", "-w", "-t", "20"], {
          stdio: "ignore",
          ...(user ? { uid: user.uid, gid: user.gid } : {}),
        });
      }
    } catch {
      /* best effort: the process is exiting */
    }
    rmSync(this.baseDir, { recursive: true, force: true });
  }
}

/** initdb + configure + start. The caller must `destroy()` (or use withPostgres). */
export async function startPostgres(opts: PgServerOptions = {}): Promise<PgServer> {
  const baseDir = await makeTempDir("pg");
  const dataDir = join(baseDir, "data");
  const server = new PgServer(baseDir, dataDir, await freePort());
  try {
    const initdbArgs = ["-D", dataDir, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"];
    if (opts.dataChecksums) initdbArgs.push("--data-checksums");
    initdbArgs.push(...(opts.initdbArgs ?? []));
    await runToolOk("initdb", initdbArgs, { asPgUser: true });

    const settings: Record<string, string | number | boolean> = {
      listen_addresses: "127.0.0.1",
      unix_socket_directories: "",
      wal_level: opts.walLevel ?? "replica",
      wal_compression: opts.walCompression ?? "off",
      full_page_writes: opts.fullPageWrites ?? true,
      // Test servers trade durability for speed; tests about crash safety override this.
      fsync: false,
      shared_buffers: "32MB",
      max_wal_senders: 10,
      max_replication_slots: 10,
      log_min_messages: "warning",
      logging_collector: false,
      ...(opts.synchronousStandbyNames !== undefined ? { synchronous_standby_names: opts.synchronousStandbyNames } : {}),
      ...opts.settings,
    };
    const conf = Object.entries(settings).map(([k, v]) => `${k} = ${confValue(v)}`).join("\n");
    await appendFile(join(dataDir, "postgresql.conf"), `\n# strata test harness\n${conf}\n`);
    // Replication connections over TCP (initdb's default pg_hba has them for 127.0.0.1 with trust).
    await server.start();
    return server;
  } catch (e) {
    await server.destroy();
    throw e;
  }
}

/** Starts a server, runs `fn`, and always stops and removes the server. */
export async function withPostgres<T>(opts: PgServerOptions, fn: (pg: PgServer) => Promise<T>): Promise<T> {
  const pg = await startPostgres(opts);
  try {
    return await fn(pg);
  } finally {
    await pg.destroy();
  }
}

/** Writes a file into a server's data directory, owned by the server's user. */
export async function writeDataFile(pg: PgServer, relPath: string, content: string | Uint8Array): Promise<void> {
  const p = join(pg.dataDir, relPath);
  await writeFile(p, content);
  const user = pgUser();
  if (user) await runProgram("/bin/chown", [`${user.uid}:${user.gid}`, p]);
}
