// `npm install` step: builds the native addon (build/Release/optune.node) with cmake-js, using every core.
// Extra CMake options come from OPTUNE_CMAKE_ARGS, e.g. OPTUNE_CMAKE_ARGS="-DOPTUNE_USE_BLAS=OFF".
import { spawnSync } from "node:child_process";
import { availableParallelism } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const cmakeJs = join(dirname(require.resolve("cmake-js/package.json")), "bin", "cmake-js");

// cmake-js spells -DNAME=VALUE as --CDNAME=VALUE.
const extra = (process.env.OPTUNE_CMAKE_ARGS ?? "")
  .split(/\s+/)
  .filter((a) => a !== "")
  .map((a) => (a.startsWith("-D") ? `--CD${a.slice(2)}` : a));

// `compile` configures only a build folder that does not exist yet; options given on a later install (say
// OPTUNE_CMAKE_ARGS="-DOPTUNE_CUDA=ON" after a CPU install) must reach CMake's cache, so then configure first.
const parallel = ["--parallel", String(availableParallelism())];
const steps = extra.length > 0 ? [["configure", ...parallel, ...extra], ["build", ...parallel]] : [["compile", ...parallel]];
let r = { status: 0 };
for (const step of steps) {
  r = spawnSync(process.execPath, [cmakeJs, ...step], { cwd: root, stdio: "inherit" });
  if (r.status !== 0) break;
}
if (r.status !== 0) {
  console.error(
    "\noptune: building the native engine failed. It needs CMake >= 3.18 and a C++17 compiler " +
      "(Debian/Ubuntu: apt-get install cmake g++; OpenBLAS is optional: libopenblas-dev).",
  );
  process.exit(r.status ?? 1);
}
