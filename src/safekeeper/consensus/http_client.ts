/**
 * HTTP clients of the consensus routes (http_routes.ts): what the
 * endpoint-start coordinator, the peer poller and a member fetching WAL from
 * a donor use to talk to another safekeeper.
 *
 * Choice of transport: plain HTTP/JSON on the management port, polled. One
 * port per safekeeper for everything but the WAL service, no broker process
 * to run, trivially observable with curl. WAL between peers travels as
 * `application/octet-stream` bodies of at most PEER_FETCH_CHUNK_BYTES per
 * request (an HTTP range endpoint), which is simpler than a second
 * START_REPLICATION client and only used for catch-up, not on the commit path.
 *
 * Every request is bounded by a timeout and the caller's AbortSignal.
 * Answers are validated (acceptor_state.ts parsers): garbage from a peer is
 * protocol_violation; an error answer keeps the peer's code and message;
 * a connection failure is unavailable.
 */
import { StrataError, type ErrorCode } from "../../lib/errors.js";
import type { TenantId, TimelineId } from "../../lib/id.js";
import { formatLsn, type Lsn } from "../../lib/lsn.js";
import type { Term, TermHistory } from "../term_history.js";
import { snapshotFromJson, TermRefusedError, termHistoryToJson, type AcceptorSnapshot, type VoteResult } from "./acceptor_state.js";
import type { ConsensusClient, ElectedRequest } from "./endpoint_start.js";
import type { WalSource } from "./recovery.js";

/** Bound on a state read or a vote: a healthy safekeeper answers in milliseconds; a hung one must not stall an election. */
export const CONSENSUS_REQUEST_TIMEOUT_MS = 5_000;
/** Bound on one member's join (truncate + fetch up to the start LSN): catch-up of tens of MiB on a loaded machine. */
export const ELECTED_REQUEST_TIMEOUT_MS = 55_000;
/** Bound on one WAL chunk fetch. */
export const WAL_FETCH_TIMEOUT_MS = 20_000;
/** Longest error body kept from a peer (messages are short; the rest is garbage). */
const MAX_ERROR_BODY_CHARS = 4096;

const ERROR_CODES: ReadonlySet<string> = new Set<ErrorCode>([
  "invalid_argument",
  "corrupt_data",
  "truncated",
  "unsupported",
  "not_found",
  "protocol_violation",
  "io_error",
  "timeout",
  "cancelled",
  "unavailable",
  "internal",
]);

export function timelinePath(tenantId: TenantId, timelineId: TimelineId): string {
  return `/v1/tenant/${tenantId}/timeline/${timelineId}/consensus`;
}

interface RequestOptions {
  method: "GET" | "POST";
  body?: unknown;
  timeoutMs: number;
  signal: AbortSignal;
  binary?: boolean;
}

/** One HTTP exchange with a safekeeper; `what` names it in errors. */
async function request(baseUrl: string, path: string, what: string, opts: RequestOptions): Promise<unknown> {
  const signal = AbortSignal.any([opts.signal, AbortSignal.timeout(opts.timeoutMs)]);
  let res: Response;
  try {
    res = await fetch(baseUrl.replace(/\/$/, "") + path, {
      method: opts.method,
      signal,
      ...(opts.body !== undefined ? { body: JSON.stringify(opts.body), headers: { "content-type": "application/json" } } : {}),
    });
  } catch (e) {
    if (opts.signal.aborted) throw new StrataError("cancelled", `${what}: cancelled`, { cause: e });
    if (signal.aborted) throw new StrataError("timeout", `${what}: no answer within ${opts.timeoutMs} ms`, { cause: e });
    throw new StrataError("unavailable", `${what}: ${baseUrl} unreachable`, { cause: e });
  }
  if (!res.ok) {
    const text = (await res.text().catch(() => "")).slice(0, MAX_ERROR_BODY_CHARS);
    let code: ErrorCode = res.status >= 500 ? "unavailable" : "invalid_argument";
    let message = text;
    try {
      const j = JSON.parse(text) as { code?: unknown; error?: unknown; refused_term?: unknown };
      if (typeof j.code === "string" && ERROR_CODES.has(j.code)) code = j.code as ErrorCode;
      if (typeof j.error === "string") message = j.error;
      if (j.refused_term === true) throw new TermRefusedError(`${what}: ${message}`);
    } catch (e) {
      if (e instanceof TermRefusedError) throw e;
    }
    throw new StrataError(code, `${what}: HTTP ${res.status}: ${message}`);
  }
  if (opts.binary) return new Uint8Array(await res.arrayBuffer());
  try {
    return await res.json();
  } catch (e) {
    throw new StrataError("protocol_violation", `${what}: answer is not JSON`, { cause: e });
  }
}

