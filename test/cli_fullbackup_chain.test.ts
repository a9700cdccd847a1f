/**
 * Issue 6 acceptance 3 and 5 through the real `strata` command line.
 *
 *   3. main (pgbench tables, a table with TOAST-sized text and indexes, a
 *      sequence, a view) is dumped with pg_dump at LSN L. Then
 *        - a compute on a branch at L (a fullbackup of main's history at L)
 *          has the same pg_dump output;
 *        - `strata timeline export --lsn L -o x.tar.gz`, extracted with tar
 *          into an empty directory and started with a plain `pg_ctl start`,
 *          has the same pg_dump output; so does a `.tar` export `--at` the
 *          time recorded at L.
 *      (Sequence values may be up to 32 ahead, as on any standby: see sameDump.)
 *   5. A chain of branches five deep (main -> c1 -> c2 -> c3 -> c4 -> c5),
 *      each level writing its own table on its own compute and the next
 *      level branching at the LSN after that write: c5 reads every level's
 *      table, main's data at L through all ancestors, and pg_amcheck is
 *      clean; a middle level (c3) sees its ancestors' tables but not its
 *      descendants'.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmod, chown, mkdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { makeTempDir, pgUser, removeTempDir, runProgram, runTool } from "./harness/tools.js";
import { freePort } from "./harness/ports.js";
import { cliOk, lastLine, portOf, sqlAt, withRepo } from "./cli_support.js";

const PG_CONFIG = ["--pg-config", "shared_buffers=16MB", "--pg-config", "max_connections=20", "--pg-config", "fsync=off"];
/** pg_dump of a database, as text, without the random per-run \\restrict key lines of pg_dump >= 15.14. */
async function dump(connstr: string): Promise<string> {
  const r = await runTool("pg_dump", ["--no-sync", "-d", connstr], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, r.stderr);
  return r.stdout
    .split("\n")
    .filter((l) => !/^\\(un)?restrict /.test(l))
    .join("\n");
}

const SETVAL_RE = /^SELECT pg_catalog\.setval\('([^']+)', (\d+), (true|false)\);$/;

/**
 * Equal dumps, or a failure naming the first differing line (dumps are megabytes: no full diff).
 * Sequences are the one exception, as on any PostgreSQL standby or after crash recovery: nextval
 * WAL-logs values ahead (SEQ_LOG_VALS = 32), so a server built from the WAL may continue up to 32
 * values later than the original did — never earlier, which is the property that matters (no
 * value is handed out twice). setval lines are compared that way.
 */
function sameDump(actual: string, expected: string, what: string): void {
  if (actual === expected) return;
  const a = actual.split("\n");
  const e = expected.split("\n");
  if (a.length === e.length) {
    let onlySequences = true;
    for (let j = 0; j < a.length && onlySequences; j++) {
      if (a[j] === e[j]) continue;
      const ma = SETVAL_RE.exec(a[j]!);
      const me = SETVAL_RE.exec(e[j]!);
      onlySequences = ma !== null && me !== null && ma[1] === me[1] && Number(ma[2]) >= Number(me[2]) && Number(ma[2]) <= Number(me[2]) + 32;
    }
    if (onlySequences) return;
  }
  let i = 0;
  while (i < a.length && i < e.length && a[i] === e[i]) i++;
  assert.fail(`${what}: pg_dump differs at line ${i + 1}: got ${JSON.stringify((a[i] ?? "<end>").slice(0, 200))}, expected ${JSON.stringify((e[i] ?? "<end>").slice(0, 200))}`);
}

