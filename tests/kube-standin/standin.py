#!/usr/bin/env python3
"""Kubernetes API stand-in: an HTTP+JSON server for tests. TEST DOUBLE, never shipped.

Usage:
  python3 standin.py --port 0 --port-file FILE [--kubeconfig FILE] [--log-requests FILE]
                     [--history N] [--bookmark-interval SECONDS]

Serves discovery (legacy + aggregated v2), OpenAPI stubs, generic storage for a
set of built-in kinds, CRDs (registration, schema pruning/defaulting/validation),
watches with resume/410/bookmarks/streaming lists, server-side Table output for
kubectl, and test hooks under /__standin/. See README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import sys
import time
from datetime import datetime, timezone
from typing import Any

import yaml
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kproto  # noqa: E402
from kstore import ApiError, ResourceType, Store  # noqa: E402

GIT_VERSION = "v1.35.0-standin"
AGG_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
PB_OPENAPI_V2 = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def json_response(obj: Any, status: int = 200, ctype: str = "application/json",
                  headers: dict | None = None) -> web.Response:
    return web.Response(body=dumps(obj), status=status, headers={"Content-Type": ctype, **(headers or {})})


def error_response(e: ApiError) -> web.Response:
    return json_response(e.status(), e.code)


def parse_accept(header: str) -> list[dict]:
    """Split an Accept header into media ranges with their parameters."""
    out = []
    for rng in (header or "").split(","):
        parts = [p.strip() for p in rng.split(";")]
        params = {}
        for p in parts[1:]:
            if "=" in p:
                k, v = p.split("=", 1)
                params[k.strip()] = v.strip()
        out.append({"type": parts[0], **params})
    return out


def wants(request: web.Request, as_kind: str, versions=("v1",)) -> dict | None:
    for m in parse_accept(request.headers.get("Accept", "")):
        if m.get("as") == as_kind and m.get("v") in versions:
            return m
    return None


# ----------------------------------------------------------------------------- tables

def human_duration(seconds: float) -> str:
    """Port of apimachinery's duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m" if s % 60 == 0 else f"{m}m{s % 60}s"
    if m < 180:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        return f"{h}h" if m % 60 == 0 else f"{h}h{m % 60}m"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d" if h % 24 == 0 else f"{h // 24}d{h % 24}h"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    if h < 24 * 365 * 8:
        dy = (h // 24) % 365
        return f"{h // 24 // 365}y" if dy == 0 else f"{h // 24 // 365}y{dy}d"
    return f"{h // 24 // 365}y"


def age(ts: Any) -> str:
    if not isinstance(ts, str) or not ts:
        return "<unknown>"
    try:
        t = datetime.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return "<invalid>"
    return human_duration((datetime.now(timezone.utc) - t).total_seconds())


def jsonpath(obj: Any, path: str) -> list:
    """Tiny JSONPath subset for printer columns: .a.b, [n], [*], ['k'], [?(@.k=="v")]."""
    import re
    toks = re.findall(r"\.([^.\[\]]+)|\[\?\(@\.([\w.-]+)\s*==\s*[\"']([^\"']*)[\"']\)\]|\[(\d+|\*)\]|\['([^']+)'\]",
                      path.strip().lstrip("{").rstrip("}"))
    cur = [obj]
    for key, fk, fv, idx, qkey in toks:
        nxt = []
        for c in cur:
            k = key or qkey
            if k:
                if isinstance(c, dict) and k in c:
                    nxt.append(c[k])
            elif fk:
                if isinstance(c, list):
                    for e in c:
                        v = e
                        for part in fk.split("."):
                            v = v.get(part) if isinstance(v, dict) else None
                        if isinstance(e, dict) and str(v) == fv:
                            nxt.append(e)
            elif idx == "*":
                if isinstance(c, list):
                    nxt.extend(c)
                elif isinstance(c, dict):
                    nxt.extend(c.values())
            elif isinstance(c, list) and int(idx) < len(c):
                nxt.append(c[int(idx)])
        cur = nxt
    return cur


def _col(name: str, typ: str = "string", fmt: str = "", desc: str = "", priority: int = 0) -> dict:
    return {"name": name, "type": typ, "format": fmt, "description": desc or name, "priority": priority}


NAME_COL = _col("Name", fmt="name", desc="Name must be unique within a namespace.")
AGE_COL = _col("Age", desc="CreationTimestamp is a timestamp representing the server time when this object was "
                           "created.")


def _g(o: dict, *path, default=None):
    for p in path:
        o = o.get(p) if isinstance(o, dict) else None
    return default if o is None else o


def _ports(o):
    ps = _g(o, "spec", "ports", default=[])
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ps) or "<none>"


BUILTIN_COLUMNS = {
    "namespaces": [(_col("Status"), lambda o: _g(o, "status", "phase", default=""))],
    "configmaps": [(_col("Data", "integer"), lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {}))],
    "secrets": [(_col("Type"), lambda o: o.get("type", "Opaque")),
                (_col("Data", "integer"), lambda o: len(o.get("data") or {}) + len(o.get("stringData") or {}))],
    "deployments": [
        (_col("Ready"), lambda o: f"{_g(o, 'status', 'readyReplicas', default=0)}/{_g(o, 'spec', 'replicas', default=1)}"),
        (_col("Up-to-date", "integer"), lambda o: _g(o, "status", "updatedReplicas", default=0)),
        (_col("Available", "integer"), lambda o: _g(o, "status", "availableReplicas", default=0))],
    "statefulsets": [
        (_col("Ready"), lambda o: f"{_g(o, 'status', 'readyReplicas', default=0)}/{_g(o, 'spec', 'replicas', default=1)}")],
    "daemonsets": [(_col("Desired", "integer"), lambda o: _g(o, "status", "desiredNumberScheduled", default=0)),
                   (_col("Current", "integer"), lambda o: _g(o, "status", "currentNumberScheduled", default=0)),
                   (_col("Ready", "integer"), lambda o: _g(o, "status", "numberReady", default=0))],
    "pods": [(_col("Ready"), lambda o: f"0/{len(_g(o, 'spec', 'containers', default=[]))}"),
             (_col("Status"), lambda o: _g(o, "status", "phase", default="Pending")),
             (_col("Restarts", "integer"), lambda o: 0)],
    "services": [(_col("Type"), lambda o: _g(o, "spec", "type", default="ClusterIP")),
                 (_col("Cluster-IP"), lambda o: _g(o, "spec", "clusterIP", default="<none>")),
                 (_col("Port(s)"), _ports)],
    "leases": [(_col("Holder"), lambda o: _g(o, "spec", "holderIdentity", default=""))],
    "nodes": [(_col("Status"), lambda o: next((("Ready" if c.get("status") == "True" else "NotReady")
                                               for c in _g(o, "status", "conditions", default=[])
                                               if c.get("type") == "Ready"), "Unknown"))],
}


