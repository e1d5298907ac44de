"""Rerun bookkeeping alone: counting attempts, and a job rewritten for a lower tier."""

from __future__ import annotations

import pytest

from serve_app.errors import StageLost
from serve_app.jobs.reruns import count_next_attempt, rewrite_for_tier
from serve_app.jobs.sqlite_store import SQLiteJobStore
from tests.helpers.jobs import make_job

LOST = StageLost("a pipeline stage's replica was lost: ActorDiedError")


@pytest.fixture
def store(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.db")
    yield store
    store.close()


def test_an_attempt_is_counted_and_saved_until_none_is_left(store):
    job = make_job(1, attempts=1, owner="r1")
    job.video.progress = 40
    store.create(job)
    current = count_next_attempt(store, job.id, "r1", LOST, max_attempts=2)
    assert (current.attempts, current.video.progress) == (2, 0)
    assert store.get(current.id).attempts == 2
    with pytest.raises(StageLost):
        count_next_attempt(store, current.id, "r1", LOST, max_attempts=2)


def test_no_rerun_for_a_cancelled_deleted_or_taken_over_job(store):
    store.create(make_job(1, cancel_requested=True, owner="r1"))
    with pytest.raises(StageLost):
        count_next_attempt(store, make_job(1).id, "r1", LOST, max_attempts=3)
    with pytest.raises(StageLost):
        count_next_attempt(store, make_job(2).id, "r1", LOST, max_attempts=3)  # never stored: deleted
    store.create(make_job(3, owner="r2"))  # another runner took it over after this one's lease lapsed
    with pytest.raises(StageLost):
        count_next_attempt(store, make_job(3).id, "r1", LOST, max_attempts=3)
    assert store.get(make_job(3).id).attempts == 0


def test_a_job_rewritten_for_a_lower_tier_describes_its_video_and_what_was_asked():
    job = make_job(1, cache_key="k")
    job.video.cache_key = "k"
    asked = job.params.model_copy(update={"num_frames": 17, "num_inference_steps": 4})
    job.params = asked
    lowered = asked.model_copy(update={"num_frames": 9})
    rewrite_for_tier(job, lowered, "minimal")
    assert job.params == lowered and job.oom_retries == 1
    assert (job.video.tier, job.video.num_frames, job.video.num_inference_steps) == ("minimal", 9, 4)
    assert job.video.requested == {"num_frames": 17}  # only what changed
    assert job.video.seconds == f"{9 / job.params.fps:.2f}"
    assert job.cache_key is None and job.video.cache_key is None
