#!/usr/bin/env bash
# Accuracy benchmark: SplitQuant vs plain linear weight quantization on the real PaddleOCR
# recognizer (ch_PP-OCRv4_rec) + orientation classifier (ch_ppocr_mobile_v2.0_cls).
#
# Builds sq_bench_ocr (Release, build dir build-bench) and runs the sweep on a seeded
# synthetic "hard" text-line set; prints a markdown table and writes a JSON results file.
# Needs scripts/setup.sh to have run (ONNX Runtime, models, fonts, word list).
#
#   scripts/bench_ocr.sh                      # 300 hard lines, seed 1, full sweep
#   LINES=1000 scripts/bench_ocr.sh           # larger set
#   scripts/bench_ocr.sh --configs fp32,int4-channel-asym-plain,int4-channel-asym-split
#
# Environment: BUILD_DIR (build-bench), LINES (300), SEED (1), VARIANT (hard),
#   THREADS (2: ORT intra-op threads and engine threads), JOBS (2: ninja -j),
#   OUT_DIR ($BUILD_DIR/bench-ocr). Extra arguments go to sq_bench_ocr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-bench}"
LINES="${LINES:-300}"
SEED="${SEED:-1}"
VARIANT="${VARIANT:-hard}"
THREADS="${THREADS:-2}"
JOBS="${JOBS:-2}"
OUT_DIR="${OUT_DIR:-$BUILD_DIR/bench-ocr}"

if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DSQ_BUILD_SERVER=OFF -DSQ_BUILD_TESTS=OFF \
    -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
ninja -C "$BUILD_DIR" -j"$JOBS" sq_bench_ocr

mkdir -p "$OUT_DIR"
stem="$OUT_DIR/ocr_${VARIANT}_${LINES}_seed${SEED}"
cmd=("$BUILD_DIR/bench/ocr/sq_bench_ocr" --variant "$VARIANT" --lines "$LINES" --seed "$SEED"
     --ort-threads "$THREADS" --quant-threads "$THREADS"
     --work-dir "${TMPDIR:-/tmp}/sq_bench_ocr.$$" --out-json "$stem.json" "$@")
echo "+ ${cmd[*]}" >&2
status=0
"${cmd[@]}" | tee "$stem.md" || status=$?
rm -rf "${TMPDIR:-/tmp}/sq_bench_ocr.$$"
echo "results: $stem.json, $stem.md" >&2
exit "$status"
