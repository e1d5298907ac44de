"""`args.admission`: how the gateway admits work under load and where the tier table is."""

from __future__ import annotations

from pydantic import Field, field_validator

from serve_app.settings.base import StrictModel
from serve_app.settings.tiers import Tier, TierTable, check_order, load_tiers


class AdmissionConfig(StrictModel):
    """How the gateway admits work under load (serve_app/policy/admission.py)."""

    enabled: bool = Field(
        True,
        description="Admission control and quality tiers. Off: every request is queued as asked (FIFO), "
        "whatever the load (the 'naive' configuration of bench/bench_load.py).",
    )
    tiers_file: str = Field("configs/tiers.yaml", description="The degradation table.")
    tiers: list[Tier] | None = Field(
        None,
        min_length=1,
        description="The degradation table written inline, rows as in `tiers:` of configs/tiers.yaml; unset "
        "reads `tiers_file`. Inline is how the Gateway's user_config changes the tiers of a running service "
        "(docs/operations.md, Live retuning): a file is read once, when the app is built.",
    )
    max_queue_per_replica: int = Field(
        4, ge=1, description="Unfinished jobs per running denoiser replica at 100% load; more get a 429."
    )
    gpu_weight: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Share of GPU utilisation in the load (the rest is queue depth); ignored without a GPU.",
    )
    cold_start_s: float = Field(
        60.0,
        ge=0,
        description="Seconds a denoiser replica takes to start (load and warm up; 55-65 s for the 5B "
        "on an H100). Added to estimates while the denoiser is scaled to zero, and the time before a starting "
        "replica (scale-up, replacement) takes any of the queue.",
    )
    # True by default: both shipped configs put every stage on one box (CPU) or
    # one card (fractional GPUs), where stages contend. Wrongly true costs some
    # goodput (a few 429s too many); wrongly false admits videos that then miss
    # their deadlines, which is what admission exists to prevent.
    stages_share_hardware: bool = Field(
        True,
        description="Whether the denoiser and the video encoder run on the same hardware (one CPU box, "
        "or fractions of one GPU). True: each job ahead costs the sum of its denoise and decode time. False "
        "(separate cards or nodes): one job decodes while the next denoises, and the slower of the two "
        "queues sets the wait.",
    )
    refresh_s: float = Field(1.0, gt=0, description="How often a gateway re-reads replica count and GPU use.")
    min_retry_after_s: float = Field(1.0, gt=0, description="Smallest Retry-After of a 429.")

    @field_validator("tiers")
    @classmethod
    def _ordered(cls, v: list[Tier] | None) -> list[Tier] | None:
        if v is not None:
            check_order(v)
        return v

    def tier_table(self) -> TierTable:
        """The inline table when there is one, else `tiers_file`'s (not yet checked against presets)."""
        return TierTable(tiers=self.tiers) if self.tiers is not None else load_tiers(self.tiers_file)
