import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StrataError } from "../lib/errors.js";
import { generateTenantId, generateTimelineId } from "../lib/id.js";
import { lsn, segmentStart } from "../lib/lsn.js";
import { WalWriter } from "../formats/wal/wal_writer.js";
import { encodeRecord } from "../formats/wal/xlog_record.js";
import type { TimelinePersistentState } from "./control_file.js";
import { NodeDurableFS } from "./durable_fs.js";
import { FaultyFS } from "./faulty_fs.js";
import { term } from "./term_history.js";
import { TimelineStore, timelineDirPath } from "./timeline_dir.js";

const SEG = 1024 * 1024;
const START = segmentStart(2n, SEG);

function initialState(): TimelinePersistentState {
  return {
    tenantId: generateTenantId(),
    timelineId: generateTimelineId(),
    systemId: 42n,
    pgVersion: 150014,
    walSegSizeBytes: SEG,
    timelineStartLsn: START,
    term: term(0),
    termHistory: [],
    flushLsnHint: START,
    commitLsn: START,
    backupLsn: START,
    remoteConsistentLsn: START,
    peerHorizonLsn: START,
  };
}

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "strata-tl-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function isStrataError(code: string) {
  return (e: unknown) => e instanceof StrataError && e.code === code;
}

test("create, write WAL, persist progress, reopen: control state and WAL end survive", async () => {
  await withDir(async (root) => {
    const fs = new NodeDurableFS();
    const init = initialState();
    const tl = await TimelineStore.create(fs, root, init);
    assert.deepEqual(await readdir(timelineDirPath(root, init.tenantId, init.timelineId)), ["safekeeper.control"]);
    await assert.rejects(TimelineStore.create(fs, root, init), isStrataError("invalid_argument"));

    // Some WAL: 300 records across a segment boundary.
    const w = new WalWriter({ startLsn: START, walSegSizeBytes: SEG, systemId: 42n });
    let prev = lsn(0);
    let lastEnd = START;
    for (let i = 0; i < 300; i++) {
      const placed = w.appendRecord(encodeRecord({ rmid: 10, info: 0, prevLsn: prev, mainData: new Uint8Array(5000).fill(i & 0xff) }));
      prev = placed.lsn;
      lastEnd = placed.endLsn;
    }
    const bytes = w.take();
    await tl.wal.write(START, bytes);
    await tl.wal.flush();
    assert.equal(
      await tl.persistProgress((s) => ({ ...s, term: term(1), termHistory: [{ term: term(1), lsn: START }], commitLsn: lastEnd })),
      true,
    );
    assert.equal(tl.control.state.flushLsnHint, tl.wal.recoveryStartLsn);
    assert.equal(await tl.persistProgress(), false, "nothing changed");
    await tl.close();

    const again = await TimelineStore.open(fs, root, init.tenantId, init.timelineId);
    assert.equal(again.wal.flushLsn, lastEnd);
    assert.equal(again.control.state.commitLsn, lastEnd);
    assert.equal(again.control.state.term, 1n);
    assert.equal(again.wal.recovery.recordsDecoded, 1, "recovery decoded from the persisted hint, not from the start");
    await again.close();

    const other = initialState();
    await (await TimelineStore.create(fs, root, other)).close();
    const listed = (await TimelineStore.list(fs, root)).map((r) => `${r.tenantId}/${r.timelineId}`).sort();
    assert.deepEqual(listed, [`${init.tenantId}/${init.timelineId}`, `${other.tenantId}/${other.timelineId}`].sort());
    await assert.rejects(TimelineStore.open(fs, root, init.tenantId, other.timelineId), isStrataError("not_found"));
    assert.deepEqual(await TimelineStore.list(fs, join(root, "missing")), []);
  });
});

test("a crash at any step of create leaves no timeline or a complete one; create can be retried", async () => {
  await withDir(async (root) => {
    const real = new NodeDurableFS();
    const probeState = initialState();
    const probe = new FaultyFS(real);
    await (await TimelineStore.create(probe, root, probeState)).close();
    const steps = probe.mutations;
    let absent = 0;
    let present = 0;
    for (let step = 1; step <= steps; step++) {
      for (let seed = 1; seed <= 4; seed++) {
        const init = initialState();
        const fs = new FaultyFS(real, { seed, faults: [{ op: "mutation", nth: step, effect: "crash" }] });
        await TimelineStore.create(fs, root, init).then(
          (t) => t.close(),
          () => undefined,
        );
        await fs.powerLoss();
        const listed = (await TimelineStore.list(real, root)).some((r) => r.timelineId === init.timelineId);
        if (listed) {
          const t = await TimelineStore.open(real, root, init.tenantId, init.timelineId);
          assert.deepEqual(t.control.state, init);
          await t.close();
          present++;
        } else {
          await assert.rejects(TimelineStore.open(real, root, init.tenantId, init.timelineId), isStrataError("not_found"));
          const t = await TimelineStore.create(real, root, init);
          assert.deepEqual(t.control.state, init);
          await t.close();
          absent++;
        }
      }
    }
    assert.ok(absent > 0 && present > 0, `absent ${absent}, present ${present}`);
  });
});
