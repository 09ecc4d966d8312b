#!/usr/bin/env bash
# Runs the Kubernetes API stand-in's own test suite with the real kubectl/helm.
# Installs (cached) kubectl+helm and the pinned Python deps first. Extra args go to pytest.
#   bash tests/kube-standin/run-tests.sh [-k watch] [-x]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bash "$repo/tests/tools/install-k8s-tools.sh" >/dev/null
py="$(bash "$here/ensure-venv.sh")"
cd "$repo"
export PYTHONDONTWRITEBYTECODE=1
exec "$py" -m pytest -p no:cacheprovider tests/kube-standin -q "$@"
