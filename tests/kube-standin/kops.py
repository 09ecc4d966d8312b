"""Selectors and patch algorithms for the Kubernetes API stand-in (TEST DOUBLE).

Label/field selector parsing and matching, RFC 7386 merge patch, RFC 6902 JSON
patch, an approximation of strategic merge patch, and the helper that gives
server-side apply its "fields dropped from the applied config are removed"
behaviour.
"""
from __future__ import annotations

import copy
import re
from typing import Any


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        st = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            st["details"] = self.details
        return st


# ----------------------------------------------------------------------------- selectors

_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS1123_SUB = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(s: str | None) -> list[tuple]:
    if not s:
        return []
    reqs = []
    for part in _split_top(s):
        m = re.match(r"^([^\s!=<>(),]+)\s+(in|notin)\s*\(([^)]*)\)$", part)
        if m:
            vals = {v.strip() for v in m.group(3).split(",") if v.strip()}
            reqs.append((m.group(1), m.group(2), vals))
            continue
        m = re.match(r"^!\s*([^\s!=<>(),]+)$", part)
        if m:
            reqs.append((m.group(1), "!", None))
            continue
        m = re.match(r"^([^\s!=<>(),]+)\s*(==|!=|=|>|<)\s*([^\s!=<>(),]*)$", part)
        if m:
            op = "=" if m.group(2) == "==" else m.group(2)
            if op in "<>" and not re.match(r"^-?\d+$", m.group(3)):
                raise ApiError(400, "BadRequest", f"unable to parse requirement: for 'Gt', 'Lt' operators, "
                                                  f"the value must be an integer: {part}")
            reqs.append((m.group(1), op, m.group(3)))
            continue
        m = re.match(r"^([^\s!=<>(),]+)$", part)
        if m:
            reqs.append((m.group(1), "exists", None))
            continue
        raise ApiError(400, "BadRequest", f"unable to parse requirement: invalid label selector: {part!r}")
    return reqs


def labels_match(reqs: list[tuple], labels: dict | None) -> bool:
    labels = labels or {}
    for key, op, val in reqs:
        has = key in labels
        cur = labels.get(key)
        if op == "=" and cur != val:
            return False
        if op == "!=" and has and cur == val:
            return False
        if op == "in" and (not has or cur not in val):
            return False
        if op == "notin" and has and cur in val:
            return False
        if op == "exists" and not has:
            return False
        if op == "!" and has:
            return False
        if op in "<>":
            try:
                n = int(cur)
            except (TypeError, ValueError):
                return False
            if (op == ">" and not n > int(val)) or (op == "<" and not n < int(val)):
                return False
    return True


def parse_field_selector(s: str | None, rt) -> list[tuple]:
    """rt: the kstore.ResourceType (custom resources only allow metadata.* and selectableFields)."""
    if not s:
        return []
    allowed_cr = {"metadata.name", "metadata.namespace"}
    for sf in rt.selectable_fields:
        allowed_cr.add(sf.get("jsonPath", "").lstrip("."))
    reqs = []
    for part in [p.strip() for p in s.split(",") if p.strip()]:
        m = re.match(r"^([^=!]+?)\s*(==|!=|=)\s*(.*)$", part)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {part!r}")
        key, op, val = m.group(1), ("!=" if m.group(2) == "!=" else "="), m.group(3)
        if rt.crd_name and key not in allowed_cr:
            raise ApiError(400, "BadRequest", f'field label not supported: {key}')
        reqs.append((key, op, val))
    return reqs


def _field_value(obj: dict, path: str) -> str:
    cur: Any = obj
    for p in path.split("."):
        if not isinstance(cur, dict) or p not in cur:
            return ""
        cur = cur[p]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return "" if cur is None else str(cur)


def fields_match(reqs: list[tuple], obj: dict) -> bool:
    for key, op, val in reqs:
        cur = _field_value(obj, key)
        if (op == "=") != (cur == val):
            return False
    return True


