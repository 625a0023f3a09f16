#!/usr/bin/env bash
# Peer benchmark: sq against llama.cpp's llama-quantize on the same weights, one sitting.
#
# The Llama-3.2-1B-shaped scale model (bench/llama, ~1.5 B params, 6 GB FP32) is written
# twice: as ONNX (sq's input, from sq_gen_llama) and as an F32 GGUF with the same tensors
# (bench/llama/onnx_to_gguf.py, using llama.cpp's own gguf-py). Then, interleaved round by
# round, RUNS times each: llama-quantize --pure Q4_0 and Q8_0, and sqctl quantize plain and
# split at INT4 and INT8 per-channel, for the sq targets in SQ_TARGETS. Prints medians, peak
# RSS, output sizes, each job's I/O floor, and the ratios sq / llama-quantize and
# split / plain.
#
#   scripts/bench_peer.sh                     # everything (first run builds the peer: minutes)
#   RUNS=1 SQ_TARGETS=qdq scripts/bench_peer.sh
#   STEPS="peer" scripts/bench_peer.sh        # only build llama-quantize
#
# llama.cpp is never vendored: its source is the git bundle that npm `node-llama-cpp@3.22.1`
# ships (llama/gitRelease.bundle), cloned and built (llama-quantize only) under PEER_DIR,
# a cache outside git. Needs cmake, ninja, a C++ compiler, npm, /usr/bin/time, and Debian's
# python3-numpy and python3-onnx (installed here when missing and running as root), and
# free disk under SCRATCH: the 6 GB model, its 6 GB GGUF and one output at a time (the
# script checks and stops with a message when short).
#
# Steps (STEPS, in this order): peer (build llama-quantize), model (build sqctl and
# generate the ONNX model via scripts/bench_llama.sh), gguf (convert), run (measure),
# threads (sq split INT4 at 1 thread; outputs must be byte-identical to THREADS').
#
# Environment: SCRATCH (/tmp/sq-bench), BLOCKS (16), THREADS (2), RUNS (3), SQ_TARGETS
# ("qdq ort-cpu"), BITS_LIST ("4 8"), BUILD (build-scale), PEER_DIR
# (~/.cache/sq/llama.cpp-node-llama-cpp-3.22.1), KEEP_GGUF (1: keep the F32 GGUF).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SQ_CACHE=${SQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sq}
PEER_PKG=node-llama-cpp@3.22.1
PEER_DIR=${PEER_DIR:-$SQ_CACHE/llama.cpp-node-llama-cpp-3.22.1}
BUILD=${BUILD:-$ROOT/build-scale}
SCRATCH=${SCRATCH:-/tmp/sq-bench}
BLOCKS=${BLOCKS:-16}
THREADS=${THREADS:-2}
RUNS=${RUNS:-3}
SQ_TARGETS=${SQ_TARGETS:-qdq ort-cpu}
BITS_LIST=${BITS_LIST:-4 8}
STEPS=${STEPS-peer model gguf run threads}
KEEP_GGUF=${KEEP_GGUF:-1}
SQCTL=$BUILD/client/sqctl
QUANTIZE=$PEER_DIR/build/bin/llama-quantize
PY=/usr/bin/python3  # Debian's, where python3-numpy and python3-onnx install

BENCH_NAME=bench_peer
# shellcheck source=scripts/bench_common.sh
source "$ROOT/scripts/bench_common.sh"
has_step() { [[ " $STEPS " == *" $1 "* ]]; }
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found (Debian package 'time')"
[[ "$SCRATCH" != "$ROOT"* ]] || die "SCRATCH ($SCRATCH) must be outside the repository"

MODEL_DIR=$SCRATCH/llama-$BLOCKS
MODEL=$MODEL_DIR/model.onnx
GGUF=$MODEL_DIR/model-f32.gguf
RUNS_DIR=$SCRATCH/peer-runs
OUT_DIR=$SCRATCH/peer-out
RESULTS=$SCRATCH/peer-results.md
mkdir -p "$SCRATCH" "$RUNS_DIR"

