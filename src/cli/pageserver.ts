/**
 * `strata pageserver …`: run one pageserver in the foreground.
 *
 *   strata pageserver --datadir /var/lib/strata/ps --pg-port 64000 --http-port 9898
 *                     [--listen-host 127.0.0.1] [--safekeepers host:5454,host:5455]
 *                     [--page-cache-pages 8192] [--walredo-processes 1]
 *                     [--checkpoint-distance BYTES] [--log-level info]
 *                     [--remote-storage URL] [--max-local-layer-bytes BYTES]
 *
 * --remote-storage takes the URL grammar of src/remote_storage/config.ts
 * (file:///path, s3://bucket/prefix?endpoint=…&region=…&force_path_style=true,
 * azure://container/prefix?…): layers and index_part.json are uploaded there
 * and tenants can be attached from it (docs/remote-storage.md). Without it the
 * pageserver is local only and remote_consistent_lsn stays 0/0.
 *
 * Tenants and timelines live under <datadir>/tenants/. Logs are JSON lines on
 * stderr. SIGTERM / SIGINT stop it gracefully (open layers flushed, tasks
 * awaited); a second signal exits at once. Exit code 0 after a clean stop, 1
 * when start-up fails.
 */
import { resolve } from "node:path";
import type { Command } from "commander";
import { StrataError } from "../lib/errors.js";
import { createLogger, errorFields } from "../lib/logging.js";
import { createRegistry } from "../lib/metrics.js";
import { defaultPageserverConfig, parseHostPort, parseTenantConfig } from "../pageserver/config.js";
import { Pageserver } from "../pageserver/pageserver.js";
import { parseRemoteStorageUrl } from "../remote_storage/config.js";

interface Flags {
  datadir?: string;
  pgPort?: string;
  httpPort?: string;
  listenHost?: string;
  safekeepers?: string;
  pageCachePages?: string;
  walredoProcesses?: string;
  checkpointDistance?: string;
  logLevel?: string;
  remoteStorage?: string;
  maxLocalLayerBytes?: string;
}

function intFlag(name: string, v: string | undefined, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new StrataError("invalid_argument", `--${name} must be an integer in [${min}, ${max}], got "${v}"`);
  return n;
}

export function register(program: Command): void {
  program
    .command("pageserver")
    .description("run a pageserver: ingests WAL from safekeepers into layered storage and serves pages at any LSN")
    .requiredOption("--datadir <dir>", "data directory (tenants under <dir>/tenants/)")
    .option("--pg-port <port>", "libpq page service port (default 64000; 0 = any)")
    .option("--http-port <port>", "HTTP management API port (default 9898; 0 = any)")
    .option("--listen-host <addr>", "address to listen on (default 127.0.0.1)")
    .option("--safekeepers <list>", "safekeepers' WAL service addresses, host:port,...")
    .option("--page-cache-pages <n>", "materialized page cache capacity in 8 KiB pages (default 8192)")
    .option("--walredo-processes <n>", "WAL redo helper processes per tenant (default 1)")
    .option("--checkpoint-distance <bytes>", "default tenant checkpoint distance (open layer size before a flush)")
    .option("--log-level <level>", "log level (trace, debug, info, warn, error)")
    .option("--remote-storage <url>", "remote storage for layers and index_part.json: file:///path, s3://bucket/prefix?…, azure://container/prefix?…")
    .option("--max-local-layer-bytes <bytes>", "with remote storage: evict least recently read layers when local layer files exceed this")
    .addHelpText(
      "after",
      `
Create a tenant and bootstrap a timeline from a cleanly stopped PostgreSQL 15 data directory:
  curl -X POST localhost:9898/v1/tenant -H 'content-type: application/json' -d '{}'
  curl -X POST localhost:9898/v1/tenant/<tenant>/timeline -H 'content-type: application/json' \\
       -d '{"new_timeline_id":"<timeline>","import_datadir":"/path/to/stopped/datadir"}'
Branch it at an LSN:
  curl -X POST localhost:9898/v1/tenant/<tenant>/timeline -H 'content-type: application/json' \\
       -d '{"ancestor_timeline_id":"<timeline>","ancestor_start_lsn":"0/16B3748"}'
Pages: libpq "pagestream <tenant> <timeline>" on the page service port (src/pageserver/pagestream.ts).`,
    )
    .action(async (flags: Flags) => {
      let ps: Pageserver | undefined;
      const log = createLogger({ component: "pageserver", level: flags.logLevel });
      try {
        const config = defaultPageserverConfig(resolve(flags.datadir!));
        const host = flags.listenHost ?? config.listenPgHost;
        config.listenPgHost = host;
        config.listenHttpHost = host;
        config.listenPgPort = intFlag("pg-port", flags.pgPort, 0, 65535) ?? config.listenPgPort;
        config.listenHttpPort = intFlag("http-port", flags.httpPort, 0, 65535) ?? config.listenHttpPort;
        config.pageCachePages = intFlag("page-cache-pages", flags.pageCachePages, 0, 1 << 24) ?? config.pageCachePages;
        config.walRedoProcesses = intFlag("walredo-processes", flags.walredoProcesses, 1, 16) ?? config.walRedoProcesses;
        if (flags.safekeepers !== undefined) {
          config.safekeepers = flags.safekeepers.split(",").map((s) => s.trim()).filter((s) => s !== "");
          config.safekeepers.forEach(parseHostPort);
        }
        if (flags.remoteStorage !== undefined) {
          parseRemoteStorageUrl(flags.remoteStorage); // reject a bad URL before anything starts
          config.remoteStorage = flags.remoteStorage;
        }
        config.maxLocalLayerBytes = intFlag("max-local-layer-bytes", flags.maxLocalLayerBytes, 0, Number.MAX_SAFE_INTEGER);
        if (config.maxLocalLayerBytes !== undefined && config.remoteStorage === undefined) {
          throw new StrataError("invalid_argument", "--max-local-layer-bytes needs --remote-storage (only layers held remotely can be evicted)");
        }
        if (flags.checkpointDistance !== undefined) {
          config.defaultTenantConfig = parseTenantConfig({ checkpointDistanceBytes: Number(flags.checkpointDistance) }, config.defaultTenantConfig);
        }
        ps = await Pageserver.start({ config, log, registry: createRegistry() });
      } catch (e) {
        log.fatal(errorFields(e), "pageserver failed to start");
        process.stderr.write(`strata pageserver: ${(e as Error).message}${e instanceof StrataError ? ` [${e.code}]` : ""}\n`);
        log.flush();
        process.exitCode = 1;
        return;
      }
      const running = ps;
      let signals = 0;
      await new Promise<void>((done) => {
        const onSignal = () => {
          signals++;
          if (signals > 1) process.exit(1);
          void running.stop().finally(() => done());
        };
        process.on("SIGTERM", onSignal);
        process.on("SIGINT", onSignal);
      });
      log.flush();
    });
}
