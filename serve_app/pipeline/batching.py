"""The project's denoising loop: WanPipeline's math, no host syncs, requests batched.

`WanPipeline.__call__`'s loop, taken apart into per-request state
(`DenoiseJob`) and one step over any number of same-shape jobs
(`step_jobs`). One request alone is `denoise_optimized`; several concurrent
ones share forwards through `StepBatcher` (step_batcher.py), joining at step boundaries. What
differs from the pipeline, none of it changing the math:

- the scheduler's sigmas live on the GPU. diffusers keeps them on the CPU and
  moves one scalar at a time with `.to(device)`, a blocking copy that drains
  the GPU queue several times per step; on the device the step is launched
  without waiting (one sync remains: UniPC's corrector solves a 2x2 system
  with `torch.linalg.solve`, which checks its result on the host);
- the timestep goes in as one value per sample, not one per token: for text
  to video every token has the same timestep (WanPipeline's mask is all ones),
  and the per-token path embeds it 1,500-27,000 times and drags a
  (tokens x 6 x 3072) modulation tensor through every block. Image to video
  needs the per-token form (frame 0's tokens are at timestep 0), and gets it
  exactly as `WanImageToVideoPipeline` builds it (image_condition.py);
- guidance is one forward over [cond; uncond] when `cfg_batch` is on, and
  several requests stack along the batch axis. The scheduler stays per
  request: each job has its own copy, so jobs at different steps, with
  different step counts or guidance scales, can share a forward.

Equal to the pipeline up to the rounding of a different GEMM batch size
(tests/unit/test_optimized_path.py, tests/gpu/test_gpu_exact_path.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from serve_app.deadline import StepGuard
from serve_app.params import GenerationParams
from serve_app.pipeline.image_condition import (
    as_condition,
    check_condition,
    condition_input,
    first_frame_mask,
    token_timesteps,
    with_condition,
    with_first_frame,
)
from serve_app.pipeline.stages import denoised_estimate
from serve_app.settings.speed import EXACT, FastKnobs

StepCallback = Callable[[int, int], None]


@dataclass(eq=False)
class DenoiseJob:
    """One request's loop state; owned by whichever thread runs the steps."""

    params: GenerationParams
    knobs: FastKnobs
    latents: Any  # torch.Tensor [1, C, F, H, W] float32 on the device
    prompt_embeds: Any  # [1, T, D] in the DiT's dtype
    negative_embeds: Any  # [1, T, D] or None when guidance is off
    scheduler: Any  # this job's own UniPC instance
    timesteps: Any  # [steps] on the device
    guard: StepGuard
    on_step: StepCallback | None = None
    on_latents: Any = None  # stages.LatentsCallback (previews)
    step: int = 0
    done: Future = field(default_factory=Future)
    # Image to video: the first frame's latent (1, C, 1, H, W) float32 on the device, and the
    # pipeline's first_frame_mask (0 on latent frame 0); None for text to video.
    condition: Any = None
    mask: Any = None

    @property
    def guided(self) -> bool:
        return self.negative_embeds is not None

    @property
    def finished(self) -> bool:
        return self.step >= len(self.timesteps)

    @property
    def conditioned(self) -> bool:
        return self.condition is not None

    def batch_key(self) -> tuple:
        """Jobs with equal keys may share a forward (image jobs' per-token timesteps are their own form)."""
        knobs = (self.knobs.fp8, self.knobs.fp8_attention)  # one DiT variant per forward
        return (tuple(self.latents.shape), tuple(self.prompt_embeds.shape), knobs, self.conditioned)

    def model_input(self, dtype):
        """What the DiT sees this step (latent frame 0 held to the image for image jobs)."""
        if self.condition is None:
            return self.latents.to(dtype)
        return condition_input(self.latents, self.condition, self.mask, dtype)

    def timestep_row(self, t, patch_size):
        """This job's timestep for one batch row: a scalar, or one per token for image jobs."""
        return t if self.condition is None else token_timesteps(self.mask, t, patch_size)

    def output(self):
        """The loop's result: the latents, with frame 0 the image's for image jobs."""
        return self.latents if self.condition is None else with_condition(self.latents, self.condition, self.mask)

    def shown(self, estimate):
        """A preview's estimate, with frame 0 the image it is held to for image jobs."""
        return estimate if self.condition is None else with_first_frame(estimate, self.condition)


