#!/usr/bin/env bash
# Builds abseil with ThreadSanitizer from Debian's own source package of the installed
# libabsl-dev (same version, same Debian patches, same ABI options), into the cache outside
# git, and prints the folder that holds its shared libraries.
#
# Why: Debian's libabsl is built without -fsanitize=thread, so absl::Mutex — the lock the job
# queue, the store and the server use, and gRPC's own lock — is invisible to TSan and every
# access it guards is reported as a race. Run a TSan build with LD_LIBRARY_PATH set to the
# printed folder and every libabsl_*.so.<soversion> (ours and gRPC's) is the instrumented one.
# The source comes through apt (deb-src entries derived from the machine's own deb entries,
# signatures checked by apt); nothing is vendored. Needs clang (scripts/setup.sh installs it).
# Idempotent: a finished build is reused. About a minute on 2 cores.
set -euo pipefail

SQ_CACHE="${SQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sq}"
version="$(dpkg-query -W -f='${Version}' libabsl-dev)"
dest="$SQ_CACHE/absl-tsan-$version"
if [[ -f "$dest/.complete" ]]; then
  echo "$dest/lib"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/parts" "$work/lists/partial" "$work/src"

# deb-src twins of the configured Debian sources, in a private apt state (the machine's
# own apt configuration and lists are not touched).
: > "$work/sources.list"
if [[ -f /etc/apt/sources.list ]]; then
  sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >> "$work/sources.list"
fi
for f in /etc/apt/sources.list.d/*.sources; do
  [[ -f "$f" ]] && sed -E 's/^Types:.*/Types: deb-src/' "$f" > "$work/parts/$(basename "$f")"
done
for f in /etc/apt/sources.list.d/*.list; do
  [[ -f "$f" ]] && sed -n 's/^deb /deb-src /p' "$f" >> "$work/sources.list"
done
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/parts"
          -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=root" -qq)
echo "tsan_absl: fetching Debian's abseil $version source" >&2
log="$work/log"
run() {  # quiet unless it fails
  if ! "$@" >>"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "tsan_absl: failed: $*" >&2
    exit 1
  fi
}
run apt-get "${apt_opts[@]}" update
(cd "$work/src" && run apt-get "${apt_opts[@]}" source --download-only "abseil=$version")
# apt has checked the files against the signed index; dpkg-source unpacks the upstream
# tarball and applies Debian's patches (SOVERSION, the std::optional/any/string_view options
# fixed as the packaged headers have them).
(cd "$work/src" && run dpkg-source --no-check -x ./*.dsc tree)

echo "tsan_absl: building abseil with -fsanitize=thread" >&2
export CC=clang CXX=clang++
run cmake -S "$work/src/tree" -B "$work/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_STANDARD=17 -DBUILD_SHARED_LIBS=ON \
  -DBUILD_TESTING=OFF -DCMAKE_CXX_FLAGS="-fsanitize=thread" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread"
run ninja -C "$work/build" -j"${JOBS:-$(nproc)}"

rm -rf "$dest"
mkdir -p "$dest/lib"
find "$work/build" -name 'libabsl_*.so*' -exec cp -a {} "$dest/lib/" \;
n="$(find "$dest/lib" -name 'libabsl_*.so.*' -type f | wc -l)"
if ((n < 50)); then
  echo "tsan_absl: only $n libraries built" >&2
  exit 1
fi
touch "$dest/.complete"
echo "$dest/lib"
