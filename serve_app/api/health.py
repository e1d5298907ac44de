"""/healthz (the stages, access control and the load admission sees) and /v1/presets
(what requests are checked against)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve_app.access.guard import AccessGuard
from serve_app.api.protocol import HealthResponse, StageHealth
from serve_app.config import ModelProfile, PresetCatalog
from serve_app.errors import ServiceUnavailable
from serve_app.jobs.model import JobRecord
from serve_app.policy import eta as eta_model
from serve_app.policy.admission import Admission
from serve_app.policy.load import LoadMonitor

router = APIRouter()


class StageProbe(Protocol):
    async def describe_stages(self) -> dict[str, StageHealth]: ...


class ServiceReport:
    """What the service is and how it is doing, for operators and clients."""

    def __init__(
        self,
        profile: ModelProfile,
        catalog: PresetCatalog,
        default_deadline_s: float,
        probe: StageProbe | None,
        guard: AccessGuard | None,
        admission: Admission | None,
        load: LoadMonitor,
    ) -> None:
        self.profile = profile
        self.catalog = catalog
        self.default_deadline_s = default_deadline_s
        self.probe = probe
        self.guard = guard
        self.admission = admission
        self.load = load

    async def health(self) -> HealthResponse:
        stages = await self.probe.describe_stages() if self.probe else {}
        store_ok, load = True, None
        if self.admission is not None:
            try:
                # The unfinished jobs (the load) are read in a thread: a job store that does not
                # answer (Redis down or blackholed, until its timeout, args.redis) holds this
                # request, not the event loop with every other one.
                jobs = await asyncio.to_thread(self.load.active_jobs)
                load = self._load_report(self.admission, jobs)
            except ServiceUnavailable as exc:
                # /healthz still answers: degraded, saying why.
                store_ok, load = False, {"error": exc.code, "message": exc.message}
        return HealthResponse(
            status="ok" if store_ok and all(s.ok for s in stages.values()) else "degraded",
            model=self.profile.identity,
            attention_backend=self.profile.attention_backend,
            default_deadline_s=self.default_deadline_s,
            stages=stages,
            access=self.guard.describe() if self.guard is not None else None,
            load=load,
        )

    def _load_report(self, admission: Admission, jobs: list[JobRecord]) -> dict[str, Any]:
        snap = self.load.snapshot(jobs=jobs)
        load = admission.load(snap)
        report = {
            "load": round(load, 3),
            "tier": admission.tiers.tiers[admission.tiers.for_load(load)].name,
            "denoiser_replicas": snap.replicas,
            "unfinished_jobs": snap.active_jobs,
            "work_ahead_s": round(eta_model.queue_wait_s(snap, admission.config), 3),
            "denoise_ahead_s": round(snap.denoise_ahead_s, 3),
            "decode_ahead_s": round(snap.decode_ahead_s, 3),
            "video_encoder_replicas": snap.encoder_replicas,
            "gpu_utilization": snap.gpu_utilization,
            "admission": "on" if admission.config.enabled else "off",
        }
        if admission.estimator.routes.enabled:
            # The multi-GPU denoiser's own queue (serve_app/routing.py): its jobs are in
            # unfinished_jobs too, their work only here.
            report["parallel_denoiser"] = {
                "replicas": snap.parallel_replicas,
                "unfinished_jobs": snap.parallel_jobs,
                "work_ahead_s": round(eta_model.queue_wait_s(snap, admission.config, parallel=True), 3),
                "min_latent_tokens": admission.estimator.routes.min_latent_tokens,
            }
        return report

    def describe(self) -> dict[str, Any]:
        return {
            "presets": {k: v.model_dump() for k, v in self.catalog.presets.items()},
            "limits": self.catalog.limits.model_dump(),
            "default_preset": self.catalog.default_preset,
        }


def _report(request: Request) -> ServiceReport:
    return request.app.state.report


@router.get("/healthz", response_model=HealthResponse, summary="Service and stage health")
async def healthz(request: Request) -> JSONResponse:
    health = await _report(request).health()
    return JSONResponse(status_code=200 if health.status == "ok" else 503, content=health.model_dump())


@router.get("/v1/presets", summary="Presets and the limits requests are checked against")
async def presets(request: Request) -> dict:
    return _report(request).describe()
