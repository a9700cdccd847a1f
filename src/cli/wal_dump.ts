/**
 * `strata wal dump`: list the records in WAL segment files, like pg_waldump.
 *
 * One line per record with the same columns pg_waldump prints (rmgr, record
 * and total length, xid, LSN, prev-link, record type, block references with
 * full-page-image markers), plus each record's end LSN and the compression
 * method of its images; or one JSON object per line with `--json` for
 * scripts and tests. Record bodies are not described (that is the rmgr
 * parsers' job); the type name is the rmgr's rm_identify name.
 *
 * Exit status: 0 when the WAL ran out normally (the end of the files, the
 * zero-filled tail of the last written page — what a live server's `pg_wal`
 * ends with —, or `--end`); 1 on invalid WAL (CRC mismatch, bad page header,
 * a record cut short by a truncated file…), after printing every record
 * before it and the error, with its LSN, on stderr. Output is written in
 * batches with back-pressure; a closed pipe (`| head`) ends quietly.
 */
import type { Command } from "commander";
import { StrataError } from "../lib/errors.js";
import { formatLsn, parseLsn, type Lsn } from "../lib/lsn.js";
import type { DecodedRecord } from "../formats/wal/decoded_record.js";
import { FORK_NAMES, recordTypeName, rmgrName } from "../formats/wal/rmgr_names.js";
import { WalFileReader } from "../formats/wal/wal_files.js";
import { WalDecodeError } from "../formats/wal/xlog_record.js";

/** Bytes of output gathered before one write to stdout. */
const OUTPUT_BATCH_BYTES = 64 * 1024;

interface DumpOptions {
  start?: string;
  end?: string;
  json?: boolean;
  timeline?: string;
}

/** pg_waldump's `%X/%08X`. */
function lsnPadded(l: Lsn): string {
  const hi = (l >> 32n).toString(16).toUpperCase();
  const lo = (l & 0xffffffffn).toString(16).toUpperCase().padStart(8, "0");
  return `${hi}/${lo}`;
}

function imageBytes(r: DecodedRecord): number {
  let n = 0;
  for (const b of r.blocks) if (b.image) n += b.image.bytes.length;
  return n;
}

/** One pg_waldump-style line. */
export function formatRecordLine(r: DecodedRecord): string {
  const fpiLen = imageBytes(r);
  let line =
    `rmgr: ${rmgrName(r.rmid).padEnd(11)} len (rec/tot): ${String(r.totalLength - fpiLen).padStart(6)}/${String(r.totalLength).padStart(6)}, ` +
    `tx: ${String(r.xid).padStart(10)}, lsn: ${lsnPadded(r.lsn)}, prev ${lsnPadded(r.prevLsn)}, end ${lsnPadded(r.endLsn)}, ` +
    `desc: ${recordTypeName(r.rmid, r.info)}`;
  for (const b of r.blocks) {
    const fork = b.forkNum === 0 ? "" : ` fork ${FORK_NAMES[b.forkNum] ?? String(b.forkNum)}`;
    line += `, blkref #${b.id}: rel ${b.rel.spcOid}/${b.rel.dbOid}/${b.rel.relNumber}${fork} blk ${b.blockNumber}`;
    if (b.image) {
      line += b.image.apply ? " FPW" : " FPW for WAL verification";
      if (b.image.compression !== "none") line += ` (${b.image.compression})`;
    }
  }
  return line;
}

/** The `--json` object for one record. */
export function recordToJson(r: DecodedRecord): Record<string, unknown> {
  return {
    lsn: formatLsn(r.lsn),
    end_lsn: formatLsn(r.endLsn),
    prev_lsn: formatLsn(r.prevLsn),
    rmgr: rmgrName(r.rmid),
    type: recordTypeName(r.rmid, r.info),
    len: r.totalLength,
    xid: r.xid,
    blocks: r.blocks.map((b) => ({
      id: b.id,
      spc: b.rel.spcOid,
      db: b.rel.dbOid,
      rel: b.rel.relNumber,
      fork: b.forkNum,
      blk: b.blockNumber,
      image: b.image !== undefined,
      ...(b.image ? { compression: b.image.compression, apply: b.image.apply } : {}),
    })),
  };
}

class BatchedStdout {
  private parts: string[] = [];
  private size = 0;
  closed = false;

  constructor() {
    process.stdout.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "EPIPE") this.closed = true;
    });
  }

  async line(s: string): Promise<void> {
    this.parts.push(s, "\n");
    this.size += s.length + 1;
    if (this.size >= OUTPUT_BATCH_BYTES) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.parts.length === 0 || this.closed) return;
    const chunk = this.parts.join("");
    this.parts = [];
    this.size = 0;
    if (!process.stdout.write(chunk)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          process.stdout.off("drain", done);
          process.stdout.off("error", done);
          resolve();
        };
        process.stdout.once("drain", done);
        process.stdout.once("error", done);
      });
    }
  }
}

