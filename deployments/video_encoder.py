"""VideoEncoder: VAE decode of latents and mp4 encoding, in one place."""

from __future__ import annotations

import time
from typing import Any

from ray import serve

from deployments.base import ModelStage
from serve_app.deadline import Deadline
from serve_app.messages import EncodedVideo
from serve_app.pipeline.stages import decode_latents
from serve_app.video import encode_mp4, frames_to_uint8, make_thumbnail


@serve.deployment
class VideoEncoder(ModelStage):
    stage = "video_encoder"

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__(args)
        if self.args.warmup:
            import torch

            z = self.pipe.vae.config.z_dim
            self._encode(torch.zeros(1, z, 2, 4, 4), fps=8)

    def _encode(self, latents, fps: int) -> EncodedVideo:
        started = time.perf_counter()
        frames = frames_to_uint8(decode_latents(self.pipe, latents))
        decoded = time.perf_counter()
        mp4 = encode_mp4(frames, fps)
        thumbnail = make_thumbnail(frames)
        num_frames, height, width, _ = frames.shape
        return EncodedVideo(
            mp4=mp4,
            num_frames=num_frames,
            width=width,
            height=height,
            fps=fps,
            decode_s=decoded - started,
            encode_s=time.perf_counter() - decoded,
            thumbnail=thumbnail,
        )

    async def encode(self, latents, fps: int, deadline: Deadline) -> EncodedVideo:
        # The VAE decode has no step boundary to stop at; it is checked before
        # it starts, and the gateway stops waiting at the deadline regardless.
        deadline.check("video_encode")
        return await self.run_model(self._encode, latents, fps)
