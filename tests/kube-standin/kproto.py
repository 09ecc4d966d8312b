"""Minimal Kubernetes protobuf *request body* decoder for the API stand-in (TEST DOUBLE).

client-go's typed clientsets (kubectl's imperative `create ns|cm|secret|sa|role...`,
Helm's release storage) send built-in objects as `application/vnd.kubernetes.protobuf`
(since Kubernetes 1.31). The stand-in always *answers* in JSON (those clients
accept JSON too); it only needs to read such bodies.

Only the messages listed in SCHEMAS are understood. Decoding is strict: a field
number that is not in the table raises UnsupportedProto, so the server answers
415 instead of silently dropping data.
"""
from __future__ import annotations

import base64
from datetime import datetime, timezone

MAGIC = b"k8s\x00"


class UnsupportedProto(Exception):
    pass


# field spec: number -> (json name, type, sub-message or None, flags)
# types: str, bytes, int, bool, msg, time, map_ss (map<string,string>), map_sb (map<string,bytes>)
# flags: "rep" repeated, "ptr" keep zero values (Go pointer fields)
def F(name, typ, sub=None, *flags):
    return (name, typ, sub, set(flags))


SCHEMAS: dict[str, dict[int, tuple]] = {
    "Unknown": {1: F("typeMeta", "msg", "TypeMeta"), 2: F("raw", "bytes"), 3: F("contentEncoding", "str"),
                4: F("contentType", "str")},
    "TypeMeta": {1: F("apiVersion", "str"), 2: F("kind", "str")},
    "ObjectMeta": {
        1: F("name", "str"), 2: F("generateName", "str"), 3: F("namespace", "str"), 4: F("selfLink", "str"),
        5: F("uid", "str"), 6: F("resourceVersion", "str"), 7: F("generation", "int"),
        8: F("creationTimestamp", "time"), 9: F("deletionTimestamp", "time"),
        10: F("deletionGracePeriodSeconds", "int", None, "ptr"), 11: F("labels", "map_ss"),
        12: F("annotations", "map_ss"), 13: F("ownerReferences", "msg", "OwnerReference", "rep"),
        14: F("finalizers", "str", None, "rep"), 15: F("clusterName", "skip"), 17: F("managedFields", "skip")},
    "OwnerReference": {1: F("kind", "str"), 3: F("name", "str"), 4: F("uid", "str"), 5: F("apiVersion", "str"),
                       6: F("controller", "bool", None, "ptr"), 7: F("blockOwnerDeletion", "bool", None, "ptr")},
    "Namespace": {1: F("metadata", "msg", "ObjectMeta"), 2: F("spec", "msg", "NamespaceSpec"),
                  3: F("status", "skip")},
    "NamespaceSpec": {1: F("finalizers", "str", None, "rep")},
    "ConfigMap": {1: F("metadata", "msg", "ObjectMeta"), 2: F("data", "map_ss"), 3: F("binaryData", "map_sb"),
                  4: F("immutable", "bool", None, "ptr")},
    "Secret": {1: F("metadata", "msg", "ObjectMeta"), 2: F("data", "map_sb"), 3: F("type", "str"),
               4: F("stringData", "map_ss"), 5: F("immutable", "bool", None, "ptr")},
    "ServiceAccount": {1: F("metadata", "msg", "ObjectMeta"), 2: F("secrets", "msg", "ObjectReference", "rep"),
                       3: F("imagePullSecrets", "msg", "LocalObjectReference", "rep"),
                       4: F("automountServiceAccountToken", "bool", None, "ptr")},
    "ObjectReference": {1: F("kind", "str"), 2: F("namespace", "str"), 3: F("name", "str"), 4: F("uid", "str"),
                        5: F("apiVersion", "str"), 6: F("resourceVersion", "str"), 7: F("fieldPath", "str")},
    "LocalObjectReference": {1: F("name", "str")},
    "Role": {1: F("metadata", "msg", "ObjectMeta"), 2: F("rules", "msg", "PolicyRule", "rep")},
    "ClusterRole": {1: F("metadata", "msg", "ObjectMeta"), 2: F("rules", "msg", "PolicyRule", "rep")},
    "PolicyRule": {1: F("verbs", "str", None, "rep"), 2: F("apiGroups", "str", None, "rep"),
                   3: F("resources", "str", None, "rep"), 4: F("resourceNames", "str", None, "rep"),
                   5: F("nonResourceURLs", "str", None, "rep")},
    "RoleBinding": {1: F("metadata", "msg", "ObjectMeta"), 2: F("subjects", "msg", "Subject", "rep"),
                    3: F("roleRef", "msg", "RoleRef")},
    "ClusterRoleBinding": {1: F("metadata", "msg", "ObjectMeta"), 2: F("subjects", "msg", "Subject", "rep"),
                           3: F("roleRef", "msg", "RoleRef")},
    "Subject": {1: F("kind", "str"), 2: F("apiGroup", "str"), 3: F("name", "str"), 4: F("namespace", "str")},
    "RoleRef": {1: F("apiGroup", "str"), 2: F("kind", "str"), 3: F("name", "str")},
    "DeleteOptions": {1: F("gracePeriodSeconds", "int", None, "ptr"), 2: F("preconditions", "msg", "Preconditions"),
                      3: F("orphanDependents", "bool", None, "ptr"), 4: F("propagationPolicy", "str"),
                      5: F("dryRun", "str", None, "rep"),
                      6: F("ignoreStoreReadErrorWithClusterBreakingPotential", "bool", None, "ptr")},
    "Preconditions": {1: F("uid", "str"), 2: F("resourceVersion", "str")},
    "Time": {1: F("seconds", "int"), 2: F("nanos", "int")},
    "MapEntry": {1: F("key", "str"), 2: F("value", "bytes")},
}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise UnsupportedProto("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            val, i = buf[i:i + n], i + n
        elif wt == 1:
            val, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wt == 5:
            val, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            raise UnsupportedProto(f"unsupported wire type {wt}")
        yield num, wt, val


def _empty(v) -> bool:
    return v in ("", 0, False, None) or v == {} or v == []


def decode_message(buf: bytes, msg: str) -> dict:
    schema = SCHEMAS[msg]
    out: dict = {}
    for num, wt, val in _fields(buf):
        if num not in schema:
            raise UnsupportedProto(f"field {num} of {msg}")
        name, typ, sub, flags = schema[num]
        if typ == "skip":
            continue
        if typ in ("map_ss", "map_sb"):
            entry = decode_message(val, "MapEntry")
            raw = entry.get("value", b"")
            v = base64.b64encode(raw).decode() if typ == "map_sb" else raw.decode()
            out.setdefault(name, {})[entry.get("key", "")] = v
            continue
        if typ == "str":
            v = val.decode()
        elif typ == "bytes":
            v = val
        elif typ == "int":
            v = val - (1 << 64) if val >= 1 << 63 else val
        elif typ == "bool":
            v = bool(val)
        elif typ == "time":
            t = decode_message(val, "Time")
            v = (datetime.fromtimestamp(t.get("seconds", 0), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                 if t else None)
        else:
            v = decode_message(val, sub)
        if "rep" in flags:
            out.setdefault(name, []).append(v)
        elif not _empty(v) or "ptr" in flags:
            out[name] = v
    return out


def _prune(d):
    if isinstance(d, dict):
        return {k: _prune(v) for k, v in d.items() if not (isinstance(v, dict) and not v)}
    if isinstance(d, list):
        return [_prune(x) for x in d]
    return d


def decode(body: bytes) -> dict:
    """Decode a `k8s\\0`-prefixed protobuf body into the JSON-shaped object."""
    if not body.startswith(MAGIC):
        raise UnsupportedProto("missing k8s protobuf envelope")
    unk = decode_message(body[len(MAGIC):], "Unknown")
    tm = unk.get("typeMeta", {})
    kind = tm.get("kind", "")
    if kind not in SCHEMAS or kind in ("Unknown", "TypeMeta", "Time", "MapEntry"):
        raise UnsupportedProto(f"kind {kind or '?'}")
    obj = decode_message(unk.get("raw", b""), kind)
    if tm.get("apiVersion"):
        obj = {"apiVersion": tm["apiVersion"], "kind": kind, **obj}
    else:
        obj = {"kind": kind, **obj}
    return _prune(obj)
