/**
 * The configuration a compute (an unmodified PostgreSQL 15) needs to run on
 * strata, as text for its data directory. Pure functions, unit-tested.
 *
 * What a compute must have (DESIGN.md §1):
 * * `wal_level = replica` and enough walsenders and replication slots for
 *   every safekeeper (each pulls WAL as standby `sk_<id>` through slot
 *   `sk_<id>`) plus a few spares for hot standbys and pg_basebackup;
 * * `synchronous_standby_names`: 'sk_1' with one safekeeper, else
 *   'ANY q (sk_1, …, sk_N)' with q = N/2+1, and `synchronous_commit = on`,
 *   so a COMMIT returns only once a quorum has fsynced its WAL;
 * * `fsync = on` (the compute's own crash recovery must hold up);
 * * loopback only (`listen_addresses = 127.0.0.1`), its port, its Unix
 *   socket in the endpoint directory (no clash with a system PostgreSQL);
 * * pg_hba entries that let local tools and the safekeepers in.
 *
 * User settings (`--pg-config KEY=VALUE`, persisted with the endpoint) come
 * last so they override ours — except the ones strata's correctness depends
 * on (PROTECTED_SETTINGS), which are refused with a clear message.
 */
import { StrataError } from "../lib/errors.js";

/** Walsenders and slots beyond one per safekeeper: hot standbys, pg_basebackup, pg_receivewal. */
export const SPARE_WAL_SENDERS = 5;
/** WAL kept beyond what slots hold: a little slack for a standby without a slot. */
export const WAL_KEEP_SIZE = "64MB";
/** The database superuser of every compute (initdb -U postgres on the pageserver). */
export const COMPUTE_SUPERUSER = "postgres";

/** Settings the control plane owns: changing them would break durability or the safekeepers' access. */
export const PROTECTED_SETTINGS: ReadonlySet<string> = new Set(["port", "wal_level", "synchronous_standby_names", "listen_addresses", "unix_socket_directories", "hba_file", "data_directory", "config_file"]);

const KEY_RE = /^[a-z_][a-z0-9_.]*$/;

/** Parses `KEY=VALUE` items of --pg-config; throws on a malformed or protected one. */
export function parsePgConfigItems(items: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw new StrataError("invalid_argument", `--pg-config "${item}": expected KEY=VALUE`);
    const key = item.slice(0, eq).trim().toLowerCase();
    const value = item.slice(eq + 1).trim();
    if (!KEY_RE.test(key)) throw new StrataError("invalid_argument", `--pg-config "${item}": "${key}" is not a PostgreSQL setting name`);
    if (PROTECTED_SETTINGS.has(key)) throw new StrataError("invalid_argument", `--pg-config "${item}": ${key} is set by strata (use --port for the port)`);
    out[key] = value;
  }
  return out;
}

/** synchronous_standby_names for safekeepers `ids`. */
export function synchronousStandbyNames(ids: readonly number[]): string {
  if (ids.length === 0) throw new StrataError("invalid_argument", "A compute needs at least one safekeeper");
  const names = [...ids].sort((a, b) => a - b).map((id) => `sk_${id}`);
  if (names.length === 1) return names[0]!;
  const q = Math.floor(names.length / 2) + 1;
  return `ANY ${q} (${names.join(", ")})`;
}

/** Quotes a value for postgresql.conf (numbers and plain words as they are, the rest in single quotes). */
export function confValue(v: string): string {
  if (/^-?[0-9]+(\.[0-9]+)?[a-zA-Z]*$/.test(v) || /^(on|off|true|false)$/i.test(v)) return v;
  return `'${v.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
}

export interface ComputeConfOptions {
  readonly port: number;
  readonly socketDir: string;
  readonly safekeeperIds: readonly number[];
  readonly user?: Readonly<Record<string, string>>;
}

/** The settings (in order) a compute runs with. */
export function computeSettings(opts: ComputeConfOptions): [string, string][] {
  const walSenders = String(opts.safekeeperIds.length + SPARE_WAL_SENDERS);
  const ours: [string, string][] = [
    ["port", String(opts.port)],
    ["listen_addresses", "127.0.0.1"],
    ["unix_socket_directories", opts.socketDir],
    ["wal_level", "replica"],
    ["max_wal_senders", walSenders],
    ["max_replication_slots", walSenders],
    ["wal_keep_size", WAL_KEEP_SIZE],
    ["synchronous_commit", "on"],
    ["synchronous_standby_names", synchronousStandbyNames(opts.safekeeperIds)],
    ["fsync", "on"],
    ["hot_standby", "on"],
    ["logging_collector", "off"],
  ];
  const user = Object.entries(opts.user ?? {});
  for (const [k] of user) if (PROTECTED_SETTINGS.has(k)) throw new StrataError("invalid_argument", `Setting ${k} is owned by strata`);
  const merged = new Map<string, string>(ours);
  for (const [k, v] of user) merged.set(k, v);
  return [...merged];
}

/** The block appended to the backup's postgresql.conf (later lines win in PostgreSQL). */
export function postgresqlConfBlock(opts: ComputeConfOptions): string {
  const lines = computeSettings(opts).map(([k, v]) => `${k} = ${confValue(v)}`);
  return `\n# --- written by strata endpoint start (settings below override the ones above) ---\n${lines.join("\n")}\n`;
}

/** pg_hba.conf of a compute: local and loopback, normal and replication connections, trust. */
export function pgHbaConf(): string {
  return [
    "# written by strata endpoint start: loopback-only compute of a local deployment",
    "# TYPE  DATABASE     USER  ADDRESS        METHOD",
    "local   all          all                  trust",
    "host    all          all   127.0.0.1/32   trust",
    "host    all          all   ::1/128        trust",
    "local   replication  all                  trust",
    "host    replication  all   127.0.0.1/32   trust",
    "host    replication  all   ::1/128        trust",
    "",
  ].join("\n");
}

/** The URI psql and apps use. */
export function connstrUri(port: number, db = "postgres"): string {
  return `postgresql://${COMPUTE_SUPERUSER}@127.0.0.1:${port}/${db}`;
}

/** The key=value form the safekeepers connect with (their libpq client parses this form). */
export function connstrKeyValue(port: number): string {
  return `host=127.0.0.1 port=${port} user=${COMPUTE_SUPERUSER} dbname=postgres`;
}
