import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile, readFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isOurService, logTail, processGone, readPidFile, runningPid } from "./supervisor.js";
import { allocatePorts, checkPortFree, isPortFree, parsePort } from "./ports.js";
import { createServer } from "node:net";
import { StrataError } from "../lib/errors.js";

test("pid files: a live process that is not our service is stale; a dead pid is stale; zombies count as gone", async () => {
  const dir = await mkdtemp(join(tmpdir(), "strata-supervisor-test-"));
  const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"], { stdio: "ignore" });
  try {
    const pidFile = join(dir, "x.pid");
    assert.equal(await readPidFile(pidFile), undefined);
    await writeFile(pidFile, "garbage\n");
    assert.equal(await readPidFile(pidFile), undefined);
    await writeFile(pidFile, `${child.pid}\n`);
    assert.equal(await readPidFile(pidFile), child.pid);
    assert.equal(await processGone(child.pid!), false);
    // Alive, but not `main.js safekeeper`: a reused pid must not pass for our service.
    assert.equal(await isOurService(child.pid!, "safekeeper"), false);
    assert.equal(await runningPid(pidFile, "safekeeper"), undefined);
    assert.equal(existsSync(pidFile), false, "the stale pid file is removed");

    const exited = new Promise((res) => child.once("exit", res));
    child.kill("SIGKILL");
    await exited;
    assert.equal(await processGone(child.pid!), true);

    const log = join(dir, "x.log");
    assert.equal(await logTail(log), "(no log)");
    await writeFile(log, "a".repeat(10) + "END");
    assert.equal(await logTail(log, 5), "…aaEND");
    assert.equal(await readFile(log, "utf8"), "aaaaaaaaaaEND");
  } finally {
    child.kill("SIGKILL");
    await rm(dir, { recursive: true, force: true });
  }
});

test("ports: distinct free ports, in-use detection with a clear error, --port parsing", async () => {
  const ports = await allocatePorts(6);
  assert.equal(new Set(ports).size, 6);
  const srv = createServer();
  await new Promise<void>((res) => srv.listen(ports[0], "127.0.0.1", res));
  try {
    assert.equal(await isPortFree(ports[0]!), false);
    await assert.rejects(checkPortFree(ports[0]!, "pageserver"), (e: unknown) => e instanceof StrataError && e.code === "unavailable" && /Port \d+ \(pageserver\) is in use/.test(e.message));
    assert.equal(await isPortFree(ports[1]!), true);
    const more = await allocatePorts(2, ports);
    assert.ok(more.every((p) => !ports.includes(p)));
  } finally {
    await new Promise<void>((res) => srv.close(() => res()));
  }
  assert.equal(parsePort("5432"), 5432);
  for (const bad of ["0", "65536", "12ab", "-1", ""]) assert.throws(() => parsePort(bad), /--port must be a port number/);
});
