/**
 * Remote storage configuration: one shape for the pageserver, the safekeeper
 * and the command line, written either as a URL or as a TOML table, and the
 * factory that turns it into a RemoteStorage.
 *
 *   file:///var/lib/strata/remote
 *   s3://bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=eu-west-1&force_path_style=true
 *   azure://container/some/prefix?account=devstoreaccount1&endpoint=http://127.0.0.1:10000/devstoreaccount1
 *
 *   [remote_storage]                 [remote_storage]
 *   kind = "s3"                      url = "s3://bucket/prefix?region=eu-west-1"
 *   bucket = "bucket"
 *   prefix = "some/prefix"
 *   region = "eu-west-1"
 *   endpoint = "http://127.0.0.1:9000"
 *   force_path_style = true
 *
 * S3 also takes `multipart_threshold_bytes` and `multipart_part_size_bytes`.
 * Query parameters and table keys have the same snake_case names. Common to
 * all kinds: `timeout_ms` (per call) and `max_attempts` (retry wrapper;
 * 1 disables retries). Secrets never appear in either form: S3 credentials
 * come from the AWS provider chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
 * AWS_PROFILE, …); Azure uses AZURE_STORAGE_CONNECTION_STRING, or an account
 * (from the config or AZURE_STORAGE_ACCOUNT) with AZURE_STORAGE_KEY. Only
 * the programmatic object form (tests) may carry credentials.
 *
 * Every rejection names the offending part: unknown scheme, unknown or
 * repeated parameter, relative path, bad bucket, bad number.
 */
import { invalidArgument } from "./errors.js";
import { AzureBlobStorage } from "./azure_blob.js";
import { LocalFsStorage } from "./local_fs.js";
import { normalizeRootPrefix } from "./remote_path.js";
import type { RemoteStorage } from "./remote_storage.js";
import { RetryingRemoteStorage, validateRetryPolicy, type RetryEvent, type RetryPolicy } from "./retry.js";
import { S3Storage } from "./s3.js";

interface CommonConfig {
  /** Per-call timeout (default DEFAULT_REMOTE_TIMEOUT_MS). */
  timeoutMs?: number;
  /** Retry policy of the wrapper; `false` for no wrapper at all. */
  retry?: Partial<RetryPolicy> | false;
}

export interface LocalStorageConfig extends CommonConfig {
  kind: "local";
  root: string;
}

export interface S3StorageConfig extends CommonConfig {
  kind: "s3";
  bucket: string;
  prefix?: string;
  region?: string;
  endpoint?: string;
  forcePathStyle?: boolean;
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  multipartThresholdBytes?: number;
  multipartPartSizeBytes?: number;
}

export interface AzureStorageConfig extends CommonConfig {
  kind: "azure";
  container: string;
  prefix?: string;
  endpoint?: string;
  account?: string;
  accountKey?: string;
  connectionString?: string;
}

export type RemoteStorageConfig = LocalStorageConfig | S3StorageConfig | AzureStorageConfig;

const COMMON_KEYS = ["timeout_ms", "max_attempts"] as const;
const KEYS: Record<RemoteStorageConfig["kind"], readonly string[]> = {
  local: ["path", ...COMMON_KEYS],
  s3: ["bucket", "prefix", "region", "endpoint", "force_path_style", "multipart_threshold_bytes", "multipart_part_size_bytes", ...COMMON_KEYS],
  azure: ["container", "prefix", "endpoint", "account", ...COMMON_KEYS],
};
/** Keys the URL's scheme, host and path supply; a query parameter may not override them. */
const URL_POSITION_KEYS = new Set(["kind", "url", "path", "bucket", "container", "prefix"]);
const SECRET_KEYS = new Set(["access_key_id", "secret_access_key", "session_token", "account_key", "key", "connection_string", "password"]);

function bad(source: string, problem: string): never {
  throw invalidArgument(`Invalid remote storage configuration ${source}: ${problem}`);
}

