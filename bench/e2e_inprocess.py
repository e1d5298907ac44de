"""bench/gpu_e2e.py's baseline: the three model stages in one process, no Ray, no HTTP.

The deployment classes themselves are built (`Deployment.func_or_class`), with
the served config's args, so the same profile, speed options and warm-up run;
only the per-replica GPU memory caps are dropped (one process holds all three
stages, and a cap is per process: the last stage's would bind the others).
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from serve_app.config import ServiceArgs
from serve_app.deadline import Deadline
from serve_app.params import resolve_generation

# The same stages as the GPU replicas, none of the serving around them.
STAGES = ("prompt_encoder", "denoiser", "video_encoder")
WARM_UP_LIMIT_S = 300.0


class InProcessGraph:
    def __init__(self, app_args: dict[str, Any]) -> None:
        from deployments.denoiser import Denoiser
        from deployments.prompt_encoder import PromptEncoder
        from deployments.video_encoder import VideoEncoder

        args = ServiceArgs.model_validate(app_args).model_dump()
        for stage in STAGES:
            args["stages"][stage].update(num_gpus=0.0, gpu_memory_fraction=None)
        self.catalog = ServiceArgs.model_validate(args).preset_catalog()
        started = time.perf_counter()
        # One stage at a time, each warm before the next is built: in one process a
        # stage's background warm-up would compile while the next one's constructor
        # compiles too, and dynamo does not trace two things at once ("FX to
        # symbolically trace a dynamo-optimized function"). Replicas are one stage a process.
        self.prompt_encoder = self._warm(PromptEncoder.func_or_class(args))
        self.denoiser = self._warm(Denoiser.func_or_class(args))
        self.video_encoder = self._warm(VideoEncoder.func_or_class(args))
        self.startup_s = time.perf_counter() - started

    @staticmethod
    def _warm(stage):
        stage.wait_warm(WARM_UP_LIMIT_S)  # measure warm stages, as the HTTP side does
        return stage

    def run(self, body: dict[str, Any]) -> tuple[float, dict[str, float]]:
        """Seconds from the prompt to the finished mp4, one request alone, and each stage's
        share (named as the service's `timings`, so the two can be compared stage by stage)."""
        params = resolve_generation(body, self.catalog)
        stages: dict[str, float] = {}
        started = time.perf_counter()
        asyncio.run(self._generate(params, stages))
        return time.perf_counter() - started, stages

    async def _generate(self, params, stages: dict[str, float]) -> None:
        deadline = Deadline.after(3600)
        clock = time.perf_counter()
        embeddings = await self.prompt_encoder.encode(
            params.prompt, params.negative_prompt, params.guidance_scale, deadline
        )
        stages["prompt_encode_s"], clock = time.perf_counter() - clock, time.perf_counter()
        latents = None
        async for message in self.denoiser.denoise(params, embeddings, deadline, params.fast, None):
            latents = message
        stages["denoise_s"], clock = time.perf_counter() - clock, time.perf_counter()
        video = await self.video_encoder.encode(latents.latents, params.fps, deadline)
        stages["decode_and_encode_s"] = time.perf_counter() - clock
        assert video.mp4, "no mp4 came out"

    def close(self) -> None:
        for stage in (self.prompt_encoder, self.denoiser, self.video_encoder):
            stage.close()
        del self.prompt_encoder, self.denoiser, self.video_encoder
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
