"""Tests for the Kubernetes API stand-in, driven by the REAL kubectl plus raw HTTP.

kubectl comes from tests/tools/install-k8s-tools.sh (idempotent; cached). If it
cannot be installed the tests ERROR: nothing is skipped.
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FIXTURES = HERE / "fixtures"
CRD = FIXTURES / "crd-modeldeployment.yaml"
MD_BASE = "/apis/edgefleet.io/v1alpha1/namespaces/default/modeldeployments"


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def kubectl_bin() -> str:
    out = subprocess.run(["bash", str(REPO / "tests/tools/install-k8s-tools.sh")], capture_output=True, text=True)
    assert out.returncode == 0, f"install-k8s-tools.sh failed:\n{out.stderr}"
    path = Path(out.stdout.strip().splitlines()[-1]) / "kubectl"
    assert path.is_file() and os.access(path, os.X_OK), f"kubectl not installed at {path}"
    ver = subprocess.run([str(path), "version", "--client", "-o", "json"], capture_output=True, text=True)
    assert json.loads(ver.stdout)["clientVersion"]["minor"] == "35", ver.stdout
    return str(path)


class Server:
    def __init__(self, tmp: Path, kubectl: str, *extra: str):
        self.tmp, self.kubectl_bin = tmp, kubectl
        self.port_file, self.kubeconfig = tmp / "port", tmp / "kubeconfig"
        self.log_file = tmp / "requests.jsonl"
        self.stderr = open(tmp / "server.stderr", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "standin.py"), "--port", "0", "--port-file", str(self.port_file),
             "--kubeconfig", str(self.kubeconfig), "--log-requests", str(self.log_file), *extra],
            stdout=self.stderr, stderr=self.stderr)
        deadline = time.time() + 15
        while not self.port_file.exists():
            assert self.proc.poll() is None, (tmp / "server.stderr").read_text()
            assert time.time() < deadline, "stand-in did not start"
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.stderr.close()

    # ---- kubectl
    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "KUBECACHEDIR": str(self.tmp / "kcache"),
               "HOME": str(self.tmp)}
        res = subprocess.run([self.kubectl_bin, *args], input=input, capture_output=True, text=True, env=env,
                             timeout=60)
        if check:
            assert res.returncode == 0, f"kubectl {' '.join(args)} failed ({res.returncode}):\n{res.stderr}"
        return res

    def kget(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    # ---- raw HTTP
    def api(self, method: str, path: str, body=None, ctype: str = "application/json",
            headers: dict | None = None) -> tuple[int, dict | None, dict]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": ctype, "Accept": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw, code, hdrs = r.read(), r.status, dict(r.headers)
        except urllib.error.HTTPError as e:
            raw, code, hdrs = e.read(), e.code, dict(e.headers)
        return code, (json.loads(raw) if raw and raw[:1] in b"{[" else None), hdrs

    def watch(self, path: str, max_events: int = 100, timeout: float = 5.0) -> list[dict]:
        """Read watch events until the server ends the stream, max_events, or timeout."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        events = []
        try:
            while len(events) < max_events:
                line = resp.readline()
                if not line:
                    break
                events.append(json.loads(line))
        except TimeoutError:
            pass
        finally:
            conn.close()
        return events

    def requests_log(self) -> list[dict]:
        return [json.loads(line) for line in self.log_file.read_text().splitlines()]


@pytest.fixture
def srv(tmp_path, kubectl_bin):
    s = Server(tmp_path, kubectl_bin, "--bookmark-interval", "0.5")
    yield s
    s.stop()


@pytest.fixture
def crd_srv(srv):
    srv.kubectl("apply", "-f", str(CRD))
    return srv


def md(name: str, **spec) -> str:
    doc = {"apiVersion": "edgefleet.io/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": name, "labels": spec.pop("labels", {"app": "vision"})},
           "spec": {"model": "resnet50:v1.2", **spec}}
    return yaml.safe_dump(doc)


# ----------------------------------------------------------------------------- discovery