/** Parses `file:///…`, `s3://…` or `azure://…`. */
export function parseRemoteStorageUrl(text: string): RemoteStorageConfig {
  const source = `"${text}"`;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    bad(source, 'not a URL (expected file:///path, s3://bucket/prefix or azure://container/prefix)');
  }
  const params: Record<string, string> = {};
  for (const [k, v] of url.searchParams) {
    if (k in params) bad(source, `parameter "${k}" is given twice`);
    if (URL_POSITION_KEYS.has(k)) bad(source, `"${k}" is given by the URL itself, not as a parameter`);
    params[k] = v;
  }
  if (url.hash !== "") bad(source, 'a "#fragment" is not allowed');
  // URL parsing silently resolves "a/../b" to "b"; a configured location should mean what it says.
  const rawPath = (text.split(/[?#]/)[0] ?? "").replace(/^[a-z0-9+.-]+:\/\/[^/]*/i, "");
  if (/(^|\/)\.{1,2}(\/|$)/.test(rawPath)) bad(source, 'the path must not contain "." or ".." segments');
  if (url.username !== "" || url.password !== "") bad(source, "credentials in the URL are not allowed; use the environment");
  const path = decodeURIComponent(url.pathname);
  switch (url.protocol) {
    case "file:":
      if (url.host !== "") bad(source, `file URLs must not name a host ("${url.host}"); use file:///absolute/path`);
      if (path === "" || path === "/") bad(source, "the path is empty");
      return fromTable({ kind: "local", path, ...params }, source);
    case "s3:":
      if (url.host === "") bad(source, "the bucket is missing (s3://bucket/prefix)");
      return fromTable({ kind: "s3", bucket: url.host, prefix: path, ...params }, source);
    case "azure:":
      if (url.host === "") bad(source, "the container is missing (azure://container/prefix)");
      return fromTable({ kind: "azure", container: url.host, prefix: path, ...params }, source);
    default:
      bad(source, `unknown scheme "${url.protocol}" (expected file:, s3: or azure:)`);
  }
}

/**
 * Parses the value of a `remote_storage` config entry: a URL string, or a
 * table with `url` or with `kind` and the keys above (TOML booleans and
 * integers, or their string forms).
 */
export function parseRemoteStorageConfig(value: unknown): RemoteStorageConfig {
  if (typeof value === "string") return parseRemoteStorageUrl(value);
  if (typeof value !== "object" || value === null || Array.isArray(value)) bad("", "expected a URL string or a table");
  const table = value as Record<string, unknown>;
  if ("url" in table) {
    const extra = Object.keys(table).filter((k) => k !== "url");
    if (extra.length > 0) bad("table", `"url" cannot be combined with other keys (${extra.join(", ")})`);
    if (typeof table.url !== "string") bad("table", '"url" must be a string');
    return parseRemoteStorageUrl(table.url);
  }
  return fromTable(table, "table");
}

function fromTable(table: Record<string, unknown>, source: string): RemoteStorageConfig {
  const kind = table.kind;
  if (kind !== "local" && kind !== "s3" && kind !== "azure") bad(source, `"kind" must be "local", "s3" or "azure", got ${JSON.stringify(kind)}`);
  const allowed = KEYS[kind];
  for (const key of Object.keys(table)) {
    if (key === "kind") continue;
    if (SECRET_KEYS.has(key)) bad(source, `"${key}" is a secret: put it in the environment (AWS_* / AZURE_STORAGE_*), not in the configuration`);
    if (!allowed.includes(key)) {
      bad(source, `unknown ${kind} option "${key}" (known: ${allowed.join(", ")})`);
    }
  }
  const str = (key: string): string | undefined => {
    const v = table[key];
    if (v === undefined) return undefined;
    if (typeof v !== "string") bad(source, `"${key}" must be a string`);
    return v;
  };
  const required = (key: string): string => {
    const v = str(key);
    if (v === undefined || v === "") bad(source, `"${key}" is required`);
    return v;
  };
  const common: CommonConfig = {};
  const timeoutMs = positiveInt(table.timeout_ms, "timeout_ms", source);
  if (timeoutMs !== undefined) common.timeoutMs = timeoutMs;
  const maxAttempts = positiveInt(table.max_attempts, "max_attempts", source);
  if (maxAttempts !== undefined) common.retry = maxAttempts === 1 ? false : validateRetryPolicy({ maxAttempts });

  switch (kind) {
    case "local": {
      const root = required("path");
      if (!root.startsWith("/")) bad(source, `the local path "${root}" must be absolute`);
      if (root.split("/").includes("..")) bad(source, `the local path "${root}" must not contain ".."`);
      return { kind, root: root.length > 1 ? root.replace(/\/+$/, "") : root, ...common };
    }
    case "s3": {
      const bucket = required("bucket");
      if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) bad(source, `"${bucket}" is not a valid S3 bucket name`);
      const cfg: S3StorageConfig = { kind, bucket, ...common };
      const prefix = checkedPrefix(str("prefix"), source);
      if (prefix !== "") cfg.prefix = prefix;
      const region = str("region");
      if (region !== undefined) cfg.region = region;
      const endpoint = str("endpoint");
      if (endpoint !== undefined) cfg.endpoint = checkedEndpoint(endpoint, source);
      const fps = bool(table.force_path_style, "force_path_style", source);
      if (fps !== undefined) cfg.forcePathStyle = fps;
      const threshold = positiveInt(table.multipart_threshold_bytes, "multipart_threshold_bytes", source);
      if (threshold !== undefined) cfg.multipartThresholdBytes = threshold;
      const partSize = positiveInt(table.multipart_part_size_bytes, "multipart_part_size_bytes", source);
      if (partSize !== undefined) cfg.multipartPartSizeBytes = partSize;
      return cfg;
    }
    case "azure": {
      const container = required("container");
      if (!/^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$/.test(container)) bad(source, `"${container}" is not a valid Azure container name`);
      const cfg: AzureStorageConfig = { kind, container, ...common };
      const prefix = checkedPrefix(str("prefix"), source);
      if (prefix !== "") cfg.prefix = prefix;
      const endpoint = str("endpoint");
      if (endpoint !== undefined) cfg.endpoint = checkedEndpoint(endpoint, source);
      const account = str("account");
      if (account !== undefined) cfg.account = account;
      return cfg;
    }
  }
}

function checkedPrefix(prefix: string | undefined, source: string): string {
  try {
    return normalizeRootPrefix(prefix).replace(/\/$/, "");
  } catch (err) {
    bad(source, (err as Error).message);
  }
}

function checkedEndpoint(endpoint: string, source: string): string {
  let u: URL;
  try {
    u = new URL(endpoint);
  } catch {
    bad(source, `endpoint "${endpoint}" is not a URL`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") bad(source, `endpoint "${endpoint}" must be http:// or https://`);
  return endpoint;
}

function positiveInt(v: unknown, key: string, source: string): number | undefined {
  if (v === undefined) return undefined;
  const n = typeof v === "string" && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 1) bad(source, `"${key}" must be a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

function bool(v: unknown, key: string, source: string): boolean | undefined {
  if (v === undefined || typeof v === "boolean") return v;
  if (v === "true" || v === "1") return true;
  if (v === "false" || v === "0") return false;
  bad(source, `"${key}" must be true or false, got ${JSON.stringify(v)}`);
}

export interface CreateRemoteStorageOptions {
  /** Where secrets are read from (default process.env). */
  env?: Record<string, string | undefined>;
  onRetry?: (event: RetryEvent) => void;
}

/** Builds the backend a configuration names, wrapped in RetryingRemoteStorage unless `retry` is false. */
export function createRemoteStorage(config: RemoteStorageConfig | string, opts: CreateRemoteStorageOptions = {}): RemoteStorage {
  const cfg = typeof config === "string" ? parseRemoteStorageUrl(config) : config;
  const env = opts.env ?? process.env;
  const backend = createBackend(cfg, env);
  if (cfg.retry === false) return backend;
  const retryOpts = opts.onRetry ? { policy: cfg.retry ?? {}, onRetry: opts.onRetry } : { policy: cfg.retry ?? {} };
  return new RetryingRemoteStorage(backend, retryOpts);
}

function createBackend(cfg: RemoteStorageConfig, env: Record<string, string | undefined>): RemoteStorage {
  const timeout = cfg.timeoutMs === undefined ? {} : { defaultTimeoutMs: cfg.timeoutMs };
  switch (cfg.kind) {
    case "local":
      return new LocalFsStorage({ root: cfg.root, ...timeout });
    case "s3": {
      const { kind: _kind, retry: _retry, timeoutMs: _t, ...rest } = cfg;
      return new S3Storage({ ...rest, ...timeout });
    }
    case "azure": {
      const base = { container: cfg.container, ...(cfg.prefix === undefined ? {} : { prefix: cfg.prefix }), ...timeout };
      if (cfg.connectionString !== undefined) return new AzureBlobStorage({ ...base, connectionString: cfg.connectionString });
      const account = cfg.account ?? accountFromEndpoint(cfg.endpoint) ?? env.AZURE_STORAGE_ACCOUNT;
      const accountKey = cfg.accountKey ?? env.AZURE_STORAGE_KEY ?? env.AZURE_STORAGE_ACCESS_KEY;
      if (account !== undefined && accountKey !== undefined) {
        return new AzureBlobStorage({ ...base, account, accountKey, ...(cfg.endpoint === undefined ? {} : { endpoint: cfg.endpoint }) });
      }
      const cs = env.AZURE_STORAGE_CONNECTION_STRING;
      if (cs !== undefined && cs !== "") return new AzureBlobStorage({ ...base, connectionString: cs });
      throw invalidArgument(
        `Azure storage for container "${cfg.container}" has no credentials: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_KEY with an account (account=… or AZURE_STORAGE_ACCOUNT)`,
      );
    }
  }
}

/** Azurite-style endpoints carry the account as the first path segment: http://host:port/<account>. */
function accountFromEndpoint(endpoint: string | undefined): string | undefined {
  if (endpoint === undefined) return undefined;
  const u = new URL(endpoint);
  const first = u.pathname.split("/").filter((s) => s !== "")[0];
  if (first !== undefined) return first;
  const host = u.hostname.split(".")[0];
  return u.hostname.endsWith(".blob.core.windows.net") ? host : undefined;
}
