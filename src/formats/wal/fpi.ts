/**
 * Full-page-image restore: turns a BlockImage as stored in a WAL record
 * (possibly compressed, with the page's free-space "hole" cut out) back into
 * the 8 KiB page, exactly as PostgreSQL 15's RestoreBlockImage does
 * (src/backend/access/transam/xlogreader.c).
 *
 * Where it sits: the WAL decoder (xlog_record.ts) produces DecodedRecord /
 * BlockImage views; ingest calls restoreFullPageImage for images it stores as
 * page versions (FPI records, init forks, and any block image marked
 * BKPIMAGE_APPLY). The walredo process receives raw records and restores
 * images itself, so the two paths must agree byte for byte — the integration
 * test compares this output with the live server's page.
 *
 * Checks (each failure is StrataError("corrupt_data") naming the LSN and
 * block when the caller supplies them):
 *   - the cross-checks DecodeXLogRecord makes on bimg_info / hole / length:
 *     HAS_HOLE implies 0 < hole offset, 0 < hole length, stored length <
 *     BLCKSZ; no HAS_HOLE implies offset = length = 0; a compressed image is
 *     shorter than BLCKSZ; an uncompressed image is exactly BLCKSZ - hole;
 *   - the hole lies inside the page (PostgreSQL trusts this for compressed
 *     images and would overrun its buffer; we refuse);
 *   - the compression method in bimg_info is known and agrees with the
 *     decoded `compression` field;
 *   - decompression yields exactly BLCKSZ - hole length bytes. For pglz this
 *     is PostgreSQL's own check (check_complete); for lz4 and zstd
 *     PostgreSQL only checks for a decoder error, and a short image would
 *     leave stale bytes in its buffer — we treat it as corruption.
 *
 * The image is a copy of the buffer *after* the record's change was applied
 * (XLogInsert assembles the record while the modified buffer is still
 * locked), but before PageSetLSN: its pd_lsn is the page's previous LSN.
 * Redo (XLogReadBufferForRedoExtended) restores the image and then stamps
 * pd_lsn with the record's end (EndRecPtr, the MAXALIGNed end), unless the
 * page is new (all zero header). `restoreBlockImageForRedo` does both steps
 * and is what a stored page version must hold; it equals the server's
 * buffer right after the record (test/fpi.test.ts proves it on live pages).
 *
 * zstd images are single zstd frames (ZSTD_compress output). We validate
 * the frame header and walk its block headers ourselves before handing the
 * frame to `fzstd`, so a corrupt header cannot make the library allocate a
 * huge window or read a second frame.
 */
import { Decompress as ZstdDecompress } from "fzstd";
import { StrataError } from "../../lib/errors.js";
import { formatLsn, lsn, type Lsn } from "../../lib/lsn.js";
import { pageIsNew, setPageLsn } from "../page.js";
import type { BlockImage, DecodedRecord, FpiCompression } from "./decoded_record.js";
import { lz4DecompressBlock } from "./lz4.js";
import { pglzDecompress } from "./pglz.js";

/** BLCKSZ: relation page size of the PostgreSQL builds strata supports. */
export const BLCKSZ = 8192;

export const BKPIMAGE_HAS_HOLE = 0x01;
export const BKPIMAGE_APPLY = 0x02;
export const BKPIMAGE_COMPRESS_PGLZ = 0x04;
export const BKPIMAGE_COMPRESS_LZ4 = 0x08;
export const BKPIMAGE_COMPRESS_ZSTD = 0x10;

/**
 * Largest zstd window we accept. ZSTD_compress on an 8 KiB page emits a
 * single-segment frame (window = content size); anything claiming more than
 * this is not a page image and must not make the decoder allocate it.
 */
const ZSTD_MAX_WINDOW_BYTES = 8 * 1024 * 1024;
const ZSTD_MAGIC = 0xfd2fb528;
/** Block_Maximum_Size of the zstd format. */
const ZSTD_MAX_BLOCK_BYTES = 128 * 1024;

/** Where an image came from, for error messages. */
export interface ImageSource {
  lsn?: Lsn;
  blockId?: number;
}

function where(src: ImageSource | undefined): string {
  const parts: string[] = [];
  if (src?.lsn !== undefined) parts.push(`at ${formatLsn(src.lsn)}`);
  if (src?.blockId !== undefined) parts.push(`block ${src.blockId}`);
  return parts.length > 0 ? ` ${parts.join(", ")}` : "";
}

/** The compression method bimg_info selects, in RestoreBlockImage's order of tests. */
export function compressionOf(bimgInfo: number): FpiCompression {
  if (bimgInfo & BKPIMAGE_COMPRESS_PGLZ) return "pglz";
  if (bimgInfo & BKPIMAGE_COMPRESS_LZ4) return "lz4";
  if (bimgInfo & BKPIMAGE_COMPRESS_ZSTD) return "zstd";
  return "none";
}

