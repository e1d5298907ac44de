"""`ModelWorker`: runs a replica's model calls on one thread, recovers from
running out of GPU memory, and keeps the replica's health verdict.

Free of Ray (deployments/base.py wraps it as a Ray Serve deployment) and of
torch until a CUDA device is really in use, so unit tests drive it with a
fake pipeline on the CPU.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from serve_app import metrics
from serve_app.errors import GpuOutOfMemory
from serve_app.faults import FaultInjector
from serve_app.health import HealthMonitor, Outcome, ReplicaUnhealthy
from serve_app.model_worker.failures import CallFailure, sort_failure
from serve_app.model_worker.gpu_memory import GpuMemory
from serve_app.model_worker.warmup import WarmUp, WarmUpStep
from serve_app.pipeline.startup import StartupPhases, compile_cache_counts
from serve_app.settings.faults import FaultInjection
from serve_app.settings.health import HealthOptions

T = TypeVar("T")
log = logging.getLogger("ray.serve")


class ModelWorker:
    """One replica's model runtime.

    Model calls run on one dedicated thread: the replica's event loop stays
    free for health checks and cancellation, and one thread means one model
    call at a time, so memory peaks do not stack up.

    `pipe`: the loaded pipeline; after an out-of-memory its components'
    caches are cleared. `startup`: the phases the replica's start-up took,
    reported by `describe` beside the warm-up times.
    """

    def __init__(
        self,
        stage: str,
        pipe: Any,
        device: str,
        health: HealthOptions,
        faults: FaultInjection,
        startup: StartupPhases | None = None,
    ) -> None:
        self.stage = stage
        self.pipe = pipe
        self.device = device
        self.startup = startup if startup is not None else StartupPhases()
        self.memory = GpuMemory(device)
        self.health = HealthMonitor(health, stage)
        self.faults = FaultInjector(faults, stage)
        self.oom_counts: Counter[str] = Counter()
        self.last_peak_bytes: int | None = None  # the last model call's, for the GPU memory metric
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{stage}-model")
        self._attempts = 0  # model calls started on the thread, fallbacks included (fault numbering)
        self._outstanding = 0  # submitted and not finished, queued ones included
        self._outstanding_lock = threading.Lock()
        self.warmup = WarmUp(stage, self._thread.submit, after_failure=self._release_memory)
        if faults.active:
            log.warning("%s: fault injection is ON (%s); never in production", stage, faults)

    # --- warm-up ------------------------------------------------------------------------

    def warm_up(self, steps: list[WarmUpStep], before_ready: int) -> None:
        """Run named warm-up steps: the first `before_ready` now (the replica is not ready, so
        gets no request, until they ran), the rest afterwards on the model thread (warmup.py)."""
        self.warmup.run(steps, before_ready)

    def wait_warm(self, timeout_s: float) -> bool:
        """Block until background warm-up ended (benchmarks measure a warm replica)."""
        return self.warmup.wait(timeout_s)

    # --- running model calls ----------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any, fallback: Callable[..., T] | None = None) -> T:
        """`fn(*args)` on the model thread.

        On `torch.cuda.OutOfMemoryError` what the call held is freed and
        `fallback(*args)` (a lower-memory way to the same result, e.g. a tiled
        VAE decode) runs once; without one, or when it runs out of memory
        too, `GpuOutOfMemory` (503, code gpu_out_of_memory) is raised. The
        replica keeps serving either way. Other errors that are not a
        `ServiceError` become `StageFailed` with their first line only (the
        traceback goes to the replica's log, never to a client).
        """
        # The first idle reading is the memory baseline: warm-up has run (in
        # the constructor) and nothing else holds tensors yet.
        self._observe_memory()
        with self._outstanding_lock:
            self._outstanding += 1
        future = self._thread.submit(self._call, fn, args, fallback)
        future.add_done_callback(self._forget_if_cancelled)
        try:
            return await asyncio.wrap_future(future)
        finally:
            metrics.report_gpu(self.device, self.last_peak_bytes)

    def step_done(self, step: int, total: int) -> None:
        """The denoising loop's per-step hook (model thread): progress, then any injected step delay or gate."""
        self.health.beat(step)
        self.faults.after_step(step, total)

    @property
    def idle(self) -> bool:
        """No model call queued or running, and no warm-up step left: the state whose GPU
        memory is the leak check's baseline (a background warm-up grows the allocator and
        cuDNN's workspaces; measured before it ends, that growth looked like a leak and got
        the replica replaced)."""
        with self._outstanding_lock:
            return self._outstanding == 0 and self.warmup.done

    def shutdown(self, wait: bool = True) -> None:
        """Stop the model thread (after what is queued on it, if `wait`)."""
        self._thread.shutdown(wait=wait)

    def _forget_if_cancelled(self, future: Future) -> None:
        # A call cancelled while still queued never runs `_call`, whose
        # `finally` would have counted it out.
        if future.cancelled():
            with self._outstanding_lock:
                self._outstanding -= 1

    def _call(self, fn: Callable[..., T], args: tuple, fallback: Callable[..., T] | None) -> T:
        outcome: Outcome = "error"
        self.health.call_started()
        self.memory.reset_peak()
        try:
            result, failure = self._attempt(fn, args)
            if failure is None:
                outcome = "ok"
                return result
            tried = False
            if failure.kind == "oom" and fallback is not None:
                self._release_memory()
                log.warning(
                    "%s ran out of GPU memory (%s); retrying once with %s",
                    self.stage,
                    failure.summary,
                    getattr(fallback, "__name__", "the fallback"),
                )
                tried = True
                result, failure = self._attempt(fallback, args)
                if failure is None:
                    self.oom_counts["recovered"] += 1
                    metrics.gpu_oom(self.stage, "recovered")
                    outcome = "ok"
                    return result
            if failure.kind == "oom" or tried:
                self.oom_counts["failed"] += 1
                metrics.gpu_oom(self.stage, "failed")
            outcome = failure.kind
            if failure.kind != "oom":
                raise failure.error  # a fallback that failed otherwise reports its own error
            self._release_memory()
            also = " and so did its lower-memory fallback" if tried else ""
            raise GpuOutOfMemory(
                f"{self.stage} ran out of GPU memory{also} ({failure.summary}); try a smaller size, fewer "
                "frames or steps, or retry later",
                stage=self.stage,
                fallback_tried=tried,
            )
        finally:
            if outcome == "cuda_error":
                metrics.cuda_error(self.stage)
            self.last_peak_bytes = self.memory.peak()
            self.health.call_ended(outcome)
            with self._outstanding_lock:
                self._outstanding -= 1

    def _attempt(self, fn: Callable[..., T], args: tuple) -> tuple[T | None, CallFailure | None]:
        """One model call: (result, None), or (None, what went wrong) with the call's memory let go.

        The exception is handled here and never re-raised from inside the
        `except` block: a new exception raised there would carry the old one
        (and its frames, and their tensors) along as `__context__`.
        """
        self._attempts += 1
        number = self._attempts
        try:
            self.faults.before_call(number)
            return fn(*args), None
        except Exception as exc:  # noqa: BLE001 - sorted by sort_failure; nothing is swallowed
            return None, sort_failure(exc, self.stage, number)

    def _release_memory(self) -> None:
        """After an out-of-memory: collect what the failed call left, and give cached blocks back."""
        gc.collect()
        # A VAE interrupted mid-decode keeps its causal-conv feature cache
        # (GPU tensors) on the module until its next decode clears it.
        for component in (getattr(self.pipe, "components", None) or {}).values():
            clear = getattr(component, "clear_cache", None)
            if callable(clear):
                try:
                    clear()
                except Exception:
                    log.exception("%s: clearing %s's cache failed", self.stage, type(component).__name__)
        self.memory.give_back_cached()

    # --- health -----------------------------------------------------------------------

    def _observe_memory(self) -> None:
        idle = self.idle
        if idle and self.health.baseline_bytes is None and self.memory.cuda_ready():
            gc.collect()  # a baseline padded with uncollected garbage would hide a leak that size
        allocated = self.memory.allocated() if idle else None
        if idle and self.health.memory_over(allocated):
            # Reference cycles (tracebacks, closures) can hold tensors until
            # the collector runs; only what survives a collection is a leak.
            gc.collect()
            allocated = self.memory.allocated()
        # Called on the event loop with no await since `idle` was read: nothing can have been submitted.
        self.health.observe_memory(allocated, idle)

    def check_health(self) -> None:
        """Raise `ReplicaUnhealthy` if this replica should be replaced (serve_app/health.py).

        Meant for the replica's event loop (the model thread may be busy): it
        only reads counters and allocator statistics, never waits on the GPU.
        """
        self._observe_memory()
        metrics.report_gpu(self.device, self.last_peak_bytes)
        try:
            self.health.check()
        except ReplicaUnhealthy as exc:
            metrics.replica_unhealthy(self.stage, str(exc.details.get("reason")))
            log.error("health check failed: %s", exc.message)
            raise

    def describe(self) -> dict[str, Any]:
        """How the replica started, warmed up and has run since (part of /healthz)."""
        return {
            "startup_phases": dict(self.startup.seconds),
            "health": self.health.snapshot(),
            "oom": dict(self.oom_counts),
            "warmup_s": dict(self.warmup.seconds),
            "compile_cache_hits": compile_cache_counts(),
            "warmup_pending": list(self.warmup.pending),
        }
