/**
 * The retry wrapper under injected faults, over a real local-directory
 * backend: transient errors are retried up to the limit and no further,
 * permanent ones never; bodies that cannot be replayed are tried once;
 * broken downloads resume where they broke (and refuse to splice two
 * versions of an object); waiting to retry is cancellable. Also the fault
 * injector's own selection rules (ordinals, seeded fractions, delays).
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { RemoteStorageError } from "../src/remote_storage/errors.js";
import { FaultInjectingRemoteStorage } from "../src/remote_storage/fault_injection.js";
import { seededRandom } from "../src/lib/prng.js";
import { LocalFsStorage } from "../src/remote_storage/local_fs.js";
import { parseRemotePath, parseRemotePrefix } from "../src/remote_storage/remote_path.js";
import { downloadBytes, listAll } from "../src/remote_storage/remote_storage.js";
import { DEFAULT_RETRY_POLICY, RetryingRemoteStorage, backoffDelayMs, type RetryEvent } from "../src/remote_storage/retry.js";

const p = parseRemotePath;
/** Short waits keep the file fast; the policy's shape is what is under test. */
const FAST = { maxAttempts: 4, baseDelayMs: 5, maxDelayMs: 40 };

function code(c: string, transient?: boolean) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof RemoteStorageError, String(e));
    assert.equal(e.code, c, e.message);
    if (transient !== undefined) assert.equal(e.transient, transient, e.message);
    return true;
  };
}

