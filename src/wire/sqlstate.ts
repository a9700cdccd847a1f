/**
 * Mapping strata's operating errors to PostgreSQL SQLSTATEs for
 * ErrorResponse messages.
 *
 * STYLE.md rule 4: bad input is a `StrataError` with a code, and the libpq
 * layer turns the code into a SQLSTATE. `sqlstateForError` is that table.
 * Where one code covers several PostgreSQL conditions (a syntax error and an
 * invalid parameter are both `invalid_argument`), the thrower uses
 * `SqlStateError` to name the exact SQLSTATE; any error carrying a string
 * `sqlstate` property (this class, or the client's `PgServerError` when a
 * server relays a remote error) keeps it.
 */

import { StrataError, type ErrorCode } from "../lib/errors.js";
import type { ErrorFields } from "./messages.js";

/** A StrataError that names its SQLSTATE explicitly. */
export class SqlStateError extends StrataError {
  override name = "SqlStateError";
  constructor(
    code: ErrorCode,
    readonly sqlstate: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
  }
}

/** The SQLSTATE a server reports for an operating error of each code. */
export function sqlstateForError(code: ErrorCode): string {
  switch (code) {
    case "protocol_violation":
      return "08P01";
    case "invalid_argument":
      return "22023"; // invalid_parameter_value
    case "unsupported":
      return "0A000"; // feature_not_supported
    case "not_found":
      return "42704"; // undefined_object
    case "timeout":
    case "cancelled":
      return "57014"; // query_canceled
    case "io_error":
      return "58030"; // io_error
    case "corrupt_data":
    case "truncated":
      return "XX001"; // data_corrupted
    case "unavailable":
      return "53000"; // insufficient_resources: retry later
    case "internal":
      return "XX000"; // internal_error
    default:
      return "XX000"; // a code added after this table was written
  }
}

/** The SQLSTATE for any thrown value: an explicit `sqlstate`, else by StrataError code, else XX000. */
export function sqlstateOf(err: unknown): string {
  const explicit = (err as { sqlstate?: unknown } | null)?.sqlstate;
  if (typeof explicit === "string" && /^[0-9A-Z]{5}$/.test(explicit)) return explicit;
  if (err instanceof StrataError) return sqlstateForError(err.code);
  return "XX000";
}

/** ErrorResponse fields for an error. */
export function errorFieldsFor(err: unknown, severity: "ERROR" | "FATAL" = "ERROR"): ErrorFields {
  const message = err instanceof Error ? err.message : String(err);
  return { severity, severityNonLocalized: severity, code: sqlstateOf(err), message };
}