def table_for(rt: ResourceType, objs: list[dict], list_meta: dict | None, include: str) -> dict:
    if rt.plural == "customresourcedefinitions":
        cols = [(NAME_COL, lambda o: o["metadata"]["name"]),
                (_col("Created At", "date"), lambda o: o["metadata"].get("creationTimestamp"))]
    elif rt.plural == "events" and rt.group == "":
        cols = [(_col("Last Seen"), lambda o: age(o.get("lastTimestamp") or o.get("eventTime")
                                                 or o["metadata"].get("creationTimestamp"))),
                (_col("Type"), lambda o: o.get("type", "")), (_col("Reason"), lambda o: o.get("reason", "")),
                (_col("Object"), lambda o: f"{_g(o, 'involvedObject', 'kind', default='').lower()}/"
                                           f"{_g(o, 'involvedObject', 'name', default='')}"),
                (_col("Message"), lambda o: o.get("message", ""))]
    elif rt.crd_name and rt.printer_columns:
        cols = [(NAME_COL, lambda o: o["metadata"]["name"])]
        for pc in rt.printer_columns:
            cols.append((_col(pc["name"], pc.get("type", "string"), pc.get("format", ""),
                              pc.get("description", ""), pc.get("priority", 0)),
                         (lambda p: lambda o: crd_cell(o, p))(pc)))
    else:
        cols = [(NAME_COL, lambda o: o["metadata"]["name"])]
        cols += BUILTIN_COLUMNS.get(rt.plural, []) if not rt.crd_name else []
        cols.append((AGE_COL, lambda o: age(o["metadata"].get("creationTimestamp"))))
    rows = []
    for o in objs:
        row: dict = {"cells": [fn(o) for _, fn in cols]}
        if include == "Object":
            row["object"] = o
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": o["metadata"]}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta or {},
            "columnDefinitions": [c for c, _ in cols], "rows": rows}


