"""Storage and API semantics of the Kubernetes API stand-in (TEST DOUBLE).

Everything here is synchronous: the HTTP layer runs on one asyncio loop, so
each store operation is atomic with respect to other requests and watches.
Stored objects are never mutated in place (every write stores a new dict),
so they can be shared with watch queues and the event history.
"""
from __future__ import annotations

import asyncio
import base64
import copy
import json
import random
import re
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import kschema
from kops import (_DNS1123_LABEL, _DNS1123_SUB, _LABEL_NAME, ApiError, apply_deletions,  # noqa: F401
                  fields_match, json_patch, labels_match, merge_patch, parse_field_selector,
                  parse_label_selector, strategic_merge_patch)

CRD_GROUP = "apiextensions.k8s.io"
ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
SUB_VERBS = ["get", "patch", "update"]


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: list = field(default_factory=list)
    categories: list = field(default_factory=list)
    status_sub: bool = False
    schema: dict | None = None           # CR openAPIV3Schema for this version
    crd_name: str | None = None          # set for custom resources
    printer_columns: list | None = None  # CRD additionalPrinterColumns
    selectable_fields: list = field(default_factory=list)
    list_kind: str = ""
    scale: dict | None = None            # scale subresource paths (specReplicasPath, ...)

    def __post_init__(self):
        self.list_kind = self.list_kind or self.kind + "List"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gr(self) -> tuple:
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:  # "configmaps" / "modeldeployments.edgefleet.io"
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kind_qualified(self) -> str:  # "ConfigMap" / "ModelDeployment.edgefleet.io"
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def details(self, name: str) -> dict:
        d = {"name": name, "kind": self.plural}
        if self.group:
            d["group"] = self.group
        return d


# (group, version, plural, singular, kind, namespaced, shortNames, categories, status subresource)
BUILTINS = [
    ("", "v1", "namespaces", "namespace", "Namespace", False, ["ns"], [], True),
    ("", "v1", "configmaps", "configmap", "ConfigMap", True, ["cm"], [], False),
    ("", "v1", "secrets", "secret", "Secret", True, [], [], False),
    ("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, ["sa"], [], False),
    ("", "v1", "services", "service", "Service", True, ["svc"], ["all"], True),
    ("", "v1", "events", "event", "Event", True, ["ev"], [], False),
    ("", "v1", "persistentvolumeclaims", "persistentvolumeclaim", "PersistentVolumeClaim", True, ["pvc"], [], True),
    ("", "v1", "pods", "pod", "Pod", True, ["po"], ["all"], True),
    ("", "v1", "nodes", "node", "Node", False, ["no"], [], True),
    ("apps", "v1", "deployments", "deployment", "Deployment", True, ["deploy"], ["all"], True),
    ("apps", "v1", "daemonsets", "daemonset", "DaemonSet", True, ["ds"], ["all"], True),
    ("apps", "v1", "statefulsets", "statefulset", "StatefulSet", True, ["sts"], ["all"], True),
    ("apps", "v1", "replicasets", "replicaset", "ReplicaSet", True, ["rs"], ["all"], True),
    ("coordination.k8s.io", "v1", "leases", "lease", "Lease", True, [], [], False),
    ("events.k8s.io", "v1", "events", "event", "Event", True, [], [], False),
    ("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", True, [], [], False),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", True, [], [], False),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", False, [], [], False),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding",
     False, [], [], False),
    ("policy", "v1", "poddisruptionbudgets", "poddisruptionbudget", "PodDisruptionBudget", True, ["pdb"], [], True),
    (CRD_GROUP, "v1", "customresourcedefinitions", "customresourcedefinition", "CustomResourceDefinition",
     False, ["crd", "crds"], ["api-extensions"], True),
]

# Built-in kinds whose create drops any client-supplied status (as their real strategies do).
RESET_STATUS_ON_CREATE = {"deployments", "daemonsets", "statefulsets", "replicasets", "poddisruptionbudgets",
                          "persistentvolumeclaims", "customresourcedefinitions", "services", "pods", "namespaces"}

_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(v: str) -> tuple:
    """Sort key: kube-aware version ordering (v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > others)."""
    m = _VERSION_RE.match(v)
    if not m:
        return (0, 0, 0, 0, v)
    stab = {"alpha": 1, "beta": 2, None: 3}[m.group(2)]
    return (1, stab, int(m.group(1)), int(m.group(3) or 0), "")


