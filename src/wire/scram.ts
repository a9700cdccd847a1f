/**
 * SCRAM-SHA-256 (RFC 5802, RFC 7677) for libpq authentication, both sides.
 *
 * * Server side (`ScramServerSession`): verifies a client's proof against a
 *   stored verifier in PostgreSQL's `pg_authid.rolpassword` format,
 *   `SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>`,
 *   and produces the server signature so the client can verify us too. The
 *   password itself is never needed.
 * * Client side (`ScramClientSession`): authenticates to a PostgreSQL server
 *   and verifies the server's signature (a server that cannot produce it does
 *   not know the verifier and is refused).
 *
 * Exchange (no channel binding: strata's connections are not TLS, so only
 * SCRAM-SHA-256 is offered, never -PLUS):
 *   client-first  "n,,n=<user>,r=<cnonce>"      (libpq sends an empty user; the
 *                                                 startup packet's user counts)
 *   server-first  "r=<cnonce><snonce>,s=<salt>,i=<iterations>"
 *   client-final  "c=biws,r=<nonce>,p=<ClientProof>"
 *   server-final  "v=<ServerSignature>"
 * with SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, i),
 * ClientKey = HMAC(SaltedPassword, "Client Key"), StoredKey = H(ClientKey),
 * ServerKey = HMAC(SaltedPassword, "Server Key"),
 * AuthMessage = client-first-bare "," server-first "," client-final-without-proof,
 * ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage),
 * ServerSignature = HMAC(ServerKey, AuthMessage).
 *
 * SASLprep limitation: RFC 5802 normalizes passwords with SASLprep
 * (RFC 4013). PostgreSQL's implementation leaves pure-ASCII strings
 * unchanged, so for ASCII passwords "no normalization" is exactly right.
 * strata does not implement the Unicode tables: a non-ASCII password is
 * refused with `StrataError("unsupported")` rather than risking a different
 * key than PostgreSQL would derive.
 *
 * Malformed SCRAM messages from the peer are `StrataError("protocol_violation")`;
 * a wrong password on the server side is a normal `{ ok: false }` result (the
 * caller answers with SQLSTATE 28P01), on the client side a
 * `StrataError("invalid_argument")` when the server's signature is wrong.
 * Comparisons of secrets use `timingSafeEqual`.
 */

import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from "node:crypto";
import { StrataError } from "../lib/errors.js";

export const SCRAM_SHA_256 = "SCRAM-SHA-256";
/** PostgreSQL's SCRAM_DEFAULT_ITERATIONS. */
export const SCRAM_DEFAULT_ITERATIONS = 4096;
/** PostgreSQL's SCRAM_DEFAULT_SALT_LEN. */
export const SCRAM_DEFAULT_SALT_BYTES = 16;
/** PostgreSQL's SCRAM_RAW_NONCE_LEN: random bytes behind each side's nonce. */
const SCRAM_RAW_NONCE_BYTES = 18;
/** SHA-256 output: the length of every key, proof and signature. */
const SCRAM_KEY_BYTES = 32;
/**
 * Largest iteration count the client will compute for a server: PBKDF2 runs
 * synchronously, so a hostile or misconfigured server naming 2^31 iterations
 * would stall the process for minutes. 1M (250x PostgreSQL's default) costs
 * well under a second.
 */
export const SCRAM_MAX_ITERATIONS = 1_000_000;

