#!/usr/bin/env node
// Entry point of `npx optune`: runs the compiled CLI in dist/ (built by `npm install` / `npm run build`).
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const cli = new URL("../dist/cli/index.js", import.meta.url);
if (!existsSync(fileURLToPath(cli))) {
  console.error("optune: the CLI is not compiled: run `npm run build` (or `npm install`) in the package directory");
  process.exit(1);
}
// Until the CLI module has loaded (loading can fail too), errors print with this; then with the CLI's own format.
let format = (err) => {
  const debug = process.argv.includes("--debug");
  return `optune: ${err instanceof Error ? (debug ? err.stack : err.message) : String(err)}`;
};
// A failure nobody awaited (a stray promise in a reward module, say) still ends the run with one clean message and
// exit code 1 instead of Node's stack dump; what the run saved is complete, as every write is atomic.
const fatal = (err, note = "") => {
  console.error(format(err) + note);
  process.exit(1);
};
const stray = (err) =>
  fatal(err, process.argv.includes("--debug") ? "" : "\n(raised by code nobody awaited, e.g. in a reward module: " +
    "rerun with --debug for its stack trace)");
process.on("unhandledRejection", stray);
process.on("uncaughtException", stray);
// Code the command runs (a reward module) may call process.exit(0) mid-run: that must not pass for success.
let finished = false;
process.on("exit", (code) => {
  if (finished || code !== 0) return;
  console.error(
    "optune: the process was told to exit before the command finished (does a reward module call process.exit?); " +
      "what a run saved is complete: continue it with --resume",
  );
  process.exitCode = 1;
});
const { main, formatError, debugRequested } = await import(cli.href).catch(fatal);
format = (err) => formatError(err, debugRequested(process.argv));
process.exitCode = await main(process.argv);
finished = true;
