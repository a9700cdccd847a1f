import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StrataError } from "../../lib/errors.js";
import { lsn } from "../../lib/lsn.js";
import type { BlockImage, FpiCompression } from "./decoded_record.js";
import {
  BKPIMAGE_APPLY,
  BKPIMAGE_COMPRESS_LZ4,
  BKPIMAGE_COMPRESS_PGLZ,
  BKPIMAGE_COMPRESS_ZSTD,
  BKPIMAGE_HAS_HOLE,
  BLCKSZ,
  redoPageLsn,
  restoreBlockImage,
  restoreBlockImageForRedo,
  restoreFullPageImage,
  zstdDecompressFrame,
} from "./fpi.js";
import { lz4CompressBlock } from "./lz4.js";
import { pglzCompress } from "./pglz.js";

/** A page with a 24-byte header, line pointers, a hole of zeros, and tuples at the end. */
function pageWithHole(holeOffset: number, holeLength: number, seed: number): Uint8Array {
  const page = new Uint8Array(BLCKSZ);
  let x = seed;
  for (let i = 0; i < BLCKSZ; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    page[i] = i % 7 === 0 ? (x >>> 24) & 0xff : (i >> 4) & 0xff;
  }
  page.fill(0, holeOffset, holeOffset + holeLength);
  return page;
}

function withoutHole(page: Uint8Array, holeOffset: number, holeLength: number): Uint8Array {
  const out = new Uint8Array(BLCKSZ - holeLength);
  out.set(page.subarray(0, holeOffset), 0);
  out.set(page.subarray(holeOffset + holeLength), holeOffset);
  return out;
}

const haveZstdCli = spawnSync("zstd", ["--version"]).status === 0;

