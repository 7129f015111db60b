#!/usr/bin/env bash
# GPU check for the CUDA backend (issue 5), for a machine with an NVIDIA GPU, nvcc, cuBLAS, CMake and Python but no
# Node, in one invocation: configures a Release build with -DOPTUNE_CUDA=ON, builds every native test and benchmark,
# runs ctest (CPU tests and the CUDA ones: test_cuda_kernels, test_cuda_sampler, test_cuda_model), the native
# benchmarks (bench_cuda_kernels, bench_cuda_sample, bench_cuda_model when built) and the PyTorch peers
# (bench/torch_gpu_bench.py), and writes logs, summary.json and results.md (native vs PyTorch per op and precision,
# ready for bench/RESULTS.md) to the output dir.
# Usage: bench/gpu-check.sh [--dry-run] [OUT_DIR]   (default OUT_DIR: $OUT when set, else ./gpu-check-out)
#   --dry-run: for a machine without a GPU (checks this script): cuBLAS from ../shared/tools/cublas-dev.sh when
#              OPTUNE_CUBLAS_ROOT is unset, sm_90, build dir build-gpu-dry, nice, 2 build jobs, 4x the stage limits
#              (40 minutes in all); the CUDA tests and benchmarks report SKIPPED and the PyTorch script reports
#              itself unavailable.
# Environment: OPTUNE_GPU_ARCHS (default: the GPU's own, e.g. 90 on an H100, to keep the build short),
#              OPTUNE_CUBLAS_ROOT (when cuBLAS is not inside the CUDA toolkit), OPTUNE_GPU_BUILD_DIR,
#              OPTUNE_GPU_CHECK_BUDGET (seconds for everything, default 510), OPTUNE_PYTHON (default python3),
#              OPTUNE_TORCH_ARGS (extra arguments for torch_gpu_bench.py, e.g. --skip-compiled),
#              OPTUNE_GPU_CTEST_REGEX (ctest -R: only the tests it matches, e.g. "cuda|device"),
#              OPTUNE_GPU_PROFILE=1 (per-kernel times by ncu after the benchmarks; own clocks, warm caches:
#              profile_*.log),
#              OPTUNE_GPU_AB=1 (bench_cuda_model again, bf16, with OPTUNE_CUDA_ATTN_PREFETCH=1),
#              OPTUNE_GPU_TF32=0 (no fp32 reruns of bench_cuda_model / bench_cuda_sample with OPTUNE_CUDA_TF32=1),
#              OPTUNE_GPU_SANITIZE=0 (no compute-sanitizer rerun of a failed CUDA test).
# Budget: every stage has its own limit and none may run past the overall budget (8.5 minutes by default); expected
# on one H100 with 16 cores: configure ~15 s, build ~2-3 min, ctest ~1 min, native benches ~1 min, PyTorch ~2 min
# (about 75 s of it compiling; --skip-compiled saves that).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dry=0
if [[ ${1:-} == --dry-run ]]; then
  dry=1
  shift
