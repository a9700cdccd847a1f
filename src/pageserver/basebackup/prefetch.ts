/**
 * Ordered prefetch: run an async fetch for each item of a sequence with at
 * most `concurrency` fetches in flight, and yield the results in the
 * sequence's order.
 *
 * Why: a full backup reads every page through the timeline, and one page
 * read may wait on walredo (a helper process round trip) or a layer file.
 * Serial reads leave the redo pool and the disk idle; unbounded ones hold
 * the whole database in memory. A sliding window of `concurrency` pages
 * keeps both busy while the tar stays in file order.
 *
 * Memory bound: at most `concurrency` results are held (fetched but not yet
 * consumed). Cancellation: when the consumer stops early (`return` of the
 * generator, or an error), no new fetch starts; fetches already started
 * finish in the background and their results (or errors) are dropped, so
 * no rejection goes unhandled. The first fetch error is thrown to the
 * consumer at that item's position.
 */

type Settled<R> = { ok: true; value: R } | { ok: false; error: unknown };

export async function* orderedPrefetch<T, R>(items: Iterable<T>, fetch: (item: T) => Promise<R>, concurrency: number): AsyncGenerator<R, void, undefined> {
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error(`assertion failed: prefetch concurrency ${concurrency}`);
  const it = items[Symbol.iterator]();
  const window: Array<Promise<Settled<R>>> = [];
  let exhausted = false;
  const fill = () => {
    while (!exhausted && window.length < concurrency) {
      const next = it.next();
      if (next.done) {
        exhausted = true;
        break;
      }
      window.push(
        fetch(next.value).then(
          (value): Settled<R> => ({ ok: true, value }),
          (error: unknown): Settled<R> => ({ ok: false, error }),
        ),
      );
    }
  };
  fill();
  while (window.length > 0) {
    const r = await window.shift()!;
    if (!r.ok) throw r.error;
    fill();
    yield r.value;
  }
}
