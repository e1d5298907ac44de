"""Gateway: the HTTP ingress. Validation, jobs, results; no model.

A thin shell: `serve_app.api.gateway_app.build_gateway` makes the whole
gateway; this deployment hands it Ray Serve handles and Serve's view of the
replicas, and serves its FastAPI app.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from serve_app import metrics
from serve_app.api.gateway_app import GatewayHandles, GatewaySettings, GatewayStores, build_gateway
from serve_app.api.protocol import StageHealth
from serve_app.api.retune import retune_gateway
from serve_app.config import ServiceArgs
from serve_app.deployment_view import stage_views, start_args
from serve_app.graph import StageGraph
from serve_app.live import apply_user_config
from serve_app.policy.autoscaling import unclaimed_jobs_report
from serve_app.policy.load import nvml_utilization, serve_replicas
from serve_app.routing import DenoiserRoutes

log = logging.getLogger("ray.serve")

STAGE_PROBE_TIMEOUT_S = 5.0


class ResultCacheHandle:
    """The ResultCache deployment behind its Ray Serve handle, as the gateway's
    `ResultCacheClient` (serve_app/handles.py): each method awaits the remote call."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def claim(self, key: str, job_id: str) -> str:
        return await self._handle.claim.remote(key, job_id)

    async def release(self, key: str, job_id: str) -> None:
        await self._handle.release.remote(key, job_id)

    async def fill(self, key: str, video: dict[str, Any], source_id: str) -> bool:
        return await self._handle.fill.remote(key, video, source_id)

    async def stats(self) -> dict[str, Any]:
        return await self._handle.stats.remote()

    async def delete(self, key: str) -> bool:
        return await self._handle.delete.remote(key)

    async def purge(self) -> int:
        return await self._handle.purge.remote()

    async def forget_source(self, key: str, source_id: str) -> bool:
        return await self._handle.forget_source.remote(key, source_id)

    async def collect_orphans(self, now: float | None = None) -> int:
        return await self._handle.collect_orphans.remote(now)


class HandleProbe:
    """Asks one replica of each stage what it runs (for /healthz)."""

    def __init__(self, handles: dict[str, Any]) -> None:
        self.handles = handles

    async def _one(self, handle: Any) -> StageHealth:
        try:
            info = await asyncio.wait_for(handle.describe.remote(), STAGE_PROBE_TIMEOUT_S)
            return StageHealth(ok=True, replica=info)
        except Exception as exc:
            # The type only: a Ray error's text can carry a remote traceback, addresses
            # and pids, which a public health endpoint must not show (the log has them).
            log.warning("health probe failed", exc_info=exc)
            return StageHealth(ok=False, error=type(exc).__name__)

    async def describe_stages(self) -> dict[str, StageHealth]:
        results = await asyncio.gather(*(self._one(h) for h in self.handles.values()))
        return dict(zip(self.handles, results))


@serve.deployment
@serve.ingress()
class Gateway:
    def __init__(
        self,
        args: dict[str, Any],
        prompt_encoder: Any,
        denoiser: Any,
        video_encoder: Any,
        result_cache: Any,
        parallel_denoiser: Any = None,
    ) -> None:
        """`parallel_denoiser`: the multi-GPU denoiser's handle, bound only when args.stages.parallel_denoiser
        is set (serve_app/app.py); large jobs go to it (serve_app/routing.py)."""
        metrics.enable()
        app_name = serve.get_replica_context().app_name
        start = start_args(args, "gateway")
        # The neighbours' replica counts and GPU shares as Serve runs them (a `deployments:`
        # entry may set them instead of args): admission's figures and the GPU reading.
        neighbours = ("denoiser", "video_encoder") + (("parallel_denoiser",) if parallel_denoiser is not None else ())
        self._views = stage_views(start.base, app_name, neighbours)
        self._base_args = start.base
        # The tiers file as read at start: a user_config without an inline table keeps it.
        self._file_tiers = start.base.tier_table()
        settings = GatewaySettings.load(self._viewed(start.args))
        stores = GatewayStores.open(settings)
        self._routes = DenoiserRoutes.of(settings.args.stages) if parallel_denoiser is not None else DenoiserRoutes()
        stage_handles = {"prompt_encoder": prompt_encoder, "denoiser": denoiser, "video_encoder": video_encoder}
        if parallel_denoiser is not None:
            stage_handles["parallel_denoiser"] = parallel_denoiser
        handles = GatewayHandles(
            generator=StageGraph(
                prompt_encoder,
                denoiser,
                video_encoder,
                images=stores.images,
                parallel_denoiser=parallel_denoiser,
                routes=self._routes,
            ),
            cache=ResultCacheHandle(result_cache),
            probe=HandleProbe(stage_handles),
            denoiser_replicas=lambda: serve_replicas(app_name, "Denoiser"),
            encoder_replicas=lambda: serve_replicas(app_name, "VideoEncoder"),
            parallel_replicas=(
                (lambda: serve_replicas(app_name, "ParallelDenoiser")) if parallel_denoiser is not None else None
            ),
            gpu_utilization=nvml_utilization if settings.args.stages.denoiser.num_gpus > 0 else None,
        )
        self.gateway = build_gateway(settings, handles, stores)
        self.gateway.start()

    def _viewed(self, args: ServiceArgs) -> ServiceArgs:
        stages = args.stages.model_copy(update=self._views)
        return args.model_copy(update={"stages": stages})

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve calls this after the constructor, and on every deploy that changes only the
        Gateway's user_config: admission, tiers and access limits change here, replicas and
        models stay (serve_app/live.py). A bad one raises, and the deploy fails with its message."""
        args = self._viewed(apply_user_config(self._base_args, "gateway", user_config))
        retune_gateway(self.gateway, args, self._file_tiers)
        log.info("gateway settings applied from its user_config: %s", ", ".join(sorted(user_config or {})))

    def __serve_build_asgi_app__(self):
        return self.gateway.app

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Ray Serve asks for this while the gateway has an autoscaling_config (serve_app/app.py
        gives it one when a stage scales on queue depth): the jobs waiting for a dispatcher, which
        the application-level policy adds to the denoiser's queue (serve_app/policy/autoscaling.py).
        Async, with the store read on its thread: Serve calls a sync one on the replica's event loop."""
        runner = self.gateway.runner
        # Split by denoiser deployment where there are two: each scales on its own queue.
        routed = self._routes.parallel if self._routes.enabled else None
        return await runner.jobs.call(unclaimed_jobs_report, runner.store, runner.clock(), runner.lease_s, routed)

    async def __del__(self):
        if hasattr(self, "gateway"):  # not when the constructor itself failed
            await self.gateway.close()
