#!/usr/bin/env bash
# GPU check for the CUDA backend (issue 5), for a machine with an NVIDIA GPU, nvcc, cuBLAS, CMake and Python but no
# Node: configures a Release build with -DOPTUNE_CUDA=ON, builds every native test (CPU ones and test_cuda_kernels)
# and bench_cuda_kernels, runs ctest, then the kernel benchmark, and writes logs plus summary.json to the output dir.
# Usage: bench/gpu-check.sh [OUT_DIR]   (default: $OUT when set, else ./gpu-check-out)
# Environment: OPTUNE_GPU_ARCHS (default: the GPU's own, e.g. 90 on an H100, to keep the build short),
#              OPTUNE_CUBLAS_ROOT (when cuBLAS is not inside the CUDA toolkit).
# Budget: well under 10 minutes on one H100 with 16 cores (one architecture; each stage has its own timeout).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:-${OUT:-$root/gpu-check-out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=${OPTUNE_GPU_BUILD_DIR:-$root/build-gpu}
start=$SECONDS

nvidia-smi >"$out/nvidia-smi.log" 2>&1 || true
archs=${OPTUNE_GPU_ARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')}
archs=${archs:-80;90}
cmake_args=(-S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DOPTUNE_BUILD_TESTS=ON -DOPTUNE_CUDA=ON
            "-DCMAKE_CUDA_ARCHITECTURES=$archs")
[[ -n ${OPTUNE_CUBLAS_ROOT:-} ]] && cmake_args+=("-DOPTUNE_CUBLAS_ROOT=$OPTUNE_CUBLAS_ROOT")

stage() {  # stage NAME TIMEOUT CMD...: runs CMD with its output in $out/NAME.log; prints and returns its status
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc ($((SECONDS - t0))s)" | tee -a "$out/stages.log"
  return $rc
}

configure_rc=0 build_rc=0 ctest_rc=0 bench_rc=0
stage configure 120 cmake "${cmake_args[@]}" || configure_rc=$?
if ((configure_rc == 0)); then
  stage build 360 cmake --build "$build" --parallel "$(nproc)" || build_rc=$?
else
  build_rc=1
fi
if ((build_rc == 0)); then
  stage ctest 300 ctest --test-dir "$build" -V --timeout 240 --parallel 4 || ctest_rc=$?
  if [[ -x $build/bench_cuda_kernels ]]; then
    stage bench 120 "$build/bench_cuda_kernels" || bench_rc=$?
  else
    bench_rc=1
    echo "bench: bench_cuda_kernels was not built" | tee -a "$out/stages.log"
  fi
else
  ctest_rc=1
  bench_rc=1
fi

# summary.json: per test executable, the "ok"/"FAIL" case counts and its summary line, as scripts/test.mjs counts them
python3 - "$out" "$archs" "$configure_rc" "$build_rc" "$ctest_rc" "$bench_rc" "$((SECONDS - start))" <<'PY'
import json, os, re, sys
out, archs, cfg, bld, ct, bench, secs = sys.argv[1:8]
tests = {}
names = {}
path = os.path.join(out, "ctest.log")
text = open(path, errors="replace").read() if os.path.exists(path) else ""
for line in text.splitlines():
    m = re.match(r"^(\d+): (ok  |FAIL|SKIPPED)(: no CUDA device \S)?", line)
    if m and m.group(2) == "SKIPPED" and not m.group(3):
        m = None  # the "SKIPPED: N cases" note, not a case
    if m:
        t = tests.setdefault(m.group(1), {"ok": 0, "fail": 0, "skipped": 0, "summary": None})
        t[{"ok  ": "ok", "FAIL": "fail", "SKIPPED": "skipped"}[m.group(2)]] += 1
    m = re.match(r"^(\d+): (\d+) cases, (\d+) failed\s*$", line)
    if m:
        tests.setdefault(m.group(1), {"ok": 0, "fail": 0, "skipped": 0, "summary": None})["summary"] = [int(m.group(2)), int(m.group(3))]
    m = re.match(r"^\s*\d+/\d+ Test\s+#(\d+): (\S+) \.*\s*(.*?)\s+[\d.]+ sec\s*$", line)
    if m:
        names[m.group(1)] = (m.group(2), m.group(3))
execs = []
for n, (name, status) in sorted(names.items(), key=lambda kv: int(kv[0])):
    t = tests.get(n, {"ok": 0, "fail": 0, "skipped": 0, "summary": None})
    execs.append({"name": name, "status": status, "passed": t["ok"], "failed": t["fail"], "skipped": t["skipped"], "summary": t["summary"]})
gpu = open(os.path.join(out, "nvidia-smi.log"), errors="replace").read().splitlines()
summary = {
    "archs": archs,
    "seconds": int(secs),
    "exit": {"configure": int(cfg), "build": int(bld), "ctest": int(ct), "bench": int(bench)},
    "passed": sum(e["passed"] for e in execs),
    "failed": sum(e["failed"] for e in execs) + sum(1 for e in execs if e["status"] != "Passed"),
    "skipped": sum(e["skipped"] for e in execs),
    "executables": execs,
    "nvidia_smi": gpu[:12],
}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps({k: summary[k] for k in ("archs", "seconds", "exit", "passed", "failed", "skipped")}))
PY
echo "gpu-check: logs and summary.json in $out ($((SECONDS - start))s)"
((configure_rc == 0 && build_rc == 0 && ctest_rc == 0)) || exit 1