/** ZSTD frame from the reference `zstd` tool (content size recorded, checksum on, as the CLI does by default). */
function zstdCli(data: Uint8Array, extraArgs: string[] = []): Uint8Array {
  const dir = mkdtempSync(join(tmpdir(), "strata-fpi-"));
  try {
    const f = join(dir, "in");
    writeFileSync(f, data);
    const r = spawnSync("zstd", ["-q", "-c", ...extraArgs, f], { maxBuffer: 1 << 24 });
    if (r.status !== 0) throw new Error(`zstd failed: ${r.stderr.toString()}`);
    return new Uint8Array(r.stdout);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function compress(method: FpiCompression, data: Uint8Array): Uint8Array {
  switch (method) {
    case "none":
      return data;
    case "pglz":
      return pglzCompress(data);
    case "lz4":
      return lz4CompressBlock(data);
    case "zstd":
      return zstdCli(data);
  }
}

const FLAG: Record<FpiCompression, number> = {
  none: 0,
  pglz: BKPIMAGE_COMPRESS_PGLZ,
  lz4: BKPIMAGE_COMPRESS_LZ4,
  zstd: BKPIMAGE_COMPRESS_ZSTD,
};

function imageOf(page: Uint8Array, holeOffset: number, holeLength: number, method: FpiCompression): BlockImage {
  const stored = withoutHole(page, holeOffset, holeLength);
  return {
    bytes: compress(method, stored),
    holeOffset,
    holeLength,
    bimgInfo: (holeLength > 0 ? BKPIMAGE_HAS_HOLE : 0) | BKPIMAGE_APPLY | FLAG[method],
    apply: true,
    compression: method,
  };
}

const METHODS: FpiCompression[] = haveZstdCli ? ["none", "pglz", "lz4", "zstd"] : ["none", "pglz", "lz4"];

test("restores pages with and without a hole for every compression method", () => {
  const cases: Array<[number, number]> = [
    [0, 0],
    [40, 7000],
    [24, 8168 - 100],
    [200, 1],
    [8000, 192],
  ];
  for (const method of METHODS) {
    for (const [off, len] of cases) {
      const page = pageWithHole(off, len, off + len);
      const img = imageOf(page, off, len, method);
      if (method !== "none") assert.ok(img.bytes.length < BLCKSZ);
      assert.deepEqual(restoreFullPageImage(img), page, `${method} hole ${off}+${len}`);
      // into a reused (dirty) page buffer: same page, the hole zeroed again
      const scratch = new Uint8Array(BLCKSZ).fill(0xee);
      assert.equal(restoreFullPageImage(img, undefined, scratch), scratch);
      assert.deepEqual(scratch, page, `${method} hole ${off}+${len} into a scratch page`);
    }
  }
  assert.throws(() => restoreFullPageImage(imageOf(pageWithHole(0, 0, 0), 0, 0, "none"), undefined, new Uint8Array(100)), /page buffer of 100 bytes/);
});

test("restoreBlockImage finds the block and reports missing blocks and images", () => {
  const page = pageWithHole(100, 4000, 1);
  const img = imageOf(page, 100, 4000, "none");
  const rel = { spcOid: 1663, dbOid: 5, relNumber: 16384 };
  const record = {
    lsn: lsn(0x1000028),
    blocks: [
      { id: 0, forkNum: 0, flags: 0, rel, blockNumber: 3, willInit: false },
      { id: 1, forkNum: 0, flags: 0, rel, blockNumber: 4, willInit: false, image: img },
    ],
  };
  assert.deepEqual(restoreBlockImage(record, 1), page);
  assert.throws(() => restoreBlockImage(record, 0), /at 0\/1000028 with invalid state, block 0/);
  assert.throws(() => restoreBlockImage(record, 2), /at 0\/1000028 with invalid block 2 specified/);
});

function assertCorrupt(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof StrataError && e.code === "corrupt_data" && re.test(e.message), String(re));
}

test("every RestoreBlockImage / DecodeXLogRecord consistency check is enforced", () => {
  const page = pageWithHole(100, 4000, 2);
  const good = imageOf(page, 100, 4000, "none");
  const src = { lsn: lsn(0x2000010), blockId: 0 };
  const mk = (over: Partial<BlockImage>): BlockImage => ({ ...good, ...over });

  assertCorrupt(() => restoreFullPageImage(mk({ holeOffset: 0 }), src), /at 0\/2000010, block 0: BKPIMAGE_HAS_HOLE set, but hole offset 0/);
  assertCorrupt(() => restoreFullPageImage(mk({ holeLength: 0 }), src), /BKPIMAGE_HAS_HOLE set, but hole offset 100 length 0/);
  assertCorrupt(
    () => restoreFullPageImage(mk({ bytes: new Uint8Array(BLCKSZ) }), src),
    /BKPIMAGE_HAS_HOLE set, but .* block image length 8192/,
  );
  assertCorrupt(() => restoreFullPageImage(mk({ bimgInfo: BKPIMAGE_APPLY }), src), /BKPIMAGE_HAS_HOLE not set, but hole offset 100 length 4000/);
  assertCorrupt(
    () => restoreFullPageImage({ ...good, holeOffset: 0, holeLength: 0, bimgInfo: BKPIMAGE_APPLY }, src),
    /neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block image length is 4192/,
  );
  assertCorrupt(() => restoreFullPageImage(mk({ bytes: good.bytes.subarray(1) }), src), /uncompressed image is 4191 bytes, expected 8192 - hole length 4000 = 4192/);
  assertCorrupt(() => restoreFullPageImage(mk({ holeOffset: 5000 }), src), /hole offset 5000 \+ length 4000 exceeds/);
  assertCorrupt(() => restoreFullPageImage(mk({ compression: "lz4" }), src), /compression "lz4" disagrees with bimg_info 0x3/);

  // Compressed images.
  const pglzImg = imageOf(page, 100, 4000, "pglz");
  assertCorrupt(
    () =>
      restoreFullPageImage(
        { ...pglzImg, holeOffset: 0, holeLength: 0, bimgInfo: BKPIMAGE_APPLY | BKPIMAGE_COMPRESS_PGLZ, bytes: new Uint8Array(BLCKSZ) },
        src,
      ),
    /BKPIMAGE_COMPRESSED set, but block image length 8192/,
  );
  assertCorrupt(
    () => restoreFullPageImage({ ...pglzImg, bytes: pglzImg.bytes.subarray(0, pglzImg.bytes.length - 3) }, src),
    /could not decompress pglz image: pglz: (input ended after|match tag cut off|extended match length cut off)/,
  );
  // Compressed for a different hole length: decompressed size is wrong.
  assertCorrupt(() => restoreFullPageImage({ ...pglzImg, holeLength: 3000 }, src), /could not decompress pglz image/);
  const lz4Img = imageOf(page, 100, 4000, "lz4");
  assertCorrupt(() => restoreFullPageImage({ ...lz4Img, holeLength: 3000 }, src), /lz4 image decompressed to 4192 bytes, expected 8192 - hole length 3000 = 5192/);
  assertCorrupt(() => restoreFullPageImage({ ...lz4Img, holeLength: 5000 }, src), /could not decompress lz4 image: lz4: .*overflow/);
});

test("zstd: frames from the reference tool decode; malformed frames are refused before decoding", { skip: haveZstdCli ? false : "zstd CLI not installed" }, () => {
  const body = withoutHole(pageWithHole(300, 2000, 5), 300, 2000);
  for (const args of [[], ["--no-check"], ["-19"], ["--ultra", "-22"], ["-1"]]) {
    assert.deepEqual(zstdDecompressFrame(zstdCli(body, args), body.length), body, args.join(" "));
  }
  const frame = zstdCli(body, ["--no-check"]);
  const bad = (f: Uint8Array, re: RegExp): void => assertCorrupt(() => zstdDecompressFrame(f, body.length), re);
  bad(frame.subarray(0, 4), /shorter than a frame header/);
  bad(Uint8Array.from([0, ...frame.subarray(1)]), /bad frame magic/);
  bad(frame.subarray(0, frame.length - 1), /runs past the end/);
  bad(Uint8Array.from([...frame, 0]), /frame ends at offset .* but the image is/);
  assertCorrupt(() => zstdDecompressFrame(frame, body.length + 1), /frame content size 6192, expected 6193/);
  const reserved = frame.slice();
  reserved[4] = (reserved[4] as number) | 0x08;
  bad(reserved, /reserved bit/);
  const dict = frame.slice();
  dict[4] = (dict[4] as number) | 0x01;
  bad(dict, /dictionary/);
  // Two frames back to back: PostgreSQL stores one.
  bad(Uint8Array.from([...frame, ...frame]), /frame ends at offset/);
  // From stdin the CLI does not know the size and writes no content size.
  const r = spawnSync("zstd", ["-q", "-c"], { input: body });
  bad(new Uint8Array(r.stdout), /does not record its content size|window of/);
});

test("mutated compressed images never crash or hang: only StrataError or the right page", () => {
  const page = pageWithHole(500, 3000, 9);
  let x = 77;
  const rand = (n: number): number => {
    x = (x * 1103515245 + 12345) >>> 0;
    return (x >>> 8) % n;
  };
  for (const method of METHODS.filter((m) => m !== "none")) {
    const img = imageOf(page, 500, 3000, method);
    for (let i = 0; i < 400; i++) {
      const bytes = img.bytes.slice();
      for (let k = 0; k < 1 + rand(4); k++) bytes[rand(bytes.length)] = rand(256);
      try {
        const out = restoreFullPageImage({ ...img, bytes });
        assert.equal(out.length, BLCKSZ);
      } catch (e) {
        assert.ok(e instanceof StrataError && e.code === "corrupt_data", `${method} case ${i}: ${String(e)}`);
      }
    }
  }
});

test("restoreBlockImageForRedo stamps the MAXALIGNed record end, except on new pages", () => {
  assert.equal(redoPageLsn({ endLsn: lsn(0x1000031) }), lsn(0x1000038));
  assert.equal(redoPageLsn({ endLsn: lsn(0x1002000) }), lsn(0x1002000));
  const rel = { spcOid: 1663, dbOid: 5, relNumber: 16384 };
  const page = pageWithHole(100, 4000, 3);
  page[14] = 100; // pd_upper != 0: an initialized page
  const rec = {
    lsn: lsn(0x1000000),
    endLsn: lsn(0x1000031),
    blocks: [{ id: 0, forkNum: 0, flags: 0, rel, blockNumber: 0, willInit: false, image: imageOf(page, 100, 4000, "none") }],
  };
  const out = restoreBlockImageForRedo(rec, 0);
  assert.deepEqual([...out.subarray(0, 8)], [0, 0, 0, 0, 0x38, 0x00, 0x00, 0x01]);
  assert.deepEqual(out.subarray(8), page.subarray(8));
  const zero = new Uint8Array(BLCKSZ);
  const recNew = { ...rec, blocks: [{ ...rec.blocks[0]!, image: imageOf(zero, 0, 0, "none") }] };
  assert.deepEqual(restoreBlockImageForRedo(recNew, 0), zero);
});
