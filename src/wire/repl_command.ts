/**
 * Replication command parser: what a strata walsender (the safekeeper's WAL
 * service) understands on a `replication=true` connection.
 *
 * PostgreSQL parses these with a flex scanner and a bison grammar
 * (src/backend/replication/repl_scanner.l, repl_gram.y). We accept the
 * physical-replication subset its clients actually send:
 *
 *   IDENTIFY_SYSTEM
 *   TIMELINE_HISTORY <tli>
 *   START_REPLICATION [SLOT <name>] [PHYSICAL] <X/Y> [TIMELINE <tli>]
 *   SHOW <name>                       -- pg_receivewal asks for wal_segment_size
 *   READ_REPLICATION_SLOT <name>      -- pg_receivewal --slot (PostgreSQL 15)
 *
 * each optionally followed by one ';'. Keywords are upper-case as in
 * PostgreSQL's scanner (it is case-sensitive); unquoted identifiers are folded
 * to lower case and double-quoted ones are taken literally (a doubled `""`
 * inside quotes is one quote). Numbers are unsigned decimals; positions are
 * `X/Y` with 1-8 hex digits per half.
 *
 * Errors: a known command we do not serve (BASE_BACKUP, logical replication,
 * slot creation, ...) is `StrataError("unsupported")` — a server maps it to
 * SQLSTATE 0A000; malformed syntax or anything unrecognised is
 * `SqlStateError("invalid_argument", "42601")` (syntax_error) with the offending
 * token and its character offset.
 *
 * The tokenizer is a single linear pass; the input is a Query message and so
 * already bounded by the parser's maximum message size.
 */

import { StrataError } from "../lib/errors.js";
import { parseLsn, type Lsn } from "../lib/lsn.js";
import { SqlStateError } from "./sqlstate.js";

export type ReplicationCommand =
  | { kind: "IDENTIFY_SYSTEM" }
  | { kind: "TIMELINE_HISTORY"; timeline: number }
  | { kind: "START_REPLICATION"; slot: string | null; startLsn: Lsn; timeline: number | null }
  | { kind: "SHOW"; name: string }
  | { kind: "READ_REPLICATION_SLOT"; slot: string };

type Token =
  | { t: "word"; text: string; offset: number } // bare word: keyword or identifier
  | { t: "ident"; text: string; offset: number } // double-quoted identifier
  | { t: "number"; text: string; offset: number }
  | { t: "lsn"; text: string; offset: number }
  | { t: "string"; text: string; offset: number } // single-quoted literal
  | { t: "punct"; text: string; offset: number };

/** Commands PostgreSQL's walsender knows that strata does not serve. */
const UNSUPPORTED_COMMANDS = new Set([
  "BASE_BACKUP",
  "CREATE_REPLICATION_SLOT",
  "DROP_REPLICATION_SLOT",
]);

/** PostgreSQL's NAMEDATALEN - 1: identifiers longer than this are truncated by the server; we refuse them. */
const MAX_IDENTIFIER_BYTES = 63;

/** SQLSTATE 42601 syntax_error, as PostgreSQL reports a malformed replication command. */
function syntaxError(sql: string, problem: string, cause?: unknown): StrataError {
  return new SqlStateError("invalid_argument", "42601", `Cannot parse replication command ${JSON.stringify(sql)}: ${problem}`, { cause });
}

const isSpace = (c: string) => c === " " || c === "\t" || c === "\n" || c === "\r" || c === "\f";
const isDigit = (c: string) => c >= "0" && c <= "9";
const isHex = (c: string) => isDigit(c) || (c >= "a" && c <= "f") || (c >= "A" && c <= "F");
const isIdentStart = (c: string) => (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || c === "_" || c >= "\u0080";
const isIdentCont = (c: string) => isIdentStart(c) || isDigit(c) || c === "$";

function tokenize(sql: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < sql.length) {
    const c = sql[i]!;
    const start = i;
    if (isSpace(c)) {
      i++;
    } else if (isHex(c)) {
      // A run of hex digits followed by '/' and hex digits is a position, else digits are a number,
      // else (letters) an identifier or keyword - the scanner's longest-match rule.
      let j = i;
      while (j < sql.length && isHex(sql[j]!)) j++;
      if (sql[j] === "/" && j + 1 < sql.length && isHex(sql[j + 1]!)) {
        let k = j + 1;
        while (k < sql.length && isHex(sql[k]!)) k++;
        tokens.push({ t: "lsn", text: sql.slice(i, k), offset: start });
        i = k;
      } else if (isDigit(c)) {
        let k = i;
        while (k < sql.length && isDigit(sql[k]!)) k++;
        tokens.push({ t: "number", text: sql.slice(i, k), offset: start });
        i = k;
      } else {
        let k = i;
        while (k < sql.length && isIdentCont(sql[k]!)) k++;
        tokens.push({ t: "word", text: sql.slice(i, k), offset: start });
        i = k;
      }
    } else if (isIdentStart(c)) {
      let k = i;
      while (k < sql.length && isIdentCont(sql[k]!)) k++;
      tokens.push({ t: "word", text: sql.slice(i, k), offset: start });
      i = k;
    } else if (c === '"' || c === "'") {
      let text = "";
      let k = i + 1;
      let closed = false;
      while (k < sql.length) {
        const d = sql[k]!;
        if (d === c) {
          if (sql[k + 1] === c) {
            text += c;
            k += 2;
            continue;
          }
          closed = true;
          k++;
          break;
        }
        text += d;
        k++;
      }
      if (!closed) throw syntaxError(sql, `unterminated quoted ${c === '"' ? "identifier" : "string"} at offset ${start}`);
      tokens.push({ t: c === '"' ? "ident" : "string", text, offset: start });
      i = k;
    } else {
      tokens.push({ t: "punct", text: c, offset: start });
      i++;
    }
  }
  return tokens;
}

