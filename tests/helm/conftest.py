"""Shared fixtures for the Helm chart tests: the real helm/kubectl, rendering, and the
Kubernetes API stand-in (one per test session, on a free port)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CHART = REPO / "charts" / "edgefleet"
EVERYTHING = HERE / "values-everything.yaml"
FIXTURES = HERE / "fixtures"
STANDIN = REPO / "tests" / "kube-standin" / "standin.py"
NAMESPACE = "edgefleet"


def tools_bin() -> Path:
    env = os.environ.get("EDGEFLEET_TOOLS_BIN")
    if env:
        return Path(env)
    out = subprocess.run(["bash", str(REPO / "tests/tools/install-k8s-tools.sh")],
                         check=True, capture_output=True, text=True).stdout.strip()
    return Path(out)


@pytest.fixture(scope="session")
def helm_bin() -> str:
    return str(tools_bin() / "helm")


@pytest.fixture(scope="session")
def kubectl_bin() -> str:
    return str(tools_bin() / "kubectl")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


class Helm:
    def __init__(self, binary: str):
        self.binary = binary

    def template_raw(self, *args: str, values: Path | None = None,
                     namespace: str = NAMESPACE) -> subprocess.CompletedProcess:
        cmd = [self.binary, "template", "t", str(CHART), "--namespace", namespace]
        if values is not None:
            cmd += ["-f", str(values)]
        return run(cmd + list(args))

    def template(self, *args: str, values: Path | None = None, namespace: str = NAMESPACE) -> str:
        res = self.template_raw(*args, values=values, namespace=namespace)
        assert res.returncode == 0, f"helm template failed:\n{res.stderr}"
        return res.stdout

    def objects(self, *args: str, values: Path | None = None, namespace: str = NAMESPACE) -> list[dict]:
        return [d for d in yaml.safe_load_all(self.template(*args, values=values, namespace=namespace)) if d]


@pytest.fixture(scope="session")
def helm(helm_bin: str) -> Helm:
    return Helm(helm_bin)


def find(objs: list[dict], kind: str, name_suffix: str = "") -> list[dict]:
    return [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]


def one(objs: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = find(objs, kind, name_suffix)
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


class StandIn:
    """The Kubernetes API stand-in as a subprocess on a free port."""

    def __init__(self, tmp: Path, kubectl: str):
        self.tmp = tmp
        self.kubectl_bin = kubectl
        self.port_file, self.kubeconfig = tmp / "port", tmp / "kubeconfig"
        self.log = open(tmp / "standin.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(STANDIN), "--port", "0", "--port-file", str(self.port_file),
             "--kubeconfig", str(self.kubeconfig), "--log-requests", str(tmp / "requests.jsonl")],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (self.port_file.exists() and self.kubeconfig.exists()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"stand-in exited: {(tmp / 'standin.log').read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("stand-in did not start within 30 s")
            time.sleep(0.05)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        res = run([self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args], input=input)
        if check:
            assert res.returncode == 0, f"kubectl {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
        return res

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def standin(tmp_path_factory, kubectl_bin: str):
    s = StandIn(tmp_path_factory.mktemp("standin"), kubectl_bin)
    # ServiceMonitor / PrometheusRule kinds: register the fixture CRDs first.
    s.kubectl("apply", "-f", str(FIXTURES / "monitoring-crds.yaml"))
    s.kubectl("wait", "--for=condition=Established", "--timeout=30s",
              "crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com")
    yield s
    s.stop()