def test_discovery_version_and_openapi(srv):
    out = srv.kubectl("version", "-o", "json").stdout
    assert json.loads(out)["serverVersion"]["minor"] == "35"
    res = srv.kubectl("api-resources", "-o", "name").stdout.split()
    for r in ["configmaps", "secrets", "serviceaccounts", "services", "events", "persistentvolumeclaims", "pods",
              "namespaces", "deployments.apps", "daemonsets.apps", "statefulsets.apps",
              "leases.coordination.k8s.io", "events.events.k8s.io", "roles.rbac.authorization.k8s.io",
              "rolebindings.rbac.authorization.k8s.io", "clusterroles.rbac.authorization.k8s.io",
              "clusterrolebindings.rbac.authorization.k8s.io", "poddisruptionbudgets.policy",
              "customresourcedefinitions.apiextensions.k8s.io"]:
        assert r in res, r
    code, body, _ = srv.api("GET", "/apis/apps/v1")
    assert code == 200 and body["kind"] == "APIResourceList"
    assert {"deployments", "deployments/status"} <= {r["name"] for r in body["resources"]}
    code, body, hdrs = srv.api("GET", "/apis", headers={
        "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"})
    assert code == 200 and body["kind"] == "APIGroupDiscoveryList"
    assert "as=APIGroupDiscoveryList" in hdrs["Content-Type"]
    code, body, _ = srv.api("GET", "/api")
    assert body["kind"] == "APIVersions" and body["versions"] == ["v1"]
    code, body, _ = srv.api("GET", "/openapi/v2")
    assert code == 200 and body["swagger"] == "2.0"
    code, body, _ = srv.api("GET", "/openapi/v3")
    assert "apis/apps/v1" in body["paths"]
    code, body, _ = srv.api("GET", body["paths"]["apis/apps/v1"]["serverRelativeURL"])
    assert code == 200 and body["openapi"].startswith("3.")
    code, body, _ = srv.api("GET", "/apis/nope.example/v1")
    assert code == 404 and body["kind"] == "Status" and body["reason"] == "NotFound"
    ns = srv.kubectl("get", "ns", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system"} <= set(ns)


# ----------------------------------------------------------------------------- CRDs via kubectl

def test_crd_apply_registers_type_and_printer_columns(crd_srv):
    srv = crd_srv
    assert "modeldeployments.edgefleet.io" in srv.kubectl("get", "crd").stdout
    crd = srv.kget("crd", "modeldeployments.edgefleet.io")
    conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conds == {"Established": "True", "NamesAccepted": "True"}
    assert crd["status"]["acceptedNames"]["shortNames"] == ["mdep"]
    srv.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.edgefleet.io", "--timeout=10s")
    resources = srv.kubectl("api-resources", "--api-group=edgefleet.io").stdout
    assert "modeldeployments" in resources and "mdep" in resources

    srv.kubectl("apply", "-f", "-", input=md("resnet", replicas=3, strategy="BlueGreen"))
    out = srv.kubectl("get", "mdep").stdout.splitlines()
    assert out[0].split() == ["NAME", "MODEL", "STRATEGY", "REPLICAS", "PHASE", "AGE"]
    assert out[1].split()[:4] == ["resnet", "resnet50:v1.2", "BlueGreen", "3"]
    wide = srv.kubectl("get", "mdep", "-o", "wide").stdout.splitlines()[0].split()
    assert "READY" in wide  # priority-1 column only with -o wide
    obj = srv.kget("mdep", "resnet")
    assert obj["metadata"]["generation"] == 1
    rv1 = int(obj["metadata"]["resourceVersion"])

    # second apply: kubectl computes a JSON merge patch for custom resources
    srv.kubectl("apply", "-f", "-", input=md("resnet", replicas=4, strategy="BlueGreen"))
    obj = srv.kget("mdep", "resnet")
    assert obj["spec"]["replicas"] == 4
    assert obj["metadata"]["generation"] == 2
    assert int(obj["metadata"]["resourceVersion"]) > rv1
    patches = [r for r in srv.requests_log() if r["verb"] == "patch" and r["resource"] == "modeldeployments"]
    assert patches and patches[-1]["contentType"].startswith("application/merge-patch+json")
    assert patches[-1]["query"].get("fieldValidation") == "Strict"

    # identical re-apply is a no-op: no generation or resourceVersion bump
    before = srv.kget("mdep", "resnet")["metadata"]
    srv.kubectl("apply", "-f", "-", input=md("resnet", replicas=4, strategy="BlueGreen"))
    after = srv.kget("mdep", "resnet")["metadata"]
    assert (after["generation"], after["resourceVersion"]) == (before["generation"], before["resourceVersion"])


def test_schema_defaults_and_invalid_cr_rejected(crd_srv):
    srv = crd_srv
    srv.kubectl("apply", "-f", "-", input=md("defaults"))
    spec = srv.kget("mdep", "defaults")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == "Canary"  # schema defaults applied

    bad = srv.kubectl("apply", "-f", str(FIXTURES / "md-invalid.yaml"), check=False)
    assert bad.returncode != 0
    assert "spec.rollout.steps[0].percent: Invalid value: 150" in bad.stderr
    assert "should be less than or equal to 100" in bad.stderr
    assert "spec.model: Invalid value: \"Not A Model\"" in bad.stderr and "should match" in bad.stderr
    assert "spec.replicas: Invalid value: 300" in bad.stderr
    assert srv.kubectl("get", "mdep", "broken", check=False).returncode != 0

    cases = [
        ({"strategy": "Sideways"}, 'spec.strategy: Unsupported value: "Sideways"'),
        ({"replicas": "three"}, "spec.replicas in body must be of type integer"),
        ({"rollout": {"steps": [{"percent": 10}] * 6}}, "spec.rollout.steps: Too many: 6: must have at most 5"),
        ({"rollout": {"steps": [{"pauseSeconds": 3}]}}, "spec.rollout.steps[0].percent: Required value"),
        ({"nodeSelector": {"zone": 5}}, "spec.nodeSelector[zone] in body must be of type string"),
        ({"maxUnavailable": True}, "spec.maxUnavailable in body must be of type integer,string"),
    ]
    for spec, needle in cases:
        res = srv.kubectl("apply", "-f", "-", input=md("bad", **spec), check=False)
        assert res.returncode != 0 and needle in res.stderr, (spec, res.stderr)
    for ok in ({"maxUnavailable": "25%"}, {"maxUnavailable": 2}, {"rollout": {"steps": [{"percent": 5,
                                                                                          "pauseSeconds": None}]}}):
        srv.kubectl("apply", "-f", "-", input=md("ok", **ok))

    # raw API: 422 Status with causes naming the field
    body = yaml.safe_load(md("rawbad", replicas=101))
    code, st, _ = srv.api("POST", MD_BASE, body)
    assert code == 422 and st["kind"] == "Status" and st["reason"] == "Invalid"
    assert st["message"].startswith('ModelDeployment.edgefleet.io "rawbad" is invalid: spec.replicas')
    assert st["details"]["causes"][0]["field"] == "spec.replicas"


def test_unknown_fields_strict_vs_pruned(crd_srv):
    srv = crd_srv
    doc = yaml.safe_load(md("unk"))
    doc["spec"]["bogus"] = 1
    doc["spec"]["extra"] = {"free": {"form": [1, 2]}}  # preserve-unknown-fields subtree
    text = yaml.safe_dump(doc)
    res = srv.kubectl("apply", "-f", "-", input=text, check=False)
    assert res.returncode != 0 and 'unknown field "spec.bogus"' in res.stderr
    srv.kubectl("apply", "--validate=false", "-f", "-", input=text)
    spec = srv.kget("mdep", "unk")["spec"]
    assert "bogus" not in spec and spec["extra"] == {"free": {"form": [1, 2]}}
    code, _, hdrs = srv.api("POST", MD_BASE + "?fieldValidation=Warn",
                            {**doc, "metadata": {"name": "unk2"}})
    assert code == 201 and "spec.bogus" in hdrs.get("Warning", "")


def test_get_yaml_label_patch_and_delete(crd_srv):
    srv = crd_srv
    srv.kubectl("apply", "-f", "-", input=md("p1", replicas=2))
    y = yaml.safe_load(srv.kubectl("get", "mdep", "p1", "-o", "yaml").stdout)
    assert y["kind"] == "ModelDeployment" and y["apiVersion"] == "edgefleet.io/v1alpha1"
    assert y["metadata"]["namespace"] == "default" and y["metadata"]["uid"]
    assert y["metadata"]["creationTimestamp"].endswith("Z")

    srv.kubectl("label", "mdep", "p1", "env=prod")
    assert srv.kget("mdep", "p1")["metadata"]["labels"] == {"app": "vision", "env": "prod"}
    srv.kubectl("patch", "mdep", "p1", "--type=json", "-p",
                '[{"op":"replace","path":"/spec/replicas","value":7},{"op":"add","path":"/spec/strategy",'
                '"value":"Recreate"}]')
    srv.kubectl("patch", "mdep", "p1", "--type=merge", "-p", '{"spec":{"nodeSelector":{"zone":"eu"}}}')
    obj = srv.kget("mdep", "p1")
    assert obj["spec"]["replicas"] == 7 and obj["spec"]["strategy"] == "Recreate"
    assert obj["spec"]["nodeSelector"] == {"zone": "eu"} and obj["metadata"]["generation"] == 3
    bad = srv.kubectl("patch", "mdep", "p1", "--type=merge", "-p", '{"spec":{"replicas":1000}}', check=False)
    assert bad.returncode != 0 and "spec.replicas" in bad.stderr
    # strategic merge patch is not supported for custom resources (415 like the real server)
    smp = srv.kubectl("patch", "mdep", "p1", "-p", '{"spec":{"replicas":1}}', check=False)
    assert smp.returncode != 0 and "unknown format" in smp.stderr
    code, st, _ = srv.api("PATCH", MD_BASE + "/p1", {"spec": {}}, ctype="application/strategic-merge-patch+json")
    assert code == 415 and st["reason"] == "UnsupportedMediaType"
    code, st, _ = srv.api("PATCH", MD_BASE + "/p1", [{"op": "test", "path": "/spec/replicas", "value": 1}],
                          ctype="application/json-patch+json")
    assert code == 422

    srv.kubectl("delete", "mdep", "p1")  # waits for deletion via list+watch
    res = srv.kubectl("get", "mdep", "p1", check=False)
    assert res.returncode != 0 and 'modeldeployments.edgefleet.io "p1" not found' in res.stderr
    code, st, _ = srv.api("GET", MD_BASE + "/p1")
    assert code == 404 and st == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": 'modeldeployments.edgefleet.io "p1" not found', "reason": "NotFound",
                                  "details": {"name": "p1", "group": "edgefleet.io", "kind": "modeldeployments"},
                                  "code": 404}


