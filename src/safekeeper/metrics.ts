/**
 * The safekeeper's Prometheus metrics, created once per safekeeper in that
 * safekeeper's registry (src/lib/metrics.ts: one registry per service, so two
 * safekeepers in one test process never mix their series).
 *
 * Per-timeline series carry `tenant_id` and `timeline_id` labels and are
 * removed when the timeline is deleted. LSN gauges hold the LSN as a number:
 * exact up to 2^53 (8 PiB of WAL), which is plenty for dashboards and lag
 * arithmetic; the HTTP API reports exact `X/Y` values.
 *
 * The figures the commit path changes on every fsync (WAL bytes received,
 * fsyncs, flush and commit LSN) are not pushed into prom-client there:
 * prom-client hashes the label set on every update, even through a bound
 * child, and that cost sits in front of every acknowledgement. Each open
 * timeline registers a source instead (`addTimeline`), keeps those figures
 * as plain fields, and the four series are filled from the sources when
 * the registry is scraped. The flush latency histogram is the same idea:
 * `FlushLatencyHistogram` counts into a plain array (prom-client's
 * Histogram keys its buckets by the bound as an object property — a
 * number-to-string conversion and a runtime property store per
 * observation) and renders the standard histogram series when scraped.
 */
import type { Lsn } from "../lib/lsn.js";
import { Counter, Gauge, LATENCY_BUCKETS_S, type Registry } from "../lib/metrics.js";

/** One sample of a scraped metric, as prom-client's Registry formats it. */
interface MetricSample {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

/**
 * A label-less Prometheus histogram kept in plain fields: `observe` is a
 * bounds scan and two additions. It is registered in a prom-client
 * Registry as a custom metric (Registry.registerMetric: name, help, type,
 * aggregator, get, reset) and renders what prom-client's Histogram would:
 * cumulative `<name>_bucket{le=...}` series, `le="+Inf"`, `_sum`, `_count`.
 */
export class FlushLatencyHistogram {
  readonly type = "histogram";
  readonly aggregator = "sum";
  private readonly upperBounds: readonly number[];
  /** Observations per bucket (not cumulative); the last slot counts those above every bound. */
  private readonly counts: Float64Array;
  private sum = 0;
  private count = 0;

  constructor(
    readonly name: string,
    readonly help: string,
    buckets: readonly number[],
  ) {
    for (let i = 1; i < buckets.length; i++) {
      if (!(buckets[i]! > buckets[i - 1]!)) throw new Error(`assertion failed: histogram ${name} buckets must increase`);
    }
    this.upperBounds = [...buckets];
    this.counts = new Float64Array(buckets.length + 1);
  }

  observe(seconds: number): void {
    const b = this.upperBounds;
    let i = 0;
    while (i < b.length && seconds > b[i]!) i++;
    this.counts[i]!++;
    this.sum += seconds;
    this.count++;
  }

  /** The buckets' upper bounds in seconds (what a writer in another process counts by). */
  get bucketBounds(): readonly number[] {
    return this.upperBounds;
  }

  /**
   * Observations counted elsewhere (the native WAL receiver): `counts[i]`
   * new observations in bucket i (not cumulative; one more slot than
   * bounds, for those above every bound), summing to `sum` seconds.
   */
  addCounts(counts: readonly number[], sum: number): void {
    if (counts.length !== this.counts.length) throw new Error(`assertion failed: histogram ${this.name} got ${counts.length} bucket counts, has ${this.counts.length}`);
    for (let i = 0; i < counts.length; i++) {
      this.counts[i]! += counts[i]!;
      this.count += counts[i]!;
    }
    this.sum += sum;
  }

  reset(): void {
    this.counts.fill(0);
    this.sum = 0;
    this.count = 0;
  }

