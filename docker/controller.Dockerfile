# syntax=docker/dockerfile:1.7
# EdgeFleet controller image (binary `edgefleet`, started as `edgefleet run` by the Helm chart).
# Not built in this repository's CI (no container engine there); see charts/edgefleet/README.md.
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -f docker/controller.Dockerfile -t ghcr.io/edgefleet/edgefleet-controller:0.1.0 .
#
# The builder runs on the build machine's platform and cross-compiles for TARGETARCH
# (amd64, arm64) with Debian's cross gcc (ring and SQLite have C code), so no emulation is
# needed for the Rust build.

ARG RUST_VERSION=1.95

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-trixie AS build
ARG TARGETARCH
WORKDIR /src
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
    # Kubernetes mode only: no embedded broker, REST API or compressor (and no tract).
    cargo build --release --locked --target "$t" -p edgefleet-controller --no-default-features --features postgres --bin edgefleet; \
    cp "target/$t/release/edgefleet" /edgefleet

FROM debian:trixie-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot \
 && install -d -o 65532 -g 65532 /var/lib/edgefleet
COPY --from=build /edgefleet /usr/local/bin/edgefleet
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/edgefleet"]
CMD ["run"]
