"""The logic behind the routes: validate, run the graph, keep the result."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Protocol

from serve_app.api.protocol import CreateVideoRequest, HealthResponse, StageHealth, VideoError, VideoObject, VideoTimings
from serve_app.artifacts import ArtifactStore
from serve_app.config import ModelProfile, PresetCatalog, ServiceArgs
from serve_app.deadline import Deadline
from serve_app.errors import InvalidRequest, RequestCancelled, ServiceError, StageFailed, VideoNotReady
from serve_app.graph import GraphResult
from serve_app.params import GenerationParams, resolve_generation
from serve_app.records import RecordStore


class Generator(Protocol):
    async def generate(self, params: GenerationParams, deadline: Deadline, on_progress=None) -> GraphResult: ...


class StageProbe(Protocol):
    async def describe_stages(self) -> dict[str, StageHealth]: ...


def new_video_id() -> str:
    return f"video_{uuid.uuid4().hex}"


class VideoService:
    def __init__(
        self,
        args: ServiceArgs,
        profile: ModelProfile,
        catalog: PresetCatalog,
        generator: Generator,
        records: RecordStore,
        artifacts: ArtifactStore,
        probe: StageProbe | None = None,
    ) -> None:
        self.args = args
        self.profile = profile
        self.catalog = catalog
        self.generator = generator
        self.records = records
        self.artifacts = artifacts
        self.probe = probe

    # --- checks ---------------------------------------------------------------------

    def _check_model(self, model: str | None) -> None:
        allowed = {self.profile.model_id, self.profile.name}
        if model is not None and model not in allowed:
            raise InvalidRequest(f"model={model!r} is not served here; use {self.profile.model_id!r}", param="model")

    def _deadline(self, requested: float | None) -> Deadline:
        seconds = self.args.default_deadline_s if requested is None else requested
        if not 0 < seconds <= self.args.max_deadline_s:
            raise InvalidRequest(
                f"deadline_s={seconds} is outside the allowed range (0, {self.args.max_deadline_s}]",
                param="deadline_s",
            )
        return Deadline.after(seconds)

    # --- routes' logic ----------------------------------------------------------------

    async def create_video(self, request: CreateVideoRequest) -> VideoObject:
        self._check_model(request.model)
        params = resolve_generation(request.model_dump(), self.catalog)
        deadline = self._deadline(request.deadline_s)
        video = self._new_record(params)
        self.records.save(video)

        def on_progress(step) -> None:
            percent = int(100 * step.step / step.total_steps)
            if percent != video.progress:  # one small write per visible change
                video.progress = percent
                self.records.save(video)

        try:
            result = await self.generator.generate(params, deadline, on_progress)
        except asyncio.CancelledError:
            self._fail(video, RequestCancelled("the client closed the connection"))
            raise
        except ServiceError as exc:
            self._fail(video, exc)
            exc.details.setdefault("video_id", video.id)
            raise
        except Exception as exc:
            # A bug of ours, not a stage's: still, no video stays "in_progress" forever.
            failure = StageFailed(f"generation failed: {type(exc).__name__}", video_id=video.id)
            self._fail(video, failure)
            raise failure from exc
        self.artifacts.put(video.id, "video", result.video.mp4)
        video.status, video.progress, video.completed_at = "completed", 100, int(time.time())
        video.timings = VideoTimings(
            prompt_encode_s=round(result.prompt_encode_s, 4),
            denoise_s=round(result.denoise_s, 4),
            decode_s=round(result.video.decode_s, 4),
            encode_s=round(result.video.encode_s, 4),
            total_s=round(result.total_s, 4),
        )
        self.records.save(video)
        return video

    def _new_record(self, params: GenerationParams) -> VideoObject:
        return VideoObject(
            id=new_video_id(),
            status="in_progress",
            model=self.profile.model_id,
            created_at=int(time.time()),
            size=params.size,
            seconds=f"{params.seconds:.2f}",
            preset=params.preset,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            width=params.width,
            height=params.height,
            num_frames=params.num_frames,
            fps=params.fps,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            seed=params.seed,
        )

    def _fail(self, video: VideoObject, exc: ServiceError) -> None:
        video.status = "failed"
        video.error = VideoError(code=exc.code, message=exc.message)
        video.completed_at = int(time.time())
        self.records.save(video)

    def get_video(self, video_id: str) -> VideoObject:
        return self.records.load(video_id)

    def content_path(self, video_id: str, variant: str):
        video = self.records.load(video_id)
        if video.status != "completed":
            raise VideoNotReady(
                f"video {video_id!r} is {video.status}; content exists only for completed videos",
                param="video_id",
                status=video.status,
            )
        if variant != "video":
            raise InvalidRequest(f"variant={variant!r} is not one of ['video']", param="variant")
        return self.artifacts.local_path(video_id, "video")

    async def health(self) -> HealthResponse:
        stages = await self.probe.describe_stages() if self.probe else {}
        return HealthResponse(
            status="ok" if all(s.ok for s in stages.values()) else "degraded",
            model=self.profile.identity,
            attention_backend=self.profile.attention_backend,
            default_deadline_s=self.args.default_deadline_s,
            stages=stages,
        )

    def describe(self) -> dict[str, Any]:
        return {"presets": {k: v.model_dump() for k, v in self.catalog.presets.items()},
                "limits": self.catalog.limits.model_dump(),
                "default_preset": self.catalog.default_preset}
