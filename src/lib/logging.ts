/**
 * Structured logging for every strata process.
 *
 * One pino logger per process, JSON lines on stderr (or a file), with the
 * component name on every line; per-tenant/timeline work uses child loggers
 * so each line carries `tenant_id` / `timeline_id`. STYLE.md: log an error
 * once, where it is handled, with its `cause` chain — `errorFields` renders
 * the chain so the whole story is on that one line.
 */
import { pino, type Logger, type DestinationStream } from "pino";

export type { Logger } from "pino";

export interface LoggerOptions {
  component: string;
  level?: string;
  /** Where lines go; default stderr (fd 2). */
  destination?: DestinationStream;
}

export function createLogger(opts: LoggerOptions): Logger {
  const level = opts.level ?? process.env.STRATA_LOG_LEVEL ?? "info";
  return pino(
    { level, base: { component: opts.component, pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime },
    opts.destination ?? pino.destination({ fd: 2, sync: false }),
  );
}

/** A logger that discards everything (tests and library defaults). */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}

/** Error message, code and the messages of its `cause` chain, for a log line. */
export function errorFields(err: unknown): { err: string; code?: string; causes?: string[] } {
  const message = err instanceof Error ? err.message : String(err);
  const code = typeof err === "object" && err !== null && "code" in err ? String((err as { code: unknown }).code) : undefined;
  const causes: string[] = [];
  let c: unknown = err instanceof Error ? err.cause : undefined;
  for (let depth = 0; c !== undefined && depth < 8; depth++) {
    causes.push(c instanceof Error ? c.message : String(c));
    c = c instanceof Error ? c.cause : undefined;
  }
  return { err: message, ...(code ? { code } : {}), ...(causes.length ? { causes } : {}) };
}
