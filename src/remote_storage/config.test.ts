import assert from "node:assert/strict";
import { test } from "node:test";
import { StrataError } from "../lib/errors.js";
import { AzureBlobStorage } from "./azure_blob.js";
import { createRemoteStorage, parseRemoteStorageConfig, parseRemoteStorageUrl } from "./config.js";
import { LocalFsStorage } from "./local_fs.js";
import { RetryingRemoteStorage } from "./retry.js";
import { S3Storage } from "./s3.js";

function invalid(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof StrataError, String(e));
    assert.equal(e.code, "invalid_argument");
    assert.match(e.message, re);
    return true;
  });
}

test("file URLs", () => {
  assert.deepEqual(parseRemoteStorageUrl("file:///var/lib/strata/remote"), { kind: "local", root: "/var/lib/strata/remote" });
  assert.deepEqual(parseRemoteStorageUrl("file:///tmp/x/?timeout_ms=5000"), { kind: "local", root: "/tmp/x", timeoutMs: 5000 });
  assert.deepEqual(parseRemoteStorageUrl("file:///tmp/with%20space"), { kind: "local", root: "/tmp/with space" });
  assert.deepEqual(parseRemoteStorageUrl("file:///tmp/x?max_attempts=1"), { kind: "local", root: "/tmp/x", retry: false });
  assert.deepEqual(parseRemoteStorageUrl("file:///tmp/x?max_attempts=3"), {
    kind: "local",
    root: "/tmp/x",
    retry: { maxAttempts: 3, baseDelayMs: 100, maxDelayMs: 5000 },
  });
});

test("s3 URLs", () => {
  assert.deepEqual(parseRemoteStorageUrl("s3://my-bucket"), { kind: "s3", bucket: "my-bucket" });
  assert.deepEqual(parseRemoteStorageUrl("s3://my-bucket/"), { kind: "s3", bucket: "my-bucket" });
  assert.deepEqual(
    parseRemoteStorageUrl("s3://my-bucket/some/prefix/?endpoint=http://127.0.0.1:9000&region=eu-west-1&force_path_style=true&multipart_threshold_bytes=8388608"),
    {
      kind: "s3",
      bucket: "my-bucket",
      prefix: "some/prefix",
      endpoint: "http://127.0.0.1:9000",
      region: "eu-west-1",
      forcePathStyle: true,
      multipartThresholdBytes: 8388608,
    },
  );
  assert.deepEqual(parseRemoteStorageUrl("s3://b12/p?force_path_style=0"), { kind: "s3", bucket: "b12", prefix: "p", forcePathStyle: false });
});

test("azure URLs", () => {
  assert.deepEqual(parseRemoteStorageUrl("azure://container/pre/fix?account=acct&endpoint=http://127.0.0.1:10000/acct"), {
    kind: "azure",
    container: "container",
    prefix: "pre/fix",
    account: "acct",
    endpoint: "http://127.0.0.1:10000/acct",
  });
});

test("bad URLs are rejected with the reason", () => {
  invalid(() => parseRemoteStorageUrl("not a url"), /not a URL/);
  invalid(() => parseRemoteStorageUrl("/abs/path"), /not a URL/);
  invalid(() => parseRemoteStorageUrl("gs://bucket"), /unknown scheme "gs:"/);
  invalid(() => parseRemoteStorageUrl("file://host/path"), /must not name a host/);
  invalid(() => parseRemoteStorageUrl("file:///"), /path is empty/);
  invalid(() => parseRemoteStorageUrl("file:///a/../b"), /must not contain "." or ".." segments/);
  invalid(() => parseRemoteStorageUrl("s3://bucket/./x"), /must not contain/);
  invalid(() => parseRemoteStorageUrl("s3:///prefix"), /bucket is missing|not a valid/);
  invalid(() => parseRemoteStorageUrl("s3://Bad_Bucket/x"), /not a valid S3 bucket name/);
  invalid(() => parseRemoteStorageUrl("s3://bucket/a//b"), /segment 2 is empty/);
  invalid(() => parseRemoteStorageUrl("s3://bucket?regoin=x"), /unknown s3 option "regoin"/);
  invalid(() => parseRemoteStorageUrl("s3://bucket?region=a&region=b"), /given twice/);
  invalid(() => parseRemoteStorageUrl("s3://bucket?bucket=other"), /given by the URL itself/);
  invalid(() => parseRemoteStorageUrl("s3://bucket?secret_access_key=x"), /is a secret/);
  invalid(() => parseRemoteStorageUrl("s3://key:secret@bucket/x"), /credentials in the URL/);
  invalid(() => parseRemoteStorageUrl("s3://bucket?endpoint=ftp://x"), /must be http/);
  invalid(() => parseRemoteStorageUrl("s3://bucket?endpoint=nonsense"), /not a URL/);
  invalid(() => parseRemoteStorageUrl("s3://bucket?force_path_style=maybe"), /must be true or false/);
  invalid(() => parseRemoteStorageUrl("s3://bucket?timeout_ms=-5"), /positive integer/);
  invalid(() => parseRemoteStorageUrl("s3://bucket?max_attempts=1000"), /maxAttempts 1000 is not in 1\.\.100/);
  invalid(() => parseRemoteStorageUrl("s3://bucket#frag"), /fragment/);
  invalid(() => parseRemoteStorageUrl("azure://UPPER/x"), /not a valid Azure container/);
  invalid(() => parseRemoteStorageUrl("azure://container?account_key=x"), /is a secret/);
  invalid(() => parseRemoteStorageUrl("azure://container?region=x"), /unknown azure option "region"/);
});

