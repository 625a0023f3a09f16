#!/usr/bin/env bash
# Smoke test of the container image, end to end on one Docker host (run as root where
# Docker or its packages must be installed or started):
#
#   1. a Docker engine: the running one, else Debian's docker.io installed and dockerd
#      started here (low priority, stopped again at the end);
#   2. the base image debian:bookworm-slim: present, else imported from a cached rootfs,
#      else pulled, else (no registry) built with debootstrap --variant=minbase from the
#      host's apt mirror, slimmed like the official image and cached outside git;
#   3. docker build (classic builder, --network host, --build-arg JOBS), image size <= 250 MB;
#   4. docker run as the image's non-root user (uid 10001), read-only root fs, tmpfs /tmp,
#      a fresh artifact volume, no capabilities; time from `docker run` to SERVING and to
#      the HEALTHCHECK's "healthy";
#   5. the real PaddleOCR v4 recognizer submitted from the host with the host's sqctl
#      (SplitQuant INT4, as scripts/run.sh), watched to SUCCEEDED, downloaded (SHA-256 as
#      the report says), the report's verification in ONNX Runtime must be "passed";
#   6. /metrics scraped for the sq_ metrics;
#   7. SIGTERM (docker stop) with a second job running: the log shows the drain, the job
#      finishes, exit code 0; a new container on the same volume still knows both jobs.
#
#   scripts/docker_smoke.sh                exit 0 when every check passes
#
# Environment (defaults in brackets):
#   SQ_SMOKE_IMAGE [sq:smoke]  SQ_SMOKE_NAME [sq-smoke]  SQ_SMOKE_VOLUME [sq-smoke-artifacts]
#   SQ_SMOKE_GRPC_PORT [50151], SQ_SMOKE_METRICS_PORT [9564]: host ports (127.0.0.1 only)
#   SQ_SMOKE_NETWORK [bridge]: bridge (-p publishing) or host (the server listens on the
#     two host ports directly and the health check is overridden to match)
#   SQ_SMOKE_MAX_IMAGE_MB [250]  JOBS [2]: compile jobs in the builder
#   SQ_SMOKE_SKIP_BUILD [0]: 1 uses the existing $SQ_SMOKE_IMAGE
#   SQ_SMOKE_CONTEXT [worktree]: the build context; "head" builds the committed tree (git
#     archive HEAD) with this tree's Dockerfile and .dockerignore, untouched by edits in progress
#   SQ_SMOKE_KEEP [0]: 1 keeps the volume and the last container; the image is always kept
#   SQ_DOCKERD_FLAGS []: extra flags for a dockerd this script starts
#   SQ_DOCKERD_DATA_ROOT [/var/lib/docker]  SQ_DEBIAN_MIRROR [from /etc/apt/sources*]
#   SQ_BASE_LOCAL_CAS [1]: the debootstrapped base trusts the host's local CAs (see slimify)
#   MODEL [the OCR recognizer from scripts/setup.sh]  SQCTL [build/client/sqctl]
#   OUT_DIR [out/docker-smoke]: logs, the downloaded artifact, the report, the summary
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SQ_CACHE="${SQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sq}"
IMAGE="${SQ_SMOKE_IMAGE:-sq:smoke}"
NAME="${SQ_SMOKE_NAME:-sq-smoke}"
VOLUME="${SQ_SMOKE_VOLUME:-sq-smoke-artifacts}"
GRPC_PORT="${SQ_SMOKE_GRPC_PORT:-50151}"
METRICS_PORT="${SQ_SMOKE_METRICS_PORT:-9564}"
NETWORK="${SQ_SMOKE_NETWORK:-bridge}"
MAX_MB="${SQ_SMOKE_MAX_IMAGE_MB:-250}"
JOBS="${JOBS:-2}"
BASE=debian:bookworm-slim
BASE_TAR="$SQ_CACHE/docker/debian-bookworm-slim-rootfs.tar.gz"
DATA_ROOT="${SQ_DOCKERD_DATA_ROOT:-/var/lib/docker}"
MODEL="${MODEL:-$SQ_CACHE/ocr-models-1.4.2/ch_PP-OCRv4_rec_infer.onnx}"
SQCTL="${SQCTL:-build/client/sqctl}"
OUT_DIR="${OUT_DIR:-out/docker-smoke}"
DRAIN_GRACE=30
DOCKER="${DOCKER:-docker}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"

