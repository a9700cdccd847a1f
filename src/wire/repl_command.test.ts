// Replication command parsing: what walreceiver, pg_receivewal and strata send;
// one invalid case for each valid form.

import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "../lib/errors.js";
import { parseLsn } from "../lib/lsn.js";
import { parseReplicationCommand } from "./repl_command.js";
import { sqlstateOf } from "./sqlstate.js";

test("valid commands", () => {
  const cases: [string, unknown][] = [
    ["IDENTIFY_SYSTEM", { kind: "IDENTIFY_SYSTEM" }],
    ["  IDENTIFY_SYSTEM ;", { kind: "IDENTIFY_SYSTEM" }],
    ["TIMELINE_HISTORY 2", { kind: "TIMELINE_HISTORY", timeline: 2 }],
    // What walreceiver (libpqwalreceiver.c) sends:
    ['START_REPLICATION SLOT "sk_1" 0/3000000 TIMELINE 1', { kind: "START_REPLICATION", slot: "sk_1", startLsn: parseLsn("0/3000000"), timeline: 1 }],
    // What pg_receivewal sends without a slot:
    ["START_REPLICATION 16/B374D848 TIMELINE 4294967295", { kind: "START_REPLICATION", slot: null, startLsn: parseLsn("16/B374D848"), timeline: 4294967295 }],
    ["START_REPLICATION SLOT Sk_2 PHYSICAL 0/0;", { kind: "START_REPLICATION", slot: "sk_2", startLsn: parseLsn("0/0"), timeline: null }],
    ["START_REPLICATION PHYSICAL ffffffff/ffffffff", { kind: "START_REPLICATION", slot: null, startLsn: parseLsn("FFFFFFFF/FFFFFFFF"), timeline: null }],
    ['START_REPLICATION SLOT "We""ird" 0/1', { kind: "START_REPLICATION", slot: 'We"ird', startLsn: parseLsn("0/1"), timeline: null }],
    ["START_REPLICATION SLOT abc 0/1", { kind: "START_REPLICATION", slot: "abc", startLsn: parseLsn("0/1"), timeline: null }],
    ["SHOW wal_segment_size", { kind: "SHOW", name: "wal_segment_size" }],
    ["SHOW neon.Tenant_id", { kind: "SHOW", name: "neon.tenant_id" }],
    ['READ_REPLICATION_SLOT "sk_1"', { kind: "READ_REPLICATION_SLOT", slot: "sk_1" }],
  ];
  for (const [sql, expected] of cases) assert.deepEqual(parseReplicationCommand(sql), expected, sql);
});

function rejects(sql: string, code: string, re: RegExp, sqlstate?: string) {
  assert.throws(
    () => parseReplicationCommand(sql),
    (e: unknown) => e instanceof StrataError && e.code === code && re.test(e.message) && (sqlstate === undefined || sqlstateOf(e) === sqlstate),
    sql,
  );
}

test("invalid commands get clear errors", () => {
  rejects("", "invalid_argument", /empty command/, "42601");
  rejects("identify_system", "invalid_argument", /unknown command "identify_system"/, "42601");
  rejects("IDENTIFY_SYSTEM extra", "invalid_argument", /unexpected "extra" at offset 16/);
  rejects("TIMELINE_HISTORY 0", "invalid_argument", /timeline 0 at offset 17 is outside/);
  rejects("TIMELINE_HISTORY 4294967296", "invalid_argument", /is outside \[1, 4294967295\]/);
  rejects("TIMELINE_HISTORY", "invalid_argument", /expected a timeline number, found end of input/);
  rejects("START_REPLICATION SLOT 0/1", "invalid_argument", /expected a slot name, found "0\/1"/);
  rejects("START_REPLICATION PHYSICAL", "invalid_argument", /expected a start position X\/Y, found end of input/);
  rejects("START_REPLICATION 123456789/0", "invalid_argument", /invalid start position "123456789\/0"/);
  rejects("START_REPLICATION 0/1 TIMELINE x", "invalid_argument", /expected a timeline number, found "x"/);
  rejects('START_REPLICATION SLOT "unterminated 0/1', "invalid_argument", /unterminated quoted identifier at offset 23/);
  rejects("START_REPLICATION SLOT s LOGICAL 0/1", "unsupported", /logical replication is not supported/, "0A000");
  rejects(`START_REPLICATION SLOT ${"a".repeat(64)} 0/1`, "invalid_argument", /longer than 63 bytes/);
  rejects("SHOW", "invalid_argument", /expected a parameter name/);
  rejects("SHOW a.", "invalid_argument", /expected a parameter name, found end of input/);
  rejects("READ_REPLICATION_SLOT", "invalid_argument", /expected a slot name/);
  rejects("BASE_BACKUP", "unsupported", /BASE_BACKUP is not supported/, "0A000");
  rejects("CREATE_REPLICATION_SLOT s PHYSICAL", "unsupported", /not supported/);
  rejects("SELECT 1", "invalid_argument", /unknown command "SELECT"; expected IDENTIFY_SYSTEM/);
  rejects("IDENTIFY_SYSTEM;;", "invalid_argument", /unexpected ";" at offset 16/);
});
