"""Image to video as Wan2.2-TI2V-5B does it: latent frame 0 is the image's, and is never denoised.

diffusers 0.42's `WanImageToVideoPipeline` in the 5B configuration
(`expand_timesteps=True`, no CLIP image encoder), taken apart for the staged graph:

- `encode_image` (video encoder): the image half of the pipeline's
  `prepare_latents`. The picture, already fitted to the size
  (serve_app/images.py), is preprocessed to [-1, 1], VAE-encoded as a one-frame
  video (the distribution's mode: `sample_mode="argmax"`) and normalised with
  the VAE's latents mean and std: one latent frame, (1, 48, 1, H/16, W/16).
- every denoising step (denoiser): the DiT's input is the latents with frame 0
  replaced by the image's (`condition_input`, through `first_frame_mask`), and
  the timestep is per token, 0 on frame 0's tokens and t elsewhere
  (`token_timesteps`); the scheduler steps the whole latents, and the result
  has frame 0 replaced once more (`with_condition`).

batching.py runs those lines in the project's loop. `image_pipeline` runs
diffusers' own `__call__` (the plain path, `speed.optimized_loop: false`): the
pipeline class itself, told that the image is already encoded.

Why the video encoder encodes: it is the stage that holds the VAE, so no other
stage loads a second copy (nor the 5B VAE's encoder half's activations), and
what crosses to the denoiser is one latent frame (~700 kB at 1280x704), not pixels.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any


def encode_image(pipe, image, height: int, width: int):
    """A fitted RGB picture (PIL, width x height) -> its normalised latent frame, float32, on the CPU.

    `WanImageToVideoPipeline.prepare_latents` for `expand_timesteps`, line for line.
    """
    import torch
    from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents
    from diffusers.utils.torch_utils import get_module_execution_device

    vae = pipe.vae
    device = pipe._execution_device
    z = vae.config.z_dim
    with torch.inference_mode():
        pixels = pipe.video_processor.preprocess(image, height=height, width=width).to(device, dtype=torch.float32)
        video_condition = pixels.unsqueeze(2).to(device=get_module_execution_device(vae), dtype=vae.dtype)
        latent = retrieve_latents(vae.encode(video_condition), sample_mode="argmax")
        latent = latent.to(device=device, dtype=torch.float32)
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(device, torch.float32)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(device, torch.float32)
        latent = (latent - mean) * inv_std
    return latent.cpu()


def first_frame_mask(latents):
    """(1, 1, F, H, W) ones in the latents' dtype, 0 on latent frame 0: the pipeline's `first_frame_mask`."""
    import torch

    _, _, frames, height, width = latents.shape
    mask = torch.ones(1, 1, frames, height, width, dtype=latents.dtype, device=latents.device)
    mask[:, :, 0] = 0
    return mask


def condition_input(latents, condition, mask, dtype):
    """What the DiT sees: the latents with frame 0 replaced by the image's, in the DiT's dtype."""
    return ((1 - mask) * condition + mask * latents).to(dtype)


def token_timesteps(mask, t, patch_size):
    """One timestep per DiT token (seq,): 0 on frame 0's tokens, t elsewhere.

    The pipeline's `(first_frame_mask[0][0][:, ::2, ::2] * t).flatten()`, with the
    DiT's (1, 2, 2) patch read from its config rather than written in.
    """
    if patch_size[0] != 1:
        raise ValueError(f"per-token timesteps assume no temporal patching; the DiT's patch is {tuple(patch_size)}")
    return (mask[0][0][:, :: patch_size[1], :: patch_size[2]] * t).flatten()


def with_condition(latents, condition, mask):
    """The loop's result: frame 0 replaced by the image's once more (the pipeline's last line)."""
    return (1 - mask) * condition + mask * latents


def with_first_frame(estimate, condition):
    """A preview's x0 estimate with latent frame 0 shown as the image it is held to."""
    import torch

    return torch.cat([condition.to(device=estimate.device, dtype=estimate.dtype), estimate[:, :, 1:]], dim=2)


def check_condition(condition, latents) -> None:
    """The image latent must be one frame of the latents' channels and size (a resized job would not be)."""
    _, channels, _, height, width = latents.shape
    if tuple(condition.shape) != (1, channels, 1, height, width):
        raise ValueError(
            f"image latent has shape {tuple(condition.shape)}; this job's latents need (1, {channels}, 1, "
            f"{height}, {width})"
        )


class _Preencoded:
    """The pipeline's `video_processor`, for an image that arrives already encoded: passed through."""

    def preprocess(self, image, height=None, width=None):
        return image


@functools.cache
def _pipeline_class():
    from diffusers import WanImageToVideoPipeline
    from diffusers.utils.torch_utils import randn_tensor

    class EncodedImagePipeline(WanImageToVideoPipeline):
        """`WanImageToVideoPipeline` whose `image` is the normalised latent frame `encode_image` made.

        Only `prepare_latents` differs: the noise is drawn exactly as the parent
        draws it, and the image half (VAE encode, normalisation) was done by the
        video encoder. Everything else, the denoising loop above all, is diffusers'.
        """

        def prepare_latents(
            self,
            image,
            batch_size,
            num_channels_latents=16,
            height=480,
            width=832,
            num_frames=81,
            dtype=None,
            device=None,
            generator=None,
            latents=None,
            last_image=None,
        ):
            if last_image is not None:
                raise ValueError("a last frame (first-last-frame interpolation) is not served")
            num_latent_frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1
            shape = (
                batch_size,
                num_channels_latents,
                num_latent_frames,
                height // self.vae_scale_factor_spatial,
                width // self.vae_scale_factor_spatial,
            )
            if latents is None:
                latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            else:
                latents = latents.to(device=device, dtype=dtype)
            check_condition(image, latents)
            condition = image.repeat(batch_size, 1, 1, 1, 1).to(device=device, dtype=dtype)
            return latents, condition, first_frame_mask(latents)

    return EncodedImagePipeline


def image_pipeline(pipe, z_dim: int):
    """A `WanImageToVideoPipeline` (5B configuration) over the denoiser's DiT and scheduler; call it
    with `image=` the latent frame from `encode_image` and `output_type="latent"`."""
    image_pipe = _pipeline_class()(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        scheduler=pipe.scheduler,
        transformer=pipe.transformer,
        expand_timesteps=True,
    )
    # Without a VAE the pipeline would assume Wan2.1's factors; the denoiser's pipe has the 5B's.
    image_pipe.vae_scale_factor_spatial = pipe.vae_scale_factor_spatial
    image_pipe.vae_scale_factor_temporal = pipe.vae_scale_factor_temporal
    image_pipe.video_processor = _Preencoded()
    # `__call__` reads the VAE's latent channel count, and with output_type="latent" nothing more of it.
    image_pipe.vae = SimpleNamespace(config=SimpleNamespace(z_dim=z_dim))
    return image_pipe


def as_condition(image_latents: Any, device):
    """The image latent as it arrives (numpy from another stage, or a tensor) on `device`, float32."""
    import torch

    return torch.as_tensor(image_latents).to(device=device, dtype=torch.float32)
