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
    log.warning(
        "job %s: %s; run %d of %d", job_id, exc.message, current.attempts, max_attempts, extra={"job_id": job_id}
    )
    return current


def rewrite_for_tier(job: JobRecord, params: GenerationParams, tier: str) -> None:
    """Make `job` run `params` at `tier` (unsaved), as admission's lowering does
    (`JobRecord.run_at_tier`). Its cache key goes: these pixels are not the key's, so
    the caller releases that claim first."""
    job.run_at_tier(tier, params)
    job.cache_key = job.video.cache_key = None
    job.oom_retries += 1
