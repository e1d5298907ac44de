"""Gateway: the HTTP ingress. Validation, jobs, results; no model."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from typing import Any

from ray import serve

from serve_app import metrics
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
from serve_app.webhooks import WebhookConfig, check_destination, deliver

STAGE_PROBE_TIMEOUT_S = 5.0


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
            return StageHealth(ok=False, error=f"{type(exc).__name__}: {exc}"[:500])

    async def describe_stages(self) -> dict[str, StageHealth]:
        results = await asyncio.gather(*(self._one(h) for h in self.handles.values()))
        return dict(zip(self.handles, results))


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
        )
        self.store = store
        # Jobs left behind by a previous gateway are picked up from here on.
        self.runner.start()

    def __serve_build_asgi_app__(self):
        return create_app(self.service)

    async def __del__(self):
        # Scale-down, redeploy, `serve shutdown`: hand running jobs back to the
        # store so another replica (or the next start) resumes them at once.
        if hasattr(self, "runner"):  # not when the constructor itself failed
            await self.runner.shutdown()
            self.store.close()
