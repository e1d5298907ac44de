"""What admission reads: the denoise work waiting, the replicas to do it, GPU use.

`LoadSnapshot` is a plain value so admission is a pure function of it (unit
tests build snapshots by hand). `LoadMonitor` makes snapshots in a gateway:

- work ahead comes from the job store, so every gateway replica sees the same
  queue (a shared Redis or SQLite store);
- the denoiser's replica count (running or starting) comes from Ray Serve's
  status, polled in the background (a controller round trip is too slow per
  request);
- GPU utilisation comes from NVML on the gateway's node, averaged over its
  cards, when the denoiser runs on GPUs. With denoisers on other nodes that is
  a proxy; the queue-depth part of the load is exact everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from serve_app.estimates import StageTimeEstimator
from serve_app.jobs.model import JobRecord

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class LoadSnapshot:
    replicas: int  # denoiser replicas running or starting (0: scaled to zero)
    active_jobs: int  # unfinished jobs in the store, all gateways
    work_ahead_s: float  # bottleneck-stage seconds those jobs still need
    gpu_utilization: float | None = None  # 0-1, None without a GPU


def remaining_work_s(jobs: Iterable[JobRecord], estimator: StageTimeEstimator) -> tuple[int, float]:
    """(count, seconds of the slowest stage) the unfinished jobs still need.

    Stages of different jobs overlap (one job decodes while the next
    denoises), so the queue drains at the pace of the slowest stage, not of
    whole jobs. A running job's share shrinks with its progress.
    """
    count, seconds = 0, 0.0
    for job in jobs:
        if job.terminal:
            continue
        count += 1
        seconds += estimator.bottleneck_s(job.params) * (1 - job.video.progress / 100)
    return count, seconds


def nvml_utilization() -> float | None:
    """Mean GPU utilisation (0-1) over this node's cards; None without NVML or cards."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return None
        rates = [pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(i)).gpu for i in range(count)]
        return sum(rates) / len(rates) / 100
    except Exception:  # noqa: BLE001 - no driver, no GPU: the queue alone is the load
        return None


# Replicas that serve now or will in moments: a replica starting (app start,
# scale-up, replacement after a crash) is not a cold start to pay for again.
SERVING_STATES = ("RUNNING", "STARTING", "UPDATING", "RECOVERING")


def serve_replicas(app_name: str, deployment: str) -> int | None:
    """Replicas of one deployment that serve or are about to, from Ray Serve's status (blocking)."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None or deployment not in app.deployments:
        return None
    states = app.deployments[deployment].replica_states
    return int(sum(n for state, n in states.items() if str(getattr(state, "value", state)) in SERVING_STATES))


class LoadMonitor:
    """Snapshots for admission; replica count and GPU use refreshed in the background."""

    def __init__(
        self,
        *,
        active_jobs: Callable[[], list[JobRecord]],
        estimator: StageTimeEstimator,
        replicas: Callable[[], int | None],
        gpu_utilization: Callable[[], float | None] | None,
        refresh_s: float,
        initial_replicas: int,
    ) -> None:
        self._active_jobs = active_jobs
        self._estimator = estimator
        self._replicas_fn = replicas
        self._gpu_fn = gpu_utilization
        self.refresh_s = refresh_s
        self.replicas = initial_replicas
        self.gpu_utilization: float | None = None
        self.refreshed_at = 0.0
        self._task: asyncio.Task | None = None

    def refresh(self) -> None:
        """One poll of replica count and GPU use (blocking: run it off the event loop)."""
        try:
            replicas = self._replicas_fn()
            if replicas is not None:
                self.replicas = replicas
        except Exception:  # noqa: BLE001 - keep the last known count
            log.warning("could not read the denoiser's replica count", exc_info=True)
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

    def snapshot(self) -> LoadSnapshot:
        count, work = remaining_work_s(self._active_jobs(), self._estimator)
        return LoadSnapshot(self.replicas, count, work, self.gpu_utilization)
