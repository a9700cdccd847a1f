/**
 * Collecting what it takes to reconstruct one version of a key.
 *
 * GetPage@LSN (DESIGN §4) walks the layer map newest to oldest: ask the map
 * which layer holds the newest version below the current bound, read that
 * layer's versions of the key down to the layer's floor, and continue below
 * the floor, until an image or a record that initializes the page (will-init)
 * is met. The output — an optional base image and the WAL records to apply on
 * it, oldest first — is the input of page reconstruction (redo), which is not
 * this module's business.
 *
 * "Version at LSN X" includes every version stored at an LSN <= X, so the
 * walk starts with the half-open bound X + 1.
 *
 * Where the walk can end:
 *   - "image":      a base image was found (`image` is set);
 *   - "will_init":  the oldest record initializes the page (no image needed);
 *   - "absent":     an image layer covering the key has no entry for it: the
 *                   key did not exist at that LSN. With no records the key
 *                   does not exist at X; records on top of nothing are
 *                   the caller's corrupt_data to report;
 *   - "history_end": this timeline's layers have nothing below `continueBelowLsn`.
 *                   A branch continues in its ancestor timeline (at
 *                   min(ancestor LSN, continueBelowLsn - 1)), placing the
 *                   ancestor's records before these; that step is the
 *                   timeline's, since the layer map knows only one timeline.
 *
 * The walk is a loop whose bound strictly decreases (the layer map's floors
 * are below their bound), so it terminates; a named step limit turns a
 * layer-map bug into an error instead of a hang.
 */
import { assert } from "../../lib/errors.js";
import { formatLsn, LSN_MAX, type Lsn } from "../../lib/lsn.js";
import { formatKey, type Key } from "../key.js";
import type { Layer } from "./layer.js";
import type { LayerMap } from "./layer_map.js";
import type { WalValue } from "./value.js";

/**
 * Most layers one walk may visit. A reconstruction that needs more than this
 * many layers means compaction has fallen hopelessly behind (it creates
 * images long before) or the map is broken.
 */
export const MAX_RECONSTRUCT_LAYER_VISITS = 100_000;

export type ReconstructStop = "image" | "will_init" | "absent" | "history_end";

export interface ReconstructData {
  readonly key: Key;
  readonly lsn: Lsn;
  readonly image?: { readonly lsn: Lsn; readonly bytes: Uint8Array };
  /** WAL records to apply on the image (or on nothing), oldest first. */
  readonly records: ReadonlyArray<{ readonly lsn: Lsn; readonly value: WalValue }>;
  readonly stop: ReconstructStop;
  /** The walk examined versions in [continueBelowLsn, lsn]; for "history_end", where an ancestor must continue. */
  readonly continueBelowLsn: Lsn;
  /** Layers read, newest first (diagnostics and metrics). */
  readonly layersVisited: readonly Layer[];
}

/** Collects the base image and WAL records for `key` as of `lsn`, walking `map` newest first. */
export async function collectReconstructData(map: LayerMap, key: Key, lsn: Lsn): Promise<ReconstructData> {
  assert(lsn < LSN_MAX, "cannot read at the maximum LSN");
  const newestFirst: Array<{ lsn: Lsn; value: WalValue }> = [];
  const visited: Layer[] = [];
  let end = (lsn + 1n) as Lsn;
  const done = (stop: ReconstructStop, image?: { lsn: Lsn; bytes: Uint8Array }): ReconstructData => ({
    key,
    lsn,
    ...(image === undefined ? {} : { image }),
    records: newestFirst.reverse(),
    stop,
    continueBelowLsn: end,
    layersVisited: visited,
  });
  for (let step = 0; step < MAX_RECONSTRUCT_LAYER_VISITS; step++) {
    const found = map.search(key, end);
    if (found === undefined) return done("history_end");
    assert(found.lsnFloor < end, `layer map floor ${formatLsn(found.lsnFloor)} not below ${formatLsn(end)}`);
    visited.push(found.layer);
    const entries = await found.layer.getValues(key, { start: found.lsnFloor, end }, { stopAtBase: true });
    for (const e of entries) {
      if (e.value.kind === "image") {
        end = e.lsn;
        return done("image", { lsn: e.lsn, bytes: e.value.bytes });
      }
      newestFirst.push({ lsn: e.lsn, value: e.value });
      if (e.value.willInit) {
        end = e.lsn;
        return done("will_init");
      }
    }
    end = found.lsnFloor;
    // An image layer is authoritative for its whole key range: no entry means no key.
    if (found.layer.desc.kind === "image") return done("absent");
  }
  throw new Error(`assertion failed: reconstructing ${formatKey(key)} at ${formatLsn(lsn)} visited ${MAX_RECONSTRUCT_LAYER_VISITS} layers`);
}

