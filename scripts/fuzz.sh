#!/usr/bin/env bash
# Fuzzes the checkpoint parsers with libFuzzer (Debian's clang, packages clang + libclang-rt-14-dev):
#   fuzz_json                 json::parse, plus a write/read round trip of what parses
#   fuzz_safetensors_header   safetensors::parse_header (8-byte data size + header JSON)
#   fuzz_safetensors_file     a whole file through safetensors::Reader / load (temp file, every tensor read)
#   fuzz_hf_config            config_from_hf_json, plus config_to_hf_json round trip of what is accepted
# Built with -fsanitize=fuzzer,address,undefined straight from the core sources (the parsers need no OpenMP).
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
#        scripts/fuzz.sh --smoke                 (10 s per target, for CI)
#        FUZZ_TARGETS="fuzz_json fuzz_hf_config" scripts/fuzz.sh 300   (a subset)
# Seeds: the committed fixtures under native/test/fixtures, the small hand-made cases in native/fuzz/seeds/<target>
# (regressions included) and a few synthetic safetensors files made here. New corpus entries go to
# build-fuzz/corpus/<target> (not committed); crashes are written to build-fuzz/artifacts/ and make this exit 1.
# Last line: "N passed, N failed" (one per target).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=60
case "${1:-}" in
  --smoke) seconds=10 ;;
  "") ;;
  *[!0-9]* | 0) echo "usage: $0 [SECONDS_PER_TARGET | --smoke]" >&2; exit 2 ;;
  *) seconds=$1 ;;
esac
targets=(${FUZZ_TARGETS:-fuzz_json fuzz_safetensors_header fuzz_safetensors_file fuzz_hf_config})

cxx=${FUZZ_CXX:-clang++}
if ! command -v "$cxx" >/dev/null; then
  echo "fuzz: $cxx not found (apt-get install clang libclang-rt-14-dev)" >&2
  echo "0 passed, ${#targets[@]} failed"
  exit 1
fi

out=$root/build-fuzz
mkdir -p "$out/obj" "$out/artifacts"

# ---- build ------------------------------------------------------------------------------------------------------
# The core objects once (fuzzer-no-link: coverage without libFuzzer's main), then one link per target.
flags=(-std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
       -Inative -Wno-unknown-pragmas)
core_sources=(native/core/json.cpp native/core/safetensors.cpp native/core/checkpoint.cpp native/core/config.cpp
              native/core/params.cpp native/core/model.cpp native/core/host_memory.cpp native/core/lora.cpp)
build_failed=0
objs=()
for src in "${core_sources[@]}"; do
  obj=$out/obj/$(basename "$src" .cpp).o
  objs+=("$obj")
  # Rebuilt when any core source or header changed since (headers are shared, so any change counts).
  if [[ ! -f $obj || -n $(find native/core -newer "$obj" -print -quit) ]]; then
    echo "fuzz: compiling $src"
    "$cxx" "${flags[@]}" -fsanitize=fuzzer-no-link -c "$src" -o "$obj" || build_failed=1
  fi
done
if ((build_failed)); then
  echo "fuzz: building the core sources failed" >&2
  echo "0 passed, ${#targets[@]} failed"
  exit 1
fi
for t in "${targets[@]}"; do
  if [[ ! -f native/fuzz/$t.cpp ]]; then
    echo "fuzz: no target native/fuzz/$t.cpp" >&2
    echo "0 passed, ${#targets[@]} failed"
    exit 1
  fi
  echo "fuzz: linking $t"
  "$cxx" "${flags[@]}" -fsanitize=fuzzer "native/fuzz/$t.cpp" "${objs[@]}" -o "$out/$t" || build_failed=1
done
if ((build_failed)); then
  echo "fuzz: building the fuzz targets failed" >&2
  echo "0 passed, ${#targets[@]} failed"
  exit 1
fi

