#!/usr/bin/env bash
# Robustness checks for CI (issue 7), run after `npm ci` (needs node_modules and dist/):
#   1. native tests built with -DOPTUNE_SANITIZE=ON (ASan + UBSan, OpenMP on) in build-asan/, via scripts/test.mjs
#   2. a libFuzzer smoke of the parsers: scripts/fuzz.sh --smoke (10 s per target)
#   3. the addon leak check: an addon built for valgrind (no -march=native) in build-leak/, then
#      scripts/leak-check.mjs (RSS growth, 100 warm-up + 2 x 100 measured iterations) and scripts/leak-check.mjs --valgrind (3 vs 6)
# Installs clang, libclang-rt-14-dev and valgrind when missing (Debian, as root). Every step prints its own
# "N passed, N failed"; the last line here is their sum. Exits non-zero on any failure. About 8 minutes on 2 cores.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
lines=()
logs=$(mktemp -d)

# step NAME LOG: adds the counts of the log's last line ("N passed, N failed"); 1 failed when absent.
step() {
  local last
  last=$(tail -n 1 "$2")
  if [[ $last =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
    passed=$((passed + BASH_REMATCH[1]))
    failed=$((failed + BASH_REMATCH[2]))
  else
    echo "robustness: $1 printed no final count line" >&2
    failed=$((failed + 1))
    last="no count line"
  fi
  lines+=("$(printf '  %-24s %s  (%ds)' "$1" "$last" "$((SECONDS - step_start))")")
}

packages=(clang libclang-rt-14-dev valgrind)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  echo "== installing ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

step_start=$SECONDS
echo "== native tests, OPTUNE_SANITIZE=ON (ASan + UBSan)"
OPTUNE_TEST_ONLY=native OPTUNE_TEST_BUILD_DIR=build-asan OPTUNE_CMAKE_ARGS="-DOPTUNE_SANITIZE=ON" \
  node scripts/test.mjs 2>&1 | tee "$logs/asan.log"
step "native tests (asan)" "$logs/asan.log"

step_start=$SECONDS
echo "== fuzz smoke"
scripts/fuzz.sh --smoke 2>&1 | tee "$logs/fuzz.log"
step "fuzz smoke" "$logs/fuzz.log"

step_start=$SECONDS
echo "== addon leak check"
# RelWithDebInfo for readable valgrind stacks; OPTUNE_NATIVE_ARCH=OFF because valgrind cannot run AVX-512 code.
if node node_modules/cmake-js/bin/cmake-js compile -O build-leak -B RelWithDebInfo --CDOPTUNE_NATIVE_ARCH=OFF \
  --parallel "$(nproc)" >"$logs/leak-build.log" 2>&1; then
  export OPTUNE_ADDON=build-leak/RelWithDebInfo/optune.node
  # One malloc arena: glibc gives each thread that allocates (libuv workers, OpenMP threads of the sampler's decode
  # groups) its own arena and keeps it, so RSS climbs to a plateau (~100 MiB here) over the first few hundred
  # iterations without any leak (valgrind agrees). With one arena the check measures leaks, not arena warm-up.
  MALLOC_ARENA_MAX=1 node scripts/leak-check.mjs 2>&1 | tee "$logs/leak-rss.log"
  step "leak check (rss)" "$logs/leak-rss.log"
  step_start=$SECONDS
  node scripts/leak-check.mjs --valgrind 2>&1 | tee "$logs/leak-valgrind.log"
  step "leak check (valgrind)" "$logs/leak-valgrind.log"
else
  tail -n 40 "$logs/leak-build.log"
  echo "0 passed, 1 failed" >"$logs/leak-rss.log"
  step "leak check (addon build)" "$logs/leak-rss.log"
fi

rm -rf "$logs"
echo "== robustness summary"
printf '%s\n' "${lines[@]}"
echo "$passed passed, $failed failed"
((failed == 0))
