#!/usr/bin/env bash
# Generates the sq.v1 Python stubs for a plain checkout (no CMake build):
#   client/python/scripts/gen_stubs.sh [OUT_DIR]      # default client/python/gen
# sq_client finds client/python/gen by itself; another OUT_DIR is named by $SQ_CLIENT_STUBS.
# Needs protoc (protobuf-compiler) and grpc_python_plugin (protobuf-compiler-grpc).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$here/gen}"
plugin="$(command -v grpc_python_plugin || true)"
if [[ -z "$plugin" ]]; then
  echo "gen_stubs: grpc_python_plugin not found; install protobuf-compiler-grpc" >&2
  exit 1
fi
mkdir -p "$out"
protoc --proto_path="$root/proto" --python_out="$out" --grpc_python_out="$out" \
  --plugin=protoc-gen-grpc_python="$plugin" "$root/proto/sq/v1/sq.proto"
echo "gen_stubs: wrote $out/sq/v1/sq_pb2.py and sq_pb2_grpc.py"
