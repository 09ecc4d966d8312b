#!/usr/bin/env bash
# Runs EdgeFleet's fault-injection and adversarial tests (RELIABILITY.md) and prints what each
# observed. They are part of ./scripts/test.sh too; this runs only them, uncaptured.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_postgres
ensure_mosquitto
ensure_k8s_tools
ensure_models

cargo build --workspace --bins --locked
if ! command -v cargo-nextest >/dev/null; then cargo install --locked cargo-nextest; fi
log_file="${CARGO_TARGET_DIR:-target}/reliability.log"
mkdir -p "$(dirname "$log_file")"
cargo nextest run --workspace --locked --no-fail-fast --no-capture -E '
    (package(edgefleet-e2e) & (binary(faults) | binary(control_plane) | binary(security)
        | test(a_restarted_controller_resumes_the_rollout_on_postgres)
        | test(a_slow_canary_is_rolled_back_automatically)
        | test(cli_refuses_bad_manifests_naming_the_field_and_stores_nothing)))
  | (package(edgefleet-agent) & (binary(faults) | binary(signing) | binary(tls) | binary(desired_fuzz)))
  | (package(edgefleet-crds) & binary(wire))
  | (package(edgefleet-controller) & (test(an_invalid_spec_touches_no_device) | binary(k8s_mock)))
' 2>&1 | tee "$log_file"
log "observed"
grep '^RELIABILITY' "$log_file" || true
