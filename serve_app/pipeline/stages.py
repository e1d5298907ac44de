"""The three stages of `WanPipeline.__call__`, callable one at a time.

Together they are the same computation as `WanPipeline.__call__` (a test
holds them to it): `encode_prompts` is the pipeline's `encode_prompt`,
`denoise` is `__call__` with precomputed embeddings and `output_type="latent"`,
and `decode_latents` is the pipeline's tail (un-normalise, VAE decode,
post-process). Tensors leave a stage on the CPU, since they cross Ray
deployments and a CUDA tensor would land on whatever card the receiver has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from serve_app.deadline import StepGuard
from serve_app.params import GenerationParams

StepCallback = Callable[[int, int], None]  # (steps done, total steps)


@dataclass
class PromptEmbeddings:
    prompt_embeds: "object"  # torch.Tensor [1, seq, dim]
    negative_prompt_embeds: "object | None"  # None when guidance is off
    encode_s: float = 0.0  # how long the text encoder took


def uses_guidance(guidance_scale: float) -> bool:
    # WanPipeline.do_classifier_free_guidance: guidance runs only above 1.0.
    return guidance_scale > 1.0


def encode_prompts(pipe, prompt: str, negative_prompt: str, guidance_scale: float, max_sequence_length: int):
    import time

    import torch

    started = time.perf_counter()
    device = pipe._execution_device
    with torch.inference_mode():
        pe, npe = pipe.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=uses_guidance(guidance_scale),
            num_videos_per_prompt=1,
            max_sequence_length=max_sequence_length,
            device=device,
        )
    return PromptEmbeddings(pe.cpu(), None if npe is None else npe.cpu(), time.perf_counter() - started)


def denoise(
    pipe,
    params: GenerationParams,
    embeddings: PromptEmbeddings,
    guard: StepGuard,
    on_step: StepCallback | None = None,
    max_sequence_length: int = 512,
):
    """The DiT loop; returns latents on the CPU or raises why it stopped early.

    `guard` is consulted after every step: when the deadline passes or the
    request is cancelled, the pipeline's own interrupt flag skips the
    remaining steps, so the GPU is free one step later.
    """
    import torch

    device = pipe._execution_device
    total = params.num_inference_steps
    generator = torch.Generator(device=device).manual_seed(params.seed)

    def step_end(pipeline, i, t, callback_kwargs):
        guard.steps_done = i + 1
        if on_step is not None:
            on_step(i + 1, total)
        if guard.should_stop():
            pipeline._interrupt = True
        return {}

    if guard.should_stop():
        guard.raise_stop()
    npe = embeddings.negative_prompt_embeds
    with torch.inference_mode():
        (latents,) = pipe(
            prompt=None,
            prompt_embeds=embeddings.prompt_embeds.to(device),
            negative_prompt_embeds=None if npe is None else npe.to(device),
            height=params.height,
            width=params.width,
            num_frames=params.num_frames,
            num_inference_steps=total,
            guidance_scale=params.guidance_scale,
            generator=generator,
            output_type="latent",
            return_dict=False,
            callback_on_step_end=step_end,
            max_sequence_length=max_sequence_length,
        )
    if guard.steps_done < total:
        guard.raise_stop()
    return latents.cpu()


def decode_latents(pipe, latents):
    """Latents (tensor or array) -> float frames in [0, 1], shape (frames, height, width, 3).

    WanPipeline has no public decode step; this is its tail, line for line.
    """
    import torch

    vae = pipe.vae
    device = pipe._execution_device
    with torch.inference_mode():
        latents = torch.as_tensor(latents).to(device=device, dtype=vae.dtype)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        latents = latents / inv_std + mean
        video = vae.decode(latents, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")
    return frames[0]
