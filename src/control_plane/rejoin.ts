/**
 * Rejoin: bring safekeepers that missed an endpoint start back into the
 * running compute's quorum (run by `strata start` after it started the
 * services, and by `strata endpoint rejoin`).
 *
 * The gap it closes: an endpoint starts on a quorum (2 of 3 is enough); a
 * safekeeper that was down then gets neither the branch's timeline nor the
 * compute's registration, so after it comes back it stays idle until the
 * next endpoint start, and the compute runs without a spare.
 *
 * For one running endpoint (branch timeline TL, port P), per reachable
 * safekeeper:
 *   1. the compute's term T and start LSN are read from the safekeepers
 *      themselves: the highest-term registration whose connection string is
 *      this compute's (endpoint start step 8 registered it on at least a
 *      quorum, so at least one reachable safekeeper of any quorum has it);
 *   2. a safekeeper without TL gets it, exactly as endpoint start step 1
 *      creates it (endpoint.ts ensureSafekeeperTimelines);
 *   3. the slots sk_<id> exist on the compute (created if missing, as
 *      endpoint start step 7 does), so the compute keeps the WAL a rejoining
 *      safekeeper still has to stream;
 *   4. a safekeeper not registered under T gets PUT .../compute with T and
 *      the same start_lsn. That persists T there (a promise: older terms are
 *      refused from then on). It does not let the safekeeper accept the
 *      compute's WAL yet: the WAL acceptor refuses to stream in T until the
 *      safekeeper holds T's history (timeline.ts beginComputeTerm), which its
 *      peer sync fetches from a peer that joined T (peers.ts,
 *      recovery.ts catchUpFromPeers). The fencing rules are the existing
 *      ones, untouched: this module only calls the public HTTP API;
 *   5. wait (bounded, REJOIN_CATCHUP_TIMEOUT_MS, progress every second)
 *      until every safekeeper registered under T streams from the compute
 *      and its flush LSN reached the compute's flush LSN read after step 4.
 *
 * Idempotent: a safekeeper already registered under T is left alone (step 4
 * skipped; its wait ends at once when it is caught up). A safekeeper whose
 * term is above T means the compute was fenced by a newer election: reported,
 * not "fixed". An unreachable safekeeper is reported and skipped.
 */
import { StrataError } from "../lib/errors.js";
import type { TenantId, TimelineId } from "../lib/id.js";
import { formatLsn, parseLsn, type Lsn } from "../lib/lsn.js";
import { sleep } from "../lib/tasks.js";
import { computePid, ensureComputeSlots, ensureSafekeeperTimelines, registerCompute, unknownEndpoint } from "./endpoint.js";
import { getOptional, ServiceHttpError } from "./http_client.js";
import { connstrKeyValue } from "./pg_settings.js";
import { psql } from "./pg_tools.js";
import type { Progress } from "./progress.js";
import { branchTimeline, type RepoConfig, type RepoPaths, type SafekeeperConf } from "./repo.js";
import { safekeeperApi } from "./services.js";

/** Bound on rejoining safekeepers catching up with the compute (peer fetch + streaming of tens of MiB on a loaded machine). */
export const REJOIN_CATCHUP_TIMEOUT_MS = 60_000;
/** Bound on one state read of a safekeeper: answered from memory by a healthy one. */
const STATE_READ_TIMEOUT_MS = 5_000;
/** Poll interval of the catch-up wait. */
const POLL_MS = 200;
/** Time between two progress lines of the wait. */
const PROGRESS_EVERY_MS = 1_000;

interface SkTimelineJson {
  term: string | number;
  flush_lsn: string;
  compute: { connstr: string; term: string | number; start_lsn: string | null; connected: boolean } | null;
}

/** How one safekeeper relates to an endpoint's compute. */
export interface SafekeeperLink {
  id: number;
  /** streaming: registered under the compute's term and connected to it. */
  state: "streaming" | "registered" | "other_compute" | "no_timeline" | "unreachable";
  term: string | null;
  flush_lsn: string | null;
}

