import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile, utimes } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { StrataError } from "../lib/errors.js";
import { generateTenantId, generateTimelineId } from "../lib/id.js";
import {
  branchName,
  branchTimeline,
  checkName,
  chooseTenant,
  CONFIG_VERSION,
  DEFAULT_REPO_DIR,
  loadConfig,
  parseRepoConfig,
  RepoPaths,
  resolveRepoDir,
  saveConfig,
  updateConfig,
  withConfigLock,
  type RepoConfig,
} from "./repo.js";
import { formatTimelineTree, normalizeTimestamp, type TimelineListEntry } from "./tenants.js";

function sample(): RepoConfig {
  const t = generateTenantId();
  return {
    version: CONFIG_VERSION,
    pageserver: { pg_port: 64000, http_port: 9898 },
    safekeepers: [
      { id: 1, pg_port: 5454, http_port: 7676 },
      { id: 2, pg_port: 5455, http_port: 7677 },
    ],
    remote_storage: "file:///tmp/remote",
    default_tenant: t,
    tenants: { [t]: { generation: 3, branches: { main: generateTimelineId(), dev: generateTimelineId() } } },
    endpoints: { main: { tenant_id: t, branch: "main", port: 55432, pg_config: { shared_buffers: "16MB" } } },
  };
}

test("repo dir: --repo-dir, else $STRATA_REPO_DIR, else ./.strata, absolute", () => {
  assert.equal(resolveRepoDir("/a/b", { STRATA_REPO_DIR: "/c" }), "/a/b");
  assert.equal(resolveRepoDir(undefined, { STRATA_REPO_DIR: "/c" }), "/c");
  assert.equal(resolveRepoDir(undefined, {}), resolve(DEFAULT_REPO_DIR));
  assert.equal(resolveRepoDir("rel", {}), resolve("rel"));
  assert.throws(() => resolveRepoDir(" ", {}), StrataError);
});

test("config round trip through JSON, and every invalid shape refused with the field named", () => {
  const c = sample();
  assert.deepEqual(parseRepoConfig(JSON.parse(JSON.stringify(c))), c);
  const cases: [(j: Record<string, unknown>) => void, RegExp][] = [
    [(j) => (j.version = 99), /unsupported config version 99/],
    [(j) => (j.pageserver = { pg_port: 0, http_port: 1 }), /pageserver\.pg_port must be a port/],
    [(j) => (j.safekeepers = []), /safekeepers must be a non-empty array/],
    [(j) => ((j.safekeepers as { id: unknown }[])[0]!.id = "x"), /safekeepers\[0\]\.id/],
    [(j) => (j.remote_storage = 5), /remote_storage must be a string/],
    [(j) => (j.default_tenant = "nothex"), /Cannot parse tenant id/],
    [(j) => (Object.values(j.tenants as Record<string, { generation: number }>)[0]!.generation = 0), /generation must be a positive integer/],
    [(j) => ((j.endpoints as Record<string, { port: number }>).main!.port = 70000), /endpoints\.main\.port/],
  ];
  for (const [mutate, re] of cases) {
    const j = JSON.parse(JSON.stringify(c)) as Record<string, unknown>;
    mutate(j);
    assert.throws(() => parseRepoConfig(j), (e: unknown) => e instanceof StrataError && re.test(e.message), String(re));
  }
  assert.throws(() => parseRepoConfig([]), /must be an object/);
});

