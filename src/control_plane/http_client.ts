/**
 * JSON over HTTP to the services' management APIs (pageserver, safekeepers),
 * as the control plane uses them.
 *
 * Every call is bounded (`timeoutMs`, default MANAGEMENT_TIMEOUT_MS) and
 * answers are turned into StrataErrors the command line can print: a
 * connection failure is "unavailable" with the service's name and a hint
 * (`strata start`); an error answer keeps the service's own code and message
 * (`{"error", "code"}` from src/lib/http.ts) and the HTTP status.
 */
import { StrataError, type ErrorCode } from "../lib/errors.js";

/** Bound on one management call; timeline creation runs initdb on a loaded machine, so it is generous. */
export const MANAGEMENT_TIMEOUT_MS = 120_000;
/** Bound on a read (GET): answered from memory by a healthy service. */
export const READ_TIMEOUT_MS = 15_000;
/** Longest error text kept from an answer. */
const MAX_ERROR_CHARS = 2000;

const CODES = new Set<string>(["invalid_argument", "corrupt_data", "truncated", "unsupported", "not_found", "protocol_violation", "io_error", "timeout", "cancelled", "unavailable", "internal"]);

export class ServiceHttpError extends StrataError {
  override name = "ServiceHttpError";
  constructor(
    code: ErrorCode,
    message: string,
    readonly status: number,
  ) {
    super(code, message);
  }
}

export interface ServiceApi {
  /** For messages: "pageserver", "safekeeper 1". */
  readonly label: string;
  readonly baseUrl: string;
}

export async function callJson<T = unknown>(
  svc: ServiceApi,
  method: "GET" | "POST" | "PUT" | "DELETE" | "PATCH",
  path: string,
  body?: unknown,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? (method === "GET" ? READ_TIMEOUT_MS : MANAGEMENT_TIMEOUT_MS);
  const timeout = AbortSignal.timeout(timeoutMs);
  const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
  const what = `${svc.label}: ${method} ${path}`;
  let res: Response;
  try {
    res = await fetch(svc.baseUrl + path, {
      method,
      signal,
      ...(body !== undefined ? { body: JSON.stringify(body), headers: { "content-type": "application/json" } } : {}),
    });
  } catch (e) {
    if (opts.signal?.aborted) throw new StrataError("cancelled", `${what}: cancelled`, { cause: e });
    if (timeout.aborted) throw new StrataError("timeout", `${what}: no answer within ${timeoutMs} ms`, { cause: e });
    throw new StrataError("unavailable", `${svc.label} is not reachable at ${svc.baseUrl} (is it running? "strata start" starts it)`, { cause: e });
  }
  const text = await res.text();
  if (!res.ok) {
    let code: ErrorCode = res.status === 404 ? "not_found" : res.status >= 500 ? "unavailable" : "invalid_argument";
    let message = text.slice(0, MAX_ERROR_CHARS);
    try {
      const j = JSON.parse(text) as { error?: unknown; code?: unknown };
      if (typeof j.error === "string") message = j.error;
      if (typeof j.code === "string" && CODES.has(j.code)) code = j.code as ErrorCode;
    } catch {
      /* not JSON: keep the text */
    }
    throw new ServiceHttpError(code, `${what} failed (HTTP ${res.status}): ${message}`, res.status);
  }
  if (text === "") return undefined as T;
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new StrataError("protocol_violation", `${what}: the answer is not JSON`, { cause: e });
  }
}

/** GET that returns undefined on 404 instead of throwing. */
export async function getOptional<T>(svc: ServiceApi, path: string, opts: { timeoutMs?: number } = {}): Promise<T | undefined> {
  try {
    return await callJson<T>(svc, "GET", path, undefined, opts);
  } catch (e) {
    if (e instanceof ServiceHttpError && e.status === 404) return undefined;
    throw e;
  }
}
