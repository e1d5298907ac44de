"""The whole gateway in-process, as `build_gateway` makes it for the deployment, over fakes.

`gateway_over` builds one around a generator (no Ray, no model) with a real SQLite
job store and local artifacts in a data directory; `Service` adds the result cache and admission with
shrunk queues, for the admission, access and cache-revision tests; `api_client`
puts the HTTP API in front of either.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from deployments.result_cache import ResultCache
from serve_app.access.guard import AccessGuard
from serve_app.api.gateway_app import GatewayApp, GatewayHandles, GatewaySettings, GatewayStores, build_gateway
from serve_app.artifacts import ArtifactStore, open_artifact_store
from serve_app.cache.index import open_cache_index
from serve_app.config import ModelProfile, ServiceArgs
from serve_app.estimates import StageTimeEstimator
from serve_app.jobs.stores import open_job_store
from tests.helpers.fakes import FakeGenerator
from tests.helpers.jobs import make_job

# 25 steps x 17 frames: the "full" tier keeps it, "reduced" caps it to 20 x 13, "minimal" to 15 x 9.
REQUEST = {
    "prompt": "a red boat",
    "width": 64,
    "height": 64,
    "num_frames": 17,
    "fps": 8,
    "num_inference_steps": 25,
    "seed": 11,
}

# Timing knobs of a gateway under test: nothing is taken over or swept while a test runs.
TEST_TIMINGS = {"job_lease_s": 30, "dispatch_interval_s": 60, "artifact_ttl_s": 3600}


def fast_estimator() -> StageTimeEstimator:
    """Priors far below the sync budget: every request is answered synchronously unless the queue says otherwise."""
    return StageTimeEstimator(prior_step_s_per_ktoken=0.001, prior_decode_s_per_mpixel=0.001)


def gateway_over(
    data_dir: Path,
    generator: Any,
    *,
    args: ServiceArgs | None = None,
    cache: Any = None,
    access: AccessGuard | None = None,
    admission: bool = False,
    estimator: StageTimeEstimator | None = None,
    profile: ModelProfile | None = None,
    replica_id: str = "test",
    artifacts: ArtifactStore | None = None,
    env: Mapping[str, str] | None = None,
) -> GatewayApp:
    """A gateway whose stages are `generator`; without a result cache, admission or access
    control unless asked for. `args` default: ServiceArgs with TEST_TIMINGS. `artifacts`:
    a store to use instead of the one args name (an S3 store with a test client); `env`:
    the secrets' environment (default: none, so webhooks are off)."""
    args = args or ServiceArgs(data_dir=str(data_dir), **TEST_TIMINGS)
    settings = GatewaySettings.load(args, env or {}, profile=profile, replica_id=replica_id)
    # Opened as GatewayStores.open does, with access control and the cache's index as asked.
    stores = GatewayStores(
        jobs=open_job_store(args.job_store, args.data_path, args.redis),
        artifacts=artifacts or open_artifact_store(args.artifact_store, args.data_path),
        cache_index=open_cache_index(args.cache_store, args.data_path, args.redis) if cache is not None else None,
        access=access,
    )
    handles = GatewayHandles(generator=generator, cache=cache)
    return build_gateway(settings, handles, stores, admission=admission, estimator=estimator or fast_estimator())


class Service:
    """A gateway with the result cache and admission on: at most `max_queue_per_replica`
    (default 4) unfinished jobs on its one denoiser replica."""

    def __init__(
        self,
        tmp_path,
        profile=None,
        estimator=None,
        access: AccessGuard | None = None,
        service_args: dict | None = None,
        **admission,
    ) -> None:
        """`service_args`: other ServiceArgs fields (cache settings, stores); `admission`: AdmissionConfig's."""
        self.args = ServiceArgs(
            data_dir=str(tmp_path),
            admission={"max_queue_per_replica": 4, **admission},
            **{**TEST_TIMINGS, "job_lease_s": 3600, **(service_args or {})},
        )
        self.generator = FakeGenerator()
        self.cache = ResultCache.func_or_class(self.args.model_dump())
        self.gateway = gateway_over(
            tmp_path,
            self.generator,
            args=self.args,
            cache=self.cache,
            access=access,
            admission=True,
            estimator=estimator,
            profile=profile,
        )
        self.store = self.gateway.stores.jobs
        self.estimator = self.gateway.estimator
        self.load = self.gateway.load
        self.creator = self.gateway.creator
        self.runner = self.gateway.runner

    def busy(self, jobs: int, steps: int = 2) -> None:
        """`jobs` unfinished jobs held by a live runner elsewhere."""
        for n in range(jobs):
            job = make_job(1000 + n, owner="elsewhere", heartbeat_at=9e18)
            job.params = job.params.model_copy(update={"num_inference_steps": steps})
            self.store.create(job)


def api_client(gateway: GatewayApp) -> TestClient:
    """The HTTP API of `gateway`; use as a context manager (`with api_client(g) as client:`).

    Unhandled errors come back as the service's 500 JSON, not re-raised into the test.
    """
    return TestClient(gateway.app, raise_server_exceptions=False)
