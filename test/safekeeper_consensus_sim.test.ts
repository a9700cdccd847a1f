/**
 * Deterministic simulation of multi-safekeeper consensus over real storage
 * code (src/safekeeper/consensus/simulation.ts): hundreds of seeds of 3 and
 * 5 safekeepers with crashes, power loss, torn writes, partitions, dead
 * coordinators, concurrent elections and compute writes racing elections;
 * every step checks that committed WAL is never lost or changed, that a
 * quorum holds it, that WAL bytes match their terms, and that terms only
 * grow. A failing seed is printed with the command that replays it.
 *
 * The same seeds run against the safekeeper service's Timeline
 * (timeline.ts, through safekeeper_consensus_timeline_sim.ts) as well as the
 * reference StoreTimeline.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { runSimulation, SimulationFailure, type SimTimelineKind, type SimulationReport } from "../src/safekeeper/consensus/simulation.js";
import { serviceTimelineKind } from "./safekeeper_consensus_timeline_sim.js";

/** Seeds per cluster size: enough to hit rare interleavings, within seconds on a shared 2-core machine. */
const SEEDS = Number(process.env.STRATA_SIM_SEEDS ?? 100);
const STEPS = Number(process.env.STRATA_SIM_STEPS ?? 150);
const FIRST_SEED = Number(process.env.STRATA_SIM_FIRST_SEED ?? 1);
/** Seeds against the service's Timeline (it also runs in the other safekeeper tests). */
const SERVICE_SEEDS = Number(process.env.STRATA_SIM_SERVICE_SEEDS ?? 60);

/** Seeds that once failed (against timeline.ts): regression tests, run first. */
const SERVICE_REGRESSION_SEEDS = [190, 326, 403];

async function runMany(members: number, seeds: number, kind?: SimTimelineKind, extraSeeds: readonly number[] = []): Promise<{ reports: SimulationReport[]; failures: SimulationFailure[] }> {
  const reports: SimulationReport[] = [];
  const failures: SimulationFailure[] = [];
  const all = [...extraSeeds, ...Array.from({ length: seeds }, (_, i) => FIRST_SEED + i)];
  for (const seed of all) {
    try {
      reports.push(await runSimulation({ seed, members, steps: STEPS, ...(kind ? { kind } : {}) }));
    } catch (e) {
      if (!(e instanceof SimulationFailure)) throw e;
      failures.push(e);
    }
  }
  return { reports, failures };
}

function summarize(members: number, reports: SimulationReport[], ms: number): string {
  const sum = (f: (r: SimulationReport) => number) => reports.reduce((a, r) => a + f(r), 0);
  return (
    `${members} safekeepers: ${reports.length} seeds x ${STEPS} steps in ${ms.toFixed(0)} ms: ` +
    `${sum((r) => r.elections)} elections (${sum((r) => r.electionsFailed)} without quorum or with a dead coordinator), ` +
    `${sum((r) => r.crashes)} crashes, ${sum((r) => r.faultsArmed)} storage faults armed, ` +
    `${sum((r) => r.refusedOldWrites)} writes of fenced computes refused, ${(sum((r) => r.walBytes) / reports.length / 1024).toFixed(0)} KiB committed per seed`
  );
}

for (const members of [3, 5]) {
  test(`consensus simulation: ${members} safekeepers, ${SEEDS} seeds`, async () => {
    const t0 = performance.now();
    const { reports, failures } = await runMany(members, SEEDS);
    if (failures.length > 0) assert.fail(`${failures.length} seeds failed; first:\n${failures[0]!.message}`);
    console.log(summarize(members, reports, performance.now() - t0));
    // The runs must actually exercise the protocol, not idle.
    assert.ok(reports.every((r) => r.elections > 0));
    assert.ok(reports.reduce((a, r) => a + r.crashes, 0) > SEEDS);
    assert.ok(reports.filter((r) => r.walBytes > 0).length > SEEDS * 0.9);
  });
}

// The same protocol against the service's Timeline (timeline.ts). The regression seeds reproduced
// its former bugs: truncation leaving the control file's flush LSN hint past the truncation point
// (reopen failed, or recovery reported zeroed bytes as WAL), and flushRecordLsn falling back to the
// timeline start after a truncation (a wrong donor: acknowledged WAL lost).
test(`consensus simulation against the service's Timeline: 3 safekeepers, ${SERVICE_SEEDS} seeds + regression seeds`, async () => {
  const { reports, failures } = await runMany(3, SERVICE_SEEDS, serviceTimelineKind, SERVICE_REGRESSION_SEEDS);
  console.log(`service Timeline: ${reports.length} seeds passed, ${failures.length} failed`);
  for (const f of failures.slice(0, 5)) console.log(f.message.split("\n")[0]);
  assert.equal(failures.length, 0);
});
