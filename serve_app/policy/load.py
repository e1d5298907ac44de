"""What admission reads: the work waiting per stage, the replicas to do it, GPU use.

`LoadSnapshot` is a plain value so admission is a pure function of it (unit
tests build snapshots by hand). `LoadMonitor` makes snapshots in a gateway:

- work ahead comes from the job store, so every gateway replica sees the same
  queue (a shared Redis or SQLite store), plus this gateway's reservations:
  requests admitted but not yet in the store (see `reserve`);
- the denoiser's replica count (running or starting) comes from Ray Serve's
  status, polled in the background (a controller round trip is too slow per
  request); the video encoder's and the multi-GPU denoiser's likewise when a
  poll for them is given, else their initial counts;
- GPU utilisation comes from NVML on the gateway's node, averaged over its
  cards, when the denoiser runs on GPUs. With denoisers on other nodes that is
  a proxy; the queue-depth part of the load is exact everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from serve_app.config import AdmissionConfig
from serve_app.estimates import StageTimeEstimator
from serve_app.jobs.model import JobRecord
from serve_app.params import GenerationParams
from serve_app.policy.eta import StageWork, eta_s, job_work

log = logging.getLogger("ray.serve")


class ReplicaCount(NamedTuple):
    """Replicas of one deployment that serve now, and those starting (a scale-up, a
    replacement): a starting replica takes a cold start (cold_start_s) before its first job."""

    serving: int
    starting: int = 0

    @property
    def total(self) -> int:
        return self.serving + self.starting


@dataclass(frozen=True)
class LoadSnapshot:
    replicas: int  # denoiser replicas running or starting (0: scaled to zero)
    active_jobs: int  # unfinished jobs: in the store (all gateways) and reserved here
    denoise_ahead_s: float  # prompt-encode + denoise seconds those jobs still need
    gpu_utilization: float | None = None  # 0-1, None without a GPU
    decode_ahead_s: float = 0.0  # decode + mp4 seconds they still need (also jobs done denoising)
    encoder_replicas: int = 1  # video-encoder replicas
    starting: int = 0  # of `replicas`, those still starting: no help before cold_start_s
    # The multi-GPU denoiser (serve_app/routing.py), when the app deploys one. Its jobs are
    # counted in `active_jobs` too, but their work only here (not in the two lanes above).
    parallel_replicas: int = 0  # running or starting
    parallel_starting: int = 0
    parallel_jobs: int = 0  # of active_jobs, those routed to it
    parallel_ahead_s: float = 0.0  # everything those jobs still need (their ranks decode too)


def work_ahead(jobs: Iterable[JobRecord], estimator: StageTimeEstimator) -> tuple[int, StageWork]:
    """(count, work per lane) the unfinished jobs still need; a running job's shrinks with its progress."""
    count, work = 0, StageWork()
    for job in jobs:
        if job.terminal:
            continue
        count += 1
        work += job_work(job.params, estimator, job.video.progress)
    return count, work


def ahead_of(job: JobRecord, jobs: Iterable[JobRecord]) -> list[JobRecord]:
    """The unfinished jobs that hold `job` up: those before it in queue order
    (created_at, id, as `queue_position` orders them) and any already running.
    For a job just admitted that is every unfinished job, so the ETA admission
    used and the one its job shows later agree while the load stands still."""
    mine = (job.created_at, job.id)
    return [
        other
        for other in jobs
        if other.id != job.id
        and not other.terminal
        and ((other.created_at, other.id) < mine or other.video.status == "in_progress")
    ]


def nvml_utilization() -> float | None:
    """Mean GPU utilisation (0-1) over this node's cards; None without NVML or cards."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return None
        rates = [pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(i)).gpu for i in range(count)]
        return float(sum(rates) / len(rates) / 100)
    except Exception:  # noqa: BLE001 - no driver, no GPU: the queue alone is the load
        return None


# Replicas that serve now, and those on their way (app start, scale-up, replacement
# after a crash). A starting replica is capacity, but only after its cold start: on
# one H100 that was 55-65 s (bench/results/e2e-*), and counting it at once admitted
# 20 s requests that no replica could start in time.
SERVING_STATES = ("RUNNING", "UPDATING")
STARTING_STATES = ("STARTING", "RECOVERING")


def serve_replicas(app_name: str, deployment: str) -> ReplicaCount | None:
    """Replicas of one deployment that serve, and that are starting, from Ray Serve's status (blocking)."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None or deployment not in app.deployments:
        return None
    states = {str(getattr(state, "value", state)): n for state, n in app.deployments[deployment].replica_states.items()}
    return ReplicaCount(sum(states.get(s, 0) for s in SERVING_STATES), sum(states.get(s, 0) for s in STARTING_STATES))