/**
 * Restores the 8192-byte page from a block image: decompresses it if needed
 * and re-inserts the hole as zeros. Never returns a view of the record.
 * With `out` (8192 bytes, e.g. a scratch page reused by a caller that copies
 * the result at once) the page is written there and `out` is returned.
 */
export function restoreFullPageImage(image: BlockImage, source?: ImageSource, out?: Uint8Array): Uint8Array {
  const at = where(source);
  const fail = (detail: string, cause?: unknown): StrataError =>
    new StrataError("corrupt_data", `could not restore image${at}: ${detail}`, cause === undefined ? undefined : { cause });

  const { bytes, holeOffset, holeLength, bimgInfo } = image;
  const hasHole = (bimgInfo & BKPIMAGE_HAS_HOLE) !== 0;
  const compression = compressionOf(bimgInfo);
  const compressed = compression !== "none";
  const storedLength = bytes.length;

  if (image.compression !== compression) {
    throw fail(`compression "${image.compression}" disagrees with bimg_info 0x${bimgInfo.toString(16)}`);
  }
  if (!Number.isInteger(holeOffset) || !Number.isInteger(holeLength) || holeOffset < 0 || holeLength < 0) {
    throw fail(`invalid hole offset ${holeOffset} length ${holeLength}`);
  }
  if (hasHole && (holeOffset === 0 || holeLength === 0 || storedLength === BLCKSZ)) {
    throw fail(`BKPIMAGE_HAS_HOLE set, but hole offset ${holeOffset} length ${holeLength} block image length ${storedLength}`);
  }
  if (!hasHole && (holeOffset !== 0 || holeLength !== 0)) {
    throw fail(`BKPIMAGE_HAS_HOLE not set, but hole offset ${holeOffset} length ${holeLength}`);
  }
  if (holeOffset + holeLength > BLCKSZ) {
    throw fail(`hole offset ${holeOffset} + length ${holeLength} exceeds the ${BLCKSZ}-byte page`);
  }
  if (compressed && storedLength >= BLCKSZ) {
    throw fail(`BKPIMAGE_COMPRESSED set, but block image length ${storedLength}`);
  }
  if (!compressed && storedLength !== BLCKSZ - holeLength) {
    throw fail(
      hasHole
        ? `uncompressed image is ${storedLength} bytes, expected ${BLCKSZ} - hole length ${holeLength} = ${BLCKSZ - holeLength}`
        : `neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block image length is ${storedLength}`,
    );
  }

  const expected = BLCKSZ - holeLength;
  let body: Uint8Array;
  if (!compressed) {
    body = bytes;
  } else {
    try {
      switch (compression) {
        case "pglz":
          body = pglzDecompress(bytes, expected, true);
          break;
        case "lz4":
          body = lz4DecompressBlock(bytes, expected);
          break;
        case "zstd":
          body = zstdDecompressFrame(bytes, expected);
          break;
      }
    } catch (e) {
      const detail = e instanceof Error ? e.message : String(e);
      throw fail(`could not decompress ${compression} image: ${detail}`, e);
    }
    if (body.length !== expected) {
      throw fail(`${compression} image decompressed to ${body.length} bytes, expected ${BLCKSZ} - hole length ${holeLength} = ${expected}`);
    }
  }

  if (out !== undefined && out.length !== BLCKSZ) throw new StrataError("invalid_argument", `page buffer of ${out.length} bytes, expected ${BLCKSZ}`);
  const page = out ?? new Uint8Array(BLCKSZ);
  if (holeLength === 0) {
    page.set(body);
  } else {
    page.set(body.subarray(0, holeOffset), 0);
    if (out !== undefined) page.fill(0, holeOffset, holeOffset + holeLength);
    page.set(body.subarray(holeOffset), holeOffset + holeLength);
  }
  return page;
}

/**
 * RestoreBlockImage's entry point: restores the image of block reference
 * `blockId` of `record`, failing if the record has no such block or the block
 * carries no image.
 */
export function restoreBlockImage(record: Pick<DecodedRecord, "lsn" | "blocks">, blockId: number, out?: Uint8Array): Uint8Array {
  const block = record.blocks.find((b) => b.id === blockId);
  if (block === undefined) {
    throw new StrataError(
      "invalid_argument",
      `could not restore image at ${formatLsn(record.lsn)} with invalid block ${blockId} specified`,
    );
  }
  if (block.image === undefined) {
    throw new StrataError(
      "invalid_argument",
      `could not restore image at ${formatLsn(record.lsn)} with invalid state, block ${blockId}`,
    );
  }
  return restoreFullPageImage(block.image, { lsn: record.lsn, blockId }, out);
}

/** MAXALIGN of the WAL: record ends as redo sees them (EndRecPtr) are multiples of it. */
const WAL_MAXALIGN = 8n;