async function readSk(sk: SafekeeperConf, tenant: TenantId, timeline: TimelineId): Promise<SkTimelineJson | undefined | Error> {
  try {
    return await getOptional<SkTimelineJson>(safekeeperApi(sk), `/v1/tenant/${tenant}/timeline/${timeline}`, { timeoutMs: STATE_READ_TIMEOUT_MS });
  } catch (e) {
    return e as Error;
  }
}

/** The highest registered term of this compute (by connection string) among the answers. */
function computeRegistration(states: readonly (SkTimelineJson | undefined | Error)[], connstr: string): { term: bigint; startLsn: string | null } | undefined {
  let best: { term: bigint; startLsn: string | null } | undefined;
  for (const s of states) {
    if (s === undefined || s instanceof Error || s.compute === null || s.compute.connstr !== connstr) continue;
    const t = BigInt(s.compute.term);
    if (best === undefined || t > best.term) best = { term: t, startLsn: s.compute.start_lsn };
  }
  return best;
}

/** The safekeeper holds the registration of the compute at `connstr` under `term`. */
function registeredFor(s: SkTimelineJson, connstr: string, term: bigint): boolean {
  return s.compute !== null && s.compute.connstr === connstr && BigInt(s.compute.term) === term;
}

/** Per safekeeper: does it stream from the endpoint's compute? (For `strata status`; never throws.) */
export async function endpointSafekeeperLinks(c: RepoConfig, tenant: TenantId, timeline: TimelineId, port: number): Promise<SafekeeperLink[]> {
  const states = await Promise.all(c.safekeepers.map((sk) => readSk(sk, tenant, timeline)));
  const reg = computeRegistration(states, connstrKeyValue(port));
  return c.safekeepers.map((sk, i): SafekeeperLink => {
    const s = states[i];
    if (s instanceof Error) return { id: sk.id, state: "unreachable", term: null, flush_lsn: null };
    if (s === undefined) return { id: sk.id, state: "no_timeline", term: null, flush_lsn: null };
    const mine = reg !== undefined && registeredFor(s, connstrKeyValue(port), reg.term);
    return { id: sk.id, state: !mine ? "other_compute" : s.compute?.connected === true ? "streaming" : "registered", term: String(s.term), flush_lsn: s.flush_lsn };
  });
}

export interface RejoinResult {
  endpoint: string;
  term: string;
  /** Safekeepers this run registered with the compute. */
  registered: number[];
  /** Safekeepers streaming and caught up at the end. */
  streaming: number[];
  /** Problems, one per safekeeper (unreachable, fenced, timed out). */
  problems: string[];
}

/**
 * Rejoins every reachable safekeeper to running endpoint `name`. Returns
 * undefined when the endpoint is not running.
 */