def crd_cell(obj: dict, pc: dict) -> Any:
    res = jsonpath(obj, pc.get("jsonPath", ""))
    if not res:
        return None
    v, typ = res[0], pc.get("type", "string")
    if typ == "date":
        return age(v) if isinstance(v, str) else None
    if typ == "integer":
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() else None
    if typ == "number":
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    if typ == "boolean":
        return v if isinstance(v, bool) else None
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else str(v)


def partial(obj: dict) -> dict:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


# ----------------------------------------------------------------------------- discovery & openapi

def resource_entries(rt: ResourceType) -> list[dict]:
    h = hashlib.sha256(f"{rt.group}/{rt.version}/{rt.kind}".encode()).digest()[:8]
    import base64
    main = {"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced, "kind": rt.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "storageVersionHash": base64.b64encode(h).decode()}
    if rt.short_names:
        main["shortNames"] = rt.short_names
    if rt.categories:
        main["categories"] = rt.categories
    out = [main]
    if rt.status_sub:
        out.append({"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced,
                    "kind": rt.kind, "verbs": ["get", "patch", "update"]})
    if rt.scale:
        out.append({"name": f"{rt.plural}/scale", "singularName": "", "namespaced": rt.namespaced,
                    "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
    return out


def aggregated(store: Store, core: bool) -> dict:
    items = []
    for group, versions in store.registry.groups().items():
        if (group == "") != core:
            continue
        vers = []
        for v in versions:
            res = []
            for rt in store.registry.by_gv(group, v):
                gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
                r = {"resource": rt.plural, "responseKind": gvk,
                     "scope": "Namespaced" if rt.namespaced else "Cluster", "singularResource": rt.singular,
                     "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]}
                if rt.short_names:
                    r["shortNames"] = rt.short_names
                if rt.categories:
                    r["categories"] = rt.categories
                subs = []
                if rt.status_sub:
                    subs.append({"subresource": "status", "responseKind": gvk, "verbs": ["get", "patch", "update"]})
                if rt.scale:
                    subs.append({"subresource": "scale", "verbs": ["get", "patch", "update"],
                                 "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}})
                if subs:
                    r["subresources"] = subs
                res.append(r)
            vers.append({"version": v, "resources": res, "freshness": "Current"})
        items.append({"metadata": {"name": group, "creationTimestamp": None}, "versions": vers})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {},
            "items": items}


def api_group(group: str, versions: list[str]) -> dict:
    vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": vs, "preferredVersion": vs[0]}


def openapi_v3_gv(store: Store, group: str, version: str) -> dict:
    """Minimal OpenAPI v3 doc: enough for kubectl to see that PATCH supports fieldValidation
    (so it leaves validation to the server), plus CRD schemas for `kubectl explain`."""
    paths, schemas = {}, {}
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    params = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
              for n in ("dryRun", "fieldManager", "fieldValidation", "force")]
    for rt in store.registry.by_gv(group, version):
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        base = f"{prefix}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{prefix}/{rt.plural}"
        paths[base + "/{name}"] = {"patch": {
            "operationId": f"patch{rt.kind}", "parameters": params,
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk}}
        if rt.schema is not None:
            rev = ".".join(reversed(rt.group.split(".")))
            schemas[f"{rev}.{rt.version}.{rt.kind}"] = {**rt.schema, "x-kubernetes-group-version-kind": [gvk]}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": GIT_VERSION},
            "paths": paths, "components": {"schemas": schemas}}


# ----------------------------------------------------------------------------- the server

class StandIn:
    def __init__(self, args: argparse.Namespace):
        self.store = Store(history=args.history)
        self.bookmark_interval = args.bookmark_interval
        self.outage_until = 0.0
        self.log = open(args.log_requests, "a", buffering=1) if args.log_requests else None
        self.port = 0

    # ---- request classification (for logs) and routing
    def parse_path(self, path: str) -> dict | None:
        segs = [s for s in path.split("/") if s]
        if len(segs) >= 2 and segs[0] == "api":
            group, version, rest = "", segs[1], segs[2:]
        elif len(segs) >= 3 and segs[0] == "apis":
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            return None
        info = {"group": group, "version": version, "namespace": None, "resource": None, "name": None,
                "subresource": None, "legacy_watch": False}
        if rest and rest[0] == "watch":
            info["legacy_watch"], rest = True, rest[1:]
        # /api/v1/namespaces/{name}/status is the Namespace's own subresource, any other
        # /namespaces/{ns}/{resource}... is a namespaced resource path.
        if len(rest) >= 3 and rest[0] == "namespaces" and not (
                group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")):
            info["namespace"] = rest[1]
            rest = rest[2:]
        if rest:
            info["resource"] = rest[0]
        if len(rest) >= 2:
            info["name"] = rest[1]
        if len(rest) >= 3:
            info["subresource"] = "/".join(rest[2:])
        return info

    def verb(self, method: str, info: dict | None, query) -> str:
        if info is None or info["resource"] is None:
            return method.lower()
        watch = info["legacy_watch"] or query.get("watch") in ("true", "1")
        if method == "GET":
            return "watch" if watch else ("get" if info["name"] else "list")
        return {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if info["name"] else "deletecollection"}.get(method, method.lower())

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        info = self.parse_path(request.path)
        code = 0
        try:
            if request.path.startswith("/__standin/"):
                resp = await handler(request)
            elif time.monotonic() < self.outage_until:
                resp = error_response(ApiError(503, "ServiceUnavailable",
                                               "the server is currently unable to handle the request "
                                               "(simulated outage)"))
            else:
                resp = await handler(request)
            code = resp.status
            return resp
        except ApiError as e:
            code = e.code
            return error_response(e)
        except web.HTTPException:
            raise
        except Exception as e:  # a bug in the stand-in: report it like the real server would
            import traceback
            traceback.print_exc()
            code = 500
            return error_response(ApiError(500, "InternalError", f"Internal error occurred: {e!r}"))
        finally:
            if self.log and not request.path.startswith("/__standin/"):
                rec = {"ts": datetime.now(timezone.utc).isoformat(), "method": request.method,
                       "path": request.path, "verb": self.verb(request.method, info, request.query),
                       "group": info["group"] if info else None, "version": info["version"] if info else None,
                       "resource": info["resource"] if info else None,
                       "namespace": info["namespace"] if info else None,
                       "name": info["name"] if info else None,
                       "subresource": info["subresource"] if info else None,
                       "code": code, "contentType": request.headers.get("Content-Type", ""),
                       "query": dict(request.query), "userAgent": request.headers.get("User-Agent", "")}
                self.log.write(json.dumps(rec) + "\n")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/__standin/"):
            return await self.hooks(request, path)
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/version":
            return json_response({"major": "1", "minor": "35", "emulationMajor": "1", "emulationMinor": "35",
                                  "minCompatibilityMajor": "1", "minCompatibilityMinor": "34",
                                  "gitVersion": GIT_VERSION, "gitCommit": "0" * 40, "gitTreeState": "clean",
                                  "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25", "compiler": "gc",
                                  "platform": "linux/amd64"})
        if path == "/api":
            if wants(request, "APIGroupDiscoveryList", ("v2",)):
                return json_response(aggregated(self.store, True), ctype=AGG_V2, headers={"Vary": "Accept"})
            return json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}]},
                headers={"Vary": "Accept"})
        if path == "/apis":
            if wants(request, "APIGroupDiscoveryList", ("v2",)):
                return json_response(aggregated(self.store, False), ctype=AGG_V2, headers={"Vary": "Accept"})
            groups = [api_group(g, vs) for g, vs in self.store.registry.groups().items() if g]
            return json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups},
                                 headers={"Vary": "Accept"})
        if path.startswith("/openapi"):
            return self.openapi(request, path)
        segs = [s for s in path.split("/") if s]
        if len(segs) == 2 and segs[0] == "apis":
            vs = self.store.registry.groups().get(segs[1])
            if vs:
                return json_response({"kind": "APIGroup", "apiVersion": "v1", **api_group(segs[1], vs)})
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        info = self.parse_path(path)
        if info is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if info["resource"] is None:
            if not self.store.registry.has_gv(info["group"], info["version"]):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            gv = f"{info['group']}/{info['version']}" if info["group"] else info["version"]
            res = [e for rt in self.store.registry.by_gv(info["group"], info["version"])
                   for e in resource_entries(rt)]
            return json_response({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                                  "resources": res})
        return await self.resource(request, info)

    # ---- OpenAPI
    def openapi(self, request: web.Request, path: str) -> web.Response:
        if path == "/openapi/v2":
            if PB_OPENAPI_V2 in request.headers.get("Accept", ""):
                # An empty protobuf message is a valid (empty) openapi_v2.Document.
                return web.Response(body=b"", content_type=PB_OPENAPI_V2)
            return json_response({"swagger": "2.0", "info": {"title": "Kubernetes", "version": GIT_VERSION},
                                  "paths": {}, "definitions": {}})
        if path == "/openapi/v3":
            paths = {}
            for g, vs in self.store.registry.groups().items():
                for v in vs:
                    key = f"apis/{g}/{v}" if g else f"api/{v}"
                    digest = hashlib.sha512(dumps(openapi_v3_gv(self.store, g, v))).hexdigest().upper()
                    paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
            return json_response({"paths": paths})
        segs = [s for s in path[len("/openapi/v3/"):].split("/") if s]
        if len(segs) == 2 and segs[0] == "api":
            g, v = "", segs[1]
        elif len(segs) == 3 and segs[0] == "apis":
            g, v = segs[1], segs[2]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not self.store.registry.has_gv(g, v):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return json_response(openapi_v3_gv(self.store, g, v))

    # ---- test hooks
    async def hooks(self, request: web.Request, path: str) -> web.Response:
        if path == "/__standin/outage" and request.method == "POST":
            secs = float(request.query.get("seconds", "5"))
            self.outage_until = time.monotonic() + secs
            self.store.close_all_watches()
            return json_response({"outage": True, "seconds": secs})
        if path == "/__standin/compact" and request.method == "POST":
            self.store.compact()
            return json_response({"compacted": True, "resourceVersion": str(self.store.rv)})
        if path == "/__standin/state" and request.method == "GET":
            return json_response({"resourceVersion": str(self.store.rv), "watches": len(self.store.watchers),
                                  "outage": time.monotonic() < self.outage_until})
        raise ApiError(404, "NotFound", f"unknown stand-in hook {path}")

    # ---- resources
    async def body(self, request: web.Request) -> Any:
        raw = await request.read()
        ctype = request.content_type
        if not raw:
            return None
        if ctype == "application/vnd.kubernetes.protobuf":
            try:
                return kproto.decode(raw)
            except kproto.UnsupportedProto as e:
                raise ApiError(415, "UnsupportedMediaType",
                               f"the Kubernetes API stand-in cannot decode this protobuf body ({e}); "
                               f"send JSON instead (e.g. kubectl apply)") from None
        try:
            if "yaml" in ctype:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as e:
            raise ApiError(400, "BadRequest", f"the object provided is unrecognized: {e}") from None

    async def resource(self, request: web.Request, info: dict) -> web.StreamResponse:
        rt = self.store.registry.get(info["group"], info["version"], info["resource"])
        if rt is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        q = dict(request.query)
        name, sub, m = info["name"], info["subresource"], request.method
        if sub is not None and not ((sub == "status" and rt.status_sub) or (sub == "scale" and rt.scale)):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns = info["namespace"]
        if rt.namespaced and ns is None and (name is not None or m in ("POST",)):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rt.namespaced and ns is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        opts = {k: q[k] for k in ("fieldValidation", "fieldManager", "dryRun") if k in q}
        if "force" in q:
            opts["force"] = q["force"] in ("true", "1")

        if m == "GET" and (info["legacy_watch"] or q.get("watch") in ("true", "1")):
            if name:
                sel = f"metadata.name={name}"
                q["fieldSelector"] = f"{q['fieldSelector']},{sel}" if q.get("fieldSelector") else sel
            return await self.watch(request, rt, ns, q)
        if sub == "scale":
            return await self.scale(request, rt, ns or "", name, opts)
        if m == "GET" and name:
            obj = self.store.get(rt, ns or "", name)
            return self.render_one(request, rt, obj, q)
        if m == "GET":
            lst = self.store.list(rt, ns, q)
            if wants(request, "Table", ("v1", "v1beta1")):
                return json_response(table_for(rt, lst["items"], lst["metadata"], q.get("includeObject", "")),
                                     ctype="application/json;as=Table;v=v1;g=meta.k8s.io")
            if wants(request, "PartialObjectMetadataList"):
                lst = {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                       "metadata": lst["metadata"], "items": [partial(o) for o in lst["items"]]}
            return json_response(lst)
        if m == "POST" and not name:
            obj, warns = self.store.create(rt, ns or "", await self.body(request), opts)
            return self.render_one(request, rt, obj, q, 201, warns)
        if m == "PUT" and name:
            obj, warns = self.store.update(rt, ns or "", name, await self.body(request), sub, opts)
            return self.render_one(request, rt, obj, q, 200, warns)
        if m == "PATCH" and name:
            ctype = request.content_type
            ptype = {"application/merge-patch+json": "merge", "application/json-patch+json": "json",
                     "application/strategic-merge-patch+json": "strategic",
                     "application/apply-patch+yaml": "apply", "application/apply-patch+cbor": "cbor"}.get(ctype)
            if ptype in (None, "cbor"):
                raise ApiError(415, "UnsupportedMediaType",
                               "the body of the request was in an unknown format - accepted media types include: "
                               "application/json-patch+json, application/merge-patch+json, "
                               "application/apply-patch+yaml, application/strategic-merge-patch+json")
            raw = await request.read()
            try:
                patch = yaml.safe_load(raw) if ptype == "apply" else json.loads(raw or b"null")
            except (ValueError, yaml.YAMLError) as e:
                raise ApiError(400, "BadRequest", f"error decoding patch: {e}") from None
            obj, warns, created = self.store.patch(rt, ns or "", name, ptype, patch, sub, opts)
            return self.render_one(request, rt, obj, q, 201 if created else 200, warns)
        if m == "DELETE":
            body = await self.body(request) or {}
            if isinstance(body, dict):
                opts["preconditions"] = body.get("preconditions")
                if body.get("dryRun"):
                    opts["dryRun"] = body["dryRun"]
            if name:
                obj, _ = self.store.delete(rt, ns or "", name, opts)
                return json_response(obj)
            return json_response(self.store.deletecollection(rt, ns, q, opts))
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    async def scale(self, request: web.Request, rt: ResourceType, ns: str, name: str, opts: dict) -> web.Response:
        if request.method == "GET":
            return json_response(self.store.get_scale(rt, ns, name))
        if request.method == "PUT":
            return json_response(self.store.update_scale(rt, ns, name, await self.body(request), opts))
        if request.method == "PATCH":
            from kops import json_patch, merge_patch
            cur, raw = self.store.get_scale(rt, ns, name), await request.read()
            try:
                patch = json.loads(raw or b"null")
                new = json_patch(cur, patch) if request.content_type == "application/json-patch+json" \
                    else merge_patch(cur, patch)
            except ValueError as e:
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                                               f"{e}") from None
            return json_response(self.store.update_scale(rt, ns, name, new, opts))
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def render_one(self, request, rt, obj, q, status=200, warnings=()) -> web.Response:
        headers = {"Warning": ", ".join(f'299 - {json.dumps(w)}' for w in warnings)} if warnings else {}
        if obj.get("kind") == "Status":
            return json_response(obj, status, headers=headers)
        if request.method == "GET" and wants(request, "Table", ("v1", "v1beta1")):
            return json_response(table_for(rt, [obj], {"resourceVersion": obj["metadata"].get("resourceVersion")},
                                           q.get("includeObject", "")),
                                 ctype="application/json;as=Table;v=v1;g=meta.k8s.io")
        if wants(request, "PartialObjectMetadata"):
            obj = partial(obj)
        return json_response(obj, status, headers=headers)

    # ---- watch
    async def watch(self, request: web.Request, rt: ResourceType, ns: str | None, q: dict) -> web.StreamResponse:
        w = self.store.open_watch(rt, ns, q)  # may raise ApiError before the stream starts
        table = wants(request, "Table", ("v1", "v1beta1"))
        meta_only = wants(request, "PartialObjectMetadata")
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        next_bookmark = loop.time() + self.bookmark_interval
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                       "Cache-Control": "no-cache, private"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            while True:
                now = loop.time()
                waits = [next_bookmark - now if bookmarks else 3600.0]
                if deadline is not None:
                    waits.append(deadline - now)
                wait = max(0.0, min(waits))
                item = None
                if not w.queue.empty():
                    item = w.queue.get_nowait()
                elif wait > 0:
                    try:
                        item = await asyncio.wait_for(w.queue.get(), wait)
                    except asyncio.TimeoutError:
                        pass
                if item is None:
                    if deadline is not None and loop.time() >= deadline:
                        break
                    if bookmarks and loop.time() >= next_bookmark:
                        item = ("bookmark", str(self.store.rv), False)
                    else:
                        continue
                if item[0] == "close":
                    if item[1] is not None:
                        await resp.write(dumps({"type": "ERROR", "object": item[1]}) + b"\n")
                    break
                if item[0] == "bookmark":
                    next_bookmark = loop.time() + self.bookmark_interval
                    md: dict = {"resourceVersion": item[1]}
                    if item[2]:
                        md["annotations"] = {"k8s.io/initial-events-end": "true"}
                    kind, apiv = (("PartialObjectMetadata", "meta.k8s.io/v1") if meta_only
                                  else (rt.kind, rt.api_version))
                    ev = {"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": apiv, "metadata": md}}
                else:
                    obj = self.store.present(rt, item[2])
                    if table:
                        obj = table_for(rt, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                        q.get("includeObject", ""))
                    elif meta_only:
                        obj = partial(obj)
                    ev = {"type": item[1], "object": obj}
                await resp.write(dumps(ev) + b"\n")
        except ConnectionResetError:
            pass
        finally:
            self.store.close_watch(w)
        return resp