fi
out=${1:-${OUT:-$root/gpu-check-out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
start=$SECONDS
budget=${OPTUNE_GPU_CHECK_BUDGET:-$((dry ? 2400 : 510))}
scale=$((dry ? 4 : 1))  # stage limits: a 2-core machine without a GPU builds several times slower
python=${OPTUNE_PYTHON:-python3}
: >"$out/stages.log"

jobs=$(nproc)
run=()
if ((dry)); then
  build=${OPTUNE_GPU_BUILD_DIR:-$root/build-gpu-dry}
  archs=${OPTUNE_GPU_ARCHS:-90}
  jobs=2
  run=(nice)
  if [[ -z ${OPTUNE_CUBLAS_ROOT:-} ]]; then
    for c in "$root/../shared/tools/cublas-dev.sh" /work/shared/tools/cublas-dev.sh; do
      if [[ -x $c ]]; then OPTUNE_CUBLAS_ROOT=$("$c" 2>/dev/null | tail -n 1); break; fi
    done
  fi
  echo "gpu-check: DRY RUN (no GPU needed): archs $archs, cuBLAS ${OPTUNE_CUBLAS_ROOT:-from the toolkit}" |
    tee -a "$out/stages.log"
else
  build=${OPTUNE_GPU_BUILD_DIR:-$root/build-gpu}
  gpu_cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
  archs=${OPTUNE_GPU_ARCHS:-$gpu_cap}
  archs=${archs:-80;90}
fi
nvidia-smi >"$out/nvidia-smi.log" 2>&1 || echo "nvidia-smi: not available" >>"$out/nvidia-smi.log"
cmake_args=(-S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DOPTUNE_BUILD_TESTS=ON -DOPTUNE_CUDA=ON
            "-DCMAKE_CUDA_ARCHITECTURES=$archs")
[[ -n ${OPTUNE_CUBLAS_ROOT:-} ]] && cmake_args+=("-DOPTUNE_CUBLAS_ROOT=$OPTUNE_CUBLAS_ROOT")

left() { echo $((budget - (SECONDS - start))); }

stage() {  # stage NAME LIMIT CMD...: CMD with its output in $out/NAME.log, cut at LIMIT or the overall budget
  local name=$1 limit=$2 t0=$SECONDS rc remaining
  shift 2
  remaining=$(($(left) - 5))
  if ((remaining < 10)); then
    echo "$name: SKIPPED (the ${budget}s budget is spent)" | tee -a "$out/stages.log"
    echo "SKIPPED: the gpu-check budget is spent" >"$out/$name.log"
    return 124
  fi
  limit=$((limit * scale))
  ((limit > remaining)) && limit=$remaining
  timeout "$limit" "${run[@]}" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc ($((SECONDS - t0))s of ${limit}s)" | tee -a "$out/stages.log"
  return $rc
}

declare -A rc=([configure]=0 [build]=0 [ctest]=0 [bench_kernels]=0 [bench_sample]=0 [bench_model]=0 [torch]=0)
stage configure 120 cmake "${cmake_args[@]}" || rc[configure]=$?
if ((rc[configure] == 0)); then
  stage build 330 cmake --build "$build" --parallel "$jobs" || rc[build]=$?
else
  rc[build]=1
fi
if ((rc[build] == 0)); then
  ctest_filter=()
  [[ -n ${OPTUNE_GPU_CTEST_REGEX:-} ]] && ctest_filter=(-R "$OPTUNE_GPU_CTEST_REGEX")
  stage ctest 180 ctest --test-dir "$build" -V --timeout $((150 * scale)) --parallel 4 "${ctest_filter[@]}" ||
    rc[ctest]=$?
  # A failed CUDA test runs again under compute-sanitizer (memcheck): the first bad access or API error, by kernel
  # and thread, is what the next fix needs; an illegal address would otherwise fail every later case alike.
  if ((rc[ctest] != 0 && !dry)) && [[ ${OPTUNE_GPU_SANITIZE:-1} == 1 ]] && command -v compute-sanitizer >/dev/null 2>&1; then
    for t in test_cuda_kernels test_cuda_model test_cuda_sampler; do
      if grep -qE "[0-9]+/[0-9]+ Test +#[0-9]+: $t .*(Failed|Timeout|Exception)" "$out/ctest.log"; then
        stage "sanitize_$t" 90 compute-sanitizer --tool memcheck --print-limit 12 "$build/$t"
      fi
    done
  fi
  for b in kernels sample model; do
    exe=$build/bench_cuda_$b
    if [[ -x $exe ]]; then
      stage "bench_$b" 120 "$exe" || rc[bench_$b]=$?
    else
      rc[bench_$b]=1
      echo "bench_$b: bench_cuda_$b was not built" | tee -a "$out/stages.log"
    fi
  done
  # fp32 with TF32 GEMMs (OPTUNE_CUDA_TF32=1, PyTorch's fp32 peer runs its matmuls so): the model and sampling
  # benchmarks again in fp32; summary.json and results.md list their rows as "(TF32 matmuls)". OPTUNE_GPU_TF32=0
  # skips them (15 s on an H200: 8 s and 7 s).
  if [[ ${OPTUNE_GPU_TF32:-1} == 1 ]]; then
    if [[ -x $build/bench_cuda_model ]]; then
      stage bench_model_tf32 90 env OPTUNE_CUDA_TF32=1 "$build/bench_cuda_model" 3 fp32 || true
    fi
    if [[ -x $build/bench_cuda_sample ]]; then
      stage bench_sample_tf32 60 env OPTUNE_CUDA_TF32=1 "$build/bench_cuda_sample" 3 fp32 || true
    fi
  fi
  # OPTUNE_GPU_AB=1: the model benchmark again with the pipelined attention kernels (OPTUNE_CUDA_ATTN_PREFETCH=1),
  # bf16 only; summary.json and results.md list its rows as "(attn prefetch)".
  if [[ ${OPTUNE_GPU_AB:-0} == 1 && -x $build/bench_cuda_model ]]; then
    stage bench_model_prefetch 90 env OPTUNE_CUDA_ATTN_PREFETCH=1 "$build/bench_cuda_model" 3 bf16
  fi
  # OPTUNE_GPU_PROFILE=1: per-kernel GPU time (Nsight Compute, one metric) of a bf16 sampling run (eager steps, so
  # each kernel is seen; the first 2500 launches: the prefill and ~20 decode steps) and of the bf16 model benchmark,
  # at the GPU's own clocks with warm caches, as the benchmarks run: ncu's defaults (base clocks, caches flushed
  # before each kernel) put a decode layer at 54 us on an H200 where it runs 43.6 (RESULTS.md, 11th session).
  if [[ ${OPTUNE_GPU_PROFILE:-0} == 1 ]] && command -v ncu >/dev/null 2>&1; then
    prof=(ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --print-summary per-kernel
          --launch-count 2500)
    stage profile_sample 100 env OPTUNE_CUDA_GRAPHS=0 "${prof[@]}" "$build/bench_cuda_sample" 1 bf16
    stage profile_model 120 "${prof[@]}" "$build/bench_cuda_model" 1 bf16
  fi
else
  rc[ctest]=1 rc[bench_kernels]=1 rc[bench_sample]=1 rc[bench_model]=1
fi
# The PyTorch peers run even when the native build failed: their figures still anchor the next attempt.
torch_budget=$(($(left) - 20))
read -r -a torch_args <<<"${OPTUNE_TORCH_ARGS:-}"
stage torch 300 "$python" "$root/bench/torch_gpu_bench.py" --total-budget "$((torch_budget > 30 ? torch_budget : 30))" \
  "${torch_args[@]}" || rc[torch]=$?

python3 "$root/bench/gpu_check_summary.py" "$out" "$archs" "$((SECONDS - start))" "$dry" \
  "configure=${rc[configure]}" "build=${rc[build]}" "ctest=${rc[ctest]}" "bench_kernels=${rc[bench_kernels]}" \
  "bench_sample=${rc[bench_sample]}" "bench_model=${rc[bench_model]}" "torch=${rc[torch]}"
echo "gpu-check: logs, summary.json and results.md in $out ($((SECONDS - start))s)"
((rc[configure] == 0 && rc[build] == 0 && rc[ctest] == 0)) || exit 1
