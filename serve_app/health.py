"""Replica health of the model stages: when a GPU replica should be replaced.

Ray Serve calls each replica's `check_health` every `health_check_period_s`;
raising marks the check failed, and after three failures in a row the
controller kills the replica and starts a new one. `HealthMonitor` holds the
logic behind that verdict, free of Ray and torch so it is unit-testable:

- **CUDA errors**: `max_consecutive_cuda_errors` model calls in a row failed
  with a CUDA error (not an out-of-memory: that one is recovered from). Sticky
  errors (illegal address, device-side assert, lost GPU) poison the CUDA
  context for good, so every later call fails the same way.
- **Memory**: torch's allocated bytes, read while the replica is idle, stay
  above the post-warm-up baseline by more than `memory_tolerance_mib` on
  `memory_strikes` idle checks in a row: something keeps tensors alive between
  requests (a leak), and the next request would run out of memory.
- **Stall**: a model call has made no progress (no `beat()`: the denoising
  loop beats every step; other stages beat only when a call starts) for
  longer than its stage's `stall_s`: a hung kernel, collective or driver.

A verdict, once reached, is kept: Ray needs several failed checks in a row,
and a replica that was stuck or lost its context is not to be trusted again.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from serve_app.errors import ServiceError
from serve_app.settings.health import HealthOptions

Outcome = Literal["ok", "oom", "cuda_error", "error"]
MIB = 1024 * 1024


class ReplicaUnhealthy(ServiceError):
    """A model replica failed its own health check; Ray replaces it (HTTP 503)."""

    status_code = 503
    code = "replica_unhealthy"
    error_type = "server_error"


# --------------------------------------------------------------------------- classifying errors

# Messages of the CUDA runtime, driver and libraries that mean the device or
# its context failed, as opposed to a programming error that merely mentions
# CUDA ("Expected all tensors to be on the same device ... cuda:0 and cpu").
CUDA_FAILURE = re.compile(
    r"CUDA error|CUDA driver error|CUBLAS_STATUS_|CUDNN_STATUS_|cuDNN error|NCCL error|device-side assert"
    r"|illegal memory access|unspecified launch failure|uncorrectable ECC|GPU is lost|"
    r"no CUDA-capable device|CUDA-capable device\(s\) is/are busy",
    re.IGNORECASE,
)
# A failed cudaMalloc outside torch's caching allocator (cuBLAS/cuDNN handles,
# workspaces) surfaces as a plain RuntimeError; it is still an out-of-memory.
OOM_MESSAGE = re.compile(r"CUDA out of memory|CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED", re.IGNORECASE)


def _torch_classes(*names: str) -> tuple[type, ...]:
    # Only if torch is already imported: without it no torch error can exist,
    # and this module must not pull torch into processes that lack it.
    torch = sys.modules.get("torch")
    if torch is None:
        return ()
    found = []
    for name in names:
        obj: Any = torch
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, type):
            found.append(obj)
    return tuple(found)


def is_oom(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or a CUDA allocation failure outside torch's allocator."""
    oom = _torch_classes("OutOfMemoryError", "cuda.OutOfMemoryError")
    if oom and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and OOM_MESSAGE.search(str(exc)) is not None


def is_cuda_error(exc: BaseException) -> bool:
    """A failure of the GPU or its CUDA context (counted towards `max_consecutive_cuda_errors`).

    torch >= 2.8 raises `torch.AcceleratorError` for CUDA runtime errors, and
    `torch.cuda.CudaError` comes from cudart calls; older paths raise a plain
    RuntimeError whose message carries the CUDA error text. Out-of-memory is
    excluded: it says nothing about the device's health.
    """
    if is_oom(exc):
        return False
    cuda = _torch_classes("AcceleratorError", "cuda.CudaError")
    if cuda and isinstance(exc, cuda):
        return True
    return isinstance(exc, RuntimeError) and CUDA_FAILURE.search(str(exc)) is not None


def classify(exc: BaseException | None) -> Outcome:
    if exc is None:
        return "ok"
    if is_oom(exc):
        return "oom"
    if is_cuda_error(exc):
        return "cuda_error"
    return "error"


# --------------------------------------------------------------------------- the monitor


@dataclass
class _Running:
    number: int
    started: float
    last_beat: float
    step: int | None = None