def write_kubeconfig(path: str, port: int) -> None:
    text = kubeconfig_text(port)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def kubeconfig_text(port: int) -> str:
    return (f"apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n"
            f"    server: http://127.0.0.1:{port}\ncontexts:\n- name: standin\n  context:\n"
            f"    cluster: standin\n    user: standin\n    namespace: default\ncurrent-context: standin\n"
            f"users:\n- name: standin\n  user: {{}}\n")


async def main_async(args: argparse.Namespace) -> None:
    srv = StandIn(args)
    app = web.Application(middlewares=[srv.middleware], client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", srv.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    srv.port = sock.getsockname()[1]
    site = web.SockSite(runner, sock, shutdown_timeout=0.5)
    await site.start()
    if args.kubeconfig:
        write_kubeconfig(args.kubeconfig, srv.port)
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(srv.port))
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"kube-standin listening on http://127.0.0.1:{srv.port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    srv.store.close_all_watches()
    await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description="Kubernetes API stand-in (test double)")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = pick a free one)")
    ap.add_argument("--port-file", help="write the bound port here once listening")
    ap.add_argument("--kubeconfig", help="write a kubeconfig for the server here once listening")
    ap.add_argument("--log-requests", help="append one JSON line per API request to this file")
    ap.add_argument("--history", type=int, default=1000, help="watch events kept per resource (default 1000)")
    ap.add_argument("--bookmark-interval", type=float, default=10.0,
                    help="seconds between BOOKMARK events on watches that allow them (default 10)")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
