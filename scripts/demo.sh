#!/usr/bin/env bash
# The whole EdgeFleet loop on one machine: fetches the real model, builds the two binaries the
# demo runs and runs `edgefleet demo` (embedded broker + SQLite + artifact server + REST API +
# live fleet page in-process, real edgefleet-agent processes, the orientation CNN in
# fp32/fp16/int8, v1 then a v2 canary).
#
#   scripts/demo.sh                     # 8 devices, live table, summary
#   scripts/demo.sh --devices 12        # larger fleet
#   scripts/demo.sh --short -o json     # quick run, machine-readable summary on stdout
#   scripts/demo.sh --hold              # keep it running afterwards to explore (Ctrl-C stops)
#   scripts/demo.sh --llm               # the chat model: two quantizations, TTFT per cohort
#
# The build uses the `demo` profile (scripts/demo-profile.toml: opt-level 3 where inference runs, no LTO)
# and, without --llm, leaves llama.cpp and the Kubernetes-free agent's ONNX Runtime loader out:
# a fresh clone builds in minutes (BENCHMARKS.md, "First command"). Cargo's full output goes
# to target/demo-build.log; the terminal shows one progress line.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

llm=0
for arg in "$@"; do [[ "$arg" == "--llm" ]] && llm=1; done

# Progress of the preparation goes to stderr so that `-o json` keeps stdout clean.
source scripts/lib.sh
started=$SECONDS
build=(build --locked --profile demo -p edgefleet-controller -p edgefleet-agent
       --bin edgefleet --bin edgefleet-agent)
if [[ "$llm" == 1 ]]; then
  ensure_llama_build_deps >&2
  bash tests/tools/fetch-models.sh smollm2-135m-instruct-q4_1.gguf >&2
  what="edgefleet and edgefleet-agent with llama.cpp"
else
  bash tests/tools/fetch-models.sh orientation.onnx >&2
  build+=(--no-default-features --features edgefleet-controller/standalone)
  what="edgefleet and edgefleet-agent"
fi

mkdir -p target
build_log="$root/target/demo-build.log"
# Every --config before the subcommand: cargo keeps only one place's list.
if ! cargo --config scripts/demo-profile.toml --config 'term.progress.when="always"' \
    --config 'term.progress.width=120' "${build[@]}" 2>&1 \
    | python3 scripts/build-progress.py "$build_log" "$what"; then
  echo "demo: the build failed; the last lines of $build_log:" >&2
  tail -n 40 "$build_log" >&2
  exit 1
fi
target_dir="${CARGO_TARGET_DIR:-$root/target}"
echo "demo: built $what in $((SECONDS - started)) s (log: $build_log); starting the demo" >&2
exec "$target_dir/demo/edgefleet" demo "$@"
