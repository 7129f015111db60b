// The `optune` command line. Each command lives in its own module and exports a function returning its
// commander Command; adding one is an import and a line in `commands` below.

import { readFileSync } from "node:fs";
import { resolve } from "node:path";

import { Command, CommanderError } from "commander";

import { packageRoot } from "../engine/index.js";
import { benchCommand } from "./bench.js";
import { demoCommand } from "./demo.js";
import { infoCommand } from "./info.js";
import { logprobsCommand } from "./logprobs.js";
import { runCommand } from "./run.js";

const commands: Array<() => Command> = [
  infoCommand,
  logprobsCommand,
  benchCommand,
  runCommand,
  demoCommand,
];

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(resolve(packageRoot, "package.json"), "utf8")) as { version?: unknown };
  return typeof pkg.version === "string" ? pkg.version : "unknown";
}

export function buildProgram(): Command {
  const program = new Command("optune")
    .description("efficient online preference tuning (online DPO) of small language models")
    .version(packageVersion())
    .showHelpAfterError()
    .exitOverride();
  for (const make of commands) program.addCommand(make().exitOverride());
  return program;
}

/** Runs the CLI on process-style argv; returns the exit code instead of exiting. */
export async function main(argv: readonly string[]): Promise<number> {
  try {
    await buildProgram().parseAsync([...argv]);
    return 0;
  } catch (err) {
    // commander has already printed help, version or its own usage error.
    if (err instanceof CommanderError) return err.exitCode;
    console.error(`optune: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
}
