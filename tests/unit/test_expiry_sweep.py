"""The expiry sweeper alone: which files it frees, and how often."""

from __future__ import annotations

import pytest

from serve_app.api.protocol import VideoTimings
from serve_app.artifacts import LocalArtifactStore
from serve_app.jobs.expiry import ExpirySweeper
from serve_app.jobs.sqlite_store import SQLiteJobStore
from tests.helpers.jobs import make_job, with_status


def _completed(n: int, expires_at: int, **changes):
    timings = VideoTimings(prompt_encode_s=0.1, denoise_s=0.5, decode_s=0.01, encode_s=0.02, total_s=0.6)
    return with_status(make_job(n, **changes), "completed", progress=100, timings=timings, expires_at=expires_at)


@pytest.fixture
def store(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.db")
    yield store
    store.close()


def test_the_sweeper_sweeps_once_per_interval(store, tmp_path):
    now = [1000.0]
    artifacts = LocalArtifactStore(tmp_path / "videos")
    sweeper = ExpirySweeper(store, artifacts, clock=lambda: now[0], interval_s=300)
    expired = _completed(1, expires_at=900)
    store.create(expired)
    artifacts.put(expired.id, "video", b"mp4")

    assert sweeper.sweep_if_due() == 1
    artifacts.put(expired.id, "video", b"mp4")  # back again: only a due sweep may find it
    now[0] += 299
    assert sweeper.sweep_if_due() is None and artifacts.exists(expired.id, "video")
    now[0] += 1
    assert sweeper.sweep_if_due() == 1 and not artifacts.exists(expired.id, "video")


def test_the_sweeper_leaves_files_the_cache_owns(store, tmp_path):
    artifacts = LocalArtifactStore(tmp_path / "videos")
    cached = _completed(1, expires_at=10, artifact_id="cache_entry")
    store.create(cached)
    artifacts.put(cached.id, "video", b"mp4")
    assert ExpirySweeper(store, artifacts, clock=lambda: 1000.0).sweep() == 0
    assert artifacts.exists(cached.id, "video")