def test_server_side_apply(crd_srv):
    srv = crd_srv
    doc = yaml.safe_load(md("ssa", replicas=2, strategy="BlueGreen"))
    out = srv.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(doc))
    assert "serverside-applied" in out.stdout
    assert srv.kget("mdep", "ssa")["spec"]["replicas"] == 2
    del doc["spec"]["replicas"]  # field dropped from the applied config -> removed (then schema default 1)
    doc["spec"]["nodeSelector"] = {"zone": "eu"}
    srv.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(doc))
    obj = srv.kget("mdep", "ssa")
    assert obj["spec"]["replicas"] == 1 and obj["spec"]["nodeSelector"] == {"zone": "eu"}
    assert obj["metadata"]["generation"] == 2
    srv.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=other", "-f", "-",
                input=yaml.safe_dump(doc))
    # raw apply without fieldManager is rejected, with it creates (201)
    body = yaml.safe_load(md("ssa2"))
    code, _, _ = srv.api("PATCH", MD_BASE + "/ssa2", body, ctype="application/apply-patch+yaml")
    assert code == 400
    code, obj, _ = srv.api("PATCH", MD_BASE + "/ssa2?fieldManager=test&force=true", body,
                           ctype="application/apply-patch+yaml")
    assert code == 201 and obj["metadata"]["name"] == "ssa2"
    bad = srv.kubectl("apply", "--server-side", "-f", str(FIXTURES / "md-invalid.yaml"), check=False)
    assert bad.returncode != 0 and "spec.rollout.steps[0].percent" in bad.stderr


