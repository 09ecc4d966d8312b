"""Static checks of the Dockerfiles (no container engine here to build them)."""
from __future__ import annotations

import re

import pytest

from conftest import EVERYTHING, REPO, one


@pytest.mark.parametrize("name, binary", [("controller", "edgefleet"), ("agent", "edgefleet-agent")])
def test_dockerfile_shape(name, binary):
    text = (REPO / "docker" / f"{name}.Dockerfile").read_text()
    froms = re.findall(r"^FROM .*$", text, re.M)
    # builder + runtime; the agent also fetches libonnxruntime in a stage of its own
    assert len(froms) == (3 if name == "agent" else 2), froms
    assert "--platform=$BUILDPLATFORM rust:${RUST_VERSION}" in froms[0] and "ARG RUST_VERSION=1.95" in text
    assert "ARG TARGETARCH" in text
    assert re.search(r"^FROM (gcr\.io/distroless/static|debian:[a-z]+-slim)", froms[-1], re.M)
    assert re.search(r"^USER 65532:65532$", text, re.M)
    profile = "--profile device" if name == "agent" else "--release"
    assert f"cargo build {profile} --locked" in text and f"--bin {binary}" in text
    assert f"/usr/local/bin/{binary}" in text
    if name == "agent":
        # ONNX Runtime is loaded at run time: the image ships the wheel's library and says where
        lib = "/usr/local/lib/edgefleet/libonnxruntime.so"
        assert f"COPY --from=onnxruntime /libonnxruntime.so {lib}" in text
        assert f"EDGEFLEET_AGENT_ONNXRUNTIME_LIB={lib}" in text


def test_chart_runs_the_binaries_where_the_images_put_them(helm):
    objs = helm.objects(values=EVERYTHING)
    ctl = one(objs, "Deployment", "-controller")["spec"]["template"]["spec"]["containers"][0]
    agent = one(objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert ctl["command"][0] == "/usr/local/bin/edgefleet"
    assert agent["command"][0] == "/usr/local/bin/edgefleet-agent"
    for c, df in ((ctl, "controller"), (agent, "agent")):
        assert f"COPY --from=build /{c['command'][0].rsplit('/', 1)[1]} {c['command'][0]}" in \
            (REPO / "docker" / f"{df}.Dockerfile").read_text()


def test_dockerignore_keeps_the_workspace():
    lines = (REPO / ".dockerignore").read_text().split()
    assert "/target" in lines and "/.git" in lines
    for needed in ("protocol", "mqtt", "crds", "controller", "node-agent", "tests", "migrations", "Cargo.toml", "Cargo.lock"):
        assert f"/{needed}" not in lines and needed not in lines