@dataclass
class _Held:
    work: StageWork
    created_at: float
    job_id: str
    holders: int = 1


class Reservation:
    """A request's place in the queue from its admission until its job is in the store.

    Between the two, a gateway awaits the result cache's single-flight claim;
    without this, every create arriving meanwhile would read the same queue
    and all be admitted into it (check, then act)."""

    def __init__(self, monitor: LoadMonitor, key: str) -> None:
        self._monitor, self.key, self._held = monitor, key, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._monitor._release(self.key)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LoadMonitor:
    """Snapshots for admission; replica counts and GPU use refreshed in the background."""

    def __init__(
        self,
        *,
        active_jobs: Callable[[], list[JobRecord]],
        estimator: StageTimeEstimator,
        replicas: Callable[[], ReplicaCount | int | None],
        gpu_utilization: Callable[[], float | None] | None,
        refresh_s: float,
        initial_replicas: int,
        encoder_replicas: Callable[[], ReplicaCount | int | None] | None = None,
        initial_encoder_replicas: int = 1,
        parallel_replicas: Callable[[], ReplicaCount | int | None] | None = None,
        initial_parallel_replicas: int = 0,
        read_off_loop: Callable[[Callable[[], list[JobRecord]]], Awaitable[list[JobRecord]]] | None = None,
    ) -> None:
        self._active_jobs = active_jobs
        # Runs `active_jobs` (a store query, blocking) off the event loop for `read_active`: the
        # gateway passes its job store's own thread (jobs/store_thread.py says why that one).
        self._read_off_loop = read_off_loop or _in_a_thread
        self.estimator = estimator
        self._replicas_fn = replicas
        self._encoder_replicas_fn = encoder_replicas
        self._gpu_fn = gpu_utilization
        self.refresh_s = refresh_s
        self.replicas = initial_replicas
        self.starting = 0  # of self.replicas; an int from `replicas` means all serve
        # Without a poll, one: fewer encoders than there are only makes
        # admission stricter, never late.
        self.encoder_replicas = initial_encoder_replicas
        self._parallel_replicas_fn = parallel_replicas
        self.parallel_replicas = initial_parallel_replicas
        self.parallel_starting = 0
        self.gpu_utilization: float | None = None
        self.refreshed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        # Touched only on the gateway's event loop (reserve, release, snapshot), so no lock.
        self._reserved: dict[str, _Held] = {}

    def refresh(self) -> None:
        """One poll of replica counts and GPU use (blocking: run it off the event loop)."""
        try:
            replicas = self._replicas_fn()
            if replicas is not None:
                count = replicas if isinstance(replicas, ReplicaCount) else ReplicaCount(replicas)
                self.replicas, self.starting = count.total, count.starting
        except Exception:
            log.warning("could not read the denoiser's replica count", exc_info=True)
        if self._encoder_replicas_fn is not None:
            try:
                encoders = self._encoder_replicas_fn()
                if encoders is not None:
                    # A starting encoder is not counted: the decode lane is rarely the
                    # bottleneck, and fewer encoders only makes admission stricter.
                    count = encoders if isinstance(encoders, ReplicaCount) else ReplicaCount(encoders)
                    self.encoder_replicas = max(count.serving, 1) if count.total else 0
            except Exception:
                log.warning("could not read the video encoder's replica count", exc_info=True)
        if self._parallel_replicas_fn is not None:
            try:
                parallel = self._parallel_replicas_fn()
                if parallel is not None:
                    count = parallel if isinstance(parallel, ReplicaCount) else ReplicaCount(parallel)
                    self.parallel_replicas, self.parallel_starting = count.total, count.starting
            except Exception:
                log.warning("could not read the parallel denoiser's replica count", exc_info=True)
        if self._gpu_fn is not None:
            self.gpu_utilization = self._gpu_fn()
        self.refreshed_at = time.monotonic()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(None, self.refresh)
            await asyncio.sleep(self.refresh_s)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def reserve(self, key: str, job: JobRecord) -> Reservation:
        """Count `job` (not yet stored) as queued until the reservation is released.

        Call it in the same synchronous step as the admission decision, and
        release it once the job is stored or the request ends, whichever way.
        `key` is the job's cache key when it has one: identical requests end
        in one job (single flight), so they hold one place, not one each.
        Gateways do not see each other's reservations; across replicas the
        window is one store write wide again, as before."""
        held = self._reserved.get(key)
        if held is None:
            self._reserved[key] = _Held(job_work(job.params, self.estimator), job.created_at, job.id)
        else:
            held.holders += 1
        return Reservation(self, key)

    def _release(self, key: str) -> None:
        held = self._reserved.get(key)
        if held is None:
            return
        held.holders -= 1
        if held.holders <= 0:
            del self._reserved[key]

    @property
    def reserved(self) -> int:
        return len(self._reserved)

    def active_jobs(self) -> list[JobRecord]:
        """The unfinished jobs (blocking: a store query)."""
        return self._active_jobs()

    async def read_active(self) -> list[JobRecord]:
        """The unfinished jobs, read off the event loop: what code on the loop passes to
        `snapshot(jobs=...)` and the ETAs below, which then read nothing themselves."""
        return await self._read_off_loop(self._active_jobs)

    def snapshot(self, before: JobRecord | None = None, jobs: list[JobRecord] | None = None) -> LoadSnapshot:
        """The load admission sees; with `before`, only the work ahead of that job (what its ETA waits
        for). `jobs`: the unfinished jobs, when the caller has read them already."""
        jobs = self._active_jobs() if jobs is None else jobs
        counted = jobs if before is None else ahead_of(before, jobs)
        count, work = work_ahead(counted, self.estimator)
        routes = self.estimator.routes
        parallel = sum(1 for job in counted if not job.terminal and routes.parallel(job.params))
        # A reservation whose job (or the single-flight job it joins) is stored already is counted there.
        stored = {job.id for job in jobs} | {job.cache_key for job in jobs if job.cache_key}
        for key, held in self._reserved.items():
            if key in stored or held.job_id in stored:
                continue
            if before is not None and (held.created_at, held.job_id) >= (before.created_at, before.id):
                continue
            count += 1
            parallel += held.work.parallel
            work += held.work
        return LoadSnapshot(
            self.replicas,
            count,
            work.denoise_s,
            self.gpu_utilization,
            work.decode_s,
            self.encoder_replicas,
            min(self.starting, self.replicas),
            self.parallel_replicas,
            min(self.parallel_starting, self.parallel_replicas),
            parallel,
            work.parallel_s,
        )


