/**
 * The conformance suite against the S3 backend talking to s3rver on a
 * loopback port. The storage is built from an s3:// URL with credentials
 * from the environment (the AWS provider chain), and a multipart threshold
 * below the large test object so multipart uploads are exercised too.
 */
import { S3Storage } from "../src/remote_storage/s3.js";
import { createRemoteStorage } from "../src/remote_storage/config.js";
import { startS3rver, S3RVER_CREDENTIALS } from "./harness/s3rver.js";
import { remoteStorageConformance } from "./remote_storage_conformance.js";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { parseRemotePath } from "../src/remote_storage/remote_path.js";
import { downloadBytes } from "../src/remote_storage/remote_storage.js";
import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";

// The SDK warns once per process that releases after January 2027 need Node 22
// (noted in docs/remote-storage.md); in test output it is only noise.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = "true";

remoteStorageConformance({
  name: "S3 (s3rver)",
  largeObjectBytes: 12 * 1024 * 1024,
  // s3rver's own defects (see ConformanceTarget.quirks); real S3 has none of them.
  quirks: { partialUploadsVisible: true, s3rverListing: true, brokenEmptyObjectRanges: true, racyConcurrentDeletes: true },
  async open() {
    const server = await startS3rver({ buckets: ["strata-test"] });
    process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
    const url =
      `s3://strata-test/conformance/run-${process.pid}?endpoint=${encodeURIComponent(server.endpoint)}` +
      `&region=us-east-1&force_path_style=true&multipart_threshold_bytes=${6 * 1024 * 1024}&multipart_part_size_bytes=${5 * 1024 * 1024}&max_attempts=1`;
    const storage = createRemoteStorage(url);
    return {
      storage,
      async close() {
        await storage.close();
        await server.stop();
      },
    };
  },
});

describe("S3 backend specifics", () => {
  test("streams above the threshold go up as multipart uploads, smaller ones as one PutObject", async () => {
    const server = await startS3rver({ buckets: ["strata-test"] });
    const MiB = 1024 * 1024;
    const s = new S3Storage({
      bucket: "strata-test",
      prefix: "mp",
      endpoint: server.endpoint,
      forcePathStyle: true,
      credentials: S3RVER_CREDENTIALS,
      multipartThresholdBytes: 6 * MiB,
      multipartPartSizeBytes: 5 * MiB,
    });
    const commands: string[] = [];
    s.client.middlewareStack.add(
      (next, context) => async (args) => {
        commands.push(String(context.commandName));
        return next(args);
      },
      { step: "initialize", name: "strataTestCommandLog" },
    );
    try {
      const big = randomBytes(12 * MiB + 123);
      await s.upload(parseRemotePath("big"), () => Readable.from([big.subarray(0, 7 * MiB), big.subarray(7 * MiB)]), { sizeBytes: big.length });
      assert.deepEqual(commands, ["CreateMultipartUploadCommand", "UploadPartCommand", "UploadPartCommand", "UploadPartCommand", "CompleteMultipartUploadCommand"]);
      assert.ok(big.equals(await downloadBytes(s, parseRemotePath("big"))));
      commands.length = 0;
      await s.upload(parseRemotePath("small"), Readable.from([big.subarray(0, 6 * MiB)]), { sizeBytes: 6 * MiB });
      assert.deepEqual(commands, ["PutObjectCommand"]);
      // A multipart upload whose body breaks is aborted: no object appears.
      commands.length = 0;
      const broken = new Readable({
        read() {
          this.push(big.subarray(0, MiB));
          if (commands.includes("UploadPartCommand")) this.destroy(new Error("body failed (test)"));
        },
      });
      await assert.rejects(s.upload(parseRemotePath("broken"), broken, { sizeBytes: 20 * MiB }));
      assert.equal(await s.exists(parseRemotePath("broken")), false);
      assert.ok(commands.includes("CreateMultipartUploadCommand"));
    } finally {
      await s.close();
      await server.stop();
    }
  });

  test("a missing bucket is a permanent error, an unreachable endpoint a transient one", async () => {
    const server = await startS3rver({ buckets: ["strata-test"] });
    try {
      const s = new S3Storage({ bucket: "no-such-bucket", endpoint: server.endpoint, forcePathStyle: true, credentials: S3RVER_CREDENTIALS });
      await assert.rejects(s.upload(parseRemotePath("x"), Buffer.from("x")), (e: Error & { code?: string; transient?: boolean }) => {
        assert.equal(e.code, "io_error", e.message);
        assert.equal(e.transient, false, e.message);
        return true;
      });
      await s.close();
    } finally {
      await server.stop();
    }
    const gone = new S3Storage({ bucket: "strata-test", endpoint: server.endpoint, forcePathStyle: true, credentials: S3RVER_CREDENTIALS });
    await assert.rejects(gone.head(parseRemotePath("x")), (e: Error & { code?: string; transient?: boolean }) => {
      assert.equal(e.code, "io_error", e.message);
      assert.equal(e.transient, true, e.message);
      return true;
    });
    await gone.close();
  });
});
