"""Registry credentials for oci:// artifacts (controller.registry) and the site label: the
dockerconfigjson Secret is mounted read-only as a file the controller reads, never put in the
environment, and bad values are refused by the schema."""
from __future__ import annotations

import pytest

from conftest import one
from test_render import _env


def _pod(objs: list[dict]) -> dict:
    return one(objs, "Deployment", "-controller")["spec"]["template"]["spec"]


def test_no_registry_credentials_by_default_and_the_site_label_is_site(helm):
    pod = _pod(helm.objects())
    env = _env(pod["containers"][0])
    assert "EDGEFLEET_REGISTRY_AUTH_FILE" not in env
    assert "EDGEFLEET_INSECURE_REGISTRIES" not in env
    assert env["EDGEFLEET_SITE_LABEL"] == "site"
    assert "registry-auth" not in {v["name"] for v in pod["volumes"]}


def test_a_dockerconfigjson_secret_is_mounted_as_the_auth_file(helm):
    pod = _pod(helm.objects("--set", "controller.registry.authSecret=harbor-pull",
                            "--set", "controller.registry.insecureRegistries={lab:5000,10.0.0.9:5001}",
                            "--set", "controller.siteLabel=edge.example.com/site"))
    container = pod["containers"][0]
    env = _env(container)
    assert env["EDGEFLEET_REGISTRY_AUTH_FILE"] == "/etc/edgefleet/registry/config.json"
    assert env["EDGEFLEET_INSECURE_REGISTRIES"] == "lab:5000,10.0.0.9:5001"
    assert env["EDGEFLEET_SITE_LABEL"] == "edge.example.com/site"
    mount = {m["name"]: m for m in container["volumeMounts"]}["registry-auth"]
    assert mount == {"name": "registry-auth", "mountPath": "/etc/edgefleet/registry", "readOnly": True}
    secret = {v["name"]: v for v in pod["volumes"]}["registry-auth"]["secret"]
    assert secret == {"secretName": "harbor-pull", "defaultMode": 0o440,
                      "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}


@pytest.mark.parametrize("args, path", [
    (["--set", "controller.registry.authSecret=Not_A_Name"], "/controller/registry/authSecret"),
    (["--set", "controller.registry.insecureRegistries={http://lab:5000}"],
     "/controller/registry/insecureRegistries/0"),
    (["--set-string", "controller.siteLabel="], "/controller/siteLabel"),
])
def test_bad_registry_values_are_refused(helm, args, path):
    res = helm.template_raw(*args)
    assert res.returncode != 0, f"expected helm template to fail, it rendered:\n{res.stdout[:400]}"
    assert "values don't meet the specifications of the schema" in res.stderr
    assert path in res.stderr
