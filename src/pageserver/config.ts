/**
 * Pageserver configuration: the process settings and the per-tenant settings.
 *
 * Tenant settings (DESIGN §4) decide when the open in-memory layer is frozen
 * and flushed (checkpoint distance and timeout), when image layers are
 * created, and how much history GC keeps (gc horizon, PITR interval). They
 * are stored per tenant in `tenants/<tenant>/config.json` so a restart keeps
 * them; unknown fields are refused (a typo must not silently become a
 * default), and every value is range-checked here, once.
 */
import { StrataError } from "../lib/errors.js";

export interface TenantConfig {
  /** Freeze the open in-memory layer once it holds this many bytes (value bytes + index estimate). */
  checkpointDistanceBytes: number;
  /** Freeze it anyway after this long, so a quiet timeline's WAL still reaches layer files. */
  checkpointTimeoutMs: number;
  /** Create an image layer for a key partition once this many delta layers lie above its newest image. */
  imageCreationThreshold: number;
  /** Merge level-0 deltas once this many have accumulated. */
  compactionThreshold: number;
  /** Size of the key partitions compaction and image creation cut the key space into. */
  compactionTargetSizeBytes: number;
  /** GC keeps at least this many bytes of WAL history below last_record_lsn. */
  gcHorizonBytes: number;
  /** GC keeps at least this much wall-clock history (point-in-time restore window); 0 = no time limit. */
  pitrIntervalMs: number;
  /** How often the tenant's background GC task runs (gc.ts); 0 disables it (the HTTP trigger still works). */
  gcPeriodMs: number;
  /** How long a read waits for WAL ingest to reach its LSN. */
  waitLsnTimeoutMs: number;
  /** WAL receiver: switch safekeepers when the current one's commit LSN lags the best other one by more than this... */
  safekeeperMaxLagBytes: number;
  /** ...continuously for longer than this (wal_receiver.ts). */
  safekeeperLagGraceMs: number;
}

/**
 * Defaults, chosen as Neon chose them for the same trade-offs: 256 MiB layers
 * keep the layer count small while bounding re-ingest after a crash; a
 * 10-minute timeout bounds how stale disk_consistent_lsn can get; 3 deltas
 * above an image keep reads under a few layer visits.
 */
export const DEFAULT_TENANT_CONFIG: Readonly<TenantConfig> = Object.freeze({
  checkpointDistanceBytes: 256 * 1024 * 1024,
  checkpointTimeoutMs: 10 * 60 * 1000,
  imageCreationThreshold: 3,
  compactionThreshold: 10,
  compactionTargetSizeBytes: 128 * 1024 * 1024,
  gcHorizonBytes: 64 * 1024 * 1024,
  pitrIntervalMs: 7 * 24 * 3600 * 1000,
  // Hourly: GC only frees space, and each pass lists every layer of every timeline.
  gcPeriodMs: 3600 * 1000,
  waitLsnTimeoutMs: 60_000,
  // One WAL segment of lag for 5 s: a safekeeper that far behind for that long is stuck or
  // partitioned, while normal replication jitter between safekeepers is far below a segment.
  safekeeperMaxLagBytes: 16 * 1024 * 1024,
  safekeeperLagGraceMs: 5_000,
});

/** Bounds of each setting: [min, max]. Outside them a value is a mistake. */
const BOUNDS: Record<keyof TenantConfig, readonly [number, number]> = {
  checkpointDistanceBytes: [8 * 1024, 16 * 1024 * 1024 * 1024],
  checkpointTimeoutMs: [10, 24 * 3600 * 1000],
  imageCreationThreshold: [1, 1000],
  compactionThreshold: [2, 1000],
  compactionTargetSizeBytes: [8 * 1024, 16 * 1024 * 1024 * 1024],
  gcHorizonBytes: [0, Number.MAX_SAFE_INTEGER],
  pitrIntervalMs: [0, 10 * 365 * 24 * 3600 * 1000],
  gcPeriodMs: [0, 7 * 24 * 3600 * 1000],
  waitLsnTimeoutMs: [1, 3600 * 1000],
  safekeeperMaxLagBytes: [0, Number.MAX_SAFE_INTEGER],
  safekeeperLagGraceMs: [0, 3600 * 1000],
};

/** Validates a (partial) tenant config from outside (HTTP body, config file) and fills in defaults. */
export function parseTenantConfig(input: unknown, base: Readonly<TenantConfig> = DEFAULT_TENANT_CONFIG): TenantConfig {
  if (input === undefined || input === null) return { ...base };
  if (typeof input !== "object" || Array.isArray(input)) throw new StrataError("invalid_argument", "Tenant config must be a JSON object");
  const out: TenantConfig = { ...base };
  for (const [k, v] of Object.entries(input as Record<string, unknown>)) {
    if (!(k in BOUNDS)) throw new StrataError("invalid_argument", `Unknown tenant config setting "${k}"`);
    const [min, max] = BOUNDS[k as keyof TenantConfig];
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      throw new StrataError("invalid_argument", `Tenant config setting "${k}" must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
    }
    out[k as keyof TenantConfig] = v;
  }
  return out;
}

/** Process-wide settings of one pageserver. */
export interface PageserverConfig {
  /** Root of the pageserver's local state: `tenants/` lives here. */
  dataDir: string;
  listenPgHost: string;
  listenPgPort: number;
  listenHttpHost: string;
  listenHttpPort: number;
  /** Safekeepers' libpq WAL service addresses, `host:port`. */
  safekeepers: string[];
  /** Defaults for tenants created without explicit settings. */
  defaultTenantConfig: TenantConfig;
  /** Materialized page cache capacity in pages. */
  pageCachePages: number;
  /** WAL redo helper processes per tenant. */
  walRedoProcesses: number;
  /** Remote storage URL (src/remote_storage/config.ts grammar); undefined = local only. */
  remoteStorage?: string;
  /** Disk-usage eviction: resident layer bytes above which the least recently read layers are evicted (0 = off). */
  maxLocalLayerBytes?: number;
  /** How often the disk-usage eviction policy checks (default EVICTION_PERIOD_MS). */
  evictionPeriodMs?: number;
}

/** The disk-usage eviction task checks this often: cheap (sums in memory), and disks fill slowly. */
export const EVICTION_PERIOD_MS = 10_000;

/** 8192 pages = 64 MiB of hot pages. */
export const DEFAULT_PAGE_CACHE_PAGES = 8192;

export function defaultPageserverConfig(dataDir: string): PageserverConfig {
  return {
    dataDir,
    listenPgHost: "127.0.0.1",
    listenPgPort: 64000,
    listenHttpHost: "127.0.0.1",
    listenHttpPort: 9898,
    safekeepers: [],
    defaultTenantConfig: { ...DEFAULT_TENANT_CONFIG },
    pageCachePages: DEFAULT_PAGE_CACHE_PAGES,
    walRedoProcesses: 1,
  };
}

/** Parses `host:port`; throws invalid_argument with the offending text. */
export function parseHostPort(text: string): { host: string; port: number } {
  const m = /^(.+):(\d{1,5})$/.exec(text.trim());
  const port = m === null ? NaN : Number(m[2]);
  if (m === null || !(port > 0 && port < 65536)) throw new StrataError("invalid_argument", `Cannot parse address "${text}": expected host:port`);
  return { host: m[1]!.replace(/^\[(.*)\]$/, "$1"), port };
}