describe("RetryingRemoteStorage with FaultInjectingRemoteStorage", () => {
  let dir: string;
  let backend: LocalFsStorage;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "strata-remote-retry-"));
    backend = new LocalFsStorage({ root: dir });
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  function stack(policy = FAST): { faults: FaultInjectingRemoteStorage; retrying: RetryingRemoteStorage; events: RetryEvent[] } {
    const faults = new FaultInjectingRemoteStorage(backend, { seed: 42 });
    const events: RetryEvent[] = [];
    const retrying = new RetryingRemoteStorage(faults, { policy, onRetry: (e) => events.push(e), random: seededRandom(7) });
    return { faults, retrying, events };
  }

  test("transient failures are retried until the call succeeds", async () => {
    const { faults, retrying, events } = stack();
    faults.addRule({ ops: ["upload"], nth: [1, 2], error: "transient" });
    faults.addRule({ ops: ["head"], nth: [1, 2, 3], error: "timeout" });
    await retrying.upload(p("r/a"), Buffer.from("a"));
    assert.equal(faults.calls("upload"), 3);
    assert.equal((await retrying.head(p("r/a"))).sizeBytes, 1);
    assert.equal(faults.calls("head"), 4);
    assert.equal(retrying.retries, 5);
    assert.deepEqual(
      events.map((e) => [e.what.split(" ")[0], e.attempt]),
      [["upload", 1], ["upload", 2], ["head", 1], ["head", 2], ["head", 3]],
    );
    for (const e of events) {
      const cap = Math.min(FAST.maxDelayMs, FAST.baseDelayMs * 2 ** (e.attempt - 1));
      assert.ok(e.delayMs >= cap / 2 && e.delayMs <= cap, `delay ${e.delayMs} of attempt ${e.attempt} within [${cap / 2}, ${cap}]`);
    }
  });

  test("the attempt limit holds: maxAttempts calls, then the last error", async () => {
    const { faults, retrying } = stack();
    faults.addRule({ ops: ["upload"], error: "transient" });
    await assert.rejects(retrying.upload(p("r/never"), Buffer.from("x")), (e: unknown) => {
      code("io_error", true)(e);
      assert.match((e as Error).message, /gave up after 4 attempts/);
      return true;
    });
    assert.equal(faults.calls("upload"), FAST.maxAttempts);
    assert.equal(await backend.exists(p("r/never")), false);
  });

  test("permanent errors and not_found are not retried", async () => {
    const { faults, retrying } = stack();
    const rule = faults.addRule({ ops: ["delete"], error: "permanent", maxHits: 1 });
    await assert.rejects(retrying.delete(p("r/x")), code("io_error", false));
    assert.equal(faults.calls("delete"), 1);
    assert.equal(rule.hits, 1);
    await assert.rejects(retrying.head(p("r/missing")), code("not_found"));
    await assert.rejects(retrying.download(p("r/missing")), code("not_found"));
    await assert.rejects(retrying.copy(p("r/missing"), p("r/y")), code("not_found"));
    assert.equal(faults.calls("head"), 1);
    assert.equal(faults.calls("download"), 1);
    assert.equal(faults.calls("copy"), 1);
    assert.equal(retrying.retries, 0);
  });

  test("a bare Readable is tried once; a factory is re-opened for every attempt", async () => {
    const { faults, retrying } = stack();
    faults.addRule({ ops: ["upload"], nth: [1], error: "transient" });
    faults.addRule({ ops: ["upload"], nth: [2], error: "transient", when: "after" });
    await assert.rejects(retrying.upload(p("r/stream"), Readable.from([Buffer.from("abc")]), { sizeBytes: 3 }), code("io_error", true));
    assert.equal(faults.calls("upload"), 1);
    let opened = 0;
    await retrying.upload(
      p("r/factory"),
      () => {
        opened++;
        return Readable.from([Buffer.from("abc")]);
      },
      { sizeBytes: 3 },
    );
    assert.equal(faults.calls("upload"), 3);
    assert.equal(opened, 2, "each attempt that reached the backend opened a fresh stream");
    assert.equal((await downloadBytes(backend, p("r/factory"))).toString(), "abc");
  });

  test("a lost answer (failure after the call succeeded) is retried and is idempotent", async () => {
    const { faults, retrying } = stack();
    faults.addRule({ ops: ["upload", "delete", "copy"], nth: [1], error: "transient", when: "after" });
    await retrying.upload(p("r/after"), Buffer.from("v1"));
    await retrying.copy(p("r/after"), p("r/after-copy"));
    await retrying.delete(p("r/after"));
    assert.equal(faults.calls("upload"), 2);
    assert.equal(faults.calls("copy"), 2);
    assert.equal(faults.calls("delete"), 2);
    assert.equal(await backend.exists(p("r/after")), false);
    assert.equal((await downloadBytes(backend, p("r/after-copy"))).toString(), "v1");
  });

  test("list pages are retried one at a time", async () => {
    const { faults, retrying } = stack();
    await Promise.all(Array.from({ length: 25 }, (_, i) => backend.upload(p(`r/list/k${String(i).padStart(2, "0")}`), Buffer.from("x"))));
    faults.addRule({ ops: ["list"], nth: [2, 4], error: "transient" });
    const all = await listAll(retrying, parseRemotePrefix("r/list/"), { pageSize: 10 });
    assert.equal(all.objects.length, 25);
    assert.equal(faults.calls("list"), 5, "3 pages + 2 retried pages");
  });

  test("a download cut off mid-stream resumes with a ranged request", async () => {
    const data = randomBytes(3 * 1024 * 1024);
    await backend.upload(p("r/big"), data);
    const { faults, retrying } = stack();
    faults.addRule({ ops: ["download"], nth: [1, 2], truncateAfterBytes: 1024 * 1024 + 17 });
    const got = await downloadBytes(retrying, p("r/big"));
    assert.equal(createHash("sha256").update(got).digest("hex"), createHash("sha256").update(data).digest("hex"));
    assert.equal(faults.calls("download"), 3);
    // Ranged downloads resume inside the range.
    faults.clearRules();
    faults.addRule({ ops: ["download"], nth: [4], truncateAfterBytes: 1000 });
    const part = await downloadBytes(retrying, p("r/big"), { range: { start: 100_000, end: 2_000_000 } });
    assert.ok(part.equals(data.subarray(100_000, 2_000_000)));
    assert.equal(faults.calls("download"), 5);

    // Without the wrapper the cut surfaces as a transient io_error.
    const plain = new FaultInjectingRemoteStorage(backend);
    plain.addRule({ ops: ["download"], truncateAfterBytes: 4096 });
    await assert.rejects(downloadBytes(plain, p("r/big")), code("io_error", true));
  });

  test("resuming refuses to splice two versions of an object", async () => {
    await backend.upload(p("r/changing"), randomBytes(2 * 1024 * 1024));
    const { faults, retrying } = stack();
    // Cut late: the reader below has not started, so backpressure stops the
    // first stream long before the cut, and the overwrite happens first.
    faults.addRule({ ops: ["download"], nth: [1], truncateAfterBytes: 1536 * 1024 });
    const dl = await retrying.download(p("r/changing"));
    await backend.upload(p("r/changing"), randomBytes(2 * 1024 * 1024)); // overwritten while being read
    await assert.rejects(
      (async () => {
        for await (const _ of dl.stream);
      })(),
      (e: unknown) => code("io_error", false)(e) && /changed while it was being downloaded/.test((e as Error).message),
    );
  });

  test("cancelling while waiting to retry ends the call promptly", async () => {
    const { faults, retrying } = stack({ maxAttempts: 5, baseDelayMs: 10_000, maxDelayMs: 10_000 });
    faults.addRule({ ops: ["head"], error: "transient" });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const t0 = performance.now();
    await assert.rejects(retrying.head(p("r/a"), { signal: ac.signal }), code("cancelled"));
    assert.ok(performance.now() - t0 < 2_000);
    assert.equal(faults.calls("head"), 1);
  });

  test("injected delays are honoured and cancellable", async () => {
    const faults = new FaultInjectingRemoteStorage(backend);
    faults.addRule({ ops: ["head"], delayMs: 150, maxHits: 1 });
    const t0 = performance.now();
    await faults.exists(p("r/a"));
    assert.ok(performance.now() - t0 >= 140);
    faults.addRule({ ops: ["head"], delayMs: 10_000 });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 30);
    await assert.rejects(faults.head(p("r/a"), { signal: ac.signal }), code("cancelled"));
  });

  test("fractions are seeded: the same seed fails the same calls", async () => {
    const pattern = async (seed: number): Promise<string> => {
      const faults = new FaultInjectingRemoteStorage(backend, { seed });
      const rule = faults.addRule({ ops: ["head"], fraction: 0.3, error: "transient" });
      let out = "";
      for (let i = 0; i < 200; i++) {
        out += await faults.exists(p("r/a")).then(
          () => ".",
          () => "x",
        );
      }
      assert.equal(rule.hits, [...out].filter((c) => c === "x").length);
      return out;
    };
    const a = await pattern(1);
    assert.equal(await pattern(1), a);
    assert.notEqual(await pattern(2), a);
    const failures = [...a].filter((c) => c === "x").length;
    assert.ok(failures > 30 && failures < 90, `~30% of 200 calls failed: ${failures}`);
  });

  test("backoff: exponential, capped, jittered within [cap/2, cap]", () => {
    const policy = { ...DEFAULT_RETRY_POLICY };
    assert.equal(backoffDelayMs(1, policy, () => 0), 50);
    assert.equal(backoffDelayMs(1, policy, () => 0.999999), 100);
    assert.equal(backoffDelayMs(3, policy, () => 0), 200);
    assert.equal(backoffDelayMs(20, policy, () => 0), policy.maxDelayMs / 2);
    assert.equal(backoffDelayMs(1000, policy, () => 1), policy.maxDelayMs);
    assert.throws(() => new RetryingRemoteStorage(backend, { policy: { maxAttempts: 0 } }), /maxAttempts 0/);
    assert.throws(() => new RetryingRemoteStorage(backend, { policy: { baseDelayMs: 10, maxDelayMs: 5 } }), /baseDelayMs/);
  });
});
