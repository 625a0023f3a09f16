#!/usr/bin/env bash
# Scale benchmark: SplitQuant on a Llama-3.2-1B-shaped model (bench/llama, ~1.5 B params,
# ~6 GB FP32 as external data), against the I/O floor of the machine.
#
#   scripts/bench_llama.sh                       # everything (build, generate, measure)
#   STEPS="gen" scripts/bench_llama.sh           # just generate the models
#   STEPS="main" RUNS=1 scripts/bench_llama.sh   # split on/off at THREADS, once each
#   STEPS="scaling" SCALING="2 4" scripts/bench_llama.sh
#
# Steps (STEPS, space-separated, in this order):
#   build    Release build of sqctl and sq_gen_llama into BUILD (no tests, no server)
#   gen      generate llama-B/model.onnx(+.data) under SCRATCH for BLOCKS and SCALING, if absent
#   main     split on vs off at THREADS threads, RUNS runs each, + the I/O floor
#   threads  split on at 1 thread (RUNS runs); outputs must be byte-identical to THREADS'
#   scaling  split on at THREADS over SCALING block counts (SCALING_RUNS runs each)
#
# Each sqctl run: `sqctl quantize IN -o OUT --bits BITS --granularity GRANULARITY --format
# FORMAT --split on|off --threads T --verify off --report R.json` (verification is timed
# on its own: docs/benchmarks.md) under `/usr/bin/time -v` (peak RSS =
# "Maximum resident set size"); its output is deleted after the run (KEEP_OUTPUTS=1 keeps
# it). The floor: the input bytes read from a warm page cache (cat > /dev/null, twice, the
# second timed) plus the output bytes written to the page cache (head -c N /dev/zero, twice,
# the second timed, no sync), N = that configuration's real output size. An untimed `sync`
# before each sqctl run and each floor write keeps earlier runs' writeback out of the timing.
# Results: a markdown report on stdout and in SCRATCH/results.md; raw per-run files under
# SCRATCH/runs/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-scale}
SCRATCH=${SCRATCH:-/tmp/sq-bench}
BLOCKS=${BLOCKS:-16}
THREADS=${THREADS:-2}
RUNS=${RUNS:-3}
SCALING=${SCALING-2 4 8 16}  # "" = none
SCALING_RUNS=${SCALING_RUNS:-1}
STEPS=${STEPS-build gen main threads scaling}
SEED=${SEED:-0}
GEN_THREADS=${GEN_THREADS:-0}
BITS=${BITS:-4}
GRANULARITY=${GRANULARITY:-channel}
FORMAT=${FORMAT:-qdq}
KEEP_OUTPUTS=${KEEP_OUTPUTS:-0}
CMAKE_ARGS=${CMAKE_ARGS:-}
SQCTL=${SQCTL:-$BUILD/client/sqctl}
GEN=${GEN:-$BUILD/bench/llama/sq_gen_llama}

RUNS_DIR=$SCRATCH/runs
OUT_DIR=$SCRATCH/out
RESULTS=$SCRATCH/results.md

BENCH_NAME=bench_llama
# shellcheck source=scripts/bench_common.sh
source "$ROOT/scripts/bench_common.sh"
has_step() { [[ " $STEPS " == *" $1 "* ]]; }

[[ -x /usr/bin/time ]] || die "/usr/bin/time not found (Debian package 'time')"
if command -v jq >/dev/null 2>&1; then JSON=jq
elif command -v python3 >/dev/null 2>&1; then JSON=python3
else die "need jq or python3 to read the sqctl report"; fi
[[ "$SCRATCH" != "$ROOT"* ]] || die "SCRATCH ($SCRATCH) must be outside the repository"
mkdir -p "$SCRATCH" "$RUNS_DIR" "$OUT_DIR"

report_stages() {
  if [[ $JSON == jq ]]; then jq -r '.stages[]? | "\(.stage)=\(.seconds)"' "$1"
  else python3 -c 'import json,sys
for s in json.load(open(sys.argv[1])).get("stages", []): print("%s=%s" % (s["stage"], s["seconds"]))' "$1"; fi
}
report_field() {  # report_field FILE FIELD
  if [[ $JSON == jq ]]; then jq -r ".$2 // empty" "$1"
  else python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"; fi
}
model_dir() { echo "$SCRATCH/llama-$1"; }
model_in() { echo "$(model_dir "$1")/model.onnx"; }
model_bytes() { file_bytes "$(model_in "$1")" "$(model_in "$1").data"; }

# ---- build ------------------------------------------------------------------------------
if has_step build; then
  log "building sqctl and sq_gen_llama (Release) in $BUILD"
  # shellcheck disable=SC2086
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSQ_BUILD_TESTS=OFF \
    -DSQ_BUILD_SERVER=OFF $CMAKE_ARGS >/dev/null
  cmake --build "$BUILD" --target sq_gen_llama sqctl -- -j"$(nproc)" >/dev/null
