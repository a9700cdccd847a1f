/**
 * A minimal timeline for the WAL ingest tests: the real storage parts
 * (one open InMemoryLayer in a LayerMap, collectReconstructData, walredo's
 * `reconstruct` with a real helper pool) behind datadir.ts's reader and
 * writer interfaces, without the Timeline's flushing, caching and waiting.
 * It lets ingest be tested against real PostgreSQL on its own; the
 * Timeline's own tests cover the rest.
 */
import { InMemoryLayer } from "../src/pageserver/layers/inmemory_layer.js";
import { LayerMap } from "../src/pageserver/layers/layer_map.js";
import { collectReconstructData } from "../src/pageserver/layers/reconstruct.js";
import { decodeKey, SlruKind, type Key } from "../src/pageserver/key.js";
import { redoInputOf, type DatadirPut, type DatadirReader, type DatadirWriter } from "../src/pageserver/datadir.js";
import { reconstruct, type RedoKey } from "../src/walredo/native_redo.js";
import type { WalRedoPool } from "../src/walredo/pool.js";
import { formatLsn, lsn, type Lsn } from "../src/lib/lsn.js";
import { SLRU_PAGES_PER_SEGMENT } from "../src/formats/wal/rmgr/slru.js";

function redoKeyOf(key: Key): RedoKey {
  const info = decodeKey(key);
  if (info.kind === "rel_block") {
    return { kind: "rel", rel: { spcOid: info.rel.spcOid, dbOid: info.rel.dbOid, relNumber: info.rel.relNumber }, forkNum: info.rel.fork, blockNumber: info.blockNumber };
  }
  if (info.kind === "slru_block") {
    const slru = info.slru === SlruKind.Clog ? "clog" : info.slru === SlruKind.MultiXactOffsets ? "multixact_offsets" : "multixact_members";
    return { kind: "slru", slru, pageno: info.segNo * SLRU_PAGES_PER_SEGMENT + info.blockNumber };
  }
  throw new Error(`key of kind ${info.kind} has WAL records`);
}

export class TestStore implements DatadirReader, DatadirWriter {
  readonly map = new LayerMap();
  readonly layer: InMemoryLayer;
  lastRecordLsn: Lsn = lsn(0);
  prevRecordLsn: Lsn = lsn(0);
  puts = 0;
  redoCalls = 0;

  constructor(
    dir: string,
    private readonly pool: WalRedoPool,
  ) {
    this.layer = InMemoryLayer.create({ dir, startLsn: lsn(0) });
    this.map.setOpenLayer(this.layer);
  }

  async put(entries: ReadonlyArray<DatadirPut>): Promise<void> {
    for (const e of entries) this.layer.put(e.key, e.lsn, e.value);
    this.puts += entries.length;
  }

  finishRecord(endLsn: Lsn, prevRecordLsn: Lsn): void {
    if (endLsn < this.lastRecordLsn) throw new Error(`finishRecord went backwards: ${formatLsn(endLsn)}`);
    this.lastRecordLsn = endLsn;
    this.prevRecordLsn = prevRecordLsn;
  }

  async get(key: Key, at: Lsn): Promise<Uint8Array | undefined> {
    const data = await collectReconstructData(this.map, key, at);
    if (data.records.length === 0) return data.image?.bytes;
    const inputs = data.records.map((r) => redoInputOf(r.value, `key ${key.toString(16)} at ${formatLsn(r.lsn)}`));
    this.redoCalls++;
    return reconstruct(redoKeyOf(key), data.image?.bytes, inputs, { pool: this.pool });
  }

  close(): void {
    this.layer.close();
  }
}
