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
# sq.proto imports google/api/field_behavior.proto and google/api/resource.proto: Debian's
# libgoogle-common-protos-java ships them inside its jar.
jar=/usr/share/java/proto-google-common-protos.jar
if [[ ! -f "$jar" ]]; then
  echo "gen_stubs: $jar not found; install libgoogle-common-protos-java" >&2
  exit 1
fi
api="$(mktemp -d)"
trap 'rm -rf "$api"' EXIT
python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for p in ("google/api/field_behavior.proto", "google/api/resource.proto"):
    z.extract(p, sys.argv[2])' "$jar" "$api"
mkdir -p "$out"
protoc --proto_path="$api" --python_out="$out" "$api/google/api/field_behavior.proto" \
  "$api/google/api/resource.proto"
protoc --proto_path="$root/proto" --proto_path="$api" --python_out="$out" --grpc_python_out="$out" \
  --plugin=protoc-gen-grpc_python="$plugin" "$root/proto/sq/v1/sq.proto"
echo "gen_stubs: wrote $out/sq/v1/sq_pb2.py, sq_pb2_grpc.py and google/api/{field_behavior,resource}_pb2.py"
