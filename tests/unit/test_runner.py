"""JobRunner without Ray: expiry sweep and hand-back on shutdown."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from serve_app.artifacts import LocalArtifactStore
from serve_app.errors import NotFound
from serve_app.estimates import StageTimeEstimator
from serve_app.jobs.listeners import JobListener
from serve_app.jobs.model import JobRecord
from serve_app.jobs.runner import LISTENER_DRAIN_S, JobRunner
from serve_app.jobs.sqlite_store import SQLiteJobStore
from serve_app.params import GenerationParams
from tests.helpers.fakes import FakeGenerator

PARAMS = GenerationParams(
    prompt="p",
    negative_prompt="",
    width=64,
    height=64,
    num_frames=5,
    num_inference_steps=2,
    guidance_scale=5.0,
    fps=8,
    seed=1,
    preset="preview",
)


def _job(n: int, status: str, expires_at: int | None) -> JobRecord:
    job = JobRecord.new(f"video_{n:032x}", "m", PARAMS, float(n), 30)
    job.video.status, job.video.expires_at = status, expires_at
    return job


@pytest.fixture
def parts(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.db")
    artifacts = LocalArtifactStore(tmp_path / "videos")
    yield store, artifacts
    store.close()


def _runner(store, artifacts, now: float, generator=None) -> JobRunner:
    return JobRunner(
        store=store,
        artifacts=artifacts,
        generator=generator,
        estimator=StageTimeEstimator(0.01, 0.01),
        owner="r1",
        lease_s=10,
        dispatch_interval_s=60,
        artifact_ttl_s=100,
        clock=lambda: now,
    )


def test_sweep_deletes_only_expired_completed_files(parts):
    store, artifacts = parts
    jobs = [_job(1, "completed", 500), _job(2, "completed", 2000), _job(3, "failed", 500)]
    for job in jobs:
        store.create(job)
        artifacts.put(job.id, "video", b"mp4")
    assert _runner(store, artifacts, now=1000).sweep_expired() == 1
    assert not artifacts.exists(jobs[0].id, "video")
    assert artifacts.exists(jobs[1].id, "video")  # not expired yet
    assert artifacts.exists(jobs[2].id, "video")  # not a completed video's file
    assert store.get(jobs[0].id).video.status == "completed"  # the object stays; content answers 410


class _Forever:
    """A generator that never finishes: stands for a long denoising loop."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def generate(self, params, deadline, on_progress=None, job_id=None):
        self.started.set()
        await asyncio.Event().wait()


def test_shutdown_hands_running_jobs_back(parts):
    store, artifacts = parts

    async def scenario():
        generator = _Forever()
        runner = _runner(store, artifacts, now=1000, generator=generator)
        job = _job(1, "queued", None)
        store.create(job)
        assert await runner.submit(job.id)
        await generator.started.wait()
        await runner.shutdown()
        return store.get(job.id)

    released = asyncio.run(scenario())
    assert released.owner is None and released.status == "queued" and not released.terminal
    # Another runner takes it at once, without waiting for the lease to go stale.
    assert store.claim(released.id, "r2", now=1000.5, lease_s=10) is not None


def test_shutdown_drains_every_listener(parts):
    # A webhook still being delivered at shutdown is waited for (listeners.WebhookDelivery.drain).
    store, artifacts = parts
    drained = []

    class Recording(JobListener):
        async def drain(self, timeout_s):
            drained.append(timeout_s)

    async def scenario():
        runner = _runner(store, artifacts, now=1000)
        runner.listeners.append(Recording())
        await runner.shutdown()

    asyncio.run(scenario())
    assert drained == [LISTENER_DRAIN_S]


def test_a_job_interrupted_too_often_fails_instead_of_looping(parts):
    store, artifacts = parts

    async def scenario():
        runner = _runner(store, artifacts, now=1000, generator=_Forever())
        job = _job(1, "queued", None)
        job.attempts = runner.max_attempts  # the next claim is one too many
        store.create(job)
        assert await runner.submit(job.id)
        await asyncio.gather(*runner._tasks.values())
        return store.get(job.id)

    failed = asyncio.run(scenario())
    assert failed.status == "failed" and failed.video.error.code == "stage_failed"
    assert "3 attempts" in failed.video.error.message