export interface ScramVerifier {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function decodeB64(text: string, what: string, fail: (why: string) => StrataError): Buffer {
  if (!B64.test(text)) throw fail(`${what} is not valid base64`);
  return Buffer.from(text, "base64");
}

function hmac(key: Buffer, data: string | Buffer): Buffer {
  return createHmac("sha256", key).update(data).digest();
}

function sha256(data: Buffer): Buffer {
  return createHash("sha256").update(data).digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.allocUnsafe(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

/** SASLprep, limited to ASCII (see the module comment). */
export function saslPrepAscii(password: string): string {
  for (let i = 0; i < password.length; i++) {
    if (password.charCodeAt(i) > 0x7f) {
      throw new StrataError("unsupported", "SCRAM passwords with non-ASCII characters are not supported (strata implements SASLprep for ASCII only)");
    }
  }
  return password;
}

function saltedPassword(password: string, salt: Buffer, iterations: number): Buffer {
  return pbkdf2Sync(Buffer.from(saslPrepAscii(password), "utf8"), salt, iterations, SCRAM_KEY_BYTES, "sha256");
}

/** Derives a verifier from a password, as PostgreSQL does for `password_encryption = scram-sha-256`. */
export function makeScramVerifier(
  password: string,
  opts: { iterations?: number; salt?: Buffer } = {},
): ScramVerifier {
  const iterations = opts.iterations ?? SCRAM_DEFAULT_ITERATIONS;
  const salt = opts.salt ?? randomBytes(SCRAM_DEFAULT_SALT_BYTES);
  const salted = saltedPassword(password, salt, iterations);
  return {
    iterations,
    salt,
    storedKey: sha256(hmac(salted, "Client Key")),
    serverKey: hmac(salted, "Server Key"),
  };
}

/** Formats a verifier as PostgreSQL stores it in pg_authid.rolpassword. */
export function formatScramVerifier(v: ScramVerifier): string {
  return `${SCRAM_SHA_256}$${v.iterations}:${v.salt.toString("base64")}$${v.storedKey.toString("base64")}:${v.serverKey.toString("base64")}`;
}

/** Parses `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`. */
export function parseScramVerifier(text: string): ScramVerifier {
  const fail = (why: string) => new StrataError("invalid_argument", `Cannot parse SCRAM verifier: ${why}`);
  const m = /^SCRAM-SHA-256\$([0-9]+):([^$:]+)\$([^$:]+):([^$:]+)$/.exec(text);
  if (!m) throw fail(`expected "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"`);
  const iterations = Number(m[1]);
  if (!Number.isSafeInteger(iterations) || iterations < 1) throw fail(`iteration count ${m[1]} is invalid`);
  const salt = decodeB64(m[2]!, "salt", fail);
  const storedKey = decodeB64(m[3]!, "StoredKey", fail);
  const serverKey = decodeB64(m[4]!, "ServerKey", fail);
  if (salt.length === 0) throw fail("salt is empty");
  if (storedKey.length !== SCRAM_KEY_BYTES || serverKey.length !== SCRAM_KEY_BYTES) {
    throw fail(`StoredKey and ServerKey must be ${SCRAM_KEY_BYTES} bytes`);
  }
  return { iterations, salt, storedKey, serverKey };
}

/**
 * A stand-in verifier for a user that does not exist, so the exchange looks
 * the same as for a real user (same salt on every attempt, derived from the
 * user name and a per-server secret) and simply fails at the end. This is
 * what PostgreSQL does to avoid revealing which roles exist.
 */
export function mockScramVerifier(username: string, serverSecret: Buffer): ScramVerifier {
  const salt = hmac(serverSecret, `salt:${username}`).subarray(0, SCRAM_DEFAULT_SALT_BYTES);
  const key = hmac(serverSecret, `key:${username}`);
  return { iterations: SCRAM_DEFAULT_ITERATIONS, salt, storedKey: key, serverKey: key };
}

function randomNonce(): string {
  return randomBytes(SCRAM_RAW_NONCE_BYTES).toString("base64");
}

/** printable = %x21-2B / %x2D-7E (RFC 5802): the characters allowed in a nonce. */
function isPrintableNonce(s: string): boolean {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x21 || c > 0x7e || c === 0x2c) return false;
  }
  return true;
}

interface Attr {
  name: string;
  value: string;
}

/** Splits "a=v,b=w" into attributes; each must be a single letter followed by '='. */
function splitAttrs(text: string, fail: (why: string) => StrataError): Attr[] {
  return text.split(",").map((part) => {
    if (part.length < 2 || part[1] !== "=" || !/^[A-Za-z]$/.test(part[0]!)) {
      throw fail(`expected attribute "x=value", found ${JSON.stringify(part)}`);
    }
    return { name: part[0]!, value: part.slice(2) };
  });
}

function expectAttr(attrs: Attr[], index: number, name: string, fail: (why: string) => StrataError): string {
  const a = attrs[index];
  if (a === undefined) throw fail(`attribute "${name}" missing`);
  if (a.name !== name) throw fail(`expected attribute "${name}", found "${a.name}"`);
  return a.value;
}

function protocolFail(what: string): (why: string) => StrataError {
  return (why) => new StrataError("protocol_violation", `Malformed SCRAM ${what}: ${why}`);
}

export type ScramServerResult = { ok: true; serverFinal: Buffer } | { ok: false; reason: string };

/**
 * One server-side SCRAM exchange. Call `handleClientFirst` with the
 * SASLInitialResponse data and send the result in AuthenticationSASLContinue;
 * then `handleClientFinal` with the SASLResponse data: on success send
 * `serverFinal` in AuthenticationSASLFinal followed by AuthenticationOk.
 */
export class ScramServerSession {
  private state: "initial" | "sent-first" | "done" = "initial";
  private clientNonce = "";
  private serverNonce: string;
  private clientFirstBare = "";
  private serverFirst = "";
  private cbindFlag = "";
  /** True for a mock exchange (unknown user): the final step always fails. */
  private readonly mock: boolean;