# ----------------------------------------------------------------------------- patches

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (returns a new value)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _ptr(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"invalid JSON pointer {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (returns a new document; raises ValueError)."""
    if not isinstance(ops, list):
        raise ValueError("json patch must be an array of operations")
    doc = copy.deepcopy(doc)

    def walk(toks):
        cur = doc
        for t in toks[:-1]:
            if isinstance(cur, list):
                cur = cur[int(t)]
            elif isinstance(cur, dict):
                if t not in cur:
                    raise ValueError(f"doc is missing path: /{'/'.join(toks)}")
                cur = cur[t]
            else:
                raise ValueError(f"cannot traverse into /{'/'.join(toks)}")
        return cur

    def get(toks):
        cur = doc
        for t in toks:
            if isinstance(cur, list):
                cur = cur[int(t)]
            elif isinstance(cur, dict) and t in cur:
                cur = cur[t]
            else:
                raise ValueError(f"doc is missing path: /{'/'.join(toks)}")
        return cur

    def add(toks, val):
        nonlocal doc
        if not toks:
            doc = val
            return
        parent, last = walk(toks), toks[-1]
        if isinstance(parent, list):
            idx = len(parent) if last == "-" else int(last)
            if idx < 0 or idx > len(parent):
                raise ValueError(f"index out of range: /{'/'.join(toks)}")
            parent.insert(idx, val)
        elif isinstance(parent, dict):
            parent[last] = val
        else:
            raise ValueError(f"cannot add at /{'/'.join(toks)}")

    def remove(toks):
        parent, last = walk(toks), toks[-1]
        if isinstance(parent, list):
            idx = int(last)
            if idx < 0 or idx >= len(parent):
                raise ValueError(f"index out of range: /{'/'.join(toks)}")
            return parent.pop(idx)
        if isinstance(parent, dict) and last in parent:
            return parent.pop(last)
        raise ValueError(f"unable to remove nonexistent key: /{'/'.join(toks)}")

    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ValueError(f"invalid operation {op!r}")
        try:
            toks = _ptr(op["path"])
            kind = op["op"]
            if kind == "add":
                add(toks, copy.deepcopy(op.get("value")))
            elif kind == "remove":
                remove(toks)
            elif kind == "replace":
                get(toks)
                if not toks:
                    doc = copy.deepcopy(op.get("value"))
                else:
                    parent = walk(toks)
                    if isinstance(parent, list):
                        parent[int(toks[-1])] = copy.deepcopy(op.get("value"))
                    else:
                        parent[toks[-1]] = copy.deepcopy(op.get("value"))
            elif kind in ("move", "copy"):
                src = _ptr(op.get("from", ""))
                val = copy.deepcopy(get(src))
                if kind == "move":
                    remove(src)
                add(toks, val)
            elif kind == "test":
                # As the API server's json-patch library does: a missing path tests equal to
                # null (kube-rs' finalizer helper relies on it when adding the first finalizer).
                try:
                    current = get(toks)
                except ValueError:
                    current = None
                if current != op.get("value"):
                    raise ValueError(f"testing value /{'/'.join(toks)} failed")
            else:
                raise ValueError(f"unexpected operation {kind!r}")
        except (IndexError, KeyError, TypeError) as e:
            raise ValueError(f"{op.get('op')} {op.get('path')}: {e}") from None
    return doc


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """APPROXIMATION of a strategic merge patch for built-in kinds.

    Behaves like a JSON merge patch, plus: `$patch`/`$retainKeys`/
    `$deleteFromPrimitiveList`/`$setElementOrder` directives are understood
    or dropped, and lists whose elements are objects with a `name` key
    (containers, env, volumes, ports, ...) are merged by `name`. All other
    lists are replaced.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    orders = {}
    for k, v in patch.items():
        if k.startswith("$setElementOrder/"):
            orders[k.split("/", 1)[1]] = v
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            key = k.split("/", 1)[1]
            if isinstance(result.get(key), list):
                result[key] = [x for x in result[key] if x not in (v or [])]
            continue
        if k.startswith("$"):
            continue
        if v is None:
            result.pop(k, None)
        elif isinstance(v, list) and isinstance(result.get(k), list) and _named_list(v) and _named_list(result[k]):
            result[k] = _merge_named(result[k], v, orders.get(k))
        elif isinstance(v, list):
            result[k] = [_strip_directives(x) for x in v if not (isinstance(x, dict) and x.get("$patch") == "delete")]
        else:
            merged = strategic_merge_patch(result.get(k), v)
            if merged is None:
                result.pop(k, None)
            else:
                result[k] = merged
    for k, order in orders.items():
        if isinstance(result.get(k), list) and _named_list(result[k]) and isinstance(order, list):
            names = [o.get("name") for o in order if isinstance(o, dict)]
            result[k].sort(key=lambda e: names.index(e["name"]) if e["name"] in names else len(names))
    return result


def _named_list(lst: list) -> bool:
    return all(isinstance(x, dict) and "name" in x for x in lst)


def _strip_directives(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip_directives(x) for k, x in v.items() if not k.startswith("$")}
    if isinstance(v, list):
        return [_strip_directives(x) for x in v]
    return v


def _merge_named(cur: list, patch: list, order: list | None) -> list:
    out = [copy.deepcopy(x) for x in cur]
    for p in patch:
        idx = next((i for i, x in enumerate(out) if x["name"] == p["name"]), None)
        if p.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
        elif idx is None:
            out.append(_strip_directives(p))
        else:
            out[idx] = strategic_merge_patch(out[idx], p)
    return out


def apply_deletions(old_cfg: Any, new_cfg: Any) -> dict:
    """Merge patch that removes fields a field manager applied before but dropped now."""
    out: dict = {}
    if not isinstance(old_cfg, dict) or not isinstance(new_cfg, dict):
        return out
    for k, v in old_cfg.items():
        if k not in new_cfg:
            out[k] = None
        elif isinstance(v, dict) and isinstance(new_cfg[k], dict):
            sub = apply_deletions(v, new_cfg[k])
            if sub:
                out[k] = sub
    return out
