/**
 * Safekeeper configuration: what one safekeeper process needs to run, from
 * command-line flags and/or a TOML file (flags win), validated into one
 * object before anything starts.
 *
 * TOML keys (all optional except id and datadir, which may come from flags):
 *
 *   id = 1                          # this safekeeper's id (>= 1); slot and application_name are sk_<id>
 *   datadir = "/var/lib/strata/sk1" # timelines live under <datadir>/<tenant>/<timeline>/
 *   listen_host = "127.0.0.1"       # address both listeners bind to
 *   pg_port = 5454                  # libpq WAL service (0 = any free port)
 *   http_port = 7676                # HTTP management API (0 = any free port)
 *   peers = ["2=127.0.0.1:5455:7677", "3=127.0.0.1:5456:7678"]   # other members: id=host:pg_port:http_port
 *   password = "secret"             # when set, WAL service clients authenticate with this password (SCRAM)
 *   log_level = "info"
 *   wal_fsync = "inline"            # "inline": fsync on the event loop (lowest commit latency, like
 *                                   # pg_receivewal); "background": on the thread pool, so fsyncs of
 *                                   # many busy timelines overlap (see inline_fs.ts)
 *   wal_receiver = "native"         # "native": each compute's commit loop runs in the C receiver
 *                                   # (walreceiver/, docs/safekeeper-native-receiver.md); "node": in
 *                                   # this process (also STRATA_WAL_RECEIVER; flag --wal-receiver)
 *   remote_storage = "s3://bucket/prefix?endpoint=...&force_path_style=true"
 *                                   # WAL offload (wal_backup.ts): a URL, or a [remote_storage] table,
 *                                   # as in docs/remote-storage.md; segments go to wal/<tenant>/<timeline>/
 *
 * `peers` empty means this safekeeper is the only member of every timeline's
 * safekeeper set: commit_lsn is its own flush record LSN. With peers, the
 * consensus module (src/safekeeper/consensus, peers.ts) computes commit_lsn.
 */
import { readFile } from "node:fs/promises";
import { parse as parseToml } from "smol-toml";
import { StrataError } from "../lib/errors.js";

export interface PeerConfig {
  readonly id: number;
  readonly host: string;
  readonly pgPort: number;
  readonly httpPort: number;
}

export interface SafekeeperConfig {
  readonly id: number;
  readonly dataDir: string;
  readonly listenHost: string;
  readonly pgPort: number;
  readonly httpPort: number;
  readonly peers: readonly PeerConfig[];
  /** WAL service password (SCRAM-SHA-256); undefined = trust. */
  readonly password: string | undefined;
  readonly logLevel: string;
  /** Where WAL fsyncs run (inline_fs.ts). */
  readonly walFsync: WalFsyncMode;
  /**
   * Where finished WAL segments are offloaded (wal_backup.ts): a URL or a
   * TOML table as docs/remote-storage.md describes; undefined = no offload.
   * Only its shape is checked here; the safekeeper parses it fully when it
   * starts, loading the storage SDKs only then (they cost ~0.4 s of CPU per
   * process start, which every safekeeper without remote storage is spared).
   */
  readonly remoteStorage: string | Readonly<Record<string, unknown>> | undefined;
  /**
   * What runs the commit loop of a compute's WAL stream: "native" (default)
   * the C receiver process (walreceiver/, native_receiver.ts), "node" this
   * process's own acceptor loop. Native falls back to node when the binary
   * was not built.
   */
  readonly walReceiver: WalReceiverMode;
}

export type WalFsyncMode = "inline" | "background";
export type WalReceiverMode = "native" | "node";

export const DEFAULT_LISTEN_HOST = "127.0.0.1";
export const DEFAULT_PG_PORT = 5454;
export const DEFAULT_HTTP_PORT = 7676;
/** Ids become slot names (`sk_<id>`, NAMEDATALEN-limited) and labels; a small positive integer is enough. */
export const MAX_SAFEKEEPER_ID = 1_000_000;

/** Flag values as the command line collects them (strings or undefined). */
export interface SafekeeperConfigInput {
  id?: string | number;
  datadir?: string;
  listenHost?: string;
  pgPort?: string | number;
  httpPort?: string | number;
  peers?: string | readonly string[];
  password?: string;
  logLevel?: string;
  walFsync?: string;
  walReceiver?: string;
  /** A remote storage URL (file://, s3://, azure://). */
  remoteStorage?: string;
}

function bad(message: string): StrataError {
  return new StrataError("invalid_argument", message);
}

function intIn(name: string, v: string | number, min: number, max: number): number {
  const n = typeof v === "number" ? v : /^[0-9]+$/.test(v.trim()) ? Number(v.trim()) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw bad(`Invalid ${name} ${JSON.stringify(v)}: expected an integer in [${min}, ${max}]`);
  return n;
}

/** Parses one peer: `id=host:pg_port:http_port`. */
export function parsePeer(text: string): PeerConfig {
  const m = /^([0-9]+)=([^:=\s]+):([0-9]+):([0-9]+)$/.exec(text.trim());
  if (m === null) throw bad(`Invalid peer ${JSON.stringify(text)}: expected id=host:pg_port:http_port`);
  return {
    id: intIn("peer id", m[1]!, 1, MAX_SAFEKEEPER_ID),
    host: m[2]!,
    pgPort: intIn("peer pg port", m[3]!, 1, 65535),
    httpPort: intIn("peer http port", m[4]!, 1, 65535),
  };
}

