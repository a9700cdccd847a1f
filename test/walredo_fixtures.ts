/**
 * Shared fixtures for the walredo tests: synthetic pages and records built
 * with the project's own WAL record encoder (src/formats/wal/xlog_record.ts),
 * and a helper to start a helper process with a cached stub template.
 *
 * Synthetic records are exact PostgreSQL records (XLOG_FPI as log_newpage
 * writes it, a transaction commit, ...) so tests of the process and the pool
 * need no running server; the consistency tests use real WAL instead.
 */
import { join } from "node:path";
import { lsn, lsnAdd, type Lsn } from "../src/lib/lsn.js";
import { initPage, setPageLsn } from "../src/formats/page.js";
import { encodeRecord } from "../src/formats/wal/xlog_record.js";
import type { RelFileNode } from "../src/formats/wal/decoded_record.js";
import { redoRecordOf, type RedoRecord } from "../src/walredo/protocol.js";
import { WalRedoProcess, reclaimAfterCrash } from "../src/walredo/process.js";
import { createStubDir, defaultRunAsUser, defaultWalRedoDir, DEFAULT_PG_BIN_DIR, ensureStubTemplate, removeStubDir } from "../src/walredo/stub.js";

export const RM_XLOG_ID = 0;
export const RM_XACT_ID = 1;
export const RM_HEAP_ID = 10;
export const XLOG_FPI = 0xb0;
export const XLOG_FPI_FOR_HINT = 0xa0;

export const REL: RelFileNode = { spcOid: 1663, dbOid: 5, relNumber: 16384 };

/** A heap-looking page: `items` 32-byte tuples with line pointers, deterministic bytes. */
export function samplePage(seed: number, items = 10): Uint8Array {
  const page = initPage(0);
  const view = new DataView(page.buffer);
  let upper = 8192;
  for (let i = 0; i < items; i++) {
    upper -= 32;
    for (let b = 0; b < 32; b++) page[upper + b] = (seed * 31 + i * 7 + b) & 0xff;
    // ItemIdData: lp_off:15, lp_flags:2 (1 = LP_NORMAL), lp_len:15
    view.setUint32(24 + 4 * i, (upper & 0x7fff) | (1 << 15) | (32 << 17), true);
  }
  view.setUint16(12, 24 + 4 * items, true); // pd_lower
  view.setUint16(14, upper, true); // pd_upper
  return page;
}

/** The page without its hole (pd_lower..pd_upper), as XLogRecordAssemble stores it. */
function cutHole(page: Uint8Array): { bytes: Uint8Array; holeOffset: number; holeLength: number } {
  const view = new DataView(page.buffer, page.byteOffset, page.byteLength);
  const lower = view.getUint16(12, true);
  const upper = view.getUint16(14, true);
  const bytes = new Uint8Array(8192 - (upper - lower));
  bytes.set(page.subarray(0, lower), 0);
  bytes.set(page.subarray(upper), lower);
  return { bytes, holeOffset: lower, holeLength: upper - lower };
}

export interface SyntheticRecord extends RedoRecord {
  /** The page redo must produce. */
  readonly expected?: Uint8Array;
}

/** Places records one after another from `start`, as a WAL stream would. */
export class RecordLayout {
  private next: Lsn;
  private prev: Lsn = lsn(0);
  constructor(start = lsn(0x1000028)) {
    this.next = start;
  }
  place(raw: Uint8Array): RedoRecord {
    const at = this.next;
    const r = redoRecordOf({ lsn: at, endLsn: lsnAdd(at, raw.length), raw });
    this.prev = at;
    this.next = r.endLsn;
    return r;
  }
  get prevLsn(): Lsn {
    return this.prev;
  }
}

/** XLOG_FPI for one block, as log_newpage writes it (hole cut out, APPLY set). */
export function fpiRecord(
  layout: RecordLayout,
  page: Uint8Array,
  opts: { rel?: RelFileNode; forkNum?: number; blockNumber?: number; apply?: boolean; compression?: "none" | "pglz"; compressedBytes?: Uint8Array; info?: number } = {},
): SyntheticRecord {
  const hole = cutHole(page);
  const raw = encodeRecord({
    rmid: RM_XLOG_ID,
    info: opts.info ?? XLOG_FPI,
    prevLsn: layout.prevLsn,
    blocks: [
      {
        id: 0,
        forkNum: opts.forkNum ?? 0,
        rel: opts.rel ?? REL,
        blockNumber: opts.blockNumber ?? 0,
        image: opts.compressedBytes
          ? { bytes: opts.compressedBytes, holeOffset: hole.holeOffset, holeLength: hole.holeLength, apply: opts.apply ?? true, compression: opts.compression ?? "pglz" }
          : { ...hole, apply: opts.apply ?? true, compression: "none" },
      },
    ],
  });
  const r = layout.place(raw);
  const expected = new Uint8Array(page);
  setPageLsn(expected, r.endLsn);
  return { ...r, expected };
}

/** A transaction commit record (RM_XACT_ID, XLOG_XACT_COMMIT) with only a timestamp. */
export function commitRecord(layout: RecordLayout): RedoRecord {
  const mainData = new Uint8Array(8);
  new DataView(mainData.buffer).setBigInt64(0, 800000000000000n, true);
  return layout.place(encodeRecord({ rmid: RM_XACT_ID, info: 0x00, xid: 1000, prevLsn: layout.prevLsn, mainData }));
}

/** Flips one byte of a record's body (CRC no longer matches). */
export function corruptRecord(r: RedoRecord, offset = -1): RedoRecord {
  const raw = new Uint8Array(r.raw);
  const at = offset < 0 ? raw.length + offset : offset;
  raw[at] = raw[at]! ^ 0xff;
  return { ...r, raw };
}

export const WALREDO_TEST_DIR = join(defaultWalRedoDir(), "tests");

export interface TestProcess {
  readonly proc: WalRedoProcess;
  /** Closes the helper and removes its stub directory. */
  dispose(): Promise<void>;
}

/** A stub directory from the cached template (removed by the caller). */
export async function makeTestStub(dataChecksums = false): Promise<string> {
  const runAs = defaultRunAsUser();
  const template = await ensureStubTemplate({ dataChecksums, cacheDir: defaultWalRedoDir(), pgBinDir: DEFAULT_PG_BIN_DIR, runAs });
  return createStubDir(template, WALREDO_TEST_DIR, runAs);
}

/** Starts one helper with its own stub (cached template). */
export async function startTestProcess(opts: { dataChecksums?: boolean; testHooks?: boolean; extensionPath?: string } = {}): Promise<TestProcess> {
  const stubDir = await makeTestStub(opts.dataChecksums ?? false);
  try {
    const proc = await WalRedoProcess.start({
      stubDir,
      dataChecksums: opts.dataChecksums ?? false,
      runAs: defaultRunAsUser(),
      testHooks: opts.testHooks ?? false,
      ...(opts.extensionPath ? { extensionPath: opts.extensionPath } : {}),
    });
    return {
      proc,
      async dispose() {
        const info = await proc.close();
        if (info.code !== 0) await reclaimAfterCrash({ stubDir, dataChecksums: opts.dataChecksums ?? false, runAs: defaultRunAsUser() });
        await removeStubDir(stubDir);
      },
    };
  } catch (e) {
    await removeStubDir(stubDir);
    throw e;
  }
}
