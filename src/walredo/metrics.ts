/**
 * Prometheus metrics of the WAL redo pools (prom-client).
 *
 * One `WalRedoMetrics` per registry; every pool of the process shares it (the
 * pageserver passes its registry; `defaultWalRedoMetrics()` registers on
 * prom-client's global registry once). Labels are low-cardinality on purpose:
 * no tenant label — a pageserver hosts thousands of tenants, and per-tenant
 * redo load is visible through the request logs instead.
 *
 *   strata_walredo_requests_total{kind,result}  kind: apply|mask|stats|test,
 *                                               result: ok|error|process_failure|timeout|cancelled|rejected
 *   strata_walredo_records_total                records sent for replay
 *   strata_walredo_errors_total{code}           error replies and failures, by strata error code
 *   strata_walredo_restarts_total{reason}       helper processes replaced: died|timeout|protocol
 *   strata_walredo_processes                    helper processes running now
 *   strata_walredo_request_duration_seconds{kind}  submit-to-reply latency, queueing included
 */
import { Counter, Gauge, Histogram, register as globalRegistry, type Registry } from "prom-client";

/**
 * Latency buckets: a pipelined single-record request takes tens of µs, a long
 * chain or a queue behind a slow request milliseconds, a restart tens of ms.
 */
const DURATION_BUCKETS_SECONDS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10];

export class WalRedoMetrics {
  readonly requests: Counter<"kind" | "result">;
  readonly records: Counter;
  readonly errors: Counter<"code">;
  readonly restarts: Counter<"reason">;
  readonly processes: Gauge;
  readonly duration: Histogram<"kind">;

  /** Counts one finished request and, when given, its latency (cached label children). */
  countRequest(kind: string, result: string, seconds?: number): void {
    countRequest(this, kind, result, seconds);
  }

  constructor(registry: Registry) {
    const registers = [registry];
    this.requests = new Counter({ name: "strata_walredo_requests_total", help: "WAL redo requests by kind and outcome", labelNames: ["kind", "result"], registers });
    this.records = new Counter({ name: "strata_walredo_records_total", help: "WAL records sent to redo helpers", registers });
    this.errors = new Counter({ name: "strata_walredo_errors_total", help: "WAL redo requests that failed, by error code", labelNames: ["code"], registers });
    this.restarts = new Counter({ name: "strata_walredo_restarts_total", help: "WAL redo helper processes replaced after a failure", labelNames: ["reason"], registers });
    this.processes = new Gauge({ name: "strata_walredo_processes", help: "WAL redo helper processes running", registers });
    this.duration = new Histogram({
      name: "strata_walredo_request_duration_seconds",
      help: "WAL redo request latency from submission to reply",
      labelNames: ["kind"],
      buckets: DURATION_BUCKETS_SECONDS,
      registers,
    });
  }
}

type CounterChild = ReturnType<Counter<"kind" | "result">["labels"]>;
type HistogramChild = ReturnType<Histogram<"kind">["labels"]>;

/** Label children cached per (kind, result): label lookup per request is measurable at 100k req/s. */
const childCache = new WeakMap<WalRedoMetrics, { counters: Map<string, CounterChild>; histograms: Map<string, HistogramChild> }>();

/** Counts one finished request and, when given, its latency. */
export function countRequest(m: WalRedoMetrics, kind: string, result: string, seconds?: number): void {
  let c = childCache.get(m);
  if (!c) childCache.set(m, (c = { counters: new Map(), histograms: new Map() }));
  const key = `${kind}/${result}`;
  let counter = c.counters.get(key);
  if (!counter) c.counters.set(key, (counter = m.requests.labels(kind, result)));
  counter.inc();
  if (seconds !== undefined) {
    let h = c.histograms.get(kind);
    if (!h) c.histograms.set(kind, (h = m.duration.labels(kind)));
    h.observe(seconds);
  }
}

let defaultMetrics: WalRedoMetrics | undefined;

/** Metrics on prom-client's global registry, created on first use. */
export function defaultWalRedoMetrics(): WalRedoMetrics {
  defaultMetrics ??= new WalRedoMetrics(globalRegistry);
  return defaultMetrics;
}
