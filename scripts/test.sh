#!/usr/bin/env bash
# The whole EdgeFleet test suite on a fresh machine: installs and starts what the tests need
# (PostgreSQL, Mosquitto, Prometheus, Python tools, kubectl/helm, the C/C++ tools llama.cpp
# builds with, real models, Chromium and Playwright for the fleet page, two OCI registries
# (Debian's docker-registry) and the oras client), then runs
# the format check, clippy and every test. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_postgres
ensure_mosquitto
ensure_prometheus
ensure_k8s_tools
ensure_llama_build_deps
ensure_models
ensure_browser
ensure_registry

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "the Kubernetes-only controller (no embedded broker, REST API or compressor) builds clean"
cargo clippy --locked -p edgefleet-controller --no-default-features --features postgres --bin edgefleet -- -D warnings

log "what scripts/demo.sh builds (no llama.cpp, no PostgreSQL) builds clean"
cargo clippy --locked -p edgefleet-controller -p edgefleet-agent --no-default-features \
  --features edgefleet-controller/standalone --bins -- -D warnings

log "Rust tests (nextest)"
cargo build --workspace --bins --locked
if ! command -v cargo-nextest >/dev/null; then cargo install --locked cargo-nextest; fi
cargo nextest run --workspace --locked --no-fail-fast

log "Kubernetes API stand-in tests (pytest, real kubectl and helm)"
bash tests/kube-standin/run-tests.sh

log "Helm chart tests (real helm, kubernetes-validate, promtool, API stand-in)"
bash tests/helm/run-tests.sh
