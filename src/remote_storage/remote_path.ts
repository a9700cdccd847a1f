/**
 * RemotePath and RemotePrefix — the names of objects in remote storage.
 *
 * Every backend resolves these *relative* names under its configured root (a
 * directory, an S3 key prefix, an Azure container + prefix), so the layers
 * above never see bucket names, absolute paths or URL quirks, and an object
 * written through one backend has the same name in every other.
 *
 * A RemotePath names one object: "/"-separated segments, no leading "/", no
 * trailing "/", no empty segment, no "." or ".." segment, no NUL and no "\".
 * Those rules keep one name mapping to exactly one file on the local backend
 * (no escape from the root, no two spellings of one key) and avoid names that
 * Azure Blob rejects or silently changes (a trailing "/" or ".").
 *
 * A RemotePrefix is what `list` filters by. Like S3 it is a plain string
 * prefix of keys, not a directory: "tenants/ab" matches "tenants/abc/x". It may
 * be empty (everything) and may end in "/" (one "directory"); apart from that
 * it follows the path rules. The common prefixes that a delimited listing
 * returns are RemotePrefix values ending in "/".
 *
 * Both are branded strings: they compare with `===`, work as Map keys and print
 * as themselves. Text from outside goes through `parse…`, which throws
 * StrataError("invalid_argument") with the reason.
 */
import { StrataError } from "../lib/errors.js";

export type RemotePath = string & { readonly __brand: "RemotePath" };
export type RemotePrefix = string & { readonly __brand: "RemotePrefix" };

/**
 * Longest accepted path in UTF-8 bytes. S3 caps keys at 1024 bytes and the
 * backend's own prefix comes on top, so we keep room for a 200-byte prefix.
 */
export const MAX_REMOTE_PATH_BYTES = 800;

function pathProblem(text: string, allowTrailingSlash: boolean): string | null {
  if (Buffer.byteLength(text, "utf8") > MAX_REMOTE_PATH_BYTES) return `longer than ${MAX_REMOTE_PATH_BYTES} bytes`;
  if (text.startsWith("/")) return 'it starts with "/" (paths are relative)';
  if (text.includes("\\")) return 'it contains "\\"';
  if (text.includes("\0")) return "it contains a NUL character";
  const body = allowTrailingSlash && text.endsWith("/") ? text.slice(0, -1) : text;
  if (body.length === 0) return allowTrailingSlash && text.length > 0 ? 'it is only "/"' : null;
  const segments = body.split("/");
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i] ?? "";
    if (seg === "") return `segment ${i + 1} is empty`;
    if (seg === "." || seg === "..") return `segment ${i + 1} is "${seg}"`;
  }
  return null;
}

/** Validates an object name. */
export function parseRemotePath(text: string): RemotePath {
  if (text.length === 0) throw new StrataError("invalid_argument", "Invalid remote path \"\": it is empty");
  if (text.endsWith("/")) throw new StrataError("invalid_argument", `Invalid remote path "${text}": it ends with "/"`);
  const problem = pathProblem(text, false);
  if (problem !== null) throw new StrataError("invalid_argument", `Invalid remote path "${text}": ${problem}`);
  return text as RemotePath;
}

/** Validates a listing prefix ("" and a trailing "/" are allowed). */
export function parseRemotePrefix(text: string): RemotePrefix {
  const problem = pathProblem(text, true);
  if (problem !== null) throw new StrataError("invalid_argument", `Invalid remote prefix "${text}": ${problem}`);
  return text as RemotePrefix;
}

/** Joins segments (each may itself contain "/") into a validated path. */
export function remotePath(...segments: string[]): RemotePath {
  return parseRemotePath(segments.join("/"));
}

/** The prefix that lists everything "inside" `path` as a directory: `path + "/"`. */
export function dirPrefix(path: RemotePath | RemotePrefix | ""): RemotePrefix {
  if (path === "" || path.endsWith("/")) return path as RemotePrefix;
  return `${path}/` as RemotePrefix;
}

/** The last segment of a path (its "file name"). */
export function baseName(path: RemotePath): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? path : path.slice(i + 1);
}

/**
 * Normalizes a backend's configured root prefix ("a/b", "/a/b/", "" …) to the
 * form joined in front of every key: "" or "a/b/". Validated like a prefix.
 */
export function normalizeRootPrefix(text: string | undefined): string {
  const trimmed = (text ?? "").replace(/^\/+/, "").replace(/\/+$/, "");
  if (trimmed === "") return "";
  const problem = pathProblem(trimmed, false);
  if (problem !== null) throw new StrataError("invalid_argument", `Invalid storage prefix "${text}": ${problem}`);
  return `${trimmed}/`;
}

/**
 * Compares two keys the way S3 orders them: by their UTF-8 bytes. JavaScript's
 * `<` compares UTF-16 code units, which differs for characters above U+FFFF.
 */
export function compareKeys(a: string, b: string): number {
  if (a === b) return 0;
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}
