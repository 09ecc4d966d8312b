"""The project's generated CRD and example manifests against the stand-in, with the real kubectl:
the CRD applies, every example applies, every invalid example is refused naming its field."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from test_standin import Server, kubectl_bin  # noqa: F401  (kubectl_bin is a fixture)

REPO = Path(__file__).resolve().parent.parent.parent
CRD = REPO / "crds" / "modeldeployment.yaml"
EXAMPLES = sorted((REPO / "crds" / "examples").glob("*.yaml"))
ALL_INVALID = sorted((REPO / "crds" / "examples" / "invalid").glob("*.yaml"))


def admission_only(path: Path) -> bool:
    """Refused by the controller's admission checks (`edgefleet apply`, reconcile), not by the
    OpenAPI schema: a rule the schema cannot express. crds/tests/manifests.rs covers those."""
    return path.read_text().startswith("# INVALID (admission only")


INVALID = [p for p in ALL_INVALID if not admission_only(p)]
ADMISSION_ONLY = [p for p in ALL_INVALID if admission_only(p)]


@pytest.fixture
def project_srv(tmp_path, kubectl_bin):  # noqa: F811
    srv = Server(tmp_path, kubectl_bin)
    srv.kubectl("apply", "-f", str(CRD))
    srv.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.edgefleet.io", "--timeout=10s")
    yield srv
    srv.stop()


def test_generated_crd_and_every_example_apply(project_srv):
    assert len(EXAMPLES) >= 3
    for path in EXAMPLES:
        namespace = yaml.safe_load(path.read_text())["metadata"].get("namespace", "default")
        if namespace != "default":
            project_srv.kubectl("apply", "-f", "-", input=f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n")
        project_srv.kubectl("apply", "-f", str(path))
    listing = project_srv.kubectl("get", "md", "-A").stdout
    for name in ("orientation", "vad", "text-classifier"):
        assert name in listing, listing
    # printer columns come from the generated CRD
    header = listing.splitlines()[0]
    for column in ("PHASE", "STEP", "MATCHED", "UPDATED", "READY", "FAILED", "AGE"):
        assert column in header, header
    # a rollout whose only device failed says so in `kubectl get md`, not just READY 0
    devices = {"matched": 1, "assigned": 1, "updated": 1, "ready": 0, "failed": 1, "offline": 0, "noFit": 0}
    project_srv.kubectl(
        "patch", "md", "vad", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "Progressing", "currentStep": 3, "devices": devices}}),
    )
    header, row = project_srv.kubectl("get", "md", "vad").stdout.splitlines()[:2]
    cells = dict(zip(header.split(), row.split()))
    assert cells["READY"] == "0" and cells["FAILED"] == "1", (header, row)
    # defaults from the schema are filled in by the server, as on a real cluster
    vad = project_srv.kget("md", "vad")
    assert vad["spec"]["rollout"]["steps"][0]["percent"] == 10
    assert vad["spec"]["variants"][0]["runtime"] == "tract"


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_examples_are_refused_naming_the_field(project_srv, path):
    first_line = path.read_text().splitlines()[0]
    field = first_line.split("expected error on ")[1].rstrip(")")
    result = project_srv.kubectl("apply", "-f", str(path), check=False)
    assert result.returncode != 0, f"{path.name} was accepted"
    assert field in result.stderr, f"{path.name}: expected {field} in:\n{result.stderr}"
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    assert project_srv.kubectl("get", "md", name, check=False).returncode != 0, "nothing is stored"


@pytest.mark.parametrize("path", ADMISSION_ONLY, ids=[p.stem for p in ADMISSION_ONLY])
def test_admission_only_examples_pass_the_schema(project_srv, path):
    """The API server stores them (the schema cannot refuse them); the controller then reports
    SpecValid=False and sends nothing to devices (crds/tests/manifests.rs checks the refusal)."""
    result = project_srv.kubectl("apply", "-f", str(path), check=False)
    assert result.returncode == 0, f"{path.name}: {result.stderr}"