export interface HttpPeerOptions {
  readonly id: number;
  readonly httpUrl: string;
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  /** Every member (to resolve the donor's URL in elected requests). */
  readonly peers?: readonly { readonly id: number; readonly httpUrl: string }[];
}

/** The consensus API of one safekeeper for one timeline. */
export class HttpConsensusClient implements ConsensusClient {
  readonly id: number;
  private readonly base: string;
  private readonly path: string;

  constructor(private readonly opts: HttpPeerOptions) {
    this.id = opts.id;
    this.base = opts.httpUrl;
    this.path = timelinePath(opts.tenantId, opts.timelineId);
  }

  private what(op: string): string {
    return `safekeeper ${this.id} (${this.base}) ${op} for ${this.opts.tenantId}/${this.opts.timelineId}`;
  }

  async state(signal: AbortSignal): Promise<AcceptorSnapshot> {
    const what = this.what("state");
    const j = await request(this.base, `${this.path}/state`, what, { method: "GET", timeoutMs: CONSENSUS_REQUEST_TIMEOUT_MS, signal });
    return snapshotFromJson(j, what);
  }

  async vote(term: Term, signal: AbortSignal): Promise<VoteResult> {
    const what = this.what(`vote for term ${term}`);
    const j = (await request(this.base, `${this.path}/vote`, what, { method: "POST", body: { term: term.toString() }, timeoutMs: CONSENSUS_REQUEST_TIMEOUT_MS, signal })) as {
      granted?: unknown;
      state?: unknown;
    };
    if (typeof j !== "object" || j === null || typeof j.granted !== "boolean") throw new StrataError("protocol_violation", `${what}: "granted" must be a boolean`);
    return { granted: j.granted, snapshot: snapshotFromJson(j.state, what) };
  }

  async elected(req: ElectedRequest, signal: AbortSignal): Promise<AcceptorSnapshot> {
    const what = this.what(`join term ${req.term}`);
    const donor = req.donorId === this.id ? { id: this.id, httpUrl: this.base } : this.opts.peers?.find((p) => p.id === req.donorId);
    if (donor === undefined) throw new StrataError("invalid_argument", `${what}: donor ${req.donorId} is not among the known safekeepers`);
    const j = await request(this.base, `${this.path}/elected`, what, {
      method: "POST",
      body: { term: req.term.toString(), term_history: termHistoryToJson(req.history), start_lsn: formatLsn(req.startLsn), donor: { id: donor.id, http_url: donor.httpUrl } },
      timeoutMs: ELECTED_REQUEST_TIMEOUT_MS,
      signal,
    });
    return snapshotFromJson(j, what);
  }
}

/** Fetches WAL from a donor's range endpoint. */
export class HttpWalSource implements WalSource {
  readonly name: string;
  private readonly path: string;

  constructor(
    private readonly donor: { id: number; httpUrl: string },
    tenantId: TenantId,
    timelineId: TimelineId,
  ) {
    this.name = `safekeeper ${donor.id} (${donor.httpUrl})`;
    this.path = timelinePath(tenantId, timelineId);
  }

  async fetch(startLsn: Lsn, maxBytes: number, endLsn: Lsn, history: TermHistory, signal: AbortSignal): Promise<Uint8Array> {
    const what = `${this.name}: WAL at ${formatLsn(startLsn)}`;
    const body = { start_lsn: formatLsn(startLsn), end_lsn: formatLsn(endLsn), max_bytes: maxBytes, term_history: termHistoryToJson(history) };
    return (await request(this.donor.httpUrl, `${this.path}/wal`, what, { method: "POST", body, timeoutMs: WAL_FETCH_TIMEOUT_MS, signal, binary: true })) as Uint8Array;
  }
}
