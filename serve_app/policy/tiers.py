"""Quality tiers: what the service gives up, in order, as load rises.

The table (configs/tiers.yaml) and its schema are settings, in
serve_app/settings/tiers.py; this module is how a tier changes a request.
Caps only ever lower a request (a request for fewer steps than the cap keeps
its own), and a capped frame count stays of the form 4k+1 because every cap
is validated to be one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serve_app.params import GenerationParams
from serve_app.settings.tiers import Tier, TierTable

# Tier and TierTable re-exported: tests import the table's schema from here, next to what applies it.
__all__ = ["Tier", "TierTable", "apply_tier", "changes", "lowest_tier"]


def apply_tier(params: GenerationParams, tier: Tier) -> GenerationParams:
    """The request's settings under `tier` (the same object when nothing is capped)."""
    update: dict[str, Any] = {}
    if tier.max_steps is not None and params.num_inference_steps > tier.max_steps:
        update["num_inference_steps"] = tier.max_steps
    if tier.max_frames is not None and params.num_frames > tier.max_frames:
        update["num_frames"] = tier.max_frames
    if tier.fast is not None and params.fast != tier.fast:
        update["fast"] = tier.fast
    return params.model_copy(update=update) if update else params


def changes(requested: GenerationParams, used: GenerationParams) -> dict[str, dict[str, int]]:
    """{'num_frames': {'requested': 17, 'used': 13}, ...} for what a tier lowered."""
    return {
        field: {"requested": getattr(requested, field), "used": getattr(used, field)}
        for field in ("num_inference_steps", "num_frames")
        if getattr(requested, field) != getattr(used, field)
    }


def lowest_tier(table: TierTable) -> Callable[[GenerationParams], tuple[GenerationParams, str] | None]:
    """For the runner's out-of-memory retry: a request under the table's last tier, with
    that tier's name, when the tier lowers it (None when it changes nothing)."""
    tier = table.tiers[-1]

    def lower(params: GenerationParams) -> tuple[GenerationParams, str] | None:
        lowered = apply_tier(params, tier)
        return None if lowered == params else (lowered, tier.name)

    return lower
