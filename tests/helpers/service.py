"""A whole `VideoService` in-process: fake graph, real SQLite store, result cache, admission.

`Service` builds it; `api_client` puts the HTTP API in front of one. Used by the
admission, access and cache-revision tests.
"""

from __future__ import annotations

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
from tests.helpers.fakes import FakeGenerator
from tests.helpers.jobs import make_job

# 25 steps x 17 frames: the "full" tier keeps it, "reduced" caps it to 20 x 13, "minimal" to 15 x 9.
REQUEST = {"prompt": "a red boat", "width": 64, "height": 64, "num_frames": 17, "fps": 8,
           "num_inference_steps": 25, "seed": 11}


class Service:
    def __init__(self, tmp_path, profile=None, estimator=None, **admission) -> None:
        self.args = ServiceArgs(data_dir=str(tmp_path), admission={"max_queue_per_replica": 4, **admission})
        self.store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
        self.generator = FakeGenerator()
        # 1 ms per step per 1k tokens: every request fits any deadline unless the queue says otherwise.
        self.estimator = estimator or StageTimeEstimator(prior_step_s_per_ktoken=0.001,
                                                         prior_decode_s_per_mpixel=0.001)
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


def api_client(service: VideoService) -> TestClient:
    """The HTTP API over `service`; use as a context manager (`with api_client(s) as client:`).

    Unhandled errors come back as the service's 500 JSON, not re-raised into the test.
    """
    return TestClient(create_app(service), raise_server_exceptions=False)
