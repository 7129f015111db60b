// Answers binding.gyp's questions at configure time, so node-gyp builds what CMake builds:
//   sources       the engine and addon .cpp files (globbed, so new files are picked up)
//   blas          "openblas" when cblas.h and libopenblas are found (and OPTUNE_USE_BLAS is not OFF), else "builtin"
//   blas-include  the directory holding cblas.h ("" when none)
//   blas-lib-dir  the directory holding libopenblas, preferring the OpenMP build as CMakeLists.txt does
//   version       the package version, for info().version
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

// The same places CMakeLists.txt searches.
const includeDirs = [
  "/usr/include",
  "/usr/include/x86_64-linux-gnu",
  "/usr/include/aarch64-linux-gnu",
  "/usr/include/openblas",
  "/opt/homebrew/opt/openblas/include",
  "/usr/local/opt/openblas/include",
];
// OpenBLAS built for OpenMP first: it shares the engine's OpenMP threads instead of competing with them.
const libDirs = [
  "/usr/lib/x86_64-linux-gnu/openblas-openmp",
  "/usr/lib/aarch64-linux-gnu/openblas-openmp",
  "/usr/lib",
  "/usr/lib/x86_64-linux-gnu",
  "/usr/lib/aarch64-linux-gnu",
  "/usr/lib64",
  "/usr/local/lib",
  "/opt/homebrew/opt/openblas/lib",
  "/usr/local/opt/openblas/lib",
];

// { include, libDir } of OpenBLAS, or null when it is missing or OPTUNE_USE_BLAS=OFF.
function findBlas() {
  if ((process.env.OPTUNE_USE_BLAS ?? "").toUpperCase() === "OFF") return null;
  const include = includeDirs.find((d) => existsSync(join(d, "cblas.h")));
  const libDir = libDirs.find((d) => ["libopenblas.so", "libopenblas.dylib"].some((f) => existsSync(join(d, f))));
  return include !== undefined && libDir !== undefined ? { include, libDir } : null;
}

function sources() {
  const out = [];
  for (const dir of ["native/core", "native/cpu", "native/addon"]) {
    for (const f of readdirSync(join(root, dir)).sort()) if (f.endsWith(".cpp")) out.push(`${dir}/${f}`);
  }
  return out;
}

const what = process.argv[2];
if (what === "sources") console.log(sources().join(" "));
else if (what === "blas") console.log(findBlas() !== null ? "openblas" : "builtin");
else if (what === "blas-include") console.log(findBlas()?.include ?? "");
else if (what === "blas-lib-dir") console.log(findBlas()?.libDir ?? "");
else if (what === "version") console.log(JSON.parse(readFileSync(join(root, "package.json"), "utf8")).version);
else {
  console.error(`gyp-config.mjs: unknown question '${what ?? ""}' (sources | blas | blas-include | blas-lib-dir | version)`);
  process.exit(1);
}
