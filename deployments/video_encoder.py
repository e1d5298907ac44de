"""VideoEncoder: VAE decode of latents and mp4 encoding, in one place; and, for image to
video, the VAE encode of the first frame (`encode_image`): the stage that holds the VAE.

By default (profile `speed.decode: streaming`) the VAE decodes latent frame by
latent frame and each chunk goes to the mp4 encoder while the GPU decodes the
next, so the encode hides behind the decode. A decode that runs out of GPU
memory is retried once with tiling (`speed.tile_on_oom`), through the stage's
out-of-memory fallback.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from PIL import Image
from ray import serve

from deployments.base import ModelStage
from serve_app.deadline import Deadline
from serve_app.images import fitted_image
from serve_app.messages import EncodedVideo, ImageLatents
from serve_app.pipeline.image_condition import encode_image
from serve_app.pipeline.optimize import prepare_vae
from serve_app.pipeline.stages import decode_to_mp4


@serve.deployment
class VideoEncoder(ModelStage):
    stage = "video_encoder"

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__(args)
        self.speed = self.profile.speed
        prepare_vae(self.pipe.vae, self.speed)
        if self.args.warmup:
            # cuDNN's per-shape algorithm search and allocator growth, here, not in a request.
            self.warm_up(self._warm_up_steps(), before_ready=max(1, self.presets_before_ready()))

    def _warm_up_steps(self) -> list:
        import torch

        z = self.pipe.vae.config.z_dim
        # The smallest decode compiles what every decode needs; with presets to warm,
        # the first preset's decode does that itself.
        steps = (
            []
            if self.speed.warmup_presets
            else [("decode 64x64", functools.partial(self._encode, torch.zeros(1, z, 2, 4, 4), 8))]
        )
        catalog = self.args.preset_catalog()
        for name in self.speed.warmup_presets:
            p = catalog.presets[name]
            t = (p.num_frames - 1) // self.pipe.vae_scale_factor_temporal + 1
            s = self.pipe.vae_scale_factor_spatial
            latents = torch.zeros(1, z, t, p.height // s, p.width // s)
            steps.append((f"decode {name}", functools.partial(self._encode, latents, p.fps)))
        # Image to video's VAE encode (cuDNN's algorithm search for the encoder half), last:
        # after the replica is ready unless every warm-up step must run before.
        sizes = [(catalog.presets[n].width, catalog.presets[n].height) for n in self.speed.warmup_presets] or [(64, 64)]
        for width, height in dict.fromkeys(sizes):
            blank = Image.new("RGB", (width, height))
            steps.append(
                (f"encode image {width}x{height}", functools.partial(encode_image, self.pipe, blank, height, width))
            )
        return steps

    def _encode(self, latents, fps: int) -> EncodedVideo:
        return EncodedVideo.of(decode_to_mp4(self.pipe, latents, fps, mode=self.speed.decode, tile_on_oom=False), fps)

    def _encode_tiled(self, latents, fps: int) -> EncodedVideo:
        return EncodedVideo.of(decode_to_mp4(self.pipe, latents, fps, mode="tiled", tile_on_oom=False), fps)

    async def encode(self, latents, fps: int, deadline: Deadline) -> EncodedVideo:
        # The VAE decode has no step boundary to stop at; it is checked before
        # it starts, and the gateway stops waiting at the deadline regardless.
        deadline.check("video_encode")
        fallback = self._encode_tiled if self.speed.tile_on_oom and self.speed.decode != "tiled" else None
        return await self.run_model(self._encode, latents, fps, fallback=fallback)

    async def encode_image(self, data: bytes, width: int, height: int, deadline: Deadline) -> ImageLatents:
        """Image to video: the first frame's file, opened and fitted to width x height (off the model
        thread), then VAE-encoded into the normalised latent frame the denoiser holds frame 0 to."""
        deadline.check("image_encode")
        started = time.perf_counter()
        max_pixels = self.args.image_input.max_pixels
        image = await asyncio.to_thread(fitted_image, data, width, height, max_pixels)
        latents = await self.run_model(encode_image, self.pipe, image, height, width)
        # numpy, not torch, as every message between stages (the gateway must never unpickle torch).
        return ImageLatents(latents.numpy(), time.perf_counter() - started)

    async def describe(self) -> dict[str, Any]:
        out = await super().describe()
        out["decode"] = {
            "mode": self.speed.decode,
            "tile_on_oom": self.speed.tile_on_oom,
            "vae_channels_last": self.speed.vae_channels_last,
            "vae_fused_norms": self.speed.vae_fused_norms,
        }
        return out
