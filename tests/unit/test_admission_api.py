"""Admission and quality tiers through the HTTP API, with a fake graph and a real store.

Load is made by putting unfinished jobs into the store that another (live)
runner holds: admission counts them as work ahead, and nothing here runs them.
"""

from __future__ import annotations

import asyncio

import pytest

from serve_app.api.create import Preference, VideoCreator
from serve_app.api.protocol import CreateVideoRequest
from serve_app.errors import OverCapacity
from serve_app.estimates import StageTimeEstimator
from tests.helpers.service import REQUEST, Service, api_client


@pytest.fixture
def svc(tmp_path):
    service = Service(tmp_path)
    yield service
    service.store.close()


@pytest.fixture
def client(svc):
    with api_client(svc.gateway) as c:
        yield c


def test_idle_service_runs_the_request_as_asked(client):
    response = client.post("/v1/videos", json=REQUEST)
    assert response.status_code == 200, response.text
    video = response.json()
    assert (video["tier"], video["requested"]) == ("full", None)
    assert (video["num_inference_steps"], video["num_frames"]) == (25, 17)
    assert response.headers["Wan-Tier"] == "full"
    assert response.headers["Wan-Load"] == "0.00"


def test_half_load_lowers_steps_and_frames_and_says_so(client, svc):
    svc.busy(2)  # 2 of 4 slots: 50%
    response = client.post("/v1/videos", json=REQUEST)
    assert response.status_code == 200, response.text
    video = response.json()
    assert video["tier"] == "reduced"
    assert (video["num_inference_steps"], video["num_frames"]) == (20, 13)
    assert video["requested"] == {"num_inference_steps": 25, "num_frames": 17}
    assert video["seconds"] == f"{13 / 8:.2f}"
    assert response.headers["Wan-Tier"] == "reduced; num_inference_steps=20; num_frames=13"
    assert response.headers["Wan-Load"] == "0.50"
    # What ran is what the answer says.
    params, _ = svc.generator.calls[-1]
    assert (params.num_inference_steps, params.num_frames) == (20, 13)
    # And the stored job tells the same story later.
    assert client.get(f"/v1/videos/{video['id']}").json()["requested"] == video["requested"]


def test_exact_quality_is_not_degraded_under_load(client, svc):
    svc.busy(3)
    video = client.post("/v1/videos", json={**REQUEST, "quality": "exact"}).json()
    assert (video["tier"], video["num_inference_steps"], video["num_frames"]) == ("exact", 25, 17)


def test_full_queue_is_429_with_retry_after_and_nothing_is_created(client, svc):
    svc.busy(4)
    before = len(svc.store.active(100))
    response = client.post("/v1/videos", json=REQUEST, headers={"Prefer": "wait=30"})
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    error = response.json()["error"]
    assert error["code"] == "over_capacity" and "queue is full" in error["message"]
    assert error["retry_after_s"] == int(response.headers["Retry-After"])
    assert len(svc.store.active(100)) == before and svc.generator.calls == []


def test_sync_request_that_cannot_make_its_deadline_is_refused_at_once(tmp_path):
    svc = Service(tmp_path, max_queue_per_replica=100)
    # 5 queued jobs of 1000 steps at 64x64x5 (8 tokens, no guidance) -> 40 s of work ahead at the prior.
    svc.estimator.prior_step_s_per_ktoken = 1.0
    svc.busy(5, steps=1000)
    with api_client(svc.gateway) as client:
        response = client.post("/v1/videos", json={**REQUEST, "deadline_s": 30}, headers={"Prefer": "wait=30"})
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "over_capacity"
        assert "within 30 s" in response.json()["error"]["message"]
        # Without a wait the same request becomes a job (202), at the load's tier.
        queued = client.post("/v1/videos", json=REQUEST)
        assert queued.status_code == 202 and queued.json()["tier"] == "full"
    svc.store.close()


# A tier that forces the cache on for `cache: false`: tests/unit/test_cache_isolation.py
# (it answers from the cache, and never fills it with such a request's video).


