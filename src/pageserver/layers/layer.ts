/**
 * The `Layer` interface the layer map and the read path see, and
 * `PersistentLayer`, the handle for one layer file on local disk.
 *
 * Every layer — the open and frozen in-memory layers, delta files, image
 * files — answers one read: the versions of a key in an LSN range, newest
 * first. The layer map only needs that plus the layer's rectangle (`desc`).
 *
 * A timeline may hold ~10k layer files; keeping a descriptor open for each
 * would exhaust file descriptors and memory, so `PersistentLayer` is built
 * from the file name alone (a directory listing is the layer map) and opens
 * the file on first read. Opening checks that the header agrees with the
 * name: a file renamed by hand or damaged is corrupt_data, never served.
 * (Closing idle readers under a descriptor budget is for the eviction work.)
 *
 * With remote storage a layer has a `residence` (residence.ts): the file may
 * be remote-only (evicted, or not yet downloaded after an attach), and the
 * first read downloads it. Reads through `getValues` are counted so eviction
 * never closes a reader in use.
 */
import { join } from "node:path";
import { StrataError } from "../../lib/errors.js";
import type { Key } from "../key.js";
import { DeltaLayerReader } from "./delta_layer.js";
import { ImageLayerReader } from "./image_layer.js";
import type { IndexPageCache } from "./page_cache.js";
import type { LayerResidence } from "./residence.js";
import { formatLayerFileName, parseLayerFileName, type LayerDesc } from "./layer_name.js";
import { formatKeyRange, formatLsnRange, type LsnRange } from "./range.js";
import type { GetValuesOptions, ValueEntry } from "./value.js";

export interface Layer {
  /** The layer's rectangle. For the open in-memory layer the LSN end is LSN_UNBOUNDED. */
  readonly desc: LayerDesc;
  /** Versions of `key` with LSN in `lsnRange`, newest first. */
  getValues(key: Key, lsnRange: LsnRange, opts?: GetValuesOptions): Promise<ValueEntry[]>;
}

export type LayerFileReaderOf = DeltaLayerReader | ImageLayerReader;

/** A layer file in a local directory, opened on first use. */
export class PersistentLayer implements Layer {
  readonly fileName: string;
  private opening: Promise<LayerFileReaderOf> | undefined;
  /** Set when the timeline has remote storage: whether the file is local, download on demand, access time. */
  residence: LayerResidence | undefined;

  constructor(
    readonly dir: string,
    readonly desc: LayerDesc,
    private readonly opts: { cache?: IndexPageCache } = {},
  ) {
    this.fileName = formatLayerFileName(desc);
  }

  /** A handle for an existing file name (throws invalid_argument if it is not a layer file name). */
  static fromFileName(dir: string, fileName: string, opts: { cache?: IndexPageCache } = {}): PersistentLayer {
    return new PersistentLayer(dir, parseLayerFileName(fileName), opts);
  }

  get path(): string {
    return join(this.dir, this.fileName);
  }

  get isOpen(): boolean {
    return this.opening !== undefined;
  }

  /** The opened reader (shared by concurrent callers; a failed open is retried next time). */
  async reader(): Promise<LayerFileReaderOf> {
    if (this.residence !== undefined && !this.residence.resident) await this.residence.ensureResident();
    if (this.opening === undefined) {
      const p = this.open();
      this.opening = p;
      p.catch(() => {
        if (this.opening === p) this.opening = undefined;
      });
    }
    return this.opening;
  }

  async getValues(key: Key, lsnRange: LsnRange, opts: GetValuesOptions = {}): Promise<ValueEntry[]> {
    const r = this.residence;
    if (r === undefined) return (await this.reader()).getValues(key, lsnRange, opts);
    r.inflightReads++;
    r.touch();
    try {
      return await (await this.reader()).getValues(key, lsnRange, opts);
    } finally {
      r.inflightReads--;
    }
  }

  /**
   * The reader for a long scan (compaction): counted as a read in flight until
   * `release()`, so eviction cannot close the file under the scan.
   */
  async pin(): Promise<{ reader: LayerFileReaderOf; release: () => void }> {
    const r = this.residence;
    if (r !== undefined) {
      r.inflightReads++;
      r.touch();
    }
    let released = false;
    const release = (): void => {
      if (released || r === undefined) return;
      released = true;
      r.inflightReads--;
    };
    try {
      return { reader: await this.reader(), release };
    } catch (e) {
      release();
      throw e;
    }
  }

  /** Evicts the local file (remote storage keeps it); false when not possible now (not resident, read in flight). */
  async evict(): Promise<boolean> {
    if (this.residence === undefined) return false;
    return this.residence.evict(() => this.close());
  }

  async close(): Promise<void> {
    const p = this.opening;
    this.opening = undefined;
    if (p !== undefined) await (await p.catch(() => undefined))?.close();
  }

  private async open(): Promise<LayerFileReaderOf> {
    const r = this.desc.kind === "delta" ? await DeltaLayerReader.open(this.path, this.opts) : await ImageLayerReader.open(this.path, this.opts);
    const h = r.desc;
    const d = this.desc;
    if (h.keyRange.start !== d.keyRange.start || h.keyRange.end !== d.keyRange.end || h.lsnRange.start !== d.lsnRange.start || h.lsnRange.end !== d.lsnRange.end) {
      await r.close();
      throw new StrataError(
        "corrupt_data",
        `Layer file ${this.path}: header ranges ${formatKeyRange(h.keyRange)} x ${formatLsnRange(h.lsnRange)} disagree with its name (at offset 16)`,
      );
    }
    return r;
  }
}
