"""The degradation table (configs/tiers.yaml): its schema and its loader.

A tier caps denoising steps and frames and may force the result cache on.
The table is ordered by `max_load`: the first tier whose bound the current
load is under applies. How a tier changes a request is serve_app/policy/tiers.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator, model_validator

from serve_app.paths import resolve
from serve_app.settings.base import StrictModel
from serve_app.settings.limits import GenerationLimits
from serve_app.settings.speed import FastKnobs, SpeedOptions

CacheMode = Literal["as_requested", "forced"]


class Tier(StrictModel):
    """One row of the degradation table."""

    name: str = Field(description="Reported to clients (body `tier`, header `Wan-Tier`) and in metrics.")
    max_load: float = Field(gt=0, description="This tier applies while load is below this fraction (0-1).")
    max_steps: int | None = Field(None, ge=1, description="Cap on denoising steps; null keeps the request's.")
    max_frames: int | None = Field(None, ge=1, description="Cap on frames (4k+1); null keeps the request's.")
    cache: CacheMode = Field(
        "as_requested",
        description="'forced': answer from the result cache even for `cache: false` (such a request's own "
        "video never fills it; only requests that allow the cache do).",
    )
    fast: FastKnobs | None = Field(
        None,
        description="Quality-changing speed-ups for this tier (FastKnobs: step_cache_threshold, fp8; see "
        "docs/performance.md). Needs a model profile with speed.optimized_loop.",
    )

    @field_validator("fast")
    @classmethod
    def _exact_is_none(cls, v: FastKnobs | None) -> FastKnobs | None:
        # Knobs that change nothing (`fast: {}`, `fast: {fp8: false}`) are no fast knobs.
        return None if v is not None and v.exact else v

    @property
    def caps(self) -> bool:
        return self.max_steps is not None or self.max_frames is not None or self.fast is not None


class TierTable(StrictModel):
    """configs/tiers.yaml."""

    tiers: list[Tier] = Field(min_length=1, description="Ordered by max_load, lowest load first.")

    @model_validator(mode="after")
    def _ordered(self) -> TierTable:
        check_order(self.tiers)
        return self

    def check(self, limits: GenerationLimits, optimized_loop: bool = True, speed: SpeedOptions | None = None) -> None:
        """Caps must be values a request could have asked for itself; fast knobs need a loop that
        has them, and (given the replicas' `speed`) the DiT variants they run on."""
        for tier in self.tiers:
            if tier.fast is not None and not optimized_loop:
                raise ValueError(
                    f"tier {tier.name!r} sets fast={tier.fast.model_dump(exclude_defaults=True)}, but the model "
                    "profile's speed.optimized_loop is off: use a tiers file without fast knobs"
                )
            missing = speed.missing_for(tier.fast) if speed is not None and tier.fast is not None else None
            if tier.fast is not None and missing:
                raise ValueError(
                    f"tier {tier.name!r} sets fast={tier.fast.model_dump(exclude_defaults=True)}, which needs "
                    f"{missing} in the model profile"
                )
            frames = tier.max_frames
            if frames is not None and (frames < limits.min_frames or (frames - 1) % limits.frames_modulus):
                raise ValueError(
                    f"tier {tier.name!r}: max_frames={frames} must be >= {limits.min_frames} and of the form "
                    f"{limits.frames_modulus}k+1"
                )
            if tier.max_steps is not None and tier.max_steps < limits.min_steps:
                raise ValueError(f"tier {tier.name!r}: max_steps={tier.max_steps} < min_steps={limits.min_steps}")

    def for_load(self, load: float) -> int:
        """Index of the tier that applies at `load`."""
        for index, tier in enumerate(self.tiers):
            if load < tier.max_load:
                return index
        return len(self.tiers) - 1


def check_order(tiers: list[Tier]) -> None:
    """A table's rows: unique names, strictly increasing max_load, the last one covering full load.
    (Also run on `admission.tiers`, the table written inline, before it becomes a TierTable.)"""
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise ValueError(f"tier names must be unique: {names}")
    bounds = [t.max_load for t in tiers]
    if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
        raise ValueError(f"tiers must be ordered by strictly increasing max_load: {bounds}")
    if bounds and bounds[-1] < 1.0:
        raise ValueError(f"the last tier's max_load={bounds[-1]} must be >= 1.0 so every load has a tier")


def load_tiers(path: str | Path) -> TierTable:
    return TierTable(**(yaml.safe_load(resolve(path).read_text()) or {}))