/**
 * The LSN redo stamps on pages a record touches: EndRecPtr, which xlogreader
 * computes as the record's end rounded up to MAXALIGN (page headers inside
 * the record included, and page header sizes are themselves MAXALIGNed).
 */
export function redoPageLsn(record: Pick<DecodedRecord, "endLsn">): Lsn {
  return lsn(((record.endLsn + WAL_MAXALIGN - 1n) / WAL_MAXALIGN) * WAL_MAXALIGN);
}

/**
 * The page as redo leaves it after restoring block `blockId`'s image:
 * restoreBlockImage, then pd_lsn = redoPageLsn(record) unless PageIsNew.
 */
export function restoreBlockImageForRedo(record: Pick<DecodedRecord, "lsn" | "endLsn" | "blocks">, blockId: number, out?: Uint8Array): Uint8Array {
  const page = restoreBlockImage(record, blockId, out);
  if (!pageIsNew(page)) setPageLsn(page, redoPageLsn(record));
  return page;
}

/**
 * Decompresses one zstd frame that must hold exactly `expected` bytes.
 * Validates the frame header and block framing first (see module header).
 */
export function zstdDecompressFrame(frame: Uint8Array, expected: number): Uint8Array {
  const bad = (detail: string): StrataError => new StrataError("corrupt_data", `zstd: ${detail}`);
  const n = frame.length;
  if (n < 6) throw bad(`frame of ${n} bytes is shorter than a frame header`);
  const magic = ((frame[0] as number) | ((frame[1] as number) << 8) | ((frame[2] as number) << 16) | ((frame[3] as number) << 24)) >>> 0;
  if (magic !== ZSTD_MAGIC) throw bad(`bad frame magic 0x${magic.toString(16)}`);
  const fhd = frame[4] as number;
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const checksumFlag = (fhd >> 2) & 1;
  const dictFlag = fhd & 3;
  if (fhd & 0x08) throw bad("reserved bit set in frame header descriptor");
  if (dictFlag !== 0) throw bad("frame needs a dictionary");
  let p = 5;
  let windowBytes = 0;
  if (!singleSegment) {
    const wd = frame[p++] as number;
    const base = 2 ** (10 + (wd >> 3));
    windowBytes = base + (base / 8) * (wd & 7);
  }
  const fcsBytes = fcsFlag === 0 ? singleSegment : 1 << fcsFlag;
  if (fcsBytes === 0) throw bad("frame does not record its content size");
  if (p + fcsBytes > n) throw bad("frame header cut off");
  let contentSize = 0;
  for (let i = fcsBytes - 1; i >= 0; i--) contentSize = contentSize * 256 + (frame[p + i] as number);
  if (fcsBytes === 2) contentSize += 256;
  p += fcsBytes;
  if (singleSegment) windowBytes = contentSize;
  if (windowBytes > ZSTD_MAX_WINDOW_BYTES) throw bad(`window of ${windowBytes} bytes exceeds ${ZSTD_MAX_WINDOW_BYTES}`);
  if (contentSize !== expected) throw bad(`frame content size ${contentSize}, expected ${expected}`);

  // Walk the blocks to find the frame's end: it must be the end of the input.
  for (;;) {
    if (p + 3 > n) throw bad(`block header cut off at offset ${p}`);
    const hdr = (frame[p] as number) | ((frame[p + 1] as number) << 8) | ((frame[p + 2] as number) << 16);
    const last = hdr & 1;
    const type = (hdr >> 1) & 3;
    const size = hdr >>> 3;
    p += 3;
    if (type === 3) throw bad(`reserved block type at offset ${p - 3}`);
    if (size > ZSTD_MAX_BLOCK_BYTES) throw bad(`block of ${size} bytes at offset ${p - 3} exceeds ${ZSTD_MAX_BLOCK_BYTES}`);
    p += type === 1 ? 1 : size;
    if (p > n) throw bad(`block at offset ${p} runs past the end of the ${n}-byte frame`);
    if (last) break;
  }
  if (checksumFlag) p += 4;
  if (p !== n) throw bad(`frame ends at offset ${p} but the image is ${n} bytes`);

  const out = new Uint8Array(expected);
  let produced = 0;
  let finished = false;
  const d = new ZstdDecompress((chunk, final) => {
    if (chunk.length > expected - produced) throw bad(`decompressed data exceeds ${expected} bytes`);
    out.set(chunk, produced);
    produced += chunk.length;
    if (final) finished = true;
  });
  try {
    d.push(frame, true);
  } catch (e) {
    if (e instanceof StrataError) throw e;
    throw new StrataError("corrupt_data", `zstd: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  if (!finished) throw bad("frame did not end");
  if (produced !== expected) throw bad(`frame decompressed to ${produced} bytes, expected ${expected}`);
  return out;
}