def test_label_selectors(crd_srv):
    srv = crd_srv
    for name, labels in [("a", {"env": "prod", "tier": "edge"}), ("b", {"env": "dev"}), ("c", {"tier": "core"})]:
        srv.kubectl("apply", "-f", "-", input=md(name, labels=labels))

    def names(*sel):
        return sorted(n.split("/")[-1] for n in srv.kubectl("get", "mdep", *sel, "-o", "name").stdout.split())

    assert names("-l", "env=prod") == ["a"]
    assert names("-l", "env==dev") == ["b"]
    assert names("-l", "env!=prod") == ["b", "c"]
    assert names("-l", "env in (prod,dev)") == ["a", "b"]
    assert names("-l", "env notin (prod)") == ["b", "c"]
    assert names("-l", "tier") == ["a", "c"]
    assert names("-l", "!tier") == ["b"]
    assert names("-l", "env=prod,tier=edge") == ["a"]
    assert names("--field-selector", "metadata.name=c") == ["c"]
    assert names("--field-selector", "metadata.name!=c") == ["a", "b"]
    code, lst, _ = srv.api("GET", "/apis/edgefleet.io/v1alpha1/modeldeployments?labelSelector=tier%2Cenv%3Dprod")
    assert code == 200 and lst["kind"] == "ModelDeploymentList" and [i["metadata"]["name"] for i in lst["items"]] == ["a"]
    assert int(lst["metadata"]["resourceVersion"]) > 0
    code, lst, _ = srv.api("GET", MD_BASE + "?limit=2")
    assert len(lst["items"]) == 2 and lst["metadata"]["continue"] and lst["metadata"]["remainingItemCount"] == 1
    code, lst2, _ = srv.api("GET", MD_BASE + "?limit=2&continue=" + lst["metadata"]["continue"])
    assert [i["metadata"]["name"] for i in lst2["items"]] == ["c"] and "continue" not in lst2["metadata"]
    code, st, _ = srv.api("GET", MD_BASE + "?fieldSelector=spec.model%3Dx")
    assert code == 400


def test_status_subresource(crd_srv):
    srv = crd_srv
    srv.kubectl("apply", "-f", "-", input=md("st", replicas=2))
    obj = srv.kget("mdep", "st")
    assert "status" not in obj
    code, obj2, _ = srv.api("PATCH", MD_BASE + "/st/status",
                            {"status": {"phase": "Ready", "observedGeneration": 1}, "spec": {"replicas": 9}},
                            ctype="application/merge-patch+json")
    assert code == 200
    assert obj2["status"] == {"phase": "Ready", "observedGeneration": 1}
    assert obj2["spec"]["replicas"] == 2  # spec changes via /status are ignored
    assert obj2["metadata"]["generation"] == 1  # status writes never bump generation
    assert int(obj2["metadata"]["resourceVersion"]) > int(obj["metadata"]["resourceVersion"])
    out = srv.kubectl("get", "mdep", "st").stdout
    assert "Ready" in out.splitlines()[1]
    # PUT /status
    obj2["status"]["phase"] = "Rolling"
    code, obj3, _ = srv.api("PUT", MD_BASE + "/st/status", obj2)
    assert code == 200 and obj3["status"]["phase"] == "Rolling" and obj3["metadata"]["generation"] == 1
    code, got, _ = srv.api("GET", MD_BASE + "/st/status")
    assert code == 200 and got["status"]["phase"] == "Rolling"
    # status is validated against the schema too
    code, st, _ = srv.api("PATCH", MD_BASE + "/st/status", {"status": {"phase": "Bogus"}},
                          ctype="application/merge-patch+json")
    assert code == 422 and "status.phase" in st["message"]
    # main-resource writes ignore status; spec change bumps generation
    obj3["status"]["phase"] = "Failed"
    obj3["spec"]["replicas"] = 5
    code, obj4, _ = srv.api("PUT", MD_BASE + "/st", obj3)
    assert code == 200 and obj4["status"]["phase"] == "Rolling" and obj4["metadata"]["generation"] == 2
    # status given on create is dropped when the status subresource is enabled
    body = yaml.safe_load(md("st2"))
    body["status"] = {"phase": "Ready"}
    code, created, _ = srv.api("POST", MD_BASE, body)
    assert code == 201 and "status" not in created
    # kube-rs style: patch_status with server-side apply
    code, obj5, _ = srv.api("PATCH", MD_BASE + "/st2/status?fieldManager=ctrl&force=true",
                            {"apiVersion": "edgefleet.io/v1alpha1", "kind": "ModelDeployment",
                             "status": {"phase": "Pending"}}, ctype="application/apply-patch+yaml")
    assert code == 200 and obj5["status"] == {"phase": "Pending"} and obj5["metadata"]["generation"] == 1


