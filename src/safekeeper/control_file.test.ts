import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile, readFile, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { crc32c } from "../formats/crc32c.js";
import { StrataError } from "../lib/errors.js";
import { parseTenantId, parseTimelineId } from "../lib/id.js";
import { lsn } from "../lib/lsn.js";
import {
  CONTROL_FILE_NAME,
  ControlFile,
  decodeControlFile,
  encodeControlFile,
  loadControlFile,
  storeControlFile,
  type TimelinePersistentState,
} from "./control_file.js";
import { NodeDurableFS } from "./durable_fs.js";
import { FaultyFS } from "./faulty_fs.js";
import { term } from "./term_history.js";

const base: TimelinePersistentState = {
  tenantId: parseTenantId("0123456789abcdef0123456789abcdef"),
  timelineId: parseTimelineId("fedcba9876543210fedcba9876543210"),
  systemId: 7311111111111111111n,
  pgVersion: 150014,
  walSegSizeBytes: 16 * 1024 * 1024,
  timelineStartLsn: lsn(0x1000000),
  term: term(3),
  termHistory: [
    { term: term(1), lsn: lsn(0x1000000) },
    { term: term(3), lsn: lsn(0x1234568) },
  ],
  flushLsnHint: lsn(0x1300000),
  commitLsn: lsn(0x12fff00),
  backupLsn: lsn(0x1000000),
  remoteConsistentLsn: lsn(0x1100000),
  peerHorizonLsn: lsn(0x1200000),
};

const next: TimelinePersistentState = {
  ...base,
  term: term(4),
  termHistory: [...base.termHistory, { term: term(4), lsn: lsn(0x1400000) }],
  flushLsnHint: lsn(0x1400000),
  commitLsn: lsn(0x1400000),
};

function isStrataError(code: string, includes?: string) {
  return (e: unknown) => e instanceof StrataError && e.code === code && (includes === undefined || e.message.includes(includes));
}

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "strata-cf-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test("encode/decode round trip", () => {
  const extremes: TimelinePersistentState = {
    ...base,
    systemId: (1n << 64n) - 1n,
    pgVersion: 159999,
    walSegSizeBytes: 1 << 30,
    term: term((1n << 64n) - 1n),
    termHistory: [],
    commitLsn: lsn((1n << 64n) - 1n),
  };
  for (const s of [base, next, extremes]) {
    const bytes = encodeControlFile(s);
    assert.equal(Buffer.from(bytes.subarray(0, 4)).toString("latin1"), "SKCF");
    assert.deepEqual(decodeControlFile(bytes, "x"), s);
  }
});

test("every flipped byte and every truncation is corrupt_data naming the path", () => {
  const bytes = encodeControlFile(next);
  for (let i = 0; i < bytes.length; i++) {
    const bad = bytes.slice();
    bad[i] = bad[i]! ^ 0x5a;
    assert.throws(() => decodeControlFile(bad, "/d/sk.control"), isStrataError("corrupt_data", "/d/sk.control"), `flip at ${i}`);
  }
  for (let cut = 0; cut < bytes.length; cut++) {
    assert.throws(() => decodeControlFile(bytes.subarray(0, cut), "/d/sk.control"), isStrataError("corrupt_data", "/d/sk.control"), `cut at ${cut}`);
  }
  const longer = new Uint8Array(bytes.length + 1);
  longer.set(bytes);
  assert.throws(() => decodeControlFile(longer, "p"), isStrataError("corrupt_data"));
  assert.throws(() => decodeControlFile(new Uint8Array(64 << 20), "p"), isStrataError("corrupt_data", "larger than"));
});

/** Re-seals bytes with a correct CRC so checks behind the CRC can be reached. */
function reseal(bytes: Uint8Array): Uint8Array {
  const out = bytes.slice();
  const at = out.length - 4;
  new DataView(out.buffer).setUint32(at, crc32c(out.subarray(0, at)), true);
  return out;
}

test("an unknown format version is unsupported; sound CRC over a bad body is corrupt", () => {
  const v2 = encodeControlFile(base).slice();
  new DataView(v2.buffer).setUint32(4, 2, true);
  assert.throws(() => decodeControlFile(reseal(v2), "p"), isStrataError("unsupported", "format version 2"));

  const badSeg = encodeControlFile(base).slice();
  new DataView(badSeg.buffer).setUint32(12 + 44, 12345, true);
  assert.throws(() => decodeControlFile(reseal(badSeg), "p"), isStrataError("corrupt_data", "segment size"));

  // Term below the term history's last term.
  const lowTerm = encodeControlFile(base).slice();
  new DataView(lowTerm.buffer).setBigUint64(12 + 56, 1n, true);
  assert.throws(() => decodeControlFile(reseal(lowTerm), "p"), isStrataError("corrupt_data", "below the last term"));

  // History count larger than what follows.
  const badCount = encodeControlFile(base).slice();
  new DataView(badCount.buffer).setUint32(12 + 104, 3, true);
  assert.throws(() => decodeControlFile(reseal(badCount), "p"), isStrataError("truncated"));
});

test("encoding an impossible state is invalid_argument", () => {
  assert.throws(() => encodeControlFile({ ...base, walSegSizeBytes: 1000 }), isStrataError("invalid_argument"));
  assert.throws(() => encodeControlFile({ ...base, term: term(2) }), isStrataError("invalid_argument"));
  assert.throws(() => encodeControlFile({ ...base, flushLsnHint: lsn(0) }), isStrataError("invalid_argument"));
});

