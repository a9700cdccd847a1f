/**
 * `strata safekeeper …`: run one safekeeper in the foreground.
 *
 *   strata safekeeper --id 1 --datadir /var/lib/strata/sk1 --pg-port 5454 --http-port 7676
 *                     [--listen-host 127.0.0.1] [--peers 2=host:5455:7677,3=host:5456:7678]
 *                     [--password SECRET] [--config sk.toml] [--log-level info]
 *                     [--remote-storage file:///path | s3://bucket/prefix?... | azure://container/prefix?...]
 *
 * Flags override the TOML file (keys in src/safekeeper/config.ts). Logs are
 * JSON lines on stderr. SIGTERM / SIGINT stop it gracefully (listeners
 * closed, tasks cancelled and awaited, progress stored); a second signal
 * exits at once. The exit code is 0 after a clean stop, 1 when start-up fails.
 */
import type { Command } from "commander";
import { StrataError } from "../lib/errors.js";
import { createLogger, errorFields } from "../lib/logging.js";
import { buildConfig, loadConfigFile } from "../safekeeper/config.js";
import { Safekeeper } from "../safekeeper/safekeeper.js";
import { consensusExtension } from "../safekeeper/consensus/extension.js";

interface Flags {
  id?: string;
  datadir?: string;
  pgPort?: string;
  httpPort?: string;
  listenHost?: string;
  peers?: string;
  password?: string;
  config?: string;
  logLevel?: string;
  walFsync?: string;
  walReceiver?: string;
  remoteStorage?: string;
}

export function register(program: Command): void {
  program
    .command("safekeeper")
    .description("run a safekeeper: pulls WAL from computes, makes it durable, serves it to pageservers and standbys")
    .option("--id <n>", "safekeeper id (>= 1); its slot and application_name on computes are sk_<id>")
    .option("--datadir <dir>", "data directory (timelines under <dir>/<tenant>/<timeline>/)")
    .option("--pg-port <port>", "libpq WAL service port (default 5454; 0 = any)")
    .option("--http-port <port>", "HTTP management API port (default 7676; 0 = any)")
    .option("--listen-host <addr>", "address to listen on (default 127.0.0.1)")
    .option("--peers <list>", "other safekeepers of the set: id=host:pg_port:http_port,... (none: this one alone decides commit_lsn)")
    .option("--password <secret>", "require this password (SCRAM-SHA-256) from WAL service clients")
    .option("--config <file>", "TOML configuration file (flags override it)")
    .option("--log-level <level>", "log level (trace, debug, info, warn, error)")
    .option("--wal-fsync <mode>", "inline (default: lowest commit latency) or background (many busy timelines)")
    .option("--wal-receiver <mode>", "native (default: the C commit loop, walreceiver/) or node (the commit loop in this process)")
    .option("--remote-storage <url>", "offload finished WAL segments to file:///path, s3://bucket/prefix?... or azure://container/prefix?... (under wal/<tenant>/<timeline>/)")
    .addHelpText(
      "after",
      `
Register a compute (the safekeeper then connects to it as standby sk_<id>):
  curl -X PUT localhost:7676/v1/tenant/<tenant>/timeline/<timeline>/compute \\
       -H 'content-type: application/json' -d '{"connstr":"host=127.0.0.1 port=5432 user=postgres","term":1}'
The compute needs synchronous_standby_names = 'sk_<id>' (one safekeeper) and wal_level = replica.

Stream WAL from it (pg_receivewal, a hot standby's primary_conninfo, a pageserver):
  pg_receivewal -D out -d "host=127.0.0.1 port=5454 options='-c tenant_id=<tenant> -c timeline_id=<timeline>'"
(the options may be left out while the safekeeper holds exactly one timeline).`,
    )
    .action(async (flags: Flags) => {
      let sk: Safekeeper | undefined;
      let log = createLogger({ component: "safekeeper", level: flags.logLevel });
      try {
        const toml = flags.config !== undefined ? await loadConfigFile(flags.config) : {};
        const config = buildConfig(
          {
            id: flags.id,
            datadir: flags.datadir,
            pgPort: flags.pgPort,
            httpPort: flags.httpPort,
            listenHost: flags.listenHost,
            peers: flags.peers,
            password: flags.password,
            logLevel: flags.logLevel,
            walFsync: flags.walFsync,
            walReceiver: flags.walReceiver,
            remoteStorage: flags.remoteStorage,
          },
          toml,
        );
        log = createLogger({ component: "safekeeper", level: config.logLevel });
        // Consensus (endpoint-start routes; with --peers, peer sync of flush LSNs and commit_lsn)
        // plugs in through the extension point (SafekeeperExtension in src/safekeeper/safekeeper.ts).
        sk = await Safekeeper.start({ config, log, extensions: [consensusExtension()] });
      } catch (e) {
        log.fatal(errorFields(e), "safekeeper failed to start");
        process.stderr.write(`strata safekeeper: ${(e as Error).message}${e instanceof StrataError ? ` [${e.code}]` : ""}\n`);
        log.flush();
        process.exitCode = 1;
        return;
      }
      const running = sk;
      let signals = 0;
      await new Promise<void>((resolve) => {
        const onSignal = (sig: NodeJS.Signals) => {
          signals++;
          if (signals > 1) {
            log.warn({ signal: sig }, "second signal: exiting now");
            process.exit(1);
          }
          log.info({ signal: sig }, "stopping");
          running
            .stop()
            .catch((e: unknown) => log.error(errorFields(e), "stop failed"))
            .finally(() => {
              process.off("SIGTERM", onSignal);
              process.off("SIGINT", onSignal);
              resolve();
            });
        };
        process.on("SIGTERM", onSignal);
        process.on("SIGINT", onSignal);
      });
      log.flush();
    });
}
