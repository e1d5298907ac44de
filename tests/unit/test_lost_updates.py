"""Issue 15 item 7: two gateway replicas writing one job, interleaved exactly.

Replica A runs the job (a JobRunner over a hooked client of the shared store);
replica B is a whole gateway over its own client of the same store, where a
client's cancel or delete lands, or which takes the job over. The hooks put B's
write between A's read of the record and A's write of it, where a real race puts
it. Before the fix A saved the whole record it had read, so B's write was undone:
the cancel lost, the deleted video back, a finished job made runnable again.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from serve_app.artifacts import LocalArtifactStore
from serve_app.config import ServiceArgs
from serve_app.errors import NotFound
from serve_app.estimates import StageTimeEstimator
from serve_app.jobs.listeners import JobListener
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.stores import open_job_store
from tests.helpers.fakes import FakeGenerator
from tests.helpers.job_stores import HookedStore, open_shared_store
from tests.helpers.jobs import make_job
from tests.helpers.service import TEST_TIMINGS, gateway_over

# Replica A's clock: its heartbeats look long stale to replica B, which runs on real time.
A_CLOCK_S = 1000.0
# How long a scenario may take before it counts as hung (a bound, never a synchronisation).
HUNG_S = 30


@pytest.fixture(params=["sqlite", "redis"])
def replicas(request, tmp_path):
    """(replica A's hooked store client, its artifacts, replica B's gateway), over one store."""
    url = open_shared_store(request.param, tmp_path, request)
    args = ServiceArgs(data_dir=str(tmp_path), job_store=url, **TEST_TIMINGS)
    replica_b = gateway_over(tmp_path, FakeGenerator(), args=args, replica_id="replica-b")
    store_a = HookedStore(open_job_store(url, tmp_path))
    yield store_a, LocalArtifactStore(args.data_path / "videos"), replica_b
    store_a.close()
    replica_b.stores.close()


def _runner_a(store, artifacts, generator) -> JobRunner:
    return JobRunner(
        store=store,
        artifacts=artifacts,
        generator=generator,
        estimator=StageTimeEstimator(0.01, 0.01),
        owner="replica-a",
        lease_s=TEST_TIMINGS["job_lease_s"],
        dispatch_interval_s=60,
        artifact_ttl_s=100,
        clock=lambda: A_CLOCK_S,
    )


async def _run_to_the_end(runner: JobRunner, job_id: str) -> None:
    assert await runner.submit(job_id)
    await asyncio.wait_for(asyncio.gather(*runner._tasks.values(), return_exceptions=True), HUNG_S)


def test_a_cancel_on_replica_b_survives_replica_a_s_step_write(replicas):
    store_a, artifacts, replica_b = replicas
    job = make_job(1)
    store_a.create(job)
    cancelled: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def cancel_on_b(read) -> None:  # between A's read of the record and A's step write
            # On A's store thread, which A's step write holds: B's cancel runs on the loop meanwhile.
            asyncio.run_coroutine_threadsafe(replica_b.views.cancel(read.id), loop).result(HUNG_S)
            cancelled.append(read.status)

        store_a.after_get = cancel_on_b  # A's first read of the job is its step write's
        await _run_to_the_end(_runner_a(store_a, artifacts, FakeGenerator()), job.id)

    asyncio.run(scenario())

    assert cancelled == ["queued"]
    stored = replica_b.stores.jobs.get(job.id)
    assert stored.cancel_requested, "A's step write undid B's cancel"
    assert stored.status == "failed" and stored.video.error.code == "cancelled"


class _DeleteOnB(JobListener):
    """Runs after the mp4 is stored and before A writes the terminal record."""

    def __init__(self, replica_b, artifacts) -> None:
        self.replica_b = replica_b
        self.artifacts = artifacts
        self.deleted: list[str] = []

    async def before_record(self, job, result) -> None:
        assert self.artifacts.local_path(job.id, "video").is_file()
        await self.replica_b.views.delete(job.id)
        self.deleted.append(job.id)


def test_a_delete_on_replica_b_survives_replica_a_s_terminal_write(replicas):
    store_a, artifacts, replica_b = replicas
    job = make_job(2)
    store_a.create(job)
    runner = _runner_a(store_a, artifacts, FakeGenerator())
    delete_on_b = _DeleteOnB(replica_b, artifacts)
    runner.listeners.insert(1, delete_on_b)  # after ResultFiles stored the mp4
    asyncio.run(_run_to_the_end(runner, job.id))

    assert delete_on_b.deleted == [job.id]
    with pytest.raises(NotFound):
        asyncio.run(replica_b.views.get_video(job.id))  # A's terminal write brought it back
    with pytest.raises(NotFound):
        replica_b.stores.jobs.get(job.id)
    with pytest.raises(NotFound):
        artifacts.local_path(job.id, "video")  # its files went with it


class _StepThenHold(FakeGenerator):
    """Reports step 1, then holds the run until the test ends it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def generate(self, params, deadline, on_progress=None, job_id=None):
        on_progress(type("Step", (), {"step": 1, "total_steps": params.num_inference_steps, "preview": None})())
        await self.release.wait()
        return await super().generate(params, deadline, None, job_id)


def _take_over_and_complete_on_b(replica_b, job_id: str) -> None:
    """Replica B claims the job (A's lease looks stale to it) and runs it to the end, on
    its own event loop in another thread, as another process would; returns when done."""

    async def run() -> None:
        assert await replica_b.runner.submit(job_id)
        done = await replica_b.runner.wait(job_id, HUNG_S)
        assert done.status == "completed"

    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:  # noqa: BLE001 - surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(HUNG_S)
    assert not thread.is_alive() and not errors, errors


def test_a_job_finished_on_replica_b_is_not_made_runnable_again_by_replica_a(replicas):
    """A stalled past its lease; B took the job over and completed it; A's step write, read
    before all that, must not turn the completed record back into a running one (which,
    once A's lease looks stale again, any replica claims and runs a second time)."""
    store_a, artifacts, replica_b = replicas
    job = make_job(3)
    store_a.create(job)
    generator = _StepThenHold()
    wrote = asyncio.Event()
    store_a.after_get = lambda read: _take_over_and_complete_on_b(replica_b, read.id)

    async def scenario():
        runner = _runner_a(store_a, artifacts, generator)
        loop = asyncio.get_running_loop()
        store_a.after_write = lambda written: loop.call_soon_threadsafe(wrote.set)  # on A's store thread
        assert await runner.submit(job.id)
        (task,) = runner._tasks.values()
        await asyncio.wait_for(wrote.wait(), HUNG_S)  # A's step write, read before B's takeover
        store_b = replica_b.stores.jobs
        stored = store_b.get(job.id)
        runnable_again = store_b.claimable(2 * A_CLOCK_S + 1e10, TEST_TIMINGS["job_lease_s"], limit=10)
        generator.release.set()  # whatever A does next, let it end
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), HUNG_S)
        return stored, runnable_again, store_b.events_after(job.id, 0)

    stored, runnable_again, events = asyncio.run(scenario())
    assert (stored.status, stored.owner) == ("completed", None), (stored.status, stored.owner)
    assert runnable_again == []
    assert [event["type"] for _, event in events].count("completed") == 1  # A did not complete it too
    assert replica_b.stores.jobs.get(job.id).status == "completed"
