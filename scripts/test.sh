#!/usr/bin/env bash
# Builds sq and runs the whole test suite, from a fresh machine: installs what it needs
# (scripts/setup.sh), builds in build/ (Release with debug info), runs every GoogleTest
# through ctest, then repeats the engine's tests in an ASan+UBSan build (build-asan/).
# Then builds the libFuzzer harnesses (clang) and runs each for a few seconds
# (scripts/fuzz.sh all $SQ_FUZZ_SECONDS, default 10).
# Environment: SQ_SKIP_SANITIZE=1 skips the sanitizer pass, SQ_SKIP_FUZZ=1 the fuzz smoke
# run; JOBS overrides parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
JOBS="${JOBS:-$(nproc)}"

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build -j"$JOBS"
(cd build && ctest -j"$JOBS" --output-on-failure --timeout 900)

if [[ "${SQ_SKIP_SANITIZE:-0}" != "1" ]]; then
  # The engine (no service) under AddressSanitizer + UndefinedBehaviorSanitizer.
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSQ_SANITIZE=ON \
        -DSQ_BUILD_SERVER=OFF >/dev/null
  ninja -C build-asan -j"$JOBS"
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
     LSAN_OPTIONS="suppressions=$PWD/../tests/lsan.supp:print_suppressions=0" \
     ctest -j"$JOBS" --output-on-failure --timeout 900)
fi

if [[ "${SQ_SKIP_FUZZ:-0}" != "1" ]]; then
  # Every harness for a few seconds from its seeds (long runs: scripts/fuzz.sh TARGET SECONDS).
  JOBS="$JOBS" scripts/fuzz.sh all "${SQ_FUZZ_SECONDS:-10}"
fi
