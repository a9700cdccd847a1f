/**
 * Prometheus metrics: one registry per service instance.
 *
 * Each service (safekeeper, pageserver) owns a `Registry` so two services in
 * one test process never mix their series, and serves it on `/metrics`.
 * Components take the registry in their options and create their metrics in
 * it; metric names are prefixed by component (`strata_safekeeper_…`).
 */
import { collectDefaultMetrics, Registry } from "prom-client";

/**
 * Sampling interval of the event-loop-lag histogram, in ms. prom-client's
 * default (10 ms) arms a timer that wakes every service 100 times a second
 * even when idle — CPU and context switches taken from PostgreSQL on a small
 * machine, and latency added to the safekeeper's commit path. 100 ms still
 * catches every stall worth alerting on at any scrape interval.
 */
const EVENT_LOOP_MONITORING_PRECISION_MS = 100;

export { Counter, Gauge, Histogram, Registry } from "prom-client";

export function createRegistry(opts: { defaultMetrics?: boolean; labels?: Record<string, string> } = {}): Registry {
  const registry = new Registry();
  if (opts.labels) registry.setDefaultLabels(opts.labels);
  // Process metrics (memory, fds, event-loop lag) make leaks and stalls visible.
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: EVENT_LOOP_MONITORING_PRECISION_MS });
  return registry;
}

/** Latency buckets in seconds, 50 µs .. 10 s: page reads and redo are sub-millisecond, uploads are seconds. */
export const LATENCY_BUCKETS_S = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
