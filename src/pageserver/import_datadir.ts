/**
 * Importing a PostgreSQL 15 data directory as images at one LSN.
 *
 * Where it is used: bootstrapping a timeline from `initdb` output (bootstrap
 * mode writes no WAL for the template catalogs, so their first pages exist
 * only as files), and tests that start ingest from a server's data directory.
 * WAL after `lsn` is then ingested on top (walingest.ts).
 *
 * What becomes a key (datadir.ts formats):
 *   - every block of every relation fork file in global/, base/<db>/ and
 *     pg_tblspc/<spc>/PG_15_*\/<db>/ (1 GiB segment files joined), with the
 *     fork's size, its database's relation directory, and the (spc, db) in
 *     the database directory ((1664, 0) for global/);
 *   - each pg_filenode.map (relmapper file) under its (spc, db);
 *   - pg_xact, pg_multixact/offsets and pg_multixact/members segment files:
 *     pages, segment sizes, SLRU directories;
 *   - pg_twophase files and the two-phase directory;
 *   - global/pg_control, and its checkPointCopy as the checkpoint value.
 * Other files (PG_VERSION, configuration, pg_internal.init, temporary
 * relations "t<backend>_<rel>", pg_wal) are not state strata serves.
 *
 * The directory must be consistent: a cleanly shut-down server (pg_control
 * state "shut down"), unless the caller knows better (`allowUnclean`). The
 * natural LSN is the end of the shutdown checkpoint record, so WAL ingest
 * continues with the record after it.
 *
 * Everything is written at `lsn` in chunks (bounded memory), then
 * finishRecord(lsn, pg_control's checkpoint location) marks the import done.
 * A crash in the middle leaves versions above last_record_lsn: import again.
 */
