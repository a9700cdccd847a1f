/**
 * Test harness: run PostgreSQL's `pg_waldump` and parse its output.
 *
 * pg_waldump is the reference our WAL decoder is compared against. Its
 * default (non-`-b`) line format in PG 15 is
 *
 *   rmgr: Heap        len (rec/tot):     54/    54, tx:        735, lsn: 0/01560C28,
 *   prev 0/01560BF0, desc: INSERT off 3 flags 0x00, blkref #0: rel 1663/5/16384 blk 0 FPW
 *
 * (one line). The first word of `desc` is the record type (rm_identify);
 * block references follow as `, blkref #N: rel S/D/R [fork F] blk B [FPW[ for
 * WAL verification]]`. pg_waldump stops with an error at the end of valid WAL
 * ("invalid record length", "invalid magic number"…); that is how it reports
 * the end, so stderr and the exit code are returned, not thrown.
 */
import { parseLsn, formatLsn, type Lsn } from "../../src/lib/lsn.js";
import { runTool } from "./tools.js";

export interface WaldumpBlock {
  spc: number;
  db: number;
  rel: number;
  /** 0 main, 1 fsm, 2 vm, 3 init. */
  fork: number;
  blk: number;
  /** Carries a full-page image (applied, or only for WAL verification). */
  fpw: boolean;
  /** True when the image is only for wal_consistency_checking (not applied by redo). */
  fpwForVerification: boolean;
}

export interface WaldumpRecord {
  rmgr: string;
  type: string;
  recLen: number;
  totalLen: number;
  xid: number;
  lsn: Lsn;
  prevLsn: Lsn;
  /** pg_waldump's description (type word included), without the block references. */
  desc: string;
  blocks: WaldumpBlock[];
}

const FORKS: Record<string, number> = { main: 0, fsm: 1, vm: 2, init: 3 };

const LINE =
  /^rmgr: (\S+)\s+len \(rec\/tot\):\s+(\d+)\/\s*(\d+), tx:\s+(\d+), lsn: ([0-9A-F]+\/[0-9A-F]+), prev ([0-9A-F]+\/[0-9A-F]+), desc: (.*)$/;
const BLOCK = /, blkref #(\d+): rel (\d+)\/(\d+)\/(\d+)(?: fork (\w+))? blk (\d+)( FPW( for WAL verification)?)?/g;

/** Parses one pg_waldump record line; undefined for lines that are not records. */
export function parseWaldumpLine(line: string): WaldumpRecord | undefined {
  const m = LINE.exec(line);
  if (!m) return undefined;
  const tail = m[7]!;
  const firstBlock = tail.indexOf(", blkref #");
  const desc = firstBlock >= 0 ? tail.slice(0, firstBlock) : tail;
  const blocks: WaldumpBlock[] = [];
  if (firstBlock >= 0) {
    for (const b of tail.slice(firstBlock).matchAll(BLOCK)) {
      const forkName = b[5] ?? "main";
      const fork = FORKS[forkName];
      if (fork === undefined) throw new Error(`unknown fork "${forkName}" in pg_waldump line: ${line}`);
      blocks.push({
        spc: Number(b[2]),
        db: Number(b[3]),
        rel: Number(b[4]),
        fork,
        blk: Number(b[6]),
        fpw: b[7] !== undefined,
        fpwForVerification: b[8] !== undefined,
      });
    }
  }
  return {
    rmgr: m[1]!,
    type: desc.split(" ")[0] ?? "",
    recLen: Number(m[2]),
    totalLen: Number(m[3]),
    xid: Number(m[4]),
    lsn: parseLsn(m[5]!),
    prevLsn: parseLsn(m[6]!),
    desc: desc.trimEnd(),
    blocks,
  };
}

export interface WaldumpResult {
  records: WaldumpRecord[];
  stderr: string;
  code: number;
}

/**
 * Runs pg_waldump over a WAL directory (with `start`) or one segment file,
 * returning every record it printed plus how it ended.
 */
export async function runPgWaldump(opts: { path: string; start?: Lsn; end?: Lsn; timeoutMs?: number }): Promise<WaldumpResult> {
  const args: string[] = [];
  if (opts.start !== undefined) args.push("-s", formatLsn(opts.start));
  if (opts.end !== undefined) args.push("-e", formatLsn(opts.end));
  if (opts.start !== undefined) args.push("-p", opts.path);
  else args.push(opts.path);
  const r = await runTool("pg_waldump", args, { timeoutMs: opts.timeoutMs ?? 300_000 });
  const records: WaldumpRecord[] = [];
  for (const line of r.stdout.split("\n")) {
    const rec = parseWaldumpLine(line);
    if (rec) records.push(rec);
  }
  return { records, stderr: r.stderr, code: r.code };
}

/** The records pg_waldump prints for a directory (from `start`) or a segment file. */
export async function pgWaldump(opts: { path: string; start?: Lsn; end?: Lsn }): Promise<WaldumpRecord[]> {
  return (await runPgWaldump(opts)).records;
}
