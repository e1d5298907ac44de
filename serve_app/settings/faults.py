"""`FaultInjection`: test-only failures injected into the model stages (`args.faults`).

What raises them is `serve_app.faults.FaultInjector`; the rules on counting
model calls are in that module's docstring.
"""

from __future__ import annotations

from pydantic import Field, PositiveInt, model_validator

from serve_app.settings.base import StageName, StrictModel

CallPlan = dict[StageName, list[PositiveInt]]

# The Ray namespace of `step_gate` actors: the test that creates one and the
# denoiser replicas (Serve's own namespace) both look it up there.
STEP_GATE_NAMESPACE = "wan_serve_faults"


class FaultInjection(StrictModel):
    """Test-only: failures injected into the model stages (all off by default)."""

    oom_on_calls: CallPlan = Field(
        default_factory=dict,
        description="Test-only. Per stage, the model-call numbers (from 1, per replica) that "
        "raise torch.cuda.OutOfMemoryError before running, e.g. {video_encoder: [1]}.",
    )
    cuda_error_on_calls: CallPlan = Field(
        default_factory=dict,
        description="Test-only. Per stage, model-call numbers that raise a RuntimeError "
        "'CUDA error: an illegal memory access was encountered' (counts towards the health check's CUDA errors).",
    )
    fail_on_calls: CallPlan = Field(
        default_factory=dict,
        description="Test-only. Per stage, model-call numbers that raise a generic "
        "RuntimeError (a bug, not a GPU fault).",
    )
    step_delay_s: float = Field(
        0.0,
        ge=0,
        le=600,
        description="Test-only. Seconds the denoiser sleeps after each step, so CPU tests get "
        "jobs long enough to kill, cancel or queue behind. Keep it below health.stall_s.",
    )
    step_gate: str = Field(
        "",
        description=f"Test-only. Name of a Ray actor (namespace '{STEP_GATE_NAMESPACE}') the denoiser waits on "
        "after each step, calling its wait(stage, step, total), so a test holds jobs mid-flight and lets them go "
        "when it chooses (tests/helpers/gate.py); '' = off.",
    )
    step_gate_timeout_s: float = Field(
        120.0,
        gt=0,
        le=600,
        description="Test-only. Longest wait at step_gate per step; then the step goes on "
        "(with a warning), so a gate a test left closed cannot hold a replica for ever. Keep it below health.stall_s.",
    )

    @model_validator(mode="after")
    def _one_fault_per_call(self) -> FaultInjection:
        plans = {
            "oom_on_calls": self.oom_on_calls,
            "cuda_error_on_calls": self.cuda_error_on_calls,
            "fail_on_calls": self.fail_on_calls,
        }
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
        return bool(
            self.oom_on_calls or self.cuda_error_on_calls or self.fail_on_calls or self.step_delay_s or self.step_gate
        )
