#!/usr/bin/env bash
# Service-path bench (#10 item 4): upload a ~1.1 GB model (the Llama-shaped decoder of
# bench/infer: sq_gen_llama --blocks 4 --vocab 8192, FP32 external data) to a local
# sq-server over loopback with `sqctl inspect`, RUNS times, each into an empty model store
# (a first upload), then once more as a repeat (the client's hash finds it stored).
# Prints the median wall time of the client (hash + upload + inspect), the server's
# UploadModel time from its rpc log, and seconds per GB.
#
#   scripts/bench_upload.sh                 # builds what it needs in build-bench
#   BUILD_DIR=build RUNS=7 scripts/bench_upload.sh
#
# Environment: BUILD_DIR (build-bench), RUNS (5), SCRATCH (${TMPDIR:-/tmp}), JOBS (2),
#   BUFFER (the server's --upload_buffer_bytes; default: the server's default).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-bench}"
RUNS="${RUNS:-5}"
SCRATCH="${SCRATCH:-${TMPDIR:-/tmp}}"
JOBS="${JOBS:-2}"
BENCH_NAME=bench_upload
# shellcheck source=scripts/bench_common.sh
source "$ROOT/scripts/bench_common.sh"

if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DSQ_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
ninja -C "$BUILD_DIR" -j"$JOBS" sq-server sqctl sq_gen_llama >&2

work="$SCRATCH/sq-bench-upload"
model="$work/model/model.onnx"
need_space $((3 << 30)) "the model and two stored copies"
if [[ ! -f "$model" ]]; then
  "$BUILD_DIR/bench/llama/sq_gen_llama" --out "$model" --blocks 4 --vocab 8192 >&2
fi
bytes=$(( $(stat -L -c %s "$model") + $(stat -L -c %s "$model.data") ))
rm -rf "$work/store"
mkdir -p "$work/store"

port=$((20000 + RANDOM % 20000))
args=(--artifact_dir "$work/store" --listen "127.0.0.1:$port" --metrics_listen "")
if [[ -n "${BUFFER:-}" ]]; then args+=(--upload_buffer_bytes "$BUFFER"); fi
"$BUILD_DIR/server/sq-server" "${args[@]}" >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  "$BUILD_DIR/client/sqctl" health --server "127.0.0.1:$port" >/dev/null 2>&1 && break
  sleep 0.1
done

cat "$model.data" >/dev/null  # warm: the bench times the service path, not the source disk
upload() {
  local out
  out=$( { /usr/bin/time -f %e "$BUILD_DIR/client/sqctl" inspect "$model" --server "127.0.0.1:$port" >/dev/null; } 2>&1) ||
    die "sqctl inspect failed: $out"
  echo "$out" | tail -1
}
server_ms() { grep -o '"method":"/sq.v1.SqService/UploadModel","ms":[0-9.]*' "$work/server.log" | tail -1 | sed 's/.*"ms"://'; }
walls=() rpcs=()
for i in $(seq "$RUNS"); do
  rm -rf "$work/store/models/"*
  sync
  walls+=("$(upload)")
  rpcs+=("$(awk -v ms="$(server_ms)" 'BEGIN { printf "%.2f", ms / 1000 }')")
  log "run $i: client ${walls[-1]} s, server UploadModel ${rpcs[-1]} s"
done
repeat=$(upload)

wall=$(printf '%s\n' "${walls[@]}" | median)
rpc=$(printf '%s\n' "${rpcs[@]}" | median)
echo
echo "model: $(gb "$bytes") GB ($bytes bytes), $RUNS first uploads, $(nproc) cores, $(date -u +%F)"
echo
echo "| what | median s | s per GB | MB/s |"
echo "|---|---:|---:|---:|"
for row in "client wall (hash + upload + inspect):$wall" "server UploadModel (receive + store):$rpc"; do
  name=${row%%:*} s=${row##*:}
  echo "| $name | $s | $(awk -v s="$s" -v b="$bytes" 'BEGIN { printf "%.2f", s / (b / 1e9) }') | $(awk -v s="$s" -v b="$bytes" 'BEGIN { printf "%.0f", b / 1e6 / s }') |"
done
echo "| repeat upload (stored: hash only) | $repeat | | |"
echo
echo "runs (client s): ${walls[*]}; (server s): ${rpcs[*]}"
