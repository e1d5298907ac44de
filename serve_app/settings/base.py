"""The base of every settings model, and names more than one schema shares."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# The model stages: the ones that run a model, fail like GPUs do, and are health-checked
# (parallel_denoiser: the multi-GPU denoiser's ranks, when args.stages.parallel_denoiser is set).
StageName = Literal["prompt_encoder", "denoiser", "video_encoder", "parallel_denoiser"]


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo in a YAML file fails at start-up); values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
