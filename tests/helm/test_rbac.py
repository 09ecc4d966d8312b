"""The chart's RBAC is exactly controller/rbac.yaml, in both watch modes."""
from __future__ import annotations

import yaml

from conftest import NAMESPACE, REPO

RBAC_FILE = REPO / "controller" / "rbac.yaml"


def _expand(rules, scope):
    out = set()
    for r in rules:
        assert set(r) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields {set(r)}"
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    out.add((g, res, v, scope))
    return out


def _wanted():
    entries = yaml.safe_load(RBAC_FILE.read_text())
    out = set()
    for e in entries:
        assert set(e) == {"apiGroup", "resource", "verbs", "scope"}, e
        assert e["scope"] in ("cluster", "namespace")
        for v in e["verbs"]:
            out.add((e["apiGroup"], e["resource"], v, e["scope"]))
    return out


def _rbac(objs):
    return {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")): o for o in objs
            if o["apiVersion"].startswith("rbac.authorization.k8s.io/")}


def test_rbac_file_is_what_the_brief_lists():
    w = _wanted()
    assert ("edgefleet.io", "modeldeployments", "watch", "cluster") in w
    assert ("coordination.k8s.io", "leases", "create", "namespace") in w
    assert not any(v in ("delete", "deletecollection", "*") for _, _, v, _ in w)
    assert not any(r in ("secrets", "pods", "*") for _, r, _, _ in w)


def test_watch_all_namespaces_uses_a_clusterrole(helm):
    objs = helm.objects()
    rbac = _rbac(objs)
    sa = next(o for o in objs if o["kind"] == "ServiceAccount")["metadata"]["name"]
    got = set()
    for (kind, name, ns), o in rbac.items():
        if kind == "ClusterRole":
            got |= _expand(o["rules"], "cluster")
        elif kind == "Role":
            assert ns == NAMESPACE
            got |= _expand(o["rules"], "namespace")
        else:
            ref_kind = o["roleRef"]["kind"]
            assert (ref_kind, o["roleRef"]["name"], ns if ref_kind == "Role" else None) in rbac
            assert o["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    assert got == _wanted()
    assert sorted(k[0] for k in rbac) == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]


def test_single_namespace_uses_roles_only(helm):
    objs = helm.objects("--set", "controller.watchNamespace=team-a")
    rbac = _rbac(objs)
    assert not any(k[0].startswith("Cluster") for k in rbac), list(rbac)
    got = set()
    for (kind, name, ns), o in rbac.items():
        if kind == "Role":
            assert ns in ("team-a", NAMESPACE)
            got |= _expand(o["rules"], "cluster" if ns == "team-a" else "namespace")
        else:
            assert (o["roleRef"]["kind"], o["roleRef"]["name"], ns) in rbac
            assert o["subjects"][0]["namespace"] == NAMESPACE
    assert got == _wanted()


def test_single_namespace_equal_to_release_namespace(helm):
    objs = helm.objects("--set", f"controller.watchNamespace={NAMESPACE}")
    roles = [o for o in objs if o["kind"] == "Role"]
    assert len(roles) == 2 and all(r["metadata"]["namespace"] == NAMESPACE for r in roles)
    got = set()
    for r in roles:
        got |= _expand(r["rules"], "namespace" if r["metadata"]["name"].endswith("-leader-election") else "cluster")
    assert got == _wanted()


def test_rbac_can_be_disabled(helm):
    assert not _rbac(helm.objects("--set", "rbac.create=false"))