# ---- seed corpora -----------------------------------------------------------------------------------------------
seeds=$out/seeds
rm -rf "$seeds"
mkdir -p "$seeds"/{fuzz_json,fuzz_safetensors_header,fuzz_safetensors_file,fuzz_hf_config}
fixtures=native/test/fixtures
n=0
for f in $(find "$fixtures" -name '*.json' | sort); do
  n=$((n + 1))
  cp "$f" "$seeds/fuzz_json/fixture_$n.json"
  [[ $(basename "$f") == config.json ]] && cp "$f" "$seeds/fuzz_hf_config/fixture_$n.json"
done
# Safetensors files under 40 KB as whole-file seeds (bigger ones only slow each run); every file's header, with
# its data size in front, as a header seed and as a JSON seed. Python reads the 8-byte length portably.
python3 - "$seeds" $(find "$fixtures" -name '*.safetensors' | sort) <<'PY'
import json, os, shutil, struct, sys
seeds, files = sys.argv[1], sys.argv[2:]
for i, path in enumerate(files):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8 : 8 + n]
    open(f"{seeds}/fuzz_safetensors_header/fixture_{i}", "wb").write(struct.pack("<Q", len(raw) - 8 - n) + header)
    open(f"{seeds}/fuzz_json/header_{i}.json", "wb").write(header)
    if len(raw) <= 40000:
        shutil.copy(path, f"{seeds}/fuzz_safetensors_file/fixture_{i}.safetensors")

# Small synthetic files for the dtypes and shapes the fixtures lack: F64, I32 (not convertible), 0-d, empty tensors,
# metadata, and no tensors at all.
def st(tensors, metadata=None):
    hdr, data = {}, b""
    if metadata is not None:
        hdr["__metadata__"] = metadata
    for name, dtype, shape, payload in tensors:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    text = json.dumps(hdr, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data
synthetic = {
    "f64_i32": st([("a", "F64", [2], struct.pack("<2d", 1.5, -2.0)), ("b", "I32", [1], struct.pack("<i", 7))]),
    "scalar_empty": st([("s", "F32", [], struct.pack("<f", 3.0)), ("e", "F16", [0, 4], b"")], {"format": "pt"}),
    "f16_bf16": st([("h", "F16", [2, 2], struct.pack("<4H", 0x3C00, 0x7C00, 0x0001, 0xFE00)),
                    ("b", "BF16", [3], struct.pack("<3H", 0x3F80, 0x7FC0, 0x8000))]),
    "no_tensors": st([], {"k": "v"}),
}
for name, blob in synthetic.items():
    open(f"{seeds}/fuzz_safetensors_file/{name}.safetensors", "wb").write(blob)
    (n,) = struct.unpack("<Q", blob[:8])
    open(f"{seeds}/fuzz_safetensors_header/{name}", "wb").write(struct.pack("<Q", len(blob) - 8 - n) + blob[8 : 8 + n])
PY
for t in "${targets[@]}"; do
  if [[ -d native/fuzz/seeds/$t ]]; then cp native/fuzz/seeds/$t/* "$seeds/$t/" 2>/dev/null; fi
done

# ---- run --------------------------------------------------------------------------------------------------------
passed=0
failed=0
for t in "${targets[@]}"; do
  corpus=$out/corpus/$t
  mkdir -p "$corpus"
  log=$out/$t.log
  echo "== $t: ${seconds}s"
  # -rss_limit_mb: a parser that allocates without bound fails here instead of swapping; -timeout: a hang fails.
  # The first corpus dir gets new entries; the seed dir is read only.
  if ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "$out/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$out/artifacts/$t-" "$corpus" "$seeds/$t" >"$log" 2>&1; then
    passed=$((passed + 1))
    grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$log" | tail -n 2 | sed "s/^/  /"
  else
    failed=$((failed + 1))
    echo "fuzz: $t FAILED; last lines of $log:" >&2
    tail -n 40 "$log" >&2
  fi
done
echo "$passed passed, $failed failed"
((failed == 0))
