/**
 * Garbage collection of layer files (DESIGN §4): drops history no read can
 * ask for any more.
 *
 * The cutoff of a timeline is
 *
 *   cutoff = min(last_record_lsn - gc_horizon, LSN at (now - pitr_interval))
 *
 * never lower than the cutoff already persisted (it only moves forward).
 * The time -> LSN mapping is `LsnTimeHistory`: (wall-clock ms,
 * last_record_lsn) samples taken by the timeline as records finish, at most
 * one per LSN_TIME_SAMPLE_INTERVAL_MS, kept in memory only. "LSN at time T"
 * is the newest sample taken at or before T. With no sample that old (a
 * fresh process or timeline) GC falls back to the commit record the WAL
 * itself carries (lsn_by_timestamp.ts, `pitrCutoffFromCommits`): the end of
 * the last commit stamped at or before T, which survives restarts — every
 * state at a time >= T (what a branch "at T" reads) lies at or above it.
 * With neither (no commit that old) the PITR term keeps everything.
 * `pitr_interval = 0` disables the time term.
 *
 * Which layers go. Retain points are the cutoff itself and the branch points
 * (ancestor LSNs) of child timelines below it: a child reads its ancestor at
 * its branch point, whatever this timeline's cutoff is. A historic layer is
 * removed only when
 *   1. its LSN range lies wholly below the cutoff (delta: end <= cutoff;
 *      image at L: L < cutoff), and
 *   2. for every retain point P at or above the layer's start, an image layer
 *      with LSN in [newest LSN the layer holds, P] covers every key of the
 *      layer's key range (LayerMap.imageCoverageGaps). A read at P (or
 *      above) then stops at that image before reaching this layer.
 *   ("newest LSN the layer holds" is end - 1 for a delta, L for an image; an
 *   image at LSN I holds every key's value as of I inclusive.)
 * In-memory layers are always above disk_consistent_lsn and never touched.
 *
 * Order (crash safety): the new cutoff is persisted in the metadata (fsync)
 * BEFORE the layer map changes and files are deleted; a crash in between
 * leaves files no read may use, and the next GC removes them. Removal takes
 * the layers out of the layer map in one step, then the files are deleted
 * once no read of the timeline is in flight, and the directory is fsynced
 * (Timeline.removeHistoricLayers). GC runs under the timeline's compaction
 * lock so it never races a compaction step over the same layers.
 *
 * Reads below the cutoff are refused by Timeline.prepareRead
 * ("... is below the GC cutoff ...: that history is gone"), and a branch
 * below it by Timeline.create.
 *
 * Triggers: the tenant's background task (kind "gc", every `gcPeriodMs`,
 * tenant.ts) and `PUT /v1/tenant/:t/timeline/:tl/do_gc` (http_api.ts).
 */
import { formatLsn, lsnMax, lsnMin, type Lsn } from "../lib/lsn.js";
import { internalContext } from "./getpage.js";
import { findLsnByTimestamp } from "./lsn_by_timestamp.js";
import type { Layer } from "./layers/layer.js";
import { PersistentLayer } from "./layers/layer.js";
import type { Timeline } from "./timeline.js";

/** One sample per second is plenty for a PITR window measured in minutes to days. */
export const LSN_TIME_SAMPLE_INTERVAL_MS = 1_000;
/**
 * Samples kept before thinning: when full, every other old sample is dropped,
 * so memory is bounded (~16 KiB per timeline) and resolution degrades
 * gracefully for very old times (which only ever makes GC keep a bit more).
 */
export const LSN_TIME_MAX_SAMPLES = 1024;

/** In-memory (time, LSN) samples of one timeline, oldest first, both non-decreasing. */
export class LsnTimeHistory {
  private times: number[] = [];
  private lsns: Lsn[] = [];