import { open, readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { StrataError } from "../lib/errors.js";
import { formatLsn, type Lsn } from "../lib/lsn.js";
import { DbState, parseControlFile, type ControlFileData } from "../formats/pg_control.js";
import { RELMAP_FILE_SIZE_BYTES } from "../formats/wal/rmgr/relmap.js";
import { encodeCheckPoint } from "../formats/wal/rmgr/xlog.js";
import {
  dbDirEntryId,
  encodeDbDir,
  encodeRelDir,
  encodeRelSize,
  encodeSlruDir,
  encodeSlruSegSize,
  encodeTwoPhaseDir,
  relDirEntryId,
  type DatadirPut,
  type DatadirWriter,
} from "./datadir.js";
import {
  CHECKPOINT_KEY,
  CONTROLFILE_KEY,
  DBDIR_KEY,
  SlruKind,
  TWOPHASE_DIR_KEY,
  relBlockKey,
  relDirKey,
  relSizeKey,
  relmapKey,
  slruBlockKey,
  slruDirKey,
  slruSegSizeKey,
  twoPhaseFileKey,
  type Key,
} from "./key.js";
import type { Value } from "./layers/value.js";

export const BLCKSZ = 8192;
/** RELSEG_SIZE: blocks per relation segment file (1 GiB). */
export const RELSEG_SIZE_BLOCKS = 131072;
/** DEFAULTTABLESPACE_OID / GLOBALTABLESPACE_OID (pg_tablespace.dat). */
export const DEFAULT_TABLESPACE_OID = 1663;
export const GLOBAL_TABLESPACE_OID = 1664;
/** Entries per writer.put call: bounds memory to ~8 MiB of page images. */
export const IMPORT_CHUNK_ENTRIES = 1024;
/**
 * Largest SLRU segment file accepted: SLRU_PAGES_PER_SEGMENT pages. The
 * members SLRU is the only one that can have a short last segment; none is
 * longer.
 */
const SLRU_SEGMENT_MAX_BYTES = 32 * BLCKSZ;

const FORK_SUFFIX: Readonly<Record<string, number>> = { "": 0, _fsm: 1, _vm: 2, _init: 3 };
const REL_FILE = /^(\d+)(_fsm|_vm|_init)?(?:\.(\d+))?$/;
const SLRU_FILE = /^[0-9A-F]{4,6}$/;
const TWOPHASE_FILE = /^[0-9A-F]{8}$/;

export interface ImportOptions {
  /** Import a directory whose pg_control does not say "shut down" (the caller guarantees consistency). */
  readonly allowUnclean?: boolean;
  /** prev_record_lsn to report with finishRecord (default: pg_control's checkpoint location). */
  readonly prevRecordLsn?: Lsn;
  readonly signal?: AbortSignal;
}

export interface ImportSummary {
  readonly controlFile: ControlFileData;
  readonly databases: number;
  readonly relationForks: number;
  readonly relationBlocks: number;
  readonly slruPages: number;
  readonly twoPhaseFiles: number;
}

class ChunkedWriter {
  private chunk: DatadirPut[] = [];
  constructor(
    private readonly writer: DatadirWriter,
    private readonly lsn: Lsn,
    private readonly signal?: AbortSignal,
  ) {}

  async put(key: Key, value: Value): Promise<void> {
    this.chunk.push({ key, lsn: this.lsn, value });
    if (this.chunk.length >= IMPORT_CHUNK_ENTRIES) await this.flush();
  }

  async image(key: Key, bytes: Uint8Array): Promise<void> {
    await this.put(key, { kind: "image", bytes });
  }

  async flush(): Promise<void> {
    this.signal?.throwIfAborted();
    if (this.chunk.length === 0) return;
    const c = this.chunk;
    this.chunk = [];
    await this.writer.put(c);
  }
}

async function listDir(path: string): Promise<string[]> {
  try {
    return (await readdir(path)).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new StrataError("io_error", `Cannot list ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/** Reads a file in BLCKSZ pages, handing each page (a fresh buffer) to `fn`. */
async function forEachPage(path: string, fn: (pageIndex: number, page: Uint8Array) => Promise<void>): Promise<number> {
  const st = await stat(path);
  if (st.size % BLCKSZ !== 0) {
    throw new StrataError("corrupt_data", `Cannot import ${path}: size ${st.size} is not a multiple of ${BLCKSZ}`);
  }
  const pages = st.size / BLCKSZ;
  const fh = await open(path, "r");
  try {
    for (let i = 0; i < pages; i++) {
      const page = new Uint8Array(BLCKSZ);
      const { bytesRead } = await fh.read(page, 0, BLCKSZ, i * BLCKSZ);
      if (bytesRead !== BLCKSZ) throw new StrataError("io_error", `Cannot import ${path}: short read of page ${i}`);
      await fn(i, page);
    }
  } finally {
    await fh.close();
  }
  return pages;
}

/** Imports one database directory (or global/): relation forks and the relmapper file. */
async function importDbDir(out: ChunkedWriter, dir: string, spcOid: number, dbOid: number): Promise<{ forks: number; blocks: number }> {
  // group segment files by (relNumber, fork)
  const forks = new Map<number, Array<{ segNo: number; name: string }>>();
  for (const name of await listDir(dir)) {
    if (name === "pg_filenode.map") {
      const bytes = new Uint8Array(await readFile(join(dir, name)));
      if (bytes.length !== RELMAP_FILE_SIZE_BYTES) throw new StrataError("corrupt_data", `Cannot import ${join(dir, name)}: ${bytes.length} bytes, expected ${RELMAP_FILE_SIZE_BYTES}`);
      await out.image(relmapKey(spcOid, dbOid), bytes);
      continue;
    }
    const m = REL_FILE.exec(name);
    if (!m) continue; // PG_VERSION, pg_internal.init, temp relations (t...), pg_control...
    const relNumber = Number(m[1]);
    if (relNumber === 0 || relNumber > 0xffffffff) throw new StrataError("corrupt_data", `Cannot import ${join(dir, name)}: relation number out of range`);
    const fork = FORK_SUFFIX[m[2] ?? ""]!;
    const id = relDirEntryId(relNumber, fork);
    const segs = forks.get(id) ?? [];
    segs.push({ segNo: m[3] === undefined ? 0 : Number(m[3]), name });
    forks.set(id, segs);
  }
  let blocks = 0;
  for (const [id, segs] of forks) {
    const relNumber = Math.floor(id / 4);
    const tag = { spcOid, dbOid, relNumber, fork: id % 4 };
    segs.sort((a, b) => a.segNo - b.segNo);
    let size = 0;
    for (const [i, seg] of segs.entries()) {
      if (seg.segNo !== i) throw new StrataError("corrupt_data", `Cannot import relation ${relNumber} in ${dir}: segment ${i} is missing`);
      const pages = await forEachPage(join(dir, seg.name), (p, page) => out.image(relBlockKey(tag, seg.segNo * RELSEG_SIZE_BLOCKS + p), page));
      if (i < segs.length - 1 && pages !== RELSEG_SIZE_BLOCKS) throw new StrataError("corrupt_data", `Cannot import ${join(dir, seg.name)}: a non-last segment has ${pages} blocks`);
      size = seg.segNo * RELSEG_SIZE_BLOCKS + pages;
    }
    await out.image(relSizeKey(tag), encodeRelSize(size));
    blocks += size;
  }
  await out.image(relDirKey(spcOid, dbOid), encodeRelDir(forks.keys()));
  return { forks: forks.size, blocks };
}

async function importSlru(out: ChunkedWriter, dir: string, kind: SlruKind): Promise<number> {
  const segs = new Set<number>();
  let pages = 0;
  for (const name of await listDir(dir)) {
    if (!SLRU_FILE.test(name)) continue;
    const seg = parseInt(name, 16);
    const st = await stat(join(dir, name));
    if (st.size > SLRU_SEGMENT_MAX_BYTES) throw new StrataError("corrupt_data", `Cannot import ${join(dir, name)}: ${st.size} bytes is more than one segment`);
    const n = await forEachPage(join(dir, name), (p, page) => out.image(slruBlockKey(kind, seg, p), page));
    await out.image(slruSegSizeKey(kind, seg), encodeSlruSegSize(n));
    segs.add(seg);
    pages += n;
  }
  await out.image(slruDirKey(kind), encodeSlruDir(segs));
  return pages;
}

/** Imports the data directory `dataDir` as images at `lsn` (see header). */
export async function importDatadir(dataDir: string, lsn: Lsn, writer: DatadirWriter, opts: ImportOptions = {}): Promise<ImportSummary> {
  const controlBytes = new Uint8Array(await readFile(join(dataDir, "global", "pg_control")));
  const cf = parseControlFile(controlBytes);
  if (cf.state !== DbState.shutdowned && !opts.allowUnclean) {
    throw new StrataError("invalid_argument", `Cannot import ${dataDir}: pg_control state is ${cf.state}, not "shut down" (stop the server cleanly first)`);
  }
  if (lsn < cf.checkPoint) {
    throw new StrataError("invalid_argument", `Cannot import ${dataDir} at ${formatLsn(lsn)}: below its checkpoint at ${formatLsn(cf.checkPoint)}`);
  }
  const out = new ChunkedWriter(writer, lsn, opts.signal);
  const dbs = new Set<bigint>();
  let relationForks = 0;
  let relationBlocks = 0;
  const addDb = async (dir: string, spc: number, db: number) => {
    const r = await importDbDir(out, dir, spc, db);
    dbs.add(dbDirEntryId(spc, db));
    relationForks += r.forks;
    relationBlocks += r.blocks;
  };

  await addDb(join(dataDir, "global"), GLOBAL_TABLESPACE_OID, 0);
  for (const name of await listDir(join(dataDir, "base"))) {
    if (/^\d+$/.test(name)) await addDb(join(dataDir, "base", name), DEFAULT_TABLESPACE_OID, Number(name));
  }
  for (const spcName of await listDir(join(dataDir, "pg_tblspc"))) {
    if (!/^\d+$/.test(spcName)) continue;
    const spcDir = join(dataDir, "pg_tblspc", spcName);
    for (const verDir of await listDir(spcDir)) {
      if (!verDir.startsWith("PG_15_")) continue;
      for (const db of await listDir(join(spcDir, verDir))) {
        if (/^\d+$/.test(db)) await addDb(join(spcDir, verDir, db), Number(spcName), Number(db));
      }
    }
  }
  await out.image(DBDIR_KEY, encodeDbDir(dbs));

  let slruPages = await importSlru(out, join(dataDir, "pg_xact"), SlruKind.Clog);
  slruPages += await importSlru(out, join(dataDir, "pg_multixact", "offsets"), SlruKind.MultiXactOffsets);
  slruPages += await importSlru(out, join(dataDir, "pg_multixact", "members"), SlruKind.MultiXactMembers);

  const xids = new Set<number>();
  for (const name of await listDir(join(dataDir, "pg_twophase"))) {
    if (!TWOPHASE_FILE.test(name)) continue;
    const xid = parseInt(name, 16);
    await out.image(twoPhaseFileKey(xid), new Uint8Array(await readFile(join(dataDir, "pg_twophase", name))));
    xids.add(xid);
  }
  await out.image(TWOPHASE_DIR_KEY, encodeTwoPhaseDir(xids));

  await out.image(CONTROLFILE_KEY, controlBytes);
  await out.image(CHECKPOINT_KEY, encodeCheckPoint(cf.checkPointCopy));
  await out.flush();
  writer.finishRecord(lsn, opts.prevRecordLsn ?? cf.checkPoint);
  return { controlFile: cf, databases: dbs.size, relationForks, relationBlocks, slruPages, twoPhaseFiles: xids.size };
}
