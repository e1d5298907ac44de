"""Reading the session app's Prometheus endpoint (integration tests)."""

from __future__ import annotations

import re
import urllib.request

from tests.helpers.app import METRICS_PORT


def scrape() -> str:
    """The metrics endpoint's text, now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as resp:
        return resp.read().decode()


def samples(text: str, name: str) -> list[tuple[str, float]]:
    """(labels, value) of every sample of `name` (Ray prefixes custom metrics with ray_)."""
    pattern = re.compile(rf"^ray_{name}(\{{[^}}]*\}})? ([0-9.eE+-]+)$", re.M)
    return [(m.group(1) or "", float(m.group(2))) for m in pattern.finditer(text)]


def total(text: str, name: str, label: str = "") -> float:
    """The sum of `name`'s samples whose labels contain `label`."""
    return sum(v for labels, v in samples(text, name) if label in labels)
