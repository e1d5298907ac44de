"""What every model-holding stage shares: config, model loading, a worker thread,
GPU health checks and out-of-memory recovery."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from serve_app import metrics
from serve_app.config import ServiceArgs
from serve_app.errors import GpuOutOfMemory, ServiceError, StageFailed
from serve_app.faults import FaultInjector
from serve_app.health import HealthMonitor, Outcome, ReplicaUnhealthy, classify
from serve_app.gpu_share import cap_gpu_memory
from serve_app.pipeline.loading import Stage, load_pipeline, resolve_device
from serve_app.pipeline.optimize import use_compile_cache
from serve_app.pipeline.startup import StartupPhases

T = TypeVar("T")
log = logging.getLogger("ray.serve")

# Longest first line of an unexpected error's message that reaches a client.
MAX_ERROR_TEXT = 300


@dataclass
class _Failure:
    kind: Outcome  # "oom", "cuda_error" or "error"
    error: BaseException  # what to raise (its traceback's frames already cleared)
    summary: str


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:MAX_ERROR_TEXT]


def _clear_frames(exc: BaseException) -> None:
    """Drop the locals of every finished frame the exception's tracebacks hold.

    A traceback keeps each frame of the failed call alive, and with them every
    tensor those frames had in local variables: an out-of-memory error would
    otherwise pin the very memory that ran out until the exception object dies.
    """
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        stack += [current.__cause__, current.__context__]


def compile_cache_counts() -> dict[str, int]:
    """Inductor's FX graph cache and AOTAutograd's cache hits and misses in this process:
    a restart with the caches on disk should show hits, not misses."""
    import sys

    if "torch" not in sys.modules:
        return {}
    from torch._dynamo.utils import counters

    keys = ("fxgraph_cache_hit", "fxgraph_cache_miss", "autograd_cache_hit", "autograd_cache_miss")
    merged = {**counters["inductor"], **counters["aot_autograd"]}
    return {key: int(merged.get(key, 0)) for key in keys}


class ModelStage:
    """Loads its slice of the pipeline once and runs model work off the event loop.

    Model calls run on one dedicated thread: the replica's event loop stays
    free for health checks and cancellation, and one thread means one model
    call at a time, so memory peaks do not stack up.
    """

    stage: Stage

    def __init__(self, args: dict[str, Any]) -> None:
        metrics.enable()
        self.args = ServiceArgs(**args)
        self.profile = self.args.model_profile()
        started = time.perf_counter()
        self.startup = StartupPhases()
        cache = self.args.compile_cache_path
        with self.startup.phase("compile_cache"):
            self.compile_cache = use_compile_cache(cache) if cache is not None else {}
        # The cap goes on before the weights load, so they count against it too.
        with self.startup.phase("gpu_init"):
            self.memory_fraction = cap_gpu_memory(
                getattr(self.args.stages, self.stage).memory_fraction, resolve_device(self.profile))
        self.pipe = load_pipeline(self.profile, self.args.data_path, self.stage, self.startup)
        self.device = str(self.pipe._execution_device)
        self.load_s = time.perf_counter() - started
        self._start_runtime()
        log.info("%s loaded %s on %s in %.2fs", self.stage, self.profile.identity, self.device, self.load_s)

    def _start_runtime(self) -> None:
        """The worker thread, health monitor and fault injector (needs self.args, .pipe, .device)."""
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.stage}-model")
        self.health = HealthMonitor(self.args.health, self.stage)
        self.faults = FaultInjector(self.args.faults, self.stage)
        self.oom_counts: Counter[str] = Counter()
        self._attempts = 0  # model calls started on the worker, fallbacks included (fault numbering)
        self._outstanding = 0  # submitted and not finished, queued ones included
        self._outstanding_lock = threading.Lock()
        self._last_peak: int | None = None
        self.warmup_s: dict[str, float] = {}
        self.warmup_pending: list[str] = []
        self._warmup_done = threading.Event()
        self._warmup_done.set()
        if self.args.faults.active:
            log.warning("%s: fault injection is ON (%s); never in production", self.stage, self.args.faults)

    # --- warm-up ------------------------------------------------------------------------

    def warm_up(self, steps: list[tuple[str, Callable[[], Any]]], before_ready: int) -> None:
        """Run named warm-up steps: the first `before_ready` now (the replica is not ready, so
        gets no request, until they ran), the rest afterwards on the model thread, one at a
        time. Each later step is queued only when the one before it ended, so a request that
        arrives meanwhile waits for one step at most, never for the whole list. Restarts are
        then ready once the first shape is warm (speed.warmup_in_background)."""
        self.warmup_pending = [name for name, _ in steps[before_ready:]]
        self._warmup_done.clear()
        for name, fn in steps[:before_ready]:
            self._timed_warm_up(name, fn)
        self._warm_up_next(steps[before_ready:])

    def presets_before_ready(self) -> int:
        """How many of speed.warmup_presets must be warm before the replica is ready."""
        presets = self.profile.speed.warmup_presets
        return min(1, len(presets)) if self.profile.speed.warmup_in_background else len(presets)

    def wait_warm(self, timeout_s: float) -> bool:
        """Block until background warm-up ended (benchmarks measure a warm replica)."""
        return self._warmup_done.wait(timeout_s)

    def _timed_warm_up(self, name: str, fn: Callable[[], Any]) -> None:
        started = time.perf_counter()
        fn()
        self.warmup_s[name] = round(time.perf_counter() - started, 3)
        log.info("%s warmed %s in %.2fs", self.stage, name, self.warmup_s[name])

    def _warm_up_next(self, rest: list[tuple[str, Callable[[], Any]]]) -> None:
        if not rest:
            self._warmup_done.set()
            return
        name, fn = rest[0]

        def step() -> None:
            try:
                self._timed_warm_up(name, fn)
            except Exception:  # noqa: BLE001 - that shape's first request pays instead; the replica serves on
                log.exception("%s: background warm-up of %s failed", self.stage, name)
                self._release_memory()
            finally:
                self.warmup_pending.remove(name)
                self._warm_up_next(rest[1:])

        self._worker.submit(step)

    # --- running model calls ----------------------------------------------------------

    async def run_model(self, fn: Callable[..., T], *args: Any, fallback: Callable[..., T] | None = None) -> T:
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
        future = self._worker.submit(self._call, fn, args, fallback)
        future.add_done_callback(self._forget_if_cancelled)
        try:
            return await asyncio.wrap_future(future)
        finally:
            metrics.report_gpu(self.device, self._last_peak)

    def beat(self, step: int | None = None) -> None:
        """Progress of the running model call (keeps the stall check quiet)."""
        self.health.beat(step)

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
            return self._outstanding == 0 and self._warmup_done.is_set()

    def _forget_if_cancelled(self, future: Future) -> None:
        # A call cancelled while still queued never runs `_call`, whose
        # `finally` would have counted it out.
        if future.cancelled():
            with self._outstanding_lock:
                self._outstanding -= 1

    def _call(self, fn: Callable[..., T], args: tuple, fallback: Callable[..., T] | None) -> T:
        outcome: Outcome = "error"
        self.health.call_started()
        self._reset_peak()
        try:
            result, failure = self._attempt(fn, args)
            if failure is None:
                outcome = "ok"
                return result
            tried = False
            if failure.kind == "oom" and fallback is not None:
                self._release_memory()
                log.warning("%s ran out of GPU memory (%s); retrying once with %s", self.stage, failure.summary,
                            getattr(fallback, "__name__", "the fallback"))
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
                "frames or steps, or retry later", stage=self.stage, fallback_tried=tried,
            )
        finally:
            if outcome == "cuda_error":
                metrics.cuda_error(self.stage)
            self._last_peak = self._read_peak()
            self.health.call_ended(outcome)
            with self._outstanding_lock:
                self._outstanding -= 1

    def _attempt(self, fn: Callable[..., T], args: tuple) -> tuple[T | None, _Failure | None]:
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
        except Exception as exc:  # noqa: BLE001 - sorted below; nothing is swallowed
            kind = classify(exc)
            summary = _first_line(exc)
            if kind == "oom":
                error: BaseException = exc
            elif isinstance(exc, ServiceError):
                error = exc  # deadline, cancellation: already a client-ready error
            else:
                log.error("%s model call %d failed", self.stage, number, exc_info=exc)
                error = StageFailed(f"{self.stage} failed: {type(exc).__name__}: {summary}", stage=self.stage)
            _clear_frames(exc)
            error = error.with_traceback(None)
            return None, _Failure(kind, error, summary)

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
                except Exception:  # noqa: BLE001 - best effort; the next call clears it anyway
                    log.exception("%s: clearing %s's cache failed", self.stage, type(component).__name__)
        if self._cuda_ready():
            import torch

            torch.cuda.empty_cache()

    # --- GPU memory -------------------------------------------------------------------

    def _cuda_ready(self) -> bool:
        if not self.device.startswith("cuda"):
            return False
        import torch

        return torch.cuda.is_initialized()

    def _allocated(self) -> int | None:
        if not self._cuda_ready():
            return None
        import torch

        return torch.cuda.memory_allocated(self.device)

    def _reset_peak(self) -> None:
        if self._cuda_ready():
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

    def _read_peak(self) -> int | None:
        if not self._cuda_ready():
            return None
        import torch

        return torch.cuda.max_memory_allocated(self.device)

    def _observe_memory(self) -> None:
        idle = self.idle
        if idle and self.health.baseline_bytes is None and self._cuda_ready():
            gc.collect()  # a baseline padded with uncollected garbage would hide a leak that size
        allocated = self._allocated() if idle else None
        if idle and self.health.memory_over(allocated):
            # Reference cycles (tracebacks, closures) can hold tensors until
            # the collector runs; only what survives a collection is a leak.
            gc.collect()
            allocated = self._allocated()
        # No await since `idle` was read: nothing can have been submitted.
        self.health.observe_memory(allocated, idle)

    # --- Ray Serve hooks --------------------------------------------------------------

    async def check_health(self) -> None:
        """Ray Serve's periodic health check: raising gets this replica replaced.

        Runs on the replica's event loop (the model thread may be busy), so it
        only reads counters and allocator statistics, never waits on the GPU.
        """
        self._observe_memory()
        metrics.report_gpu(self.device, self._last_peak)
        try:
            self.health.check()
        except ReplicaUnhealthy as exc:
            metrics.replica_unhealthy(self.stage, str(exc.details.get("reason")))
            log.error("health check failed: %s", exc.message)
            raise

    async def describe(self) -> dict[str, Any]:
        """What this replica runs: shown by /healthz."""
        return {
            "model": self.profile.identity,
            "device": self.device,
            "dtype": self.profile.dtype if self.stage != "video_encoder" else self.profile.vae_dtype,
            "attention_backend": self.profile.attention_backend,
            "load_s": round(self.load_s, 3),
            "startup_phases": dict(getattr(self, "startup", StartupPhases()).seconds),
            "gpu_memory_fraction": self.memory_fraction,
            "health": self.health.snapshot(),
            "oom": dict(self.oom_counts),
            "compile_cache": getattr(self, "compile_cache", {}),
            "warmup_s": getattr(self, "warmup_s", {}),
            "compile_cache_hits": compile_cache_counts(),
            "warmup_pending": list(getattr(self, "warmup_pending", [])),
        }