def uses_guidance(guidance_scale: float) -> bool:
    return guidance_scale > 1.0  # WanPipeline.do_classifier_free_guidance


def start_job(
    pipe,
    params: GenerationParams,
    embeddings,
    guard: StepGuard,
    on_step: StepCallback | None = None,
    knobs: FastKnobs = EXACT,
    dtype=None,
    on_latents=None,
    image_latents=None,
) -> DenoiseJob:
    """A job at step 0: the pipeline's latents for this seed, its own scheduler; with `image_latents`
    (image to video) the first frame's latent and mask, as `WanImageToVideoPipeline.prepare_latents`."""
    import torch

    device = pipe._execution_device
    dtype = dtype or pipe.transformer.dtype
    generator = torch.Generator(device=device).manual_seed(params.seed)
    latents = pipe.prepare_latents(
        1,
        pipe.transformer.config.in_channels,
        params.height,
        params.width,
        params.num_frames,
        torch.float32,
        device,
        generator,
    )
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(params.num_inference_steps, device=device)
    scheduler.set_begin_index(0)
    scheduler.sigmas = scheduler.sigmas.to(device)  # why: see the module docstring
    guided = uses_guidance(params.guidance_scale)
    npe = embeddings.negative_prompt_embeds if guided else None
    if guided and npe is None:
        raise ValueError(f"guidance_scale={params.guidance_scale} needs negative prompt embeddings")
    condition = mask = None
    if image_latents is not None:
        condition = as_condition(image_latents, device)
        check_condition(condition, latents)
        mask = first_frame_mask(latents)
    return DenoiseJob(
        condition=condition,
        mask=mask,
        params=params,
        knobs=knobs,
        latents=latents,
        prompt_embeds=embeddings.prompt_embeds.to(device=device, dtype=dtype),
        negative_embeds=None if npe is None else npe.to(device=device, dtype=dtype),
        scheduler=scheduler,
        timesteps=scheduler.timesteps,
        guard=guard,
        on_step=on_step,
        on_latents=on_latents,
    )


def _forward(runtime, transformer, hidden, timestep, context, name: str, cache_kwargs: dict):
    graphs = runtime.graphs if runtime is not None else None
    if (
        graphs is not None
        and transformer is graphs.transformer
        and not transformer.is_cache_enabled
        and graphs.wants(hidden.shape, transformer.config.patch_size)
    ):
        return graphs(hidden, timestep, context)
    with transformer.cache_context(name, **cache_kwargs):
        return transformer(hidden_states=hidden, timestep=timestep, encoder_hidden_states=context, return_dict=False)[0]