  get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: MetricSample[] }> {
    const values: MetricSample[] = [];
    let acc = 0;
    for (let i = 0; i < this.upperBounds.length; i++) {
      acc += this.counts[i]!;
      values.push({ value: acc, labels: { le: this.upperBounds[i]! }, metricName: `${this.name}_bucket` });
    }
    values.push({ value: this.count, labels: { le: "+Inf" }, metricName: `${this.name}_bucket` });
    values.push({ value: this.sum, labels: {}, metricName: `${this.name}_sum` });
    values.push({ value: this.count, labels: {}, metricName: `${this.name}_count` });
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values });
  }
}

export interface TimelineLabels {
  tenant_id: string;
  timeline_id: string;
}

/** A timeline's hot-path figures, read when the metrics are scraped. */
export interface TimelineSeriesSource {
  readonly labels: TimelineLabels;
  figures(): { walReceivedBytes: number; fsyncs: number; flushLsn: Lsn; commitLsn: Lsn };
}

export class SafekeeperMetrics {
  readonly walReceivedBytes: Counter<"tenant_id" | "timeline_id">;
  readonly fsyncs: Counter<"tenant_id" | "timeline_id">;
  readonly fsyncSeconds: FlushLatencyHistogram;
  readonly flushLsn: Gauge<"tenant_id" | "timeline_id">;
  readonly commitLsn: Gauge<"tenant_id" | "timeline_id">;
  readonly term: Gauge<"tenant_id" | "timeline_id">;
  readonly walSenders: Gauge<"kind">;
  readonly walSentBytes: Counter<"kind">;
  readonly computeConnected: Gauge<"tenant_id" | "timeline_id">;
  readonly consumerLagBytes: Gauge<"tenant_id" | "timeline_id" | "consumer">;
  readonly protocolErrors: Counter;
  readonly backupLsn: Gauge<"tenant_id" | "timeline_id">;
  readonly walBackupSegments: Counter<"tenant_id" | "timeline_id">;
  readonly walBackupBytes: Counter<"tenant_id" | "timeline_id">;
  readonly walBackupErrors: Counter<"tenant_id" | "timeline_id">;
  readonly remoteWalDownloads: Counter<"tenant_id" | "timeline_id">;

  /** Open timelines' sources by "tenant/timeline" (the newest open of a timeline wins). */
  private readonly sources = new Map<string, TimelineSeriesSource>();

