"""The chart's Grafana dashboards (helm/smartspec/dashboards/*.json): load them, list every PromQL
expression (panel targets and template-variable queries) and expand Grafana's variables the way
Grafana would before sending a query to Prometheus."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parents[2] / "helm" / "smartspec" / "dashboards"

_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*(\w+)\s*\)\s*$", re.S)
_SELECTOR = re.compile(r"\b(smartspec_\w+)\s*(\{[^}]*\})?")
_BRACES = re.compile(r"\{[^}]*\}")


@dataclass(frozen=True)
class Query:
    dashboard: str  # the file name
    where: str  # "panel 'Title' A" or "variable namespace"
    expr: str

    @property
    def label_values(self) -> tuple[str, str] | None:
        """(series selector, label) for a `label_values(selector, label)` variable query, else None."""
        m = _LABEL_VALUES.match(self.expr)
        return (m.group(1), m.group(2)) if m else None


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((DASHBOARDS / name).read_text()))


def dashboard_files() -> list[str]:
    return sorted(p.name for p in DASHBOARDS.glob("*.json"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows; rows themselves too."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return str(query.get("query", "") if isinstance(query, dict) else query)


def queries(name: str) -> list[Query]:
    dashboard = load(name)
    out = [Query(name, f"variable {v['name']}", variable_query(v))
           for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            out.append(Query(name, f"panel {panel['id']} {panel['title']!r} {target.get('refId', '?')}",
                             str(target.get("expr", ""))))
    return out


def expand(expr: str, values: dict[str, str]) -> str:
    """Replace $name / ${name} / ${name:format} with values[name]; an unknown variable raises KeyError."""
    return _VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, label matchers without braces) for every smartspec_* series selector in `expr`
    (names inside {...}, such as the label smartspec_service, are not selectors)."""
    inside = [m.span() for m in _BRACES.finditer(expr)]
    out = []
    for m in _SELECTOR.finditer(expr):
        if any(a <= m.start() < b for a, b in inside):
            continue
        out.append((m.group(1), (m.group(2) or "{}")[1:-1]))
    return out
