/**
 * The timeline metadata file: `tenants/<tenant>/timelines/<timeline>/metadata`.
 *
 * What a timeline must know at start-up that its layer files do not say:
 * where its history begins (ancestor timeline and ancestor LSN, for a
 * branch), how far its local layer files are complete (disk_consistent_lsn —
 * WAL ingest resumes there after a crash), the prev-record LSN at that point
 * (the WAL decoder needs it to check the first record's xl_prev), the GC
 * cutoff (reads below it are refused), the initdb LSN and the PostgreSQL
 * major version.
 *
 * Format (all integers big-endian), exactly METADATA_FILE_BYTES long:
 *
 *   0   u32  magic "STMD" (0x53544D44)
 *   4   u16  format version (METADATA_FORMAT_VERSION)
 *   6   u16  flags: bit 0 = has ancestor; other bits zero
 *   8   u64  disk_consistent_lsn
 *   16  u64  prev_record_lsn (0 = unknown)
 *   24  16B  ancestor timeline id (zero when no ancestor)
 *   40  u64  ancestor_lsn (0 when no ancestor)
 *   48  u64  latest_gc_cutoff_lsn
 *   56  u64  initdb_lsn
 *   64  u32  pg_version (major, e.g. 15)
 *   68  ...  zero padding
 *   508 u32  CRC32C of bytes [0, 508)
 *
 * A fixed size with a trailing CRC makes a torn or bit-rotten file
 * detectable (corrupt_data, the timeline is then Broken), and a version field
 * lets a later format be read side by side.
 *
 * Crash safety: `writeMetadata` writes `metadata.<random>.tmp`, fsyncs it,
 * renames it over `metadata`, and fsyncs the directory. A crash leaves either
 * the old or the new file, plus maybe a `.tmp` the timeline removes at load.
 */
import { randomBytes } from "node:crypto";
import { open, readFile, rename, unlink } from "node:fs/promises";
import { join } from "node:path";
import { crc32cRange } from "../formats/crc32c.js";
import { StrataError } from "../lib/errors.js";
import { timelineIdFromBytes, timelineIdToBytes, type TimelineId } from "../lib/id.js";
import { formatLsn, INVALID_LSN, type Lsn } from "../lib/lsn.js";
import { fsyncDir } from "./layers/layer_file.js";

export const METADATA_FILE_NAME = "metadata";
/** 512 bytes: one disk sector, so the write is also as atomic as the device makes it. */
export const METADATA_FILE_BYTES = 512;
export const METADATA_FORMAT_VERSION = 1;
const MAGIC = 0x53544d44;
const CRC_OFFSET = METADATA_FILE_BYTES - 4;
const FLAG_HAS_ANCESTOR = 0x1;

export interface TimelineMetadata {
  readonly diskConsistentLsn: Lsn;
  /** Start LSN of the record that ends at diskConsistentLsn, when known. */
  readonly prevRecordLsn: Lsn | undefined;
  readonly ancestorTimelineId: TimelineId | undefined;
  readonly ancestorLsn: Lsn;
  readonly latestGcCutoffLsn: Lsn;
  readonly initdbLsn: Lsn;
  readonly pgVersion: number;
}

export function encodeMetadata(m: TimelineMetadata): Buffer {
  const b = Buffer.alloc(METADATA_FILE_BYTES);
  b.writeUInt32BE(MAGIC, 0);
  b.writeUInt16BE(METADATA_FORMAT_VERSION, 4);
  b.writeUInt16BE(m.ancestorTimelineId === undefined ? 0 : FLAG_HAS_ANCESTOR, 6);
  b.writeBigUInt64BE(m.diskConsistentLsn, 8);
  b.writeBigUInt64BE(m.prevRecordLsn ?? INVALID_LSN, 16);
  if (m.ancestorTimelineId !== undefined) b.set(timelineIdToBytes(m.ancestorTimelineId), 24);
  b.writeBigUInt64BE(m.ancestorTimelineId === undefined ? 0n : m.ancestorLsn, 40);
  b.writeBigUInt64BE(m.latestGcCutoffLsn, 48);
  b.writeBigUInt64BE(m.initdbLsn, 56);
  b.writeUInt32BE(m.pgVersion, 64);
  b.writeUInt32BE(crc32cRange(b, 0, CRC_OFFSET), CRC_OFFSET);
  return b;
}

