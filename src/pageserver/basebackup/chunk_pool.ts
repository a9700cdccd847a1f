/**
 * Recycled output buffers for a backup's page runs.
 *
 * Why: every page run of a fullbackup is a multi-MiB buffer that goes to
 * the socket. A fresh buffer of that size is fresh memory, and touching it
 * (page faults, the kernel zeroing pages) cost several times more than
 * reading and copying the pages themselves on the 2-core test machine
 * (~6 s per GiB against ~0.1 s for reused memory). So runs are written into
 * buffers lent by this pool, and the final consumer — the page service,
 * once the socket has taken a chunk (its write callback) — gives them back.
 *
 * Contract: `acquire(n)` lends a Buffer of n bytes (a view of a pooled
 * buffer of `chunkBytes`); `release(view)` returns it and is a no-op for
 * anything the pool did not lend (so consumers can release every chunk
 * they see). A lent buffer that is never released is simply garbage
 * collected; the pool then allocates anew. Released buffers must not be
 * used by the releaser afterwards. Idle buffers are bounded by `maxIdle`.
 */
import { assert } from "../../lib/errors.js";

export class ChunkPool {
  private readonly idle: Buffer[] = [];
  /** Lent views -> their pooled buffer. */
  private readonly lent = new Map<Uint8Array, Buffer>();

  constructor(
    readonly chunkBytes: number,
    private readonly maxIdle: number,
  ) {
    assert(Number.isInteger(chunkBytes) && chunkBytes > 0 && Number.isInteger(maxIdle) && maxIdle >= 0, "chunk pool sizes");
  }

  /** Buffers allocated so far (a lend that found no idle buffer): a backup that keeps allocating has too few idle buffers for what its consumer holds. */
  allocated = 0;

  /** Buffers lent and not yet returned. */
  get outstanding(): number {
    return this.lent.size;
  }

  acquire(bytes: number): Buffer {
    assert(bytes > 0 && bytes <= this.chunkBytes, `chunk of ${bytes} bytes from a pool of ${this.chunkBytes}-byte buffers`);
    let base = this.idle.pop();
    if (base === undefined) {
      base = Buffer.allocUnsafeSlow(this.chunkBytes); // own memory, never a shared slab
      this.allocated++;
    }
    const view = base.subarray(0, bytes);
    this.lent.set(view, base);
    return view;
  }

  release(view: Uint8Array): void {
    const base = this.lent.get(view);
    if (base === undefined) return;
    this.lent.delete(view);
    if (this.idle.length < this.maxIdle) this.idle.push(base);
  }
}
