"""Fault injection, for tests only: make model calls fail on purpose, make jobs slow, or hold them.

Everything is off by default; production configs never set `faults`. Model
calls are counted per replica from 1, on the stage's model thread, in the
order they start: each `run_model` call is one, and its lower-memory
fallback (if it runs) is the next one. Warm-up runs in the constructor and is
not counted. With several replicas of a stage, each counts for itself.

The errors raised are the real types: `torch.cuda.OutOfMemoryError` (it can
be constructed without a GPU), and RuntimeErrors with the text the CUDA
runtime uses, so the recovery and health paths under test are the ones a
real failure takes.

The step gate (`step_gate`) holds the denoiser after each step until a test
lets it go: a named Ray actor whose `wait(stage, step, total)` returns when the
test opens or releases it (Ray's SignalActor pattern; tests/helpers/gate.py).
Integration tests hold jobs mid-flight with it rather than with
`step_delay_s`, whose timing only makes a hold likely.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from serve_app.settings.faults import STEP_GATE_NAMESPACE, FaultInjection

log = logging.getLogger("ray.serve")


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
        self._gate: Any = None  # the step gate's actor handle, looked up on the first step

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

    def after_step(self, step: int, total: int) -> None:
        """Called by the denoiser after each step (on the model thread): the step delay, then the step gate."""
        if self.config.step_delay_s:
            time.sleep(self.config.step_delay_s)
        if self.config.step_gate:
            self._pass_gate(step, total)

    def _pass_gate(self, step: int, total: int) -> None:
        import ray  # only a replica with a step gate configured needs it (a Ray worker)
        from ray.exceptions import GetTimeoutError

        name = self.config.step_gate
        if self._gate is None:
            try:
                self._gate = ray.get_actor(name, namespace=STEP_GATE_NAMESPACE)
            except ValueError as exc:
                raise InjectedFault(
                    f"step gate {name!r} is not a live actor in namespace "
                    f"{STEP_GATE_NAMESPACE!r}; create it before the app"
                ) from exc
        waiting = self._gate.wait.remote(self.stage, step, total)
        try:
            ray.get(waiting, timeout=self.config.step_gate_timeout_s)
        except GetTimeoutError:
            log.warning(
                "%s: step gate %r held step %d of %d over %gs; going on",
                self.stage,
                name,
                step,
                total,
                self.config.step_gate_timeout_s,
            )
            ray.cancel(waiting)
