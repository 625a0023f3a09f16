#!/usr/bin/env bash
# Lints the sq.v1 proto with buf under proto/buf.yaml's rules, in a temporary workspace that
# also holds the google/api protos the build extracted from Debian's jar (field_behavior,
# resource), so buf resolves sq.proto's imports there and lints sq.v1 alone (buf provides
# resource.proto's own import, google/protobuf/descriptor.proto).
#   proto/buf_lint.sh BUF GOOGLEAPIS_ROOT     (ctest ProtoLintTest runs it)
set -euo pipefail
buf=$1
googleapis=$2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ws="$(mktemp -d)"
trap 'rm -rf "$ws"' EXIT
mkdir -p "$ws/sq" "$ws/googleapis/google/api"
cp -r "$here/sq" "$here/buf.yaml" "$ws/sq/"
cp "$googleapis"/google/api/*.proto "$ws/googleapis/google/api/"
printf 'version: v1\n' >"$ws/googleapis/buf.yaml"
printf 'version: v1\ndirectories:\n  - sq\n  - googleapis\n' >"$ws/buf.work.yaml"
cd "$ws"
"$buf" lint sq