def test_finalizer_flow(crd_srv):
    srv = crd_srv
    srv.kubectl("apply", "-f", "-", input=md("fin"))
    srv.kubectl("patch", "mdep", "fin", "--type=merge", "-p", '{"metadata":{"finalizers":["edgefleet.io/x"]}}')
    rv = srv.kget("mdep", "fin")["metadata"]["resourceVersion"]
    srv.kubectl("delete", "mdep", "fin", "--wait=false")
    obj = srv.kget("mdep", "fin")
    assert obj["metadata"]["deletionTimestamp"] and obj["metadata"]["finalizers"] == ["edgefleet.io/x"]
    # no new finalizers while terminating
    res = srv.kubectl("patch", "mdep", "fin", "--type=json", "-p",
                      '[{"op":"add","path":"/metadata/finalizers/-","value":"late"}]', check=False)
    assert res.returncode != 0 and "no new finalizers" in res.stderr
    # deleting again is fine and keeps the object
    srv.kubectl("delete", "mdep", "fin", "--wait=false")
    srv.kubectl("patch", "mdep", "fin", "--type=json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
    assert srv.kubectl("get", "mdep", "fin", check=False).returncode != 0
    events = srv.watch(MD_BASE + f"?watch=true&resourceVersion={rv}&timeoutSeconds=1")
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]
    assert events[0]["object"]["metadata"]["deletionTimestamp"]
    assert events[1]["object"]["metadata"]["name"] == "fin"


