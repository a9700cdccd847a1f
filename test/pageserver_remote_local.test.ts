/**
 * Issue 7, acceptance 1 on the local-directory backend with a smaller
 * workload: see `roundTrip` in pageserver_remote_support.ts.
 */
import { test } from "node:test";
import { rm } from "node:fs/promises";
import { makeTempDir } from "./harness/tools.js";
import { roundTrip } from "./pageserver_remote_support.js";

test("local directory: delete the local directory, attach with generation 2, pages identical", { timeout: 300_000 }, async () => {
  const remoteDir = await makeTempDir("remote");
  try {
    await roundTrip("local", `file://${remoteDir}`);
  } finally {
    await rm(remoteDir, { recursive: true, force: true });
  }
});
