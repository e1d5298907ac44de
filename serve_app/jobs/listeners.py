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
import time
from collections.abc import Callable
from typing import Any

from serve_app import metrics
from serve_app.artifacts import ArtifactStore
from serve_app.errors import NotFound
from serve_app.estimates import StageTimeEstimator
from serve_app.handles import CacheClaims
from serve_app.jobs.model import JobRecord, JobStore
from serve_app.jobs.store_thread import off_loop
from serve_app.jobs.webhook_outbox import WebhookOutbox
from serve_app.messages import GraphResult

log = logging.getLogger("ray.serve")

WebhookSender = Callable[[JobRecord], "asyncio.Future[Any] | Any"]
# How long a gateway holds a webhook it sends, unless told (the gateway derives it from
# its webhook settings: every attempt and backoff); how often it looks for ones left unsent.
DEFAULT_WEBHOOK_CLAIM_S = 600.0
DEFAULT_WEBHOOK_RESUME_S = 30.0
RESUME_BATCH = 64  # outbox entries looked at per pass


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
    """Sends the job's webhook in the background and records how that went; with an
    outbox (webhook_outbox.py), also every webhook another gateway left unsent.

    Before the terminal record is written, the job's outbox entry is written, held by
    this gateway for `claim_s` (long enough for every retry); the runner marks the
    record `webhook_state="pending"`. Once delivery ends the record says how, and the
    entry goes. A gateway that dies between the two leaves the entry: `start()` runs a
    loop that, every `resume_every_s`, claims entries whose holder's time ran out and
    sends them. Claims are atomic, so two gateways do not both send one; a delivery
    that overran its claim can be sent twice, under one `webhook-id` (receivers
    deduplicate on it).

    The outbox lives beside the job store (its SQLite file, its Redis): its calls run
    on the job store's thread too (store_thread.py), never on the event loop."""

    def __init__(
        self,
        store: JobStore,
        send: WebhookSender,
        outbox: WebhookOutbox | None = None,
        *,
        claim_s: float = DEFAULT_WEBHOOK_CLAIM_S,
        resume_every_s: float = DEFAULT_WEBHOOK_RESUME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.jobs = off_loop(store)
        self.send = send
        self.outbox = outbox  # None: deliveries live only as long as this gateway
        self.claim_s = claim_s
        self.resume_every_s = resume_every_s
        self.clock = clock
        # Held so that a delivery in flight is not garbage-collected mid-send.
        self._deliveries: set[asyncio.Task] = set()
        self._sending: set[str] = set()  # job ids sent from here now
        self._resumer: asyncio.Task | None = None

    async def before_record(self, job: JobRecord, result: GraphResult | None) -> None:
        if job.webhook_url and not job.delete_requested:
            await self.jobs.call(self.owe, job.id)

    async def after_record(self, job: JobRecord, result: GraphResult | None, gone: bool) -> None:
        if not job.webhook_url:
            return
        if gone:
            await self.jobs.call(self._settle, job.id)  # a deleted video's webhook is not sent
            return
        self.send_now(job.id)

    def owe(self, job_id: str) -> None:
        """Write the job's outbox entry, held here, before its record says a webhook is pending
        (blocking: on the store's thread)."""
        if self.outbox is not None:
            self.outbox.owe(job_id, self.clock() + self.claim_s)

    def send_now(self, job_id: str) -> None:
        """Deliver the job's webhook in the background (its entry is held here already)."""
        if job_id in self._sending:
            return
        self._sending.add(job_id)
        task = asyncio.get_running_loop().create_task(self._deliver(job_id))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    def forget(self, job_id: str) -> None:
        """The job will not exist (its draft was dropped): no webhook is owed (blocking: on the
        store's thread)."""
        self._settle(job_id)

    def start(self) -> None:
        """Resume webhooks left unsent, now and every `resume_every_s` (needs an outbox)."""
        if self.outbox is not None and self._resumer is None:
            self._resumer = asyncio.get_running_loop().create_task(self._resume_loop())

    async def _resume_loop(self) -> None:
        while True:
            try:
                await self.resume_due()
            except Exception:
                log.exception("webhook outbox: resuming deliveries failed; trying again")
            await asyncio.sleep(self.resume_every_s)

    async def resume_due(self, limit: int = RESUME_BATCH) -> int:
        """Claim and send the webhooks nobody is sending; how many were started here."""
        if self.outbox is None:
            return 0
        # Read and claimed on the store's thread; `_sending` is read there too, which is safe:
        # only the loop changes it, and a delivery that starts meanwhile is caught below.
        claimed = await self.jobs.call(self._claim_due, limit)
        started = 0
        for job_id in claimed:
            if job_id in self._sending:
                continue
            log.info("job %s: resuming its webhook", job_id, extra={"job_id": job_id})
            self.send_now(job_id)
            started += 1
        return started

    def _claim_due(self, limit: int) -> list[str]:
        """Claim the due entries of ended jobs whose webhook is still owed; their ids (blocking)."""
        assert self.outbox is not None
        claimed = []
        for job_id in self.outbox.due(self.clock(), limit):
            if job_id in self._sending:
                continue
            now = self.clock()
            if not self.outbox.claim(job_id, now, now + self.claim_s):
                continue  # another gateway took it first
            try:
                job = self.store.get(job_id)
            except NotFound:
                self._settle(job_id)  # deleted: nothing owed
                continue
            if not job.webhook_url or job.webhook_state in ("delivered", "failed"):
                self._settle(job_id)  # sent (its sender died before removing the entry)
            elif job.terminal:
                claimed.append(job_id)
            # Otherwise the job runs again (its runner died before the terminal record):
            # the entry stays, held by this claim, and its next run's end owes it anew.
        return claimed

    async def drain(self, timeout_s: float) -> None:
        # A delivery cut off by shutdown would leave its job "pending" until its claim runs
        # out; waiting lets one mid-backoff finish (its id is stable, so a receiver that
        # already got it drops the repeat). Those still running at the timeout are
        # cancelled, which releases their claims: another gateway takes them at once.
        if self._resumer is not None:
            self._resumer.cancel()
        if not self._deliveries:
            return
        _, pending = await asyncio.wait(list(self._deliveries), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    async def _deliver(self, job_id: str) -> None:
        try:
            job = await self.jobs.get(job_id)
            outcome = await self.send(job)
            await self.jobs.call(self._record_outcome, job_id, outcome)
        except NotFound:
            await self.jobs.call(self._settle, job_id)  # deleted before or while it was delivered
        except asyncio.CancelledError:
            try:
                await self.jobs.call(self._release, job_id)
            except RuntimeError:
                pass  # the store's thread stopped already (shutdown): the claim runs out instead
            raise
        except Exception:
            # The entry stays: when this gateway's claim runs out, one sends it again.
            log.exception("job %s: webhook delivery failed", job_id, extra={"job_id": job_id})
        finally:
            self._sending.discard(job_id)

    def _record_outcome(self, job_id: str, outcome: Any) -> None:
        """How delivery went, in the record; then the entry goes (blocking)."""
        # Read again: the record may have changed during a delivery with retries.
        job = self.store.get(job_id)
        job.webhook_state = "delivered" if outcome.delivered else "failed"
        job.webhook_attempts = outcome.attempts
        self.store.save(job)
        self._settle(job_id)

    def _settle(self, job_id: str) -> None:
        if self.outbox is not None:
            try:
                self.outbox.settle(job_id)
            except Exception:
                # Left behind, the entry is settled by whichever gateway claims it next.
                log.warning("job %s: webhook outbox entry not removed", job_id, exc_info=True)

    def _release(self, job_id: str) -> None:
        if self.outbox is not None:
            try:
                self.outbox.release(job_id)
            except Exception:
                log.warning("job %s: webhook outbox claim not released", job_id, exc_info=True)


class ResultCacheFill(JobListener):
    """Fills the job's result-cache entry with a completed video, or releases its
    in-flight claim (failed, or deleted) so the next identical request runs."""

    def __init__(self, cache: CacheClaims, store: JobStore | None = None) -> None:
        self.cache = cache  # ResultCache client
        self.store = store  # to see whether the video was deleted while its entry was filled

    async def after_record(self, job: JobRecord, result: GraphResult | None, gone: bool) -> None:
        if not job.cache_key:
            return
        if result is None or gone:
            # On failure the claim would otherwise block identical requests until its TTL.
            await self.cache.release(job.cache_key, job.id)
            return
        filled = await self.cache.fill(job.cache_key, job.video.model_dump(), job.id)
        if filled and self.store is not None and await off_loop(self.store).call(_deleted, self.store, job.id):
            # Deleted during the fill, after the delete's own purge looked: the entry
            # must not outlive its video (VideoViews.delete_with_cache_entry).
            await self.cache.forget_source(job.cache_key, job.id)


def _deleted(store: JobStore, job_id: str) -> bool:
    try:
        return store.get(job_id).delete_requested
    except NotFound:
        return True


def standard_listeners(
    *,
    store: JobStore,
    artifacts: ArtifactStore,
    estimator: StageTimeEstimator,
    finished: FinishedCallback,
    send_webhook: WebhookSender | None,
    cache: CacheClaims | None,
) -> list[JobListener]:
    """The gateway's listeners, in the order they run.

    `ResultFiles` comes first: its `before_record` is the only one that can fail
    a completing job, and nothing else may have happened by then (the job's slot
    freed twice, a metric counted for an outcome that changes)."""
    listeners: list[JobListener] = [ResultFiles(artifacts), finished, JobMetrics(), StageTimeLearning(estimator)]
    if send_webhook is not None:
        listeners.append(WebhookDelivery(store, send_webhook))
    if cache is not None:
        listeners.append(ResultCacheFill(cache, store))
    return listeners