class HealthMonitor:
    """Counts what model calls did and decides whether the replica is still fit to serve.

    `call_started`, `beat` and `call_ended` run on the stage's model thread;
    `observe_memory` and `check` on the replica's event loop (Ray's health
    check). A lock keeps the two views consistent.
    """

    def __init__(self, options: HealthOptions, stage: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.stage = stage
        self.clock = clock
        self._lock = threading.Lock()
        self.calls = 0
        self.outcomes: Counter[str] = Counter()
        self.consecutive_cuda_errors = 0
        self.baseline_bytes: int | None = None
        self.last_idle_bytes: int | None = None
        self.memory_strikes = 0
        self._running: _Running | None = None
        self.reason: str | None = None  # the kept verdict; None while healthy
        self.reason_kind: str | None = None

    # --- model thread ------------------------------------------------------------------

    def call_started(self) -> int:
        with self._lock:
            self.calls += 1
            now = self.clock()
            self._running = _Running(self.calls, now, now)
            return self.calls

    def beat(self, step: int | None = None) -> None:
        """Progress: the call is alive (the denoising loop calls this every step)."""
        with self._lock:
            if self._running is not None:
                self._running.last_beat = self.clock()
                if step is not None:
                    self._running.step = step

    def call_ended(self, outcome: Outcome) -> None:
        with self._lock:
            self._running = None
            self.outcomes[outcome] += 1
            if outcome == "ok":
                self.consecutive_cuda_errors = 0
            elif outcome == "cuda_error":
                self.consecutive_cuda_errors += 1
                limit = self.options.max_consecutive_cuda_errors
                if self.consecutive_cuda_errors >= limit:
                    self._fail(
                        "cuda_errors",
                        f"{self.consecutive_cuda_errors} model calls in a row failed with a CUDA error (limit {limit})",
                    )
            # "oom" and "error" neither prove nor disprove the device's health.

    @property
    def running(self) -> bool:
        with self._lock:
            return self._running is not None

    # --- event loop --------------------------------------------------------------------

    def memory_over(self, allocated: int | None) -> bool:
        """Whether `allocated` bytes exceed the baseline by more than the tolerance."""
        if allocated is None or self.baseline_bytes is None:
            return False
        return allocated - self.baseline_bytes > self.options.memory_tolerance_mib * MIB

    def observe_memory(self, allocated: int | None, idle: bool) -> None:
        """Torch's allocated bytes; only idle readings count (a running call's tensors are no leak).

        The first idle reading is the baseline: replicas warm up in their
        constructor, before Ray sends any request or health check.
        """
        if allocated is None or not idle:
            return
        with self._lock:
            self.last_idle_bytes = allocated
            if self.baseline_bytes is None:
                self.baseline_bytes = allocated
                return
            if not self.memory_over(allocated):
                self.memory_strikes = 0
                return
            self.memory_strikes += 1
            if self.memory_strikes >= self.options.memory_strikes:
                grown = (allocated - self.baseline_bytes) / MIB
                self._fail(
                    "memory",
                    f"GPU memory stays {grown:.0f} MiB above its baseline of "
                    f"{self.baseline_bytes / MIB:.0f} MiB while idle, on {self.memory_strikes} checks in a "
                    f"row (tolerance {self.options.memory_tolerance_mib:g} MiB)",
                )

    def check(self) -> None:
        """Raise `ReplicaUnhealthy` when the replica should be replaced."""
        with self._lock:
            running = self._running
            if self.reason is None and running is not None:
                quiet = self.clock() - running.last_beat
                limit = self.options.stall_limit(self.stage)
                if quiet > limit:
                    where = f" after step {running.step}" if running.step is not None else ""
                    self._fail(
                        "stall",
                        f"model call {running.number} made no progress for {quiet:.0f}s{where} (limit {limit:g}s)",
                    )
            reason = self.reason
        if reason is not None and self.options.enabled:
            raise ReplicaUnhealthy(
                f"{self.stage} replica is unhealthy: {reason}", stage=self.stage, reason=self.reason_kind
            )

    def _fail(self, kind: str, reason: str) -> None:
        if self.reason is None:
            self.reason, self.reason_kind = reason, kind

    def snapshot(self) -> dict[str, Any]:
        """What /healthz and tests see."""
        with self._lock:
            running = self._running
            return {
                "healthy": self.reason is None,
                "reason": self.reason,
                "calls": self.calls,
                "outcomes": dict(self.outcomes),
                "consecutive_cuda_errors": self.consecutive_cuda_errors,
                "baseline_bytes": self.baseline_bytes,
                "last_idle_bytes": self.last_idle_bytes,
                "memory_strikes": self.memory_strikes,
                "running_call": None
                if running is None
                else {
                    "number": running.number,
                    "step": running.step,
                    "quiet_s": round(self.clock() - running.last_beat, 3),
                },
            }
