import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatLsn, parseLsn, walFileName, type Lsn } from "../../lib/lsn.js";
import { StrataError } from "../../lib/errors.js";
import type { DecodedRecord } from "./decoded_record.js";
import { WalFileReader } from "./wal_files.js";
import { WalWriter } from "./wal_writer.js";
import { encodeRecord, WalDecodeError } from "./xlog_record.js";

const SEG = 1024 * 1024;

/** Writes `nSegs` full segments of generated WAL (last one zero-padded) into `dir`; returns the records. */
async function writeSegments(dir: string, startSeg: number, nSegs: number, lastRecordSize = 100): Promise<{ lsn: Lsn; endLsn: Lsn }[]> {
  const start = parseLsn(formatLsn(BigInt(startSeg * SEG)));
  const w = new WalWriter({ startLsn: start, walSegSizeBytes: SEG, systemId: 5n });
  const out: { lsn: Lsn; endLsn: Lsn }[] = [];
  let prev = parseLsn("0/0");
  const limit = start + BigInt(nSegs * SEG) - 70_000n;
  let i = 0;
  while (w.insertLsn < limit) {
    const lsn = w.nextRecordLsn;
    const size = i % 50 === 49 ? 20_000 : 40 + (i % 300);
    out.push({ lsn, endLsn: w.appendRecord(encodeRecord({ rmid: 10, info: 0, prevLsn: prev, mainData: new Uint8Array(size) })).endLsn });
    prev = lsn;
    i++;
  }
  const lsn = w.nextRecordLsn;
  out.push({ lsn, endLsn: w.appendRecord(encodeRecord({ rmid: 10, info: 0, prevLsn: prev, mainData: new Uint8Array(lastRecordSize) })).endLsn });
  const bytes = w.take();
  for (let s = 0; s < nSegs; s++) {
    const seg = new Uint8Array(SEG);
    seg.set(bytes.subarray(s * SEG, Math.min(bytes.length, (s + 1) * SEG)));
    await writeFile(join(dir, walFileName(1, BigInt(startSeg + s), SEG)), seg);
  }
  return out;
}

async function readAll(path: string, opts = {}): Promise<{ recs: DecodedRecord[]; reader: WalFileReader }> {
  const reader = await WalFileReader.open(path, opts);
  const recs: DecodedRecord[] = [];
  for await (const r of reader.records()) recs.push(r);
  return { recs, reader };
}

test("reads a directory of segments, with --start/--end, and single files", async () => {
  const dir = await mkdtemp(join(tmpdir(), "walfiles-"));
  try {
    const written = await writeSegments(dir, 3, 3);
    await writeFile(join(dir, "README"), "not a segment");
    const { recs, reader } = await readAll(dir);
    assert.equal(reader.walSegSizeBytes, SEG);
    assert.deepEqual(recs.map((r) => r.lsn), written.map((w) => w.lsn));
    assert.equal(reader.summary?.reason, "end_of_wal");
    assert.equal(formatLsn(reader.summary!.stopLsn), formatLsn((written.at(-1)!.endLsn + 7n) & ~7n));

    const mid = written[100]!;
    const end = written[400]!;
    const part = await readAll(dir, { start: (mid.lsn + 3n) as Lsn, end: end.endLsn });
    assert.deepEqual(part.recs.map((r) => r.lsn), written.slice(101, 401).map((w) => w.lsn));
    assert.equal(part.reader.summary?.reason, "end_lsn_reached");

    // The second segment alone: the record continued from the first is skipped;
    // the last one continues into the third segment and is reported, not thrown.
    const second = join(dir, walFileName(1, 4n, SEG));
    const one = await readAll(second);
    const segStart = BigInt(4 * SEG);
    const expect = written.filter((w) => w.lsn > segStart && w.endLsn <= segStart + BigInt(SEG));
    assert.deepEqual(one.recs.map((r) => r.lsn), expect.map((w) => w.lsn));
    const crossing = written.find((w) => w.lsn < segStart + BigInt(SEG) && w.endLsn > segStart + BigInt(SEG));
    assert.equal(one.reader.summary?.reason, "input_exhausted");
    assert.equal(one.reader.summary?.incompleteRecordLsn, crossing?.lsn);

    await assert.rejects(WalFileReader.open(second, { start: parseLsn("0/100") }), /not inside file/);
    await assert.rejects(WalFileReader.open(join(dir, "missing")), (e: unknown) => e instanceof StrataError && e.code === "not_found");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("a file cut short inside a record is an error; damage is reported with its LSN", async () => {
  const dir = await mkdtemp(join(tmpdir(), "walfiles-"));
  try {
    const written = await writeSegments(dir, 1, 1);
    const target = written[200]!;
    const name = walFileName(1, 1n, SEG);
    const { readFile } = await import("node:fs/promises");
    const full = new Uint8Array(await readFile(join(dir, name)));
    const cutDir = join(dir, "cut");
    await mkdir(cutDir);
    await writeFile(join(cutDir, name), full.subarray(0, Number(target.lsn) - SEG + 10));
    await assert.rejects(
      readAll(join(cutDir, name)),
      (e: unknown) => e instanceof WalDecodeError && e.code === "truncated" && e.lsn === target.lsn,
    );
    const bad = full.slice();
    bad[Number(target.lsn) - SEG + 30] = bad[Number(target.lsn) - SEG + 30]! ^ 0xff;
    await writeFile(join(dir, name), bad);
    const reader = await WalFileReader.open(dir);
    const got: DecodedRecord[] = [];
    await assert.rejects(
      (async () => {
        for await (const r of reader.records()) got.push(r);
      })(),
      (e: unknown) => e instanceof WalDecodeError && e.lsn === target.lsn && /checksum/.test(e.message),
    );
    assert.equal(got.length, 200);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
