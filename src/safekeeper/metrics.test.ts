// FlushLatencyHistogram renders exactly what prom-client's Histogram renders for the same observations.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createRegistry, Histogram, LATENCY_BUCKETS_S } from "../lib/metrics.js";
import { FlushLatencyHistogram, SafekeeperMetrics } from "./metrics.js";

const NAME = "strata_safekeeper_wal_flush_seconds";

function seriesOf(text: string): string {
  return text
    .split("\n")
    .filter((l) => l.includes(NAME))
    .join("\n");
}

test("the flush latency histogram scrapes like prom-client's Histogram (buckets, +Inf, sum, count, edges)", async () => {
  const ours = createRegistry();
  const m = new SafekeeperMetrics(ours);
  const ref = createRegistry();
  const h = new Histogram({ name: NAME, help: "Latency of one WAL flush (fsync of the partial segment)", buckets: LATENCY_BUCKETS_S, registers: [ref] });
  assert.equal(seriesOf(await ours.metrics()), seriesOf(await ref.metrics()), "empty");
  // Below the first bound, exactly on bounds, between, above the last one.
  const samples = [0, 0.00001, ...LATENCY_BUCKETS_S, 0.0003, 0.004, 0.7, 11, 1e6];
  for (const s of samples) {
    m.fsyncSeconds.observe(s);
    h.observe(s);
  }
  assert.equal(seriesOf(await ours.metrics()), seriesOf(await ref.metrics()));
  assert.match(await ours.metrics(), new RegExp(`${NAME}_count ${samples.length}\\n`));
  // After a reset every series reads zero again (prom-client's label-less Histogram drops them instead).
  m.fsyncSeconds.reset();
  assert.match(await ours.metrics(), new RegExp(`${NAME}_bucket\\{le="\\+Inf"\\} 0\\n${NAME}_sum 0\\n${NAME}_count 0`));
});

test("the flush latency histogram refuses buckets that do not increase", () => {
  assert.throws(() => new FlushLatencyHistogram("x_seconds", "x", [0.1, 0.1]), /must increase/);
  assert.throws(() => new FlushLatencyHistogram("x_seconds", "x", [0.2, 0.1]), /must increase/);
});