fi

# ---- generate ---------------------------------------------------------------------------
gen_model() {  # gen_model BLOCKS
  local b=$1 dir; dir=$(model_dir "$b")
  if [[ -f $dir/model.onnx && -f $dir/model.onnx.data ]]; then return; fi
  [[ -x $GEN ]] || die "generator not built: $GEN (run with STEPS including build)"
  # The full-width model: embedding + lm_head ~2.1 GB, ~243 MB a block.
  need_space $((2101346304 + b * 243269632)) "the $b-block model"
  log "generating the $b-block model into $dir"
  mkdir -p "$dir"
  /usr/bin/time -v -o "$dir/gen.time" "$GEN" --out "$dir/model.onnx" --blocks "$b" \
    --seed "$SEED" --threads "$GEN_THREADS" >"$dir/gen.log"
  cat "$dir/gen.log" >&2
}
GEN_LIST=$BLOCKS
if has_step scaling; then GEN_LIST+=" $SCALING"; fi
if has_step gen; then
  for b in $GEN_LIST; do gen_model "$b"; done
fi

# ---- measure ----------------------------------------------------------------------------
if has_step main || has_step threads || has_step scaling; then
  [[ -x $SQCTL ]] || die "sqctl not built: $SQCTL"
  "$SQCTL" quantize --help >/dev/null 2>&1 || die "$SQCTL quantize --help fails"
fi

# run_sq TAG BLOCKS SPLIT THREADS RUN -> files RUNS_DIR/TAG.RUN.{time,json,sha,bytes}
run_sq() {
  local tag=$1 b=$2 split=$3 t=$4 i=$5 in out
  in=$(model_in "$b")
  [[ -f $in ]] || die "no model $in (run STEPS=gen with BLOCKS/SCALING including $b)"
  out=$OUT_DIR/$tag/model.onnx
  rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR/$tag"
  # Output: at most the input's size (FP32 kept layers + codes + scales).
  need_space "$(model_bytes "$b")" "the output of $tag"
  log "run $tag #$i: blocks=$b split=$split threads=$t"
  sync  # untimed: start every run with no dirty pages of earlier runs pending
  if ! /usr/bin/time -v -o "$RUNS_DIR/$tag.$i.time" "$SQCTL" quantize "$in" -o "$out" \
      --bits "$BITS" --granularity "$GRANULARITY" --format "$FORMAT" --split "$split" \
      --threads "$t" --verify off --report "$RUNS_DIR/$tag.$i.json" --quiet \
      >"$RUNS_DIR/$tag.$i.log" 2>&1; then
    cat "$RUNS_DIR/$tag.$i.log" >&2
    die "sqctl failed ($tag #$i)"
  fi
  file_bytes "$out" "$out.data" >"$RUNS_DIR/$tag.$i.bytes"
  if ((i == 1)); then
    local files=(model.onnx)
    [[ -e $out.data ]] && files+=(model.onnx.data)
    (cd "$OUT_DIR/$tag" && sha256sum "${files[@]}") >"$RUNS_DIR/$tag.sha"
  fi
  if [[ $KEEP_OUTPUTS != 1 ]]; then rm -rf "$OUT_DIR"; fi
}

# floor BLOCKS OUT_BYTES -> "read_s write_s"
floor() { io_floor "$OUT_DIR" "$2" "$(model_in "$1")" "$(model_in "$1").data"; }

# series TAG BLOCKS SPLIT THREADS RUNS: runs it, then one markdown row in ROWS_<section>.
declare -a MAIN_ROWS=() SCALE_ROWS=() STAGE_ROWS=()
declare -A MEDIAN=()
series() {
  local tag=$1 b=$2 split=$3 t=$4 n=$5 i walls rss med rssmed out_bytes fr fw ftot
  # Warm page cache for every run (the generator writes with O_DIRECT, leaving it cold).
  cat "$(model_in "$b")" "$(model_in "$b").data" >/dev/null
  for ((i = 1; i <= n; i++)); do run_sq "$tag" "$b" "$split" "$t" "$i"; done
  walls=$(for ((i = 1; i <= n; i++)); do time_wall "$RUNS_DIR/$tag.$i.time"; done)
  rss=$(for ((i = 1; i <= n; i++)); do time_rss "$RUNS_DIR/$tag.$i.time"; done)
  med=$(median <<<"$walls")
  rssmed=$(median <<<"$rss")
  out_bytes=$(cat "$RUNS_DIR/$tag.1.bytes")
  read -r fr fw <<<"$(floor "$b" "$out_bytes")"
  ftot=$(awk -v a="$fr" -v b="$fw" 'BEGIN { printf "%.2f", a + b }')
  MEDIAN[$tag]=$med
  local in_bytes; in_bytes=$(model_bytes "$b")
  local row
  row="| $tag | $b | $split | $t | $n | $med | $(sort -g <<<"$walls" | head -1) | $ftot ($fr r + $fw w) | $(ratio "$med" "$ftot") | $(mib "$rssmed") | $(gb "$in_bytes") | $(gb "$out_bytes") |"
  if [[ $tag == scale-* ]]; then
    SCALE_ROWS+=("| $b | $(gb "$in_bytes") | $med | $(ratio "$med" "$(gb "$in_bytes")") | $ftot | $(ratio "$med" "$ftot") | $(mib "$rssmed") |")
  else
    MAIN_ROWS+=("$row")
  fi
  # Per-stage medians over the runs.
  local stages st line=""
  stages=$(for ((i = 1; i <= n; i++)); do report_stages "$RUNS_DIR/$tag.$i.json"; done)
  while read -r st; do
    [[ -n $st ]] && line+=" $st $(grep "^$st=" <<<"$stages" | cut -d= -f2 | median |
      awk '{ printf "%.2f", $1 }') s,"
  done < <(cut -d= -f1 <<<"$stages" | awk '!seen[$0]++')
  local prss; prss=$(report_field "$RUNS_DIR/$tag.1.json" peak_rss_bytes)
  STAGE_ROWS+=("| $tag |${line%,} | ${prss:+$(mib "$prss") MiB} |")
}