class Registry:
    def __init__(self):
        self.types: dict[tuple, ResourceType] = {}
        for g, v, p, s, k, ns, short, cats, st in BUILTINS:
            self.add(ResourceType(g, v, p, s, k, ns, list(short), list(cats), st))

    def add(self, rt: ResourceType) -> None:
        if rt.crd_name is None and rt.plural in ("deployments", "statefulsets", "replicasets"):
            rt.scale = {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}
        self.types[(rt.group, rt.version, rt.plural)] = rt

    def remove_crd(self, crd_name: str) -> list[ResourceType]:
        gone = [rt for rt in self.types.values() if rt.crd_name == crd_name]
        for rt in gone:
            del self.types[(rt.group, rt.version, rt.plural)]
        return gone

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self.types.get((group, version, plural))

    def has_gv(self, group: str, version: str) -> bool:
        return any(rt.group == group and rt.version == version for rt in self.types.values())

    def by_gv(self, group: str, version: str) -> list[ResourceType]:
        return sorted((rt for rt in self.types.values() if rt.group == group and rt.version == version),
                      key=lambda r: r.plural)

    def groups(self) -> dict[str, list[str]]:
        """group -> versions, preferred first; core group ("") first."""
        out: dict[str, set] = {}
        for rt in self.types.values():
            out.setdefault(rt.group, set()).add(rt.version)
        order = sorted(out, key=lambda g: (g != "", g))
        return {g: sorted(out[g], key=version_priority, reverse=True) for g in order}


# ----------------------------------------------------------------------------- watch plumbing

@dataclass
class Event:
    rv: int
    type: str
    gr: tuple
    ns: str
    obj: dict
    old: dict | None


