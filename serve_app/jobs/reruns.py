"""Bookkeeping for running a job again after a run ended without a video.

The runner decides when a rerun can help (a stage's replica was lost; the
denoiser ran out of GPU memory); these say what the job record must then hold.
"""

from __future__ import annotations

import logging

from serve_app.errors import NotFound, ServiceError
from serve_app.jobs.model import JobRecord, JobStore
from serve_app.params import GenerationParams

log = logging.getLogger("ray.serve")

# Lowering a tier changes only these; each is reported back in `requested`.
TIER_FIELDS = ("num_inference_steps", "num_frames")


def count_next_attempt(store: JobStore, job_id: str, exc: ServiceError, max_attempts: int) -> JobRecord:
    """The job with one more attempt counted and saved; re-raises `exc` when none is
    left, or when the job was deleted or cancelled meanwhile."""
    try:
        current = store.get(job_id)
    except NotFound:
        raise exc from None
    if current.attempts >= max_attempts or current.cancel_requested:
        raise exc
    current.attempts += 1
    current.video.progress = 0
    store.save(current)
    log.warning("job %s: %s; run %d of %d", job_id, exc.message, current.attempts, max_attempts,
                extra={"job_id": job_id})
    return current


def rewrite_for_tier(job: JobRecord, params: GenerationParams, tier: str) -> None:
    """Make `job` run `params` at `tier` (unsaved): the answer must describe the video
    it gets, and say what was asked for. Its cache key goes: these pixels are not the
    key's, so the caller releases that claim first."""
    video = job.video
    lowered = {f: getattr(job.params, f) for f in TIER_FIELDS if getattr(job.params, f) != getattr(params, f)}
    video.requested = {**lowered, **(video.requested or {})}  # the first request's values win
    video.tier = tier
    video.num_frames, video.num_inference_steps = params.num_frames, params.num_inference_steps
    video.fast = params.fast
    video.seconds = f"{params.seconds:.2f}"
    job.cache_key = video.cache_key = None
    job.params = params
    job.oom_retries += 1
