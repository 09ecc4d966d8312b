"""helm lint / template for the default values and values-everything.yaml; every rendered
object validates (built-ins against the Kubernetes 1.35 schemas, custom resources against
fixture schemas) and the whole output applies with the real kubectl to the API stand-in."""
from __future__ import annotations

import json
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import CHART, EVERYTHING, FIXTURES, NAMESPACE, find, one, run

K8S_VERSION = "1.35.0"
VALUE_SETS = {"default": None, "everything": EVERYTHING}
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
# Kinds the API stand-in does not serve (tests/kube-standin/README.md); validated by schema only.
NOT_SERVED_BY_STANDIN = {"NetworkPolicy"}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_strict(helm_bin, name):
    cmd = [helm_bin, "lint", "--strict", str(CHART)]
    if VALUE_SETS[name]:
        cmd += ["-f", str(VALUE_SETS[name])]
    res = run(cmd)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in res.stdout


def test_everything_renders_every_kind(helm):
    kinds = sorted({o["kind"] for o in helm.objects(values=EVERYTHING)})
    assert kinds == sorted([
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition", "DaemonSet",
        "Deployment", "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget",
        "PrometheusRule", "Role", "RoleBinding", "Service", "ServiceAccount", "ServiceMonitor"])


def test_defaults_render_only_the_core(helm):
    kinds = sorted(o["kind"] for o in helm.objects())
    assert kinds == sorted([
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition", "Deployment",
        "Deployment", "PersistentVolumeClaim", "Role", "RoleBinding", "Service", "Service",
        "ServiceAccount"])


@pytest.mark.parametrize("name", VALUE_SETS)
def test_builtin_kinds_validate_against_kubernetes_schemas(helm, name):
    checked = 0
    for obj in helm.objects(values=VALUE_SETS[name]):
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {e.message} at {list(e.path)}")
        checked += 1
    assert checked >= 12


def _fixture_schemas() -> dict[str, dict]:
    crds = [d for d in yaml.safe_load_all((FIXTURES / "monitoring-crds.yaml").read_text()) if d]
    return {c["spec"]["names"]["kind"]: c["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for c in crds}


def _to_jsonschema(s):
    """OpenAPI v3 structural schema -> JSON schema: x-kubernetes-int-or-string, and
    additionalProperties: false wherever properties are listed (strict, like kubectl's
    fieldValidation=Strict)."""
    if isinstance(s, list):
        return [_to_jsonschema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {k: _to_jsonschema(v) for k, v in s.items() if not k.startswith("x-kubernetes")}
    if s.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if "properties" in s and "additionalProperties" not in s and s.get("type") == "object":
        out["additionalProperties"] = False
    return out


def test_custom_resources_validate_against_fixture_schemas(helm):
    schemas = _fixture_schemas()
    objs = [o for o in helm.objects(values=EVERYTHING) if o["kind"] in CUSTOM_KINDS]
    assert sorted(o["kind"] for o in objs) == ["PrometheusRule", "ServiceMonitor"]
    for obj in objs:
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        jsonschema.validate(obj, _to_jsonschema(schemas[obj["kind"]]))
    sm = one(objs, "ServiceMonitor")
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s",
                                        "scrapeTimeout": "10s"}]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def _resource_versions(standin, manifest) -> dict:
    got = json.loads(standin.kubectl("get", "-f", str(manifest), "-o", "json").stdout)
    items = got["items"] if got.get("kind") == "List" else [got]
    return {(i["kind"], i["metadata"]["name"]): i["metadata"]["resourceVersion"] for i in items}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_output_applies_to_the_api_standin(helm, standin, tmp_path, name):
    namespace = f"ef-{name}"
    objs = helm.objects(values=VALUE_SETS[name], namespace=namespace)
    served = [o for o in objs if o["kind"] not in NOT_SERVED_BY_STANDIN]
    skipped = {o["kind"] for o in objs} - {o["kind"] for o in served}
    assert skipped <= NOT_SERVED_BY_STANDIN
    standin.kubectl("create", "namespace", namespace)
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump_all(served))
    res = standin.kubectl("apply", "-f", str(manifest))
    for obj in served:
        assert f"{obj['kind'].lower()}" in res.stdout.lower()
    # Re-applying the same output changes nothing: no object gets a new resourceVersion.
    # (kubectl may still print "configured" for a kind whose strategic-merge metadata it cannot
    # get from the stand-in's OpenAPI, e.g. PodDisruptionBudget: it sends a no-op patch.)
    before = _resource_versions(standin, manifest)
    standin.kubectl("apply", "-f", str(manifest))
    assert _resource_versions(standin, manifest) == before
    # The objects are there.
    for obj in served:
        res = standin.kubectl("get", "-f", "-", "-o", "name", input=yaml.safe_dump(obj))
        assert obj["metadata"]["name"] in res.stdout


def test_chart_crd_serves_the_examples(helm, standin, tmp_path):
    """The CRD the chart installs admits every crds/examples manifest (applied with kubectl)."""
    crd = one(helm.objects(), "CustomResourceDefinition")
    f = tmp_path / "crd.yaml"
    f.write_text(yaml.safe_dump(crd))
    standin.kubectl("apply", "-f", str(f))
    standin.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/modeldeployments.edgefleet.io")
    examples = sorted((CHART.parent.parent / "crds" / "examples").glob("*.yaml"))
    assert examples
    for ex in examples:
        doc = yaml.safe_load(ex.read_text())
        ns = doc["metadata"].get("namespace", "examples")
        standin.kubectl("create", "namespace", ns, check=False)
        standin.kubectl("apply", "-n", ns, "-f", str(ex))
        standin.kubectl("get", "modeldeployment", "-n", ns, doc["metadata"]["name"])