  /** Records that `lsn` had been reached at `nowMs` (rate-limited to one sample per interval). */
  record(nowMs: number, lsn: Lsn): void {
    const n = this.times.length;
    if (n > 0 && nowMs - this.times[n - 1]! < LSN_TIME_SAMPLE_INTERVAL_MS) return;
    if (n > 0 && lsn < this.lsns[n - 1]!) return;
    if (n >= LSN_TIME_MAX_SAMPLES) {
      // Thin the older half; keep the newest half at full resolution.
      const half = n >> 1;
      const keepT: number[] = [];
      const keepL: Lsn[] = [];
      for (let i = 0; i < n; i++) {
        if (i >= half || i % 2 === 0) {
          keepT.push(this.times[i]!);
          keepL.push(this.lsns[i]!);
        }
      }
      this.times = keepT;
      this.lsns = keepL;
    }
    this.times.push(nowMs);
    this.lsns.push(lsn);
  }

  /** The LSN reached at `timeMs` (newest sample at or before it), or undefined when no sample is that old. */
  lsnAt(timeMs: number): Lsn | undefined {
    let lo = 0;
    let hi = this.times.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.times[mid]! <= timeMs) lo = mid + 1;
      else hi = mid;
    }
    return lo === 0 ? undefined : this.lsns[lo - 1];
  }

  get size(): number {
    return this.times.length;
  }
}

export interface GcCutoffs {
  /** last_record_lsn - gc_horizon (0 when the timeline is shorter). */
  readonly horizonCutoff: Lsn;
  /** LSN at now - pitr_interval; undefined when unknown (keeps everything) — last_record_lsn when PITR is off. */
  readonly pitrCutoff: Lsn | undefined;
  /** min of both, never below the persisted cutoff; INVALID (0) = nothing to collect. */
  readonly cutoff: Lsn;
}

/**
 * Computes the GC cutoff of a timeline from its tenant settings;
 * `pitrFromCommits` is the PITR term used when no (time, LSN) sample is old
 * enough (gcTimeline gets it from `pitrCutoffFromCommits`).
 */
export function computeGcCutoff(tl: Timeline, nowMs = Date.now(), pitrFromCommits?: Lsn): GcCutoffs {
  const conf = tl.deps.conf();
  const last = tl.lastRecordLsn;
  const horizon = BigInt(conf.gcHorizonBytes);
  const horizonCutoff = (last > horizon ? last - horizon : 0n) as Lsn;
  const pitrCutoff = conf.pitrIntervalMs === 0 ? last : (tl.lsnTimeHistory.lsnAt(nowMs - conf.pitrIntervalMs) ?? pitrFromCommits);
  let cutoff = pitrCutoff === undefined ? (0n as Lsn) : lsnMin(horizonCutoff, pitrCutoff);
  // Layers above disk_consistent_lsn are in memory; the cutoff itself may be anywhere at or below last_record_lsn.
  if (cutoff < tl.latestGcCutoffLsn) cutoff = tl.latestGcCutoffLsn;
  return { horizonCutoff, pitrCutoff, cutoff };
}

/**
 * The PITR term from commit records: the end of the last commit stamped at
 * or before `timeMs` (the compute's clock, PostgreSQL's commit timestamps),
 * or the newest commit's end when all are older; undefined when no commit
 * is that old or there are none (keep everything). Never below the oldest
 * LSN the timeline can read.
 */
export async function pitrCutoffFromCommits(tl: Timeline, timeMs: number, signal?: AbortSignal): Promise<Lsn | undefined> {
  if (tl.lastRecordLsn === 0n || tl.state !== "active") return undefined;
  const start = tl.ancestorTimelineId !== undefined ? tl.ancestorLsn : tl.initdbLsn;
  const lo = lsnMax(tl.latestGcCutoffLsn, start);
  if (lo > tl.lastRecordLsn) return undefined;
  const timestampUs = (BigInt(Math.floor(timeMs)) - PG_EPOCH_UNIX_MS) * 1000n;
  const r = await findLsnByTimestamp(tl, timestampUs, { lo, hi: tl.lastRecordLsn }, internalContext(signal));
  if (r.kind === "present") return r.lsn;
  if (r.kind === "future" && r.commit !== undefined) return lsnMax(r.commit.endLsn, lo);
  return undefined;
}

/** Milliseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC). */
const PG_EPOCH_UNIX_MS = 946_684_800_000n;

export interface GcResult {
  readonly cutoff: string;
  readonly retainedBranchPoints: string[];
  readonly layersTotal: number;
  readonly layersRemoved: number;
  readonly removedFiles: string[];
  readonly bytesRemoved: number;
}

/** The newest LSN whose version a layer may hold. */
function newestLsnIn(l: Layer): Lsn {
  return l.desc.kind === "delta" ? ((l.desc.lsnRange.end - 1n) as Lsn) : l.desc.lsnRange.start;
}

/**
 * Pure planning step: the historic layers of `tl` that may be removed for
 * `cutoff` with the given retain points (branch points), per the module rules.
 */
export function planGc(tl: Timeline, cutoff: Lsn, branchPoints: readonly Lsn[]): Layer[] {
  const retain = [cutoff, ...branchPoints.filter((p) => p < cutoff)];
  const out: Layer[] = [];
  for (const l of tl.layers.historicLayers()) {
    const { lsnRange, keyRange } = l.desc;
    const below = l.desc.kind === "delta" ? lsnRange.end <= cutoff : lsnRange.start < cutoff;
    if (!below) continue;
    const newest = newestLsnIn(l);
    let needed = false;
    for (const p of retain) {
      if (lsnRange.start > p) continue; // holds nothing a read at p can see
      // An image at an LSN in [newest, p] (but not this layer itself) must cover the whole key range.
      const from = l.desc.kind === "image" ? ((newest + 1n) as Lsn) : newest;
      if (from > p || !tl.layers.isCoveredByImages(keyRange, { start: from, end: (p + 1n) as Lsn })) {
        needed = true;
        break;
      }
    }
    if (!needed) out.push(l);
  }
  return out;
}

/**
 * Runs one GC pass on `tl`: computes the cutoff, persists it, removes the
 * layers nobody can read any more. `branchPoints` are the ancestor LSNs of
 * this timeline's children (the tenant knows them).
 */
export async function gcTimeline(tl: Timeline, branchPoints: readonly Lsn[], opts: { nowMs?: number; signal?: AbortSignal } = {}): Promise<GcResult> {
  return tl.withCompactionLock(async () => {
    opts.signal?.throwIfAborted();
    const nowMs = opts.nowMs ?? Date.now();
    const pitrMs = tl.deps.conf().pitrIntervalMs;
    const fromCommits = pitrMs > 0 && tl.lsnTimeHistory.lsnAt(nowMs - pitrMs) === undefined ? await pitrCutoffFromCommits(tl, nowMs - pitrMs, opts.signal) : undefined;
    const { cutoff } = computeGcCutoff(tl, nowMs, fromCommits);
    const retained = branchPoints.filter((p) => p < cutoff).map(formatLsn);
    const total = tl.layers.historicCount;
    if (cutoff === 0n) return { cutoff: formatLsn(cutoff), retainedBranchPoints: retained, layersTotal: total, layersRemoved: 0, removedFiles: [], bytesRemoved: 0 };
    // Durable first: once the cutoff is on disk no read may need what we remove next.
    await tl.setGcCutoff(cutoff);
    const doomed = planGc(tl, cutoff, branchPoints).filter((l): l is PersistentLayer => l instanceof PersistentLayer);
    const sizes = new Map(tl.layerInfos().map((i) => [i.fileName, i.sizeBytes]));
    let bytes = 0;
    for (const l of doomed) bytes += sizes.get(l.fileName) ?? 0;
    if (doomed.length > 0) await tl.removeHistoricLayers(doomed);
    const result: GcResult = {
      cutoff: formatLsn(cutoff),
      retainedBranchPoints: retained,
      layersTotal: total,
      layersRemoved: doomed.length,
      removedFiles: doomed.map((l) => l.fileName).sort(),
      bytesRemoved: bytes,
    };
    if (doomed.length > 0) tl.log.info({ cutoff: result.cutoff, layers_removed: doomed.length, bytes_removed: bytes, retained_branch_points: retained }, "garbage collected layers");
    return result;
  });
}