class _InnerCancel:
    """A stage call cancelled from inside (a replica going away), not the runner's task."""

    async def generate(self, params, deadline, on_progress=None, job_id=None):
        inner = asyncio.get_running_loop().create_future()
        inner.cancel()
        await inner


def test_inner_cancellation_fails_the_job_rather_than_handing_it_back(parts):
    store, artifacts = parts

    async def scenario():
        runner = _runner(store, artifacts, now=1000, generator=_InnerCancel())
        job = _job(2, "queued", None)
        store.create(job)
        await runner.submit(job.id)
        await asyncio.gather(*runner._tasks.values(), return_exceptions=True)
        return store.get(job.id)

    job = asyncio.run(scenario())
    assert job.status == "failed" and job.owner is None


class _Broken:
    async def generate(self, params, deadline, on_progress=None, job_id=None):
        raise RuntimeError("boom")


def test_job_log_lines_carry_the_job_id(parts, caplog):
    store, artifacts = parts

    async def scenario():
        runner = _runner(store, artifacts, now=1000, generator=_Broken())
        job = _job(3, "queued", None)
        store.create(job)
        await runner.submit(job.id)
        await asyncio.gather(*runner._tasks.values())
        return job.id

    with caplog.at_level("INFO", logger="ray.serve"):
        job_id = asyncio.run(scenario())
    assert store.get(job_id).status == "failed"
    # The failure is logged with its job as a field, not only in the text.
    records = [r for r in caplog.records if job_id in r.getMessage()]
    assert records, "the failure was not logged"
    assert all(getattr(r, "job_id", None) == job_id for r in records)


class _LosesReplicas:
    """Loses the stage's replica on the first `losses` runs, then makes a real mp4."""

    def __init__(self, losses: int) -> None:
        self.losses, self.runs = losses, 0

    async def generate(self, params, deadline, on_progress=None, job_id=None):
        from serve_app.errors import StageLost

        self.runs += 1
        if self.runs <= self.losses:
            raise StageLost("a pipeline stage's replica was lost: ActorDiedError")
        return await FakeGenerator().generate(params, deadline, on_progress)


@pytest.mark.parametrize("losses, status, runs", [(1, "completed", 2), (2, "completed", 3), (5, "failed", 3)])
def test_a_lost_replica_reruns_the_job_up_to_max_attempts(parts, losses, status, runs):
    store, artifacts = parts
    generator = _LosesReplicas(losses)

    async def scenario():
        runner = _runner(store, artifacts, now=1000, generator=generator)
        job = _job(1, "queued", None)
        store.create(job)
        assert await runner.submit(job.id)
        await asyncio.gather(*runner._tasks.values())
        return store.get(job.id)

    job = asyncio.run(scenario())
    assert (job.status, generator.runs, job.attempts) == (status, runs, runs)
    events = [e for _, e in store.events_after(job.id, 0)]
    assert [e["attempt"] for e in events if e["type"] == "retry"] == list(range(2, runs + 1))
    if status == "failed":
        assert job.video.error.code == "stage_lost"
    else:
        assert artifacts.exists(job.id, "video")


class _DenoiserOutOfMemory:
    """The denoiser runs out of memory for anything over 9 frames."""

    def __init__(self) -> None:
        self.calls: list[GenerationParams] = []

    async def generate(self, params, deadline, on_progress=None, job_id=None):
        from serve_app.errors import GpuOutOfMemory

        self.calls.append(params)
        if params.num_frames > 9:
            raise GpuOutOfMemory("denoiser ran out of GPU memory", stage="denoiser", fallback_tried=False)
        return await FakeGenerator().generate(params, deadline, on_progress)


