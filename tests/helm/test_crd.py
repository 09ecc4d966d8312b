"""The chart's CRD template carries exactly the generated crds/modeldeployment.yaml."""
from __future__ import annotations

import yaml

from conftest import CHART, REPO, one

ROOT_CRD = REPO / "crds" / "modeldeployment.yaml"
CHART_CRD = CHART / "files" / "crds" / "modeldeployment.yaml"
FIX = "cp crds/modeldeployment.yaml charts/edgefleet/files/crds/modeldeployment.yaml"


def test_chart_copy_is_byte_identical_to_the_generated_crd():
    assert CHART_CRD.read_bytes() == ROOT_CRD.read_bytes(), \
        f"charts/edgefleet/files/crds/modeldeployment.yaml drifted from crds/modeldeployment.yaml; run\n  {FIX}"


def test_rendered_crd_equals_the_generated_crd(helm):
    rendered = one(helm.objects(), "CustomResourceDefinition")
    root = yaml.safe_load(ROOT_CRD.read_text())
    meta = rendered.pop("metadata")
    root_meta = root.pop("metadata")
    assert rendered == root, f"the chart's CRD differs from crds/modeldeployment.yaml; run\n  {FIX}"
    # Only chart labels and the keep annotation are added to metadata.
    assert meta["name"] == root_meta["name"] == "modeldeployments.edgefleet.io"
    assert set(meta) - set(root_meta) <= {"labels", "annotations"}
    assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_crd_values(helm):
    assert not [o for o in helm.objects("--set", "crds.install=false") if o["kind"] == "CustomResourceDefinition"]
    crd = one(helm.objects("--set", "crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in crd["metadata"]


def test_chart_has_no_crds_dir():
    # Helm installs crds/ once and never upgrades it; the CRD ships as a template instead.
    assert not (CHART / "crds").exists()
