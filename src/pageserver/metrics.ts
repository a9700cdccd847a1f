/**
 * Prometheus metrics of the pageserver (one set per registry, so two
 * pageservers in one test process never mix series).
 *
 * Per-timeline series carry tenant_id/timeline_id labels: an operator needs
 * to see *which* timeline lags. Their values are read from the live timelines
 * at scrape time (`collect`), so nothing on the hot path updates gauges.
 * Counters and histograms on the hot path have no per-timeline labels.
 *
 *   strata_pageserver_ingest_wal_bytes_total          WAL bytes ingested
 *   strata_pageserver_ingest_records_total            WAL records ingested
 *   strata_pageserver_last_record_lsn{tenant,timeline}
 *   strata_pageserver_disk_consistent_lsn{tenant,timeline}
 *   strata_pageserver_wal_lag_bytes{tenant,timeline}  commit LSN seen from the safekeeper - last_record_lsn
 *   strata_pageserver_layers{tenant,timeline,kind}    historic layer files (delta|image) and in-memory (frozen|open)
 *   strata_pageserver_layer_bytes{tenant,timeline}    bytes of historic layer files
 *   strata_pageserver_getpage_seconds{op}             page-service / read latency by request kind
 *   strata_pageserver_reconstruct_records_total       WAL records replayed by GetPage (native + PostgreSQL)
 *   strata_pageserver_redo_calls_total                reconstructions that replayed at least one record
 *   strata_pageserver_page_cache_{hits,misses}_total  materialized page cache
 *   strata_pageserver_page_cache_hit_ratio            hits / (hits + misses) since start
 *   strata_pageserver_layer_flushes_total, _flush_seconds
 *   strata_pageserver_image_layers_created_total
 *   strata_pageserver_read_errors_total{code}         reads that failed (corrupt_data means a damaged layer)
 */
import { Counter, Gauge, Histogram, LATENCY_BUCKETS_S, type Registry } from "../lib/metrics.js";

export interface TimelineGaugeSource {
  tenantId: string;
  timelineId: string;
  lastRecordLsn: bigint;
  diskConsistentLsn: bigint;
  walLagBytes: number;
  layerCounts: Record<"delta" | "image" | "frozen" | "open", number>;
  layerBytes: number;
}

export class PageserverMetrics {
  readonly ingestBytes: Counter;
  readonly ingestRecords: Counter;
  readonly getpageSeconds: Histogram<"op">;
  readonly reconstructRecords: Counter;
  readonly redoCalls: Counter;
  readonly pageCacheHits: Counter;
  readonly pageCacheMisses: Counter;
  readonly flushes: Counter;
  readonly flushSeconds: Histogram;
  readonly imageLayersCreated: Counter;
  readonly readErrors: Counter<"code">;
  private sources: () => Iterable<TimelineGaugeSource> = () => [];

  constructor(readonly registry: Registry) {
    const registers = [registry];
    this.ingestBytes = new Counter({ name: "strata_pageserver_ingest_wal_bytes_total", help: "WAL bytes ingested", registers });
    this.ingestRecords = new Counter({ name: "strata_pageserver_ingest_records_total", help: "WAL records ingested", registers });
    this.getpageSeconds = new Histogram({ name: "strata_pageserver_getpage_seconds", help: "Read request latency by kind", labelNames: ["op"], buckets: LATENCY_BUCKETS_S, registers });
    this.reconstructRecords = new Counter({ name: "strata_pageserver_reconstruct_records_total", help: "WAL records replayed to materialize pages", registers });
    this.redoCalls = new Counter({ name: "strata_pageserver_redo_calls_total", help: "Page reconstructions that replayed WAL", registers });
    this.pageCacheHits = new Counter({ name: "strata_pageserver_page_cache_hits_total", help: "Materialized page cache hits (no replay needed)", registers });
    this.pageCacheMisses = new Counter({ name: "strata_pageserver_page_cache_misses_total", help: "Materialized page cache misses", registers });
    this.flushes = new Counter({ name: "strata_pageserver_layer_flushes_total", help: "In-memory layers flushed to delta layer files", registers });
    this.flushSeconds = new Histogram({ name: "strata_pageserver_layer_flush_seconds", help: "Duration of one in-memory layer flush", buckets: LATENCY_BUCKETS_S, registers });
    this.imageLayersCreated = new Counter({ name: "strata_pageserver_image_layers_created_total", help: "Image layers created by compaction", registers });
    this.readErrors = new Counter({ name: "strata_pageserver_read_errors_total", help: "Failed reads by error code", labelNames: ["code"], registers });

    const sources = () => this.sources();
    const hitsCounter = this.pageCacheHits;
    const missesCounter = this.pageCacheMisses;
    const perTimeline = (name: string, help: string, pick: (s: TimelineGaugeSource) => number) =>
      new Gauge({
        name, help, labelNames: ["tenant_id", "timeline_id"], registers,
        collect() {
          this.reset();
          for (const s of sources()) this.labels(s.tenantId, s.timelineId).set(pick(s));
        },
      });
    perTimeline("strata_pageserver_last_record_lsn", "End of the last WAL record ingested", (s) => Number(s.lastRecordLsn));
    perTimeline("strata_pageserver_disk_consistent_lsn", "Everything below is in local layer files", (s) => Number(s.diskConsistentLsn));
    perTimeline("strata_pageserver_wal_lag_bytes", "Commit LSN reported by the safekeeper minus last_record_lsn", (s) => s.walLagBytes);
    perTimeline("strata_pageserver_layer_bytes", "Bytes of historic layer files", (s) => s.layerBytes);
    new Gauge({
      name: "strata_pageserver_layers", help: "Layers by kind", labelNames: ["tenant_id", "timeline_id", "kind"], registers,
      collect() {
        this.reset();
        for (const s of sources()) for (const [k, v] of Object.entries(s.layerCounts)) this.labels(s.tenantId, s.timelineId, k).set(v);
      },
    });
    new Gauge({
      name: "strata_pageserver_page_cache_hit_ratio", help: "Materialized page cache hits / lookups since start", registers,
      async collect() {
        const h = (await hitsCounter.get()).values[0]?.value ?? 0;
        const m = (await missesCounter.get()).values[0]?.value ?? 0;
        this.set(h + m === 0 ? 0 : h / (h + m));
      },
    });
  }

  /** Where scrape-time gauges read their values (the tenant manager's timelines). */
  setTimelineSource(fn: () => Iterable<TimelineGaugeSource>): void {
    this.sources = fn;
  }
}
