#!/usr/bin/env bash
# Creates (once) the venv for the Helm chart tests: the stand-in's pinned requirements plus
# tests/helm/requirements.txt, cached under ${EDGEFLEET_TOOLS:-$HOME/.cache/edgefleet/tools}
# and rebuilt when either file changes. Progress goes to stderr, the python path to stdout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tools="${EDGEFLEET_TOOLS:-$HOME/.cache/edgefleet/tools}"
venv="$tools/helm-tests-venv"
want="$(cat "$repo/tests/kube-standin/requirements.txt" "$here/requirements.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  echo "ensure-venv: creating $venv" >&2
  rm -rf "$venv"
  mkdir -p "$tools"
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$repo/tests/kube-standin/requirements.txt" -r "$here/requirements.txt" >&2
  echo "$want" > "$venv/.requirements.sha256"
fi
echo "$venv/bin/python"
