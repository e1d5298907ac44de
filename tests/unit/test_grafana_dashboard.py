"""The Grafana dashboard queries only metrics that exist, the way Ray's own dashboards do.

- Every `ray_wan_*` name is one serve_app/metrics.py exports, and every other
  `ray_*` name is one Ray's own Grafana dashboards (installed with Ray) query.
- Every exported metric has a panel, retries and the embedding cache included.
- Every selector carries the Cluster and Application variables, as Ray's Serve
  dashboards filter theirs, and every range is `$__rate_interval`, never a
  fixed window (which breaks at scrape intervals it was not written for).
"""

from __future__ import annotations

import importlib
import inspect
import json
import re

import pytest

from serve_app.metrics import NAMES
from serve_app.paths import CONFIG_DIR

DASHBOARD = CONFIG_DIR / "grafana" / "wan-serve-dashboard.json"
# A metric name and the label matchers that follow it, if any.
SELECTOR = re.compile(r"\b(ray_\w+)(\{[^}]*\})?")
RANGE = re.compile(r"\[([^\]]*)\]")
FILTERS = ('application=~"$Application"', 'ray_io_cluster=~"$Cluster"')
# Ray's dashboards (ray/dashboard/modules/metrics/dashboards) that chart what ours borrows.
RAY_DASHBOARDS = ("default_dashboard_panels", "serve_dashboard_panels", "serve_deployment_dashboard_panels")


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panel_exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def _variables(dashboard: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def _variable_queries(dashboard: dict) -> list[str]:
    return [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]


def _ray_dashboard_metrics() -> set[str]:
    names: set[str] = set()
    for module in RAY_DASHBOARDS:
        source = inspect.getsource(importlib.import_module(f"ray.dashboard.modules.metrics.dashboards.{module}"))
        names |= set(re.findall(r"\b(ray_[a-z_]+)", source))
    return names


def test_dashboard_queries_exported_metrics_and_ray_s_own():
    dashboard = _dashboard()
    used = {m.group(1) for e in _panel_exprs(dashboard) + _variable_queries(dashboard) for m in SELECTOR.finditer(e)}
    ours = {re.sub(r"_(bucket|sum|count)$", "", m.removeprefix("ray_")) for m in used if m.startswith("ray_wan_")}
    assert ours <= set(NAMES), f"not exported by serve_app/metrics.py: {sorted(ours - set(NAMES))}"
    assert set(NAMES) <= ours, f"exported but on no panel: {sorted(set(NAMES) - ours)}"
    ray_own = {m for m in used if not m.startswith("ray_wan_")}
    assert ray_own, "the dashboard borrows none of Ray's metrics: the check below would pass on nothing"
    unknown = ray_own - _ray_dashboard_metrics()
    assert not unknown, f"Ray's own dashboards query no such metric: {sorted(unknown)}"


def test_retries_and_the_embedding_cache_have_panels():
    titles = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in _dashboard()["panels"]}
    retries = [t for t, e in titles.items() if "ray_wan_job_retries_total" in e]
    assert retries and all("by (reason)" in titles[t] for t in retries)
    embedding = " ".join(e for e in titles.values() if "ray_wan_embedding_cache" in e)
    assert "ray_wan_embedding_cache_hits_total" in embedding and "ray_wan_embedding_cache_misses_total" in embedding


def test_cluster_and_application_variables_as_ray_s_dashboards_have_them():
    variables = _variables(_dashboard())
    cluster, application = variables["Cluster"], variables["Application"]
    assert "ray_io_cluster)" in cluster["query"]["query"]
    assert re.search(r'\{ray_io_cluster=~"\$Cluster"\}, application\)$', application["query"]["query"])
    for variable in (cluster, application):
        # "All" must also match series without the label (a Prometheus scraping one cluster).
        assert variable["includeAll"] and variable["allValue"] == ".*"
        assert variable["datasource"]["uid"] == "${datasource}"


def _problems(expr: str) -> list[str]:
    """What is wrong with one panel query: a fixed range, or a selector without the variables."""
    problems = [f"range [{r}]" for r in RANGE.findall(expr) if r != "$__rate_interval"]
    for match in SELECTOR.finditer(expr):
        missing = [f for f in FILTERS if f not in (match.group(2) or "")]
        problems += [f"{match.group(1)} without {f}" for f in missing]
    return problems


def test_every_selector_is_filtered_by_cluster_and_application_over_the_rate_interval():
    exprs = _panel_exprs(_dashboard())
    assert any(RANGE.search(e) for e in exprs), "no range vectors found: the pattern no longer matches the queries"
    assert {e: _problems(e) for e in exprs if _problems(e)} == {}


def test_panels_have_unique_ids_and_do_not_overlap():
    panels = _dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, f"panel {p['id']} runs past the 24-column grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {p['id']} overlap"
                cells[(x, y)] = p["id"]


@pytest.mark.parametrize(
    "expr, problem",
    [
        ('rate(ray_wan_jobs_total{application=~"$Application",ray_io_cluster=~"$Cluster"}[5m])', "range [5m]"),
        ('sum(ray_wan_jobs_in_flight{application=~"$Application"})', "ray_wan_jobs_in_flight without ray_io_cluster"),
        ("sum(ray_wan_jobs_in_flight)", 'ray_wan_jobs_in_flight without application=~"$Application"'),
    ],
)
def test_the_check_names_a_fixed_window_and_a_missing_filter(expr, problem):
    assert any(p.startswith(problem) for p in _problems(expr)), _problems(expr)
