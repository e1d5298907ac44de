"""What follows from a job ending: each listener alone, and how the runner calls them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from serve_app.api.protocol import VideoError, VideoTimings
from serve_app.artifacts import LocalArtifactStore
from serve_app.errors import NotFound
from serve_app.estimates import StageTimeEstimator
from serve_app.graph import GraphResult
from serve_app.jobs import listeners as listeners_module
from serve_app.jobs.listeners import (
    FinishedCallback,
    JobListener,
    JobMetrics,
    ResultCacheFill,
    ResultFiles,
    StageTimeLearning,
    WebhookDelivery,
)
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.sqlite_store import SQLiteJobStore
from serve_app.messages import EncodedVideo
from tests.helpers.fakes import FakeGenerator
from tests.helpers.jobs import make_job, with_status


def _result(thumbnail: bytes = b"jpg") -> GraphResult:
    video = EncodedVideo(
        mp4=b"mp4", num_frames=5, width=64, height=64, fps=8, decode_s=0.25, encode_s=0.5, thumbnail=thumbnail
    )
    return GraphResult(video=video, prompt_encode_s=0.125, denoise_s=2.0, total_s=3.0)


def _completed(n: int = 1, **changes):
    timings = VideoTimings(prompt_encode_s=0.125, denoise_s=2.0, decode_s=0.25, encode_s=0.5, total_s=3.0)
    return with_status(make_job(n, **changes), "completed", progress=100, timings=timings)


def _failed(n: int = 1, **changes):
    return with_status(make_job(n, **changes), "failed", error=VideoError(code="stage_failed", message="boom"))


@pytest.fixture
def store(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.db")
    yield store
    store.close()


# --- each listener alone --------------------------------------------------------------------


def test_result_files_are_stored_before_the_record_and_deleted_once_it_is_gone(tmp_path):
    artifacts = LocalArtifactStore(tmp_path / "videos")
    files = ResultFiles(artifacts)
    job = _completed()

    asyncio.run(files.before_record(job, _result()))
    assert artifacts.get(job.id, "video") == b"mp4" and artifacts.get(job.id, "thumbnail") == b"jpg"
    asyncio.run(files.after_record(job, _result(), gone=False))
    assert artifacts.exists(job.id, "video")  # kept: the record says completed
    asyncio.run(files.after_record(job, _result(), gone=True))
    assert not artifacts.exists(job.id, "video") and not artifacts.exists(job.id, "thumbnail")


def test_result_files_store_no_thumbnail_when_there_is_none_and_nothing_for_a_failure(tmp_path):
    artifacts = LocalArtifactStore(tmp_path / "videos")
    files = ResultFiles(artifacts)

    asyncio.run(files.before_record(_completed(1), _result(thumbnail=b"")))
    assert artifacts.exists(make_job(1).id, "video") and not artifacts.exists(make_job(1).id, "thumbnail")
    asyncio.run(files.before_record(_failed(2), None))
    assert not artifacts.exists(make_job(2).id, "video")


def test_finished_callback_sees_every_end_and_its_errors_never_escape(caplog):
    seen = []
    finished = FinishedCallback(seen.append)
    asyncio.run(finished.before_record(_completed(1), _result()))
    asyncio.run(finished.before_record(_failed(2), None))
    assert [job.status for job in seen] == ["completed", "failed"]

    def broken(job):
        raise RuntimeError("slot bookkeeping down")

    finished.callback = broken
    with caplog.at_level("ERROR", logger="ray.serve"):
        asyncio.run(finished.before_record(_completed(3), _result()))  # does not raise
    assert [getattr(r, "job_id", None) for r in caplog.records] == [make_job(3).id]
    finished.callback = None
    asyncio.run(finished.before_record(_completed(4), _result()))  # nothing to call


def test_job_metrics_count_each_end_and_a_completed_job_s_stage_times(monkeypatch):
    ended, stages = [], []
    monkeypatch.setattr(listeners_module.metrics, "job_ended", lambda status, code="": ended.append((status, code)))
    monkeypatch.setattr(listeners_module.metrics, "stage_time", lambda stage, s: stages.append((stage, s)))
    recorder = JobMetrics()

    asyncio.run(recorder.after_record(_completed(1), _result(), gone=False))
    asyncio.run(recorder.after_record(_failed(2), None, gone=False))
    assert ended == [("completed", ""), ("failed", "stage_failed")]
    assert stages == [("prompt_encode", 0.125), ("denoise", 2.0), ("decode", 0.25), ("encode", 0.5), ("total", 3.0)]


def test_stage_time_learning_observes_completed_runs_only():
    observed = []
    estimator = SimpleNamespace(observe=lambda *args: observed.append(args))
    learner = StageTimeLearning(estimator)
    job = _completed()

    asyncio.run(learner.after_record(job, _result(), gone=True))  # deleted, but its seconds were spent
    asyncio.run(learner.after_record(_failed(2), None, gone=False))
    assert observed == [(job.params, 0.125, 2.0, 0.75)]


class _Cache:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def fill(self, key, video, source_id):
        self.calls.append(("fill", key, video["status"], source_id))
        return True

    async def release(self, key, job_id):
        self.calls.append(("release", key, job_id))


def test_the_cache_is_filled_with_a_completed_video_and_released_otherwise():
    cache = _Cache()
    filler = ResultCacheFill(cache)
    done, failed, deleted = _completed(1, cache_key="k1"), _failed(2, cache_key="k2"), _completed(3, cache_key="k3")

    asyncio.run(filler.after_record(done, _result(), gone=False))
    asyncio.run(filler.after_record(failed, None, gone=False))
    asyncio.run(filler.after_record(deleted, _result(), gone=True))
    asyncio.run(filler.after_record(_completed(4), _result(), gone=False))  # no key: nothing to do
    assert cache.calls == [
        ("fill", "k1", "completed", done.id),
        ("release", "k2", failed.id),
        ("release", "k3", deleted.id),
    ]


def test_a_webhook_is_sent_in_the_background_and_its_outcome_recorded(store):
    sent = []

    async def send(job):
        sent.append(job.id)
        return SimpleNamespace(delivered=True, attempts=2)

    delivery = WebhookDelivery(store, send)
    job = _completed(1, webhook_url="https://example.com/hook", webhook_state="pending")
    store.create(job)

    async def scenario():
        await delivery.after_record(job, _result(), gone=False)
        await delivery.after_record(_completed(2), _result(), gone=False)  # no URL: nothing sent
        await delivery.after_record(_completed(3, webhook_url="https://example.com/hook"), _result(), gone=True)
        await asyncio.gather(*delivery._deliveries)

    asyncio.run(scenario())
    assert sent == [job.id]
    stored = store.get(job.id)
    assert (stored.webhook_state, stored.webhook_attempts) == ("delivered", 2)


def test_shutdown_waits_for_a_delivery_in_flight(store):
    # Issue 15 item 10: a delivery still retrying when its gateway shut down was dropped,
    # leaving the job "pending" with nothing sending it.
    release = asyncio.Event()

    async def send(job):
        await release.wait()
        return SimpleNamespace(delivered=True, attempts=3)

    delivery = WebhookDelivery(store, send)
    job = _completed(1, webhook_url="https://example.com/hook", webhook_state="pending")
    store.create(job)

    async def scenario():
        await delivery.after_record(job, _result(), gone=False)
        asyncio.get_running_loop().call_later(0.05, release.set)  # the receiver answers late
        await delivery.drain(timeout_s=5)

    asyncio.run(scenario())
    assert (store.get(job.id).webhook_state, store.get(job.id).webhook_attempts) == ("delivered", 3)


def test_a_webhook_for_a_job_deleted_meanwhile_is_dropped_quietly(store):
    async def send(job):
        store.delete(job.id)
        return SimpleNamespace(delivered=True, attempts=1)

    delivery = WebhookDelivery(store, send)
    job = _completed(1, webhook_url="https://example.com/hook")
    store.create(job)

    async def scenario():
        await delivery.after_record(job, _result(), gone=False)
        await asyncio.gather(*delivery._deliveries)  # raises if NotFound escaped

    asyncio.run(scenario())
    with pytest.raises(NotFound):
        store.get(job.id)


# --- the runner calling them ------------------------------------------------------------------


class _Spy(JobListener):
    """Records what the store held for the job at each moment."""

    def __init__(self, store) -> None:
        self.store = store
        self.seen: list[tuple[str, str, bool]] = []

    async def before_record(self, job, result):
        self.seen.append(("before", self.store.get(job.id).status, result is not None))

    async def after_record(self, job, result, gone):
        status = "gone" if gone else self.store.get(job.id).status
        self.seen.append(("after", status, result is not None))


def _runner(store, tmp_path, generator) -> JobRunner:
    return JobRunner(
        store=store,
        artifacts=LocalArtifactStore(tmp_path / "videos"),
        generator=generator,
        estimator=StageTimeEstimator(0.01, 0.01),
        owner="r1",
        lease_s=10,
        dispatch_interval_s=60,
        artifact_ttl_s=100,
        clock=lambda: 1000.0,
    )


def _run_one(runner: JobRunner, store, job) -> None:
    async def scenario():
        store.create(job)
        assert await runner.submit(job.id)
        await asyncio.gather(*runner._tasks.values())

    asyncio.run(scenario())


def test_listeners_run_before_the_terminal_record_is_written_and_after(store, tmp_path):
    runner = _runner(store, tmp_path, FakeGenerator())
    spy = _Spy(store)
    runner.listeners.append(spy)
    _run_one(runner, store, make_job(1))
    assert spy.seen == [("before", "in_progress", True), ("after", "completed", True)]

    failing = FakeGenerator()
    failing.error = RuntimeError("boom")
    runner.generator = failing
    spy.seen.clear()
    _run_one(runner, store, make_job(2))
    assert spy.seen == [("before", "queued", False), ("after", "failed", False)]


def test_a_listener_that_cannot_keep_the_result_fails_the_job(store, tmp_path):
    class FullDisk(JobListener):
        async def before_record(self, job, result):
            if result is not None:
                raise OSError("no space left on device")

    runner = _runner(store, tmp_path, FakeGenerator())
    runner.listeners.insert(0, FullDisk())
    ended = []
    runner.on_finished = ended.append  # assignable after construction
    _run_one(runner, store, make_job(1))
    job = store.get(make_job(1).id)
    assert job.status == "failed" and job.video.error.code == "stage_failed"
    assert "storing the result failed: OSError" in job.video.error.message
    assert [j.status for j in ended] == ["failed"]  # the slot is freed once, for the outcome that stands


def test_a_listener_failing_after_the_record_leaves_the_outcome_and_the_others(store, tmp_path, caplog):
    class Broken(JobListener):
        async def after_record(self, job, result, gone):
            raise RuntimeError("metrics backend down")

    runner = _runner(store, tmp_path, FakeGenerator())
    spy = _Spy(store)
    runner.listeners[:0] = [Broken()]
    runner.listeners.append(spy)
    with caplog.at_level("ERROR", logger="ray.serve"):
        _run_one(runner, store, make_job(1))
    assert store.get(make_job(1).id).status == "completed"
    assert ("after", "completed", True) in spy.seen
    assert any("Broken failed after its record" in r.getMessage() for r in caplog.records)


def test_a_video_deleted_while_it_ran_leaves_no_files_and_no_record(store, tmp_path):
    generator = FakeGenerator()
    runner = _runner(store, tmp_path, generator)
    spy = _Spy(store)
    runner.listeners.append(spy)
    job = make_job(1)

    def delete_requested() -> None:
        current = store.get(job.id)
        current.delete_requested = True
        store.save(current)

    generator.mid_run = delete_requested
    _run_one(runner, store, job)
    with pytest.raises(NotFound):
        store.get(job.id)
    assert not LocalArtifactStore(tmp_path / "videos").exists(job.id, "video")
    assert spy.seen[-1] == ("after", "gone", True)
