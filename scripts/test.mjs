// `npm test`: the native tests (CMake + ctest) and the TS tests (vitest), each summarised, then one last line
// "N passed, N failed" summing native test cases and TS tests. Exits non-zero when anything failed.
//
// Environment:
//   OPTUNE_TEST_BUILD_DIR  build directory of the native tests (default build-tests)
//   OPTUNE_CMAKE_ARGS      extra CMake arguments, e.g. "-DOPTUNE_USE_BLAS=OFF" or "-DOPTUNE_SANITIZE=ON"
//   OPTUNE_TEST_ONLY       "native" or "ts" to run one half only
//   OPTUNE_CTEST_REGEX     run only the native test executables whose names match (ctest -R)
// Arguments after `npm test --` go to vitest (e.g. a test file filter), except a first `--cuda-emu`
// (`npm run test:cuda-emu`): the CUDA tests (test_cuda_*, test_device) on the CPU emulator (native/cuda_emu), in
// build-emu, native only.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const cudaEmu = process.argv[2] === "--cuda-emu";
const only = cudaEmu ? "native" : (process.env.OPTUNE_TEST_ONLY ?? "");
const jobs = String(availableParallelism());

function run(cmd, args, opts = {}) {
  return spawnSync(cmd, args, { cwd: root, encoding: "utf8", maxBuffer: 256 << 20, ...opts });
}

// ---- native tests -------------------------------------------------------------------------------------------

