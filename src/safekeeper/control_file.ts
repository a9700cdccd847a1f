/**
 * The safekeeper's per-timeline control file: everything about a timeline
 * that must survive a restart, except the WAL itself.
 *
 * Contents (TimelinePersistentState): identity (tenant, timeline, the
 * compute's system id, PG version, WAL segment size, the LSN the timeline's
 * WAL starts at), consensus state (the current term this safekeeper has
 * promised, the term history of its WAL) and progress LSNs (a flush hint for
 * WAL recovery, commit, backup, the pageserver's remote-consistent LSN, the
 * peer horizon). DESIGN.md §2–3 say who advances each.
 *
 * File format (little-endian):
 *
 *   0   u32  magic 0x46434B53 (the file starts with ASCII "SKCF")
 *   4   u32  format version (CONTROL_FILE_FORMAT_VERSION)
 *   8   u32  body length N
 *   12  N    body (layout per version, below)
 *   12+N u32 CRC-32C of bytes [0, 12+N)
 *
 * Body, version 1:
 *   0 tenant id (16)   16 timeline id (16)   32 u64 system id
 *   40 u32 PG version (server_version_num, e.g. 150014)   44 u32 WAL segment size
 *   48 u64 timeline start LSN   56 u64 term   64 u64 flush LSN hint
 *   72 u64 commit LSN   80 u64 backup LSN   88 u64 remote-consistent LSN
 *   96 u64 peer horizon LSN   104 term history (u32 count, count × (u64 term, u64 LSN))
 *
 * Upgrades: the version is read before anything else; each known version has
 * its own body decoder producing the current in-memory state (filling new
 * fields with safe defaults), and the next store writes the current version.
 * An unknown version is StrataError("unsupported"): written by a newer
 * strata, so refusing is safer than guessing.
 *
 * Durability: `storeControlFile` uses writeFileAtomic (temp file, write,
 * fsync, rename, fsync directory), so after a crash the file holds the old
 * state or the new one. A file that fails any check (magic, length, CRC,
 * body structure) is StrataError("corrupt_data") naming the path: it is
 * never silently replaced, because losing the term would let this
 * safekeeper vote twice in one term.
 */
import { crc32c } from "../formats/crc32c.js";
import { isValidWalSegSize } from "../formats/wal/xlog_page.js";
import { StrataError } from "../lib/errors.js";
import { tenantIdFromBytes, tenantIdToBytes, timelineIdFromBytes, timelineIdToBytes, type TenantId, type TimelineId } from "../lib/id.js";
import { formatLsn, type Lsn } from "../lib/lsn.js";
import { writeFileAtomic, type DurableFS } from "./durable_fs.js";
import {
  decodeTermHistory,
  encodeTermHistory,
  lastTerm,
  MAX_TERM_HISTORY_ENTRIES,
  TERM_SWITCH_BYTES,
  termHistoryEncodedBytes,
  termHistoryProblem,
  type Term,
  type TermHistory,
} from "./term_history.js";

export const CONTROL_FILE_NAME = "safekeeper.control";
/** ASCII "SKCF" read as a little-endian u32. */
export const CONTROL_FILE_MAGIC = 0x46434b53;
export const CONTROL_FILE_FORMAT_VERSION = 1;

const ENVELOPE_HEADER_BYTES = 12;
const CRC_BYTES = 4;
const V1_FIXED_BODY_BYTES = 104;
/** Largest valid file: the fixed parts plus a term history at its cap. Bigger means garbage; we do not read it all. */
export const MAX_CONTROL_FILE_BYTES = ENVELOPE_HEADER_BYTES + V1_FIXED_BODY_BYTES + 4 + MAX_TERM_HISTORY_ENTRIES * TERM_SWITCH_BYTES + CRC_BYTES;

export interface TimelinePersistentState {
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  /** The compute cluster's system identifier (pg_control, long WAL page headers). */
  readonly systemId: bigint;
  /** PostgreSQL server_version_num of the compute (150000..159999 for PG 15). */
  readonly pgVersion: number;
  readonly walSegSizeBytes: number;
  /** First LSN of the timeline's WAL (a segment start or a record boundary). */
  readonly timelineStartLsn: Lsn;
  /** The highest term this safekeeper has voted for / accepted; it refuses WAL of lower terms. */
  readonly term: Term;
  /** Term switches of the WAL this safekeeper holds. */
  readonly termHistory: TermHistory;
  /**
   * Flush LSN hint: the start of a complete WAL record at or below the flush
   * LSN when this was stored. WAL recovery on open decodes from here to find
   * the true end of WAL (WalStorage.recoveryStartLsn provides it).
   */
  readonly flushLsnHint: Lsn;
  /** WAL below this is durable on a quorum. */
  readonly commitLsn: Lsn;
  /** WAL below this is offloaded to remote storage. */
  readonly backupLsn: Lsn;
  /** WAL below this is persisted remotely by the pageserver (its feedback). */
  readonly remoteConsistentLsn: Lsn;
  /** Lowest flush LSN among peers known to this safekeeper; WAL below it exists on every peer. */
  readonly peerHorizonLsn: Lsn;
}