  constructor(
    private readonly verifier: ScramVerifier,
    opts: { serverNonce?: string; mock?: boolean } = {},
  ) {
    this.serverNonce = opts.serverNonce ?? randomNonce();
    this.mock = opts.mock ?? false;
  }

  handleClientFirst(data: Buffer): Buffer {
    if (this.state !== "initial") throw new StrataError("protocol_violation", "SCRAM client-first-message received twice");
    const fail = protocolFail("client-first-message");
    const text = data.toString("utf8");
    // gs2-header: cbind-flag "," [authzid] ","
    const firstComma = text.indexOf(",");
    const secondComma = firstComma < 0 ? -1 : text.indexOf(",", firstComma + 1);
    if (secondComma < 0) throw fail("missing GS2 header");
    const flag = text.slice(0, firstComma);
    if (flag === "p" || flag.startsWith("p=")) {
      throw fail("the client requested channel binding, but SCRAM-SHA-256-PLUS was not offered");
    }
    if (flag !== "n" && flag !== "y") throw fail(`unexpected channel-binding flag ${JSON.stringify(flag)}`);
    if (secondComma !== firstComma + 1) {
      throw new StrataError("unsupported", "SCRAM authorization identities (a=...) are not supported");
    }
    this.cbindFlag = flag;
    this.clientFirstBare = text.slice(secondComma + 1);
    if (this.clientFirstBare.startsWith("m=")) {
      throw new StrataError("unsupported", "the client requires an unsupported SCRAM extension");
    }
    const attrs = splitAttrs(this.clientFirstBare, fail);
    expectAttr(attrs, 0, "n", fail); // user name: ignored, the startup packet's user counts
    this.clientNonce = expectAttr(attrs, 1, "r", fail);
    if (!isPrintableNonce(this.clientNonce)) throw fail("the client nonce is empty or has non-printable characters");
    // Further attributes are optional extensions, which we ignore as PostgreSQL does.
    this.serverFirst = `r=${this.clientNonce}${this.serverNonce},s=${this.verifier.salt.toString("base64")},i=${this.verifier.iterations}`;
    this.state = "sent-first";
    return Buffer.from(this.serverFirst, "utf8");
  }

  handleClientFinal(data: Buffer): ScramServerResult {
    if (this.state !== "sent-first") throw new StrataError("protocol_violation", "SCRAM client-final-message out of order");
    this.state = "done";
    const fail = protocolFail("client-final-message");
    const text = data.toString("utf8");
    const proofAt = text.lastIndexOf(",p=");
    if (proofAt < 0) throw fail("missing proof");
    const withoutProof = text.slice(0, proofAt);
    const attrs = splitAttrs(withoutProof, fail);
    const cbind = expectAttr(attrs, 0, "c", fail);
    const expectedCbind = this.cbindFlag === "n" ? "biws" : "eSws"; // base64 of "n,," / "y,,"
    if (cbind !== expectedCbind) throw fail(`channel-binding attribute ${JSON.stringify(cbind)} does not repeat the GS2 header`);
    const nonce = expectAttr(attrs, 1, "r", fail);
    const proof = decodeB64(text.slice(proofAt + 3), "proof", fail);
    if (proof.length !== SCRAM_KEY_BYTES) throw fail(`proof is ${proof.length} bytes, expected ${SCRAM_KEY_BYTES}`);
    const expectedNonce = Buffer.from(this.clientNonce + this.serverNonce, "utf8");
    const gotNonce = Buffer.from(nonce, "utf8");
    if (gotNonce.length !== expectedNonce.length || !timingSafeEqual(gotNonce, expectedNonce)) {
      throw fail("nonce does not match");
    }
    const authMessage = `${this.clientFirstBare},${this.serverFirst},${withoutProof}`;
    const clientSignature = hmac(this.verifier.storedKey, authMessage);
    const clientKey = xor(proof, clientSignature);
    if (!timingSafeEqual(sha256(clientKey), this.verifier.storedKey) || this.mock) {
      return { ok: false, reason: "SCRAM proof does not match the stored verifier" };
    }
    const serverSignature = hmac(this.verifier.serverKey, authMessage);
    return { ok: true, serverFinal: Buffer.from(`v=${serverSignature.toString("base64")}`, "utf8") };
  }
}

/**
 * One client-side SCRAM exchange: `clientFirst()` for SASLInitialResponse,
 * `handleServerFirst()` turns AuthenticationSASLContinue data into the
 * SASLResponse, `verifyServerFinal()` checks AuthenticationSASLFinal data.
 */
export class ScramClientSession {
  private readonly clientNonce: string;
  private clientFirstBare = "";
  private expectedServerSignature: Buffer | null = null;

