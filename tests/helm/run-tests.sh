#!/usr/bin/env bash
# Tests of the Helm chart charts/edgefleet with the real helm v4 / kubectl v1.35, the Kubernetes
# API stand-in, kubernetes-validate, promtool and mosquitto. Installs (cached) what it needs;
# exits non-zero on any failure. Extra args go to pytest.
#   bash tests/helm/run-tests.sh [-k rbac] [-x]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

bin="$(bash "$repo/tests/tools/install-k8s-tools.sh")"
py="$(bash "$here/ensure-venv.sh")"

# promtool (Debian package prometheus) and mosquitto + clients, when missing.
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run-tests: installing ${need[*]}" >&2
    apt-get update -qq >&2
    # --no-install-recommends and no service start: only the binaries are needed.
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -q --no-install-recommends "${need[@]}" >&2
  else
    echo "run-tests: missing ${need[*]} (install them, e.g. apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

export EDGEFLEET_TOOLS_BIN="$bin"
export PYTHONDONTWRITEBYTECODE=1
cd "$repo"
exec "$py" -m pytest -p no:cacheprovider tests/helm -q "$@"