test("load/save/update on disk: atomic replace, lock serializes writers, stale lock taken over", async () => {
  const dir = await mkdtemp(join(tmpdir(), "strata-repo-test-"));
  try {
    const paths = new RepoPaths(dir);
    await assert.rejects(loadConfig(paths), (e: unknown) => e instanceof StrataError && e.code === "not_found" && /strata init/.test(e.message));
    const c = sample();
    await saveConfig(paths, c);
    assert.deepEqual(await loadConfig(paths), c);
    // 20 concurrent increments: none lost.
    await Promise.all(Array.from({ length: 20 }, () => updateConfig(paths, (cfg) => void (cfg.tenants[cfg.default_tenant!]!.generation += 1))));
    assert.equal((await loadConfig(paths)).tenants[c.default_tenant!]!.generation, 23);
    // A lock left by a killed command is taken over once stale.
    await writeFile(paths.lock, "12345\n");
    const old = new Date(Date.now() - 120_000);
    await utimes(paths.lock, old, old);
    assert.equal(await withConfigLock(paths, async () => "ran"), "ran");
    await writeFile(paths.config, "{ not json");
    await assert.rejects(loadConfig(paths), (e: unknown) => e instanceof StrataError && e.code === "corrupt_data");
    assert.equal((await readFile(paths.config, "utf8")).startsWith("{ not"), true);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("names, tenants and branches resolve with clear errors", () => {
  const c = sample();
  const t = c.default_tenant!;
  assert.equal(chooseTenant(c, undefined), t);
  assert.equal(chooseTenant(c, t.toUpperCase()), t);
  assert.throws(() => chooseTenant(c, generateTenantId()), /Unknown tenant/);
  assert.throws(() => chooseTenant({ ...c, default_tenant: null }, undefined), /No default tenant/);
  assert.equal(branchTimeline(c, t, "dev"), c.tenants[t]!.branches.dev);
  assert.throws(() => branchTimeline(c, t, "nope"), (e: unknown) => e instanceof StrataError && e.code === "not_found" && /branches: main, dev/.test(e.message));
  assert.equal(branchName(c, t, c.tenants[t]!.branches.main!), "main");
  assert.equal(branchName(c, t, generateTimelineId()), undefined);
  assert.equal(checkName("branch", "feature-1.x_y"), "feature-1.x_y");
  for (const badName of ["", "-x", "a/b", "a b", "x".repeat(64), ".."]) assert.throws(() => checkName("branch", badName), StrataError, badName);
});

test("--at timestamps normalize to RFC 3339 keeping microseconds", () => {
  assert.equal(normalizeTimestamp("2026-11-29T07:01:02.123456Z"), "2026-11-29T07:01:02.123456Z");
  assert.equal(normalizeTimestamp("2026-11-29 07:01:02.123456+00"), "2026-11-29T07:01:02.123456+00:00");
  assert.equal(normalizeTimestamp("2026-11-29 07:01:02+0530"), "2026-11-29T07:01:02+05:30");
  assert.equal(normalizeTimestamp("2026-11-29T07:01:02z"), "2026-11-29T07:01:02Z");
  assert.equal(normalizeTimestamp("Sun, 29 Nov 2026 07:01:02 GMT"), "2026-11-29T07:01:02.000Z");
  assert.throws(() => normalizeTimestamp("yesterday"), /Cannot parse timestamp/);
  assert.throws(() => normalizeTimestamp("2026-13-45T07:01:02Z"), /Invalid timestamp/);
});

test("timeline tree: roots first, children under their ancestor, deeper indent per level", () => {
  const e = (id: string, branch: string, ancestor: string | null, lsn: string | null): TimelineListEntry => ({
    id,
    branch,
    ancestor,
    ancestor_branch: null,
    ancestor_lsn: lsn,
    last_record_lsn: "0/3000000",
    disk_consistent_lsn: "0/2000000",
    remote_consistent_lsn: "0/1000000",
    state: "active",
  });
  const lines = formatTimelineTree([e("c", "grandchild", "b", "0/2800000"), e("b", "child2", "a", "0/2000000"), e("a", "main", null, null), e("d", "child1", "a", "0/1000000")]);
  assert.equal(lines.length, 4);
  assert.match(lines[0]!, /^main a /);
  assert.match(lines[1]!, /^└ child1 d @0\/1000000/);
  assert.match(lines[2]!, /^└ child2 b @0\/2000000/);
  assert.match(lines[3]!, /^ {2}└ grandchild c @0\/2800000/);
});
