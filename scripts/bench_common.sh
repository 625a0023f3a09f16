# Helpers shared by the scale benches (bench_llama.sh, bench_peer.sh). Source it after
# setting BENCH_NAME (the prefix of messages) and SCRATCH (where need_space looks).
# shellcheck shell=bash

die() { echo "$BENCH_NAME: $*" >&2; exit 1; }
log() { echo "$BENCH_NAME: $*" >&2; }

file_bytes() { local n=0 f; for f in "$@"; do [[ -e $f ]] && n=$((n + $(stat -c %s "$f"))); done; echo "$n"; }
avail_bytes() { df -B1 --output=avail "$SCRATCH" | tail -1 | tr -d ' '; }
need_space() {  # need_space BYTES WHAT
  local avail; avail=$(avail_bytes)
  ((avail > $1 + (1 << 30))) ||
    die "not enough disk under $SCRATCH for $2: need $(($1 >> 20)) MiB + 1 GiB slack, have $((avail >> 20)) MiB"
}
# Seconds and peak RSS (bytes) from a `/usr/bin/time -v` log.
time_wall() { awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0;
  for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.2f\n", s }' "$1"; }
time_rss() { awk -F': ' '/Maximum resident set size/ { printf "%.0f\n", $2 * 1024 }' "$1"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "nan"; exit }
  if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
gb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e9 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# The I/O floor of a job: seconds to read FILES from a warm page cache (read twice, the
# second timed) plus seconds to write OUT_BYTES to the page cache under DIR (written
# twice, the second timed, no sync). Prints "read_s write_s".
io_floor() {  # io_floor DIR OUT_BYTES FILE...
  local dir=$1 bytes=$2 r w; shift 2
  cat "$@" >/dev/null
  r=$( { /usr/bin/time -f %e cat "$@" >/dev/null; } 2>&1 | tail -1)
  mkdir -p "$dir"
  sync  # untimed, as before each measured run; the timed writes themselves are not synced
  head -c "$bytes" /dev/zero >"$dir/floor.out"
  rm -f "$dir/floor.out"
  sync
  w=$( { /usr/bin/time -f %e head -c "$bytes" /dev/zero >"$dir/floor.out"; } 2>&1 | tail -1)
  rm -f "$dir/floor.out"
  echo "$r $w"
}
