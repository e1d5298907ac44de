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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

StageName = Literal["prompt_encoder", "denoiser", "video_encoder"]
CallPlan = dict[StageName, list[PositiveInt]]


class FaultInjection(BaseModel):
    """Test-only: failures injected into the model stages (all off by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    oom_on_calls: CallPlan = Field(
        default_factory=dict, description="Test-only. Per stage, the model-call numbers (from 1, per replica) that "
        "raise torch.cuda.OutOfMemoryError before running, e.g. {video_encoder: [1]}."
    )
    cuda_error_on_calls: CallPlan = Field(
        default_factory=dict, description="Test-only. Per stage, model-call numbers that raise a RuntimeError "
        "'CUDA error: an illegal memory access was encountered' (counts towards the health check's CUDA errors)."
    )
    fail_on_calls: CallPlan = Field(
        default_factory=dict, description="Test-only. Per stage, model-call numbers that raise a generic "
        "RuntimeError (a bug, not a GPU fault)."
    )
    step_delay_s: float = Field(
        0.0, ge=0, le=600, description="Test-only. Seconds the denoiser sleeps after each step, so CPU tests get "
        "jobs long enough to kill, cancel or queue behind. Keep it below health.stall_s."
    )

    @model_validator(mode="after")
    def _one_fault_per_call(self) -> "FaultInjection":
        plans = {"oom_on_calls": self.oom_on_calls, "cuda_error_on_calls": self.cuda_error_on_calls,
                 "fail_on_calls": self.fail_on_calls}
        for stage in {s for plan in plans.values() for s in plan}:
            seen: dict[int, str] = {}
            for name, plan in plans.items():
                for number in plan.get(stage, ()):
                    if number in seen:
                        raise ValueError(
                            f"{stage} call {number} is in both {seen[number]} and {name}; give each call one fault"
                        )
                    seen[number] = name
        return self

    @property
    def active(self) -> bool:
        return bool(self.oom_on_calls or self.cuda_error_on_calls or self.fail_on_calls or self.step_delay_s)


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