/** Extracts an exported tarball into a fresh directory and starts a plain PostgreSQL on it; returns a stop function and its connstr. */
async function startPlain(tarball: string, gzip: boolean): Promise<{ connstr: string; stop: () => Promise<void> }> {
  const base = await makeTempDir("export");
  const data = join(base, "data");
  const user = pgUser();
  await mkdir(data, { mode: 0o700 });
  if (user) await chown(data, user.uid, user.gid);
  await chmod(tarball, 0o644); // written by us (maybe root), extracted by the PostgreSQL user
  const tar = await runProgram("/bin/tar", [gzip ? "-xzf" : "-xf", tarball, "-C", data], { asPgUser: true, timeoutMs: 120_000 });
  assert.equal(tar.code, 0, tar.stderr);
  const port = await freePort();
  const opts = `-p ${port} -c listen_addresses=127.0.0.1 -k ${base} -c synchronous_standby_names= -c shared_buffers=16MB`;
  const log = join(base, "server.log");
  const r = await runTool("pg_ctl", ["start", "-D", data, "-l", log, "-w", "-t", "60", "-o", opts], { asPgUser: true, timeoutMs: 90_000 });
  if (r.code !== 0) {
    const tail = await runProgram("/usr/bin/tail", ["-n", "30", log]);
    await removeTempDir(base);
    assert.fail(`pg_ctl start on the extracted export failed: ${r.stderr}\n${tail.stdout}`);
  }
  return {
    connstr: `postgresql://postgres@127.0.0.1:${port}/postgres`,
    stop: async () => {
      await runTool("pg_ctl", ["stop", "-D", data, "-m", "immediate", "-w", "-t", "60"], { asPgUser: true, timeoutMs: 90_000 });
      await removeTempDir(base);
    },
  };
}

