"""Fault injection, for tests only: make model calls fail on purpose, or make jobs slow.

Everything is off by default; production configs never set `faults`. Model
calls are counted per replica from 1, on the stage's model thread, in the
order they start: each `run_model` call is one, and its lower-memory
fallback (if it runs) is the next one. Warm-up runs in the constructor and is
not counted. With several replicas of a stage, each counts for itself.

The errors raised are the real types: `torch.cuda.OutOfMemoryError` (it can
be constructed without a GPU), and RuntimeErrors with the text the CUDA
runtime uses, so the recovery and health paths under test are the ones a
real failure takes.
"""

from __future__ import annotations

import time

from serve_app.settings.faults import FaultInjection


class InjectedFault(RuntimeError):
    """The generic failure of `fail_on_calls`: a RuntimeError like any bug's, named so tests can catch it."""


class FaultInjector:
    """The faults of one stage replica."""

    def __init__(self, config: FaultInjection, stage: str) -> None:
        self.config = config
        self.stage = stage
        self._oom = frozenset(config.oom_on_calls.get(stage, ()))  # type: ignore[call-overload]
        self._cuda = frozenset(config.cuda_error_on_calls.get(stage, ()))  # type: ignore[call-overload]
        self._fail = frozenset(config.fail_on_calls.get(stage, ()))  # type: ignore[call-overload]
        self.injected = 0

    def before_call(self, number: int) -> None:
        """Raise the fault planned for model call `number` of this replica, if any."""
        tag = f"(injected fault: {self.stage} model call {number})"
        if number in self._oom:
            import torch  # a model stage has torch loaded already

            self.injected += 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 20.00 GiB {tag}")
        if number in self._cuda:
            self.injected += 1
            raise RuntimeError(f"CUDA error: an illegal memory access was encountered {tag}")
        if number in self._fail:
            self.injected += 1
            raise InjectedFault(f"model call failed {tag}")

    def after_step(self) -> None:
        """Called by the denoiser after each step (on the model thread)."""
        if self.config.step_delay_s:
            time.sleep(self.config.step_delay_s)