test("TOML tables: kind + keys, or url", () => {
  assert.deepEqual(parseRemoteStorageConfig({ kind: "s3", bucket: "bkt", prefix: "/p/", region: "r", force_path_style: true, timeout_ms: 1000 }), {
    kind: "s3",
    bucket: "bkt",
    prefix: "p",
    region: "r",
    forcePathStyle: true,
    timeoutMs: 1000,
  });
  assert.deepEqual(parseRemoteStorageConfig({ kind: "local", path: "/data/remote" }), { kind: "local", root: "/data/remote" });
  assert.deepEqual(parseRemoteStorageConfig({ url: "azure://ctr/p?account=a" }), { kind: "azure", container: "ctr", prefix: "p", account: "a" });
  assert.deepEqual(parseRemoteStorageConfig("file:///x"), { kind: "local", root: "/x" });
  invalid(() => parseRemoteStorageConfig({ kind: "local", path: "relative/dir" }), /must be absolute/);
  invalid(() => parseRemoteStorageConfig({ kind: "gcs", bucket: "x" }), /"kind" must be/);
  invalid(() => parseRemoteStorageConfig({ bucket: "x" }), /"kind" must be/);
  invalid(() => parseRemoteStorageConfig({ kind: "s3" }), /"bucket" is required/);
  invalid(() => parseRemoteStorageConfig({ kind: "s3", bucket: 5 }), /"bucket" must be a string/);
  invalid(() => parseRemoteStorageConfig({ url: "s3://b12", region: "x" }), /cannot be combined/);
  invalid(() => parseRemoteStorageConfig({ kind: "s3", bucket: "b12", access_key_id: "AKIA" }), /is a secret/);
  invalid(() => parseRemoteStorageConfig(42), /expected a URL string or a table/);
  invalid(() => parseRemoteStorageConfig(null), /expected a URL string or a table/);
});

test("createRemoteStorage builds the named backend, wrapped in retries unless disabled", async () => {
  const local = createRemoteStorage("file:///tmp/strata-config-test");
  assert.ok(local instanceof RetryingRemoteStorage);
  assert.ok(local.inner instanceof LocalFsStorage);
  assert.equal(local.describe(), "file:///tmp/strata-config-test/");
  const raw = createRemoteStorage("file:///tmp/strata-config-test?max_attempts=1");
  assert.ok(raw instanceof LocalFsStorage);

  const s3 = createRemoteStorage("s3://bkt/pre?endpoint=http://127.0.0.1:1&force_path_style=true&max_attempts=1");
  assert.ok(s3 instanceof S3Storage);
  assert.equal(s3.describe(), "s3://bkt/pre/ (endpoint http://127.0.0.1:1)");
  await s3.close();

  // Azure: the key from the environment; the account from the config, the endpoint, or the environment.
  const env = { AZURE_STORAGE_KEY: Buffer.from("k").toString("base64") };
  const az = createRemoteStorage("azure://ctr/p?endpoint=http://127.0.0.1:10000/devstoreaccount1&max_attempts=1", { env });
  assert.ok(az instanceof AzureBlobStorage);
  assert.equal(az.container.url, "http://127.0.0.1:10000/devstoreaccount1/ctr");
  const az2 = createRemoteStorage("azure://ctr?max_attempts=1", { env: { ...env, AZURE_STORAGE_ACCOUNT: "acct" } });
  assert.ok(az2 instanceof AzureBlobStorage && az2.container.url === "https://acct.blob.core.windows.net/ctr");
  const cs = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;";
  const az3 = createRemoteStorage("azure://ctr?max_attempts=1", { env: { AZURE_STORAGE_CONNECTION_STRING: cs } });
  assert.ok(az3 instanceof AzureBlobStorage && az3.container.url === "http://127.0.0.1:9/devstoreaccount1/ctr");
  invalid(() => createRemoteStorage("azure://ctr", { env: {} }), /has no credentials/);
});