test("fullbackup compute and exported tarball equal main by pg_dump; a five-deep branch chain reads through every ancestor", { timeout: 300_000 }, async () => {
  await withRepo(async (repo) => {
    const main = lastLine(await cliOk(repo, ["up", "--safekeepers", "1", "--quiet"]));
    const init = await runTool("pgbench", ["-i", "-s", "1", "-q", main], { timeoutMs: 120_000 });
    assert.equal(init.code, 0, init.stderr);
    const bench = await runTool("pgbench", ["-n", "-c", "2", "-t", "200", main], { timeoutMs: 120_000 });
    assert.equal(bench.code, 0, bench.stderr);
    await sqlAt(
      main,
      `CREATE SEQUENCE s START 100; CREATE TABLE docs(id int PRIMARY KEY DEFAULT nextval('s'), body text, tags text[]);
       CREATE INDEX ON docs USING gin(tags); CREATE INDEX ON docs(md5(body));
       INSERT INTO docs(body, tags) SELECT repeat(md5(g::text), 200 + g % 50), ARRAY['t' || g % 7, 'u' || g % 3] FROM generate_series(1, 300) g;
       DELETE FROM docs WHERE id % 10 = 0; CREATE VIEW big_docs AS SELECT id FROM docs WHERE length(body) > 7000;`,
    );
    const mainDump = await dump(main);
    const [lsnL, atL] = (await sqlAt(main, `SELECT pg_current_wal_insert_lsn(), to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`)).split("|");
    await new Promise((res) => setTimeout(res, 20));
    // main moves on after L: none of this may appear in anything taken at L.
    await sqlAt(main, "INSERT INTO docs(body) VALUES ('after L'); DROP VIEW big_docs;");

    // --- acceptance 3: a compute at L, and exported tarballs at L ---
    await cliOk(repo, ["timeline", "branch", "--branch-name", "c1", "--ancestor-start-lsn", lsnL!, "--quiet"]);
    const c1 = lastLine(await cliOk(repo, ["endpoint", "start", "e1", "--branch-name", "c1", ...PG_CONFIG, "--quiet"]));
    sameDump(await dump(c1), mainDump, "compute from a fullbackup at L");

    const tmp = await makeTempDir("export-files");
    try {
      const tgz = join(tmp, "main.tar.gz");
      const tarAt = join(tmp, "main_at.tar");
      await cliOk(repo, ["timeline", "export", "--branch-name", "main", "--lsn", lsnL!, "-o", tgz, "--quiet"]);
      await cliOk(repo, ["timeline", "export", "--branch-name", "main", "--at", atL!, "-o", tarAt, "--quiet"]);
      assert.ok((await stat(tgz)).size > 0 && (await stat(tarAt)).size > (await stat(tgz)).size);
      for (const [file, gz] of [[tgz, true], [tarAt, false]] as const) {
        const plain = await startPlain(file, gz);
        try {
          sameDump(await dump(plain.connstr), mainDump, `plain pg_ctl start on ${file}`);
        } finally {
          await plain.stop();
        }
      }
    } finally {
      await removeTempDir(tmp);
    }

    // --- acceptance 5: five levels deep ---
    const levels = ["c1", "c2", "c3", "c4", "c5"];
    let conn = c1;
    for (let i = 0; i < levels.length; i++) {
      const name = levels[i]!;
      await sqlAt(conn, `CREATE TABLE level_${i + 1}(x int); INSERT INTO level_${i + 1} SELECT generate_series(1, ${1000 * (i + 1)}); UPDATE pgbench_accounts SET abalance = abalance + ${i + 1} WHERE aid <= 100;`);
      const after = await sqlAt(conn, "SELECT pg_current_wal_insert_lsn()");
      await cliOk(repo, ["endpoint", "stop", `e${i + 1}`]);
      if (i + 1 < levels.length) {
        const child = levels[i + 1]!;
        await cliOk(repo, ["timeline", "branch", "--branch-name", child, "--ancestor-branch-name", name, "--ancestor-start-lsn", after, "--quiet"]);
        conn = lastLine(await cliOk(repo, ["endpoint", "start", `e${i + 2}`, "--branch-name", child, ...PG_CONFIG, "--quiet"]));
      }
    }
    const c5 = lastLine(await cliOk(repo, ["endpoint", "start", "e5", "--quiet"]));
    for (let i = 1; i <= 5; i++) assert.equal(await sqlAt(c5, `SELECT count(*), sum(x) FROM level_${i}`), `${1000 * i}|${(1000 * i * (1000 * i + 1)) / 2}`, `level ${i} through the chain`);
    assert.equal(await sqlAt(c5, "SELECT sum(abalance) FROM pgbench_accounts WHERE aid <= 100"), await sqlAt(main, "SELECT sum(abalance) + 1500 FROM pgbench_accounts WHERE aid <= 100"), "1+2+3+4+5 added per row on top of main's balances");
    assert.equal(await sqlAt(c5, "SELECT count(*) FROM docs WHERE body = 'after L'"), "0");
    assert.ok(Number(await sqlAt(c5, "SELECT count(*) FROM big_docs")) > 0, "main's view as of L (dropped on main later)");
    const amcheck = await runTool("pg_amcheck", ["-h", "127.0.0.1", "-p", String(portOf(c5)), "-U", "postgres", "--install-missing", "--heapallindexed", "postgres"], { timeoutMs: 120_000 });
    assert.equal(amcheck.code, 0, amcheck.stdout + amcheck.stderr);
    await cliOk(repo, ["endpoint", "stop", "e5"]);
    const c3 = lastLine(await cliOk(repo, ["endpoint", "start", "e3", "--quiet"]));
    assert.equal(await sqlAt(c3, "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relname LIKE 'level\\_%'"), "level_1,level_2,level_3");
    await cliOk(repo, ["endpoint", "stop", "e3"]);
    const tree = await cliOk(repo, ["timeline", "list"]);
    assert.match(tree, /└ c1 [\s\S]*└ c2 [\s\S]*└ c3 [\s\S]*└ c4 [\s\S]*└ c5 /);
    console.log(`fullbackup/export at ${lsnL}: pg_dump equal (${mainDump.length} bytes) on a branch compute and 2 plain pg_ctl starts; chain 5 deep reads through all ancestors`);
  });
});
