#!/usr/bin/env bash
# Prints a kubeconfig for a stand-in listening on 127.0.0.1:PORT (plain HTTP, no auth).
#   tests/kube-standin/kubeconfig.sh "$(cat port-file)" > kubeconfig
# (standin.py --kubeconfig FILE writes the same file itself.)
set -euo pipefail
port="${1:?usage: kubeconfig.sh PORT}"
cat <<YAML
apiVersion: v1
kind: Config
clusters:
- name: standin
  cluster:
    server: http://127.0.0.1:${port}
contexts:
- name: standin
  context:
    cluster: standin
    user: standin
    namespace: default
current-context: standin
users:
- name: standin
  user: {}
YAML