# ---- peer: llama-quantize from node-llama-cpp's bundle -----------------------------------
if has_step peer && [[ ! -x $QUANTIZE ]]; then
  command -v npm >/dev/null || die "npm not found (run scripts/setup.sh first)"
  log "fetching $PEER_PKG (llama.cpp source bundle) into $PEER_DIR"
  mkdir -p "$PEER_DIR"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$PEER_PKG" >/dev/null 2>&1) || die "npm pack $PEER_PKG failed"
  tar -xzf "$tmp"/node-llama-cpp-*.tgz -C "$tmp" package/llama/gitRelease.bundle \
    package/llama/binariesGithubRelease.json || die "no llama/gitRelease.bundle in $PEER_PKG"
  rm -rf "$PEER_DIR/src"
  git clone -q "$tmp/package/llama/gitRelease.bundle" "$PEER_DIR/src" 2>/dev/null ||
    die "cloning the llama.cpp bundle failed"
  cp "$tmp/package/llama/binariesGithubRelease.json" "$PEER_DIR/release.json"
  rm -rf "$tmp"
  log "building llama-quantize (Release, GGML_NATIVE) — a few minutes"
  cmake -S "$PEER_DIR/src" -B "$PEER_DIR/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    >"$PEER_DIR/cmake.log" 2>&1 || die "llama.cpp cmake failed: $PEER_DIR/cmake.log"
  ninja -C "$PEER_DIR/build" -j"$(nproc)" llama-quantize >"$PEER_DIR/build.log" 2>&1 ||
    die "llama-quantize build failed: $PEER_DIR/build.log"
fi

# ---- model: sqctl + the ONNX scale model -------------------------------------------------
if has_step model; then
  BUILD=$BUILD SCRATCH=$SCRATCH BLOCKS=$BLOCKS SCALING="" STEPS="build gen" \
    bash "$ROOT/scripts/bench_llama.sh" >/dev/null
fi

# ---- gguf: the same tensors for llama-quantize -------------------------------------------
if has_step gguf && [[ ! -s $GGUF ]]; then
  [[ -f $MODEL ]] || die "no model $MODEL (run with STEPS including model)"
  if ! "$PY" -c 'import numpy, onnx' 2>/dev/null; then
    ((EUID == 0)) || die "need Debian's python3-numpy and python3-onnx (apt-get install them)"
    log "installing python3-numpy python3-onnx"
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
      python3-numpy python3-onnx >/dev/null || die "apt-get install python3-numpy python3-onnx failed"
  fi
  need_space "$(file_bytes "$MODEL.data")" "the F32 GGUF"
  log "writing $GGUF"
  "$PY" "$ROOT/bench/llama/onnx_to_gguf.py" "$MODEL" "$GGUF.tmp" \
    --gguf-py "$PEER_DIR/src/gguf-py" || die "onnx_to_gguf failed"
  mv "$GGUF.tmp" "$GGUF"
fi

# ---- run ---------------------------------------------------------------------------------
# Configurations: TAG -> command tail. Tags: lq-q4_0, lq-q8_0, sq-TARGET-{plain,split}-BITS.
declare -a TAGS=()
declare -A CMD=() INPUT=()
for bits in $BITS_LIST; do
  case $bits in 4) t=Q4_0 ;; 8) t=Q8_0 ;; *) die "BITS_LIST: $bits (4 or 8)" ;; esac
  tag=lq-${t,,}
  TAGS+=("$tag")
  CMD[$tag]="$QUANTIZE --pure $GGUF OUT/model.gguf $t $THREADS"
  INPUT[$tag]=$GGUF
  for target in $SQ_TARGETS; do
    for split in off on; do
      [[ $split == on ]] && kind=split || kind=plain
      tag=sq-$target-$kind-$bits
      TAGS+=("$tag")
      CMD[$tag]="$SQCTL quantize $MODEL -o OUT/model.onnx --bits $bits --granularity channel --target $target --split $split --threads $THREADS --verify off --report RUNS/$tag.IDX.json --quiet"
      INPUT[$tag]=$MODEL
    done
  done
  # The same job as a user runs it: every default, verification in ONNX Runtime included.
  if [[ $bits == 4 ]]; then
    tag=sq-default-4
    TAGS+=("$tag")
    CMD[$tag]="$SQCTL quantize $MODEL -o OUT/model.onnx --bits 4 --threads $THREADS --report RUNS/$tag.IDX.json --quiet"
    INPUT[$tag]=$MODEL
  fi
done

input_files() { if [[ $1 == "$GGUF" ]]; then echo "$1"; else echo "$1" "$1.data"; fi; }