/** What makes a state impossible to store or load, or undefined when it is sound. */
export function controlStateProblem(s: TimelinePersistentState): string | undefined {
  if (!isValidWalSegSize(s.walSegSizeBytes)) return `invalid WAL segment size ${s.walSegSizeBytes}`;
  if (!Number.isInteger(s.pgVersion) || s.pgVersion < 0 || s.pgVersion > 0xffffffff) return `invalid PG version ${s.pgVersion}`;
  if (s.systemId < 0n || s.systemId >= 1n << 64n) return `system id ${s.systemId} outside u64`;
  const historyProblem = termHistoryProblem(s.termHistory);
  if (historyProblem !== undefined) return historyProblem;
  if (s.term < lastTerm(s.termHistory)) return `term ${s.term} is below the last term ${lastTerm(s.termHistory)} of the term history`;
  if (s.flushLsnHint < s.timelineStartLsn) {
    return `flush LSN hint ${formatLsn(s.flushLsnHint)} is before the timeline start ${formatLsn(s.timelineStartLsn)}`;
  }
  return undefined;
}

/** The file's bytes for `state` (current format version). A state that cannot be valid is invalid_argument. */
export function encodeControlFile(state: TimelinePersistentState): Uint8Array {
  const problem = controlStateProblem(state);
  if (problem !== undefined) throw new StrataError("invalid_argument", `Cannot store control file state: ${problem}`);
  const bodyBytes = V1_FIXED_BODY_BYTES + termHistoryEncodedBytes(state.termHistory);
  const out = new Uint8Array(ENVELOPE_HEADER_BYTES + bodyBytes + CRC_BYTES);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, CONTROL_FILE_MAGIC, true);
  dv.setUint32(4, CONTROL_FILE_FORMAT_VERSION, true);
  dv.setUint32(8, bodyBytes, true);
  const b = ENVELOPE_HEADER_BYTES;
  out.set(tenantIdToBytes(state.tenantId), b);
  out.set(timelineIdToBytes(state.timelineId), b + 16);
  dv.setBigUint64(b + 32, state.systemId, true);
  dv.setUint32(b + 40, state.pgVersion, true);
  dv.setUint32(b + 44, state.walSegSizeBytes, true);
  dv.setBigUint64(b + 48, state.timelineStartLsn, true);
  dv.setBigUint64(b + 56, state.term, true);
  dv.setBigUint64(b + 64, state.flushLsnHint, true);
  dv.setBigUint64(b + 72, state.commitLsn, true);
  dv.setBigUint64(b + 80, state.backupLsn, true);
  dv.setBigUint64(b + 88, state.remoteConsistentLsn, true);
  dv.setBigUint64(b + 96, state.peerHorizonLsn, true);
  const end = encodeTermHistory(state.termHistory, out, b + V1_FIXED_BODY_BYTES);
  dv.setUint32(end, crc32c(out.subarray(0, end)), true);
  return out;
}

/**
 * Parses and checks a control file's bytes. `path` names the file in every
 * error: corrupt_data for a bad magic, length, CRC or body; unsupported for
 * a format version this build does not know.
 */