# --- admission is atomic with job creation ----------------------------------------------


class FixedEstimator(StageTimeEstimator):
    """Every job, whatever its shape or tier: (prompt encoding, denoising, decode + mp4) seconds."""

    def __init__(self, stages: tuple[float, float, float]) -> None:
        super().__init__(prior_step_s_per_ktoken=1.0, prior_decode_s_per_mpixel=1.0)
        self.stages = stages

    def stage_estimates(self, params) -> tuple[float, float, float]:
        return self.stages


class SlowClaims:
    """The result cache behind a slow single-flight claim, like the Ray handle call it is in a
    gateway: no claim answers until every request has either reached its claim or finished."""

    def __init__(self, cache, requests: int) -> None:
        self.cache, self.requests = cache, requests
        self.waiting = self.finished = 0
        self.gate = asyncio.Event()

    def __getattr__(self, name):
        return getattr(self.cache, name)

    def _check(self) -> None:
        if self.waiting + self.finished >= self.requests:
            self.gate.set()

    async def claim(self, key: str, job_id: str) -> str:
        self.waiting += 1
        self._check()
        await self.gate.wait()
        return await self.cache.claim(key, job_id)

    async def create(self, service: VideoCreator, request: CreateVideoRequest, prefer: Preference):
        try:
            return await service.create_video(request, prefer)
        except OverCapacity as exc:
            return exc
        finally:
            self.finished += 1
            self._check()