def test_helm_install_upgrade_uninstall_keeps_the_crd(helm_bin, standin, tmp_path):
    """Real helm against the stand-in: the CRD is a template, so upgrade re-applies it, and
    helm.sh/resource-policy: keep leaves it (and its objects) in place on uninstall."""
    env = ["--kubeconfig", str(standin.kubeconfig)]
    standin.kubectl("create", "namespace", "helmtest", check=False)
    # A CRD of the same name left by another test would be adopted only with Helm's labels.
    standin.kubectl("delete", "crd", "modeldeployments.edgefleet.io", "--ignore-not-found", "--wait=false")
    for verb in ("install", "upgrade"):
        res = run([helm_bin, verb, "ef", str(CHART), "-n", "helmtest", *env,
                   "--set", f"controller.log.level={verb}"])
        assert res.returncode == 0, res.stdout + res.stderr
        assert "Next steps" in res.stdout  # NOTES.txt
    crd = json.loads(standin.kubectl("get", "crd", "modeldeployments.edgefleet.io", "-o", "json").stdout)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "ef"
    res = run([helm_bin, "uninstall", "ef", "-n", "helmtest", *env])
    assert res.returncode == 0, res.stdout + res.stderr
    standin.kubectl("get", "crd", "modeldeployments.edgefleet.io")
    gone = standin.kubectl("get", "deployment", "-n", "helmtest", "-o", "name").stdout.strip()
    assert gone == ""


def test_controller_pod_is_hardened(helm):
    for values in VALUE_SETS.values():
        objs = helm.objects(values=values)
        dep = one(objs, "Deployment", "-controller")
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (c,) = pod["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert c["command"] == ["/usr/local/bin/edgefleet", "run"]
        assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
        svc = one(objs, "Service", "-controller")
        assert svc["spec"]["ports"][0]["name"] == "http"
        for other in find(objs, "Deployment", "-mosquitto") + find(objs, "DaemonSet"):
            spec = other["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for c in spec["containers"]:
                assert c["securityContext"]["readOnlyRootFilesystem"] is True
                assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
                assert c["resources"]["limits"]


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_controller_env_defaults(helm):
    dep = one(helm.objects(), "Deployment", "-controller")
    env = _env(dep["spec"]["template"]["spec"]["containers"][0])
    assert env == {
        "EDGEFLEET_DATABASE_URL": "sqlite:///var/lib/edgefleet/fleet.db",
        "EDGEFLEET_BROKER": "mqtt://t-edgefleet-mosquitto.edgefleet.svc:1883",
        "EDGEFLEET_LISTEN": "0.0.0.0:8080",
        "EDGEFLEET_MQTT_CLIENT_ID": {"fieldRef": {"fieldPath": "metadata.name"}},
        "EDGEFLEET_LEASE_NAME": "edgefleet-controller",
        "EDGEFLEET_LEASE_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "EDGEFLEET_IDENTITY": {"fieldRef": {"fieldPath": "metadata.name"}},
        "EDGEFLEET_WATCH_NAMESPACE": "",
        "EDGEFLEET_SITE_LABEL": "site",
        "EDGEFLEET_TELEMETRY_SHARE_GROUP": "edgefleet-controllers",
            "EDGEFLEET_LOG_FORMAT": "json",
        "RUST_LOG": "info",
    }
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["data"]["persistentVolumeClaim"]["claimName"] == "t-edgefleet-controller-data"


def test_controller_env_postgres_ha_external_broker(helm):
    objs = helm.objects("--set", "controller.replicas=2", "--set", "database.type=postgres",
                        "--set", "database.postgres.secretName=pg", "--set", "database.postgres.secretKey=dsn",
                        "--set", "mqtt.mode=external", "--set", "mqtt.external.url=mqtt://broker.example:1883",
                        "--set", "controller.watchNamespace=team-a")
    dep = one(objs, "Deployment", "-controller")
    assert dep["spec"]["replicas"] == 2
    env = _env(dep["spec"]["template"]["spec"]["containers"][0])
    assert env["EDGEFLEET_DATABASE_URL"] == {"secretKeyRef": {"name": "pg", "key": "dsn"}}
    assert env["EDGEFLEET_BROKER"] == "mqtt://broker.example:1883"
    assert env["EDGEFLEET_WATCH_NAMESPACE"] == "team-a"
    assert env["EDGEFLEET_TELEMETRY_SHARE_GROUP"] == "edgefleet-controllers"
    assert not find(objs, "PersistentVolumeClaim")
    assert not find(objs, "Deployment", "-mosquitto") and not find(objs, "ConfigMap", "-mosquitto")
    assert one(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_agent_daemonset(helm):
    ds = one(helm.objects(values=EVERYTHING), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = _env(c)
    assert env["EDGEFLEET_AGENT_DEVICE_ID"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["EDGEFLEET_AGENT_BROKER"] == "mqtts://t-edgefleet-mosquitto.edgefleet.svc:8883"
    assert env["EDGEFLEET_AGENT_STORE"] == "/var/lib/edgefleet-agent"
    assert env["EDGEFLEET_AGENT_LISTEN"] == "127.0.0.1:8081"
    assert env["EDGEFLEET_AGENT_LABELS"] == "camera=true,class=rpi4,site=plant-7"
    assert env["EDGEFLEET_AGENT_TLS_CERT_FILE"] == "/etc/edgefleet-agent/tls/tls.crt"
    assert pod["nodeSelector"] == {"edgefleet.io/edge": "true"}
    assert pod["tolerations"][0]["key"] == "edgefleet.io/edge"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["store"]["hostPath"] == {"path": "/var/lib/edgefleet-agent", "type": "DirectoryOrCreate"}
    assert pod["automountServiceAccountToken"] is False
    assert not find(helm.objects(), "DaemonSet"), "the agent is off by default"