/** Merges flags over a TOML document and validates the result. */
export function buildConfig(flags: SafekeeperConfigInput, toml: Record<string, unknown> = {}): SafekeeperConfig {
  const known = new Set(["id", "datadir", "listen_host", "pg_port", "http_port", "peers", "password", "log_level", "wal_fsync", "wal_receiver", "remote_storage"]);
  for (const k of Object.keys(toml)) if (!known.has(k)) throw bad(`Unknown configuration key ${JSON.stringify(k)}`);
  const pick = <T>(flag: T | undefined, key: string): unknown => (flag !== undefined ? flag : toml[key]);
  const str = (v: unknown, name: string): string | undefined => {
    if (v === undefined) return undefined;
    if (typeof v !== "string") throw bad(`Configuration ${name} must be a string`);
    return v;
  };
  const num = (v: unknown, name: string): string | number | undefined => {
    if (v === undefined) return undefined;
    if (typeof v !== "string" && typeof v !== "number") throw bad(`Configuration ${name} must be an integer`);
    return v;
  };
  const idRaw = num(pick(flags.id, "id"), "id");
  if (idRaw === undefined) throw bad("The safekeeper id is required (--id N)");
  const dataDir = str(pick(flags.datadir, "datadir"), "datadir");
  if (dataDir === undefined || dataDir === "") throw bad("The data directory is required (--datadir DIR)");
  const id = intIn("safekeeper id", idRaw, 1, MAX_SAFEKEEPER_ID);
  const peersRaw = pick(flags.peers, "peers");
  let peerTexts: string[];
  if (peersRaw === undefined) peerTexts = [];
  else if (typeof peersRaw === "string") peerTexts = peersRaw.split(",").filter((s) => s.trim() !== "");
  else if (Array.isArray(peersRaw) && peersRaw.every((p) => typeof p === "string")) peerTexts = peersRaw as string[];
  else throw bad("Configuration peers must be a list of id=host:pg_port:http_port strings");
  const peers = peerTexts.map(parsePeer);
  const ids = new Set<number>([id]);
  for (const p of peers) {
    if (ids.has(p.id)) throw bad(`Peer id ${p.id} appears twice (or is this safekeeper's own id)`);
    ids.add(p.id);
  }
  const walFsync = str(pick(flags.walFsync, "wal_fsync"), "wal_fsync") ?? "inline";
  if (walFsync !== "inline" && walFsync !== "background") throw bad(`Invalid wal_fsync ${JSON.stringify(walFsync)}: expected "inline" or "background"`);
  const walReceiver = str(pick(flags.walReceiver, "wal_receiver"), "wal_receiver") ?? process.env.STRATA_WAL_RECEIVER ?? "native";
  if (walReceiver !== "native" && walReceiver !== "node") throw bad(`Invalid wal_receiver ${JSON.stringify(walReceiver)}: expected "native" or "node"`);
  const remoteRaw = pick(flags.remoteStorage, "remote_storage");
  let remoteStorage: string | Readonly<Record<string, unknown>> | undefined;
  if (typeof remoteRaw === "string") {
    if (!/^(file|s3|azure):\/\//.test(remoteRaw)) throw bad(`Invalid remote_storage ${JSON.stringify(remoteRaw)}: expected file:///path, s3://bucket/prefix or azure://container/prefix`);
    remoteStorage = remoteRaw;
  } else if (typeof remoteRaw === "object" && remoteRaw !== null && !Array.isArray(remoteRaw)) {
    remoteStorage = remoteRaw as Record<string, unknown>;
  } else if (remoteRaw !== undefined) {
    throw bad("Configuration remote_storage must be a URL string or a table");
  }
  const pgPort = num(pick(flags.pgPort, "pg_port"), "pg_port");
  const httpPort = num(pick(flags.httpPort, "http_port"), "http_port");
  return {
    id,
    dataDir,
    listenHost: str(pick(flags.listenHost, "listen_host"), "listen_host") ?? DEFAULT_LISTEN_HOST,
    pgPort: pgPort === undefined ? DEFAULT_PG_PORT : intIn("pg port", pgPort, 0, 65535),
    httpPort: httpPort === undefined ? DEFAULT_HTTP_PORT : intIn("http port", httpPort, 0, 65535),
    peers,
    password: str(pick(flags.password, "password"), "password"),
    logLevel: str(pick(flags.logLevel, "log_level"), "log_level") ?? "info",
    walFsync,
    remoteStorage,
    walReceiver,
  };
}

/** Reads a TOML configuration file (invalid_argument with the parser's message when malformed). */
export async function loadConfigFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    throw new StrataError("not_found", `Cannot read configuration file ${path}`, { cause: e });
  }
  try {
    return parseToml(text) as Record<string, unknown>;
  } catch (e) {
    throw new StrataError("invalid_argument", `Cannot parse configuration file ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/** The replication slot and application_name a safekeeper uses on computes. */
export function safekeeperSlotName(id: number): string {
  return `sk_${id}`;
}
