/**
 * A bounded LRU cache of verified index pages, shared by layer file readers.
 *
 * Index lookups in a layer file read one page per B-tree level; the upper
 * levels of recently used layers are read again and again, so readers keep
 * pages here after their checksum has passed. Only verified pages enter the
 * cache, so a cached page is trusted without re-checking.
 *
 * Entries are keyed by (reader id, file offset). Every reader instance gets a
 * fresh id, so a file that is replaced or reopened never sees stale pages;
 * its old entries simply age out. Memory is bounded by `maxPages` pages.
 * A JavaScript Map iterates in insertion order, which makes it an LRU list:
 * a hit is deleted and re-inserted at the end, eviction takes the first key.
 */

/**
 * Default capacity: 2048 pages of 8 KiB = 16 MiB, enough to keep the root and
 * second-level pages of ~10k layers resident (one or two pages each) while
 * staying a small part of a pageserver's memory.
 */
export const DEFAULT_INDEX_PAGE_CACHE_PAGES = 2048;

export class IndexPageCache {
  private readonly pages = new Map<string, Buffer>();
  hits = 0;
  misses = 0;

  constructor(readonly maxPages: number = DEFAULT_INDEX_PAGE_CACHE_PAGES) {
    if (!Number.isInteger(maxPages) || maxPages < 1) throw new RangeError(`IndexPageCache: maxPages ${maxPages} must be a positive integer`);
  }

  get size(): number {
    return this.pages.size;
  }

  get(readerId: number, offset: number): Buffer | undefined {
    const k = `${readerId}:${offset}`;
    const page = this.pages.get(k);
    if (page === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.pages.delete(k);
    this.pages.set(k, page);
    return page;
  }

  put(readerId: number, offset: number, page: Buffer): void {
    const k = `${readerId}:${offset}`;
    this.pages.delete(k);
    this.pages.set(k, page);
    while (this.pages.size > this.maxPages) {
      const oldest = this.pages.keys().next();
      if (oldest.done === true) break;
      this.pages.delete(oldest.value);
    }
  }
}

/** The process-wide cache readers use unless given another one. */
export const sharedIndexPageCache = new IndexPageCache();

let nextReaderId = 1;
/** A fresh id for a reader instance (cache namespace). */
export function allocateReaderId(): number {
  return nextReaderId++;
}