/** Parses a metadata file's bytes; `where` names the file in errors. */
export function decodeMetadata(bytes: Uint8Array, where = METADATA_FILE_NAME): TimelineMetadata {
  if (bytes.length !== METADATA_FILE_BYTES) {
    throw new StrataError("corrupt_data", `Metadata file ${where}: ${bytes.length} bytes, expected ${METADATA_FILE_BYTES}`);
  }
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  const magic = b.readUInt32BE(0);
  if (magic !== MAGIC) throw new StrataError("corrupt_data", `Metadata file ${where}: bad magic 0x${magic.toString(16)} at offset 0`);
  const stored = b.readUInt32BE(CRC_OFFSET);
  const computed = crc32cRange(b, 0, CRC_OFFSET);
  if (stored !== computed) {
    throw new StrataError("corrupt_data", `Metadata file ${where}: CRC mismatch at offset ${CRC_OFFSET} (stored 0x${stored.toString(16)}, computed 0x${computed.toString(16)})`);
  }
  const version = b.readUInt16BE(4);
  if (version !== METADATA_FORMAT_VERSION) {
    throw new StrataError("unsupported", `Metadata file ${where}: format version ${version} at offset 4, this build reads ${METADATA_FORMAT_VERSION}`);
  }
  const flags = b.readUInt16BE(6);
  if ((flags & ~FLAG_HAS_ANCESTOR) !== 0) throw new StrataError("corrupt_data", `Metadata file ${where}: unknown flags 0x${flags.toString(16)} at offset 6`);
  const hasAncestor = (flags & FLAG_HAS_ANCESTOR) !== 0;
  const prev = b.readBigUInt64BE(16) as Lsn;
  const m: TimelineMetadata = {
    diskConsistentLsn: b.readBigUInt64BE(8) as Lsn,
    prevRecordLsn: prev === INVALID_LSN ? undefined : prev,
    ancestorTimelineId: hasAncestor ? timelineIdFromBytes(b.subarray(24, 40)) : undefined,
    ancestorLsn: b.readBigUInt64BE(40) as Lsn,
    latestGcCutoffLsn: b.readBigUInt64BE(48) as Lsn,
    initdbLsn: b.readBigUInt64BE(56) as Lsn,
    pgVersion: b.readUInt32BE(64),
  };
  if (hasAncestor && m.diskConsistentLsn < m.ancestorLsn) {
    throw new StrataError(
      "corrupt_data",
      `Metadata file ${where}: disk_consistent_lsn ${formatLsn(m.diskConsistentLsn)} is below the ancestor LSN ${formatLsn(m.ancestorLsn)}`,
    );
  }
  return m;
}

/** Reads and verifies `<dir>/metadata`. A missing file is not_found; a damaged one corrupt_data. */
export async function readMetadata(dir: string): Promise<TimelineMetadata> {
  const path = join(dir, METADATA_FILE_NAME);
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new StrataError(code === "ENOENT" ? "not_found" : "io_error", `Cannot read metadata file ${path}: ${(e as Error).message}`, { cause: e });
  }
  return decodeMetadata(bytes, path);
}

/** Durably replaces `<dir>/metadata` (temp file, fsync, rename, directory fsync). */
export async function writeMetadata(dir: string, m: TimelineMetadata): Promise<void> {
  const final = join(dir, METADATA_FILE_NAME);
  const tmp = join(dir, `${METADATA_FILE_NAME}.${randomBytes(4).toString("hex")}.tmp`);
  const bytes = encodeMetadata(m);
  try {
    const fh = await open(tmp, "wx");
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, final);
    await fsyncDir(dir);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw new StrataError("io_error", `Cannot write metadata file ${final}: ${(e as Error).message}`, { cause: e });
  }
}
