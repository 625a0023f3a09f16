#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz/, clang from Debian, ASan + UBSan) and runs one
# or all of them for a while.
#
#   scripts/fuzz.sh TARGET SECONDS     TARGET: model | external_data | options | tensor_file |
#                                      upload | all (each target SECONDS in turn)
#   scripts/fuzz.sh all 10             # the smoke run scripts/test.sh makes
#   scripts/fuzz.sh model 3600         # an hour on the model loader
#
# Seeds come from tests/fuzz/seeds.cc (the hostile corpus, valid models, well-formed inputs),
# regenerated for every build; the corpus each run grows is kept outside git in
# $SQ_CACHE/fuzz-corpus/TARGET, so later runs start where earlier ones stopped. A crash,
# leak, timeout or broken invariant stops the run: the input is saved under
# build-fuzz/crashes/TARGET/ and the script exits 1 (turn it into a hostile-corpus case:
# docs/reliability.md). Prints executions and coverage per target.
# Environment: BUILD (build-fuzz), JOBS, SQ_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(model external_data options tensor_file upload)
target=${1:-}
seconds=${2:-}
if [[ -z $target || -z $seconds || ! $seconds =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh TARGET|all SECONDS   (targets: ${TARGETS[*]})" >&2
  exit 2
fi
if [[ $target == all ]]; then
  run=("${TARGETS[@]}")
else
  [[ " ${TARGETS[*]} " == *" $target "* ]] || { echo "fuzz: unknown target '$target' (${TARGETS[*]})" >&2; exit 2; }
  run=("$target")
fi

BUILD=${BUILD:-build-fuzz}
JOBS=${JOBS:-$(nproc)}
SQ_CACHE="${SQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sq}"
command -v clang++ >/dev/null 2>&1 || { echo "fuzz: clang++ not found (apt-get install clang)" >&2; exit 1; }

mkdir -p "$BUILD"
if ! { CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSQ_FUZZ=ON \
         -DSQ_BUILD_TESTS=OFF &&
       ninja -C "$BUILD" -j"$JOBS" sq_fuzz_seeds "${run[@]/%/_fuzz}"; } >"$BUILD/build.log" 2>&1; then
  echo "fuzz: building the harnesses failed ($BUILD/build.log):" >&2
  grep -E "error|FAILED" "$BUILD/build.log" | head -20 >&2
  exit 1
fi
rm -rf "$BUILD/seeds"
"$BUILD/tests/fuzz/sq_fuzz_seeds" "$BUILD/seeds" >/dev/null

status=0
for t in "${run[@]}"; do
  corpus=$SQ_CACHE/fuzz-corpus/$t
  crashes=$BUILD/crashes/$t
  mkdir -p "$corpus" "$crashes"
  log=$BUILD/fuzz-$t.log
  # The files a harness writes (tests/fuzz/fuzz_util.h: ScratchDir, under $TMPDIR) go in a
  # folder of this run's, removed after the target, so runs leave nothing in /tmp.
  scratch=$(realpath -m "$BUILD/scratch/$t")
  rm -rf "$scratch" && mkdir -p "$scratch"
  # ONNX Runtime (linked, never called by these harnesses) keeps process-lifetime allocations.
  if TMPDIR="$scratch" ASAN_OPTIONS=detect_leaks=1 \
     LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0" \
     "$BUILD/tests/fuzz/${t}_fuzz" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
       -max_len=65536 -print_final_stats=1 -artifact_prefix="$crashes/" \
       "$corpus" "$BUILD/seeds/$t" >"$log" 2>&1; then
    execs=$(awk '/stat::number_of_executed_units/ { print $NF }' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    printf 'fuzz %-14s %6s s  %10s executions  coverage %s  corpus %s\n' "$t" "$seconds" \
      "${execs:-?}" "${cov:-?}" "$(find "$corpus" -type f | wc -l)"
  else
    echo "fuzz $t: FAILED — input saved under $crashes/; log $log:" >&2
    grep -E "ERROR|invariant|SUMMARY|Test unit written" "$log" | head -20 >&2
    status=1
  fi
  rm -rf "$scratch"
done
exit $status
