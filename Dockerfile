# sq: SplitQuant ONNX quantization service.
#
#   docker build -t sq:dev .
#   docker run -d --name sq -p 127.0.0.1:50051:50051 -p 127.0.0.1:9464:9464 \
#       -v sq-artifacts:/var/lib/sq sq:dev [--workers=N --auth_token_file=F ...]
#   docker exec sq sqctl health          (or the container's health status)
#
# Arguments after the image are appended to the ENTRYPOINT's flags (the last value of a
# flag wins, so they may override those too). The token may also come from the
# environment: -e SQ_TOKEN=...
#
# Works with the classic builder too (DOCKER_BUILDKIT=0): no BuildKit-only syntax.
# scripts/docker_smoke.sh builds, runs and checks it end to end (docs/deploy.md, "Image").
# Both stages use Debian bookworm, so the runtime libraries are exactly the ones the
# binaries were linked against.

# ---------------------------------------------------------------------------------------
# Builder: Debian build packages, Release build of sq-server and sqctl, no tests.
# ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS builder

ENV DEBIAN_FRONTEND=noninteractive

# The package list is taken from scripts/setup.sh (one source of truth), minus what only
# tests, benchmarks or a developer machine need. ONNX Runtime (the engine verifies every
# artifact in it) comes from npm by setup.sh's "ort" step, as on a developer machine.
COPY scripts/setup.sh /tmp/setup.sh
RUN set -eux; \
    pkgs="$(bash -c 'eval "$(sed -n "/^APT_PACKAGES=(/,/^)/p" /tmp/setup.sh)"; printf "%s\n" "${APT_PACKAGES[@]}"' \
            | grep -vxE 'ccache|prometheus|time|wamerican|fonts-dejavu-core|clang|libclang-rt-14-dev|python3-grpcio|python3-protobuf')"; \
    test -n "$pkgs"; \
    apt-get update; \
    apt-get install -y --no-install-recommends $pkgs nodejs npm; \
    SQ_CACHE=/opt/sq-cache SQ_SETUP_PARTS=ort bash /tmp/setup.sh; \
    rm -rf /var/lib/apt/lists/* /tmp/setup.sh

WORKDIR /src
COPY . .

# JOBS: parallel compile jobs (ninja's default is cores + 2).
ARG JOBS=""
RUN set -eux; \
    SQ_CACHE=/opt/sq-cache cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSQ_BUILD_TESTS=OFF; \
    ninja -C /build ${JOBS:+-j"$JOBS"} sq-server sq-ort-worker sqctl; \
    mkdir -p /out; \
    install -m 0755 -s /build/server/sq-server /build/server/sq-ort-worker /build/client/sqctl /out/; \
    install -m 0644 /opt/sq-cache/onnxruntime-0.4.9/lib/libonnxruntime.so /out/libonnxruntime.so.1

# ---------------------------------------------------------------------------------------
# Runtime: only the shared libraries the two binaries load, a non-root user, one volume.
# ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim

RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libgrpc++1.51 libgrpc29 libprotobuf32 libonnx1 libabsl20220623 \
        libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
        libre2-9 libssl3 libc-ares2 zlib1g libzip4 ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 sq; \
    useradd --system --uid 10001 --gid sq --home-dir /var/lib/sq --no-create-home \
        --shell /usr/sbin/nologin sq; \
    mkdir -p /var/lib/sq; \
    chown sq:sq /var/lib/sq; \
    chmod 0750 /var/lib/sq

COPY --from=builder /out/sq-server /out/sq-ort-worker /out/sqctl /usr/local/bin/
# ONNX Runtime (CPU, ~28 MB): found through the linker cache, not the build's RUNPATH.
COPY --from=builder /out/libonnxruntime.so.1 /usr/local/lib/
RUN ldconfig

# Fail the build, not the first start, if a shared library is missing from the list above.
RUN if ldd /usr/local/bin/sq-server /usr/local/bin/sq-ort-worker /usr/local/bin/sqctl | grep -F 'not found'; then exit 1; fi

USER 10001:10001
WORKDIR /var/lib/sq
VOLUME ["/var/lib/sq"]
# 50051: gRPC (sq.v1, grpc.health.v1, reflection). 9464: Prometheus /metrics.
EXPOSE 50051 9464

# grpc.health.v1 over plain text on the local port (the health service needs no token).
# With TLS on, override it (compose `healthcheck:` with `sqctl health --tls --tls-ca ...`);
# Kubernetes uses its own grpc probe instead (deploy/k8s/deployment.yaml).
# (No --start-period: the server is up in well under the first 15 s interval, and
# dockerfilelint 1.8 misparses that option.)
HEALTHCHECK --interval=15s --timeout=5s --retries=3 \
    CMD ["sqctl", "health", "--server=127.0.0.1:50051"]

# Exec form: sq-server is PID 1 and gets SIGTERM directly: health turns NOT_SERVING, running
# jobs get --drain_grace_seconds (default 60) to finish, then it exits. Give `docker stop`
# that long: docker stop -t 70.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sq-server", "--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464", "--artifact_dir=/var/lib/sq/artifacts"]
