"""Admission and quality tiers through the HTTP API, with a fake graph and a real store.

Load is made by putting unfinished jobs into the store that another (live)
runner holds: admission counts them as work ahead, and nothing here runs them.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from deployments.result_cache import ResultCache
from serve_app.api.routes import create_app
from serve_app.api.service import VideoService
from serve_app.artifacts import open_artifact_store
from serve_app.cache.index import open_cache_index
from serve_app.config import ServiceArgs, load_model_profile
from serve_app.estimates import StageTimeEstimator
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.sqlite_store import SQLiteJobStore
from serve_app.policy.admission import Admission
from serve_app.policy.load import LoadMonitor
from tests.unit.test_job_store import make_job
from tests.unit.test_routes import FakeGenerator

# 25 steps x 17 frames: the "full" tier keeps it, "reduced" caps it to 20 x 13, "minimal" to 15 x 9.
REQUEST = {"prompt": "a red boat", "width": 64, "height": 64, "num_frames": 17, "fps": 8,
           "num_inference_steps": 25, "seed": 11}


class Service:
    def __init__(self, tmp_path, profile=None, **admission) -> None:
        self.args = ServiceArgs(data_dir=str(tmp_path), admission={"max_queue_per_replica": 4, **admission})
        self.store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
        self.generator = FakeGenerator()
        # 1 ms per step per 1k tokens: every request fits any deadline unless the queue says otherwise.
        self.estimator = StageTimeEstimator(prior_step_s_per_ktoken=0.001, prior_decode_s_per_mpixel=0.001)
        artifacts = open_artifact_store("", self.args.data_path)
        self.cache = ResultCache.func_or_class(self.args.model_dump())
        runner = JobRunner(store=self.store, artifacts=artifacts, generator=self.generator,
                           estimator=self.estimator, owner="test", lease_s=3600, dispatch_interval_s=60,
                           artifact_ttl_s=3600, cache=self.cache)
        self.load = LoadMonitor(active_jobs=lambda: self.store.active(100), estimator=self.estimator,
                                replicas=lambda: 1, gpu_utilization=None, refresh_s=1, initial_replicas=1)
        self.service = VideoService(
            args=self.args, profile=profile or load_model_profile("tiny"), catalog=self.args.preset_catalog(),
            store=self.store, artifacts=artifacts, runner=runner, estimator=self.estimator, cache=self.cache,
            cache_index=open_cache_index("", self.args.data_path),
            admission=Admission(self.args.admission, self.args.tier_table(), self.estimator, 1), load=self.load,
        )

    def busy(self, jobs: int, steps: int = 2) -> None:
        """`jobs` unfinished jobs held by a live runner elsewhere."""
        for n in range(jobs):
            job = make_job(1000 + n, owner="elsewhere", heartbeat_at=9e18)
            self.store.create(job.model_copy(update={"params": job.params.model_copy(
                update={"num_inference_steps": steps})}))


@pytest.fixture
def svc(tmp_path):
    service = Service(tmp_path)
    yield service
    service.store.close()


@pytest.fixture
def client(svc):
    with TestClient(create_app(svc.service), raise_server_exceptions=False) as c:
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
    with TestClient(create_app(svc.service), raise_server_exceptions=False) as client:
        response = client.post("/v1/videos", json={**REQUEST, "deadline_s": 30}, headers={"Prefer": "wait=30"})
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "over_capacity"
        assert "within 30 s" in response.json()["error"]["message"]
        # Without a wait the same request becomes a job (202), at the load's tier.
        queued = client.post("/v1/videos", json=REQUEST)
        assert queued.status_code == 202 and queued.json()["tier"] == "full"
    svc.store.close()


def test_minimal_tier_forces_the_cache_even_for_cache_false(tmp_path):
    svc = Service(tmp_path, max_queue_per_replica=5)
    svc.busy(4)  # 80%: minimal, cache forced
    request = {k: v for k, v in REQUEST.items() if k != "seed"} | {"cache": False}
    with TestClient(create_app(svc.service), raise_server_exceptions=False) as client:
        first = client.post("/v1/videos", json=request).json()
        assert first["tier"] == "minimal" and not first["cached"] and first["status"] == "completed"
        second = client.post("/v1/videos", json=request).json()
    assert second["cached"] and second["seed"] == first["seed"]
    assert len(svc.generator.calls) == 1
    svc.store.close()
