"""CRD structural-schema handling for the Kubernetes API stand-in (TEST DOUBLE).

Implements the parts of apiextensions-apiserver's behaviour that clients can
observe: pruning of unknown fields, defaulting, and OpenAPI v3 validation with
error messages shaped like the real server's field errors.

Not implemented: CEL rules (x-kubernetes-validations), x-kubernetes-list-type
uniqueness, string formats other than being accepted, oneOf/anyOf/allOf/not.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

# ObjectMeta fields the real server keeps; anything else under metadata is pruned.
OBJECT_META_FIELDS = {
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion",
    "generation", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences",
    "finalizers", "managedFields",
}


@dataclass
class FieldError:
    path: str
    kind: str  # Invalid | Required | Unsupported | TooMany | Forbidden
    value: Any = None
    detail: str = ""
    supported: list = field(default_factory=list)

    def body(self) -> str:
        """The message without the leading field path (as in Status causes)."""
        if self.kind == "Required":
            return "Required value" + (f": {self.detail}" if self.detail else "")
        if self.kind == "Unsupported":
            sup = ", ".join(json.dumps(s) for s in self.supported)
            return f"Unsupported value: {go_value(self.value)}: supported values: {sup}"
        if self.kind == "Forbidden":
            return f"Forbidden: {self.detail}"
        if self.kind == "TooMany":
            return f"Too many: {self.value}: {self.detail}"
        return f"Invalid value: {go_value(self.value)}: {self.detail}"

    def message(self) -> str:
        return f"{self.path}: {self.body()}" if self.path else self.body()

    def cause(self) -> dict:
        reason = {
            "Required": "FieldValueRequired",
            "Unsupported": "FieldValueNotSupported",
            "TooMany": "FieldValueTooMany",
            "Forbidden": "FieldValueForbidden",
        }.get(self.kind, "FieldValueInvalid")
        return {"reason": reason, "message": self.body(), "field": self.path}


def go_value(v: Any) -> str:
    """Render a value roughly like Go's %#v does in field.Invalid messages."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and v.is_integer():
            return str(int(v)) if abs(v) < 1e21 else repr(v)
        return str(v)
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_ok(v: Any, t: str) -> bool:
    if t == "object":
        return isinstance(v, dict)
    if t == "array":
        return isinstance(v, list)
    if t == "string":
        return isinstance(v, str)
    if t == "boolean":
        return isinstance(v, bool)
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return True


def _preserves(schema: dict) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields")) or schema.get("additionalProperties") is True


# ----------------------------------------------------------------------------- pruning

