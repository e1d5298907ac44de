"""Calling the staged graph through Ray Serve handles: encoder -> denoiser -> video encoder.

The gateway holds one `StageGraph`. The prompt encoder's response is handed
to the denoiser unawaited, so the embeddings go replica to replica through
the object store without passing through the gateway.

With a multi-GPU denoiser (`args.stages.parallel_denoiser`), a job whose latent
tokens reach its threshold is denoised there instead (serve_app/routing.py).
Its ranks decode the video themselves: its stream ends with the EncodedVideo,
and the video encoder is skipped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from ray.exceptions import NodeDiedError, RayActorError, RayTaskError

from serve_app.deadline import Deadline
from serve_app.errors import DeadlineExceeded, ServiceError, StageFailed, StageLost
from serve_app.messages import DenoisedLatents, EncodedVideo, GraphResult, ProgressCallback, StepProgress
from serve_app.params import GenerationParams
from serve_app.routing import DenoiserRoutes

# GraphResult and ProgressCallback live in messages.py (Ray-free, for serve_app/handles.py);
# imported from here too.
__all__ = ["GraphResult", "ProgressCallback", "StageGraph", "unwrap_stage_error"]

# How long past the deadline the gateway waits for a stage to report how far
# it got (its own check fires first, at a step boundary) before giving up on it.
DEADLINE_GRACE_S = 2.0


def unwrap_stage_error(exc: BaseException) -> BaseException:
    """The `ServiceError` a replica raised, out of Ray's wrappers (which nest
    when a failed response is passed on to another stage)."""
    seen = exc
    while isinstance(seen, RayTaskError):
        cause = getattr(seen, "cause", None)
        if cause is None:
            break
        seen = cause
    return seen


@dataclass
class _Progress:
    last: StepProgress | None = None


class StageGraph:
    """The gateway's `VideoGenerator` (serve_app/handles.py) over the three stages' Ray Serve handles."""

    def __init__(
        self,
        prompt_encoder: Any,
        denoiser: Any,
        video_encoder: Any,
        images: Any = None,
        parallel_denoiser: Any = None,
        routes: DenoiserRoutes | None = None,
    ) -> None:
        self.prompt_encoder = prompt_encoder
        self.denoiser = denoiser
        self.video_encoder = video_encoder
        # Image to video: the uploaded first frames by hash (serve_app/reference_images.py).
        self.images = images
        # The multi-GPU denoiser's handle and the rule that sends large jobs to it; None: none.
        self.parallel_denoiser = parallel_denoiser
        self.routes = routes if parallel_denoiser is not None and routes is not None else DenoiserRoutes()

    def denoiser_for(self, params: GenerationParams) -> Any:
        """The handle of the denoiser deployment that runs `params` (serve_app/routing.py)."""
        return self.parallel_denoiser if self.routes.parallel(params) else self.denoiser

    async def generate(
        self,
        params: GenerationParams,
        deadline: Deadline,
        on_progress: ProgressCallback | None = None,
        job_id: str | None = None,
    ) -> GraphResult:
        """`job_id` names the denoiser's loop checkpoint: a rerun of the same job resumes from it."""
        progress = _Progress()
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(
                self._run(params, deadline, progress, on_progress, started, job_id),
                timeout=max(0.0, deadline.remaining()) + DEADLINE_GRACE_S,
            )
        except TimeoutError:
            step = progress.last.step if progress.last else 0
            raise DeadlineExceeded(
                f"deadline passed; the request was stopped after step {step} of {params.num_inference_steps}",
                stage="gateway",
                step=step,
                total_steps=params.num_inference_steps,
            ) from None

    async def _encode_image(self, params: GenerationParams, deadline: Deadline) -> Any:
        """The video encoder's call for the job's first frame (unawaited), or None for text to video."""
        if params.input_reference_sha256 is None:
            return None
        if self.images is None:
            raise StageFailed("this job has an input_reference image, but the gateway has no image store")
        # Read off the event loop: a bucket's GET blocks for a round trip and ~10 MB.
        data = await asyncio.to_thread(self.images.get, params.input_reference_sha256)
        return self.video_encoder.encode_image.remote(data, params.width, params.height, deadline)

    async def _run(
        self,
        params: GenerationParams,
        deadline: Deadline,
        progress: _Progress,
        on_progress: ProgressCallback | None,
        started: float,
        job_id: str | None,
    ) -> GraphResult:
        embeddings = self.prompt_encoder.encode.remote(
            params.prompt, params.negative_prompt, params.guidance_scale, deadline
        )
        # Image to video: the video encoder (which holds the VAE) encodes the first frame while
        # the prompt encoder works; like the embeddings, its latent goes replica to replica.
        try:
            image_latents = await self._encode_image(params, deadline)
        except BaseException:
            embeddings.cancel()
            raise
        conditioning = {} if image_latents is None else {"image_latents": image_latents}
        stream = (
            self.denoiser_for(params)
            .options(stream=True)
            .denoise.remote(params, embeddings, deadline, params.fast, job_id, **conditioning)
        )
        latents: DenoisedLatents | None = None
        video: EncodedVideo | None = None
        try:
            async for message in stream:
                if isinstance(message, StepProgress):
                    progress.last = message
                    if on_progress is not None:
                        on_progress(message)
                elif isinstance(message, EncodedVideo):
                    video = message  # the multi-GPU denoiser's ranks decoded it already
                else:
                    latents = message
            assert latents is not None, "denoiser stream ended without latents"
            if video is None:
                video = await self.video_encoder.encode.remote(latents.latents, params.fps, deadline)
        except asyncio.CancelledError:
            # Client gone or deadline hit in wait_for: stop the stages now
            # rather than when Ray notices the parent request is gone.
            stream.cancel()
            embeddings.cancel()
            if image_latents is not None:
                image_latents.cancel()
            raise
        except Exception as exc:
            cause = unwrap_stage_error(exc)
            if isinstance(cause, ServiceError):
                raise cause from None
            if isinstance(cause, (RayActorError, NodeDiedError)):
                raise StageLost(f"a pipeline stage's replica was lost: {type(cause).__name__}") from exc
            # The type only: the text of an unexpected error can carry a remote
            # traceback or internals; the replica's log has the whole story.
            raise StageFailed(f"a pipeline stage failed: {type(cause).__name__}") from exc
        return GraphResult(
            video=video,
            prompt_encode_s=latents.prompt_encode_s,
            denoise_s=latents.elapsed_s,
            total_s=time.perf_counter() - started,
        )
