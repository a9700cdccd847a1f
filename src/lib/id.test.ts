import { test } from "node:test";
import assert from "node:assert/strict";
import { StrataError } from "./errors.js";
import {
  generateTenantId,
  generateTimelineId,
  isIdText,
  parseTenantId,
  parseTimelineId,
  tenantIdFromBytes,
  tenantIdToBytes,
  timelineIdFromBytes,
  timelineIdToBytes,
} from "./id.js";

test("parse normalizes to lower case and round-trips through bytes", () => {
  const t = parseTenantId("0123456789ABCDEF0123456789abcdef");
  assert.equal(t, "0123456789abcdef0123456789abcdef");
  const bytes = tenantIdToBytes(t);
  assert.equal(bytes.length, 16);
  assert.equal(bytes[0], 0x01);
  assert.equal(bytes[15], 0xef);
  assert.equal(tenantIdFromBytes(bytes), t);
  const tl = parseTimelineId("ffffffffffffffffffffffffffffffff");
  assert.equal(timelineIdFromBytes(timelineIdToBytes(tl)), tl);
});

test("parse rejects wrong lengths and non-hex with invalid_argument", () => {
  for (const bad of ["", "0123", "0123456789abcdef0123456789abcde", "0123456789abcdef0123456789abcdef0", "g123456789abcdef0123456789abcdef", " 123456789abcdef0123456789abcdef"]) {
    assert.throws(
      () => parseTimelineId(bad),
      (e: unknown) => e instanceof StrataError && e.code === "invalid_argument" && e.message.includes(`"${bad}"`),
    );
    assert.equal(isIdText(bad), false);
  }
});

test("generated ids are well-formed and distinct", () => {
  const seen = new Set<string>();
  for (let i = 0; i < 100; i++) {
    const a = generateTenantId();
    const b = generateTimelineId();
    assert.match(a, /^[0-9a-f]{32}$/);
    assert.equal(parseTenantId(a), a);
    assert.equal(parseTimelineId(b), b);
    seen.add(a);
    seen.add(b);
  }
  assert.equal(seen.size, 200);
});

test("fromBytes rejects a wrong length (a caller bug)", () => {
  assert.throws(() => tenantIdFromBytes(new Uint8Array(15)), RangeError);
});
