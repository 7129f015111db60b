#!/usr/bin/env node
// Entry point of `npx optune`: runs the compiled CLI in dist/ (built by `npm install` / `npm run build`).
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const cli = new URL("../dist/cli/index.js", import.meta.url);
if (!existsSync(fileURLToPath(cli))) {
  console.error("optune: the CLI is not compiled: run `npm run build` (or `npm install`) in the package directory");
  process.exit(1);
}
const { main } = await import(cli.href);
process.exitCode = await main(process.argv);