def test_concurrent_creates_see_each_others_places_in_the_queue(tmp_path):
    # 2 s per job on one denoiser and a 20 s deadline: the job with k jobs ahead is ready
    # after 2k + 2 s, so at most 10 jobs can be accepted. 30 creates arrive at once, 10 of
    # them identical (one single-flight job); the rest must be refused with a 429.
    deadline, per_job = 20, 2.0
    svc = Service(tmp_path, estimator=FixedEstimator((0.0, per_job, 0.0)), max_queue_per_replica=100)
    submitted: list[str] = []

    async def submit(job_id: str) -> bool:
        submitted.append(job_id)  # accepted jobs stay queued: the load only grows
        return True

    svc.runner.submit = submit
    slow = SlowClaims(svc.cache, requests=30)
    svc.creator.cache = slow
    requests = [
        CreateVideoRequest(
            **{**REQUEST, "deadline_s": deadline, "prompt": "the same boat" if n % 3 == 0 else f"boat {n}"}
        )
        for n in range(30)
    ]

    async def burst():
        prefer = Preference(respond_async=True)
        return await asyncio.gather(*(slow.create(svc.creator, r, prefer) for r in requests))

    outcomes = asyncio.run(burst())
    accepted = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    jobs = svc.store.active(100)
    fit = int(deadline // per_job)
    assert len(jobs) <= fit, f"{len(jobs)} jobs accepted; at most {fit} fit"
    # Every place that fits is used: nothing is refused for load that is not there.
    assert len(jobs) == fit and sorted(submitted) == sorted(j.id for j in jobs)
    assert all(o.status_code == 202 and o.video.id in submitted for o in accepted)
    # The identical requests that were accepted share one job, and hold one place between them.
    same = {
        o.video.id for o, r in zip(outcomes, requests) if r.prompt == "the same boat" and not isinstance(o, Exception)
    }
    assert len(same) == 1
    assert refused and all(
        e.status_code == 429 and e.code == "over_capacity" and int(e.headers()["Retry-After"]) >= 1 for e in refused
    )
    assert len(accepted) + len(refused) == 30
    assert svc.load.reserved == 0  # every path released its reservation
    svc.store.close()


async def _left_queued(job_id: str) -> bool:
    """A runner's submit that runs nothing: the job stays queued."""
    return True


def test_reservations_end_on_every_path(tmp_path):
    svc = Service(tmp_path, max_queue_per_replica=100)
    svc.runner.submit = _left_queued

    async def scenario():
        service = svc.creator
        # A claim that fails (the cache replica died): the request errors, its place is freed.
        real_claim = svc.cache.claim

        async def broken(key, job_id):
            assert svc.load.reserved == 1  # held while the claim is in flight
            raise RuntimeError("cache replica lost")

        svc.cache.claim = broken
        with pytest.raises(RuntimeError):
            await service.create_video(CreateVideoRequest(**REQUEST), Preference(respond_async=True))
        assert svc.load.reserved == 0 and svc.store.active(100) == []
        svc.cache.claim = real_claim
        # Created, then an idempotent retry and an identical request joining the job.
        first = await service.create_video(CreateVideoRequest(**REQUEST), Preference(respond_async=True), "k1")
        again = await service.create_video(CreateVideoRequest(**REQUEST), Preference(respond_async=True), "k1")
        joined = await service.create_video(CreateVideoRequest(**REQUEST), Preference(respond_async=True))
        assert first.video.id == again.video.id == joined.video.id
        assert svc.load.reserved == 0 and len(svc.store.active(100)) == 1
        # A client that hangs up while the claim is in flight.
        gate = asyncio.Event()

        async def stuck(key, job_id):
            gate.set()
            await asyncio.Event().wait()

        svc.cache.claim = stuck
        task = asyncio.ensure_future(
            service.create_video(CreateVideoRequest(**{**REQUEST, "seed": 12}), Preference(respond_async=True))
        )
        await gate.wait()
        assert svc.load.reserved == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert svc.load.reserved == 0

    asyncio.run(scenario())
    svc.store.close()


def test_a_tier_that_forces_the_cache_decides_once_and_reserves_once(tmp_path):
    svc = Service(tmp_path, max_queue_per_replica=5)
    svc.busy(4)  # 80%: minimal, cache forced: the request runs in its cacheable form
    svc.runner.submit = _left_queued
    reserve, held = svc.load.reserve, []

    def spy(key, job):
        held.append(svc.load.snapshot().active_jobs)
        return reserve(key, job)

    svc.load.reserve = spy
    decide, decisions = svc.creator.admission.decide, []
    svc.creator.admission.decide = lambda *args, **kwargs: decisions.append(decide(*args, **kwargs)) or decisions[-1]
    request = CreateVideoRequest(**{**REQUEST, "cache": False, "seed": None})
    outcome = asyncio.run(svc.creator.create_video(request, Preference(respond_async=True)))
    assert outcome.video.tier == "minimal" and outcome.video.cache_key is not None
    assert held == [4] and svc.load.reserved == 0 and svc.load.snapshot().active_jobs == 5
    assert len(decisions) == 1 and decisions[0].force_cache
    svc.store.close()


def test_queued_event_and_202_show_the_eta_admission_decided_on(tmp_path):
    # Hand-built load: 3 jobs queued elsewhere. Each job: 0.25 s prompt encoding, 1.5 s
    # denoising, 0.75 s decode + mp4; stages share the hardware (the default).
    svc = Service(tmp_path, estimator=FixedEstimator((0.25, 1.5, 0.75)), max_queue_per_replica=100)
    svc.busy(3)
    decisions = []
    decide = svc.creator.admission.decide

    def spy(*args, **kwargs):
        decisions.append(decide(*args, **kwargs))
        return decisions[-1]

    svc.creator.admission.decide = spy

    async def scenario():
        outcome = await svc.creator.create_video(CreateVideoRequest(**REQUEST), Preference(respond_async=True))
        await svc.runner.wait(outcome.video.id, 30)
        return outcome

    outcome = asyncio.run(scenario())
    (decision,) = decisions
    assert decision.eta_s == pytest.approx(3 * 2.5 + 2.5)  # 3 jobs ahead, each denoise + decode, then its own
    assert outcome.status_code == 202 and outcome.video.eta_s == round(decision.eta_s, 3)
    queued = next(e for _, e in svc.store.events_after(outcome.video.id, 0) if e["type"] == "queued")
    assert queued["eta_s"] == round(decision.eta_s, 3)
    svc.store.close()