class Watcher:
    def __init__(self, rt: ResourceType, ns: str | None, labels: list, fields: list):
        self.rt, self.ns, self.labels, self.fields = rt, ns, labels, fields
        self.queue: asyncio.Queue = asyncio.Queue()

    def matches(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        md = obj.get("metadata", {})
        return labels_match(self.labels, md.get("labels")) and fields_match(self.fields, obj)

    def offer(self, ev: Event) -> None:
        if ev.gr != self.rt.gr or (self.ns is not None and ev.ns != self.ns):
            return
        now_m = self.matches(ev.obj)
        if ev.type == "DELETED":
            typ = "DELETED" if now_m else None
        elif ev.type == "ADDED":
            typ = "ADDED" if now_m else None
        else:
            was = self.matches(ev.old)
            typ = ("MODIFIED" if was else "ADDED") if now_m else ("DELETED" if was else None)
        if typ:
            self.queue.put_nowait(("event", typ, ev.obj))

    def close(self, status: dict | None = None) -> None:
        self.queue.put_nowait(("close", status))


# ----------------------------------------------------------------------------- the store

class Store:
    def __init__(self, history: int = 1000):
        self.registry = Registry()
        self.objects: dict[tuple, dict[tuple, dict]] = {}
        self.rv = 0
        # Per-resource event history, like the real watch cache: every event of
        # resource `gr` with rv > floors[gr] is still in history[gr].
        self.history: dict[tuple, deque[Event]] = {}
        self.floors: dict[tuple, int] = {}
        self.history_limit = history
        self.watchers: set[Watcher] = set()
        self.next_ip = 10  # fake ClusterIP allocator (10.96.0.11, ...)
        self.applied: dict[tuple, dict] = {}  # SSA: (gr, ns, name, sub, manager) -> last applied config
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            rt = self.registry.get("", "v1", "namespaces")
            self.create(rt, "", {"metadata": {"name": ns}}, {})

    # ---- helpers
    def _bucket(self, rt: ResourceType) -> dict:
        return self.objects.setdefault(rt.gr, {})

    def present(self, rt: ResourceType, obj: dict) -> dict:
        out = copy.deepcopy(obj)
        out["apiVersion"], out["kind"] = rt.api_version, rt.kind
        return out

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, rt: ResourceType, typ: str, obj: dict, old: dict | None) -> None:
        ev = Event(int(obj["metadata"]["resourceVersion"]), typ, rt.gr, obj["metadata"].get("namespace", ""),
                   obj, old)
        hist = self.history.setdefault(rt.gr, deque())
        hist.append(ev)
        while len(hist) > self.history_limit:
            self.floors[rt.gr] = hist.popleft().rv
        for w in list(self.watchers):
            w.offer(ev)

    def compact(self) -> None:
        """Forget all watch history: resuming from any older resourceVersion gets 410 Gone."""
        for gr in set(self.history) | set(self.objects):
            self.floors[gr] = self.rv
        self.history.clear()

    def not_found(self, rt: ResourceType, name: str) -> ApiError:
        return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found', rt.details(name))

    def _type_for(self, group: str, plural: str) -> ResourceType | None:
        cands = [rt for rt in self.registry.types.values() if rt.gr == (group, plural)]
        return max(cands, key=lambda r: version_priority(r.version)) if cands else None

    # ---- reads
    def get(self, rt: ResourceType, ns: str, name: str) -> dict:
        obj = self._bucket(rt).get((ns if rt.namespaced else "", name))
        if obj is None:
            raise self.not_found(rt, name)
        return self.present(rt, obj)

    def list(self, rt: ResourceType, ns: str | None, params: dict) -> dict:
        lsel = parse_label_selector(params.get("labelSelector"))
        fsel = parse_field_selector(params.get("fieldSelector"), rt)
        keys = sorted(k for k in self._bucket(rt) if ns is None or k[0] == ns)
        list_rv = str(self.rv)
        cont = params.get("continue")
        if cont:
            try:
                tok = json.loads(base64.b64decode(cont))
                start, list_rv = tuple(tok["start"]), str(tok["rv"])
            except Exception:
                raise ApiError(400, "BadRequest", "continue key is not valid") from None
            keys = [k for k in keys if k > start]
        items = []
        for k in keys:
            obj = self._bucket(rt)[k]
            if labels_match(lsel, obj["metadata"].get("labels")) and fields_match(fsel, obj):
                items.append((k, obj))
        meta: dict = {"resourceVersion": list_rv}
        limit = int(params.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            last = items[limit - 1][0]
            meta["continue"] = base64.b64encode(json.dumps({"rv": int(list_rv), "start": list(last)})
                                                .encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta,
                "items": [self.present(rt, o) for _, o in items]}

    # ---- watch
    def open_watch(self, rt: ResourceType, ns: str | None, params: dict) -> Watcher:
        w = Watcher(rt, ns, parse_label_selector(params.get("labelSelector")),
                    parse_field_selector(params.get("fieldSelector"), rt))
        rv_param = params.get("resourceVersion", "")
        initial = params.get("sendInitialEvents") in ("true", "1")
        if initial:
            if params.get("resourceVersionMatch") != "NotOlderThan":
                raise ApiError(422, "Invalid", "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: "
                                               "Forbidden: sendInitialEvents requires setting resourceVersionMatch "
                                               "to NotOlderThan")
            if params.get("allowWatchBookmarks") not in ("true", "1"):
                raise ApiError(422, "Invalid", "ListOptions.meta.k8s.io \"\" is invalid: allowWatchBookmarks: "
                                               "Forbidden: sendInitialEvents requires allowWatchBookmarks=true")
        if initial or rv_param in ("", "0"):
            for k in sorted(self._bucket(rt)):
                obj = self._bucket(rt)[k]
                if (ns is None or k[0] == ns) and w.matches(obj):
                    w.queue.put_nowait(("event", "ADDED", obj))
            if initial:
                w.queue.put_nowait(("bookmark", str(self.rv), True))
        else:
            try:
                since = int(rv_param)
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid resource version: {rv_param}") from None
            floor = self.floors.get(rt.gr, 0)
            if since < floor:
                w.close(ApiError(410, "Expired", f"too old resource version: {since} ({floor + 1})").status())
                return w
            for ev in self.history.get(rt.gr, ()):
                if ev.rv > since:
                    w.offer(ev)
        self.watchers.add(w)
        return w

    def close_watch(self, w: Watcher) -> None:
        self.watchers.discard(w)

    def close_all_watches(self, pred=lambda w: True) -> None:
        for w in list(self.watchers):
            if pred(w):
                w.close()
                self.watchers.discard(w)

    # ---- admission (shared by create/update/patch)
    def _admit(self, rt: ResourceType, new: Any, old: dict | None, ns: str, name: str | None,
               sub: str | None, opts: dict) -> tuple[dict, list[str]]:
        """Returns (object ready to store without resourceVersion bump, warnings)."""
        if not isinstance(new, dict):
            raise ApiError(400, "BadRequest", "the body of the request must be a JSON object")
        new = copy.deepcopy(new)
        if new.get("kind") not in (None, "", rt.kind):
            raise ApiError(400, "BadRequest", f"the kind in the body ({new.get('kind')}) does not match the "
                                              f"expected kind ({rt.kind}) for {rt.qualified}")
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        md = new.get("metadata")
        if md is None:
            md = new["metadata"] = {}
        if not isinstance(md, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if rt.namespaced:
            if md.get("namespace") and md["namespace"] != ns:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                                                  "namespace sent on the request")
            md["namespace"] = ns
        else:
            md.pop("namespace", None)
        warnings: list[str] = []

        if old is not None:
            omd = old["metadata"]
            if md.get("name") not in (None, omd["name"]):
                raise ApiError(400, "BadRequest", f"the name of the object ({md.get('name')}) does not match "
                                                  f"the name on the URL ({omd['name']})")
            md["name"] = omd["name"]
            if md.get("resourceVersion") and md["resourceVersion"] != omd["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{omd["name"]}": '
                                                "the object has been modified; please apply your changes to the "
                                                "latest version and try again", rt.details(omd["name"]))
            if md.get("uid") and md["uid"] != omd["uid"]:
                raise ApiError(409, "Conflict", f'Precondition failed: UID in precondition: {md["uid"]}, '
                                                f'UID in object meta: {omd["uid"]}', rt.details(omd["name"]))
            for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                      "generation", "resourceVersion"):
                if k in omd:
                    md[k] = omd[k]
                else:
                    md.pop(k, None)
            if sub == "status":
                st = new.get("status")
                new = copy.deepcopy(old)
                new.pop("status", None)
                if st is not None:
                    new["status"] = st
                md = new["metadata"]
            elif rt.status_sub:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
            if omd.get("deletionTimestamp"):
                added = [f for f in md.get("finalizers") or [] if f not in (omd.get("finalizers") or [])]
                if added:
                    found = "[]string{" + ", ".join(json.dumps(f) for f in added) + "}"
                    raise self._invalid(rt, omd["name"], [kschema.FieldError(
                        "metadata.finalizers", "Forbidden", detail="no new finalizers can be added if the object "
                                                                   f"is being deleted, found new finalizers {found}")])
        else:
            if not md.get("name"):
                if md.get("generateName"):
                    md["name"] = md["generateName"] + "".join(random.choice("bcdfghjklmnpqrstvwxz2456789")
                                                              for _ in range(5))
                elif name:
                    md["name"] = name
                else:
                    raise self._invalid(rt, "", [kschema.FieldError(
                        "metadata.name", "Required", detail="name or generateName is required")])
            for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
                md.pop(k, None)
            md["uid"] = str(uuid.uuid4())
            md["creationTimestamp"] = now_rfc3339()
            md["generation"] = 1
            if (rt.crd_name and rt.status_sub) or rt.plural in RESET_STATUS_ON_CREATE:
                new.pop("status", None)

        self._validate_meta(rt, new)
        if rt.schema is not None:
            pruned = kschema.prune(new, rt.schema)
            fv = opts.get("fieldValidation", "")
            if pruned and fv == "Strict":
                msg = "strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in pruned)
                raise ApiError(400, "BadRequest", msg)
            if pruned and fv == "Warn":
                warnings += [f'unknown field "{p}"' for p in pruned]
            kschema.apply_defaults(new, rt.schema)
            errs = kschema.validate(new, rt.schema)
            if errs:
                raise self._invalid(rt, new["metadata"]["name"], errs)
        if rt.gr == (CRD_GROUP, "customresourcedefinitions"):
            self._prepare_crd(rt, new, old)
        if rt.gr == ("", "namespaces"):
            new.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            new.setdefault("status", {})["phase"] = "Terminating" if md.get("deletionTimestamp") else "Active"
            new["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = new["metadata"]["name"]
        if old is None and rt.gr == ("", "pods"):
            new.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
        if rt.gr == ("", "secrets") and not new.get("type"):
            new["type"] = "Opaque"
        if old is None and rt.gr == ("", "services") and isinstance(new.get("spec"), dict):
            spec = new["spec"]
            if spec.get("type", "ClusterIP") != "ExternalName" and not spec.get("clusterIP"):
                self.next_ip += 1
                spec["clusterIP"] = f"10.96.{self.next_ip // 256 % 256}.{self.next_ip % 256}"
                spec["clusterIPs"] = [spec["clusterIP"]]
            spec.setdefault("type", "ClusterIP")

        if old is not None and sub != "status":
            skip = {"metadata", "status"} if rt.status_sub else {"metadata"}
            if {k: v for k, v in new.items() if k not in skip} != {k: v for k, v in old.items() if k not in skip}:
                new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        return new, warnings

    def _invalid(self, rt: ResourceType, name: str, errs: list) -> ApiError:
        msgs = [e.message() for e in errs]
        joined = msgs[0] if len(msgs) == 1 else "[" + ", ".join(msgs) + "]"
        details = rt.details(name)
        details["kind"] = rt.kind
        details["causes"] = [e.cause() for e in errs]
        return ApiError(422, "Invalid", f'{rt.kind_qualified} "{name}" is invalid: {joined}', details)

    def _validate_meta(self, rt: ResourceType, obj: dict) -> None:
        md, errs = obj["metadata"], []
        name = md.get("name", "")
        if rt.plural == "namespaces":
            ok = len(name) <= 63 and _DNS1123_LABEL.match(name)
            detail = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
                      "and must start and end with an alphanumeric character")
        else:
            ok = len(name) <= 253 and _DNS1123_SUB.match(name)
            detail = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                      "'.', and must start and end with an alphanumeric character")
        if not ok:
            errs.append(kschema.FieldError("metadata.name", "Invalid", name, detail))
        for key, val in (md.get("labels") or {}).items():
            kname = key.rsplit("/", 1)[-1]
            if not kname or len(kname) > 63 or not _LABEL_NAME.match(kname) or len(key) > 316:
                errs.append(kschema.FieldError("metadata.labels", "Invalid", key,
                                               "name part must consist of alphanumeric characters, '-', '_' or "
                                               "'.', and must start and end with an alphanumeric character"))
            if not isinstance(val, str) or len(val) > 63 or not _LABEL_NAME.match(val):
                errs.append(kschema.FieldError("metadata.labels", "Invalid", val,
                                               "a valid label must be an empty string or consist of alphanumeric "
                                               "characters, '-', '_' or '.', and must start and end with an "
                                               "alphanumeric character"))
        for key, val in (md.get("annotations") or {}).items():
            if not isinstance(val, str):
                raise ApiError(400, "BadRequest", f"metadata.annotations[{key}] must be a string")
        if errs:
            raise self._invalid(rt, name, errs)

    # ---- writes
    def _check_namespace(self, rt: ResourceType, ns: str) -> None:
        if not rt.namespaced:
            return
        nsobj = self.objects.get(("", "namespaces"), {}).get(("", ns))
        if nsobj is None:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
        if nsobj["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f"{rt.qualified} \"\" is forbidden: unable to create new content in "
                                             f"namespace {ns} because it is being terminated",
                           {"name": ns, "kind": "namespaces"})

    def create(self, rt: ResourceType, ns: str, body: Any, opts: dict) -> tuple[dict, list]:
        if isinstance(body, dict) and isinstance(body.get("metadata"), dict) and not rt.namespaced:
            body = copy.deepcopy(body)
            body["metadata"].pop("namespace", None)
        ns = ns if rt.namespaced else ""
        obj, warnings = self._admit(rt, body, None, ns, None, None, opts)
        self._check_namespace(rt, ns)
        key = (ns, obj["metadata"]["name"])
        if key in self._bucket(rt):
            name = key[1]
            raise ApiError(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', rt.details(name))
        if opts.get("dryRun"):
            return self.present(rt, obj), warnings
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._bucket(rt)[key] = obj
        self._emit(rt, "ADDED", obj, None)
        self._after_write(rt, obj, None)
        return self.present(rt, obj), warnings

    def _stored(self, rt: ResourceType, ns: str, name: str) -> dict:
        obj = self._bucket(rt).get((ns if rt.namespaced else "", name))
        if obj is None:
            raise self.not_found(rt, name)
        return obj

    def update(self, rt: ResourceType, ns: str, name: str, body: Any, sub: str | None, opts: dict,
               old: dict | None = None) -> tuple[dict, list]:
        old = old if old is not None else self._stored(rt, ns, name)
        new, warnings = self._admit(rt, body, old, ns if rt.namespaced else "", name, sub, opts)
        return self._commit_update(rt, new, old, opts), warnings

    def _commit_update(self, rt: ResourceType, new: dict, old: dict, opts: dict) -> dict:
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old or opts.get("dryRun"):
            return self.present(rt, new)  # no-op writes do not bump resourceVersion nor emit events
        new["metadata"]["resourceVersion"] = self._next_rv()
        md = new["metadata"]
        key = (md.get("namespace", ""), md["name"])
        if md.get("deletionTimestamp") and not md.get("finalizers"):
            self._remove(rt, key, new)
            return self.present(rt, new)
        self._bucket(rt)[key] = new
        self._emit(rt, "MODIFIED", new, old)
        self._after_write(rt, new, old)
        return self.present(rt, new)

    def patch(self, rt: ResourceType, ns: str, name: str, ptype: str, body: Any, sub: str | None,
              opts: dict) -> tuple[dict, list, bool]:
        """Returns (object, warnings, created)."""
        nskey = ns if rt.namespaced else ""
        old = self._bucket(rt).get((nskey, name))
        if ptype == "apply":
            if not opts.get("fieldManager"):
                raise ApiError(400, "BadRequest", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: "
                                                  "Required value: is required for apply patch")
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "apply patch must be an object")
            if body.get("kind") != rt.kind or not body.get("apiVersion"):
                raise ApiError(400, "BadRequest", "apiVersion and kind must be set (and match the resource) "
                                                  "in an apply patch")
            akey = (rt.gr, nskey, name, sub or "", opts["fieldManager"])
            cfg = copy.deepcopy(body)
            cfg.get("metadata", {}).pop("resourceVersion", None) if isinstance(cfg.get("metadata"), dict) else None
            if old is None:
                if sub:
                    raise self.not_found(rt, name)
                cfg.setdefault("metadata", {})
                if isinstance(cfg["metadata"], dict):
                    cfg["metadata"].setdefault("name", name)
                obj, warnings = self.create(rt, ns, cfg, opts)
                if not opts.get("dryRun"):
                    self.applied[akey] = copy.deepcopy(body)
                return obj, warnings, True
            dels = apply_deletions(self.applied.get(akey), body)
            for k in ("apiVersion", "kind"):
                dels.pop(k, None)
            if isinstance(dels.get("metadata"), dict):
                dels["metadata"] = {k: v for k, v in dels["metadata"].items() if k in ("labels", "annotations")}
            patched = merge_patch(merge_patch(old, dels), body)
            if not opts.get("dryRun"):
                self.applied[akey] = copy.deepcopy(body)
        else:
            if old is None:
                raise self.not_found(rt, name)
            try:
                if ptype == "merge":
                    patched = merge_patch(old, body)
                elif ptype == "json":
                    patched = json_patch(old, body)
                elif ptype == "strategic":
                    if rt.crd_name:
                        raise ApiError(415, "UnsupportedMediaType",
                                       "the body of the request was in an unknown format - accepted media types "
                                       "include: application/json-patch+json, application/merge-patch+json, "
                                       "application/apply-patch+yaml")
                    patched = strategic_merge_patch(old, body)
                else:
                    raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ptype}")
            except ValueError as e:
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                                               f"{e}") from None
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request")
        # a resourceVersion the patch put into the object acts as a precondition (as on the real server)
        obj, warnings = self.update(rt, ns, name, patched, sub, opts, old=old)
        return obj, warnings, False

    def delete(self, rt: ResourceType, ns: str, name: str, opts: dict) -> tuple[dict, bool]:
        """Returns (object-or-status, still_present)."""
        old = self._stored(rt, ns, name)
        pre = (opts.get("preconditions") or {})
        if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
            raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                                            f"object meta: {old['metadata']['uid']}", rt.details(name))
        if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f"Precondition failed: ResourceVersion in precondition: "
                                            f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                            f"{old['metadata']['resourceVersion']}", rt.details(name))
        if opts.get("dryRun"):
            return self.present(rt, old), False
        if rt.gr == ("", "namespaces"):
            return self._delete_namespace(rt, old)
        md = old["metadata"]
        key = (md.get("namespace", ""), md["name"])
        if md.get("finalizers"):
            if md.get("deletionTimestamp"):
                return self.present(rt, old), True
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"]["generation"] = int(md.get("generation", 1)) + 1
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._bucket(rt)[key] = new
            self._emit(rt, "MODIFIED", new, old)
            return self.present(rt, new), True
        final = copy.deepcopy(old)
        final["metadata"]["resourceVersion"] = self._next_rv()
        self._remove(rt, key, final)
        if rt.crd_name:
            st = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                  "details": {**rt.details(name), "uid": md["uid"]}}
            return st, False
        return self.present(rt, final), False

    def _remove(self, rt: ResourceType, key: tuple, final: dict) -> None:
        """Really remove an object (its final state carries the new resourceVersion)."""
        self._bucket(rt).pop(key, None)
        for k in [k for k in self.applied if k[0] == rt.gr and k[1] == key[0] and k[2] == key[1]]:
            del self.applied[k]
        self._emit(rt, "DELETED", final, None)
        if rt.gr == (CRD_GROUP, "customresourcedefinitions"):
            self._unregister_crd(final)
        self._collect_garbage(final["metadata"]["uid"])
        if key[0]:
            self._maybe_finish_namespace(key[0])

    def _collect_garbage(self, uid: str) -> None:
        """Background cascading deletion of dependents whose owners are all gone."""
        live = {o["metadata"]["uid"] for b in self.objects.values() for o in b.values()}
        for gr, bucket in list(self.objects.items()):
            rt = self._type_for(*gr)
            if rt is None:
                continue
            for key, obj in list(bucket.items()):
                owners = [r.get("uid") for r in obj["metadata"].get("ownerReferences") or []]
                if uid in owners and not any(o in live for o in owners) and key in bucket:
                    try:
                        self.delete(rt, key[0], key[1], {})
                    except ApiError:
                        pass

    def _delete_namespace(self, rt: ResourceType, old: dict) -> tuple[dict, bool]:
        name = old["metadata"]["name"]
        if not old["metadata"].get("deletionTimestamp"):
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["status"] = {"phase": "Terminating"}
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._bucket(rt)[("", name)] = new
            self._emit(rt, "MODIFIED", new, old)
            for gr, bucket in list(self.objects.items()):
                ort = self._type_for(*gr)
                if ort is None or not ort.namespaced:
                    continue
                for key in [k for k in bucket if k[0] == name]:
                    if key in bucket:
                        try:
                            self.delete(ort, key[0], key[1], {})
                        except ApiError:
                            pass
        self._maybe_finish_namespace(name)
        cur = self._bucket(rt).get(("", name))
        return self.present(rt, cur if cur is not None else old), cur is not None

    def _maybe_finish_namespace(self, ns: str) -> None:
        rt = self.registry.get("", "v1", "namespaces")
        nsobj = self._bucket(rt).get(("", ns))
        if nsobj is None or not nsobj["metadata"].get("deletionTimestamp") or nsobj["metadata"].get("finalizers"):
            return
        if any(k[0] == ns for gr, b in self.objects.items() if gr != ("", "namespaces") for k in b):
            return
        final = copy.deepcopy(nsobj)
        final["metadata"]["resourceVersion"] = self._next_rv()
        self._remove(rt, ("", ns), final)

    def deletecollection(self, rt: ResourceType, ns: str | None, params: dict, opts: dict) -> dict:
        lst = self.list(rt, ns, {k: v for k, v in params.items() if k in ("labelSelector", "fieldSelector")})
        out = []
        for item in lst["items"]:
            md = item["metadata"]
            try:
                obj, _ = self.delete(rt, md.get("namespace", ""), md["name"], opts)
                out.append(obj if obj.get("kind") != "Status" else item)
            except ApiError:
                pass
        return {"kind": rt.list_kind, "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.rv)}, "items": out}

    # ---- scale subresource
    def get_scale(self, rt: ResourceType, ns: str, name: str) -> dict:
        obj = self._stored(rt, ns, name)
        md = obj["metadata"]
        sc = rt.scale or {}
        status: dict = {"replicas": _path_get(obj, sc.get("statusReplicasPath")) or 0}
        if sc.get("labelSelectorPath"):
            sel = _path_get(obj, sc["labelSelectorPath"])
            if sel:
                status["selector"] = sel
        elif isinstance(_path_get(obj, ".spec.selector.matchLabels"), dict):
            status["selector"] = ",".join(f"{k}={v}" for k, v in obj["spec"]["selector"]["matchLabels"].items())
        meta = {k: md[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in md}
        return {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": meta,
                "spec": {"replicas": _path_get(obj, sc.get("specReplicasPath")) or 0}, "status": status}

    def update_scale(self, rt: ResourceType, ns: str, name: str, scale: Any, opts: dict) -> dict:
        obj = self._stored(rt, ns, name)
        if not isinstance(scale, dict) or not isinstance((scale.get("spec") or {}).get("replicas"), int):
            raise ApiError(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: Required value')
        new = copy.deepcopy(obj)
        path = [p for p in (rt.scale or {}).get("specReplicasPath", ".spec.replicas").split(".") if p]
        cur = new
        for p in path[:-1]:
            cur = cur.setdefault(p, {})
        cur[path[-1]] = scale["spec"]["replicas"]
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        new["metadata"]["resourceVersion"] = rv or obj["metadata"]["resourceVersion"]
        self.update(rt, ns, name, new, None, opts, old=obj)
        return self.get_scale(rt, ns, name)

    # ---- CRD handling
    def _prepare_crd(self, rt: ResourceType, crd: dict, old: dict | None) -> None:
        spec = crd.get("spec") if isinstance(crd.get("spec"), dict) else {}
        names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
        errs = []
        group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
        if not group:
            errs.append(kschema.FieldError("spec.group", "Required"))
        if not plural:
            errs.append(kschema.FieldError("spec.names.plural", "Required"))
        if not kind:
            errs.append(kschema.FieldError("spec.names.kind", "Required"))
        if group and plural and crd["metadata"]["name"] != f"{plural}.{group}":
            errs.append(kschema.FieldError("metadata.name", "Invalid", crd["metadata"]["name"],
                                           'must be spec.names.plural+"."+spec.group'))
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            errs.append(kschema.FieldError("spec.scope", "Unsupported", spec.get("scope"),
                                           supported=["Cluster", "Namespaced"]))
        versions = spec.get("versions") or []
        if not versions:
            errs.append(kschema.FieldError("spec.versions", "Required"))
        elif sum(1 for v in versions if isinstance(v, dict) and v.get("storage")) != 1:
            errs.append(kschema.FieldError("spec.versions", "Invalid", versions,
                                           "must have exactly one version marked as storage version"))
        for i, v in enumerate(versions):
            if not isinstance(v, dict) or not v.get("name"):
                errs.append(kschema.FieldError(f"spec.versions[{i}].name", "Required"))
                continue
            sch = ((v.get("schema") or {}).get("openAPIV3Schema"))
            if sch is None:
                errs.append(kschema.FieldError(f"spec.versions[{i}].schema.openAPIV3Schema", "Required",
                                               detail="schemas are required"))
            for p in kschema.check_crd_schema(sch):
                errs.append(kschema.FieldError(f"spec.versions[{i}].schema.openAPIV3Schema", "Invalid", "",
                                               p))
        if group and plural and old is None:
            for other in self.registry.types.values():
                if other.gr == (group, plural) and other.crd_name != crd["metadata"]["name"]:
                    errs.append(kschema.FieldError("spec.names.plural", "Invalid", plural,
                                                   "is already in use by another resource"))
                    break
        if errs:
            raise self._invalid(rt, crd["metadata"]["name"], errs)
        accepted = {"plural": plural, "singular": names.get("singular") or kind.lower(), "kind": kind,
                    "listKind": names.get("listKind") or kind + "List"}
        if names.get("shortNames"):
            accepted["shortNames"] = names["shortNames"]
        if names.get("categories"):
            accepted["categories"] = names["categories"]
        stamp = now_rfc3339()
        prev = {c.get("type"): c for c in ((old or {}).get("status") or {}).get("conditions") or []}

        def cond(t, reason, msg):
            ts = prev.get(t, {}).get("lastTransitionTime", stamp)
            return {"type": t, "status": "True", "lastTransitionTime": ts, "reason": reason, "message": msg}

        stored = list(((old or {}).get("status") or {}).get("storedVersions") or [])
        storage = next(v["name"] for v in versions if v.get("storage"))
        if storage not in stored:
            stored.append(storage)
        crd["status"] = {
            "acceptedNames": accepted,
            "conditions": [cond("NamesAccepted", "NoConflicts", "no conflicts found"),
                           cond("Established", "InitialNamesAccepted", "the initial names have been accepted")],
            "storedVersions": stored,
        }

    def _after_write(self, rt: ResourceType, obj: dict, old: dict | None) -> None:
        if rt.gr == (CRD_GROUP, "customresourcedefinitions") and not obj["metadata"].get("deletionTimestamp"):
            self._register_crd(obj)

    def _register_crd(self, crd: dict) -> None:
        name = crd["metadata"]["name"]
        before = {rt.version for rt in self.registry.remove_crd(name)}
        spec, acc = crd["spec"], crd["status"]["acceptedNames"]
        served = set()
        for v in spec["versions"]:
            if not v.get("served", True):
                continue
            served.add(v["name"])
            self.registry.add(ResourceType(
                spec["group"], v["name"], acc["plural"], acc["singular"], acc["kind"],
                spec["scope"] == "Namespaced", list(acc.get("shortNames") or []),
                list(acc.get("categories") or []), bool((v.get("subresources") or {}).get("status") is not None),
                (v.get("schema") or {}).get("openAPIV3Schema"), name, v.get("additionalPrinterColumns"),
                list(v.get("selectableFields") or []), acc["listKind"],
                (v.get("subresources") or {}).get("scale")))
        dropped = before - served
        if dropped:
            self.close_all_watches(lambda w: w.rt.crd_name == name and w.rt.version in dropped)

    def _unregister_crd(self, crd: dict) -> None:
        name = crd["metadata"]["name"]
        gone = self.registry.remove_crd(name)
        if not gone:
            return
        rt = max(gone, key=lambda r: version_priority(r.version))
        bucket = self.objects.pop(rt.gr, {})
        for key in sorted(bucket):
            final = copy.deepcopy(bucket[key])
            final["metadata"]["resourceVersion"] = self._next_rv()
            self._emit(rt, "DELETED", final, None)
        self.applied = {k: v for k, v in self.applied.items() if k[0] != rt.gr}
        self.close_all_watches(lambda w: w.rt.crd_name == name)
        self.history.pop(rt.gr, None)
        self.floors[rt.gr] = self.rv
        for obj in bucket.values():
            self._collect_garbage(obj["metadata"]["uid"])


def _path_get(obj: Any, path: str | None) -> Any:
    """Value at a simple JSON path like `.spec.replicas` (None when absent)."""
    if not path:
        return None
    for p in [p for p in path.split(".") if p]:
        obj = obj.get(p) if isinstance(obj, dict) else None
    return obj