def _minimal(params: GenerationParams):
    lowered = params.model_copy(
        update={"num_frames": min(params.num_frames, 9), "num_inference_steps": min(params.num_inference_steps, 2)}
    )
    return None if lowered == params else (lowered, "minimal")


def test_denoiser_out_of_memory_reruns_once_at_the_lowest_tier_and_says_so(parts):
    store, artifacts = parts
    generator = _DenoiserOutOfMemory()

    async def scenario(frames: int):
        runner = _runner(store, artifacts, now=1000, generator=generator)
        runner.lower_memory = _minimal
        job = _job(frames, "queued", None)
        job.params = job.params.model_copy(update={"num_frames": frames, "num_inference_steps": 4})
        store.create(job)
        assert await runner.submit(job.id)
        await asyncio.gather(*runner._tasks.values())
        return store.get(job.id)

    job = asyncio.run(scenario(17))
    assert [p.num_frames for p in generator.calls] == [17, 9]
    assert job.status == "completed" and job.oom_retries == 1
    assert (job.video.tier, job.video.num_frames, job.video.num_inference_steps) == ("minimal", 9, 2)
    assert job.video.requested == {"num_frames": 17, "num_inference_steps": 4}
    assert job.video.seconds == f"{9 / 8:.2f}"
    assert "retry" in [e["type"] for _, e in store.events_after(job.id, 0)]


def test_denoiser_out_of_memory_at_the_lowest_tier_fails_clearly(parts):
    store, artifacts = parts

    class AlwaysOut(_DenoiserOutOfMemory):
        async def generate(self, params, deadline, on_progress=None, job_id=None):
            from serve_app.errors import GpuOutOfMemory

            self.calls.append(params)
            raise GpuOutOfMemory("denoiser ran out of GPU memory", stage="denoiser", fallback_tried=False)

    generator = AlwaysOut()

    async def scenario():
        runner = _runner(store, artifacts, now=1000, generator=generator)
        runner.lower_memory = _minimal
        job = _job(3, "queued", None)
        job.params = job.params.model_copy(update={"num_frames": 17, "num_inference_steps": 4})
        store.create(job)
        assert await runner.submit(job.id)
        await asyncio.gather(*runner._tasks.values())
        return store.get(job.id)

    job = asyncio.run(scenario())
    assert len(generator.calls) == 2  # as asked, then once lower; never a third time
    assert job.status == "failed" and job.video.error.code == "gpu_out_of_memory"