class TokenStream {
  private pos = 0;
  constructor(
    private readonly sql: string,
    private readonly tokens: Token[],
  ) {}

  peek(): Token | undefined {
    return this.tokens[this.pos];
  }

  take(): Token | undefined {
    return this.tokens[this.pos++];
  }

  error(problem: string): StrataError {
    return syntaxError(this.sql, problem);
  }

  describe(tok: Token | undefined): string {
    return tok === undefined ? "end of input" : `${JSON.stringify(tok.text)} at offset ${tok.offset}`;
  }

  isKeyword(kw: string): boolean {
    const tok = this.peek();
    return tok !== undefined && tok.t === "word" && tok.text === kw;
  }

  identifier(what: string): string {
    const tok = this.take();
    if (tok === undefined || (tok.t !== "word" && tok.t !== "ident")) {
      throw this.error(`expected ${what}, found ${this.describe(tok)}`);
    }
    const name = tok.t === "word" ? tok.text.toLowerCase() : tok.text;
    if (name === "") throw this.error(`${what} at offset ${tok.offset} is empty`);
    if (Buffer.byteLength(name) > MAX_IDENTIFIER_BYTES) {
      throw this.error(`${what} at offset ${tok.offset} is longer than ${MAX_IDENTIFIER_BYTES} bytes`);
    }
    return name;
  }

  timeline(): number {
    const tok = this.take();
    if (tok === undefined || tok.t !== "number") throw this.error(`expected a timeline number, found ${this.describe(tok)}`);
    const v = Number(tok.text);
    if (!Number.isSafeInteger(v) || v < 1 || v > 0xffffffff) {
      throw this.error(`timeline ${tok.text} at offset ${tok.offset} is outside [1, 4294967295]`);
    }
    return v;
  }

  /** Accepts an optional ';' and requires the end of input. */
  finish(): void {
    const tok = this.peek();
    if (tok !== undefined && tok.t === "punct" && tok.text === ";") this.pos++;
    const rest = this.peek();
    if (rest !== undefined) throw this.error(`unexpected ${this.describe(rest)}`);
  }
}

/** Parses one replication command (the text of a Query message on a replication connection). */
export function parseReplicationCommand(sql: string): ReplicationCommand {
  const ts = new TokenStream(sql, tokenize(sql));
  const first = ts.take();
  if (first === undefined) throw ts.error("empty command");
  if (first.t !== "word") throw ts.error(`expected a command, found ${ts.describe(first)}`);
  let cmd: ReplicationCommand;
  switch (first.text) {
    case "IDENTIFY_SYSTEM":
      cmd = { kind: "IDENTIFY_SYSTEM" };
      break;
    case "TIMELINE_HISTORY":
      cmd = { kind: "TIMELINE_HISTORY", timeline: ts.timeline() };
      break;
    case "SHOW": {
      // var_name: IDENT ('.' IDENT)*
      let name = ts.identifier("a parameter name");
      while (ts.peek()?.t === "punct" && ts.peek()?.text === ".") {
        ts.take();
        name += "." + ts.identifier("a parameter name");
      }
      cmd = { kind: "SHOW", name };
      break;
    }
    case "READ_REPLICATION_SLOT":
      cmd = { kind: "READ_REPLICATION_SLOT", slot: ts.identifier("a slot name") };
      break;
    case "START_REPLICATION": {
      let slot: string | null = null;
      if (ts.isKeyword("SLOT")) {
        ts.take();
        slot = ts.identifier("a slot name");
      }
      if (ts.isKeyword("LOGICAL")) {
        throw new StrataError("unsupported", `Cannot serve ${JSON.stringify(sql)}: logical replication is not supported`);
      }
      if (ts.isKeyword("PHYSICAL")) ts.take();
      const pos = ts.take();
      if (pos === undefined || pos.t !== "lsn") throw ts.error(`expected a start position X/Y, found ${ts.describe(pos)}`);
      let startLsn: Lsn;
      try {
        startLsn = parseLsn(pos.text);
      } catch (e) {
        throw syntaxError(sql, `invalid start position ${JSON.stringify(pos.text)} at offset ${pos.offset}`, e);
      }
      let timeline: number | null = null;
      if (ts.isKeyword("TIMELINE")) {
        ts.take();
        timeline = ts.timeline();
      }
      cmd = { kind: "START_REPLICATION", slot, startLsn, timeline };
      break;
    }
    default:
      if (UNSUPPORTED_COMMANDS.has(first.text)) {
        throw new StrataError("unsupported", `Cannot serve ${JSON.stringify(sql)}: ${first.text} is not supported by strata`);
      }
      throw ts.error(
        `unknown command ${JSON.stringify(first.text)}; expected IDENTIFY_SYSTEM, TIMELINE_HISTORY, START_REPLICATION, SHOW or READ_REPLICATION_SLOT`,
      );
  }
  ts.finish();
  return cmd;
}
