/**
 * Prometheus metrics of the pageserver's remote storage work: the upload
 * queue, downloads and eviction. One set per registry (like metrics.ts), so
 * two pageservers in one test process keep their series apart; the queue
 * depth gauge reads the live clients at scrape time.
 *
 *   strata_pageserver_remote_upload_queue_depth        operations queued or running, all timelines
 *   strata_pageserver_remote_operations_total{op}      completed uploads/deletions (layer|index|delete)
 *   strata_pageserver_remote_operation_failures_total{op}  failed attempts (each is retried)
 *   strata_pageserver_remote_uploaded_bytes_total
 *   strata_pageserver_remote_downloads_total{what}     layer|index downloads completed
 *   strata_pageserver_remote_downloaded_bytes_total
 *   strata_pageserver_evictions_total                  layers evicted from local disk
 *   strata_pageserver_resident_layer_bytes             bytes of layer files on local disk (timelines with remote storage)
 */
import { Counter, Gauge, type Registry } from "../../lib/metrics.js";

export class RemoteMetrics {
  readonly operations: Counter<"op">;
  readonly failures: Counter<"op">;
  readonly uploadedBytes: Counter;
  readonly downloads: Counter<"what">;
  readonly downloadedBytes: Counter;
  readonly evictions: Counter;
  private queueSources = new Set<() => number>();
  private residentSources = new Set<() => number>();

  private constructor(registry: Registry) {
    const registers = [registry];
    this.operations = new Counter({ name: "strata_pageserver_remote_operations_total", help: "Completed remote uploads and deletions by kind", labelNames: ["op"], registers });
    this.failures = new Counter({ name: "strata_pageserver_remote_operation_failures_total", help: "Failed remote operation attempts by kind (retried)", labelNames: ["op"], registers });
    this.uploadedBytes = new Counter({ name: "strata_pageserver_remote_uploaded_bytes_total", help: "Bytes uploaded to remote storage", registers });
    this.downloads = new Counter({ name: "strata_pageserver_remote_downloads_total", help: "Completed downloads from remote storage by kind", labelNames: ["what"], registers });
    this.downloadedBytes = new Counter({ name: "strata_pageserver_remote_downloaded_bytes_total", help: "Bytes downloaded from remote storage", registers });
    this.evictions = new Counter({ name: "strata_pageserver_evictions_total", help: "Layers evicted from local disk", registers });
    const queue = this.queueSources;
    const resident = this.residentSources;
    new Gauge({
      name: "strata_pageserver_remote_upload_queue_depth", help: "Remote operations queued or in progress", registers,
      collect() {
        let n = 0;
        for (const f of queue) n += f();
        this.set(n);
      },
    });
    new Gauge({
      name: "strata_pageserver_resident_layer_bytes", help: "Bytes of layer files on local disk", registers,
      collect() {
        let n = 0;
        for (const f of resident) n += f();
        this.set(n);
      },
    });
  }

  private static readonly byRegistry = new WeakMap<Registry, RemoteMetrics>();

  static of(registry: Registry): RemoteMetrics {
    let m = RemoteMetrics.byRegistry.get(registry);
    if (m === undefined) {
      m = new RemoteMetrics(registry);
      RemoteMetrics.byRegistry.set(registry, m);
    }
    return m;
  }

  /** Registers a queue-depth source; returns its unregister function. */
  addQueueSource(f: () => number): () => void {
    this.queueSources.add(f);
    return () => this.queueSources.delete(f);
  }

  addResidentSource(f: () => number): () => void {
    this.residentSources.add(f);
    return () => this.residentSources.delete(f);
  }
}