function parseLsnOption(name: string, text: string | undefined): Lsn | undefined {
  if (text === undefined) return undefined;
  try {
    return parseLsn(text);
  } catch (e) {
    throw new StrataError("invalid_argument", `Invalid --${name} "${text}": ${(e as Error).message}`, { cause: e });
  }
}

async function dump(path: string, opts: DumpOptions): Promise<number> {
  const out = new BatchedStdout();
  const start = parseLsnOption("start", opts.start);
  const end = parseLsnOption("end", opts.end);
  let timeline: number | undefined;
  if (opts.timeline !== undefined) {
    timeline = Number(opts.timeline);
    if (!Number.isInteger(timeline) || timeline < 1) throw new StrataError("invalid_argument", `Invalid --timeline "${opts.timeline}"`);
  }
  const reader = await WalFileReader.open(path, {
    ...(start !== undefined ? { start } : {}),
    ...(end !== undefined ? { end } : {}),
    ...(timeline !== undefined ? { timeline } : {}),
  });
  let last: DecodedRecord | undefined;
  try {
    for await (const batch of reader.batches()) {
      for (const r of batch) {
        await out.line(opts.json ? JSON.stringify(recordToJson(r)) : formatRecordLine(r));
        last = r;
      }
      if (out.closed) return 0;
    }
  } catch (e) {
    await out.flush();
    if (e instanceof WalDecodeError) {
      const after = last ? ` (last valid record at ${formatLsn(last.lsn)})` : "";
      process.stderr.write(`strata wal dump: error in WAL at ${formatLsn(e.lsn)}: ${e.message}${after} [${e.code}]\n`);
      return 1;
    }
    throw e;
  }
  await out.flush();
  const s = reader.summary;
  if (s?.reason === "end_of_wal") {
    process.stderr.write(`strata wal dump: end of WAL at ${formatLsn(s.stopLsn)} (${s.detail ?? "zero record length"})\n`);
  } else if (s?.incompleteRecordLsn !== undefined) {
    process.stderr.write(
      `strata wal dump: the record at ${formatLsn(s.incompleteRecordLsn)} continues past the last segment given; stopped there\n`,
    );
  }
  return 0;
}

export function register(program: Command): void {
  const group =
    program.commands.find((c) => c.name() === "wal") ?? program.command("wal").description("inspect PostgreSQL write-ahead log");
  group
    .command("dump")
    .description("list the records of WAL segment files, like pg_waldump")
    .argument("<path>", "a WAL segment file (read alone), or a directory of segments (e.g. pg_wal)")
    .option("--start <lsn>", "first LSN to show (X/Y); may point inside a record — the next record is the first shown")
    .option("--end <lsn>", "stop before records that end after this LSN (X/Y)")
    .option("--timeline <tli>", "timeline to read from a directory (default: the first segment's)")
    .option("--json", "print one JSON object per record instead of text")
    .addHelpText(
      "after",
      `
Text lines follow pg_waldump's layout, with the record's end LSN added and the
record type in place of pg_waldump's description:
  rmgr: Heap        len (rec/tot):     54/    54, tx:        735, lsn: 0/01560C28, prev 0/01560BF0, end 0/01560C5E, desc: INSERT, blkref #0: rel 1663/5/16384 blk 0
Images are marked " FPW" (plus " (lz4)" etc. when compressed).

--json prints one object per line:
  {"lsn":"0/1560C28","end_lsn":"0/1560C5E","prev_lsn":"0/1560BF0","rmgr":"Heap","type":"INSERT",
   "len":54,"xid":735,"blocks":[{"id":0,"spc":1663,"db":5,"rel":16384,"fork":0,"blk":0,"image":false}]}
(fork: 0 main, 1 fsm, 2 vm, 3 init; image blocks add "compression" and "apply").

With a directory and no --start, reading begins at the first record of the
first segment. Exit status is 0 at the normal end of WAL and 1 on invalid WAL
(reported on stderr with its LSN after the records before it).`,
    )
    .action(async (path: string, opts: DumpOptions) => {
      try {
        process.exitCode = await dump(path, opts);
      } catch (e) {
        if (!(e instanceof StrataError)) throw e;
        process.stderr.write(`strata wal dump: ${e.message} [${e.code}]\n`);
        process.exitCode = 1;
      }
    });
}
