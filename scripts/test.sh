#!/usr/bin/env bash
# Builds sq and runs the whole test suite, from a fresh machine: installs what it needs
# (scripts/setup.sh), builds in build/ (Release with debug info), runs every GoogleTest
# through ctest, then repeats every test in an ASan+UBSan build (build-asan/) and the
# service's tests (server, job queue, store, ONNX Runtime worker, load; ctest label
# "service") in a ThreadSanitizer build (build-tsan/, clang, with abseil rebuilt from
# Debian's source by scripts/tsan_absl.sh; any report fails the run).
# Then builds the libFuzzer harnesses (clang) and runs each for a few seconds
# (scripts/fuzz.sh all $SQ_FUZZ_SECONDS, default 10). Each ctest pass gets an empty TMPDIR
# of its own (<build>/test-tmp); anything a test leaves there fails the run.
# Environment: SQ_SKIP_SANITIZE=1 skips the ASan+UBSan pass, SQ_SKIP_TSAN=1 the TSan pass,
# SQ_SKIP_FUZZ=1 the fuzz smoke run; JOBS overrides parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
JOBS="${JOBS:-$(nproc)}"

# The four builds take ~6.5 GB (build 1.9, build-asan 3.7, build-tsan 0.5, build-fuzz 0.2),
# and ccache (~/.cache/ccache) grows beside them; the tests clean up what they write. Say so
# up front rather than stop half-way with a compiler's "No space left on device".
free_gb=$(df --output=avail -BG . | tail -1 | tr -dc 0-9)
if (( free_gb < 8 )); then
  echo "test: warning: only ${free_gb} GB free under $PWD; a full run needs about 8 GB" \
       "(SQ_SKIP_SANITIZE=1 saves 3.7 GB)" >&2
fi

# Each ctest pass runs with a fresh, empty TMPDIR (and TEST_TMPDIR) of its own inside its
# build folder, and a test that leaves anything there fails the run, naming it: tests remove
# what they write (tests/support/model_builder.h: MakeTempDir), so runs do not fill the disk.
fresh_tmp() {
  rm -rf "$1/test-tmp" && mkdir -p "$1/test-tmp"
  echo "$PWD/$1/test-tmp"
}
check_tmp() {
  local left
  left=$(find "$1/test-tmp" -mindepth 1 -maxdepth 1 -printf '  %f\n' | head -20)
  if [[ -n $left ]]; then
    echo "test: the tests of $1 left these in $1/test-tmp (a test removes what it writes):" >&2
    echo "$left" >&2
    exit 1
  fi
  rm -rf "$1/test-tmp"
}

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build -j"$JOBS"
tmp=$(fresh_tmp build)
(cd build && TMPDIR="$tmp" TEST_TMPDIR="$tmp" ctest -j"$JOBS" --output-on-failure --timeout 900)
check_tmp build

if [[ "${SQ_SKIP_SANITIZE:-0}" != "1" ]]; then
  # The whole suite, engine and service, under AddressSanitizer + UndefinedBehaviorSanitizer.
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSQ_SANITIZE=ON \
        -DSQ_BUILD_SERVER=ON >/dev/null
  ninja -C build-asan -j"$JOBS"
  tmp=$(fresh_tmp build-asan)
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
     LSAN_OPTIONS="suppressions=$PWD/../tests/lsan.supp:print_suppressions=0" \
     TMPDIR="$tmp" TEST_TMPDIR="$tmp" ctest -j"$JOBS" --output-on-failure --timeout 900)
  check_tmp build-asan
fi

if [[ "${SQ_SKIP_TSAN:-0}" != "1" ]]; then
  # The service under ThreadSanitizer. Every libabsl_* the processes load (ours and gRPC's)
  # is the TSan-built one; child processes (sq-server, sqctl, sq-ort-worker, all TSan builds
  # here) inherit the options and write their reports beside the tests' own.
  absl_tsan="$(bash scripts/tsan_absl.sh)"
  CC=clang CXX=clang++ cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DSQ_TSAN=ON >/dev/null
  ninja -C build-tsan -j"$JOBS" service_tests
  reports="$PWD/build-tsan/tsan-reports"
  rm -rf "$reports" && mkdir -p "$reports"
  # A report makes its test fail (exitcode=66) after the test itself passed: print the
  # reports whether or not ctest failed, so the run that failed says why.
  tsan_rc=0
  tmp=$(fresh_tmp build-tsan)
  (cd build-tsan && LD_LIBRARY_PATH="$absl_tsan" \
     TSAN_OPTIONS="suppressions=$PWD/../tests/tsan.supp:ignore_interceptors_accesses=1:log_path=$reports/race:exitcode=66" \
     TMPDIR="$tmp" TEST_TMPDIR="$tmp" ctest -j"$JOBS" -L service -LE python --output-on-failure \
       --timeout 900) || tsan_rc=$?
  if compgen -G "$reports/race*" >/dev/null; then
    cat "$reports"/race* >&2
    echo "test: ThreadSanitizer reported the races above" >&2
    exit 1
  fi
  if [[ "$tsan_rc" != 0 ]]; then
    echo "test: the ThreadSanitizer pass failed (ctest exit $tsan_rc)" >&2
    exit "$tsan_rc"
  fi
  check_tmp build-tsan
fi

if [[ "${SQ_SKIP_FUZZ:-0}" != "1" ]]; then
  # Every harness for a few seconds from its seeds (long runs: scripts/fuzz.sh TARGET SECONDS).
  JOBS="$JOBS" scripts/fuzz.sh all "${SQ_FUZZ_SECONDS:-10}"
fi
