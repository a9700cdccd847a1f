/**
 * SLRU ("simple least-recently-used") file geometry shared by clog and
 * multixact (src/include/access/slru.h, src/backend/access/transam/slru.c).
 *
 * An SLRU is an array of 8 KiB pages stored in segment files of
 * SLRU_PAGES_PER_SEGMENT pages, named by the segment number in at least four
 * upper-case hex digits (`pg_xact/0000`, `pg_multixact/members/001A`).
 * Page numbers are non-negative 32-bit ints; the per-SLRU modules map XIDs /
 * multixact ids / member offsets onto (page, byte) positions.
 */

/** BLCKSZ: SLRU pages are the same size as relation pages. */
export const SLRU_PAGE_SIZE_BYTES = 8192;
/** SLRU_PAGES_PER_SEGMENT: pages in one segment file. */
export const SLRU_PAGES_PER_SEGMENT = 32;

/** Segment number holding `pageno`. */
export function slruSegmentOf(pageno: number): number {
  return Math.floor(pageno / SLRU_PAGES_PER_SEGMENT);
}

/** Page index within its segment file. */
export function slruPageInSegment(pageno: number): number {
  return pageno % SLRU_PAGES_PER_SEGMENT;
}

/** Segment file name as SlruFileName prints it ("%04X"). */
export function slruSegmentFileName(segno: number): string {
  return segno.toString(16).toUpperCase().padStart(4, "0");
}
