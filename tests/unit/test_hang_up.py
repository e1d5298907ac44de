"""Issue 15 item 8: a synchronous caller that hangs up cancels its job only when nobody
else can still want it.

The gateway is built Ray-free (tests/helpers/service.py) with the result cache and
admission on, so identical requests share one job (single flight). A client hanging
up is its request's task being cancelled, as the server does on a disconnect. The
generator holds each run until the test lets it go, so the hang-up lands mid-run.
"""

from __future__ import annotations

import asyncio

import pytest

from serve_app.api.create import Preference
from serve_app.api.protocol import CreateVideoRequest
from serve_app.errors import ServiceError
from tests.helpers.fakes import FakeGenerator
from tests.helpers.service import REQUEST, Service

# How long a scenario may take before it counts as hung (a bound, never a synchronisation).
HUNG_S = 30


class _Held(FakeGenerator):
    """Each run waits for `go` once it has started."""

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()
        self.go = asyncio.Event()

    async def generate(self, params, deadline, on_progress=None, job_id=None):
        self.started.set()
        await self.go.wait()
        return await super().generate(params, deadline, on_progress, job_id)


@pytest.fixture
def service(tmp_path):
    service = Service(tmp_path)
    yield service
    service.store.close()


def _waits_seen(service: Service, count: int) -> asyncio.Event:
    """Set once `count` requests are waiting for a job (what a synchronous answer does)."""
    reached = asyncio.Event()
    real_wait = service.runner.wait
    calls = 0

    async def wait(job_id, timeout):
        nonlocal calls
        calls += 1
        if calls >= count:
            reached.set()
        return await real_wait(job_id, timeout)

    service.runner.wait = wait
    return reached


async def _hang_up(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _the_only_job(service: Service):
    (job,) = service.store.list(None, 10, "asc")[0]
    return await service.runner.wait(job.id, HUNG_S)


def test_a_hang_up_with_an_idempotency_key_leaves_the_job_for_its_retry(service):
    async def scenario():
        generator = service.runner.generator = _Held()
        waiting = _waits_seen(service, 1)
        create = service.creator.create_video
        first = asyncio.ensure_future(create(CreateVideoRequest(**REQUEST), Preference(), "order-17"))
        await asyncio.wait_for(asyncio.gather(generator.started.wait(), waiting.wait()), HUNG_S)
        await _hang_up(first)

        retry_waiting = _waits_seen(service, 1)  # counts the retry's wait only
        retry = asyncio.ensure_future(create(CreateVideoRequest(**REQUEST), Preference(), "order-17"))
        # The job runs on only once the retry waits for it: the retry joins a running job, as
        # it would in the field, rather than finding it finished (a loaded box once let the job
        # finish first: a retry of a finished job is another case, test_openai_retries.py).
        await asyncio.wait_for(retry_waiting.wait(), HUNG_S)
        generator.go.set()
        return await asyncio.wait_for(retry, HUNG_S), await _the_only_job(service), generator

    retry, job, generator = asyncio.run(scenario())
    assert (retry.status_code, retry.video.id, retry.video.status) == (200, job.id, "completed")
    assert not job.cancel_requested
    assert job.status == "completed", job.video.error
    assert len(generator.calls) == 1


def test_a_hang_up_leaves_the_job_to_identical_requests_attached_to_it(service):
    async def scenario():
        generator = service.runner.generator = _Held()
        both_waiting = _waits_seen(service, 2)
        create = service.creator.create_video
        first = asyncio.ensure_future(create(CreateVideoRequest(**REQUEST), Preference()))
        await asyncio.wait_for(generator.started.wait(), HUNG_S)
        second = asyncio.ensure_future(create(CreateVideoRequest(**REQUEST), Preference()))
        await asyncio.wait_for(both_waiting.wait(), HUNG_S)  # the second one waits on the first's job
        await _hang_up(first)

        generator.go.set()
        try:
            answer = await asyncio.wait_for(second, HUNG_S)
        except ServiceError as exc:
            answer = exc  # main: the job the second request joined was cancelled under it
        return answer, await _the_only_job(service), generator

    answer, job, generator = asyncio.run(scenario())
    assert not isinstance(answer, ServiceError), answer.to_dict()
    assert (answer.status_code, answer.video.id, answer.video.status) == (200, job.id, "completed")
    assert job.attached and not job.cancel_requested
    assert len(generator.calls) == 1


def test_a_hang_up_still_cancels_a_job_nobody_else_knows(service):
    async def scenario():
        generator = service.runner.generator = _Held()
        waiting = _waits_seen(service, 1)
        first = asyncio.ensure_future(service.creator.create_video(CreateVideoRequest(**REQUEST), Preference()))
        await asyncio.wait_for(asyncio.gather(generator.started.wait(), waiting.wait()), HUNG_S)
        await _hang_up(first)
        return await _the_only_job(service)

    job = asyncio.run(scenario())
    assert job.status == "failed" and job.video.error.code == "cancelled"
