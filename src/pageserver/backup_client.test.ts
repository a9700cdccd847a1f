/**
 * backup_client against a minimal libpq server (the real ServerConnection)
 * that answers any query with a crafted tar as CopyOut: extraction keeps
 * modes, refuses members that would escape the target directory, cleans up
 * after failures; fetchBackupToFile is atomic. The real page service is
 * exercised end to end in test/pageserver_backup_service.test.ts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:net";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { pack as tarPack, type Pack } from "tar-stream";
import { generateTenantId, generateTimelineId } from "../lib/id.js";
import { lsn } from "../lib/lsn.js";
import { ServerConnection } from "../wire/server_connection.js";
import { PgServerError } from "../wire/client.js";
import { backupCommandText, fetchBackupIntoDir, fetchBackupToFile, safeMemberPath, type FetchBackupOptions } from "./backup_client.js";

type Member = { header: Parameters<Pack["entry"]>[0]; body?: Buffer };

async function makeTar(members: Member[]): Promise<Buffer> {
  const p = tarPack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of p) chunks.push(c as Buffer);
  })();
  for (const m of members) await new Promise<void>((resolve, reject) => p.entry(m.header, m.body ?? Buffer.alloc(0), (e) => (e ? reject(e) : resolve())));
  p.finalize();
  await done;
  return Buffer.concat(chunks);
}

/** A server answering every query with `reply(query)`: bytes to send as CopyData, or an error to send after `bytes`. */
async function startServer(reply: (q: string) => { bytes: Buffer; errorAfter?: string }): Promise<{ server: Server; port: number; queries: string[] }> {
  const queries: string[] = [];
  const server = createServer((socket) => {
    void (async () => {
      const conn = await ServerConnection.accept(socket, { authenticate: () => ({ method: "trust" }), serverParameters: {} }).catch(() => undefined);
      if (conn === undefined) return;
      for (;;) {
        const m = await conn.read().catch(() => null);
        if (m === null) return;
        if (m.kind !== "Query") continue;
        queries.push(m.sql);
        const r = reply(m.sql);
        conn.send({ kind: "CopyOutResponse", format: 0, columnFormats: [] });
        for (let off = 0; off < r.bytes.length; off += 1000) conn.send({ kind: "CopyData", data: r.bytes.subarray(off, off + 1000) });
        if (r.errorAfter !== undefined) {
          conn.sendError(new Error(r.errorAfter));
        } else {
          conn.send({ kind: "CopyDone" });
          conn.send({ kind: "CommandComplete", tag: "COPY 0" });
        }
        conn.readyForQuery();
      }
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const addr = server.address();
  return { server, port: typeof addr === "object" && addr !== null ? addr.port : 0, queries };
}

const dirEntry = (name: string, mode = 0o700): Member => ({ header: { name, type: "directory", mode } });
const fileEntry = (name: string, text: string, mode = 0o600): Member => ({ header: { name, type: "file", mode, size: Buffer.byteLength(text) }, body: Buffer.from(text) });

test("member names are confined to the target directory", () => {
  const root = "/data/x";
  assert.equal(safeMemberPath(root, "base/1/1259"), "/data/x/base/1/1259");
  assert.equal(safeMemberPath(root, "./global/pg_control"), "/data/x/global/pg_control");
  assert.equal(safeMemberPath(root, "pg_wal/"), "/data/x/pg_wal");
  for (const bad of ["/etc/passwd", "../x", "base/../../y", "a/\0b"]) assert.throws(() => safeMemberPath(root, bad), /Refusing backup member/, bad);
});

test("the command text", () => {
  const t = generateTenantId();
  const tl = generateTimelineId();
  assert.equal(backupCommandText({ tenantId: t, timelineId: tl, full: true }), `fullbackup ${t} ${tl}`);
  assert.equal(backupCommandText({ tenantId: t, timelineId: tl, full: false, lsn: lsn(0x16b3748n), gzip: true }), `basebackup ${t} ${tl} 0/16B3748 --gzip`);
});

test("fetchBackupIntoDir extracts with modes, refuses escaping members and cleans up; fetchBackupToFile is atomic", async () => {
  const good = await makeTar([dirEntry("global"), dirEntry("base"), dirEntry("base/5"), fileEntry("base/5/1259", "heap"), fileEntry("PG_VERSION", "15\n", 0o640), fileEntry("global/pg_control", "cf")]);
  const evil = await makeTar([dirEntry("global"), fileEntry("global/a", "x"), fileEntry("../escaped", "nope")]);
  const link = await makeTar([{ header: { name: "pg_wal", type: "symlink", linkname: "/tmp" } }]);
  const tarFor: Record<string, Buffer> = { good, evil, link };
  const { server, port, queries } = await startServer((q) => {
    const which = q.split(" ")[1]!.startsWith("0000") ? "evil" : q.split(" ")[1]!.startsWith("1111") ? "link" : "good";
    if (q.includes("--gzip")) return { bytes: gzipSync(tarFor[which]!) };
    if (q.includes("0/DEAD")) return { bytes: good.subarray(0, 1500), errorAfter: "page reconstruction failed" };
    return { bytes: tarFor[which]! };
  });
  const work = await mkdtemp(join(tmpdir(), "strata-backup-client-"));
  try {
    const opts: FetchBackupOptions = { host: "127.0.0.1", port, tenantId: generateTenantId(), timelineId: generateTimelineId(), full: true };
    let progress = 0;
    const dir = join(work, "a", "data");
    const r = await fetchBackupIntoDir({ ...opts, onProgress: (n) => (progress = n) }, dir);
    assert.equal(r.files, 3);
    assert.equal(r.bytes, good.length);
    assert.equal(progress, good.length);
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
    assert.equal((await stat(join(dir, "PG_VERSION"))).mode & 0o777, 0o640);
    assert.equal((await stat(join(dir, "base/5/1259"))).mode & 0o777, 0o600);
    assert.equal(await readFile(join(dir, "base/5/1259"), "utf8"), "heap");
    assert.equal(queries.at(-1), `fullbackup ${opts.tenantId} ${opts.timelineId}`);

    // gzip
    const gzDir = join(work, "gz");
    assert.equal((await fetchBackupIntoDir({ ...opts, gzip: true }, gzDir)).files, 3);
    assert.equal(await readFile(join(gzDir, "global/pg_control"), "utf8"), "cf");

    // not empty -> refused, untouched
    await assert.rejects(fetchBackupIntoDir(opts, dir), /not empty/);
    assert.equal(await readFile(join(dir, "base/5/1259"), "utf8"), "heap");

    // escaping member: refused, nothing outside, the directory this call created is gone
    const evilOpts = { ...opts, tenantId: ("0000" + opts.tenantId.slice(4)) as typeof opts.tenantId };
    const evilDir = join(work, "evil", "data");
    await assert.rejects(fetchBackupIntoDir(evilOpts, evilDir), /Refusing backup member "\.\.\/escaped"/);
    assert.ok(!existsSync(join(work, "evil", "escaped")));
    assert.ok(!existsSync(evilDir));
    // ... and an existing empty directory is emptied again, not removed
    const emptyDir = join(work, "empty");
    await mkdir(emptyDir);
    await assert.rejects(fetchBackupIntoDir(evilOpts, emptyDir), /Refusing/);
    assert.deepEqual(await readdir(emptyDir), []);
    const linkOpts = { ...opts, tenantId: ("1111" + opts.tenantId.slice(4)) as typeof opts.tenantId };
    await assert.rejects(fetchBackupIntoDir(linkOpts, join(work, "link")), /type symlink/);

    // a server error mid-stream: PgServerError, no partial directory
    await assert.rejects(fetchBackupIntoDir({ ...opts, lsn: lsn(0xdeadn) }, join(work, "err")), (e: unknown) => e instanceof PgServerError && /page reconstruction failed/.test(e.message));
    assert.ok(!existsSync(join(work, "err")));

    // to a file: complete or absent, no temp file left
    const file = join(work, "out.tar");
    assert.equal((await fetchBackupToFile(opts, file)).bytes, good.length);
    assert.deepEqual(await readFile(file), good);
    await writeFile(join(work, "keep.tar"), "old");
    await assert.rejects(fetchBackupToFile({ ...opts, lsn: lsn(0xdeadn) }, join(work, "keep.tar")), PgServerError);
    assert.equal(await readFile(join(work, "keep.tar"), "utf8"), "old", "a failed fetch leaves the old file");
    assert.deepEqual((await readdir(work)).filter((n) => n.endsWith(".tmp")), []);
  } finally {
    server.close();
    await rm(work, { recursive: true, force: true });
  }
});
