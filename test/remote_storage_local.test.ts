/**
 * The conformance suite against the local-directory backend, plus what only
 * that backend promises: crash-safe atomic uploads (temp + fsync + rename),
 * invisible temp files, the file layout, and stale metadata sidecars.
 */
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { describe, test } from "node:test";
import { createRemoteStorage } from "../src/remote_storage/config.js";
import { LocalFsStorage } from "../src/remote_storage/local_fs.js";
import { parseRemotePath, parseRemotePrefix } from "../src/remote_storage/remote_path.js";
import { downloadBytes, listAll } from "../src/remote_storage/remote_storage.js";
import { remoteStorageConformance } from "./remote_storage_conformance.js";

remoteStorageConformance({
  name: "local directory",
  largeObjectBytes: 12 * 1024 * 1024,
  async open() {
    const dir = await mkdtemp(join(tmpdir(), "strata-remote-local-"));
    // Through the URL form, without the retry wrapper, so the backend itself is tested.
    const storage = createRemoteStorage(`file://${dir}/root?max_attempts=1`);
    return {
      storage,
      async close() {
        await storage.close();
        await rm(dir, { recursive: true, force: true });
      },
    };
  },
});

async function allFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(join(e.parentPath, e.name).slice(dir.length + 1));
  }
  return out.sort();
}

describe("local backend specifics", () => {
  test("objects are plain files under the root; helpers are hidden and cleaned", async () => {
    const dir = await mkdtemp(join(tmpdir(), "strata-remote-local-"));
    try {
      const s = new LocalFsStorage({ root: dir });
      await s.upload(parseRemotePath("tenants/t1/layer"), Buffer.from("layer bytes"), { metadata: { gen: "7" } });
      assert.equal(await readFile(join(dir, "tenants/t1/layer"), "utf8"), "layer bytes");
      assert.deepEqual(await allFiles(dir), ["tenants/t1/layer", "tenants/t1/layer.___meta"]);

      // A crash mid-upload leaves a temp file: never listed, never read, removed by cleanup.
      await writeFile(join(dir, "tenants/t1/.layer2.abcdef.___temp"), "partial");
      const listed = await listAll(s, parseRemotePrefix("tenants/"));
      assert.deepEqual(listed.objects.map((o) => o.path), ["tenants/t1/layer"]);
      assert.equal(await s.exists(parseRemotePath("tenants/t1/layer2")), false);
      assert.equal(await s.cleanupTempFiles(0), 1);
      assert.deepEqual(await allFiles(dir), ["tenants/t1/layer", "tenants/t1/layer.___meta"]);

      // Reserved names cannot be objects.
      await assert.rejects(s.upload(parseRemotePath("x.___temp"), Buffer.from("")), /reserved/);
      await assert.rejects(s.upload(parseRemotePath("x.___meta"), Buffer.from("")), /reserved/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("a failing upload leaves no partial object and no temp file, at any failure point", async () => {
    const dir = await mkdtemp(join(tmpdir(), "strata-remote-local-"));
    try {
      const s = new LocalFsStorage({ root: dir });
      const path = parseRemotePath("a/b/obj");
      await s.upload(path, Buffer.from("version 1"));
      // Fail after 0, 1, 2 … chunks: the reader sees version 1 every time.
      for (let failAfter = 0; failAfter < 5; failAfter++) {
        let n = 0;
        const body = new Readable({
          read() {
            if (n++ < failAfter) this.push(Buffer.alloc(100_000, n));
            else this.destroy(new Error(`test failure after ${failAfter} chunks`));
          },
        });
        await assert.rejects(s.upload(path, body, { sizeBytes: 10_000_000 }));
        assert.equal((await downloadBytes(s, path)).toString(), "version 1");
        assert.deepEqual(await allFiles(dir), ["a/b/obj"], `after failing at chunk ${failAfter}`);
      }
      // Cancelled mid-write: same.
      const ac = new AbortController();
      let sent = 0;
      const slow = new Readable({
        read() {
          if (sent++ === 3) ac.abort();
          setTimeout(() => this.push(Buffer.alloc(100_000)), 5);
        },
      });
      await assert.rejects(s.upload(path, slow, { sizeBytes: 10_000_000, signal: ac.signal }), (e: Error & { code?: string }) => e.code === "cancelled");
      assert.deepEqual(await allFiles(dir), ["a/b/obj"]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("a stale metadata sidecar (crash between the two renames) is ignored", async () => {
    const dir = await mkdtemp(join(tmpdir(), "strata-remote-local-"));
    try {
      const s = new LocalFsStorage({ root: dir });
      const path = parseRemotePath("m/obj");
      await s.upload(path, Buffer.from("data"), { metadata: { a: "1" } });
      assert.deepEqual((await s.head(path)).metadata, { a: "1" });
      // Simulate: a newer upload wrote its sidecar (for another inode), then crashed before its rename.
      await writeFile(join(dir, "m/obj.___meta"), JSON.stringify({ ino: 1, metadata: { a: "2" } }));
      assert.deepEqual((await s.head(path)).metadata, {});
      assert.equal((await downloadBytes(s, path)).toString(), "data");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('"a" and "a/b" cannot both exist: a clear permanent error; empty directories are not prefixes', async () => {
    const dir = await mkdtemp(join(tmpdir(), "strata-remote-local-"));
    try {
      const s = new LocalFsStorage({ root: dir });
      await s.upload(parseRemotePath("x/file"), Buffer.from("1"));
      await assert.rejects(s.upload(parseRemotePath("x/file/child"), Buffer.from("2")), (e: Error & { code?: string; transient?: boolean }) => {
        assert.equal(e.code, "io_error");
        assert.equal(e.transient, false);
        return true;
      });
      await s.upload(parseRemotePath("y/dir/child"), Buffer.from("3"));
      await assert.rejects(s.upload(parseRemotePath("y/dir"), Buffer.from("4")), (e: Error & { code?: string }) => e.code === "io_error");
      await assert.rejects(s.head(parseRemotePath("y/dir")), (e: Error & { code?: string }) => e.code === "not_found");
      await s.delete(parseRemotePath("y/dir")); // a directory is not an object: nothing to delete
      await mkdir(join(dir, "z/empty/deeper"), { recursive: true });
      const top = await listAll(s, parseRemotePrefix(""), { delimiter: "/" });
      assert.deepEqual(top.prefixes, ["x/", "y/"]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
