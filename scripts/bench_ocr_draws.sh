#!/usr/bin/env bash
# Runs bench/ocr once per calibration draw and prints, per config, exact / char / cls on
# each draw with their mean and standard deviation, and each config's paired difference to
# the first config. One draw of a small calibration set moves full-integer results by
# several points (docs/accuracy.md, "One calibration draw is not a measurement"): compare
# full-integer options over draws.
#
#   scripts/bench_ocr_draws.sh --configs int8-channel-asym-split-qdq-a8,int8-channel-asym-split-qdq-a8-asr
#
# Draw 1 is the bench's default calibration seed (SEED + 1000003); draw k > 1 uses
# k * 1000000 + SEED. All are disjoint from the test lines.
# Environment: DRAWS (5), SEED (1), LINES (300), and everything scripts/bench_ocr.sh takes
# (BUILD_DIR, THREADS, ...). Other arguments go to sq_bench_ocr (e.g. --calibration-lines).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DRAWS="${DRAWS:-5}"
SEED="${SEED:-1}"
LINES="${LINES:-300}"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-bench}"
out="${OUT_DIR:-$BUILD_DIR/bench-ocr}/draws_${LINES}_seed${SEED}"
mkdir -p "$out"
jsons=()
for ((k = 1; k <= DRAWS; ++k)); do
  if ((k == 1)); then cal=$((SEED + 1000003)); else cal=$((k * 1000000 + SEED)); fi
  echo "bench_ocr_draws: draw $k/$DRAWS (calibration seed $cal)" >&2
  OUT_DIR="$out/cal$cal" SEED="$SEED" LINES="$LINES" BUILD_DIR="$BUILD_DIR" \
    bash "$ROOT/scripts/bench_ocr.sh" --no-clean-sanity --calibration-seed "$cal" "$@" >/dev/null
  jsons+=("$out/cal$cal/ocr_hard_${LINES}_seed${SEED}.json")
done
python3 - "${jsons[@]}" <<'PY'
import json, statistics, sys
draws = [json.load(open(p)) for p in sys.argv[1:]]
configs = [r["config"] for r in draws[0]["results"]]
def metric(d, c, key):
    return next(r[key] for r in d["results"] if r["config"] == c)
keys = [("rec_exact_pct", "exact"), ("rec_char_accuracy_pct", "char"), ("cls_accuracy_pct", "cls")]
print(f"| config | {' | '.join(name for _, name in keys)} (per draw; mean ± sd) |")
print("|---|" + "---|" * len(keys))
for c in configs:
    cells = []
    for key, _ in keys:
        v = [metric(d, c, key) for d in draws]
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        cells.append(" ".join(f"{x:.1f}" for x in v) + f"; **{statistics.mean(v):.1f} ± {sd:.1f}**")
    print(f"| {c} | " + " | ".join(cells) + " |")
if len(configs) > 1:
    base = configs[0]
    print(f"\npaired exact-match difference to {base} (per draw; mean; draws ahead):")
    for c in configs[1:]:
        d = [metric(x, c, "rec_exact_pct") - metric(x, base, "rec_exact_pct") for x in draws]
        print(f"  {c}: " + " ".join(f"{x:+.1f}" for x in d) +
              f"; mean {statistics.mean(d):+.1f}; ahead in {sum(x > 0 for x in d)} of {len(d)}")
PY
