#!/usr/bin/env bash
# The whole EdgeFleet loop on one machine: fetches the real models, builds release binaries and
# runs `edgefleet demo` (embedded broker + SQLite + artifact server + REST API in-process, real
# edgefleet-agent processes, the orientation CNN in fp32/fp16/int8, v1 then a v2 canary).
#
#   scripts/demo.sh                     # 8 devices, live table, summary
#   scripts/demo.sh --devices 12        # larger fleet
#   scripts/demo.sh --short -o json     # quick run, machine-readable summary on stdout
#   scripts/demo.sh --hold              # keep it running afterwards to explore (Ctrl-C stops)
#   scripts/demo.sh --llm               # the chat model: two quantizations, TTFT per cohort
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Progress of the preparation goes to stderr so that `-o json` keeps stdout clean.
source scripts/lib.sh
ensure_llama_build_deps >&2
bash tests/tools/fetch-models.sh >&2
cargo build --release --bin edgefleet --bin edgefleet-agent >&2
exec target/release/edgefleet demo "$@"
