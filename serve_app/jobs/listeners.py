"""What follows from a job ending, one listener per concern.

The runner decides a job's outcome and writes its terminal record. Everything
that follows from it (the result files, the API key's job slot, metrics, the
learned stage times, the webhook, the result cache) is a listener here, which
the runner calls in registration order at two moments:

- `before_record(job, result)`: the outcome is decided and `job` filled in, but
  not written, so no reader can see it yet. Whatever must already hold when a
  client sees the outcome happens here (the mp4 is stored, the key's slot is
  free). For a completing job an error here means the result could not be kept:
  the runner fails the job instead, and calls the listeners again for that.
- `after_record(job, result, gone)`: the terminal record is written, or, with
  `gone`, it no longer exists (the client deleted the video while it ran).
  Errors are logged and skipped: clients may already have seen the outcome.

`result` is the stage graph's result for a completed job, None for a failed one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from serve_app import metrics
from serve_app.artifacts import ArtifactStore
from serve_app.errors import NotFound
from serve_app.estimates import StageTimeEstimator
from serve_app.jobs.model import JobRecord, JobStore

if TYPE_CHECKING:  # serve_app.graph imports Ray; only its result's shape is needed here
    from serve_app.graph import GraphResult

log = logging.getLogger("ray.serve")

WebhookSender = Callable[[JobRecord], "asyncio.Future[Any] | Any"]


class JobListener:
    """Override either moment; the defaults do nothing."""

    async def before_record(self, job: JobRecord, result: GraphResult | None) -> None:
        return None

    async def after_record(self, job: JobRecord, result: GraphResult | None, gone: bool) -> None:
        return None

    async def drain(self, timeout_s: float) -> None:
        """At shutdown: finish background work started for ended jobs, for at most `timeout_s`."""
        return None


class ResultFiles(JobListener):
    """The video's files: stored before the record says "completed" (so a completed
    video's content never answers 404), deleted once the record is gone."""

    def __init__(self, artifacts: ArtifactStore) -> None:
        self.artifacts = artifacts

    async def before_record(self, job: JobRecord, result: GraphResult | None) -> None:
        if result is None:
            return
        # In a thread: an S3 PUT of a whole mp4 would hold the gateway's event loop (every
        # request of the replica) for as long as the upload takes.
        await asyncio.to_thread(self.artifacts.put, job.id, "video", result.video.mp4)
        if result.video.thumbnail:
            await asyncio.to_thread(self.artifacts.put, job.id, "thumbnail", result.video.thumbnail)

    async def after_record(self, job: JobRecord, result: GraphResult | None, gone: bool) -> None:
        if gone:
            await asyncio.to_thread(self.artifacts.delete, job.id)


class FinishedCallback(JobListener):
    """Calls `callback(job)` for every job that ends, before its record is written: the
    gateway frees the API key's concurrent-job slot, so a client that sees its job
    end and sends the next one finds the slot already free."""

    def __init__(self, callback: Callable[[JobRecord], None] | None) -> None:
        # Reassignable: tests (and the runner's `on_finished` attribute) swap it after construction.
        self.callback = callback

    async def before_record(self, job: JobRecord, result: GraphResult | None) -> None:
        if self.callback is None:
            return
        try:
            self.callback(job)
        except Exception:
            log.exception("job %s: on_finished failed", job.id, extra={"job_id": job.id})


class JobMetrics(JobListener):
    """Jobs ended by status and error code; each completed job's stage times."""

    async def after_record(self, job: JobRecord, result: GraphResult | None, gone: bool) -> None:
        metrics.job_ended(job.video.status, job.video.error.code if job.video.error else "")
        if result is None or job.video.timings is None:
            return
        for stage, seconds in job.video.timings.model_dump().items():
            if seconds is not None:
                metrics.stage_time(stage.removesuffix("_s"), seconds)


class StageTimeLearning(JobListener):
    """Feeds each completed run's stage times to the estimator behind admission and ETAs.
    A deleted video's run still counts: its seconds were spent all the same."""

    def __init__(self, estimator: StageTimeEstimator) -> None:
        self.estimator = estimator

    async def after_record(self, job: JobRecord, result: GraphResult | None, gone: bool) -> None:
        if result is None:
            return
        self.estimator.observe(
            job.params, result.prompt_encode_s, result.denoise_s, result.video.decode_s + result.video.encode_s
        )


class WebhookDelivery(JobListener):
    """Sends the job's webhook in the background and records how that went.

    The runner marks the record `webhook_state="pending"` itself when it writes it,
    so a delivery owed is in the store before anything is sent."""

    def __init__(self, store: JobStore, send: WebhookSender) -> None:
        self.store = store
        self.send = send
        # Held so that a delivery in flight is not garbage-collected mid-send.
        self._deliveries: set[asyncio.Task] = set()

    async def after_record(self, job: JobRecord, result: GraphResult | None, gone: bool) -> None:
        if gone or not job.webhook_url:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(job.id))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def drain(self, timeout_s: float) -> None:
        # A delivery cut off by shutdown would leave its job "pending" with nothing sending
        # it; waiting lets one mid-backoff finish (its id is stable, so a receiver that
        # already got it drops the repeat). What is still running at the timeout is cut.
        if self._deliveries:
            await asyncio.wait(list(self._deliveries), timeout=timeout_s)

    async def _deliver(self, job_id: str) -> None:
        try:
            job = self.store.get(job_id)
            outcome = await self.send(job)
            # Read again: the record may have changed during a delivery with retries.
            job = self.store.get(job_id)
            job.webhook_state = "delivered" if outcome.delivered else "failed"
            job.webhook_attempts = outcome.attempts
            self.store.save(job)
        except NotFound:
            pass  # deleted before or while it was delivered


class ResultCacheFill(JobListener):
    """Fills the job's result-cache entry with a completed video, or releases its
    in-flight claim (failed, or deleted) so the next identical request runs."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache  # ResultCache client

    async def after_record(self, job: JobRecord, result: GraphResult | None, gone: bool) -> None:
        if not job.cache_key:
            return
        if result is None or gone:
            # On failure the claim would otherwise block identical requests until its TTL.
            await self.cache.release(job.cache_key, job.id)
        else:
            await self.cache.fill(job.cache_key, job.video.model_dump(), job.id)


def standard_listeners(
    *,
    store: JobStore,
    artifacts: ArtifactStore,
    estimator: StageTimeEstimator,
    finished: FinishedCallback,
    send_webhook: WebhookSender | None,
    cache: Any,
) -> list[JobListener]:
    """The gateway's listeners, in the order they run.

    `ResultFiles` comes first: its `before_record` is the only one that can fail
    a completing job, and nothing else may have happened by then (the job's slot
    freed twice, a metric counted for an outcome that changes)."""
    listeners: list[JobListener] = [ResultFiles(artifacts), finished, JobMetrics(), StageTimeLearning(estimator)]
    if send_webhook is not None:
        listeners.append(WebhookDelivery(store, send_webhook))
    if cache is not None:
        listeners.append(ResultCacheFill(cache))
    return listeners