export async function rejoinEndpoint(paths: RepoPaths, c: RepoConfig, name: string, progress: Progress, opts: { timeoutMs?: number } = {}): Promise<RejoinResult | undefined> {
  const e = c.endpoints[name];
  if (e === undefined) throw unknownEndpoint(c, name);
  if ((await computePid(paths.endpointPgdata(name))) === undefined) return undefined;
  const tenant = e.tenant_id;
  const timeline = branchTimeline(c, tenant, e.branch);
  const connstr = connstrKeyValue(e.port);
  const problems: string[] = [];

  // 1. The compute's term, from the safekeepers that have its registration.
  let states = await Promise.all(c.safekeepers.map((sk) => readSk(sk, tenant, timeline)));
  const reg = computeRegistration(states, connstr);
  if (reg === undefined) {
    throw new StrataError("unavailable", `Endpoint ${name} runs, but no reachable safekeeper has its compute registered for timeline ${timeline}; restart it ("strata endpoint stop ${name}" and "strata endpoint start ${name}")`);
  }
  const term = reg.term;

  // 2. Timelines on safekeepers that lack them (endpoint start step 1).
  if (states.some((s) => s === undefined)) {
    await ensureSafekeeperTimelines(c, tenant, timeline, progress);
    states = await Promise.all(c.safekeepers.map((sk) => readSk(sk, tenant, timeline)));
  }

  // 3. Slots: the compute keeps WAL for every safekeeper (endpoint start step 7).
  const created = await ensureComputeSlots(e.port, c);
  if (created.length > 0) progress.line(`endpoint ${name}: created replication slot(s) ${created.join(", ")}`);

  // 4. Registration under the compute's term.
  const registered: number[] = [];
  const members: SafekeeperConf[] = [];
  for (const [i, sk] of c.safekeepers.entries()) {
    const s = states[i];
    if (s instanceof Error) {
      problems.push(`safekeeper ${sk.id}: ${s.message}`);
      continue;
    }
    if (s === undefined) {
      problems.push(`safekeeper ${sk.id}: timeline ${timeline} could not be created`);
      continue;
    }
    if (BigInt(s.term) > term) {
      problems.push(`safekeeper ${sk.id}: promised term ${s.term}, above the compute's term ${term}: endpoint ${name} was fenced by a newer election; restart it`);
      continue;
    }
    if (!registeredFor(s, connstr, term)) {
      try {
        await registerCompute(sk, tenant, timeline, connstr, term, reg.startLsn);
        registered.push(sk.id);
        progress.line(`safekeeper ${sk.id}: registered endpoint ${name}'s compute under term ${term} (it catches up from a peer, then streams)`);
      } catch (err) {
        const why = err instanceof ServiceHttpError && err.status === 409 ? `refused term ${term} (fenced by a newer election): ${err.message}` : (err as Error).message;
        problems.push(`safekeeper ${sk.id}: ${why}`);
        continue;
      }
    }
    members.push(sk);
  }

  // 5. Catch-up: every member streams and reaches the compute's flush LSN.
  const target: Lsn = parseLsn(await psql(e.port, "SELECT pg_current_wal_flush_lsn()"));
  const timeoutMs = opts.timeoutMs ?? REJOIN_CATCHUP_TIMEOUT_MS;
  const t0 = Date.now();
  let lastLine = 0;
  const done = new Set<number>();
  for (;;) {
    const lagging: string[] = [];
    for (const sk of members) {
      if (done.has(sk.id)) continue;
      const s = await readSk(sk, tenant, timeline);
      const at = s === undefined || s instanceof Error ? undefined : parseLsn(s.flush_lsn);
      const connected = s !== undefined && !(s instanceof Error) && s.compute?.connected === true;
      if (connected && at !== undefined && at >= target) done.add(sk.id);
      else lagging.push(`safekeeper ${sk.id} ${at === undefined ? "unreachable" : `at ${formatLsn(at)}${at < target ? `, ${target - at} bytes behind` : ""}${connected ? "" : ", not streaming yet"}`}`);
    }
    if (lagging.length === 0) break;
    if (Date.now() - t0 > timeoutMs) {
      problems.push(`not caught up with the compute's ${formatLsn(target)} within ${timeoutMs} ms: ${lagging.join("; ")} (see the safekeeper logs)`);
      break;
    }
    if (Date.now() - lastLine >= PROGRESS_EVERY_MS) {
      lastLine = Date.now();
      progress.line(`endpoint ${name}: waiting for safekeepers to reach ${formatLsn(target)}: ${lagging.join("; ")}`);
    }
    await sleep(POLL_MS);
  }
  const streaming = [...done].sort((a, b) => a - b);
  progress.line(`endpoint ${name}: term ${term}, ${streaming.length} of ${c.safekeepers.length} safekeepers stream from the compute (${streaming.join(", ") || "none"})`);
  return { endpoint: name, term: term.toString(), registered, streaming, problems };
}

/** Rejoins safekeepers to every running endpoint; throws one error naming every problem at the end. */
export async function rejoinAllEndpoints(paths: RepoPaths, c: RepoConfig, progress: Progress): Promise<RejoinResult[]> {
  const out: RejoinResult[] = [];
  const problems: string[] = [];
  for (const name of Object.keys(c.endpoints)) {
    try {
      const r = await rejoinEndpoint(paths, c, name, progress);
      if (r === undefined) continue;
      out.push(r);
      for (const p of r.problems) problems.push(`endpoint ${name}: ${p}`);
    } catch (e) {
      problems.push(`endpoint ${name}: ${(e as Error).message}`);
    }
  }
  if (problems.length > 0) throw new StrataError("unavailable", `Rejoining safekeepers to running endpoints left problems:\n  ${problems.join("\n  ")}`);
  return out;
}
