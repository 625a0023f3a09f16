#!/usr/bin/env bash
# The main job, from a fresh machine: install what is needed, build sq-server and sqctl,
# start the server on its embedded defaults (gRPC 127.0.0.1:50051, metrics :9464, a
# private artifact directory), submit the real PaddleOCR v4 recognizer (from npm) for
# SplitQuant INT4 with sqctl, download the result, print the report, stop the server.
# Without the service (built with -DSQ_BUILD_SERVER=OFF) it quantizes locally instead.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
SQ_CACHE="${SQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sq}"
MODEL="${MODEL:-$SQ_CACHE/ocr-models-1.4.2/ch_PP-OCRv4_rec_infer.onnx}"
OUT_DIR="${OUT_DIR:-out}"
mkdir -p "$OUT_DIR"

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build -j"$(nproc)" sqctl $( [[ -f server/main.cc ]] && echo sq-server )

SQCTL=build/client/sqctl
if [[ -x build/server/sq-server ]]; then
  export XDG_STATE_HOME="${XDG_STATE_HOME:-$PWD/$OUT_DIR/state}"
  # The server's JSON log lines (one per job event and RPC) go to a file, not the terminal.
  build/server/sq-server 2>"$OUT_DIR/server.log" &
  server=$!
  trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
  for _ in $(seq 1 50); do "$SQCTL" health >/dev/null 2>&1 && break; sleep 0.2; done
  "$SQCTL" health
  "$SQCTL" submit "$MODEL" --bits 4 --granularity channel -o "$OUT_DIR/rec-int4.onnx"
  "$SQCTL" list
  job=$("$SQCTL" list --limit 1 | awk 'NR == 2 { print $1 }')
  if [[ -n $job ]]; then
    # The report's summary (verification in ONNX Runtime included); the full one is saved.
    "$SQCTL" report "$job" >"$OUT_DIR/rec-int4.report.txt"
    sed -n '1,9p' "$OUT_DIR/rec-int4.report.txt"
    echo "report: $OUT_DIR/rec-int4.report.txt"
  fi
  echo "server log: $OUT_DIR/server.log"
else
  "$SQCTL" quantize "$MODEL" -o "$OUT_DIR/rec-int4.onnx" --bits 4 --granularity channel \
    --report "$OUT_DIR/rec-int4.report.json"
fi
echo "output: $OUT_DIR/rec-int4.onnx"