export function decodeControlFile(bytes: Uint8Array, path: string): TimelinePersistentState {
  const corrupt = (what: string): never => {
    throw new StrataError("corrupt_data", `Control file ${path} is corrupt: ${what}`);
  };
  if (bytes.length < ENVELOPE_HEADER_BYTES + CRC_BYTES) corrupt(`${bytes.length} bytes, shorter than the ${ENVELOPE_HEADER_BYTES + CRC_BYTES}-byte envelope`);
  if (bytes.length > MAX_CONTROL_FILE_BYTES) corrupt(`${bytes.length} bytes, larger than the largest valid file (${MAX_CONTROL_FILE_BYTES})`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = dv.getUint32(0, true);
  if (magic !== CONTROL_FILE_MAGIC) corrupt(`magic 0x${magic.toString(16)} at offset 0, expected 0x${CONTROL_FILE_MAGIC.toString(16)}`);
  const bodyBytes = dv.getUint32(8, true);
  if (ENVELOPE_HEADER_BYTES + bodyBytes + CRC_BYTES !== bytes.length) {
    corrupt(`body length ${bodyBytes} at offset 8 does not match the file size ${bytes.length}`);
  }
  const crcAt = ENVELOPE_HEADER_BYTES + bodyBytes;
  const stored = dv.getUint32(crcAt, true);
  const computed = crc32c(bytes.subarray(0, crcAt));
  if (stored !== computed) corrupt(`CRC-32C 0x${stored.toString(16)} at offset ${crcAt}, computed 0x${computed.toString(16)}`);
  // Only now trust the version: a torn file must be reported as corrupt, not as from the future.
  const version = dv.getUint32(4, true);
  const body = bytes.subarray(ENVELOPE_HEADER_BYTES, crcAt);
  let state: TimelinePersistentState;
  switch (version) {
    case 1:
      state = decodeBodyV1(body, path);
      break;
    default:
      throw new StrataError(
        "unsupported",
        `Control file ${path} has format version ${version}; this build reads versions up to ${CONTROL_FILE_FORMAT_VERSION}`,
      );
  }
  const problem = controlStateProblem(state);
  if (problem !== undefined) corrupt(problem);
  return state;
}

function decodeBodyV1(body: Uint8Array, path: string): TimelinePersistentState {
  if (body.length < V1_FIXED_BODY_BYTES + 4) {
    throw new StrataError("corrupt_data", `Control file ${path} is corrupt: version 1 body of ${body.length} bytes is shorter than ${V1_FIXED_BODY_BYTES + 4}`);
  }
  const dv = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const u64 = (o: number) => dv.getBigUint64(o, true);
  const lsnAt = (o: number) => u64(o) as Lsn;
  const { history, end } = decodeTermHistory(body, V1_FIXED_BODY_BYTES, `Control file ${path}`);
  if (end !== body.length) {
    throw new StrataError("corrupt_data", `Control file ${path} is corrupt: ${body.length - end} unexpected bytes after the term history`);
  }
  return {
    tenantId: tenantIdFromBytes(body.subarray(0, 16)),
    timelineId: timelineIdFromBytes(body.subarray(16, 32)),
    systemId: u64(32),
    pgVersion: dv.getUint32(40, true),
    walSegSizeBytes: dv.getUint32(44, true),
    timelineStartLsn: lsnAt(48),
    term: u64(56) as Term,
    flushLsnHint: lsnAt(64),
    commitLsn: lsnAt(72),
    backupLsn: lsnAt(80),
    remoteConsistentLsn: lsnAt(88),
    peerHorizonLsn: lsnAt(96),
    termHistory: history,
  };
}

/** Reads and checks the control file at `path` (not_found when missing). */
export async function loadControlFile(fs: DurableFS, path: string): Promise<TimelinePersistentState> {
  let bytes: Uint8Array;
  try {
    bytes = await fs.readFile(path);
  } catch (e) {
    const code = (e as { code?: unknown }).code === "ENOENT" ? "not_found" : "io_error";
    throw new StrataError(code, `Cannot read control file ${path}`, { cause: e });
  }
  return decodeControlFile(bytes, path);
}

/** Durably replaces the control file at `path` with `state` (old or new after a crash, never a mix). */
export async function storeControlFile(fs: DurableFS, path: string, state: TimelinePersistentState): Promise<void> {
  const bytes = encodeControlFile(state);
  try {
    await writeFileAtomic(fs, path, bytes);
  } catch (e) {
    throw new StrataError("io_error", `Cannot store control file ${path}`, { cause: e });
  }
}

/**
 * The control file of one timeline with its current state in memory. The
 * in-memory state changes only after the new state is durable, so what
 * callers read is always what a restart would find.
 */
export class ControlFile {
  private current: TimelinePersistentState;
  private encoded: Uint8Array;
  /** Serializes stores: each one is durable before the next starts. */
  private chain: Promise<void> = Promise.resolve();

  private constructor(
    private readonly fs: DurableFS,
    readonly path: string,
    state: TimelinePersistentState,
    encoded: Uint8Array,
  ) {
    this.current = state;
    this.encoded = encoded;
  }

  /** Writes a new control file (replacing any) and returns it. */
  static async create(fs: DurableFS, path: string, state: TimelinePersistentState): Promise<ControlFile> {
    await storeControlFile(fs, path, state);
    return new ControlFile(fs, path, state, encodeControlFile(state));
  }

  static async load(fs: DurableFS, path: string): Promise<ControlFile> {
    const state = await loadControlFile(fs, path);
    return new ControlFile(fs, path, state, encodeControlFile(state));
  }

  get state(): TimelinePersistentState {
    return this.current;
  }

  /**
   * Makes `next` (or `update(current)`) durable, then current. Returns false
   * when nothing changed (no I/O). Identity fields may not change.
   */
  persist(next: TimelinePersistentState | ((s: TimelinePersistentState) => TimelinePersistentState)): Promise<boolean> {
    const run = async (): Promise<boolean> => {
      const state = typeof next === "function" ? next(this.current) : next;
      if (state.tenantId !== this.current.tenantId || state.timelineId !== this.current.timelineId) {
        throw new StrataError("invalid_argument", `Control file ${this.path}: tenant and timeline ids cannot change`);
      }
      const bytes = encodeControlFile(state);
      if (Buffer.compare(bytes, this.encoded) === 0) return false;
      await writeFileAtomic(this.fs, this.path, bytes).catch((e: unknown) => {
        throw new StrataError("io_error", `Cannot store control file ${this.path}`, { cause: e });
      });
      this.current = state;
      this.encoded = bytes;
      return true;
    };
    const p = this.chain.then(run);
    this.chain = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  }
}
