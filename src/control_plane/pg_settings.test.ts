import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../lib/errors.js";
import { computeSettings, confValue, connstrKeyValue, connstrUri, parsePgConfigItems, pgHbaConf, postgresqlConfBlock, synchronousStandbyNames } from "./pg_settings.js";

test("synchronous_standby_names: one safekeeper by name, else ANY quorum of N/2+1", () => {
  assert.equal(synchronousStandbyNames([1]), "sk_1");
  assert.equal(synchronousStandbyNames([2, 1]), "ANY 2 (sk_1, sk_2)");
  assert.equal(synchronousStandbyNames([3, 1, 2]), "ANY 2 (sk_1, sk_2, sk_3)");
  assert.equal(synchronousStandbyNames([1, 2, 3, 4]), "ANY 3 (sk_1, sk_2, sk_3, sk_4)");
  assert.equal(synchronousStandbyNames([1, 2, 3, 4, 5]), "ANY 3 (sk_1, sk_2, sk_3, sk_4, sk_5)");
  assert.throws(() => synchronousStandbyNames([]), StrataError);
});

test("--pg-config items: KEY=VALUE parsed, names lower-cased, malformed and protected ones refused", () => {
  assert.deepEqual(parsePgConfigItems(["shared_buffers=16MB", "Work_Mem = 4MB", "log_line_prefix=%m [%p] a=b"]), {
    shared_buffers: "16MB",
    work_mem: "4MB",
    log_line_prefix: "%m [%p] a=b",
  });
  assert.deepEqual(parsePgConfigItems([]), {});
  for (const badItem of ["noequals", "=1", "bad key=1", "1abc=2"]) assert.throws(() => parsePgConfigItems([badItem]), /expected KEY=VALUE|not a PostgreSQL setting/);
  for (const prot of ["port=5432", "wal_level=minimal", "synchronous_standby_names=''", "listen_addresses=*"]) assert.throws(() => parsePgConfigItems([prot]), /set by strata/);
});

test("postgresql.conf values are quoted unless numbers, sizes or booleans", () => {
  assert.equal(confValue("16MB"), "16MB");
  assert.equal(confValue("10"), "10");
  assert.equal(confValue("0.5"), "0.5");
  assert.equal(confValue("on"), "on");
  assert.equal(confValue("ANY 2 (sk_1, sk_2)"), "'ANY 2 (sk_1, sk_2)'");
  assert.equal(confValue("it's"), "'it''s'");
  assert.equal(confValue("/tmp/x"), "'/tmp/x'");
  assert.equal(confValue("a\\b"), "'a\\\\b'");
});

test("compute settings: replication for N safekeepers + spares, quorum commit, user settings last", () => {
  const s = new Map(computeSettings({ port: 55432, socketDir: "/r/endpoints/main", safekeeperIds: [1, 2, 3], user: { shared_buffers: "16MB", fsync: "off" } }));
  assert.equal(s.get("port"), "55432");
  assert.equal(s.get("listen_addresses"), "127.0.0.1");
  assert.equal(s.get("unix_socket_directories"), "/r/endpoints/main");
  assert.equal(s.get("wal_level"), "replica");
  assert.equal(s.get("max_wal_senders"), "8");
  assert.equal(s.get("max_replication_slots"), "8");
  assert.equal(s.get("synchronous_commit"), "on");
  assert.equal(s.get("synchronous_standby_names"), "ANY 2 (sk_1, sk_2, sk_3)");
  assert.equal(s.get("fsync"), "off", "a user setting overrides the default");
  assert.equal(s.get("shared_buffers"), "16MB");
  assert.throws(() => computeSettings({ port: 1, socketDir: "/x", safekeeperIds: [1], user: { port: "2" } }), /owned by strata/);

  const block = postgresqlConfBlock({ port: 6000, socketDir: "/tmp/e p", safekeeperIds: [1] });
  assert.match(block, /^port = 6000$/m);
  assert.match(block, /^unix_socket_directories = '\/tmp\/e p'$/m);
  assert.match(block, /^synchronous_standby_names = 'sk_1'$/m);
  assert.match(block, /^wal_level = 'replica'$/m);
});

test("pg_hba allows local and loopback, normal and replication; connection strings", () => {
  const hba = pgHbaConf();
  for (const re of [/^local\s+all\s+all\s+trust$/m, /^host\s+all\s+all\s+127\.0\.0\.1\/32\s+trust$/m, /^local\s+replication\s+all\s+trust$/m, /^host\s+replication\s+all\s+127\.0\.0\.1\/32\s+trust$/m]) {
    assert.match(hba, re);
  }
  assert.equal(connstrUri(5433), "postgresql://postgres@127.0.0.1:5433/postgres");
  assert.equal(connstrKeyValue(5433), "host=127.0.0.1 port=5433 user=postgres dbname=postgres");
});
