"""The metrics the Grafana dashboard's retry and embedding-cache panels chart, reported where the event happens.

No Ray: `record_metrics` stands in for Ray's metric objects, so the real
reporting calls run (names, tag keys, values) and are read back.
"""

from __future__ import annotations

import asyncio
import functools

import pytest

from deployments.prompt_encoder import PromptEncoder
from serve_app.artifacts import LocalArtifactStore
from serve_app.errors import StageLost
from serve_app.estimates import StageTimeEstimator
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.sqlite_store import SQLiteJobStore
from tests.helpers.fakes import FakeGenerator
from tests.helpers.jobs import make_job
from tests.helpers.metric_recorder import record_metrics


def _encoder_with_cache(size: int) -> tuple[PromptEncoder, list[str]]:
    """A PromptEncoder replica's text lookup, its text encoder replaced by a recorder (no model)."""
    encoded: list[str] = []

    def encode_text(text: str) -> str:
        encoded.append(text)
        return f"embeds of {text}"

    cls = PromptEncoder.func_or_class
    encoder = cls.__new__(cls)
    encoder._cached_text = functools.lru_cache(maxsize=size)(encode_text)
    return encoder, encoded


def test_each_embedding_lookup_counts_as_a_hit_or_a_miss(monkeypatch):
    recorded = record_metrics(monkeypatch)
    encoder, encoded = _encoder_with_cache(size=2)
    for text in ["a lighthouse", "", "a lighthouse", "", "a harbour"]:
        assert encoder._text(text) == f"embeds of {text}"
    assert encoded == ["a lighthouse", "", "a harbour"]
    assert recorded.total("wan_embedding_cache_hits_total") == 2
    assert recorded.total("wan_embedding_cache_misses_total") == 3


def test_a_disabled_embedding_cache_reports_every_lookup_as_a_miss(monkeypatch):
    recorded = record_metrics(monkeypatch)
    encoder, encoded = _encoder_with_cache(size=0)
    encoder._text("same")
    encoder._text("same")
    assert encoded == ["same", "same"]
    assert recorded.total("wan_embedding_cache_hits_total") == 0
    assert recorded.total("wan_embedding_cache_misses_total") == 2


class _LosesReplicas:
    """The graph loses a stage's replica under the job `losses` times, then works."""

    def __init__(self, losses: int) -> None:
        self.losses, self.runs = losses, 0

    async def generate(self, params, deadline, on_progress=None, job_id=None):
        self.runs += 1
        if self.runs <= self.losses:
            raise StageLost("a pipeline stage's replica was lost: ActorDiedError")
        return await FakeGenerator().generate(params, deadline, on_progress)


@pytest.mark.parametrize("losses", [1, 2])
def test_every_rerun_after_a_lost_replica_counts_as_a_retry_with_its_reason(tmp_path, monkeypatch, losses):
    recorded = record_metrics(monkeypatch)
    store = SQLiteJobStore(tmp_path / "jobs.db")
    runner = JobRunner(
        store=store,
        artifacts=LocalArtifactStore(tmp_path / "videos"),
        generator=_LosesReplicas(losses),
        estimator=StageTimeEstimator(0.01, 0.01),
        owner="r1",
        lease_s=10,
        dispatch_interval_s=60,
        artifact_ttl_s=100,
        clock=lambda: 1000.0,
    )
    job = make_job(1, created_at=1000.0)
    store.create(job)

    async def scenario():
        assert await runner.submit(job.id)
        await asyncio.gather(*runner._tasks.values())

    try:
        asyncio.run(scenario())
        assert store.get(job.id).status == "completed"
    finally:
        store.close()
    assert recorded.total("wan_job_retries_total", reason="stage_lost") == losses
    assert recorded.total("wan_job_retries_total") == losses
