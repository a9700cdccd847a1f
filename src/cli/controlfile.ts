/**
 * `strata controlfile …`: inspect PostgreSQL control files.
 *
 * `controlfile show <file> [--json]` prints a pg_control file the way
 * `pg_controldata` does (same labels, same order, LSNs as X/Y, times in local
 * time), or as JSON for scripts. The argument may be the pg_control file
 * itself or a data directory (then `global/pg_control` is read). A file that
 * fails its CRC or has another version is reported with the parser's
 * message and exit code 1 — unlike pg_controldata, strata never prints
 * values it could not verify.
 */
import type { Command } from "commander";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { StrataError } from "../lib/errors.js";
import { controlFileToJson, formatControlFileText, parseControlFile } from "../formats/pg_control.js";

/** Reads the file at `arg`, or `arg/global/pg_control` when `arg` is a directory. */
async function readControlFileBytes(arg: string): Promise<Uint8Array> {
  let path = arg;
  try {
    if ((await stat(arg)).isDirectory()) path = join(arg, "global", "pg_control");
    return new Uint8Array(await readFile(path));
  } catch (e) {
    throw new StrataError("not_found", `Cannot read pg_control "${path}": ${(e as Error).message}`, { cause: e });
  }
}

export function register(program: Command): void {
  const group = program.command("controlfile").description("inspect PostgreSQL pg_control files");
  group
    .command("show")
    .description("print a pg_control file like pg_controldata")
    .argument("<path>", "pg_control file, or a data directory")
    .option("--json", "print JSON instead of pg_controldata's text")
    .action(async (path: string, opts: { json?: boolean }) => {
      try {
        const cf = parseControlFile(await readControlFileBytes(path));
        if (opts.json) process.stdout.write(JSON.stringify(controlFileToJson(cf), null, 2) + "\n");
        else process.stdout.write(formatControlFileText(cf) + "\n");
      } catch (e) {
        if (!(e instanceof StrataError)) throw e;
        process.stderr.write(`strata controlfile show: ${e.message} [${e.code}]\n`);
        process.exitCode = 1;
      }
    });
}
