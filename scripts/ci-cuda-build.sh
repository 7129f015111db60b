#!/usr/bin/env bash
# CI step for the CUDA backend (issue 5): compiles native/cuda (library optune_cuda), its kernel, sampler and
# device-model tests and the sampler and model benchmarks so they cannot rot on machines without a GPU, and runs
# test_device (no GPU here: asking for cuda must be a clear error). Nothing runs on a GPU here;
# bench/gpu-check.sh does that on a GPU machine.
# cuBLAS headers/libraries come from ../shared/tools/cublas-dev.sh (the CUDA toolkit here has nvcc but no cuBLAS).
# Last line: "1 passed, 0 failed" when it compiles, "0 passed, 1 failed" when not, and "0 passed, 0 failed" (a skip,
# counted neither way) when nvcc or the cuBLAS script is absent.
# Environment: OPTUNE_CI_CUDA_BUILD_DIR (default build-ci-cuda), OPTUNE_CI_CUDA_ARCHS (default "80;90").
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build_dir=${OPTUNE_CI_CUDA_BUILD_DIR:-build-ci-cuda}
archs=${OPTUNE_CI_CUDA_ARCHS:-80;90}
start=$SECONDS

skip() {
  echo "ci-cuda-build: SKIPPED: $1"
  echo "0 passed, 0 failed"
  exit 0
}

cublas_script=""
for c in "$root/../shared/tools/cublas-dev.sh" /work/shared/tools/cublas-dev.sh; do
  if [[ -x $c ]]; then cublas_script=$c; break; fi
done
command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]] || skip "nvcc not found"
[[ -n $cublas_script ]] || skip "no ../shared/tools/cublas-dev.sh to fetch cuBLAS headers and libraries"

cublas_root=$("$cublas_script" 2>/dev/null | tail -n 1)
if [[ ! -f $cublas_root/include/cublas_v2.h ]]; then
  echo "ci-cuda-build: $cublas_script did not provide cuBLAS (got '$cublas_root')" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
echo "ci-cuda-build: cuBLAS from $cublas_root ($((SECONDS - start))s); archs $archs"

mkdir -p "$build_dir"
if cmake -S "$root" -B "$build_dir" -DOPTUNE_BUILD_TESTS=ON -DOPTUNE_CUDA=ON -DOPTUNE_CUBLAS_ROOT="$cublas_root" \
     "-DCMAKE_CUDA_ARCHITECTURES=$archs" >"$build_dir/configure.log" 2>&1 &&
   cmake --build "$build_dir" --parallel "$(nproc)" --target optune_cuda test_cuda_kernels test_cuda_sampler \
     bench_cuda_sample test_cuda_model test_device bench_cuda_model; then
  # The test executables must start and skip cleanly without a GPU (or pass with one).
  if "$build_dir/test_cuda_kernels" | tail -n 3 && "$build_dir/test_cuda_sampler" | tail -n 3 &&
     "$build_dir/test_cuda_model" | tail -n 3 && "$build_dir/test_device" | tail -n 1; then
    echo "ci-cuda-build: compiled in $((SECONDS - start))s"
    echo "1 passed, 0 failed"
    exit 0
  fi
  echo "ci-cuda-build: test_cuda_kernels, test_cuda_sampler, test_cuda_model or test_device failed" >&2
else
  tail -n 30 "$build_dir/configure.log" >&2
  echo "ci-cuda-build: the CUDA build failed" >&2
fi
echo "0 passed, 1 failed"
exit 1
