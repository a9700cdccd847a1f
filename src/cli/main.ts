/**
 * The `strata` command line: one entry point, one module per subcommand
 * group. Each group module exports `register(program)` so this file stays a
 * table of contents. Parsing and help text come from commander.
 */
import { Command } from "commander";

const program = new Command();
program
  .name("strata")
  .description("Branchable, bottomless storage for PostgreSQL 15")
  .version("0.1.0")
  .showHelpAfterError()
  .enablePositionalOptions();

// Subcommand groups (each file registers its own commands and --help text).
// register:begin
// Control-plane commands (local.ts, tenant.ts, timeline.ts, endpoint.ts) are run many times by
// scripts and tests; loading every module (the services pull in the storage SDKs) costs seconds
// on a loaded machine, so such a command loads only its own module. Anything else loads all.
const CONTROL_PLANE_MODULES: Record<string, string> = {
  init: "./local.js", start: "./local.js", stop: "./local.js", status: "./local.js", up: "./local.js",
  tenant: "./tenant.js", timeline: "./timeline.js", endpoint: "./endpoint.js",
};
const onlyModule = CONTROL_PLANE_MODULES[process.argv[2] ?? ""];
if (onlyModule !== undefined) {
  ((await import(onlyModule)) as { register(p: Command): void }).register(program);
} else {
  (await import("./controlfile.js")).register(program);
  (await import("./wal_dump.js")).register(program);
  (await import("./safekeeper.js")).register(program);
  (await import("./pageserver.js")).register(program);
  (await import("./local.js")).register(program);
  (await import("./tenant.js")).register(program);
  (await import("./timeline.js")).register(program);
  (await import("./endpoint.js")).register(program);
}
// register:end

await program.parseAsync(process.argv);
