/**
 * Operating errors: bad input from outside (network, disk, user).
 *
 * STYLE.md distinguishes two kinds of failure. A broken internal invariant is
 * an `assert` and a crash. Bad bytes from outside — a malformed message, a CRC
 * mismatch, a corrupt layer file, an unknown record — are *operating errors*:
 * a `StrataError` with a stable `code` that the HTTP layer maps to a status
 * and the libpq layer to a SQLSTATE, after which the process keeps serving.
 *
 * Context is chained with the standard `cause` option, never by string
 * concatenation of nested messages, so logs can show the whole chain once.
 */

export type ErrorCode =
  | "invalid_argument" // a caller passed a value that cannot be used
  | "corrupt_data" // bytes failed a checksum or a structural check
  | "truncated" // input ended in the middle of a structure
  | "unsupported" // valid input we do not handle (e.g. a different PG version)
  | "not_found"
  | "protocol_violation" // a peer broke the wire protocol
  | "io_error"
  | "timeout"
  | "cancelled"
  | "unavailable" // overloaded (e.g. a full request queue): retry later
  | "internal";

export class StrataError extends Error {
  override name = "StrataError";
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** Internal invariant check: failure means a bug in strata, not bad input. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}
