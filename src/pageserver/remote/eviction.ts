/**
 * Eviction: removing local layer files that remote storage holds durably
 * (DESIGN §7). The local disk is a cache; the next read of an evicted layer
 * downloads it again (layers/residence.ts).
 *
 * Only layers listed in the timeline's last *durable* index are evicted, so
 * a crash right after an eviction still finds every layer remotely. Eviction
 * of a timeline runs under its compaction lock (compaction and GC hold layer
 * readers open outside the per-read accounting), and skips layers with a
 * read in flight.
 *
 * Two triggers:
 *   - explicit: `PUT /v1/tenant/:t/timeline/:tl/evict_layers` (all evictable
 *     layers of the timeline, or the named ones);
 *   - the disk-usage policy: a pageserver task that, when the resident layer
 *     bytes of all timelines exceed `maxLocalLayerBytes`, evicts the least
 *     recently read layers (access times recorded by every read) until usage
 *     is below EVICTION_TARGET_FRACTION of the limit.
 */
import type { Logger } from "pino";
import { errorFields } from "../../lib/logging.js";
import type { PersistentLayer } from "../layers/layer.js";
import type { Timeline } from "../timeline.js";
import type { RemoteMetrics } from "./metrics.js";

/** Evict down to 90% of the limit, so the policy does not run again on the next few downloads. */
export const EVICTION_TARGET_FRACTION = 0.9;

export interface EvictionResult {
  evicted: number;
  skipped: number;
  bytes: number;
}

/** Evicts the timeline's evictable layers (all of them, or those named). */
export async function evictTimelineLayers(tl: Timeline, opts: { names?: readonly string[]; metrics?: RemoteMetrics } = {}): Promise<EvictionResult> {
  const remote = tl.remote;
  const result: EvictionResult = { evicted: 0, skipped: 0, bytes: 0 };
  if (remote === undefined) return result;
  return tl.withCompactionLock(async () => {
    const wanted = opts.names === undefined ? undefined : new Set(opts.names);
    const evictable = new Set(remote.evictableLayers());
    for (const l of remote.allLayers()) {
      if (wanted !== undefined && !wanted.has(l.fileName)) continue;
      if (l.residence?.resident !== true) continue;
      if (!evictable.has(l) || !(await l.evict())) {
        result.skipped++;
        continue;
      }
      result.evicted++;
      result.bytes += l.residence.sizeBytes;
      opts.metrics?.evictions.inc();
    }
    return result;
  });
}

/** One pass of the disk-usage policy over all timelines. */
export async function diskUsageEvictionPass(timelines: readonly Timeline[], maxLocalLayerBytes: number, opts: { log: Logger; metrics?: RemoteMetrics }): Promise<EvictionResult> {
  const result: EvictionResult = { evicted: 0, skipped: 0, bytes: 0 };
  const withRemote = timelines.filter((t) => t.remote !== undefined && t.state === "active");
  let usage = withRemote.reduce((a, t) => a + t.remote!.residentBytes(), 0);
  if (usage <= maxLocalLayerBytes) return result;
  const target = Math.floor(maxLocalLayerBytes * EVICTION_TARGET_FRACTION);
  const candidates: Array<{ tl: Timeline; layer: PersistentLayer }> = [];
  for (const tl of withRemote) for (const layer of tl.remote!.evictableLayers()) candidates.push({ tl, layer });
  candidates.sort((a, b) => (a.layer.residence?.lastAccessMs ?? 0) - (b.layer.residence?.lastAccessMs ?? 0));
  for (const { tl, layer } of candidates) {
    if (usage <= target) break;
    try {
      const r = await evictTimelineLayers(tl, { names: [layer.fileName], ...(opts.metrics === undefined ? {} : { metrics: opts.metrics }) });
      result.evicted += r.evicted;
      result.skipped += r.skipped;
      result.bytes += r.bytes;
      usage -= r.bytes;
    } catch (e) {
      opts.log.warn({ tenant_id: tl.tenantId, timeline_id: tl.timelineId, layer: layer.fileName, ...errorFields(e) }, "eviction failed");
    }
  }
  opts.log.info({ evicted: result.evicted, bytes: result.bytes, usage_after: usage, limit: maxLocalLayerBytes }, "disk-usage eviction pass");
  return result;
}
