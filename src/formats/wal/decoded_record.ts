/**
 * The shape of one decoded WAL record — the contract between the WAL decoder
 * (xlog_record.ts, wal_stream_decoder.ts), the code that interprets record
 * bodies (rmgr parsers, full-page-image restore), the walredo client and the
 * pageserver's ingest.
 *
 * Mirrors PostgreSQL 15's DecodedXLogRecord (src/include/access/xlogreader.h)
 * and the on-disk layout in xlogrecord.h. All byte fields are views
 * (subarrays) into `raw`, so decoding copies nothing; a consumer that keeps a
 * record beyond the decoder's next call must keep `raw` (the decoder never
 * reuses the buffer it hands out).
 */
import type { Lsn } from "../../lib/lsn.js";

/** Compression method of a full-page image (bimg_info bits in PG 15). */
export type FpiCompression = "none" | "pglz" | "lz4" | "zstd";

/** A full-page image as stored in the record (possibly compressed, hole removed). */
export interface BlockImage {
  /** Bytes as stored: compressed if `compression !== "none"`, else the page minus its hole. */
  readonly bytes: Uint8Array;
  /** Offset of the hole (free space) that was cut out of the page, 0 if none. */
  readonly holeOffset: number;
  /** Length of the hole in bytes, 0 if none. */
  readonly holeLength: number;
  /** Raw bimg_info flags byte. */
  readonly bimgInfo: number;
  /** BKPIMAGE_APPLY: redo must restore this image (else it is only for wal_consistency_checking). */
  readonly apply: boolean;
  readonly compression: FpiCompression;
}

/** RelFileNode: tablespace, database and relation file number. */
export interface RelFileNode {
  readonly spcOid: number;
  readonly dbOid: number;
  readonly relNumber: number;
}

/** One block reference (XLogRecordBlockHeader and what follows it). */
export interface BlockRef {
  /** Block reference id (0..XLR_MAX_BLOCK_ID) as the record numbers it. */
  readonly id: number;
  /** Fork number: 0 main, 1 fsm, 2 visibility map, 3 init. */
  readonly forkNum: number;
  /** Raw fork_flags byte. */
  readonly flags: number;
  readonly rel: RelFileNode;
  readonly blockNumber: number;
  /** BKPBLOCK_WILL_INIT: redo initializes the page; no earlier version is needed. */
  readonly willInit: boolean;
  /** Present when the block carries a full-page image (BKPBLOCK_HAS_IMAGE). */
  readonly image?: BlockImage;
  /** Per-block data (BKPBLOCK_HAS_DATA), else undefined. */
  readonly data?: Uint8Array;
}

export interface DecodedRecord {
  /** LSN where the record starts (its XLogRecord header). */
  readonly lsn: Lsn;
  /** LSN just past the record's last byte (not MAXALIGNed; page headers in between are included). */
  readonly endLsn: Lsn;
  /** xl_tot_len: total record length in bytes, header included. */
  readonly totalLength: number;
  readonly xid: number;
  readonly prevLsn: Lsn;
  /** xl_info: the high four bits select the record type within the rmgr. */
  readonly info: number;
  readonly rmid: number;
  readonly crc: number;
  readonly blocks: readonly BlockRef[];
  readonly mainData: Uint8Array;
  /** Replication origin (XLR_BLOCK_ID_ORIGIN), if present. */
  readonly origin?: number;
  /** Top-level transaction id (XLR_BLOCK_ID_TOPLEVEL_XID), if present. */
  readonly toplevelXid?: number;
  /** The whole record as contiguous bytes (page headers removed): what walredo receives. */
  readonly raw: Uint8Array;
}
