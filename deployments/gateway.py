"""Gateway: the HTTP ingress. Validation, jobs, results; no model."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import Any

from ray import serve

from serve_app import metrics
from serve_app.access.guard import AccessGuard
from serve_app.api.protocol import StageHealth
from serve_app.api.routes import create_app
from serve_app.api.service import VideoService
from serve_app.artifacts import open_artifact_store
from serve_app.cache.index import open_cache_index
from serve_app.config import ServiceArgs
from serve_app.estimates import StageTimeEstimator
from serve_app.graph import StageGraph
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.stores import open_job_store
from serve_app.policy.admission import Admission
from serve_app.policy.autoscaling import unclaimed_jobs_report
from serve_app.policy.load import LoadMonitor, nvml_utilization, serve_replicas
from serve_app.policy.tiers import apply_tier
from serve_app.webhooks import WebhookConfig, check_destination, deliver

log = logging.getLogger("ray.serve")

STAGE_PROBE_TIMEOUT_S = 5.0
# Unfinished jobs read per admission decision; admission keeps the queue far
# below this (max_queue_per_replica per replica), so it only bounds the naive mode.
ACTIVE_JOBS_READ_LIMIT = 2000


class HandleClient:
    """`await client.method(...)` for `handle.method.remote(...)`: the plain async
    interface the service and runner expect (fakes stand in for it in unit tests)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __getattr__(self, name: str):
        method = getattr(self._handle, name)

        async def call(*args, **kwargs):
            return await method.remote(*args, **kwargs)

        return call


class HandleProbe:
    """Asks one replica of each stage what it runs (for /healthz)."""

    def __init__(self, handles: dict[str, Any]) -> None:
        self.handles = handles

    async def _one(self, handle: Any) -> StageHealth:
        try:
            info = await asyncio.wait_for(handle.describe.remote(), STAGE_PROBE_TIMEOUT_S)
            return StageHealth(ok=True, replica=info)
        except Exception as exc:  # noqa: BLE001 - health reports, never raises
            # The type only: a Ray error's text can carry a remote traceback, addresses
            # and pids, which a public health endpoint must not show (the log has them).
            log.warning("health probe failed", exc_info=exc)
            return StageHealth(ok=False, error=type(exc).__name__)

    async def describe_stages(self) -> dict[str, StageHealth]:
        results = await asyncio.gather(*(self._one(h) for h in self.handles.values()))
        return dict(zip(self.handles, results))


def lowest_tier(tiers):
    """For the runner's out-of-memory retry: the request under the table's last tier, if that lowers it."""
    tier = tiers.tiers[-1]

    def lower(params):
        lowered = apply_tier(params, tier)
        return None if lowered == params else (lowered, tier.name)

    return lower


def webhook_config(args: ServiceArgs) -> WebhookConfig:
    secret = os.environ.get(args.webhook_secret_env, "")
    # No secret, no webhooks: a webhook_url is then refused with a 422 rather
    # than the gateway refusing to start (make run sets no secret).
    return WebhookConfig(
        enabled=bool(secret),
        secret=secret,
        allowed_hosts=args.webhook_allowed_hosts,
        allow_http=args.webhook_allow_http,
        max_attempts=args.webhook_max_attempts,
        backoff_initial_s=args.webhook_backoff_initial_s,
        timeout_s=args.webhook_timeout_s,
    )


@serve.deployment
@serve.ingress()
class Gateway:
    def __init__(
        self, args: dict[str, Any], prompt_encoder: Any, denoiser: Any, video_encoder: Any, result_cache: Any
    ) -> None:
        metrics.enable()
        service_args = ServiceArgs(**args)
        profile = service_args.model_profile()
        store = open_job_store(service_args.job_store, service_args.data_path)
        artifacts = open_artifact_store(service_args.artifact_store, service_args.data_path)
        estimator = StageTimeEstimator(profile.prior_step_s_per_ktoken, profile.prior_decode_s_per_mpixel)
        hooks = webhook_config(service_args)
        tiers = service_args.tier_table()  # read and checked once: admission and the OOM retry share it
        self.guard = AccessGuard(service_args.access)

        def free_job_slot(job) -> None:
            if job.key_id is not None:
                self.guard.release_job(job.key_id, job.id)

        cache = HandleClient(result_cache)

        async def send_webhook(job):
            return await deliver(job.webhook_url, job.video.model_dump(), hooks)

        self.runner = JobRunner(
            store=store,
            artifacts=artifacts,
            generator=StageGraph(prompt_encoder, denoiser, video_encoder),
            estimator=estimator,
            owner=f"gateway-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            lease_s=service_args.job_lease_s,
            dispatch_interval_s=service_args.dispatch_interval_s,
            artifact_ttl_s=service_args.artifact_ttl_s,
            send_webhook=send_webhook,
            cache=cache,
            max_attempts=service_args.job_max_attempts,
            on_finished=free_job_slot,
            lower_memory=lowest_tier(tiers),
        )
        denoiser_options = service_args.stages.denoiser
        app_name = serve.get_replica_context().app_name
        self.load = LoadMonitor(
            active_jobs=lambda: store.active(ACTIVE_JOBS_READ_LIMIT),
            estimator=estimator,
            replicas=lambda: serve_replicas(app_name, "Denoiser"),
            gpu_utilization=nvml_utilization if denoiser_options.num_gpus > 0 else None,
            refresh_s=service_args.admission.refresh_s,
            initial_replicas=_initial_replicas(denoiser_options),
            encoder_replicas=lambda: serve_replicas(app_name, "VideoEncoder"),
            initial_encoder_replicas=_initial_replicas(service_args.stages.video_encoder),
        )
        admission = Admission(
            service_args.admission, tiers, estimator, denoiser_options.max_replicas
        )
        self.service = VideoService(
            args=service_args,
            profile=profile,
            catalog=service_args.preset_catalog(),
            store=store,
            artifacts=artifacts,
            runner=self.runner,
            estimator=estimator,
            probe=HandleProbe(
                {"prompt_encoder": prompt_encoder, "denoiser": denoiser, "video_encoder": video_encoder}
            ),
            check_webhook=lambda url: check_destination(url, hooks),
            cache=cache,
            cache_index=open_cache_index(service_args.cache_store, service_args.data_path),
            admin_key=os.environ.get(service_args.admin_key_env, ""),
            admission=admission,
            load=self.load,
            guard=self.guard,
        )
        self.store = store
        # Jobs left behind by a previous gateway are picked up from here on.
        self.runner.start()
        self.load.start()

    def __serve_build_asgi_app__(self):
        return create_app(self.service)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Ray Serve asks for this while the gateway has an autoscaling_config (serve_app/app.py
        gives it one when a stage scales on queue depth): the jobs waiting for a dispatcher, which
        the application-level policy adds to the denoiser's queue (serve_app/policy/autoscaling.py)."""
        return unclaimed_jobs_report(self.runner.store, self.runner.clock(), self.runner.lease_s)

    async def __del__(self):
        # Scale-down, redeploy, `serve shutdown`: hand running jobs back to the
        # store so another replica (or the next start) resumes them at once.
        if hasattr(self, "runner"):  # not when the constructor itself failed
            self.load.stop()
            await self.runner.shutdown()
            self.store.close()
            self.guard.close()


def _initial_replicas(options) -> int:
    """Replicas a stage starts with: its fixed count, or its autoscaling floor."""
    if options.autoscaling is None:
        return options.max_replicas
    return options.autoscaling.initial_replicas or options.autoscaling.min_replicas