class _StoreDownOnceBeating(SQLiteJobStore):
    """A store whose first read after heartbeats start fails, as a Redis restarting would."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.beating = False
        self.read_failed = asyncio.Event()

    def heartbeat(self, job_id: str, owner: str, now: float) -> bool:
        self.beating = True
        return super().heartbeat(job_id, owner, now)

    def get(self, job_id: str) -> JobRecord:
        if self.beating and not self.read_failed.is_set():
            self.read_failed.set()
            raise ConnectionError("store unavailable")
        return super().get(job_id)


def test_heartbeats_outlive_a_store_error_and_still_see_cancels(tmp_path, caplog):
    store = _StoreDownOnceBeating(tmp_path / "jobs.db")
    artifacts = LocalArtifactStore(tmp_path / "videos")

    async def scenario():
        generator = _Forever()
        runner = JobRunner(
            store=store,
            artifacts=artifacts,
            generator=generator,
            estimator=StageTimeEstimator(0.01, 0.01),
            owner="r1",
            lease_s=0.03,
            dispatch_interval_s=60,
            artifact_ttl_s=100,
            clock=lambda: 1000.0,
        )
        job = _job(4, "queued", None)
        store.create(job)
        assert await runner.submit(job.id)
        await generator.started.wait()
        await store.read_failed.wait()
        # Only a heartbeat that kept going after the error can see this cancel: the
        # generator never reaches a step boundary, where the flag is checked otherwise.
        job = store.get(job.id)
        job.cancel_requested = True
        store.save(job)
        # The timeout only turns a dead heartbeat into a failure instead of a hang.
        await asyncio.wait_for(asyncio.gather(*runner._tasks.values()), timeout=10)
        return store.get(job.id)

    try:
        with caplog.at_level("WARNING", logger="ray.serve"):
            job = asyncio.run(scenario())
    finally:
        store.close()
    assert job.status == "failed" and job.video.error.code == "cancelled"
    assert any("heartbeat failed" in r.getMessage() and getattr(r, "job_id", None) == job.id for r in caplog.records)


@pytest.mark.parametrize("delete", [False, True])
def test_a_cancelled_orphan_is_not_run_again_when_claimed(parts, delete):
    """A job cancelled while nobody ran it (its runner died, or handed it back) ends at the
    claim: no stage call, cancelled (or deleted, as asked), and its job slot is freed."""
    store, artifacts = parts
    generator = FakeGenerator()
    finished: list[str] = []

    async def scenario():
        runner = _runner(store, artifacts, now=1000, generator=generator)
        runner.on_finished = lambda job: finished.append(job.id)
        job = _job(5, "in_progress", None)
        job.owner, job.heartbeat_at, job.attempts = "dead", 900.0, 1  # lease long stale
        job.cancel_requested, job.delete_requested = True, delete
        store.create(job)
        assert job.id in store.claimable(1000, 10, limit=16)
        assert await runner.submit(job.id)  # what the dispatcher does with each claimable id
        await asyncio.wait_for(asyncio.gather(*runner._tasks.values()), timeout=10)
        return job.id

    job_id = asyncio.run(scenario())
    assert generator.calls == []
    assert finished == [job_id]
    if delete:
        assert store.claimable(1000, 10, limit=16) == []
        with pytest.raises(NotFound):
            store.get(job_id)
        return
    job = store.get(job_id)
    assert job.status == "failed" and job.video.error.code == "cancelled" and job.owner is None
    assert [event["type"] for _, event in store.events_after(job_id, 0)] == ["failed"]


REQUEST_CONTEXT: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_context", default=None)


class _ContextRecorder(FakeGenerator):
    """Records the request context its calls run in, as Ray Serve's handles read theirs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str | None] = []

    async def generate(self, params, deadline, on_progress=None, job_id=None):
        self.seen.append(REQUEST_CONTEXT.get())
        return await super().generate(params, deadline, on_progress, job_id)


def test_a_job_submitted_from_a_request_runs_outside_that_request_s_context(parts):
    # Serve cancels every handle call made in a disconnected request's context: a job task
    # that inherited it would lose its model calls when its caller hangs up.
    store, artifacts = parts
    generator = _ContextRecorder()
    runner = _runner(store, artifacts, 1.0, generator)
    job = _job(1, "queued", None)
    store.create(job)

    async def request_handler():
        REQUEST_CONTEXT.set("request-1")
        assert await runner.submit(job.id)
        return await runner.wait(job.id, 30)

    done = asyncio.run(request_handler())
    assert done.status == "completed"
    assert generator.seen == [None]


def test_the_expiry_sweep_runs_off_the_loop_and_shutdown_waits_for_it(parts):
    # A sweep deletes files (S3 requests) and records: on the event loop it held up every
    # request and heartbeat for as long as it ran. Shutdown closes the stores after it.
    store, artifacts = parts
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow_sweep():
        order.append("sweep on the loop" if threading.get_ident() == loop_thread else "sweep in a thread")
        entered.set()
        release.wait(10)
        order.append("sweep done")

    async def scenario():
        runner = _runner(store, artifacts, now=1000)
        runner._sweeper.sweep_if_due = slow_sweep
        runner.start()
        # The loop is free while the sweep runs: it can wait for the sweep to begin.
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        shutdown = asyncio.get_running_loop().create_task(runner.shutdown())
        shutdown.add_done_callback(lambda _: order.append("shutdown done"))
        for _ in range(5):
            await asyncio.sleep(0)
        release.set()
        await shutdown

    loop_thread = threading.get_ident()
    asyncio.run(scenario())
    assert order == ["sweep in a thread", "sweep done", "shutdown done"]
