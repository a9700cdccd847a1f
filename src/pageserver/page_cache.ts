/**
 * The materialized page cache: pages that GetPage has already reconstructed.
 *
 * Reconstruction's expensive step is replay (a round trip to a redo helper
 * per chain); collecting the versions from layers is comparatively cheap.
 * So the cache is keyed by the **version** a page materializes, not by the
 * request LSN: an entry (timeline, key, v) holds the page as of LSN v, where
 * v is the LSN of a version (image or WAL record) actually stored for the
 * key. The page at any request LSN L equals the page at the newest version
 * v <= L, so after collecting the versions for L the read path looks up
 * versions newest first and replays only the records above the newest cached
 * one — a request at a later LSN with no newer versions is a full hit, and a
 * page with one new record costs one record of replay, not the whole chain.
 *
 * Invariant: an entry is the exact page at its version, pd_lsn included
 * (records stamp pages; request LSNs never do), so serving it for any L in
 * [v, next version) is byte-exact. Entries are never modified; callers get
 * the stored buffer and must copy before changing it.
 *
 * Bounded by `maxPages` (LRU: a JavaScript Map iterates in insertion order;
 * a hit is re-inserted at the end, eviction takes the first entry). A
 * timeline that is deleted or reloaded drops its entries (`dropTimeline`).
 */
import type { Lsn } from "../lib/lsn.js";
import type { Key } from "./key.js";

export interface PageCacheStats {
  hits: number;
  misses: number;
  size: number;
  maxPages: number;
}

export class MaterializedPageCache {
  private readonly pages = new Map<string, Uint8Array>();
  hits = 0;
  misses = 0;

  constructor(private capacity: number) {
    MaterializedPageCache.checkCapacity(capacity);
  }

  private static checkCapacity(n: number): void {
    if (!Number.isInteger(n) || n < 0) throw new RangeError(`MaterializedPageCache: maxPages ${n} must be a non-negative integer`);
  }

  get maxPages(): number {
    return this.capacity;
  }

  /** Changes the capacity (0 turns caching off), evicting the oldest entries as needed. */
  setCapacity(maxPages: number): void {
    MaterializedPageCache.checkCapacity(maxPages);
    this.capacity = maxPages;
    this.evict();
  }

  private evict(): void {
    while (this.pages.size > this.capacity) {
      const oldest = this.pages.keys().next();
      if (oldest.done === true) break;
      this.pages.delete(oldest.value);
    }
  }

  private static id(timelineId: string, key: Key, lsn: Lsn): string {
    return `${timelineId}/${key.toString(16)}/${lsn.toString(16)}`;
  }

  get size(): number {
    return this.pages.size;
  }

  /** The page of `key` as of version `lsn`, counting a hit or a miss. */
  get(timelineId: string, key: Key, lsn: Lsn): Uint8Array | undefined {
    const id = MaterializedPageCache.id(timelineId, key, lsn);
    const page = this.pages.get(id);
    if (page === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.pages.delete(id);
    this.pages.set(id, page);
    return page;
  }

  /** Like get, without touching the statistics or the LRU order (probing older versions). */
  peek(timelineId: string, key: Key, lsn: Lsn): Uint8Array | undefined {
    return this.pages.get(MaterializedPageCache.id(timelineId, key, lsn));
  }

  put(timelineId: string, key: Key, lsn: Lsn, page: Uint8Array): void {
    if (this.maxPages === 0) return;
    const id = MaterializedPageCache.id(timelineId, key, lsn);
    this.pages.delete(id);
    this.pages.set(id, page);
    this.evict();
  }

  /** Forgets every page of a timeline (deleted, reloaded, or its layers replaced after corruption). */
  dropTimeline(timelineId: string): void {
    const prefix = `${timelineId}/`;
    for (const id of [...this.pages.keys()]) if (id.startsWith(prefix)) this.pages.delete(id);
  }

  stats(): PageCacheStats {
    return { hits: this.hits, misses: this.misses, size: this.pages.size, maxPages: this.maxPages };
  }
}
