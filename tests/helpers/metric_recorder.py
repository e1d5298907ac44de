"""Recording what serve_app/metrics.py reports, without Ray (unit tests).

`record_metrics(monkeypatch)` turns metrics on and replaces the one place
that builds Ray metric objects (`metrics._make`) with recorders, so a test
runs the service's real reporting calls (names, tags, values) and reads back
what reached each metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serve_app import metrics


@dataclass
class RecordedMetric:
    kind: str
    name: str
    tag_keys: tuple[str, ...]
    # (method, value, tags) per call: inc, set or observe.
    calls: list[tuple[str, float, dict[str, str]]] = field(default_factory=list)

    def _record(self, method: str, value: float, tags: dict[str, str] | None) -> None:
        tags = dict(tags or {})
        assert set(tags) == set(self.tag_keys), f"{self.name}: tags {sorted(tags)}, declared {self.tag_keys}"
        self.calls.append((method, value, tags))

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self._record("inc", value, tags)

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._record("set", value, tags)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._record("observe", value, tags)


class RecordedMetrics:
    def __init__(self) -> None:
        self.by_name: dict[str, RecordedMetric] = {}

    def make(self, kind: str, name: str, description: str, tags: tuple[str, ...], buckets: tuple) -> RecordedMetric:
        assert name in metrics.NAMES, f"{name} is reported but not listed in metrics.NAMES"
        metric = self.by_name.setdefault(name, RecordedMetric(kind, name, tags))
        assert (metric.kind, metric.tag_keys) == (kind, tags), f"{name} declared two ways"
        return metric

    def total(self, name: str, **tags: str) -> float:
        """The sum of `inc` values of `name` whose tags include `tags` (0 if never reported)."""
        metric = self.by_name.get(name)
        if metric is None:
            return 0.0
        return sum(v for method, v, t in metric.calls if method == "inc" and tags.items() <= t.items())


def record_metrics(monkeypatch) -> RecordedMetrics:
    recorded = RecordedMetrics()
    monkeypatch.setattr(metrics, "_enabled", True)
    monkeypatch.setattr(metrics, "_make", recorded.make)
    return recorded
