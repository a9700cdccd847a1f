/**
 * Image layer files: one materialized version of every key in a key range,
 * all at one LSN.
 *
 * Compaction writes image layers where a key range has accumulated too many
 * deltas, so GetPage stops its walk there instead of replaying history; GC
 * may then drop the older layers the image covers. An image layer is
 * authoritative for its whole key range at its LSN: a key of the range that
 * has no entry did not exist at that LSN (e.g. a dropped relation), and the
 * reconstruction walk stops there too.
 *
 * Byte layout, checksums and crash safety are those of layer_file.ts (entry
 * key = the 18-byte key). Values are stored as raw image bytes — there is
 * nothing else an image layer can hold — and returned as `Value`s of kind
 * "image". The LSN range in the header and name is [lsn, lsn + 1).
 */
import { StrataError } from "../../lib/errors.js";
import { formatLsn, LSN_MAX, type Lsn } from "../../lib/lsn.js";
import { formatKey, type Key } from "../key.js";
import type { IndexPageCache } from "./page_cache.js";
import { formatLayerFileName, type LayerDesc } from "./layer_name.js";
import { imageEntryKey, LayerFileReader, LayerFileWriter, OpenedLayerFile, readKey, type ReadArena, type ReadWindow, type ScanVisitor } from "./layer_file.js";
import { formatKeyRange, keyRangeContains, lsnRangeContains, type KeyRange, type LsnRange } from "./range.js";
import type { GetValuesOptions, ValueEntry } from "./value.js";
import type { WrittenLayer } from "./delta_layer.js";

export interface ImageLayerWriterOptions {
  dir: string;
  keyRange: KeyRange;
  lsn: Lsn;
  generation?: number;
  indexPageSizeBytes?: number;
}

/** Bytes of one page image in a file (value plus its CRC), for read-ahead sizing. */
const IMAGE_VALUE_BYTES_ESTIMATE = 8192 + 4;

/** Streams (key, image) pairs, keys strictly increasing, into a new image layer file. */
export class ImageLayerWriter {
  private readonly entryKey = Buffer.allocUnsafe(18);

  private constructor(
    private readonly file: LayerFileWriter,
    readonly desc: LayerDesc,
  ) {}

  static async create(opts: ImageLayerWriterOptions): Promise<ImageLayerWriter> {
    if (opts.lsn >= LSN_MAX) throw new StrataError("invalid_argument", `Image layer LSN ${formatLsn(opts.lsn)} must be below the maximum LSN`);
    const lsnRange = { start: opts.lsn, end: (opts.lsn + 1n) as Lsn };
    const desc: LayerDesc = {
      kind: "image",
      keyRange: opts.keyRange,
      lsnRange,
      ...(opts.generation === undefined ? {} : { generation: opts.generation }),
    };
    const name = formatLayerFileName(desc);
    const file = await LayerFileWriter.create({
      dir: opts.dir, name, format: "image", keyRange: opts.keyRange, lsnRange,
      ...(opts.indexPageSizeBytes === undefined ? {} : { indexPageSizeBytes: opts.indexPageSizeBytes }),
    });
    return new ImageLayerWriter(file, desc);
  }

  get entries(): number {
    return this.file.entries;
  }

  async put(key: Key, image: Uint8Array): Promise<void> {
    if (!keyRangeContains(this.desc.keyRange, key)) {
      throw new StrataError("invalid_argument", `Image layer: key ${formatKey(key)} outside ${formatKeyRange(this.desc.keyRange)}`);
    }
    await this.file.add(imageEntryKey(key, this.entryKey), image);
  }

  async finish(): Promise<WrittenLayer> {
    const summary = await this.file.finish();
    return { ...summary, desc: this.desc };
  }

  async abort(): Promise<void> {
    await this.file.abort();
  }
}

/** Reads a finished image layer file. */
export class ImageLayerReader extends OpenedLayerFile {
  private constructor(file: LayerFileReader) {
    super(file);
  }

  static async open(path: string, opts: { cache?: IndexPageCache } = {}): Promise<ImageLayerReader> {
    return new ImageLayerReader(await LayerFileReader.open(path, "image", opts));
  }

  get lsn(): Lsn {
    return this.desc.lsnRange.start;
  }

  /** The image of `key`, or undefined if the key did not exist at this layer's LSN (or is outside its range). */
  async getImage(key: Key): Promise<Uint8Array | undefined> {
    if (!keyRangeContains(this.desc.keyRange, key)) return undefined;
    const target = imageEntryKey(key);
    const cursor = await this.file.seek(target);
    if (!cursor.valid) return undefined;
    const e = cursor.entry();
    if (!e.entryKey.equals(target)) return undefined;
    return this.file.readValue(e);
  }

  /** Layer interface: the image as a one-element list if this layer's LSN is in `lsnRange`. */
  async getValues(key: Key, lsnRange: LsnRange, _opts: GetValuesOptions = {}): Promise<ValueEntry[]> {
    if (!lsnRangeContains(lsnRange, this.lsn)) return [];
    const bytes = await this.getImage(key);
    return bytes === undefined ? [] : [{ key, lsn: this.lsn, value: { kind: "image", bytes } }];
  }

  /**
   * Visits every (key, image) with a key in `keyRange` in key order,
   * synchronously (LayerFileReader.scanSync): the visitor gets the leaf page
   * and slot of the entry key and a verified view of the image, valid as
   * long as the caller keeps it (read-ahead buffers are never reused).
   * `expectedEntries` sizes the read-ahead so a short range reads little more
   * than it needs; `arena` recycles the read-ahead buffers (the caller then
   * must not keep the views past its reset). Returns the number visited.
   */
  scanImagesSync(keyRange: KeyRange, visit: ScanVisitor, expectedEntries?: number, arena?: ReadArena): number {
    const from = keyRange.start < this.desc.keyRange.start ? this.desc.keyRange.start : keyRange.start;
    const to = keyRange.end > this.desc.keyRange.end ? this.desc.keyRange.end : keyRange.end;
    if (from >= to) return 0;
    return this.file.scanSync(imageEntryKey(from), imageEntryKey(to), visit, {
      ...(expectedEntries === undefined ? {} : { expectedValueBytes: expectedEntries * IMAGE_VALUE_BYTES_ESTIMATE }),
      ...(arena === undefined ? {} : { arena }),
    });
  }

  /** Every (key, image) with a key in `keyRange` (default: all), in key order. */
  async *iterate(keyRange?: KeyRange): AsyncGenerator<ValueEntry> {
    const from = keyRange === undefined || keyRange.start < this.desc.keyRange.start ? this.desc.keyRange.start : keyRange.start;
    const to = keyRange === undefined || keyRange.end > this.desc.keyRange.end ? this.desc.keyRange.end : keyRange.end;
    if (from >= to) return;
    const cursor = await this.file.seek(imageEntryKey(from));
    const window: ReadWindow = { buf: undefined, start: 0 };
    while (cursor.valid) {
      const e = cursor.entry();
      const key = readKey(e.entryKey, 0);
      if (key >= to) return;
      if (!keyRangeContains(this.desc.keyRange, key)) {
        throw new StrataError("corrupt_data", `Layer file ${this.file.path}: key ${formatKey(key)} outside the layer's key range (at offset ${e.valueOffset})`);
      }
      const bytes = await this.file.readValueSequential(e, window);
      yield { key, lsn: this.lsn, value: { kind: "image", bytes } };
      await cursor.next();
    }
  }
}
