// The `optune` command line. Each command lives in its own module and exports a function returning its
// commander Command; adding one is an import and a line in `commands` below. Errors print as one line
// ("optune: <message>") for the user; the global --debug flag adds the stack trace (and the causes') for a bug report.

import { readFileSync } from "node:fs";
import { resolve } from "node:path";

import { Command, CommanderError } from "commander";

import { packageRoot } from "../engine/index.js";
import { benchCommand } from "./bench.js";
import { demoCommand } from "./demo.js";
import { generateCommand } from "./generate.js";
import { infoCommand } from "./info.js";
import { logprobsCommand } from "./logprobs.js";
import { runCommand } from "./run.js";

const commands: Array<() => Command> = [
  infoCommand,
  logprobsCommand,
  generateCommand,
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
    .option("--debug", "print the stack trace of an error, not only its message")
    .showHelpAfterError()
    .exitOverride();
  for (const make of commands) program.addCommand(make().exitOverride());
  return program;
}

/** An error as the user sees it: its message, or with `debug` its stack and the stacks of its causes. */
export function formatError(err: unknown, debug: boolean): string {
  if (!(err instanceof Error)) return `optune: ${String(err)}`;
  if (!debug) return `optune: ${err.message}`;
  let text = `optune: ${err.stack ?? err.message}`;
  for (let cause = err.cause; cause !== undefined; cause = cause instanceof Error ? cause.cause : undefined) {
    text += `\ncaused by: ${cause instanceof Error ? (cause.stack ?? cause.message) : String(cause)}`;
  }
  return text;
}

/** True when argv asks for --debug; read from argv so it also holds when commander never got to parse it. */
export function debugRequested(argv: readonly string[]): boolean {
  const end = argv.indexOf("--");
  return (end === -1 ? argv : argv.slice(0, end)).includes("--debug");
}

/** Runs the CLI on process-style argv; returns the exit code instead of exiting. */
export async function main(argv: readonly string[]): Promise<number> {
  try {
    await buildProgram().parseAsync([...argv]);
    return 0;
  } catch (err) {
    // commander has already printed help, version or its own usage error.
    if (err instanceof CommanderError) return err.exitCode;
    console.error(formatError(err, debugRequested(argv)));
    return 1;
  }
}
