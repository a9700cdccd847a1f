import { test } from "node:test";
import assert from "node:assert/strict";
import { createHttpApi } from "./http.js";
import { createRegistry, Counter } from "./metrics.js";
import { silentLogger } from "./logging.js";
import { StrataError } from "./errors.js";

test("errors map to statuses with JSON bodies; /metrics serves the registry", async () => {
  const registry = createRegistry({ defaultMetrics: false });
  const c = new Counter({ name: "strata_test_requests_total", help: "test", registers: [registry] });
  const app = createHttpApi({ log: silentLogger(), registry });
  app.get("/missing", async () => {
    throw new StrataError("not_found", "tenant 00ff not found");
  });
  app.get("/boom", async () => {
    throw new Error("unexpected");
  });
  app.post("/echo", async (req) => {
    c.inc();
    return req.body;
  });
  try {
    let r = await app.inject({ method: "GET", url: "/missing" });
    assert.equal(r.statusCode, 404);
    assert.deepEqual(r.json(), { error: "tenant 00ff not found", code: "not_found" });
    r = await app.inject({ method: "GET", url: "/boom" });
    assert.equal(r.statusCode, 500);
    r = await app.inject({ method: "POST", url: "/echo", headers: { "content-type": "application/json" }, payload: "{not json" });
    assert.equal(r.statusCode, 400);
    assert.equal(r.json().code, "invalid_argument");
    r = await app.inject({ method: "POST", url: "/echo", headers: { "content-type": "application/json" }, payload: "x".repeat(2 * 1024 * 1024) });
    assert.equal(r.statusCode, 413);
    r = await app.inject({ method: "POST", url: "/echo", payload: { a: 1 } });
    assert.deepEqual(r.json(), { a: 1 });
    r = await app.inject({ method: "GET", url: "/nope" });
    assert.equal(r.statusCode, 404);
    r = await app.inject({ method: "GET", url: "/metrics" });
    assert.match(r.body, /strata_test_requests_total 1/);
  } finally {
    await app.close();
  }
});
