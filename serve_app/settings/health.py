"""`HealthOptions`: when a model replica fails Ray's health check (`args.health`).

The verdict itself is `serve_app.health.HealthMonitor`.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from serve_app.settings.base import StageName, StrictModel


class HealthOptions(StrictModel):
    """When a model replica (prompt encoder, denoiser, video encoder) reports itself unhealthy."""

    enabled: bool = Field(
        True, description="Fail Ray's health check on the conditions below; false: only report metrics."
    )
    check_period_s: float = Field(
        10.0,
        gt=0,
        description="Ray's health_check_period_s of the model stages: seconds between two checks. "
        "Ray replaces a replica after 3 failed checks in a row.",
    )
    check_timeout_s: float = Field(
        30.0, gt=0, description="Ray's health_check_timeout_s of the model stages: a check that takes longer fails."
    )
    max_consecutive_cuda_errors: int = Field(
        3,
        ge=1,
        description="Model calls in a row failing with a CUDA error (not out-of-memory) that make the "
        "replica unhealthy; any successful call resets the count.",
    )
    # Measured on an H100 with the 5B (random weights): a 1280x704x121 request
    # leaves the denoiser +60 MiB above its warm-up baseline (UniPC keeps its
    # last model outputs), the VAE decoder +0; 512 MiB is far from both.
    memory_tolerance_mib: float = Field(
        512.0,
        ge=0,
        description="How far torch's allocated GPU memory may stay above its post-warm-up baseline "
        "while the replica is idle (scheduler state and allocator workspaces legitimately keep a little).",
    )
    memory_strikes: int = Field(
        2,
        ge=1,
        description="Idle readings in a row over the tolerance, after a garbage collection, that make "
        "the replica unhealthy (read at each health check and before each model call that finds the replica idle).",
    )
    # Same measurement: a 5B step at 1280x704x121 with guidance takes ~2.5 s and
    # the whole VAE decode ~7 s, so 300 s without progress is a hang, not a slow call.
    stall_s: float = Field(
        300.0,
        gt=0,
        description="Seconds a model call may go without progress (a denoising step; for the other "
        "stages the whole call) before the replica counts as stuck.",
    )
    stall_s_by_stage: dict[StageName, float] = Field(
        default_factory=dict, description="Per-stage stall_s, e.g. {video_encoder: 900} for slow tiled decodes."
    )

    @field_validator("stall_s_by_stage")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {stage: s for stage, s in v.items() if not s > 0}
        if bad:
            raise ValueError(f"stall_s_by_stage={bad} must be positive seconds")
        return v

    def stall_limit(self, stage: str) -> float:
        return float(self.stall_s_by_stage.get(stage, self.stall_s))  # type: ignore[call-overload]

    def deployment_options(self) -> dict[str, float]:
        """Ray Serve's own knobs for the checks of a model stage's deployment."""
        return {"health_check_period_s": self.check_period_s, "health_check_timeout_s": self.check_timeout_s}