test("store and load on the real file system; missing file is not_found", async () => {
  await withDir(async (dir) => {
    const fs = new NodeDurableFS();
    const path = join(dir, CONTROL_FILE_NAME);
    await assert.rejects(loadControlFile(fs, path), isStrataError("not_found"));
    await storeControlFile(fs, path, base);
    assert.deepEqual(await loadControlFile(fs, path), base);
    await storeControlFile(fs, path, next);
    assert.deepEqual(await loadControlFile(fs, path), next);
    assert.deepEqual(await readdir(dir), [CONTROL_FILE_NAME]);
  });
});

test("a crash at every step of a store, then power loss: the old or the new state, never a mix", async () => {
  await withDir(async (dir) => {
    const real = new NodeDurableFS();
    const path = join(dir, CONTROL_FILE_NAME);
    // How many disk-changing calls one store makes.
    await storeControlFile(real, path, base);
    const probe = new FaultyFS(real);
    await storeControlFile(probe, path, next);
    const steps = probe.mutations;
    assert.ok(steps >= 5, `a store is at least create, write, sync, rename, syncDir (got ${steps})`);

    const outcomes = { old: 0, new: 0 };
    for (let step = 1; step <= steps + 1; step++) {
      for (const effect of ["crash", "torn"] as const) {
        for (let seed = 1; seed <= 12; seed++) {
          await storeControlFile(real, path, base);
          const fs = new FaultyFS(real, { seed, faults: [{ op: "mutation", nth: step, effect }] });
          let completed = true;
          try {
            await storeControlFile(fs, path, next);
          } catch (e) {
            completed = false;
            assert.ok(e instanceof StrataError && e.code === "io_error");
          }
          await fs.powerLoss();
          const after = await loadControlFile(real, path);
          if (completed) assert.deepEqual(after, next, `step ${step} seed ${seed}: a completed store must be durable`);
          if (after.term === next.term) {
            assert.deepEqual(after, next);
            outcomes.new++;
          } else {
            assert.deepEqual(after, base, `step ${step} ${effect} seed ${seed}`);
            outcomes.old++;
          }
        }
      }
    }
    // Both outcomes occur: crashes before the rename is durable lose the update.
    assert.ok(outcomes.old > 0 && outcomes.new > 0, JSON.stringify(outcomes));
  });
});

test("a failed fsync fails the store and keeps the old state", async () => {
  await withDir(async (dir) => {
    const real = new NodeDurableFS();
    const path = join(dir, CONTROL_FILE_NAME);
    await storeControlFile(real, path, base);
    const fs = new FaultyFS(real, { faults: [{ op: "sync", nth: 1, effect: "error" }] });
    await assert.rejects(storeControlFile(fs, path, next), isStrataError("io_error"));
    await fs.powerLoss();
    assert.deepEqual(await loadControlFile(real, path), base);
  });
});

test("without the atomic rename a torn overwrite would be a mix, and the CRC catches it", async () => {
  await withDir(async (dir) => {
    const path = join(dir, CONTROL_FILE_NAME);
    const oldBytes = encodeControlFile(base);
    const newBytes = encodeControlFile({ ...base, commitLsn: lsn(0x12fff08), backupLsn: lsn(0x1100000) });
    assert.equal(oldBytes.length, newBytes.length);
    // Sector-sized tear at every 8-byte boundary: new prefix, old suffix.
    for (let cut = 8; cut < oldBytes.length; cut += 8) {
      const mixed = Buffer.concat([newBytes.subarray(0, cut), oldBytes.subarray(cut)]);
      if (Buffer.compare(mixed, Buffer.from(oldBytes)) === 0 || Buffer.compare(mixed, Buffer.from(newBytes)) === 0) continue;
      await writeFile(path, mixed);
      await assert.rejects(loadControlFile(new NodeDurableFS(), path), isStrataError("corrupt_data", path));
    }
    assert.ok((await readFile(path)).length > 0);
  });
});

test("ControlFile.persist: no I/O when unchanged, in-memory state only after durability", async () => {
  await withDir(async (dir) => {
    const real = new NodeDurableFS();
    const path = join(dir, CONTROL_FILE_NAME);
    const fs = new FaultyFS(real);
    const cf = await ControlFile.create(fs, path, base);
    const before = fs.mutations;
    assert.equal(await cf.persist(base), false);
    assert.equal(fs.mutations, before);
    assert.equal(await cf.persist((s) => ({ ...s, commitLsn: lsn(0x1300000) })), true);
    assert.equal(cf.state.commitLsn, 0x1300000n);
    fs.addFault({ op: "rename", nth: 1, effect: "error" });
    await assert.rejects(cf.persist(next), isStrataError("io_error"));
    assert.equal(cf.state.term, base.term, "a failed persist leaves the state as it was");
    assert.equal(await cf.persist(next), true);
    assert.deepEqual((await ControlFile.load(real, path)).state, next);
    await assert.rejects(cf.persist({ ...next, tenantId: parseTenantId("ffffffffffffffffffffffffffffffff") }), isStrataError("invalid_argument"));
    // Concurrent persists are applied in order.
    await Promise.all([cf.persist((s) => ({ ...s, backupLsn: lsn(0x1100000) })), cf.persist((s) => ({ ...s, peerHorizonLsn: lsn(0x1300000) }))]);
    const reloaded = (await ControlFile.load(real, path)).state;
    assert.equal(reloaded.backupLsn, 0x1100000n);
    assert.equal(reloaded.peerHorizonLsn, 0x1300000n);
  });
});