if has_step main; then
  series "split-t$THREADS" "$BLOCKS" on "$THREADS" "$RUNS"
  series "plain-t$THREADS" "$BLOCKS" off "$THREADS" "$RUNS"
fi
if has_step threads; then
  series "split-t1" "$BLOCKS" on 1 "$RUNS"
  if [[ -f $RUNS_DIR/split-t$THREADS.sha ]]; then
    if cmp -s "$RUNS_DIR/split-t1.sha" "$RUNS_DIR/split-t$THREADS.sha"; then
      THREADS_SAME="identical (sha256 $(cut -c1-16 "$RUNS_DIR/split-t1.sha" | head -1)…)"
    else
      THREADS_SAME="DIFFERENT"
    fi
  fi
fi
if has_step scaling; then
  for b in $SCALING; do series "scale-b$b" "$b" on "$THREADS" "$SCALING_RUNS"; done
fi

# ---- report -----------------------------------------------------------------------------
{
  echo "## SplitQuant scale benchmark: Llama-3.2-1B-shaped model"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM;" \
    "sqctl quantize --bits $BITS --granularity $GRANULARITY --format $FORMAT; $(date -u +%Y-%m-%dT%H:%MZ)."
  echo "Floor = warm-cache read of the input + page-cache write of the output's size."
  echo
  if ((${#MAIN_ROWS[@]})); then
    echo "| config | blocks | split | threads | runs | median s | best s | floor s | × floor | peak RSS MiB | in GB | out GB |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${MAIN_ROWS[@]}"
    echo
    if [[ -n ${MEDIAN[split-t$THREADS]:-} && -n ${MEDIAN[plain-t$THREADS]:-} ]]; then
      echo "Split / plain time ratio at $THREADS threads: $(ratio "${MEDIAN[split-t$THREADS]}" "${MEDIAN[plain-t$THREADS]}")"
    fi
    if [[ -n ${MEDIAN[split-t1]:-} && -n ${MEDIAN[split-t$THREADS]:-} ]]; then
      echo "Speed-up 1 -> $THREADS threads (split): $(ratio "${MEDIAN[split-t1]}" "${MEDIAN[split-t$THREADS]}")"
    fi
    [[ -n ${THREADS_SAME:-} ]] && echo "Output, 1 vs $THREADS threads: $THREADS_SAME"
    echo
  fi
  if ((${#SCALE_ROWS[@]})); then
    echo "Scaling (split on, $THREADS threads):"
    echo
    echo "| blocks | in GB | median s | s / GB | floor s | × floor | peak RSS MiB |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${SCALE_ROWS[@]}"
    echo
  fi
  if ((${#STAGE_ROWS[@]})); then
    echo "Per-stage medians (from the report's \"stages\"; report peak_rss_bytes):"
    echo
    echo "| config | stages | report peak RSS |"
    echo "|---|---|---|"
    printf '%s\n' "${STAGE_ROWS[@]}"
    echo
  fi
  gen_rows=""
  for b in $BLOCKS $SCALING; do
    t=$(model_dir "$b")/gen.time
    [[ -f $t ]] && gen_rows+="| $b | $(gb "$(model_bytes "$b")") | $(time_wall "$t") | $(mib "$(time_rss "$t")") |"$'\n'
  done
  if [[ -n $gen_rows ]]; then
    echo "Model generation (sq_gen_llama):"
    echo
    echo "| blocks | data GB | seconds | peak RSS MiB |"
    echo "|---|---|---|---|"
    printf '%s' "$gen_rows" | awk '!seen[$0]++'
  fi
} | tee "$RESULTS"