  constructor(registry: Registry) {
    const registers = [registry];
    const sources = this.sources;
    /** Every open timeline's figures (each of the four series reads them when it is collected). */
    const figures = () => [...sources.values()].map((src) => ({ labels: src.labels, ...src.figures() }));
    this.walReceivedBytes = new Counter({
      name: "strata_safekeeper_wal_received_bytes_total",
      help: "WAL bytes received from computes and peers and written to local segments",
      labelNames: ["tenant_id", "timeline_id"],
      registers,
      collect() {
        this.reset();
        for (const f of figures()) this.inc(f.labels, f.walReceivedBytes);
      },
    });
    this.fsyncs = new Counter({
      name: "strata_safekeeper_fsyncs_total",
      help: "WAL fsyncs (each one makes every WAL byte written before it durable)",
      labelNames: ["tenant_id", "timeline_id"],
      registers,
      collect() {
        this.reset();
        for (const f of figures()) this.inc(f.labels, f.fsyncs);
      },
    });
    this.fsyncSeconds = new FlushLatencyHistogram("strata_safekeeper_wal_flush_seconds", "Latency of one WAL flush (fsync of the partial segment)", LATENCY_BUCKETS_S);
    registry.registerMetric(this.fsyncSeconds as unknown as Parameters<Registry["registerMetric"]>[0]);
    this.flushLsn = new Gauge({
      name: "strata_safekeeper_flush_lsn",
      help: "WAL fsynced on this safekeeper (LSN as a number)",
      labelNames: ["tenant_id", "timeline_id"],
      registers,
      collect() {
        for (const f of figures()) this.set(f.labels, Number(f.flushLsn));
      },
    });
    this.commitLsn = new Gauge({
      name: "strata_safekeeper_commit_lsn",
      help: "WAL durable on a quorum, the limit of what is streamed to consumers (LSN as a number)",
      labelNames: ["tenant_id", "timeline_id"],
      registers,
      collect() {
        for (const f of figures()) this.set(f.labels, Number(f.commitLsn));
      },
    });
    this.term = new Gauge({
      name: "strata_safekeeper_term",
      help: "Current term of the timeline on this safekeeper",
      labelNames: ["tenant_id", "timeline_id"],
      registers,
    });
    this.walSenders = new Gauge({
      name: "strata_safekeeper_wal_senders",
      help: "Connected START_REPLICATION consumers, by kind (standby, pageserver)",
      labelNames: ["kind"],
      registers,
    });
    this.walSentBytes = new Counter({
      name: "strata_safekeeper_wal_sent_bytes_total",
      help: "WAL bytes streamed to consumers, by kind",
      labelNames: ["kind"],
      registers,
    });
    this.computeConnected = new Gauge({
      name: "strata_safekeeper_compute_connected",
      help: "1 while the WAL acceptor is streaming from the timeline's compute",
      labelNames: ["tenant_id", "timeline_id"],
      registers,
    });
    this.consumerLagBytes = new Gauge({
      name: "strata_safekeeper_consumer_lag_bytes",
      help: "commit LSN minus the flush LSN a consumer last reported",
      labelNames: ["tenant_id", "timeline_id", "consumer"],
      registers,
    });
    this.protocolErrors = new Counter({
      name: "strata_safekeeper_protocol_errors_total",
      help: "libpq connections closed because the client broke the protocol",
      registers,
    });
    this.backupLsn = new Gauge({
      name: "strata_safekeeper_backup_lsn",
      help: "End of the WAL offloaded to remote storage (LSN as a number); retention keeps WAL above it",
      labelNames: ["tenant_id", "timeline_id"],
      registers,
    });
    this.walBackupSegments = new Counter({
      name: "strata_safekeeper_wal_backup_segments_total",
      help: "WAL segments uploaded to remote storage",
      labelNames: ["tenant_id", "timeline_id"],
      registers,
    });
    this.walBackupBytes = new Counter({
      name: "strata_safekeeper_wal_backup_bytes_total",
      help: "WAL bytes uploaded to remote storage",
      labelNames: ["tenant_id", "timeline_id"],
      registers,
    });
    this.walBackupErrors = new Counter({
      name: "strata_safekeeper_wal_backup_errors_total",
      help: "Failed WAL segment uploads (after the storage's own retries); each is retried with backoff",
      labelNames: ["tenant_id", "timeline_id"],
      registers,
    });
    this.remoteWalDownloads = new Counter({
      name: "strata_safekeeper_remote_wal_downloads_total",
      help: "WAL segments downloaded from remote storage to serve consumers asking for WAL older than the local files",
      labelNames: ["tenant_id", "timeline_id"],
      registers,
    });
  }

  /** An opened timeline's hot-path figures (replaces an earlier source of the same timeline). */
  addTimeline(src: TimelineSeriesSource): void {
    this.sources.set(`${src.labels.tenant_id}/${src.labels.timeline_id}`, src);
  }

  /** Drops every per-timeline series of a deleted timeline. */
  forgetTimeline(tenantId: string, timelineId: string): void {
    this.sources.delete(`${tenantId}/${timelineId}`);
    const labels = { tenant_id: tenantId, timeline_id: timelineId };
    for (const m of [this.walReceivedBytes, this.fsyncs, this.flushLsn, this.commitLsn, this.term, this.computeConnected, this.backupLsn, this.walBackupSegments, this.walBackupBytes, this.walBackupErrors, this.remoteWalDownloads]) {
      m.remove(labels);
    }
  }
}
