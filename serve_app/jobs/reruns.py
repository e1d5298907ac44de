"""Bookkeeping for running a job again after a run ended without a video.

The runner decides when a rerun can help (a stage's replica was lost; the
denoiser ran out of GPU memory); these say what the job record must then hold.
"""

from __future__ import annotations

import logging

from serve_app.errors import ServiceError
from serve_app.handles import CacheClaims
from serve_app.jobs.model import JobRecord, JobStore
from serve_app.jobs.store_thread import off_loop
from serve_app.jobs.writes import update_owned
from serve_app.params import GenerationParams

log = logging.getLogger("ray.serve")


def count_next_attempt(store: JobStore, job_id: str, owner: str, exc: ServiceError, max_attempts: int) -> JobRecord:
    """The job with one more attempt counted and saved; re-raises `exc` when none is
    left, or when the job was deleted, cancelled or taken over meanwhile. Blocking: code on
    the event loop runs it on the store's thread (store_thread.py)."""

    def next_attempt(job: JobRecord) -> bool:
        if job.attempts >= max_attempts or job.cancel_requested:
            return False
        job.attempts += 1
        job.video.progress = 0
        return True

    current, written = update_owned(store, job_id, owner, next_attempt)
    if current is None or not written:
        raise exc
    log.warning(
        "job %s: %s; run %d of %d", job_id, exc.message, current.attempts, max_attempts, extra={"job_id": job_id}
    )
    return current


async def lower_tier(
    store: JobStore,
    cache: CacheClaims | None,
    job: JobRecord,
    owner: str,
    params: GenerationParams,
    tier: str,
    exc: ServiceError,
) -> JobRecord:
    """The job rewritten to run `params` at `tier`, and saved; re-raises `exc` when the job
    was deleted or taken over meanwhile."""
    if job.cache_key is not None and cache is not None:
        # These pixels are not the cached key's: never fill it with them.
        await cache.release(job.cache_key, job.id)

    def rewrite(current: JobRecord) -> bool:
        rewrite_for_tier(current, params, tier)
        return True

    current, written = await off_loop(store).call(update_owned, store, job.id, owner, rewrite)
    if current is None or not written:
        raise exc
    return current


def rewrite_for_tier(job: JobRecord, params: GenerationParams, tier: str) -> None:
    """Make `job` run `params` at `tier` (unsaved), as admission's lowering does
    (`JobRecord.run_at_tier`). Its cache key goes: these pixels are not the key's, so
    the caller releases that claim first."""
    job.run_at_tier(tier, params)
    job.cache_key = job.video.cache_key = None
    job.oom_retries += 1
