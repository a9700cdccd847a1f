import { test } from "node:test";
import assert from "node:assert/strict";
import { lsn } from "../lib/lsn.js";
import { parseTenantConfig } from "./config.js";
import { SafekeeperLagMonitor } from "./wal_receiver.js";

const MiB = 1024 * 1024;

test("lag monitor: switches only after the lag exceeds the threshold continuously for longer than the grace period", () => {
  const m = new SafekeeperLagMonitor(16 * MiB, 5_000);
  const cur = lsn(0x1_0000_0000);
  const far = lsn(0x1_0000_0000 + 16 * MiB + 8);
  const exactly = lsn(0x1_0000_0000 + 16 * MiB);
  // At the threshold is not over it.
  assert.equal(m.observe(0, cur, exactly), false);
  assert.equal(m.laggingSince, undefined);
  // Over it: starts the clock, no switch within the grace period (inclusive).
  assert.equal(m.observe(1_000, cur, far), false);
  assert.equal(m.laggingSince, 1_000);
  assert.equal(m.observe(6_000, cur, far), false);
  assert.equal(m.observe(6_001, cur, far), true);
});

test("lag monitor: a catch-up or an unreachable other resets the clock; a current safekeeper ahead never switches", () => {
  const m = new SafekeeperLagMonitor(16 * MiB, 5_000);
  const base = 0x2_0000_0000;
  assert.equal(m.observe(0, lsn(base), lsn(base + 32 * MiB)), false);
  assert.equal(m.observe(4_000, lsn(base + 20 * MiB), lsn(base + 32 * MiB)), false, "caught up to within 12 MiB");
  assert.equal(m.laggingSince, undefined);
  assert.equal(m.observe(5_000, lsn(base), lsn(base + 32 * MiB)), false);
  assert.equal(m.observe(8_000, lsn(base), undefined), false, "no other safekeeper answered");
  assert.equal(m.observe(12_000, lsn(base), lsn(base + 32 * MiB)), false, "clock restarted at 12 s");
  assert.equal(m.observe(17_001, lsn(base), lsn(base + 32 * MiB)), true);
  const ahead = new SafekeeperLagMonitor(0, 0);
  assert.equal(ahead.observe(0, lsn(base + 64 * MiB), lsn(base)), false);
  assert.equal(ahead.observe(10_000, lsn(base + 64 * MiB), lsn(base)), false);
});

test("lag settings are tenant config with defaults of 16 MiB and 5 s, range-checked", () => {
  const c = parseTenantConfig({});
  assert.equal(c.safekeeperMaxLagBytes, 16 * MiB);
  assert.equal(c.safekeeperLagGraceMs, 5_000);
  assert.equal(parseTenantConfig({ safekeeperMaxLagBytes: 1024 }).safekeeperMaxLagBytes, 1024);
  assert.throws(() => parseTenantConfig({ safekeeperLagGraceMs: -1 }), /safekeeperLagGraceMs/);
});