def prune(obj: Any, schema: dict | None, path: str = "", root: bool = True, pruned: list | None = None) -> list:
    """Remove fields not declared by the structural schema, in place.

    Returns the list of pruned field paths (used for fieldValidation=Strict/Warn).
    """
    if pruned is None:
        pruned = []
    if schema is None:
        return pruned
    if root and isinstance(obj, dict):
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            for k in list(meta):
                if k not in OBJECT_META_FIELDS:
                    del meta[k]
                    pruned.append(child("metadata", k))
    if isinstance(obj, dict):
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        keep_always = set()
        if root or schema.get("x-kubernetes-embedded-resource"):
            keep_always = {"apiVersion", "kind", "metadata"}
        for k in list(obj):
            if k in keep_always and (root or k not in (props or {})):
                continue
            if props is not None and k in props:
                prune(obj[k], props[k], child(path, k), False, pruned)
            elif isinstance(addl, dict):
                prune(obj[k], addl, f"{path}[{k}]", False, pruned)
            elif _preserves(schema):
                continue
            else:
                del obj[k]
                pruned.append(child(path, k))
    elif isinstance(obj, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, it in enumerate(obj):
                prune(it, items, f"{path}[{i}]", False, pruned)
    return pruned


# ----------------------------------------------------------------------------- defaulting

def apply_defaults(obj: Any, schema: dict | None) -> None:
    """Apply `default` values from the schema, in place (parents must exist)."""
    if schema is None:
        return
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        for k, ps in props.items():
            if not isinstance(ps, dict):
                continue
            if "default" in ps and (k not in obj or (obj[k] is None and not ps.get("nullable"))):
                obj[k] = copy.deepcopy(ps["default"])
            if k in obj:
                apply_defaults(obj[k], ps)
        addl = schema.get("additionalProperties")
        if isinstance(addl, dict):
            for k, v in obj.items():
                if k not in props:
                    apply_defaults(v, addl)
    elif isinstance(obj, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, it in enumerate(obj):
                if it is None and "default" in items and not items.get("nullable"):
                    obj[i] = copy.deepcopy(items["default"])
                apply_defaults(obj[i], items)


# ----------------------------------------------------------------------------- validation

def validate(obj: Any, schema: dict | None, path: str = "") -> list[FieldError]:
    errs: list[FieldError] = []
    if schema is None:
        return errs
    _validate(obj, schema, path, errs, root=(path == ""))
    return errs


def _num_str(n: Any) -> str:
    if isinstance(n, float) and n.is_integer():
        return str(int(n))
    return str(n)


def _validate(v: Any, s: dict, path: str, errs: list, root: bool = False) -> None:
    if not isinstance(s, dict):
        return
    label = path or "body"
    t = s.get("type")
    int_or_string = bool(s.get("x-kubernetes-int-or-string"))

    if v is None:
        if s.get("nullable") or (not t and not int_or_string):
            return
        want = t or "integer,string"
        errs.append(FieldError(path, "Invalid", "null", f"{label} in body must be of type {want}: \"null\""))
        return

    if int_or_string:
        if not (_type_ok(v, "integer") or _type_ok(v, "string")):
            errs.append(FieldError(path, "Invalid", json_type(v),
                                   f"{label} in body must be of type integer,string: {json.dumps(json_type(v))}"))
            return
    elif t and not _type_ok(v, t):
        errs.append(FieldError(path, "Invalid", json_type(v),
                               f"{label} in body must be of type {t}: {json.dumps(json_type(v))}"))
        return

    if "enum" in s and isinstance(s["enum"], list) and v not in s["enum"]:
        errs.append(FieldError(path, "Unsupported", v, supported=s["enum"]))

    if isinstance(v, (int, float)) and not isinstance(v, bool):
        mx, mn = s.get("maximum"), s.get("minimum")
        if mx is not None:
            if s.get("exclusiveMaximum") is True and v >= mx:
                errs.append(FieldError(path, "Invalid", v, f"{label} in body should be less than {_num_str(mx)}"))
            elif v > mx:
                errs.append(FieldError(path, "Invalid", v,
                                       f"{label} in body should be less than or equal to {_num_str(mx)}"))
        if mn is not None:
            if s.get("exclusiveMinimum") is True and v <= mn:
                errs.append(FieldError(path, "Invalid", v, f"{label} in body should be greater than {_num_str(mn)}"))
            elif v < mn:
                errs.append(FieldError(path, "Invalid", v,
                                       f"{label} in body should be greater than or equal to {_num_str(mn)}"))
        mo = s.get("multipleOf")
        if mo and (v / mo) != int(v / mo):
            errs.append(FieldError(path, "Invalid", v, f"{label} in body should be a multiple of {_num_str(mo)}"))

    if isinstance(v, str):
        if s.get("maxLength") is not None and len(v) > s["maxLength"]:
            errs.append(FieldError(path, "Invalid", v,
                                   f"{label} in body should be at most {s['maxLength']} chars long"))
        if s.get("minLength") is not None and len(v) < s["minLength"]:
            errs.append(FieldError(path, "Invalid", v,
                                   f"{label} in body should be at least {s['minLength']} chars long"))
        pat = s.get("pattern")
        if pat:
            try:
                ok = re.search(_go_regex(pat), v) is not None
            except re.error:
                ok = True
            if not ok:
                errs.append(FieldError(path, "Invalid", v, f"{label} in body should match '{pat}'"))

    if isinstance(v, list):
        if s.get("maxItems") is not None and len(v) > s["maxItems"]:
            errs.append(FieldError(path, "TooMany", len(v), f"must have at most {s['maxItems']} items"))
        if s.get("minItems") is not None and len(v) < s["minItems"]:
            errs.append(FieldError(path, "Invalid", len(v),
                                   f"{label} in body should have at least {s['minItems']} items"))
        if s.get("uniqueItems"):
            seen = []
            for it in v:
                if it in seen:
                    errs.append(FieldError(path, "Invalid", v, f"{label} in body shouldn't contain duplicates"))
                    break
                seen.append(it)
        items = s.get("items")
        if isinstance(items, dict):
            for i, it in enumerate(v):
                _validate(it, items, f"{path}[{i}]", errs)

    if isinstance(v, dict):
        props = s.get("properties") or {}
        for req in s.get("required") or []:
            if req not in v:
                errs.append(FieldError(child(path, req), "Required"))
        if s.get("maxProperties") is not None and len(v) > s["maxProperties"]:
            errs.append(FieldError(path, "TooMany", len(v), f"must have at most {s['maxProperties']} items"))
        if s.get("minProperties") is not None and len(v) < s["minProperties"]:
            errs.append(FieldError(path, "Invalid", len(v),
                                   f"{label} in body should have at least {s['minProperties']} properties"))
        addl = s.get("additionalProperties")
        for k, val in v.items():
            if root and k in ("apiVersion", "kind", "metadata") and k not in props:
                continue
            if root and k == "metadata":
                continue  # metadata is validated by the generic ObjectMeta checks
            if k in props:
                _validate(val, props[k], child(path, k), errs)
            elif isinstance(addl, dict):
                _validate(val, addl, f"{path}[{k}]", errs)


def _go_regex(pat: str) -> str:
    """Translate the few RE2 constructs Python spells differently."""
    return pat.replace(r"\z", r"\Z")


# ----------------------------------------------------------------------------- helpers

def check_crd_schema(schema: Any) -> list[str]:
    """Light sanity checks on a CRD's openAPIV3Schema (returns problems)."""
    problems = []
    if schema is None:
        return problems
    if not isinstance(schema, dict):
        return ["openAPIV3Schema must be an object"]
    if schema.get("type") not in (None, "object"):
        problems.append("spec.versions[].schema.openAPIV3Schema.type: must be object at the root")
    _walk_patterns(schema, "openAPIV3Schema", problems)
    return problems


def _walk_patterns(s: Any, path: str, problems: list) -> None:
    if not isinstance(s, dict):
        return
    if isinstance(s.get("pattern"), str):
        try:
            re.compile(_go_regex(s["pattern"]))
        except re.error as e:
            problems.append(f"{path}.pattern: Invalid value: {json.dumps(s['pattern'])}: {e}")
    for k, sub in (s.get("properties") or {}).items():
        _walk_patterns(sub, f"{path}.properties[{k}]", problems)
    if isinstance(s.get("items"), dict):
        _walk_patterns(s["items"], f"{path}.items", problems)
    if isinstance(s.get("additionalProperties"), dict):
        _walk_patterns(s["additionalProperties"], f"{path}.additionalProperties", problems)