def test_watch_resume_and_gone(crd_srv):
    srv = crd_srv
    srv.kubectl("apply", "-f", "-", input=md("w1"))
    lst = srv.api("GET", MD_BASE)[1]
    rv = lst["metadata"]["resourceVersion"]
    srv.kubectl("apply", "-f", "-", input=md("w2"))
    srv.kubectl("label", "mdep", "w1", "x=y")
    srv.kubectl("delete", "mdep", "w2")
    events = srv.watch(MD_BASE + f"?watch=1&resourceVersion={rv}&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "w2"), ("MODIFIED", "w1"), ("DELETED", "w2")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    # resume from the middle
    events2 = srv.watch(MD_BASE + f"?watch=true&resourceVersion={rvs[0]}&timeoutSeconds=1")
    assert [e["type"] for e in events2] == ["MODIFIED", "DELETED"]
    # label selector on watch: leaving the selection is reported as DELETED
    events3 = srv.watch(MD_BASE + f"?watch=true&resourceVersion={rv}&labelSelector=x%3Dy&timeoutSeconds=1")
    assert [e["type"] for e in events3] == ["ADDED"]
    # rv "" / "0": synthetic ADDED for current objects
    events4 = srv.watch(MD_BASE + "?watch=true&resourceVersion=0&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events4] == [("ADDED", "w1")]
    # history compacted -> 410 Gone as an ERROR event
    code, _, _ = srv.api("POST", "/__standin/compact")
    assert code == 200
    gone = srv.watch(MD_BASE + f"?watch=true&resourceVersion={rv}&timeoutSeconds=5")
    assert len(gone) == 1 and gone[0]["type"] == "ERROR"
    st = gone[0]["object"]
    assert (st["kind"], st["code"], st["reason"]) == ("Status", 410, "Expired")


def test_watch_history_bound(tmp_path, kubectl_bin):
    s = Server(tmp_path, kubectl_bin, "--history", "3")
    try:
        base = "/api/v1/namespaces/default/configmaps"
        rv0 = s.api("GET", base)[1]["metadata"]["resourceVersion"]
        for i in range(5):
            assert s.api("POST", base, {"metadata": {"name": f"cm{i}"}})[0] == 201
        gone = s.watch(base + f"?watch=true&resourceVersion={rv0}&timeoutSeconds=2")
        assert gone[0]["type"] == "ERROR" and gone[0]["object"]["code"] == 410
        recent = s.api("GET", base + "/cm1")[1]["metadata"]["resourceVersion"]
        ok = s.watch(base + f"?watch=true&resourceVersion={recent}&timeoutSeconds=1")
        assert [e["object"]["metadata"]["name"] for e in ok] == ["cm2", "cm3", "cm4"]
    finally:
        s.stop()


def test_watch_streaming_list_bookmarks_and_timeout(crd_srv):
    srv = crd_srv
    for n in ("s1", "s2"):
        srv.kubectl("apply", "-f", "-", input=md(n))
    t0 = time.time()
    events = srv.watch(MD_BASE + "?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
                                 "&allowWatchBookmarks=true&timeoutSeconds=2", timeout=10)
    assert time.time() - t0 < 5  # timeoutSeconds ended the stream
    assert [e["type"] for e in events[:3]] == ["ADDED", "ADDED", "BOOKMARK"]
    bm = events[2]["object"]
    assert bm["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert bm["kind"] == "ModelDeployment" and int(bm["metadata"]["resourceVersion"]) > 0
    assert any(e["type"] == "BOOKMARK" and "annotations" not in e["object"]["metadata"] for e in events[3:]), \
        "periodic bookmarks expected (bookmark interval 0.5s)"
    code, st, _ = srv.api("GET", MD_BASE + "?watch=true&sendInitialEvents=true")
    assert code == 422
    # a live event arrives on an open watch
    import threading
    got: list = []
    rv = srv.api("GET", MD_BASE)[1]["metadata"]["resourceVersion"]
    th = threading.Thread(target=lambda: got.extend(srv.watch(
        MD_BASE + f"?watch=true&resourceVersion={rv}", max_events=1, timeout=10)))
    th.start()
    time.sleep(0.5)
    srv.kubectl("label", "mdep", "s1", "live=yes")
    th.join(10)
    assert got and got[0]["type"] == "MODIFIED" and got[0]["object"]["metadata"]["labels"]["live"] == "yes"


def test_put_conflict_and_create_errors(crd_srv):
    srv = crd_srv
    body = yaml.safe_load(md("c1"))
    code, created, _ = srv.api("POST", MD_BASE, body)
    assert code == 201 and created["metadata"]["resourceVersion"] and created["metadata"]["generation"] == 1
    code, st, _ = srv.api("POST", MD_BASE, body)
    assert code == 409 and st["reason"] == "AlreadyExists"
    stale = json.loads(json.dumps(created))
    created["spec"]["replicas"] = 5
    code, updated, _ = srv.api("PUT", MD_BASE + "/c1", created)
    assert code == 200 and updated["metadata"]["generation"] == 2
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    stale["spec"] = {"model": "a:b", "replicas": 6}
    code, st, _ = srv.api("PUT", MD_BASE + "/c1", stale)
    assert code == 409 and st["reason"] == "Conflict" and "the object has been modified" in st["message"]
    # PUT without resourceVersion is an unconditional update
    del stale["metadata"]["resourceVersion"]
    assert srv.api("PUT", MD_BASE + "/c1", stale)[0] == 200
    # merge patch carrying a stale resourceVersion is a precondition failure too
    code, st, _ = srv.api("PATCH", MD_BASE + "/c1", {"metadata": {"resourceVersion": "1"}},
                          ctype="application/merge-patch+json")
    assert code == 409
    code, st, _ = srv.api("PUT", MD_BASE + "/missing", {**body, "metadata": {"name": "missing"}})
    assert code == 404
    code, gen, _ = srv.api("POST", MD_BASE, {**body, "metadata": {"generateName": "auto-"}})
    assert code == 201 and gen["metadata"]["name"].startswith("auto-") and len(gen["metadata"]["name"]) == 10
    code, st, _ = srv.api("POST", "/apis/edgefleet.io/v1alpha1/namespaces/nope/modeldeployments", body)
    assert code == 404 and st["message"] == 'namespaces "nope" not found'
    code, st, _ = srv.api("POST", MD_BASE, {**body, "metadata": {"name": "Bad_Name"}})
    assert code == 422 and "metadata.name" in st["message"]


def test_builtin_apply_and_reapply(srv):
    srv.kubectl("apply", "-f", str(FIXTURES / "builtins.yaml"))
    assert srv.kget("cm", "agent-config")["data"] == {"level": "info", "region": "eu-1"}
    dep = srv.kget("deploy", "agent")
    assert dep["metadata"]["generation"] == 1 and dep["apiVersion"] == "apps/v1"
    text = (FIXTURES / "builtins.yaml").read_text()
    changed = (text.replace("level: info", "level: debug").replace("agent:1.0", "agent:1.1")
               .replace("verbs: [get, list, watch]", "verbs: [get, list]"))
    assert changed != text
    out = srv.kubectl("apply", "-f", "-", input=changed).stdout
    assert "deployment.apps/agent configured" in out and "configmap/agent-config configured" in out
    assert srv.kget("cm", "agent-config")["data"] == {"level": "debug", "region": "eu-1"}
    dep = srv.kget("deploy", "agent")
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["agent", "sidecar"]
    assert containers[0]["image"] == "registry.example/agent:1.1"
    assert containers[0]["ports"] == [{"containerPort": 8080}] and containers[0]["env"][0]["name"] == "LEVEL"
    assert dep["metadata"]["generation"] == 2
    assert srv.kget("role", "agent")["rules"][0]["verbs"] == ["get", "list"]
    smp = [r for r in srv.requests_log() if r["verb"] == "patch" and r["resource"] == "deployments"]
    assert smp and smp[-1]["contentType"].startswith("application/strategic-merge-patch+json")
    # status of built-ins with a status subresource is only writable via /status
    code, d2, _ = srv.api("PATCH", "/apis/apps/v1/namespaces/default/deployments/agent/status",
                          {"status": {"readyReplicas": 2, "replicas": 2}}, ctype="application/merge-patch+json")
    assert code == 200 and d2["metadata"]["generation"] == 2
    assert srv.kubectl("get", "deploy", "agent").stdout.splitlines()[1].split()[1] == "2/2"
    srv.kubectl("apply", "--server-side", "-f", "-", input=changed.replace("eu-1", "eu-2"))
    assert srv.kget("cm", "agent-config")["data"]["region"] == "eu-2"
    srv.kubectl("delete", "-f", "-", input=changed)
    assert srv.kubectl("get", "deploy,cm,role", "-o", "name").stdout.strip() == ""


def test_namespaces_leases_and_gc(srv):
    srv.kubectl("apply", "-f", "-", input="apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n")
    assert srv.kget("ns", "team-a")["status"]["phase"] == "Active"
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "edgefleet-leader", "namespace": "team-a"},
             "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15,
                      "renewTime": "2026-01-01T00:00:00.000000Z"}}
    base = "/apis/coordination.k8s.io/v1/namespaces/team-a/leases"
    code, l1, _ = srv.api("POST", base, lease)
    assert code == 201
    # two candidates race with the same resourceVersion: exactly one wins
    a = json.loads(json.dumps(l1)); a["spec"]["holderIdentity"] = "pod-a"; a["spec"]["leaseTransitions"] = 1
    b = json.loads(json.dumps(l1)); b["spec"]["holderIdentity"] = "pod-b"
    assert srv.api("PUT", base + "/edgefleet-leader", a)[0] == 200
    assert srv.api("PUT", base + "/edgefleet-leader", b)[0] == 409
    # owner-reference garbage collection
    owner = srv.api("POST", "/api/v1/namespaces/team-a/configmaps", {"metadata": {"name": "owner"}})[1]
    dep = {"metadata": {"name": "dependent", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]}}
    assert srv.api("POST", "/api/v1/namespaces/team-a/configmaps", dep)[0] == 201
    srv.kubectl("-n", "team-a", "delete", "cm", "owner")
    assert srv.api("GET", "/api/v1/namespaces/team-a/configmaps/dependent")[0] == 404
    # namespace deletion removes its content
    srv.kubectl("delete", "ns", "team-a")
    assert srv.kubectl("get", "ns", "team-a", check=False).returncode != 0
    assert srv.api("GET", base + "/edgefleet-leader")[0] == 404
    # events.k8s.io/v1 (kube-rs Recorder) create + merge patch
    ev = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"generateName": "md."},
          "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "edgefleet",
          "reportingInstance": "edgefleet-0", "action": "Reconcile", "reason": "Synced", "type": "Normal",
          "regarding": {"kind": "ModelDeployment", "name": "x", "namespace": "default"}}
    code, e1, _ = srv.api("POST", "/apis/events.k8s.io/v1/namespaces/default/events", ev)
    assert code == 201
    code, e2, _ = srv.api("PATCH", f"/apis/events.k8s.io/v1/namespaces/default/events/{e1['metadata']['name']}",
                          {"series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:01.000000Z"}},
                          ctype="application/merge-patch+json")
    assert code == 200 and e2["series"]["count"] == 2