t_start=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() { printf '\n== [%6ss] %s\n' "$(since "$t_start")" "$*"; }
note() { printf '  %s\n' "$*"; printf '%s\n' "$*" >>"$SUMMARY"; }
failures=0
pass() { printf '  ok    %s\n' "$*"; printf 'ok    %s\n' "$*" >>"$SUMMARY"; }
fail() { printf '  FAIL  %s\n' "$*"; printf 'FAIL  %s\n' "$*" >>"$SUMMARY"; failures=$((failures + 1)); }
die() { fail "$*"; finish; }
low() { nice -n 19 ionice -c3 "$@"; }
apt_install() {
  [[ $(id -u) == 0 ]] || { echo "docker_smoke: need root to install $*" >&2; exit 2; }
  echo "  installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "$@" >/dev/null
}
# JSON field of stdin: jf KEY [KEY...] (nested).
jf() { python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1:]:
    v = v.get(k, "") if isinstance(v, dict) else ""
print(v)' "$@"; }

started_dockerd=""
containers=()
cleanup_dirs=()
finish() {
  trap - EXIT
  step "cleanup"
  for c in "${containers[@]}"; do
    if [[ ${SQ_SMOKE_KEEP:-0} == 1 && $c == "${containers[-1]}" ]]; then continue; fi
    "$DOCKER" rm -f "$c" >/dev/null 2>&1 || true
  done
  if [[ ${SQ_SMOKE_KEEP:-0} != 1 ]]; then "$DOCKER" volume rm -f "$VOLUME" >/dev/null 2>&1 || true; fi
  for d in "${cleanup_dirs[@]}"; do rm -rf "$d"; done
  # Untagged leftovers of the build (the builder stage's layers); the image and the base stay.
  "$DOCKER" image prune -f >/dev/null 2>&1 || true
  if [[ -n $started_dockerd ]]; then
    echo "  stopping the dockerd this script started (pid $started_dockerd)"
    kill -TERM "$started_dockerd" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.5; done
  fi
  echo
  cat "$SUMMARY"
  if ((failures)); then
    echo "docker_smoke: $failures check(s) failed (logs in $OUT_DIR)"
    exit 1
  fi
  echo "docker_smoke: all checks passed (logs in $OUT_DIR)"
  exit 0
}
trap 'fail "aborted at line $LINENO"; finish' ERR
trap finish EXIT

# --------------------------------------------------------------------------------------
step "Docker engine"
if ! "$DOCKER" info >/dev/null 2>&1 && ! { command -v "$DOCKER" && command -v dockerd; } >/dev/null 2>&1; then
  apt_install docker.io
fi
if "$DOCKER" info >/dev/null 2>&1; then
  note "engine: already running"
else
  [[ $(id -u) == 0 ]] || { echo "docker_smoke: no Docker engine and not root to start one" >&2; exit 2; }
  mkdir -p "$DATA_ROOT"
  # Low priority (inherited by containerd and every container, the builder's compiler
  # included): others' work on a shared machine is not starved.
  # shellcheck disable=SC2086
  nice -n 19 ionice -c3 dockerd --data-root "$DATA_ROOT" ${SQ_DOCKERD_FLAGS:-} \
    >"$OUT_DIR/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 1 120); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 0.5; done
  "$DOCKER" info >/dev/null 2>&1 || { tail -20 "$OUT_DIR/dockerd.log"; die "dockerd did not start (log: $OUT_DIR/dockerd.log)"; }
  note "engine: dockerd started here (pid $started_dockerd, data-root $DATA_ROOT, flags: ${SQ_DOCKERD_FLAGS:-none}, nice 19, ionice idle)"
fi
note "engine: $("$DOCKER" version -f 'server {{.Server.Version}}, client {{.Client.Version}}' 2>/dev/null)"

