"""The Grafana dashboard queries only metrics the service exports."""

from __future__ import annotations

import json
import re

from serve_app.metrics import NAMES
from serve_app.paths import CONFIG_DIR

DASHBOARD = CONFIG_DIR / "grafana" / "wan-serve-dashboard.json"


def test_dashboard_queries_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"ray_(wan_\w+)", e)}
    assert queried, "the dashboard queries none of the service's metrics"
    assert queried <= set(NAMES), f"not exported: {sorted(queried - set(NAMES))}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
