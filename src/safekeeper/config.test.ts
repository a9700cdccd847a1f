import { test } from "node:test";
import assert from "node:assert/strict";
import { parse as parseToml } from "smol-toml";
import { buildConfig, parsePeer } from "./config.js";
import { parseRemoteStorageConfig } from "../remote_storage/config.js";
import { parseConnString, parseWalSegmentSize } from "./wal_acceptor.js";
import { formatGucBytes } from "./wal_service.js";
import { redactConnstr } from "./http_api.js";

test("config: flags over TOML, defaults, precise errors", () => {
  const toml = parseToml(`id = 2\ndatadir = "/d"\npg_port = 6000\npeers = ["1=h1:5454:7676", "3=h3:5456:7678"]\n`) as Record<string, unknown>;
  const c = buildConfig({ pgPort: "6001" }, toml);
  assert.equal(c.id, 2);
  assert.equal(c.pgPort, 6001);
  assert.equal(c.httpPort, 7676);
  assert.equal(c.listenHost, "127.0.0.1");
  assert.deepEqual(c.peers, [
    { id: 1, host: "h1", pgPort: 5454, httpPort: 7676 },
    { id: 3, host: "h3", pgPort: 5456, httpPort: 7678 },
  ]);
  assert.deepEqual(buildConfig({ id: "1", datadir: "/x", peers: "2=a:1:2,3=b:3:4" }).peers.map((p) => p.id), [2, 3]);
  assert.throws(() => buildConfig({ datadir: "/x" }), /id is required/);
  assert.throws(() => buildConfig({ id: "0", datadir: "/x" }), /Invalid safekeeper id "0"/);
  assert.throws(() => buildConfig({ id: "1" }), /data directory is required/);
  assert.throws(() => buildConfig({ id: "1", datadir: "/x", pgPort: "70000" }), /Invalid pg port "70000"/);
  assert.throws(() => buildConfig({ id: "1", datadir: "/x", peers: "1=a:1:2" }), /appears twice/);
  assert.throws(() => buildConfig({}, { id: 1, datadir: "/x", colour: "blue" }), /Unknown configuration key "colour"/);
  assert.throws(() => parsePeer("2=host:5454"), /expected id=host:pg_port:http_port/);
  assert.equal(c.walFsync, "inline");
  assert.equal(buildConfig({ id: 1, datadir: "/x", walFsync: "background" }).walFsync, "background");
  assert.throws(() => buildConfig({ id: 1, datadir: "/x", walFsync: "never" }), /Invalid wal_fsync "never"/);
  const saved = process.env.STRATA_WAL_RECEIVER;
  try {
    delete process.env.STRATA_WAL_RECEIVER;
    assert.equal(c.walReceiver, saved ?? "native");
    assert.equal(buildConfig({ id: 1, datadir: "/x" }).walReceiver, "native");
    assert.equal(buildConfig({ id: 1, datadir: "/x", walReceiver: "node" }).walReceiver, "node");
    assert.equal(buildConfig({}, { id: 1, datadir: "/x", wal_receiver: "node" }).walReceiver, "node");
    process.env.STRATA_WAL_RECEIVER = "node";
    assert.equal(buildConfig({ id: 1, datadir: "/x" }).walReceiver, "node");
    assert.equal(buildConfig({ id: 1, datadir: "/x", walReceiver: "native" }).walReceiver, "native", "the flag wins over the environment");
    assert.throws(() => buildConfig({ id: 1, datadir: "/x", walReceiver: "rust" }), /Invalid wal_receiver "rust": expected "native" or "node"/);
  } finally {
    if (saved === undefined) delete process.env.STRATA_WAL_RECEIVER;
    else process.env.STRATA_WAL_RECEIVER = saved;
  }
});

test("config: remote_storage as a flag URL, a TOML URL or a TOML table (parsed by remote_storage/config.ts); bad ones refused", () => {
  assert.equal(buildConfig({ id: 1, datadir: "/x" }).remoteStorage, undefined);
  const flag = buildConfig({ id: 1, datadir: "/x", remoteStorage: "s3://bkt/sk/wal?endpoint=http://127.0.0.1:9000&force_path_style=true" }).remoteStorage;
  assert.equal(parseRemoteStorageConfig(flag).kind, "s3");
  const url = parseRemoteStorageConfig(buildConfig({}, { id: 1, datadir: "/x", remote_storage: "file:///var/remote" }).remoteStorage);
  assert.deepEqual(url.kind === "local" ? url.root : undefined, "/var/remote");
  const table = parseToml(`id = 1\ndatadir = "/x"\n[remote_storage]\nkind = "azure"\ncontainer = "wal-container"\nprefix = "p"\naccount = "a"\n`) as Record<string, unknown>;
  assert.equal(parseRemoteStorageConfig(buildConfig({}, table).remoteStorage).kind, "azure");
  // The flag wins over the file.
  assert.equal(buildConfig({ remoteStorage: "file:///flag" }, { id: 1, datadir: "/x", remote_storage: "file:///toml" }).remoteStorage, "file:///flag");
  assert.throws(() => buildConfig({ id: 1, datadir: "/x", remoteStorage: "ftp://host/x" }), /Invalid remote_storage "ftp:\/\/host\/x"/);
  assert.throws(() => buildConfig({}, { id: 1, datadir: "/x", remote_storage: 7 }), /must be a URL string or a table/);
  assert.throws(() => parseRemoteStorageConfig(buildConfig({ id: 1, datadir: "/x", remoteStorage: "file://relative" }).remoteStorage), /file URLs must not name a host/);
});

test("connection strings: key=value with quoting, URIs, refusals", () => {
  const kv = parseConnString("host = 10.0.0.1 port=5433 user=alice password='a b\\'c' options='-c x=1'");
  assert.equal(kv.host, "10.0.0.1");
  assert.equal(kv.port, 5433);
  assert.equal(kv.password, "a b'c");
  assert.equal(kv.options, "-c x=1");
  const uri = parseConnString("postgresql://bob:p%40ss@127.0.0.1:6543/app?application_name=x");
  assert.deepEqual([uri.host, uri.port, uri.user, uri.password, uri.dbname], ["127.0.0.1", 6543, "bob", "p@ss", "app"]);
  assert.equal(parseConnString("").port, 5432);
  assert.throws(() => parseConnString("host"), /missing "="/);
  assert.throws(() => parseConnString("host='x"), /unterminated/);
  assert.throws(() => parseConnString("port=abc"), /invalid port "abc"/);
  assert.throws(() => parseConnString("host=/tmp"), /Unix socket/);
  assert.throws(() => parseConnString("sslmode=require"), /sslmode=require/);
  assert.throws(() => parseConnString("service=x"), /unsupported keyword "service"/);
  assert.equal(redactConnstr("host=a password=secret user=b"), "host=a password=*** user=b");
  assert.equal(redactConnstr("host=a password='s e c' user=b"), "host=a password=*** user=b");
  assert.equal(redactConnstr("postgresql://u:secret@h/db"), "postgresql://u:***@h/db");
});

test("GUC byte values both ways", () => {
  for (const [n, text] of [
    [16 * 1024 * 1024, "16MB"],
    [1024 * 1024 * 1024, "1GB"],
    [64 * 1024, "64kB"],
    [1000, "1000B"],
  ] as const) {
    assert.equal(formatGucBytes(n), text);
    assert.equal(parseWalSegmentSize(text), n);
  }
  assert.throws(() => parseWalSegmentSize("16 MiB"), /Cannot parse wal_segment_size/);
});