class QueueEta:
    """A stored job's ETA over a gateway's view of the queue, by the one model of eta.py:
    what GET, lists, a 202 and the queued event show. (Admission estimates a request
    not yet stored the same way, from the same snapshots.)"""

    def __init__(self, monitor: LoadMonitor, config: AdmissionConfig) -> None:
        self.monitor = monitor
        self.config = config

    def of_job(self, job: JobRecord, active: list[JobRecord] | None = None) -> float:
        """Seconds until the job's video is ready: for a queued job the work ahead of it, then
        its own; for a running one what it has left. `active`: the unfinished jobs, when the
        caller has read them already (a page of a list reads them once)."""
        own = job_work(job.params, self.monitor.estimator, job.video.progress)
        if job.video.status == "in_progress":
            return own.total_s
        return eta_s(own, self.monitor.snapshot(before=job, jobs=active), self.config)

    async def of_stored_job(self, job: JobRecord) -> float:
        """`of_job`, the queue read off the event loop first when the job waits in it."""
        active = None if job.video.status == "in_progress" else await self.monitor.read_active()
        return self.of_job(job, active)

    def of_request(self, params: GenerationParams, active: list[JobRecord] | None = None) -> float:
        """Seconds until a request not stored yet would be ready: behind every unfinished job
        (`active`, when the caller has read them already)."""
        return eta_s(job_work(params, self.monitor.estimator), self.monitor.snapshot(jobs=active), self.config)

    def active_jobs(self) -> list[JobRecord]:
        """The unfinished jobs (blocking: a store query)."""
        return self.monitor.active_jobs()

    async def read_active(self) -> list[JobRecord]:
        """The unfinished jobs, read off the event loop."""
        return await self.monitor.read_active()


async def _in_a_thread(read: Callable[[], list[JobRecord]]) -> list[JobRecord]:
    return await asyncio.to_thread(read)
