import assert from "node:assert/strict";
import { test } from "node:test";
import { StrataError } from "../lib/errors.js";
import { MAX_REMOTE_PATH_BYTES, baseName, compareKeys, dirPrefix, normalizeRootPrefix, parseRemotePath, parseRemotePrefix, remotePath } from "./remote_path.js";

function invalid(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof StrataError && e.code === "invalid_argument" && re.test(e.message));
}

test("valid paths parse to themselves", () => {
  for (const p of ["a", "a/b", "tenants/0123/timelines/abcd/000000-FFFF__0000000001696070-0000000001696071", "x.y", "..a", "a..", "a b", "é/ü"]) {
    assert.equal(parseRemotePath(p), p);
  }
  assert.equal(remotePath("tenants", "t1", "index_part.json"), "tenants/t1/index_part.json");
  assert.equal(remotePath("a/b", "c"), "a/b/c");
});

test("invalid paths say why", () => {
  invalid(() => parseRemotePath(""), /empty/);
  invalid(() => parseRemotePath("/a"), /starts with "\/"/);
  invalid(() => parseRemotePath("a/"), /ends with "\/"/);
  invalid(() => parseRemotePath("a//b"), /segment 2 is empty/);
  invalid(() => parseRemotePath("a/../b"), /segment 2 is "\.\."/);
  invalid(() => parseRemotePath(".."), /segment 1 is "\.\."/);
  invalid(() => parseRemotePath("./a"), /segment 1 is "\."/);
  invalid(() => parseRemotePath("a\\b"), /contains "\\"/);
  invalid(() => parseRemotePath("a\0b"), /NUL/);
  invalid(() => parseRemotePath("x".repeat(MAX_REMOTE_PATH_BYTES + 1)), /longer than/);
  assert.equal(parseRemotePath("x".repeat(MAX_REMOTE_PATH_BYTES)).length, MAX_REMOTE_PATH_BYTES);
  invalid(() => parseRemotePath("é".repeat(MAX_REMOTE_PATH_BYTES / 2 + 1)), /longer than/); // counted in UTF-8 bytes
  invalid(() => remotePath("a", "", "b"), /segment 2 is empty/);
});

test("prefixes may be empty or end in a slash, nothing more", () => {
  for (const p of ["", "a", "a/", "a/b", "a/b/", "tenants/ab"]) assert.equal(parseRemotePrefix(p), p);
  invalid(() => parseRemotePrefix("/"), /only "\/"|starts with/);
  invalid(() => parseRemotePrefix("a//"), /segment 2 is empty/);
  invalid(() => parseRemotePrefix("/a/"), /starts with/);
  invalid(() => parseRemotePrefix("a/../"), /"\.\."/);
  assert.equal(dirPrefix(parseRemotePath("a/b")), "a/b/");
  assert.equal(dirPrefix(parseRemotePrefix("a/")), "a/");
  assert.equal(dirPrefix(""), "");
  assert.equal(baseName(parseRemotePath("a/b/c.json")), "c.json");
  assert.equal(baseName(parseRemotePath("c")), "c");
});

test("root prefixes normalize to '' or 'x/y/'", () => {
  assert.equal(normalizeRootPrefix(undefined), "");
  assert.equal(normalizeRootPrefix(""), "");
  assert.equal(normalizeRootPrefix("/"), "");
  assert.equal(normalizeRootPrefix("/a/b/"), "a/b/");
  assert.equal(normalizeRootPrefix("a"), "a/");
  invalid(() => normalizeRootPrefix("a//b"), /segment 2 is empty/);
  invalid(() => normalizeRootPrefix("a/../b"), /"\.\."/);
});

test("keys compare by UTF-8 bytes, like S3", () => {
  assert.ok(compareKeys("d-e", "d/f") < 0); // '-' 0x2d < '/' 0x2f
  assert.ok(compareKeys("a", "ab") < 0);
  assert.equal(compareKeys("x", "x"), 0);
  // U+FF5E (EF BD 9E) sorts before U+1F600 (F0 9F 98 80) in UTF-8, after it in UTF-16 code units.
  const bmp = "\uff5e";
  const astral = "\u{1f600}";
  assert.ok(bmp > astral, "UTF-16 order differs");
  assert.ok(compareKeys(bmp, astral) < 0);
  const keys = ["b", astral, "a/b", "a-b", bmp, "a"];
  keys.sort(compareKeys);
  assert.deepEqual(keys, ["a", "a-b", "a/b", "b", bmp, astral]);
});