# run_one TAG IDX [THREADS_OVERRIDE]: one timed run; its output is measured, hashed (first
# run of sq jobs) and deleted.
run_one() {
  local tag=$1 i=$2 cmd out files
  out=$OUT_DIR/$tag
  rm -rf "$OUT_DIR" && mkdir -p "$out"
  # shellcheck disable=SC2046
  cat $(input_files "${INPUT[$tag]}") >/dev/null  # warm the input (two inputs share the cache)
  need_space "$(file_bytes $(input_files "${INPUT[$tag]}"))" "the output of $tag"
  cmd=${CMD[$tag]//OUT/$out}
  cmd=${cmd//RUNS/$RUNS_DIR}
  cmd=${cmd//IDX/$i}
  [[ -n ${3:-} ]] && cmd=${cmd//--threads $THREADS/--threads $3}
  log "$tag #$i"
  sync
  # shellcheck disable=SC2086
  if ! /usr/bin/time -v -o "$RUNS_DIR/$tag.$i.time" $cmd >"$RUNS_DIR/$tag.$i.log" 2>&1; then
    tail -20 "$RUNS_DIR/$tag.$i.log" >&2
    die "$tag failed (log: $RUNS_DIR/$tag.$i.log)"
  fi
  files=("$out"/*)
  file_bytes "${files[@]}" >"$RUNS_DIR/$tag.$i.bytes"
  if [[ $tag == sq-* ]] && [[ $i == 1 || $i == t1 ]]; then
    (cd "$out" && sha256sum -- *) >"$RUNS_DIR/$tag.$i.sha"
  fi
  rm -rf "$OUT_DIR"
}

declare -A MED=() RSS=() OUTB=() FLOOR=() BEST=()
if has_step run; then
  [[ -x $QUANTIZE ]] || die "llama-quantize not built: $QUANTIZE (run with STEPS including peer)"
  [[ -x $SQCTL ]] || die "sqctl not built: $SQCTL (run with STEPS including model)"
  [[ -s $GGUF && -f $MODEL ]] || die "inputs missing (run with STEPS including model gguf)"
  rm -f "$RUNS_DIR"/*
  for ((i = 1; i <= RUNS; i++)); do
    for tag in "${TAGS[@]}"; do run_one "$tag" "$i"; done
  done
  for tag in "${TAGS[@]}"; do
    walls=$(for ((i = 1; i <= RUNS; i++)); do time_wall "$RUNS_DIR/$tag.$i.time"; done)
    MED[$tag]=$(median <<<"$walls")
    BEST[$tag]=$(sort -g <<<"$walls" | head -1)
    RSS[$tag]=$(for ((i = 1; i <= RUNS; i++)); do time_rss "$RUNS_DIR/$tag.$i.time"; done | median)
    OUTB[$tag]=$(cat "$RUNS_DIR/$tag.1.bytes")
    # shellcheck disable=SC2046
    read -r fr fw <<<"$(io_floor "$OUT_DIR" "${OUTB[$tag]}" $(input_files "${INPUT[$tag]}"))"
    FLOOR[$tag]=$(awk -v a="$fr" -v b="$fw" 'BEGIN { printf "%.2f", a + b }')
  done
fi

THREADS_NOTE=""
if has_step threads; then
  for target in $SQ_TARGETS; do
    tag=sq-$target-split-4
    [[ -n ${CMD[$tag]:-} ]] || continue
    run_one "$tag" t1 1
    t1=$(time_wall "$RUNS_DIR/$tag.t1.time")
    if [[ -f $RUNS_DIR/$tag.1.sha ]]; then
      if cmp -s "$RUNS_DIR/$tag.1.sha" "$RUNS_DIR/$tag.t1.sha"; then same="byte-identical"
      else same="DIFFERENT"; fi
    else same="(no $THREADS-thread run to compare)"; fi
    THREADS_NOTE+="- $tag at 1 thread: ${t1} s, $(mib "$(time_rss "$RUNS_DIR/$tag.t1.time")") MiB; output $same to $THREADS threads'"$'\n'
  done
fi

# ---- report ------------------------------------------------------------------------------
stages() {  # median per stage over the runs of an sq tag, from its reports
  local tag=$1 i files=()
  for ((i = 1; i <= RUNS; i++)); do files+=("$RUNS_DIR/$tag.$i.json"); done
  "$PY" - "${files[@]}" <<'PYEOF'
import json, statistics, sys
runs = [{s["stage"]: s["seconds"] for s in json.load(open(f)).get("stages", [])} for f in sys.argv[1:]]
names = [k for k in runs[0]] if runs else []
print(", ".join("%s %.2f" % (k, statistics.median(r[k] for r in runs if k in r)) for k in names))
PYEOF
}
# A 16-thread projection from one run's report (labelled as such): the serial stages as
# measured, the transform as the larger of (sum of the layers' seconds) / 16 and the
# largest layer (a layer runs on one worker; its passes are cut across threads only when
# it exceeds a fair share). Per-layer seconds were measured with THREADS workers sharing
# the machine's memory bandwidth, so this is optimistic where 16 cores would contend more.
projection() {  # projection TAG THREADS_TARGET
  "$PY" - "$RUNS_DIR/$1.1.json" "$2" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1])); t = int(sys.argv[2])
stages = {s["stage"]: s["seconds"] for s in r.get("stages", [])}
layers = [l.get("seconds", 0) for l in r.get("layers", [])]
serial = sum(v for k, v in stages.items() if k != "transform")
transform = max(sum(layers) / t, max(layers) if layers else 0)
print("%.1f s (serial stages %.1f s + transform %.1f s; layers sum %.1f s, largest %.1f s)"
      % (serial + transform, serial, transform, sum(layers), max(layers) if layers else 0))
PYEOF
}
# Steps that measure nothing (peer, model, gguf) print no report.
has_step run || has_step threads || exit 0
{
  echo "## sq vs llama.cpp llama-quantize: Llama-3.2-1B-shaped model ($BLOCKS blocks)"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ); $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo));" \
    "$THREADS threads; medians of $RUNS interleaved runs, warm page cache."
  echo "llama.cpp from $PEER_PKG's bundle ($(cat "$PEER_DIR/release.json" 2>/dev/null | tr -d ' \n' || true));" \
    "sq: sqctl quantize --granularity channel --target T --split on|off --verify off;" \
    "sq-default-4: sqctl quantize --bits 4 with every default (ort-cpu, split, verification on)."
  echo "Floor = warm read of the job's input + page-cache write of its output's size."
  echo
  if ((${#MED[@]})); then
    echo "| job | median s | best s | peak RSS MiB | output GB | floor s | × floor |"
    echo "|---|---|---|---|---|---|---|"
    for tag in "${TAGS[@]}"; do
      echo "| $tag | ${MED[$tag]} | ${BEST[$tag]} | $(mib "${RSS[$tag]}") | $(gb "${OUTB[$tag]}") | ${FLOOR[$tag]} | $(ratio "${MED[$tag]}" "${FLOOR[$tag]}") |"
    done
    echo
    echo "| ratio | value |"
    echo "|---|---|"
    for bits in $BITS_LIST; do
      [[ $bits == 4 ]] && lq=lq-q4_0 || lq=lq-q8_0
      for target in $SQ_TARGETS; do
        p=sq-$target-plain-$bits s=sq-$target-split-$bits
        echo "| sq $target split INT$bits ÷ llama-quantize ${lq#lq-} | $(ratio "${MED[$s]}" "${MED[$lq]}") |"
        echo "| sq $target plain INT$bits ÷ llama-quantize ${lq#lq-} | $(ratio "${MED[$p]}" "${MED[$lq]}") |"
        echo "| sq $target split ÷ plain INT$bits | $(ratio "${MED[$s]}" "${MED[$p]}") |"
      done
    done
    echo
    echo "sq per-stage medians (report \"stages\", seconds):"
    echo
    for tag in "${TAGS[@]}"; do [[ $tag == sq-* ]] && echo "- $tag: $(stages "$tag")"; done
    echo
    echo "Projected at 16 threads (a projection from run 1's per-layer seconds, not a measurement):"
    echo
    for tag in "${TAGS[@]}"; do [[ $tag == sq-*-split-* ]] && echo "- $tag: $(projection "$tag" 16)"; done
    echo
  fi
  if [[ -n $THREADS_NOTE ]]; then printf '%s' "$THREADS_NOTE"; fi
} | tee "$RESULTS"
if [[ $KEEP_GGUF != 1 ]]; then rm -f "$GGUF"; fi
