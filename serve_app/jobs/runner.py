"""Runs jobs: claims them in the store, drives the stage graph, records every step.

One `JobRunner` lives in each gateway replica. A job is claimed by the replica
that accepted it and run at once (the queue proper is Ray Serve's router in
front of the denoiser, which is what autoscaling watches). A dispatcher loop
claims jobs nobody holds: those left behind when a gateway or the whole app
restarted (its heartbeat went stale, or it released them on shutdown).

The store is the source of truth and the only channel between replicas:
status, progress and the per-job event log (what SSE and WebSocket clients
read) all go through it, so any replica can answer for any job.

This module holds claims, leases, heartbeats and the run. Beside it: how the
runner writes its job's record without undoing other replicas' writes in
`writes.py`, what follows from a job ending (files, metrics, the cache,
webhooks) in `listeners.py`, the event log in `events.py`, rerun bookkeeping
in `reruns.py`, freeing expired files in `expiry.py`.

Every store call runs on the store's own thread (`store_thread.py`), never on the
event loop: the loop runs the stage graph's streams, the heartbeats and every
request of the replica, and a store call may wait seconds (another process holding
SQLite's write lock, a Redis that does not answer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from serve_app import metrics
from serve_app.artifacts import ArtifactStore
from serve_app.deadline import Deadline
from serve_app.errors import GpuOutOfMemory, RequestCancelled, ServiceError, StageFailed, StageLost
from serve_app.estimates import StageTimeEstimator
from serve_app.handles import CacheClaims, VideoGenerator
from serve_app.jobs.detached import detached_task
from serve_app.jobs.events import MAX_PREVIEW_CHARS, EventLog, progress_event
from serve_app.jobs.expiry import DEFAULT_EVENTS_KEEP_S, DEFAULT_RETENTION_S, ExpirySweeper
from serve_app.jobs.listeners import FinishedCallback, JobListener, WebhookSender, standard_listeners
from serve_app.jobs.model import JobRecord, JobStore
from serve_app.jobs.reruns import count_next_attempt, lower_tier
from serve_app.jobs.store_thread import off_loop
from serve_app.jobs.writes import completed, end_job, failed, hand_back, update_owned
from serve_app.messages import StepProgress
from serve_app.params import GenerationParams
from serve_app.policy.eta import job_work

# Job-scoped records carry `job_id` as a field: with Ray Serve's JSON log
# encoding (configs/serve_gpu.yaml) it is a key of each line, so one job's
# story can be pulled out of every replica's logs.
log = logging.getLogger("ray.serve")

# How often a wait for a job running on another replica looks at the store.
REMOTE_WAIT_POLL_S = 0.1

# MAX_PREVIEW_CHARS moved to events.py; it stays importable from here, where tests look for it.
__all__ = ["JobRunner", "MAX_PREVIEW_CHARS", "REMOTE_WAIT_POLL_S"]


# How long shutdown waits for work listeners started for ended jobs (webhook deliveries
# with their retries): inside Serve's graceful shutdown, short of a receiver's outage.
LISTENER_DRAIN_S = 10.0

# How long shutdown waits for an expiry sweep running in its worker thread (a sweep is at
# most a few thousand indexed store calls and file deletes), so the stores close after it.
SWEEP_DRAIN_S = 10.0


class JobRunner:
    def __init__(
        self,
        *,
        store: JobStore,
        artifacts: ArtifactStore,
        generator: VideoGenerator,
        estimator: StageTimeEstimator,
        owner: str,
        lease_s: float,
        dispatch_interval_s: float,
        artifact_ttl_s: float,
        send_webhook: WebhookSender | None = None,
        cache: CacheClaims | None = None,
        max_attempts: int = 3,
        on_finished: Callable[[JobRecord], None] | None = None,
        lower_memory: Callable[[GenerationParams], tuple[GenerationParams, str] | None] | None = None,
        clock: Callable[[], float] = time.time,
        eta: Callable[[JobRecord], Awaitable[float]] | None = None,
        job_retention_s: float = DEFAULT_RETENTION_S,
        events_keep_s: float = DEFAULT_EVENTS_KEEP_S,
    ) -> None:
        self.store = store
        self.jobs = off_loop(store)  # the store's calls, off the event loop
        self.generator = generator
        self.estimator = estimator
        self.owner = owner
        self.lease_s = lease_s
        self.dispatch_interval_s = dispatch_interval_s
        self.artifact_ttl_s = artifact_ttl_s
        self.cache = cache  # ResultCache client; a job rewritten for a lower tier releases its claim
        self.max_attempts = max_attempts
        # Settings that need less GPU memory (the lowest quality tier) and its name,
        # for one more run after the denoiser ran out of memory; None: no such retry.
        self.lower_memory = lower_memory
        self.clock = clock
        # Seconds until a queued job is ready: the service's ETA (policy/eta.py), which
        # knows the load, so a queued event says what admission decided on (a coroutine:
        # it reads the queue off the loop). Without it (a runner alone), the same model
        # over an idle queue.
        self.eta = eta
        self._tasks: dict[str, asyncio.Task] = {}
        self._cancel_reason: dict[str, str] = {}
        self._events = EventLog(store)
        self._dispatcher: asyncio.Task | None = None
        self._sweeping: asyncio.Future | None = None  # the expiry sweep in its worker thread
        self._sweeper = ExpirySweeper(store, artifacts, clock, retention_s=job_retention_s, events_keep_s=events_keep_s)
        self._finished = FinishedCallback(on_finished)
        # Called on every job's end, in this order (listeners.py says when and how);
        # a listener appended here after construction runs too.
        self.listeners: list[JobListener] = standard_listeners(
            store=store,
            artifacts=artifacts,
            estimator=estimator,
            finished=self._finished,
            send_webhook=send_webhook,
            cache=cache,
        )

    @property
    def expiry(self) -> ExpirySweeper:
        """The dispatcher's sweep of expired files; more stores join it through `expiry.also`."""
        return self._sweeper

    @property
    def on_finished(self) -> Callable[[JobRecord], None] | None:
        """Called with each job that ends, before its record is written (the gateway
        frees the API key's job slot); assignable after construction."""
        return self._finished.callback

    @on_finished.setter
    def on_finished(self, callback: Callable[[JobRecord], None] | None) -> None:
        self._finished.callback = callback

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        if self._dispatcher is None:
            self._dispatcher = detached_task(self._dispatch_loop())

    async def shutdown(self, grace_s: float = 0.0) -> None:
        """Stop taking work; hand running jobs back to the store for another replica."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        if self._sweeping is not None and not self._sweeping.done():
            await asyncio.wait([self._sweeping], timeout=SWEEP_DRAIN_S)
        if grace_s > 0 and self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=grace_s)
        for job_id, task in list(self._tasks.items()):
            self._cancel_reason.setdefault(job_id, "shutdown")
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=5)
        for listener in self.listeners:
            await listener.drain(LISTENER_DRAIN_S)

    # --- submitting and waiting -------------------------------------------------------

    async def submit(self, job_id: str) -> bool:
        """Claim the job and start running it here; False if another runner holds it."""
        if job_id in self._tasks:
            return True
        job = await self.jobs.claim(job_id, self.owner, self.clock(), self.lease_s)
        if job is None:
            # Perhaps claimed here meanwhile (the dispatcher and a create, both on this loop).
            return job_id in self._tasks
        if job.cancel_requested:
            # Cancelled while nobody ran it (its runner died or handed it back): the flag
            # is otherwise seen at the first step or heartbeat, after the stages have
            # started on it again. End it here, as a cancel mid-run would.
            task = detached_task(self._fail(job_id, RequestCancelled("cancelled by request")))
        elif job.attempts > self.max_attempts:
            # Each run ended without a result (runners dying, handing back):
            # stop here rather than loop.
            task = detached_task(
                self._fail(
                    job_id, StageFailed(f"gave up after {self.max_attempts} attempts; every run was interrupted")
                )
            )
        else:
            task = detached_task(self._run(job))
        self._tasks[job_id] = task
        metrics.jobs_in_flight(len(self._tasks))

        def done(_) -> None:
            self._tasks.pop(job_id, None)
            metrics.jobs_in_flight(len(self._tasks))

        task.add_done_callback(done)
        return True

    async def wait(self, job_id: str, timeout: float) -> JobRecord:
        """The job once terminal, or as it stands after `timeout` seconds.

        A job running here is awaited directly; one running on another replica
        is watched in the store (woken early by local events, else polled).
        """
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)
            return await self.jobs.get(job_id)
        give_up = time.monotonic() + timeout
        while True:
            job = await self.jobs.get(job_id)
            left = give_up - time.monotonic()
            if job.terminal or left <= 0:
                return job
            await self.wait_for_change(min(left, REMOTE_WAIT_POLL_S))

    def cancel(self, job_id: str) -> bool:
        """Stop a job running here now; False if it does not run here."""
        task = self._tasks.get(job_id)
        if task is None:
            return False
        self._cancel_reason[job_id] = "cancelled"
        task.cancel()
        return True

    # --- one run ----------------------------------------------------------------------

    async def _run(self, job: JobRecord) -> None:
        job_id = job.id
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop(job_id))
        started = time.perf_counter()
        estimate = await self.eta(job) if self.eta is not None else job_work(job.params, self.estimator).total_s
        await self._events.append(
            job_id,
            {
                "type": "queued",
                "queue_position": await self.jobs.queue_position(job),
                "eta_s": round(estimate, 3),
                "attempt": job.attempts,
            },
        )

        step_writes: list[asyncio.Task] = []

        def on_progress(progress: StepProgress) -> None:
            # StageGraph calls back synchronously between stream items; tasks
            # start in creation order, so the event log stays in step order.
            step_writes.append(asyncio.get_running_loop().create_task(self._on_step(job_id, progress, started)))

        try:
            try:
                result = await self._generate(job_id, job, on_progress)
            finally:
                # Every step's write lands before the terminal one, never after it.
                await asyncio.gather(*step_writes, return_exceptions=True)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling() == 0:
                # Not us: something inside the graph was cancelled (a replica
                # going away mid-call). A stage failure, not a hand-back, or a
                # job could bounce between runners forever.
                await self._fail(job_id, StageFailed("a pipeline stage was cancelled"))
                return
            reason = self._cancel_reason.pop(job_id, "shutdown")
            if reason == "shutdown":
                await self._release(job_id)
                raise
            await self._fail(job_id, RequestCancelled("cancelled by request"))
        except ServiceError as exc:
            await self._fail(job_id, exc)
        except Exception as exc:
            log.exception("job %s failed", job_id, extra={"job_id": job_id})
            await self._fail(job_id, StageFailed(f"generation failed: {type(exc).__name__}"))
        else:
            metrics.eta_error(time.perf_counter() - started, estimate)
            try:
                await self._complete(job_id, result)
            except Exception as exc:
                log.exception("job %s: storing the result failed", job_id, extra={"job_id": job_id})
                await self._fail(job_id, StageFailed(f"storing the result failed: {type(exc).__name__}"))
        finally:
            heartbeat.cancel()

    async def _generate(self, job_id: str, job: JobRecord, on_progress) -> Any:
        """Run the graph, and run it again when that can help:

        - a stage's replica died under the job (killed, node lost): the same
          settings, on a live or replacement replica (Ray routes the retry),
          resuming the denoising loop from its last checkpoint (`job_id`);
        - the denoiser ran out of GPU memory: once, at the lowest quality tier,
          which the answer then reports (`tier`, `requested`).

        At most `max_attempts` runs in all; each gets a fresh deadline."""
        params = job.params
        while True:
            try:
                return await self.generator.generate(params, Deadline.after(job.deadline_s), on_progress, job_id=job_id)
            except StageLost as exc:
                error, current = exc, await self._count_next_attempt(job_id, exc)
            except GpuOutOfMemory as exc:
                if exc.details.get("stage") != "denoiser" or self.lower_memory is None:
                    raise
                error, current = exc, await self._count_next_attempt(job_id, exc)
                lowered = self.lower_memory(current.params) if current.oom_retries == 0 else None
                if lowered is None:
                    raise
                current = await lower_tier(self.store, self.cache, current, self.owner, *lowered, exc)
            params = current.params
            metrics.job_retried(error.code)
            await self._events.append(job_id, {"type": "retry", "attempt": current.attempts, "reason": error.message})

    async def _count_next_attempt(self, job_id: str, exc: ServiceError) -> JobRecord:
        return await self.jobs.call(count_next_attempt, self.store, job_id, self.owner, exc, self.max_attempts)

    async def _on_step(self, job_id: str, progress: StepProgress, started: float) -> None:
        # One call on the store's thread: the step tasks start in step order, and so their
        # calls run in it, each record write with its event (no other step's in between).
        job, written = await self.jobs.call(self._write_step, job_id, progress, started)
        if job is None:
            return  # deleted meanwhile; its runner stops at the next heartbeat
        if not written:
            if job.owner != self.owner or job.terminal:
                self._lost(job_id)  # taken over (and perhaps finished) by another replica
            elif job.cancel_requested:
                self.cancel(job_id)
            return
        if progress.step == 1:
            metrics.queue_wait(max(0.0, self.clock() - job.created_at))
        self._events.notify(job_id)

    def _write_step(self, job_id: str, progress: StepProgress, started: float) -> tuple[JobRecord | None, bool]:
        """The step's progress in the record, and its event once that is written (blocking)."""
        percent = min(int(100 * progress.step / progress.total_steps), 99)  # 100 only once the mp4 is stored

        def advance(job: JobRecord) -> bool:
            if job.cancel_requested:
                return False
            job.video.status, job.video.progress = "in_progress", percent
            job.heartbeat_at = self.clock()
            return True

        job, written = update_owned(self.store, job_id, self.owner, advance)
        if written:
            self._events.write(job_id, progress_event(progress, percent, time.perf_counter() - started))
        return job, written

    async def _complete(self, job_id: str, result) -> None:
        await self._finish(job_id, completed(result, self.clock(), self.artifact_ttl_s), result)

    async def _fail(self, job_id: str, exc: ServiceError) -> None:
        await self._finish(job_id, failed(exc, self.clock()), None)

    async def _finish(self, job_id: str, finish: Callable[[JobRecord], None], result: Any) -> None:
        if not await end_job(self.store, self.owner, self.listeners, self._events, job_id, finish, result):
            self._warn_lost(job_id)  # its new runner writes the outcome and calls the listeners

    async def _release(self, job_id: str) -> None:
        """Give a job back (shutdown): another replica claims it without waiting for the lease."""
        await self.jobs.call(update_owned, self.store, job_id, self.owner, hand_back)

    def _lost(self, job_id: str) -> None:
        """Stop running a job another runner holds now, writing nothing."""
        self._warn_lost(job_id)
        self._cancel_reason[job_id] = "shutdown"
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()

    @staticmethod
    def _warn_lost(job_id: str) -> None:
        log.warning("job %s: lease lost to another runner; stopping here", job_id, extra={"job_id": job_id})

    async def wait_for_change(self, timeout: float) -> None:
        """Until this replica writes an event, or `timeout` seconds."""
        await self._events.wait_for_change(timeout)

    def watch_events(self, callback: Callable[[str | None], None]) -> None:
        """Call `callback(job_id)` whenever this replica writes one of the job's events (None: any job)."""
        self._events.listeners.append(callback)

    async def _heartbeat_loop(self, job_id: str) -> None:
        # Every store call sits inside the `try`: this task is nobody's awaitable, so
        # an escaping error would end the heartbeats silently, the lease would go
        # stale, another replica would run the job a second time, and cancels
        # would go unseen until the next step.
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                alive, cancel_requested = await self.jobs.call(self._beat, job_id)
            except Exception:
                log.warning("job %s: heartbeat failed; trying again", job_id, extra={"job_id": job_id}, exc_info=True)
                continue
            if not alive:
                self._lost(job_id)
                return
            if cancel_requested:
                self.cancel(job_id)
                return

    def _beat(self, job_id: str) -> tuple[bool, bool]:
        """(whether this runner still holds the job, whether its client asked to cancel it)."""
        alive = self.store.heartbeat(job_id, self.owner, self.clock())
        return alive, alive and self.store.get(job_id).cancel_requested

    # --- orphans and expiry -----------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            try:
                for job_id in await self.jobs.claimable(self.clock(), self.lease_s, limit=16):
                    if job_id not in self._tasks and await self.submit(job_id):
                        log.info("job %s: taken over by %s", job_id, self.owner, extra={"job_id": job_id})
                await self._sweep_in_thread()
            except Exception:
                log.exception("dispatcher: store error")
            await asyncio.sleep(self.dispatch_interval_s)

    async def _sweep_in_thread(self) -> None:
        """Sweep if due, in a worker thread: a sweep's deletes (S3 requests among them) must
        not hold up requests and heartbeats on this loop (the stores are thread-safe).
        Shielded, so a shutdown cancelling the dispatcher waits for it instead."""
        sweeping = asyncio.get_running_loop().run_in_executor(None, self._sweeper.sweep_if_due)
        # An error after the dispatcher stopped waiting is retrieved here, not left unheard.
        sweeping.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._sweeping = sweeping
        await asyncio.shield(sweeping)

    def sweep_expired(self) -> int:
        """Delete the files of completed videos past `expires_at` (their objects stay: content
        then answers 410), trim old event logs, and delete records past their retention
        (jobs/expiry.py). Returns how many videos' files were deleted."""
        return self._sweeper.sweep().files
