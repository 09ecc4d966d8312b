# syntax=docker/dockerfile:1.7
# EdgeFleet node agent image (binary `edgefleet-agent`), for the chart's optional DaemonSet
# (agent.enabled) on k3s edge nodes. Not built in this repository's CI (no container engine
# there); see charts/edgefleet/README.md.
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -f docker/agent.Dockerfile -t ghcr.io/edgefleet/edgefleet-agent:0.1.0 .
#
# Built with the default features: tract, ONNX Runtime (loaded at run time; the image ships
# the library from the PyPI `onnxruntime` wheel of its architecture) and llama.cpp for GGUF
# language models (compiled from source for the x86-64-v3 level set in .cargo/config.toml;
# arm64 uses its baseline).

ARG RUST_VERSION=1.95
ARG ONNXRUNTIME_VERSION=1.23.2

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-trixie AS build
ARG TARGETARCH
WORKDIR /src
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
RUN set -eu; \
    case "$TARGETARCH" in \
      amd64) t=x86_64-unknown-linux-gnu; g=x86_64-linux-gnu; p=gcc-x86-64-linux-gnu ;; \
      arm64) t=aarch64-unknown-linux-gnu; g=aarch64-linux-gnu; p=gcc-aarch64-linux-gnu ;; \
      *) echo "unsupported TARGETARCH=$TARGETARCH" >&2; exit 1 ;; \
    esac; \
    echo "$t" > /rust-target; \
    if [ "$(dpkg --print-architecture)" != "$TARGETARCH" ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends "$p" "libc6-dev-$TARGETARCH-cross"; \
      rm -rf /var/lib/apt/lists/*; \
      echo "$g" > /cross-gcc; \
    fi; \
    rustup target add "$t"
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=edgefleet-target-$TARGETARCH \
    set -eu; t="$(cat /rust-target)"; \
    if [ -f /cross-gcc ]; then \
      g="$(cat /cross-gcc)"; \
      export "CC_$(echo "$t" | tr - _)=$g-gcc"; \
      export "CARGO_TARGET_$(echo "$t" | tr a-z- A-Z_)_LINKER=$g-gcc"; \
    fi; \
    # the device profile: fat LTO, one codegen unit; smaller than release, as fast (BENCHMARKS.md)
    cargo build --profile device --locked --target "$t" -p edgefleet-agent --bin edgefleet-agent; \
    cp "target/$t/device/edgefleet-agent" /edgefleet-agent

# libonnxruntime.so from the wheel of the target architecture (a wheel is a zip file).
FROM --platform=$BUILDPLATFORM python:3.11-slim AS onnxruntime
ARG TARGETARCH
ARG ONNXRUNTIME_VERSION
RUN set -eu; \
    case "$TARGETARCH" in \
      amd64) plat=manylinux_2_27_x86_64 ;; \
      arm64) plat=manylinux_2_27_aarch64 ;; \
    esac; \
    pip download --no-deps --only-binary=:all: --platform "$plat" --python-version 3.11 \
      -d /wheel "onnxruntime==$ONNXRUNTIME_VERSION"; \
    python -c "import zipfile, glob; z = zipfile.ZipFile(glob.glob('/wheel/*.whl')[0]); \
      n = [f for f in z.namelist() if '/capi/libonnxruntime.so' in f][0]; \
      open('/libonnxruntime.so', 'wb').write(z.read(n))"

FROM debian:trixie-slim
# ca-certificates: without EDGEFLEET_AGENT_TLS_CA_FILE the agent trusts the platform roots.
# libgomp1: llama.cpp's OpenMP thread pool.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot \
 && install -d -o 65532 -g 65532 /var/lib/edgefleet-agent
COPY --from=build /edgefleet-agent /usr/local/bin/edgefleet-agent
COPY --from=onnxruntime /libonnxruntime.so /usr/local/lib/edgefleet/libonnxruntime.so
USER 65532:65532
ENV EDGEFLEET_AGENT_STORE=/var/lib/edgefleet-agent \
    EDGEFLEET_AGENT_LISTEN=127.0.0.1:8081 \
    EDGEFLEET_AGENT_ONNXRUNTIME_LIB=/usr/local/lib/edgefleet/libonnxruntime.so
ENTRYPOINT ["/usr/local/bin/edgefleet-agent"]
