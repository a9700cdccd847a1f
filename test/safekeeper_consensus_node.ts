/**
 * A safekeeper process with the consensus extension, for the multi-safekeeper
 * integration tests (test/safekeeper_consensus_pg.test.ts), which kill it
 * with SIGKILL. Until `strata safekeeper` loads the extension itself this is
 * the entry point: `node dist/test/safekeeper_consensus_node.js '<json>'`
 * with {id, dataDir, pgPort, httpPort, peers: ["2=127.0.0.1:pg:http", ...]}.
 */
import { buildConfig } from "../src/safekeeper/config.js";
import { consensusExtension } from "../src/safekeeper/consensus/extension.js";
import { Safekeeper } from "../src/safekeeper/safekeeper.js";
import { createLogger } from "../src/lib/logging.js";
import { createRegistry } from "../src/lib/metrics.js";

interface Args {
  id: number;
  dataDir: string;
  pgPort: number;
  httpPort: number;
  peers: string[];
}

const args = JSON.parse(process.argv[2] ?? "{}") as Args;
const config = buildConfig({ id: args.id, datadir: args.dataDir, pgPort: args.pgPort, httpPort: args.httpPort, peers: args.peers });
const log = createLogger({ component: `safekeeper-${args.id}`, level: process.env.STRATA_TEST_LOG ?? "info" });
const sk = await Safekeeper.start({ config, log, registry: createRegistry({ defaultMetrics: false }), extensions: [consensusExtension()] });
const stop = () => {
  sk.stop().then(
    () => process.exit(0),
    () => process.exit(1),
  );
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
