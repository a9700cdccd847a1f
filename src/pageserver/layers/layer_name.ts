/**
 * Layer file names: the directory listing of a timeline is its layer map.
 *
 * Every immutable layer file is named after the rectangle of (key, LSN) space
 * it covers, so a timeline can rebuild its layer map at start-up from
 * `readdir` alone, without opening a file, and remote storage listings carry
 * the same information. Grammar (all hex upper-case, fixed width):
 *
 *   delta:  <keyStart:36>-<keyEnd:36>__<lsnStart:16>-<lsnEnd:16>[<gen>]
 *   image:  <keyStart:36>-<keyEnd:36>__<lsn:16>[<gen>]
 *   gen:    -v1-<generation:8>
 *
 * Ranges are half-open `[start, end)`. A key range end of KEY_END (one past
 * the last key) is written as 36 `F`s (see range.ts: the all-ones key is not
 * in the key space). An image layer at LSN `l` covers the LSN range
 * `[l, l + 1)`; its name carries only `l`.
 *
 * The generation suffix is reserved for remote storage (DESIGN §7): a
 * pageserver attaches a tenant under a generation number and names the
 * layers it creates with it, so two pageservers that both believe they own a
 * tenant never overwrite each other's objects. A name without the suffix has
 * no generation (local-only layers, and layers written before generations
 * were assigned). `v1` versions the suffix so it can evolve.
 *
 * Names are canonical: parse(format(n)) == n and format(parse(s)) == s; any
 * other spelling (lower-case hex, wrong widths, empty ranges) is rejected.
 *
 * Files being written carry the suffix `.tmp` (`<final name>.<random>.tmp`,
 * and the in-memory layer's `ephemeral-*.tmp`); after a crash they are
 * garbage and a timeline deletes them when it loads its directory.
 */
import { StrataError } from "../../lib/errors.js";
import { formatKey, type Key } from "../key.js";
import { lsn, LSN_MAX, type Lsn } from "../../lib/lsn.js";
import { decodeKeyRangeEnd, encodeKeyRangeEnd, formatKeyRange, formatLsnRange, type KeyRange, type LsnRange } from "./range.js";

export type LayerKind = "delta" | "image";

/** What a layer file's name says about it. */
export interface LayerDesc {
  readonly kind: LayerKind;
  readonly keyRange: KeyRange;
  /** Delta: the LSNs of its entries lie in this range. Image: [lsn, lsn + 1). */
  readonly lsnRange: LsnRange;
  /** Remote-storage generation (u32), absent for ungenerationed names. */
  readonly generation?: number;
}

const HEX36 = "([0-9A-F]{36})";
const HEX16 = "([0-9A-F]{16})";
const GEN = "(?:-v1-([0-9A-F]{8}))?";
const DELTA_RE = new RegExp(`^${HEX36}-${HEX36}__${HEX16}-${HEX16}${GEN}$`);
const IMAGE_RE = new RegExp(`^${HEX36}-${HEX36}__${HEX16}${GEN}$`);
const TEMP_SUFFIX = ".tmp";
const U32_MAX = 0xffffffff;

function hex16(l: bigint): string {
  return l.toString(16).toUpperCase().padStart(16, "0");
}

function hex8(n: number): string {
  return n.toString(16).toUpperCase().padStart(8, "0");
}

function checkDesc(d: LayerDesc): void {
  const { keyRange, lsnRange } = d;
  if (!(keyRange.start < keyRange.end)) {
    throw new StrataError("invalid_argument", `Layer key range ${formatKeyRange(keyRange)} is empty`);
  }
  if (!(lsnRange.start < lsnRange.end)) {
    throw new StrataError("invalid_argument", `Layer LSN range ${formatLsnRange(lsnRange)} is empty`);
  }
  if (d.kind === "image" && lsnRange.end !== lsnRange.start + 1n) {
    throw new StrataError("invalid_argument", `Image layer LSN range ${formatLsnRange(lsnRange)} must be [lsn, lsn+1)`);
  }
  if (d.generation !== undefined && (!Number.isInteger(d.generation) || d.generation < 0 || d.generation > U32_MAX)) {
    throw new StrataError("invalid_argument", `Layer generation ${d.generation} is not a 32-bit unsigned integer`);
  }
}

/** The canonical file name of a layer. */
export function formatLayerFileName(d: LayerDesc): string {
  checkDesc(d);
  const keys = `${formatKey(d.keyRange.start)}-${formatKey(encodeKeyRangeEnd(d.keyRange.end))}`;
  const lsns = d.kind === "delta" ? `${hex16(d.lsnRange.start)}-${hex16(d.lsnRange.end)}` : hex16(d.lsnRange.start);
  const gen = d.generation === undefined ? "" : `-v1-${hex8(d.generation)}`;
  return `${keys}__${lsns}${gen}`;
}

/** Parses a layer file name; undefined if `name` is not one (e.g. `metadata`, a temp file). */
export function tryParseLayerFileName(name: string): LayerDesc | undefined {
  try {
    return parseLayerFileName(name);
  } catch (e) {
    if (e instanceof StrataError) return undefined;
    throw e;
  }
}

/** Parses a layer file name, throwing invalid_argument with the reason if it is not a canonical one. */
export function parseLayerFileName(name: string): LayerDesc {
  const delta = DELTA_RE.exec(name);
  const image = delta ? null : IMAGE_RE.exec(name);
  const m = delta ?? image;
  if (!m) throw new StrataError("invalid_argument", `Cannot parse layer file name "${name}": does not match the delta or image grammar`);
  const keyRange = { start: BigInt("0x" + m[1]) as Key, end: decodeKeyRangeEnd(BigInt("0x" + m[2]) as Key) };
  let lsnRange: LsnRange;
  let genText: string | undefined;
  if (delta) {
    lsnRange = { start: lsn(BigInt("0x" + m[3])), end: lsn(BigInt("0x" + m[4])) };
    genText = m[5];
  } else {
    const at = lsn(BigInt("0x" + m[3]));
    if (at === LSN_MAX) throw new StrataError("invalid_argument", `Cannot parse layer file name "${name}": image LSN is the maximum LSN`);
    lsnRange = { start: at, end: (at + 1n) as Lsn };
    genText = m[4];
  }
  const desc: LayerDesc = {
    kind: delta ? "delta" : "image",
    keyRange,
    lsnRange,
    ...(genText === undefined ? {} : { generation: Number.parseInt(genText, 16) }),
  };
  try {
    checkDesc(desc);
  } catch (e) {
    throw new StrataError("invalid_argument", `Cannot parse layer file name "${name}": ${(e as Error).message}`, { cause: e });
  }
  return desc;
}

/** A name for a file being written next to its final name; removed as garbage after a crash. */
export function tempFileName(finalName: string): string {
  const rnd = Math.floor(Math.random() * 0x100000000);
  return `${finalName}.${hex8(rnd)}${TEMP_SUFFIX}`;
}

/** True for files that are leftovers of interrupted writes (safe to delete when loading a timeline). */
export function isTempFileName(name: string): boolean {
  return name.endsWith(TEMP_SUFFIX);
}

/** Same layer rectangle and generation. */
export function layerDescEquals(a: LayerDesc, b: LayerDesc): boolean {
  return (
    a.kind === b.kind &&
    a.keyRange.start === b.keyRange.start &&
    a.keyRange.end === b.keyRange.end &&
    a.lsnRange.start === b.lsnRange.start &&
    a.lsnRange.end === b.lsnRange.end &&
    a.generation === b.generation
  );
}