def test_crd_delete_unregisters(crd_srv):
    srv = crd_srv
    srv.kubectl("apply", "-f", "-", input=md("gone"))
    rv = srv.api("GET", MD_BASE)[1]["metadata"]["resourceVersion"]
    srv.kubectl("delete", "-f", str(CRD))
    assert "modeldeployments" not in srv.kubectl("api-resources").stdout
    code, st, _ = srv.api("GET", MD_BASE)
    assert code == 404 and st["kind"] == "Status"
    assert srv.kubectl("get", "crd", "-o", "name").stdout.strip() == ""
    assert srv.api("GET", "/apis/edgefleet.io/v1alpha1")[0] == 404
    # re-create works and starts empty
    srv.kubectl("apply", "-f", str(CRD))
    assert srv.api("GET", MD_BASE)[1]["items"] == []
    assert int(srv.api("GET", MD_BASE)[1]["metadata"]["resourceVersion"]) > int(rv)


def test_outage_hook(crd_srv):
    srv = crd_srv
    result: list = []
    import threading
    th = threading.Thread(target=lambda: result.extend(srv.watch(MD_BASE + "?watch=true", timeout=10)))
    th.start()
    time.sleep(0.3)
    t0 = time.time()
    code, _, _ = srv.api("POST", "/__standin/outage?seconds=1.5")
    assert code == 200
    th.join(5)
    assert not th.is_alive() and time.time() - t0 < 3  # the open watch was closed
    code, st, _ = srv.api("GET", MD_BASE)
    assert code == 503 and st["reason"] == "ServiceUnavailable"
    assert srv.kubectl("get", "mdep", check=False).returncode != 0
    time.sleep(1.6)
    assert srv.api("GET", MD_BASE)[0] == 200


def test_request_log(crd_srv):
    srv = crd_srv
    srv.kubectl("apply", "-f", "-", input=md("logged"))
    srv.api("PATCH", MD_BASE + "/logged/status", {"status": {"phase": "Ready"}}, ctype="application/merge-patch+json")
    srv.watch("/apis/coordination.k8s.io/v1/leases?watch=true&timeoutSeconds=1")
    recs = srv.requests_log()
    for r in recs:
        assert {"method", "path", "verb", "group", "resource", "namespace", "subresource"} <= set(r)
    seen = {(r["verb"], r["group"], r["resource"], r["namespace"], r["subresource"]) for r in recs}
    assert ("create", "edgefleet.io", "modeldeployments", "default", None) in seen
    assert ("get", "edgefleet.io", "modeldeployments", "default", None) in seen
    assert ("patch", "edgefleet.io", "modeldeployments", "default", "status") in seen
    assert ("create", "apiextensions.k8s.io", "customresourcedefinitions", None, None) in seen
    assert ("watch", "coordination.k8s.io", "leases", None, None) in seen


