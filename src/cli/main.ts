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
(await import("./controlfile.js")).register(program);
(await import("./wal_dump.js")).register(program);
(await import("./safekeeper.js")).register(program);
(await import("./pageserver.js")).register(program);
// register:end

await program.parseAsync(process.argv);
