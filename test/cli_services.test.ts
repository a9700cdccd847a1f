/**
 * `strata init | start | stop | status` and error handling, with the real
 * CLI and real services (two safekeepers and a pageserver as detached
 * background processes of a temp repo dir):
 *   - init persists free ports; a second init is refused (exit 2);
 *   - start brings everything up (pids in status --json, services answer
 *     /v1/status on the recorded ports); start again starts nothing;
 *   - a safekeeper killed with SIGKILL is reported stopped (stale pid file)
 *     and `strata start` restarts exactly it;
 *   - a port taken by another program: clear "in use" error, exit 4;
 *   - misuse: unknown branch / endpoint / deployment (exit 3), bad LSN,
 *     bad --pg-config, bad --safekeepers (exit 2), no stack traces;
 *   - stop: every service gone, status shows them stopped.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { cliJson, cliOk, runCli, withRepo, type StatusJson } from "./cli_support.js";

async function answers(port: number): Promise<boolean> {
  try {
    const r = await fetch(`http://127.0.0.1:${port}/v1/status`, { signal: AbortSignal.timeout(2000) });
    return r.ok;
  } catch {
    return false;
  }
}

/** Alive and not a zombie. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

test("strata init/start/stop/status: supervision, stale pid files, port in use, misuse errors", { timeout: 300_000 }, async () => {
  await withRepo(async (repo) => {
    let r = await runCli(repo, ["status"]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /No strata deployment/);
    r = await runCli(repo, ["init", "--safekeepers", "0"]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--safekeepers must be an integer in \[1, 7\]/);

    await cliOk(repo, ["init", "--safekeepers", "2"]);
    r = await runCli(repo, ["init"]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /already holds a deployment/);

    let s = await cliJson<StatusJson>(repo, ["status"]);
    assert.equal(s.pageserver.pid, null);
    assert.equal(s.safekeepers.length, 2);
    const ports = [s.pageserver.pg_port, s.pageserver.http_port, ...s.safekeepers.flatMap((k) => [k.pg_port, k.http_port])];
    assert.equal(new Set(ports).size, 6, "six distinct ports");

    const started = await cliOk(repo, ["start", "--quiet"]);
    assert.match(started, /pageserver: started/);
    s = await cliJson<StatusJson>(repo, ["status"]);
    assert.ok(s.pageserver.pid !== null && alive(s.pageserver.pid));
    for (const k of s.safekeepers) assert.ok(k.pid !== null && (await answers(k.http_port)), `safekeeper ${k.id} answers`);
    assert.ok(await answers(s.pageserver.http_port));

    // A dead safekeeper: stale pid file, restarted alone.
    const victim = s.safekeepers[1]!;
    process.kill(victim.pid!, "SIGKILL");
    for (let i = 0; i < 50 && alive(victim.pid!); i++) await new Promise((res) => setTimeout(res, 100));
    const s2 = await cliJson<StatusJson>(repo, ["status"]);
    assert.equal(s2.safekeepers[1]!.pid, null, "killed safekeeper reported stopped");
    assert.equal(s2.safekeepers[0]!.pid, s.safekeepers[0]!.pid);
    const again = await cliOk(repo, ["start", "--quiet"]);
    assert.match(again, /safekeeper 1: already running/);
    assert.match(again, /safekeeper 2: started/);
    assert.match(again, /pageserver: already running/);
    const s3 = await cliJson<StatusJson>(repo, ["status"]);
    assert.ok(s3.safekeepers[1]!.pid !== null && s3.safekeepers[1]!.pid !== victim.pid);

    // Misuse, with exit codes and no stack traces.
    const misuse: [string[], number, RegExp][] = [
      [["endpoint", "start", "ep1", "--branch-name", "nope"], 3, /No default tenant|Unknown branch/],
      [["endpoint", "stop", "nope"], 3, /Unknown endpoint "nope"/],
      [["timeline", "list", "--tenant-id", "0123456789abcdef0123456789abcdef"], 3, /Unknown tenant/],
      [["endpoint", "start", "ep1", "--pg-config", "port=1"], 2, /set by strata/],
      [["endpoint", "start", "bad/name"], 2, /Invalid endpoint name/],
    ];
    for (const [args, code, re] of misuse) {
      const m = await runCli(repo, args);
      assert.equal(m.code, code, `${args.join(" ")}: ${m.stderr}`);
      assert.match(m.stderr, re);
      assert.doesNotMatch(m.stderr, /\n\s+at /, "no stack trace");
    }
    const tenant = (await cliOk(repo, ["tenant", "create"])).trim();
    assert.match(tenant, /^[0-9a-f]{32}$/);
    const tl = await runCli(repo, ["timeline", "branch", "--branch-name", "b1"]);
    assert.equal(tl.code, 3);
    assert.match(tl.stderr, /Unknown branch "main"/);
    const list = await cliJson<{ id: string; default: boolean }[]>(repo, ["tenant", "list"]);
    assert.deepEqual(list.map((t) => [t.id, t.default]), [[tenant, true]]);

    // Stop everything, then a port taken by a stranger blocks start with a clear error.
    await cliOk(repo, ["stop"]);
    s = await cliJson<StatusJson>(repo, ["status"]);
    assert.equal(s.pageserver.pid, null);
    assert.ok(s.safekeepers.every((k) => k.pid === null));
    for (const k of s3.safekeepers) assert.ok(!alive(k.pid!), `safekeeper ${k.id} process gone`);
    assert.ok(!alive(s3.pageserver.pid!));
    const squatter: Server = createServer();
    await new Promise<void>((res) => squatter.listen(s.pageserver.http_port, "127.0.0.1", res));
    try {
      const blocked = await runCli(repo, ["start", "--quiet"]);
      assert.equal(blocked.code, 4, blocked.stderr);
      assert.match(blocked.stderr, new RegExp(`Port ${s.pageserver.http_port} \\(pageserver\\) is in use`));
      const d = await runCli(repo, ["timeline", "list"]);
      assert.equal(d.code, 4);
      assert.match(d.stderr, /The pageserver is not running/);
    } finally {
      await new Promise<void>((res) => squatter.close(() => res()));
    }
    console.log(`services: 2 safekeepers + pageserver started, 1 killed and restarted, ${misuse.length + 4} misuse cases with exit codes`);
  });
});
