"""The chart's Grafana dashboards: their structure, the label contract every query keeps, and every
PromQL expression in them run against a real Prometheus scraping a real target and controller.

The scrape targets carry the labels the chart's ServiceMonitor adds in a cluster (`namespace`,
`smartspec_service` from the Service label smartspec.io/service, `pod`) as static labels here.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from tests.integration import dashboards
from tests.integration.conftest import LoopThread
from tests.integration.control_plane import complete_many, set_spec, start_controller, stop_all, wait_for
from tests.integration.dashboards import Query
from tests.integration.prometheus import Prometheus
from tests.integration.services import start_stack

FILES = {"overview.json": "smartspec-overview", "speculation.json": "smartspec-speculation"}
PANEL_TYPES = {"timeseries", "stat", "bargauge", "heatmap", "gauge", "table"}
SERVICE_FILTERS = ('namespace="$namespace"', 'smartspec_service="$service"')
REPLICA_FILTER = 'pod=~"$replica"'

NAMESPACE, SERVICE, TARGET_POD, CONTROLLER_POD = "default", "smartspec", "smartspec-target-0", "smartspec-controller-0"
# What Grafana sends for these variables: one namespace and service, "All" replicas as a regex
# alternation, and concrete windows ($__rate_interval and $__range cover the whole test, so the
# rates see all of its load).
VALUES = {"namespace": NAMESPACE, "service": SERVICE, "replica": f"({TARGET_POD})", "__rate_interval": "1m",
          "__range": "1m"}
EXPECTED_LABEL_VALUES = {"namespace": NAMESPACE, "smartspec_service": SERVICE, "pod": TARGET_POD}


def all_queries() -> list[Query]:
    return [q for name in sorted(FILES) for q in dashboards.queries(name)]


def test_dashboards_structure() -> None:
    assert set(dashboards.dashboard_files()) == set(FILES)
    for name, uid in FILES.items():
        d = dashboards.load(name)
        assert d["uid"] == uid and d["title"] and "smartspec" in d["tags"] and d["schemaVersion"] >= 36, name
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        for var in ("namespace", "service", "replica"):
            assert variables[var]["type"] == "query", (name, var)
            assert variables[var]["datasource"]["uid"] == "${datasource}", (name, var)
        assert variables["replica"]["multi"] and variables["replica"]["includeAll"], name
        # Chained: service within the namespace, replicas within both.
        assert '"$namespace"' in dashboards.variable_query(variables["service"]), name
        assert all(f in dashboards.variable_query(variables["replica"]) for f in SERVICE_FILTERS), name

        ids: list[int] = []
        titles: list[str] = []
        for panel in dashboards.panels(d):
            ids.append(panel["id"])
            titles.append(panel["title"])
            pos = panel["gridPos"]
            assert {"h", "w", "x", "y"} <= set(pos) and pos["x"] + pos["w"] <= 24, (name, panel["title"])
            if panel["type"] == "row":
                continue
            where = (name, panel["title"])
            assert panel["type"] in PANEL_TYPES, where
            assert panel.get("description"), where
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            targets = panel.get("targets", [])
            assert targets and all(t.get("expr", "").strip() for t in targets), where
            assert len({t["refId"] for t in targets}) == len(targets), where
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        assert len(titles) == len(set(titles)), f"{name}: duplicate panel titles"


def test_every_query_keeps_the_label_contract() -> None:
    """Every series selector filters by namespace and service; target series also by replica (the
    controller's are per service, not per replica)."""
    bad: list[str] = []
    for q in all_queries():
        lv = q.label_values
        expr = lv[0] if lv else q.expr
        found = dashboards.selectors(expr)
        if not found:
            bad.append(f"{q.dashboard} {q.where}: no smartspec_* selector in {q.expr!r}")
        if lv:  # variable queries filter by the variables before them
            continue
        for metric, matchers in found:
            need = SERVICE_FILTERS + (() if metric.startswith("smartspec_controller_") else (REPLICA_FILTER,))
            missing = [f for f in need if f not in matchers]
            if missing:
                bad.append(f"{q.dashboard} {q.where}: {metric} lacks {missing}")
    assert not bad, "\n".join(bad)


def _label_values(prom: Prometheus, label: str, selector: str) -> list[str]:
    r = httpx.get(f"{prom.url}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=10)
    body = r.json()
    if r.status_code != 200 or body.get("status") != "success":
        raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
    return list(body["data"])


def _problem(prom: Prometheus, q: Query) -> str | None:
    """Why the expanded query does not yet give what its panel or variable needs, or None."""
    try:
        expr = dashboards.expand(q.expr, VALUES)
    except KeyError as exc:
        return f"unknown variable {exc}"
    lv = q.label_values
    try:
        if lv is not None:
            selector, label = lv
            values = _label_values(prom, label, dashboards.expand(selector, VALUES))
            if values != [EXPECTED_LABEL_VALUES[label]]:
                return f"label {label} values {values}, want [{EXPECTED_LABEL_VALUES[label]!r}]"
            return None
        result = prom.query(expr)
    except (ValueError, httpx.HTTPError) as exc:
        return str(exc)
    if not result:
        return "no samples"
    if not any(math.isfinite(float(s["value"][1])) for s in result):
        return f"only non-finite values: {[s['value'][1] for s in result]}"
    return None


def test_every_dashboard_query_returns_data(loop_thread: LoopThread, tiny_svc_models: dict[str, Any],
                                            redis_db: Any) -> None:
    queries = all_queries()
    assert len(queries) > 40
    # Every panel needs drafts inside its rate window. Under goodput the tiny pair (a draft forward costs
    # about what a target forward does) rightly settles at k = 0 once its costs are fitted, so pin k.
    set_spec(redis_db.client(), "smartspec", {"mode": "fixed", "maxSpeculationLength": 8,
                                              "fixedSpeculationLength": 3})
    ctl = start_controller(loop_thread, redis_db.url, min_fit_samples=16)
    stack = start_stack(loop_thread, tiny_svc_models, redis_url=redis_db.url, policy="fixed", fixed_k=3)
    common = {"namespace": NAMESPACE, "smartspec_service": SERVICE}
    prom = Prometheus({"target": stack.url.removeprefix("http://"), "controller": f"127.0.0.1:{ctl.http_port}"},
                      labels={"target": {**common, "pod": TARGET_POD}, "controller": {**common, "pod": CONTROLLER_POD}})
    try:
        wait_for(prom.targets_up, 10, "both scrape targets up", every_s=0.1)
        for _ in range(3):
            complete_many(stack.url, ["def f(x):", "import re\n", "SELECT 1", "# note", "x = 1"], max_tokens=24)
        wait_for(lambda: ctl.last_fit is not None, 10, "a cost-model fit in the controller")
        failing: dict[str, str] = {}

        def all_answer() -> bool:
            failing.clear()
            for q in queries:
                problem = _problem(prom, q)
                if problem is not None:
                    failing[f"{q.dashboard} {q.where}: {q.expr}"] = problem
            return not failing

        try:
            wait_for(all_answer, 20, "every dashboard query to return data", every_s=0.5)
        except AssertionError:
            lines = "\n".join(f"  {where}\n    -> {problem}" for where, problem in failing.items())
            raise AssertionError(f"{len(failing)} of {len(queries)} dashboard queries fail:\n{lines}") from None
    finally:
        stop_all(prom.stop, stack.stop, lambda: loop_thread.run(ctl.stop()))