  constructor(
    private readonly password: string,
    opts: { clientNonce?: string; username?: string } = {},
  ) {
    saslPrepAscii(password);
    this.clientNonce = opts.clientNonce ?? randomNonce();
    // libpq sends an empty user name; the server uses the startup packet's. ',' and '=' would need escaping.
    const user = (opts.username ?? "").replaceAll("=", "=3D").replaceAll(",", "=2C");
    this.clientFirstBare = `n=${user},r=${this.clientNonce}`;
  }

  clientFirst(): Buffer {
    return Buffer.from(`n,,${this.clientFirstBare}`, "utf8");
  }

  handleServerFirst(data: Buffer): Buffer {
    const fail = protocolFail("server-first-message");
    const serverFirst = data.toString("utf8");
    const attrs = splitAttrs(serverFirst, fail);
    if (attrs[0]?.name === "m") throw new StrataError("unsupported", "the server requires an unsupported SCRAM extension");
    const nonce = expectAttr(attrs, 0, "r", fail);
    const saltB64 = expectAttr(attrs, 1, "s", fail);
    const iterText = expectAttr(attrs, 2, "i", fail);
    if (!nonce.startsWith(this.clientNonce) || nonce.length === this.clientNonce.length || !isPrintableNonce(nonce)) {
      throw fail("the server nonce does not extend the client nonce");
    }
    const salt = decodeB64(saltB64, "salt", fail);
    if (salt.length === 0) throw fail("salt is empty");
    if (!/^[0-9]{1,10}$/.test(iterText)) throw fail(`iteration count ${JSON.stringify(iterText)} is invalid`);
    const iterations = Number(iterText);
    if (iterations < 1 || iterations > SCRAM_MAX_ITERATIONS) {
      throw fail(`iteration count ${iterations} is outside [1, ${SCRAM_MAX_ITERATIONS}]`);
    }
    const salted = saltedPassword(this.password, salt, iterations);
    const clientKey = hmac(salted, "Client Key");
    const storedKey = sha256(clientKey);
    const serverKey = hmac(salted, "Server Key");
    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`;
    const proof = xor(clientKey, hmac(storedKey, authMessage));
    this.expectedServerSignature = hmac(serverKey, authMessage);
    return Buffer.from(`${withoutProof},p=${proof.toString("base64")}`, "utf8");
  }

  /** Throws unless the server proved it knows the verifier. */
  verifyServerFinal(data: Buffer): void {
    const fail = protocolFail("server-final-message");
    if (this.expectedServerSignature === null) throw fail("received before the server-first-message");
    const attrs = splitAttrs(data.toString("utf8"), fail);
    const first = attrs[0]!;
    if (first.name === "e") throw new StrataError("invalid_argument", `SCRAM authentication failed on the server: ${first.value}`);
    const sig = decodeB64(expectAttr(attrs, 0, "v", fail), "server signature", fail);
    if (sig.length !== SCRAM_KEY_BYTES || !timingSafeEqual(sig, this.expectedServerSignature)) {
      throw new StrataError("invalid_argument", "SCRAM server signature is wrong: the server does not know the password");
    }
  }
}
