#!/usr/bin/env bash
# `optune run` end to end on a GPU machine that has no Node.js (the device tool's machines): the CLI, the TypeScript
# loop and the addon with the CUDA backend, on the built-in task, in bf16 and fp32.
#
# Here (Node, nvcc, ../shared/tools/cublas-dev.sh):   bench/gpu-e2e.sh --pack
#   builds the addon with the CUDA backend for sm_90 and without BLAS (the GPU image has no OpenBLAS) into
#   build-e2e/, compiles the TypeScript, and packs the node binary, the production node_modules, dist/ and the addon
#   into .carry/e2e/ (~40 MB; .carry/ is git-ignored).
# There (device tool, repo root):   run(command="bench/gpu-e2e.sh", carry=[".carry"], timeout_s=...)
#   unpacks them, puts the CUDA toolkit's cuBLAS on LD_LIBRARY_PATH, runs `optune info`, then `optune run` on the
#   built-in task with --device cuda in bf16 and in fp32 (each under its own time limit), and writes the logs and
#   the runs' metrics to $OUT (or ./gpu-e2e-out).
# Environment (there): OPTUNE_E2E_ARGS (extra `optune run` flags, e.g. "--iterations 2"), OPTUNE_E2E_LIMIT (seconds
# per run, default 240), OPTUNE_E2E_DEVICE (default cuda; cpu checks this script on a machine without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
pack=$root/.carry/e2e

if [[ ${1:-} == --pack ]]; then
  set -e
  cublas=""
  for c in "$root/../shared/tools/cublas-dev.sh" /work/shared/tools/cublas-dev.sh; do
    if [[ -x $c ]]; then cublas=$("$c" 2>/dev/null | tail -n 1); break; fi
  done
  [[ -f $cublas/include/cublas_v2.h ]] || { echo "gpu-e2e: no cuBLAS (../shared/tools/cublas-dev.sh)" >&2; exit 1; }
  mkdir -p "$pack"
  cmake_js=$(node -e 'console.log(require("path").join(require("path").dirname(require.resolve("cmake-js/package.json")), "bin", "cmake-js"))')
  node "$cmake_js" configure --out build-e2e --CDOPTUNE_CUDA=ON "--CDOPTUNE_CUBLAS_ROOT=$cublas" \
    --CDCMAKE_CUDA_ARCHITECTURES=90 --CDOPTUNE_USE_BLAS=OFF >/dev/null
  node "$cmake_js" build --out build-e2e --parallel "$(nproc)" >/dev/null
  cp build-e2e/Release/optune.node "$pack/optune.node"
  npx tsc -p tsconfig.json
  tar cJf "$pack/dist.tar.xz" dist
  npm ls --omit=dev --all --parseable 2>/dev/null | grep '/node_modules/' | sed "s|^$root/||" | sort -u >"$pack/modules.txt"
  tar cJf "$pack/node_modules.tar.xz" -T "$pack/modules.txt"
  xz -T0 -c "$(command -v node)" >"$pack/node.xz"
  du -sh "$pack"
  echo "gpu-e2e: packed; on the GPU machine: bench/gpu-e2e.sh with carry [\".carry\"]"
  exit 0
fi

out=${OUT:-$root/gpu-e2e-out}
mkdir -p "$out"
limit=${OPTUNE_E2E_LIMIT:-240}
[[ -f $pack/node.xz && -f $pack/optune.node ]] || { echo "gpu-e2e: nothing packed: run bench/gpu-e2e.sh --pack here first" >&2; exit 1; }
bin=/tmp/optune-e2e-bin
mkdir -p "$bin"
xz -dc "$pack/node.xz" >"$bin/node" && chmod +x "$bin/node"
tar xJf "$pack/dist.tar.xz" -C "$root"
tar xJf "$pack/node_modules.tar.xz" -C "$root"
mkdir -p "$root/build/Release" && cp "$pack/optune.node" "$root/build/Release/optune.node"
# cuBLAS and the CUDA runtime: the toolkit's, else the pip wheels PyTorch brought
libs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [[ -d $d ]] && libs="$libs:$d"; done
for m in cublas cuda_runtime; do
  d=$(python3 -c "import importlib, os; p = importlib.import_module('nvidia.$m'); print(os.path.join(list(p.__path__)[0], 'lib'))" 2>/dev/null)
  [[ -n $d && -d $d ]] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="${libs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
node=$bin/node
read -r -a extra <<<"${OPTUNE_E2E_ARGS:-}"
device=${OPTUNE_E2E_DEVICE:-cuda}

"$node" bin/optune.js info 2>&1 | tee "$out/info.log"
status=0
for p in bf16 fp32; do
  t0=$SECONDS
  timeout "$limit" "$node" bin/optune.js run --device "$device" --precision "$p" --out "/tmp/optune-e2e-$p" --overwrite \
    "${extra[@]}" >"$out/run-$p.log" 2>&1
  rc=$?
  echo "run --device $device --precision $p: exit $rc ($((SECONDS - t0)) s)" | tee -a "$out/stages.log"
  ((rc == 0)) || status=1
  tail -n 25 "$out/run-$p.log"
  [[ -f /tmp/optune-e2e-$p/metrics.jsonl ]] && cp "/tmp/optune-e2e-$p/metrics.jsonl" "$out/metrics-$p.jsonl"
done
exit $status
