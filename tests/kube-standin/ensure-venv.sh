#!/usr/bin/env bash
# Creates (once) a virtualenv with the stand-in's pinned requirements and prints
# the path of its python. Cached under ${EDGEFLEET_TOOLS:-$HOME/.cache/edgefleet/tools};
# rebuilt when requirements.txt changes. Progress goes to stderr, the path to stdout.
#   PY=$(tests/kube-standin/ensure-venv.sh)
#   "$PY" tests/kube-standin/standin.py --port 0 --port-file /tmp/port --kubeconfig /tmp/kubeconfig
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="${EDGEFLEET_TOOLS:-$HOME/.cache/edgefleet/tools}"
venv="$tools/standin-venv"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  echo "ensure-venv: creating $venv" >&2
  rm -rf "$venv"
  mkdir -p "$tools"
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
  echo "$want" > "$venv/.requirements.sha256"
fi
echo "$venv/bin/python"