# --------------------------------------------------------------------------------------
step "base image $BASE"
# The host's Debian mirror (first non-comment deb/URIs entry ending in /debian), so that
# debootstrap and the image's apt use what this machine can reach.
host_mirror() {
  local suffix=$1
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } |
    grep -v '^[[:space:]]*#' | grep -oE "(https?|file)://[^[:space:]]+/$suffix/?([[:space:]]|\$)" |
    head -1 | tr -d '[:space:]' | sed 's:/$::' || true
}
# Slims a debootstrap tree the way the official debian:*-slim images are slimmed
# (debuerreotype --slimify and its apt/dpkg configuration), so that image sizes compare.
slimify() {
  local r=$1 mirror=$2 security=$3
  cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$r/etc/apt/apt.conf.d/docker-no-languages"
  printf 'Apt::AutoRemove::SuggestsImportant "false";\n' >"$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
  printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d" && chmod 0755 "$r/usr/sbin/policy-rc.d"
  rm -f "$r/etc/apt/sources.list"
  cat >"$r/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$r"/usr/share/{groff,info,linda,locale,man}/* "$r"/usr/share/lintian/overrides/*
  rm -rf "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*
  rm -f "$r"/var/log/bootstrap.log "$r"/var/log/dpkg.log "$r"/var/log/apt/*.log "$r"/var/log/alternatives.log
  # Certificate authorities this host's admin added (/usr/local/share/ca-certificates, e.g. a
  # TLS-intercepting egress proxy's): without them the builder's npm cannot reach the
  # registry from such a network. The image's update-ca-certificates (run when the
  # Dockerfile installs ca-certificates) adds them to its bundle. SQ_BASE_LOCAL_CAS=0: none.
  if [[ ${SQ_BASE_LOCAL_CAS:-1} == 1 ]] && compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    mkdir -p "$r/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$r/usr/local/share/ca-certificates/"
    note "base: added the host's local CAs: $(cd /usr/local/share/ca-certificates && echo *.crt)"
  fi
  : >"$r/etc/machine-id"
  rm -f "$r/etc/resolv.conf" "$r/etc/hostname"
}
if "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
  note "base: $BASE present ($("$DOCKER" image inspect -f '{{.Id}}' "$BASE" | cut -c1-19))"
elif [[ -s $BASE_TAR ]]; then
  "$DOCKER" import --change 'CMD ["bash"]' "$BASE_TAR" "$BASE" >/dev/null
  note "base: $BASE imported from the cached rootfs $BASE_TAR"
elif timeout 120 "$DOCKER" pull -q "$BASE" >/dev/null 2>&1; then
  note "base: $BASE pulled from the registry"
else
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  mirror="${SQ_DEBIAN_MIRROR:-$(host_mirror debian)}"; mirror="${mirror:-http://deb.debian.org/debian}"
  security="$(host_mirror debian-security)"; security="${security:-http://deb.debian.org/debian-security}"
  echo "  no registry: debootstrap --variant=minbase bookworm from $mirror (a few minutes)"
  mkdir -p "$SQ_CACHE/docker"
  rootfs="$SQ_CACHE/docker/rootfs.partial"
  rm -rf "$rootfs"
  t0=$(date +%s.%N)
  low debootstrap --variant=minbase --arch=amd64 bookworm "$rootfs" "$mirror" >"$OUT_DIR/debootstrap.log" 2>&1 ||
    { tail -20 "$OUT_DIR/debootstrap.log"; die "debootstrap failed (log: $OUT_DIR/debootstrap.log)"; }
  slimify "$rootfs" "$mirror" "$security"
  low tar --numeric-owner -C "$rootfs" -c . | low gzip -1 >"$BASE_TAR.partial"
  mv "$BASE_TAR.partial" "$BASE_TAR"
  rm -rf "$rootfs"
  "$DOCKER" import --change 'CMD ["bash"]' "$BASE_TAR" "$BASE" >/dev/null
  note "base: $BASE built by debootstrap from $mirror in $(since "$t0") s, cached as $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
fi
note "base: $("$DOCKER" image inspect -f '{{.Size}}' "$BASE" | awk '{ printf "%.1f MB", $1 / 1e6 }')"

# --------------------------------------------------------------------------------------
step "build $IMAGE"
if [[ ${SQ_SMOKE_SKIP_BUILD:-0} == 1 ]]; then
  "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 || die "SQ_SMOKE_SKIP_BUILD=1 but no image $IMAGE"
  note "build: skipped (SQ_SMOKE_SKIP_BUILD=1)"
else
  # The classic builder needs neither a registry nor the buildx plugin; --network host:
  # the builder fetches Debian packages and ONNX Runtime (npm) while it builds.
  context=.
  if [[ ${SQ_SMOKE_CONTEXT:-worktree} == head ]]; then
    context=$(mktemp -d)
    cleanup_dirs+=("$context")
    git archive HEAD | tar -C "$context" -x
    cp Dockerfile .dockerignore "$context/"
  fi
  echo "  log: $OUT_DIR/build.log (classic builder, --network host, JOBS=$JOBS, context ${SQ_SMOKE_CONTEXT:-worktree})"
  t0=$(date +%s.%N)
  if DOCKER_BUILDKIT=0 low "$DOCKER" build --force-rm --network host --build-arg JOBS="$JOBS" -t "$IMAGE" "$context" \
       >"$OUT_DIR/build.log" 2>&1; then
    pass "docker build ($(since "$t0") s)"
  else
    tail -30 "$OUT_DIR/build.log"
    die "docker build failed (log: $OUT_DIR/build.log)"
  fi
fi
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
size_mb=$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }')
"$DOCKER" history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-150 >"$OUT_DIR/history.txt"
if ((size <= MAX_MB * 1000000)); then
  pass "image size $size_mb MB <= $MAX_MB MB"
else
  fail "image size $size_mb MB > $MAX_MB MB; layers (docker history):"
  sed 's/^/        /' "$OUT_DIR/history.txt"
fi

# --------------------------------------------------------------------------------------
step "host client and model"
if [[ ! -x $SQCTL ]]; then
  echo "  building sqctl on the host (scripts/setup.sh, cmake, ninja)"
  bash scripts/setup.sh
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  low ninja -C build -j"$JOBS" sqctl >/dev/null
  SQCTL=build/client/sqctl
fi
[[ -f $MODEL ]] || SQ_SETUP_PARTS=models bash scripts/setup.sh
[[ -f $MODEL ]] || die "no model $MODEL"
note "model: $MODEL ($(stat -c %s "$MODEL") bytes), client: $SQCTL ($("$SQCTL" version 2>/dev/null | head -1))"
S=(--server "127.0.0.1:$GRPC_PORT")

# --------------------------------------------------------------------------------------
# run_container NAME: the hardened run (user from the image, read-only root, tmpfs /tmp,
# no capabilities, no privilege gain, memory limit as in docker-compose.yml).
run_container() {
  local n=$1 net=()
  if [[ $NETWORK == host ]]; then
    net=(--network host
         --health-cmd "sqctl health --server=127.0.0.1:$GRPC_PORT" --health-interval 15s
         --health-timeout 5s --health-retries 3)
    set -- --listen="0.0.0.0:$GRPC_PORT" --metrics_listen="0.0.0.0:$METRICS_PORT"
  else
    net=(-p "127.0.0.1:$GRPC_PORT:50051" -p "127.0.0.1:$METRICS_PORT:9464")
    set --
  fi
  containers+=("$n")
  "$DOCKER" run -d --name "$n" "${net[@]}" \
    --read-only --tmpfs /tmp:rw,nosuid,nodev,size=64m \
    --cap-drop ALL --security-opt no-new-privileges:true --memory 4g \
    -v "$VOLUME:/var/lib/sq" \
    "$IMAGE" --drain_grace_seconds="$DRAIN_GRACE" --workers=2 "$@" >/dev/null
}
# wait_serving NAME T0: seconds from T0 until grpc health answers SERVING from the host.
wait_serving() {
  local n=$1 t0=$2
  for _ in $(seq 1 600); do
    if [[ $("$SQCTL" health "${S[@]}" 2>/dev/null) == SERVING ]]; then
      since "$t0"
      return 0
    fi
    [[ $("$DOCKER" inspect -f '{{.State.Running}}' "$n" 2>/dev/null) == true ]] || return 1
    sleep 0.1
  done
  return 1
}

step "run $NAME (read-only, non-root, volume $VOLUME, network $NETWORK)"
"$DOCKER" rm -f "$NAME" "$NAME-restart" >/dev/null 2>&1 || true
"$DOCKER" volume rm -f "$VOLUME" >/dev/null 2>&1 || true
t_run=$(date +%s.%N)
run_container "$NAME" || die "docker run failed"
if t_serving=$(wait_serving "$NAME" "$t_run"); then
  pass "SERVING $t_serving s after docker run (grpc.health.v1 from the host)"
else
  "$DOCKER" logs "$NAME" 2>&1 | tail -20
  die "the container never answered SERVING"
fi
health=""
for _ in $(seq 1 120); do
  health=$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$NAME")
  [[ $health == starting ]] || break
  sleep 0.5
done
if [[ $health == healthy ]]; then
  pass "HEALTHCHECK healthy $(since "$t_run") s after docker run (first check at the 15 s interval)"
else
  fail "HEALTHCHECK status '$health'"
  "$DOCKER" inspect -f '{{json .State.Health}}' "$NAME" | head -c 2000; echo
fi

uid=$("$DOCKER" exec "$NAME" id -u)
# shellcheck disable=SC2016
pid1_uid=$("$DOCKER" exec "$NAME" awk '/^Uid:/ { print $2 }' /proc/1/status)
if [[ $uid == 10001 && $pid1_uid == 10001 ]]; then
  pass "runs as uid 10001 (exec: $uid, sq-server as PID 1: $pid1_uid)"
else
  fail "uid: exec $uid, PID 1 $pid1_uid (want 10001)"
fi
if [[ $("$DOCKER" inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$NAME") == true ]] &&
   ! "$DOCKER" exec "$NAME" sh -c 'echo x >/usr/local/bin/probe' 2>/dev/null &&
   "$DOCKER" exec "$NAME" sh -c 'echo x >/var/lib/sq/.probe && rm /var/lib/sq/.probe'; then
  pass "root fs read-only (a write to /usr fails), the volume /var/lib/sq writable"
else
  fail "read-only root fs / writable volume"
fi

# --------------------------------------------------------------------------------------
step "submit the OCR recognizer from the host (INT4, channel), watch, download"
t0=$(date +%s.%N)
job=$("$SQCTL" submit "$MODEL" --bits 4 --granularity channel --detach "${S[@]}")
echo "  job $job"
if "$SQCTL" watch "$job" "${S[@]}" >"$OUT_DIR/watch.txt" 2>&1; then
  pass "job $job SUCCEEDED ($(since "$t0") s from submit)"
else
  cat "$OUT_DIR/watch.txt"; die "job $job did not succeed"
fi
rm -f "$OUT_DIR/rec-int4.onnx"
"$SQCTL" download "$job" -o "$OUT_DIR/rec-int4.onnx" "${S[@]}" >/dev/null
"$SQCTL" report "$job" --json "${S[@]}" >"$OUT_DIR/rec-int4.report.json"
"$SQCTL" report "$job" "${S[@]}" >"$OUT_DIR/rec-int4.report.txt"
sha=$(sha256sum "$OUT_DIR/rec-int4.onnx" | cut -d' ' -f1)
want=$(jf output_sha256 <"$OUT_DIR/rec-int4.report.json")
if [[ -n $want && $sha == "$want" ]]; then
  pass "downloaded $(stat -c %s "$OUT_DIR/rec-int4.onnx") bytes, SHA-256 $sha as in the report"
else
  fail "downloaded SHA-256 $sha, report says '$want'"
fi
verification=$(jf verification status <"$OUT_DIR/rec-int4.report.json")
summary_line=$(grep -m1 'verification:' "$OUT_DIR/rec-int4.report.txt" | sed 's/^ *//' || true)
if [[ $verification == passed ]]; then
  pass "report: $summary_line"
else
  fail "report verification '$verification': $summary_line"
fi
note "report: compression $(jf compression_ratio <"$OUT_DIR/rec-int4.report.json" | awk '{ printf "%.2f", $1 }'), $(jf layers_quantized <"$OUT_DIR/rec-int4.report.json") layers quantized, $(jf total_seconds <"$OUT_DIR/rec-int4.report.json" | awk '{ printf "%.2f", $1 }') s in the engine"
# The download in the host's ONNX Runtime too, where the benchmark runner is built
# (scripts/bench_infer.sh builds it): it loads the artifact and compares with the FP32 model.
bench=""
for b in build/bench/infer/sq_bench_infer build-bench/bench/infer/sq_bench_infer; do
  [[ -x $b ]] && { bench=$b; break; }
done
if [[ -n $bench ]]; then
  rel=$(timeout 300 nice -n 19 ionice -c3 "$bench" --model "$OUT_DIR/rec-int4.onnx" --reference "$MODEL" --runs 3 2>/dev/null |
        tail -1 | jf rel_l2 2>/dev/null || true)
  if [[ -n $rel ]]; then
    pass "the download loads and runs in the host's ONNX Runtime ($bench): rel L2 vs FP32 $(awk -v r="$rel" 'BEGIN { printf "%.3g", r }')"
  else
    fail "the download did not run in the host's ONNX Runtime ($bench)"
  fi
else
  note "host ONNX Runtime check skipped: no sq_bench_infer built"
fi

# --------------------------------------------------------------------------------------
step "metrics http://127.0.0.1:$METRICS_PORT/metrics"
if curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" >"$OUT_DIR/metrics.txt"; then
  missing=()
  for m in sq_build_info sq_jobs_submitted_total sq_jobs_finished_total sq_job_duration_seconds_bucket \
           sq_queue_depth sq_worker_slots sq_verifications_total sq_upload_bytes_total sq_layer_sqnr_decibels_bucket; do
    grep -q "^$m" "$OUT_DIR/metrics.txt" || missing+=("$m")
  done
  ok_jobs=$(awk '/^sq_jobs_finished_total\{.*outcome="succeeded"/ { print $NF }' "$OUT_DIR/metrics.txt")
  passed=$(awk '/^sq_verifications_total\{.*result="passed"/ { print $NF }' "$OUT_DIR/metrics.txt")
  if ((${#missing[@]} == 0)) && [[ ${ok_jobs%%.*} -ge 1 && ${passed%%.*} -ge 1 ]]; then
    pass "metrics: $(grep -c '^sq_' "$OUT_DIR/metrics.txt") sq_ samples; jobs succeeded $ok_jobs, verifications passed $passed"
  else
    fail "metrics: missing ${missing[*]:-none}; succeeded '$ok_jobs', verifications passed '$passed'"
  fi
else
  fail "metrics endpoint did not answer"
fi

# --------------------------------------------------------------------------------------
step "SIGTERM with a job running: drain"
job2=$("$SQCTL" submit "$MODEL" --bits 4 --granularity channel --split auto --detach "${S[@]}")
state=""
for _ in $(seq 1 300); do
  state=$("$SQCTL" status "$job2" --json "${S[@]}" | jf state)
  [[ $state == JOB_STATE_QUEUED ]] || break
  sleep 0.1
done
echo "  job $job2 is $state; docker stop -t $((DRAIN_GRACE + 10))"
t0=$(date +%s.%N)
"$DOCKER" stop -t $((DRAIN_GRACE + 10)) "$NAME" >/dev/null
t_stop=$(since "$t0")
"$DOCKER" logs "$NAME" >"$OUT_DIR/container.log" 2>&1
code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$NAME")
drain_line=$(grep -n 'draining' "$OUT_DIR/container.log" | head -1 || true)
job2_line=$(grep -n "\"job_finished\".*$job2\|$job2.*\"job_finished\"" "$OUT_DIR/container.log" | head -1 || true)
if [[ $code == 0 && -n $drain_line ]] && grep -q 'sq-server: stopped' "$OUT_DIR/container.log"; then
  pass "docker stop: exit code 0 after $t_stop s; log: ${drain_line#*:}, then 'sq-server: stopped'"
else
  fail "docker stop: exit code $code, drain line '${drain_line#*:}' (log: $OUT_DIR/container.log)"
  tail -5 "$OUT_DIR/container.log"
fi
if [[ $state == JOB_STATE_RUNNING ]]; then
  if [[ -n $job2_line && ${job2_line%%:*} -gt ${drain_line%%:*} && $job2_line == *'"succeeded"'* ]]; then
    pass "the job running at SIGTERM finished during the drain (succeeded)"
  else
    fail "the job running at SIGTERM: ${job2_line#*:}"
  fi
else
  note "note: job $job2 was $state, not running, at SIGTERM; the drain had no job to wait for"
fi

# --------------------------------------------------------------------------------------
step "restart on the same volume"
t_run=$(date +%s.%N)
run_container "$NAME-restart" || die "docker run (restart) failed"
if t_serving2=$(wait_serving "$NAME-restart" "$t_run"); then
  pass "SERVING again $t_serving2 s after docker run, on the existing volume"
  st1=$("$SQCTL" status "$job" --json "${S[@]}" | jf state)
  st2=$("$SQCTL" status "$job2" --json "${S[@]}" | jf state)
  if [[ $st1 == JOB_STATE_SUCCEEDED && ( $st2 == JOB_STATE_SUCCEEDED || $state != JOB_STATE_RUNNING ) ]]; then
    pass "jobs kept on the volume: $job $st1, $job2 $st2"
  else
    fail "after restart: $job $st1, $job2 $st2"
  fi
else
  "$DOCKER" logs "$NAME-restart" 2>&1 | tail -20
  fail "the restarted container never answered SERVING"
fi
"$DOCKER" stop -t $((DRAIN_GRACE + 10)) "$NAME-restart" >/dev/null || true

note "result: image $IMAGE $size_mb MB; docker run -> SERVING $t_serving s; job $job verification $verification"
finish