def step_jobs(transformer, jobs: list[DenoiseJob], cfg_batch: bool = True, runtime=None) -> None:
    """One denoising step for every job, with as few DiT forwards as possible.

    All jobs must share `batch_key()`. Rows are [cond of each job; uncond of
    each guided job]; with one unguided job or cfg_batch off for a single job,
    the pipeline's own two batch-1 passes are used.
    """
    import torch

    # The embeddings carry the DiT's compute dtype (an FP8 copy reports its
    # storage dtype as `transformer.dtype`, not what its inputs should be).
    dtype = jobs[0].prompt_embeds.dtype
    inputs = [job.model_input(dtype) for job in jobs]
    ts = [job.timesteps[job.step] for job in jobs]
    rows = [job.timestep_row(t, transformer.config.patch_size) for job, t in zip(jobs, ts)]
    guided = [job for job in jobs if job.guided]
    first = jobs[0]
    # Cache hooks key their state by context name; a single job keeps the
    # pipeline's names so the step cache behaves exactly as in diffusers.
    cache_kwargs = {"step_index": first.step, "num_inference_steps": len(first.timesteps)}

    if len(jobs) == 1 and (not first.guided or not cfg_batch):
        t = rows[0].unsqueeze(0)  # (1,), or (1, tokens) for an image job
        cond = [_forward(runtime, transformer, inputs[0], t, first.prompt_embeds, "cond", cache_kwargs)]
        uncond = {}
        if first.guided:
            uncond[0] = _forward(runtime, transformer, inputs[0], t, first.negative_embeds, "uncond", cache_kwargs)
    else:
        hidden = torch.cat(inputs + [inputs[i] for i, j in enumerate(jobs) if j.guided])
        timestep = torch.stack(rows + [rows[i] for i, j in enumerate(jobs) if j.guided])
        context = torch.cat([j.prompt_embeds for j in jobs] + [j.negative_embeds for j in guided])
        out = _forward(runtime, transformer, hidden, timestep, context, "cfg_batch", cache_kwargs)
        rows = list(out.split(1))
        cond = rows[: len(jobs)]
        guided_index = [i for i, j in enumerate(jobs) if j.guided]
        uncond = dict(zip(guided_index, rows[len(jobs) :]))

    for i, job in enumerate(jobs):
        noise_pred = cond[i]
        if job.guided:
            noise_pred = uncond[i] + job.params.guidance_scale * (noise_pred - uncond[i])
        job.latents = job.scheduler.step(noise_pred, ts[i], job.latents, return_dict=False)[0]
        job.step += 1
        job.guard.steps_done = job.step
        if job.on_latents is not None:
            # The job has a `scheduler` like a pipeline, which is all the
            # preview's estimate reads.
            job.on_latents(
                job.step, len(job.timesteps), lambda job=job, now=job.latents: job.shown(denoised_estimate(job, now))
            )
        if job.on_step is not None:
            job.on_step(job.step, len(job.timesteps))


def step_cache(transformer, knobs: FastKnobs):
    """Context: diffusers' First-Block-Cache on `transformer` for the duration of one job."""
    from contextlib import contextmanager

    @contextmanager
    def cm():
        if knobs.step_cache_threshold is None:
            yield
            return
        from diffusers.hooks import FirstBlockCacheConfig

        transformer.enable_cache(FirstBlockCacheConfig(threshold=knobs.step_cache_threshold))
        try:
            yield
        finally:
            transformer.disable_cache()

    return cm()


def denoise_optimized(
    runtime,
    params: GenerationParams,
    embeddings,
    guard: StepGuard,
    on_step: StepCallback | None = None,
    knobs: FastKnobs = EXACT,
    on_latents=None,
    checkpoints=None,
    image_latents=None,
):
    """One request through the project's loop; latents on the CPU, or raises why it stopped.

    `runtime` is a `DenoiserRuntime` (denoiser_runtime.py, which imports this
    module to warm up, so the type is not imported here). Checks `guard` after
    every step, like `stages.denoise`. `checkpoints` (checkpoint.LoopCheckpoints)
    resumes the loop from its saved step and saves it on its cadence; a step
    cache keeps hook state outside the loop, so such a job neither saves nor
    resumes.
    """
    import torch

    if guard.should_stop():
        guard.raise_stop()
    transformer = runtime.transformer_for(knobs)
    cfg_batch = runtime.speed.cfg_batch
    if knobs.step_cache_threshold is not None:
        checkpoints = None
    with torch.inference_mode():
        job = start_job(
            runtime.pipe,
            params,
            embeddings,
            guard,
            on_step,
            knobs,
            dtype=runtime.dtype,
            on_latents=on_latents,
            image_latents=image_latents,
        )
        if checkpoints is not None and checkpoints.restore(job) and on_step is not None:
            on_step(job.step, len(job.timesteps))  # progress picks up where the lost run left it
        try:
            with step_cache(transformer, knobs):
                while not job.finished:
                    step_jobs(transformer, [job], cfg_batch=cfg_batch, runtime=runtime)
                    if guard.should_stop() and not job.finished:
                        guard.raise_stop()
                    if checkpoints is not None:
                        checkpoints.maybe_save(job)
        finally:
            # Finished, stopped or failed here: nobody resumes this run. (A
            # replica that dies never gets here, and that is what the file is for.)
            if checkpoints is not None:
                checkpoints.discard()
    return job.output().cpu()