def test_kubectl_imperative_create_protobuf(srv):
    """kubectl's typed clients send protobuf bodies for built-ins (client-go >= 1.31)."""
    srv.kubectl("create", "namespace", "team-p")
    srv.kubectl("-n", "team-p", "create", "configmap", "cfg", "--from-literal=a=b", "--from-literal=c=d")
    srv.kubectl("-n", "team-p", "create", "secret", "generic", "pw", "--from-literal=password=hunter2")
    srv.kubectl("-n", "team-p", "create", "serviceaccount", "bot")
    srv.kubectl("-n", "team-p", "create", "role", "reader", "--verb=get,list", "--resource=configmaps,pods")
    srv.kubectl("-n", "team-p", "create", "rolebinding", "rb", "--role=reader", "--serviceaccount=team-p:bot")
    srv.kubectl("create", "clusterrole", "node-reader", "--verb=get", "--resource=nodes")
    srv.kubectl("create", "clusterrolebinding", "crb", "--clusterrole=node-reader", "--user=alice")
    posts = [r for r in srv.requests_log() if r["verb"] == "create"]
    assert posts and all(r["contentType"] == "application/vnd.kubernetes.protobuf" for r in posts)
    assert srv.kget("ns", "team-p")["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team-p"}
    assert srv.kget("-n", "team-p", "cm", "cfg")["data"] == {"a": "b", "c": "d"}
    sec = srv.kget("-n", "team-p", "secret", "pw")
    assert sec["type"] == "Opaque" and sec["data"] == {"password": "aHVudGVyMg=="}
    assert srv.kget("-n", "team-p", "role", "reader")["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps", "pods"], "verbs": ["get", "list"]}]
    rb = srv.kget("-n", "team-p", "rolebinding", "rb")
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"}
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "bot", "namespace": "team-p"}]
    assert srv.kget("clusterrolebinding", "crb")["subjects"][0]["name"] == "alice"
    # kinds the decoder does not know are refused loudly, never half-decoded
    res = srv.kubectl("-n", "team-p", "create", "deployment", "web", "--image=nginx", check=False)
    assert res.returncode != 0 and "cannot decode this protobuf body" in res.stderr


def test_helm_install_upgrade_uninstall(srv):
    helm = str(Path(srv.kubectl_bin).parent / "helm")
    env = {**os.environ, "KUBECONFIG": str(srv.kubeconfig), "HOME": str(srv.tmp),
           "HELM_CACHE_HOME": str(srv.tmp / "helm-cache"), "HELM_CONFIG_HOME": str(srv.tmp / "helm-config"),
           "HELM_DATA_HOME": str(srv.tmp / "helm-data")}

    def helm_run(*args):
        res = subprocess.run([helm, *args], capture_output=True, text=True, env=env, cwd=srv.tmp, timeout=120)
        assert res.returncode == 0, f"helm {' '.join(args)}:\n{res.stderr}"
        return res.stdout

    helm_run("create", "demo")
    helm_run("install", "demo", "./demo")
    assert "deployed" in helm_run("list")
    assert srv.kget("deploy", "demo")["spec"]["replicas"] == 1
    assert srv.kget("secret", "sh.helm.release.v1.demo.v1")["type"] == "helm.sh/release.v1"
    helm_run("upgrade", "demo", "./demo", "--set", "replicaCount=3")
    assert srv.kget("deploy", "demo")["spec"]["replicas"] == 3
    helm_run("uninstall", "demo")
    assert srv.kubectl("get", "deploy,svc,sa,secret", "-o", "name").stdout.strip() == ""


def test_scale_subresource(crd_srv):
    srv = crd_srv
    srv.kubectl("apply", "-f", "-", input=md("sc", replicas=2))
    srv.kubectl("scale", "mdep/sc", "--replicas=5")
    obj = srv.kget("mdep", "sc")
    assert obj["spec"]["replicas"] == 5 and obj["metadata"]["generation"] == 2
    srv.api("PATCH", MD_BASE + "/sc/status", {"status": {"readyReplicas": 4}}, ctype="application/merge-patch+json")
    code, scale, _ = srv.api("GET", MD_BASE + "/sc/scale")
    assert code == 200 and scale["kind"] == "Scale" and scale["spec"] == {"replicas": 5}
    assert scale["status"]["replicas"] == 4
    bad = srv.kubectl("scale", "mdep/sc", "--replicas=500", check=False)  # schema still applies
    assert bad.returncode != 0 and "spec.replicas" in bad.stderr
    srv.kubectl("apply", "-f", str(FIXTURES / "builtins.yaml"))
    srv.kubectl("scale", "deploy/agent", "--replicas=4")
    assert srv.kget("deploy", "agent")["spec"]["replicas"] == 4
    assert srv.api("GET", "/api/v1/namespaces/default/configmaps/agent-config/scale")[0] == 404


def test_json_patch_test_of_missing_path_equals_null(crd_srv):
    """kube-rs adds the first finalizer with [test /metadata/finalizers == null, add ...]."""
    crd_srv.kubectl("apply", "-f", "-", input=md("fin"))
    ops = [{"op": "test", "path": "/metadata/finalizers", "value": None},
           {"op": "add", "path": "/metadata/finalizers", "value": ["edgefleet.io/cleanup"]}]
    code, body, _ = crd_srv.api("PATCH", f"{MD_BASE}/fin", ops, ctype="application/json-patch+json")
    assert code == 200, body
    assert body["metadata"]["finalizers"] == ["edgefleet.io/cleanup"]
    # a test against a present, different value still fails
    ops = [{"op": "test", "path": "/metadata/finalizers", "value": None}]
    code, body, _ = crd_srv.api("PATCH", f"{MD_BASE}/fin", ops, ctype="application/json-patch+json")
    assert code == 422, body
