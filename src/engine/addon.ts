// Finds and loads the native engine. This is the only module that touches the .node file; everything else goes
// through EngineModel. Both cmake-js (`npm install`) and node-gyp put the addon at build/Release/optune.node.

import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import type { NativeAddon } from "./types.js";

/** The package root: this file is src/engine/addon.ts in development and dist/engine/addon.js when compiled. */
export const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** Where the addon is looked for: $OPTUNE_ADDON when set (e.g. a node-gyp build elsewhere), else the build dir. */
export function addonPath(): string {
  const override = process.env["OPTUNE_ADDON"];
  if (override !== undefined && override !== "") return resolve(override);
  return resolve(packageRoot, "build", "Release", "optune.node");
}

let cached: NativeAddon | undefined;

/** The loaded addon (loaded once per process). Throws an Error that says how to build it when it is missing. */
export function loadAddon(): NativeAddon {
  if (cached !== undefined) return cached;
  const path = addonPath();
  if (!existsSync(path)) {
    throw new Error(
      `native engine not built: run \`npm install\` (needs CMake and a C++ compiler; OpenBLAS optional) ` +
        `in ${packageRoot}. Expected ${path}`,
    );
  }
  const require = createRequire(import.meta.url);
  try {
    cached = require(path) as NativeAddon;
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`native engine at ${path} failed to load (${reason}); rebuild it with \`npm install\``, {
      cause: err,
    });
  }
  return cached;
}
