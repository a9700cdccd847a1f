/**
 * The HTTP management API base shared by the safekeeper and the pageserver.
 *
 * Built on fastify: JSON bodies with a size limit, Prometheus `/metrics`
 * from the service's registry, and one error handler that turns a
 * `StrataError` code into an HTTP status with a JSON body
 * `{ "error": message, "code": code }`. Bad requests (malformed JSON, schema
 * violations, unknown routes) get 4xx with a precise message; an unexpected
 * exception is a 500 that is logged once here, and the server keeps serving.
 */
import Fastify, { type FastifyInstance } from "fastify";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import { StrataError, type ErrorCode } from "./errors.js";
import { errorFields } from "./logging.js";

/** Management requests are small JSON documents; anything bigger is a mistake or an attack. */
export const HTTP_BODY_LIMIT_BYTES = 1024 * 1024;
/** A management request that takes longer than this is cut off (long operations run as tasks). */
export const HTTP_REQUEST_TIMEOUT_MS = 60_000;

const STATUS_BY_CODE: Record<ErrorCode, number> = {
  invalid_argument: 400,
  corrupt_data: 500,
  truncated: 400,
  unsupported: 400,
  not_found: 404,
  protocol_violation: 400,
  io_error: 500,
  timeout: 504,
  cancelled: 503,
  unavailable: 503,
  internal: 500,
};

export function httpStatusFor(code: ErrorCode): number {
  return STATUS_BY_CODE[code] ?? 500;
}

export interface HttpApiOptions {
  log: Logger;
  registry: Registry;
}

export function createHttpApi(opts: HttpApiOptions): FastifyInstance {
  const app = Fastify({ bodyLimit: HTTP_BODY_LIMIT_BYTES, requestTimeout: HTTP_REQUEST_TIMEOUT_MS, logger: false });

  app.setErrorHandler((err, req, reply) => {
    if (err instanceof StrataError) {
      const status = httpStatusFor(err.code);
      if (status >= 500) opts.log.error({ method: req.method, url: req.url, ...errorFields(err) }, "request failed");
      return reply.status(status).send({ error: err.message, code: err.code });
    }
    const e = err as { statusCode?: number; message?: string; code?: string };
    if (typeof e.statusCode === "number" && e.statusCode >= 400 && e.statusCode < 500) {
      // fastify's own validation/parsing errors (bad JSON, body too large, schema mismatch)
      return reply.status(e.statusCode).send({ error: e.message ?? "bad request", code: "invalid_argument" });
    }
    opts.log.error({ method: req.method, url: req.url, ...errorFields(err) }, "request failed");
    return reply.status(500).send({ error: e.message ?? "internal error", code: "internal" });
  });
  app.setNotFoundHandler((req, reply) => reply.status(404).send({ error: `no route for ${req.method} ${req.url}`, code: "not_found" }));

  app.get("/metrics", async (_req, reply) => {
    reply.header("content-type", opts.registry.contentType);
    return opts.registry.metrics();
  });
  return app;
}
