"""What the API server does to a custom object before storing it: defaults, openAPIV3Schema and CEL rules.

No kube-apiserver installs here, so tests admit every SpeculativeService/SpeculationPolicy
through this: structural defaulting, JSON-schema validation of the CRD's openAPIV3Schema (OpenAPI 3.0 is
draft-4 flavoured: boolean exclusiveMinimum), and each `x-kubernetes-validations` rule evaluated by a
real CEL interpreter (cel-python) with `self` bound to the value at that node.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy.adapter import json_to_cel

CRD_DIR = Path(__file__).resolve().parents[1] / "helm" / "smartspec" / "crds"
GROUP_VERSION = "smartspec.io/v1alpha1"


class Invalid(ValueError):
    """The object would be refused with 422 Invalid; the message lists every failed rule."""


@functools.cache
def crds() -> dict[str, dict[str, Any]]:
    """kind -> CRD, read from the chart's crds/ folder."""
    out = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        out[crd["spec"]["names"]["kind"]] = crd
    return out


def schema(kind: str) -> dict[str, Any]:
    version = crds()[kind]["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]


def admit(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of `obj` with defaults applied, or Invalid with the reasons (spec only: status is a subresource)."""
    kind = obj.get("kind")
    if obj.get("apiVersion") != GROUP_VERSION or kind not in crds():
        raise Invalid(f"not a smartspec custom object: {obj.get('apiVersion')}/{kind}")
    out = copy.deepcopy(obj)
    root = schema(kind)
    _default(out, root)
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
              for e in jsonschema.Draft4Validator(root).iter_errors(out)]
    if not errors:  # CEL runs on a schema-valid object, as in the API server
        errors = _cel(out, root, "")
    if errors:
        raise Invalid(f"{kind} {out.get('metadata', {}).get('name')!r} is invalid: " + "; ".join(errors))
    return out


def _default(value: Any, node: dict[str, Any]) -> None:
    """Structural defaulting: fill absent properties that declare a default, then recurse."""
    if isinstance(value, dict):
        for name, sub in node.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _default(value[name], sub)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in node.get("properties", {}):
                    _default(value[key], extra)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            _default(item, node["items"])


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel(value: Any, node: dict[str, Any], path: str) -> list[str]:
    errors = []
    for check in node.get("x-kubernetes-validations", []):
        if not _program(check["rule"]).evaluate({"self": json_to_cel(value)}):
            errors.append(f"{(path + check.get('fieldPath', '')).lstrip('.') or '<root>'}: "
                          f"{check.get('message', 'failed rule: ' + check['rule'])}")
    if isinstance(value, dict):
        for name, sub in node.get("properties", {}).items():
            if name in value:
                errors += _cel(value[name], sub, f"{path}.{name}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            errors += _cel(item, node["items"], f"{path}[{i}]")
    return errors


def printer_row(obj: dict[str, Any]) -> dict[str, Any]:
    """What `kubectl get` shows for `obj`: each additionalPrinterColumn's JSONPath evaluated (the subset the
    CRDs use: dotted fields and one `[?(@.field=="value")]` filter)."""
    version = crds()[obj["kind"]]["spec"]["versions"][0]
    return {col["name"]: _jsonpath(obj, col["jsonPath"]) for col in version["additionalPrinterColumns"]}


def _jsonpath(obj: Any, expr: str) -> Any:
    import re

    value = obj
    for part in re.findall(r'\.([A-Za-z0-9_]+)|\[\?\(@\.(\w+)=="([^"]*)"\)\]', expr):
        field, key, want = part
        if field:
            value = value.get(field) if isinstance(value, dict) else None
        else:
            value = next((v for v in value or [] if isinstance(v, dict) and v.get(key) == want), None)
        if value is None:
            return None
    return value