// Counts test cases from `ctest -V` output. Each test executable prints "ok  <case>" / "FAIL <case>" lines and
// "N cases, M failed"; ctest prefixes each output line with the test's number. An executable that crashed,
// timed out or printed no summary counts as one more failed case.
export function parseCtest(output) {
  const names = new Map(); // number -> name
  const status = new Map(); // number -> "Passed" | failure text
  const tests = new Map(); // number -> { ok, fail, summary }
  const get = (n) => {
    if (!tests.has(n)) tests.set(n, { ok: 0, fail: 0, summary: null });
    return tests.get(n);
  };
  for (const line of output.split("\n")) {
    let m = line.match(/^(\d+): (ok  |FAIL) \S/);
    if (m) {
      const t = get(m[1]);
      if (m[2] === "FAIL") t.fail++;
      else t.ok++;
      continue;
    }
    m = line.match(/^(\d+): (\d+) cases, (\d+) failed\s*$/);
    if (m) {
      get(m[1]).summary = { cases: Number(m[2]), failed: Number(m[3]) };
      continue;
    }
    m = line.match(/^\s*\d+\/\d+ Test\s+#(\d+): (\S+) \.*\s*(.*?)\s+[\d.]+ sec\s*$/);
    if (m) {
      names.set(m[1], m[2]);
      status.set(m[1], m[3]);
    }
  }
  const perExe = [];
  for (const [n, name] of names) {
    const t = tests.get(n) ?? { ok: 0, fail: 0, summary: null };
    const exitedOk = status.get(n) === "Passed";
    let passed;
    let failed;
    if (t.summary !== null) {
      failed = t.summary.failed;
      passed = t.summary.cases - t.summary.failed;
      // A non-zero exit after a clean summary (e.g. a crash at exit) still fails the executable.
      if (!exitedOk && failed === 0) failed = 1;
    } else {
      passed = t.ok;
      failed = t.fail + 1;
    }
    perExe.push({ name, passed, failed, note: exitedOk ? "" : status.get(n) ?? "" });
  }
  return perExe;
}

const emulatorExclusions = [
  "-temperature_top_k_top_p_follow_their_definitions",
  "-vocab_limit_restricts_draws_not_log_probs",
  "-lt_decode_gemms_stay_close",
  "-early_launches_change_no_result",
  "-automatic_k_split_at_gpt2_width",
];

function nativeTests() {
  const buildDir = resolve(root, process.env.OPTUNE_TEST_BUILD_DIR ?? (cudaEmu ? "build-emu" : "build-tests"));
  const extra = (process.env.OPTUNE_CMAKE_ARGS ?? "").split(/\s+/).filter((a) => a !== "");
  if (cudaEmu) extra.push("-DOPTUNE_CUDA=EMU");
  const regex = process.env.OPTUNE_CTEST_REGEX ?? "";
  console.log(`== native tests (${buildDir}${extra.length > 0 ? ", " + extra.join(" ") : ""})`);
  const configure = run("cmake", ["-S", root, "-B", buildDir, "-DOPTUNE_BUILD_TESTS=ON", ...extra], {
    stdio: "inherit",
  });
  if (configure.status !== 0) return { passed: 0, failed: 1, error: "cmake configure failed" };
  const build = run("cmake", ["--build", buildDir, "--parallel", jobs], { stdio: "inherit" });
  if (build.status !== 0) return { passed: 0, failed: 1, error: "native build failed" };

  // The executables run side by side, each with OpenMP's default thread count; OpenMP workers that spin while they
  // wait (the default) starve the other process's on the same cores: a test that takes 0.5 s alone took 8-275 s in
  // CI runs on 2 cores. Waiting workers sleep instead (unless the caller chose).
  const env = { ...process.env, OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? "PASSIVE" };
  // On the emulator a 1024-thread block costs milliseconds: the cases that draw thousands of rows, or that exist
  // for GPU timing (early launches, cuBLASLt's plans over wide models, the split choice at GPT-2's width), would
  // take most of an hour; they run on GPUs.
  // OPTUNE_TEST_FILTER (native/test/testing.h) set, even empty, replaces this.
  if (cudaEmu && env.OPTUNE_TEST_FILTER === undefined) env.OPTUNE_TEST_FILTER = emulatorExclusions.join(",");
  const select = regex !== "" ? ["-R", regex] : [];
  const ctest = run("ctest", ["-V", "--timeout", "900", "--parallel", jobs, ...select], { cwd: buildDir, env });
  const output = (ctest.stdout ?? "") + (ctest.stderr ?? "");
  // Show failures with their details and each executable's result, without passing cases and ctest's chatter.
  for (const line of output.split("\n")) {
    if (/^\d+: (ok  |Test command|Working Directory|Test timeout|Environment variables|\s*$)/.test(line)) continue;
    if (/^\d+: /.test(line) || /Test\s+#\d+:/.test(line)) console.log(line);
  }
  const perExe = parseCtest(output);
  if (perExe.length === 0) return { passed: 0, failed: 1, error: "ctest ran no tests" };
  let passed = 0;
  let failed = 0;
  for (const e of perExe) {
    passed += e.passed;
    failed += e.failed;
    console.log(`  ${e.name}: ${e.passed} passed, ${e.failed} failed${e.note ? ` (${e.note})` : ""}`);
  }
  return { passed, failed, error: null };
}

// ---- TS tests -----------------------------------------------------------------------------------------------

// Counts tests from vitest's JSON report. A test file that failed to load has no test results: it counts as one
// failed test, and so does a run that wrote no report.
export function parseVitestReport(report) {
  let passed = 0;
  let failed = 0;
  for (const file of report.testResults ?? []) {
    const results = file.assertionResults ?? [];
    for (const a of results) {
      if (a.status === "passed") passed++;
      else if (a.status === "failed") failed++;
    }
    if (file.status === "failed" && !results.some((a) => a.status === "failed")) failed++;
  }
  return { passed, failed };
}

function tsTests(vitestArgs) {
  console.log("== TS tests (vitest)");
  const dir = mkdtempSync(join(tmpdir(), "optune-vitest-"));
  const reportPath = join(dir, "report.json");
  try {
    const vitest = join(root, "node_modules", "vitest", "vitest.mjs");
    const args = [vitest, "run", "--reporter=default", "--reporter=json", `--outputFile.json=${reportPath}`];
    const r = run(process.execPath, [...args, ...vitestArgs], { stdio: "inherit" });
    if (!existsSync(reportPath)) return { passed: 0, failed: 1, error: `vitest wrote no report (exit ${r.status})` };
    const counts = parseVitestReport(JSON.parse(readFileSync(reportPath, "utf8")));
    // vitest failing without a failed test (e.g. an unhandled error between tests) is still a failure.
    if (r.status !== 0 && counts.failed === 0) return { ...counts, failed: 1, error: `vitest exited ${r.status}` };
    return { ...counts, error: null };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- main ---------------------------------------------------------------------------------------------------

function main() {
  const parts = [];
  if (only !== "ts") parts.push(["native", nativeTests()]);
  if (only !== "native") parts.push(["ts", tsTests(process.argv.slice(2))]);
  console.log("== summary");
  let passed = 0;
  let failed = 0;
  for (const [name, r] of parts) {
    passed += r.passed;
    failed += r.failed;
    console.log(`${name}: ${r.passed} passed, ${r.failed} failed${r.error ? ` (${r.error})` : ""}`);
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed > 0 ? 1 : 0;
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
