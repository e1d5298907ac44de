"""The denoising loop of a multi-GPU replica: every rank runs it, in lock-step.

The same loop as batching.py's `denoise_optimized` (a `DenoiseJob`, its own
UniPC scheduler, the same guidance arithmetic), with three differences:

- the starting noise is rank 0's, broadcast, so no rank can start from other
  latents (a different RNG stream or device would otherwise be enough);
- a guided step runs the prompt's pass on one half of the ranks and the
  negative prompt's on the other (layout.py), each pass split over its half's
  tokens by diffusers' context parallel, and the halves swap their outputs;
  every rank then takes the same scheduler step on the same numbers, so all
  ranks hold the same latents after every step without sending them;
- after every step the ranks agree whether to stop (deadline or cancel seen by
  any rank), so they all leave at the same step and none waits in a
  collective for a rank that left.

Rank 0 alone writes loop checkpoints; every rank reads the same file on a
rerun (the ranks of a replica share a node, and so its disk).
"""

from __future__ import annotations

from typing import Any

from serve_app.deadline import StepGuard
from serve_app.errors import DeadlineExceeded, RequestCancelled
from serve_app.params import GenerationParams
from serve_app.pipeline.batching import StepCallback, _forward, start_job, step_jobs
from serve_app.pipeline.parallel.group import ParallelGroup
from serve_app.settings.speed import EXACT, FastKnobs


def split_evenly(tokens: int, degree: int) -> bool:
    """Whether `tokens` divide over `degree` ranks (the plain Ulysses split), or need the any-length one."""
    return tokens % degree == 0


def latent_tokens(pipe, params: GenerationParams) -> int:
    """The DiT's sequence length for `params`: latent frames x latent rows x latent columns / patch."""
    temporal, spatial = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
    p_t, p_h, p_w = pipe.transformer.config.patch_size
    frames = (params.num_frames - 1) // temporal + 1
    return (frames // p_t) * (params.height // spatial // p_h) * (params.width // spatial // p_w)


def step_parallel(runtime, transformer, job, group: ParallelGroup) -> None:
    """One denoising step of `job` on this rank; afterwards every rank holds the same latents."""
    layout = group.layout
    if not (job.guided and layout.cfg_degree == 2):
        # Unguided, or one guidance half: every rank runs every pass (split by tokens
        # inside it, when the half has several ranks), as the single-GPU loop does.
        step_jobs(transformer, [job], cfg_batch=runtime.speed.cfg_batch, runtime=runtime)
        return
    dtype = job.prompt_embeds.dtype
    t = job.timesteps[job.step]
    timestep = job.timestep_row(t, transformer.config.patch_size).unsqueeze(0)
    mine = job.prompt_embeds if layout.cfg_rank(group.rank) == 0 else job.negative_embeds
    cache_kwargs = {"step_index": job.step, "num_inference_steps": len(job.timesteps)}
    out = _forward(runtime, transformer, job.model_input(dtype), timestep, mine, "cfg_parallel", cache_kwargs)
    cond, uncond = group.gather_cfg(out)
    noise_pred = uncond + job.params.guidance_scale * (cond - uncond)
    job.latents = job.scheduler.step(noise_pred, t, job.latents, return_dict=False)[0]
    job.step += 1
    job.guard.steps_done = job.step
    if job.on_step is not None:
        job.on_step(job.step, len(job.timesteps))


def denoise_parallel(
    runtime,
    group: ParallelGroup,
    params: GenerationParams,
    embeddings,
    guard: StepGuard,
    on_step: StepCallback | None = None,
    knobs: FastKnobs = EXACT,
    checkpoints: Any = None,
    image_latents: Any = None,
):
    """One request through the multi-GPU loop on this rank; the latents on the CPU (equal on
    every rank), or raises why it stopped (every rank at the same step).

    `runtime`: a rank's `ParallelRuntime` (rank.py), giving `transformer_for(knobs, tokens)`.
    `checkpoints`: the job's `LoopCheckpoints` on every rank: all restore from it, rank 0 saves.
    """
    import torch

    with torch.inference_mode():
        job = start_job(
            runtime.pipe,
            params,
            embeddings,
            guard,
            on_step,
            knobs,
            dtype=runtime.dtype,
            image_latents=image_latents,
        )
        transformer = runtime.transformer_for(knobs, latent_tokens(runtime.pipe, params))
        job.latents = group.broadcast_from_first(job.latents)
        if checkpoints is not None:
            _restore_together(job, checkpoints, group)
        try:
            while not job.finished:
                # Agreed before the step too: a request that is already late or cancelled
                # must not start a step some ranks would then skip.
                if group.any_rank(guard.should_stop()):
                    _stop(guard)
                step_parallel(runtime, transformer, job, group)
                if checkpoints is not None and group.rank == 0:
                    checkpoints.maybe_save(job)
        except (DeadlineExceeded, RequestCancelled):
            _discard(checkpoints, group)  # stopped on purpose: nobody resumes this run
            raise
        # Any other failure keeps the file: unlike a single-GPU replica, a rank outlives a
        # peer that died (its next collective fails), and the rerun on the replacement
        # replica resumes from what rank 0 saved.
        _discard(checkpoints, group)
    return job.output().cpu()


def _discard(checkpoints, group: ParallelGroup) -> None:
    if checkpoints is not None and group.rank == 0:
        checkpoints.discard()


def _restore_together(job, checkpoints, group: ParallelGroup) -> None:
    """Every rank reads the job's checkpoint; rank 0's step is the one all must have restored."""
    import torch

    step = checkpoints.restore(job)
    first = group.broadcast_from_first(torch.tensor([step], dtype=torch.int64, device=group.device))
    if group.any_rank(int(first.item()) != step):
        raise RuntimeError(f"the ranks restored different checkpoint steps (rank 0: {int(first.item())})")
    if step and job.on_step is not None:
        job.on_step(job.step, len(job.timesteps))  # progress picks up where the lost run left it


def _stop(guard: StepGuard) -> None:
    """Stop this rank: with its own reason when it saw one, else because another rank did."""
    if guard.should_stop():
        guard.raise_stop()
    raise RequestCancelled("stopped with the other ranks of this replica")
