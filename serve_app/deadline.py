"""Request deadlines and the per-step stop check.

A `Deadline` is an absolute wall-clock time, so it means the same thing in
every replica it travels to (Ray nodes share NTP time; skew is milliseconds
against deadlines of seconds). `StepGuard` is what the denoising loop consults
after each step: it stops the loop when the deadline passes or the request is
cancelled, and remembers the step reached for the error message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from serve_app.errors import DeadlineExceeded, RequestCancelled

Clock = Callable[[], float]


@dataclass(frozen=True)
class Deadline:
    at: float  # seconds since the epoch

    @classmethod
    def after(cls, seconds: float, clock: Clock = time.time) -> Deadline:
        return cls(clock() + seconds)

    def remaining(self, clock: Clock = time.time) -> float:
        return self.at - clock()

    def expired(self, clock: Clock = time.time) -> bool:
        return clock() >= self.at

    def check(self, stage: str, clock: Clock = time.time) -> None:
        """Raise `DeadlineExceeded` if the deadline has passed before `stage` starts."""
        if self.expired(clock):
            raise DeadlineExceeded(
                f"deadline passed {clock() - self.at:.3f}s ago, before stage {stage!r} started",
                stage=stage,
            )


@dataclass
class StepGuard:
    """Stop conditions for one denoising loop, checked at step boundaries.

    `cancel()` may be called from any thread (the replica's event loop calls it
    when Ray cancels the request); the loop thread reads it after each step.
    """

    deadline: Deadline
    total_steps: int
    clock: Clock = time.time
    steps_done: int = 0
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def should_stop(self) -> bool:
        return self.cancelled or self.deadline.expired(self.clock)

    def raise_stop(self) -> None:
        """The error that explains why the loop stopped early."""
        if self.cancelled:
            raise RequestCancelled(
                f"request cancelled after step {self.steps_done} of {self.total_steps}",
                step=self.steps_done,
                total_steps=self.total_steps,
            )
        raise DeadlineExceeded(
            f"deadline passed during denoising; stopped after step {self.steps_done} of {self.total_steps}",
            stage="denoise",
            step=self.steps_done,
            total_steps=self.total_steps,
        )
