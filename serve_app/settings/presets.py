"""Presets (configs/presets.yaml): named generation settings, the limits beside them, and their loader."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, model_validator

from serve_app.paths import CONFIG_DIR, resolve
from serve_app.settings.base import StrictModel
from serve_app.settings.limits import GenerationLimits


class Preset(StrictModel):
    """A named set of generation settings; any field may be overridden per request."""

    description: str = Field("", description="What the preset is for.")
    width: int = Field(description="Width in pixels.")
    height: int = Field(description="Height in pixels.")
    num_frames: int = Field(description="Frames (4k+1).")
    num_inference_steps: int = Field(description="Denoising steps.")
    guidance_scale: float = Field(description="Classifier-free guidance scale.")
    fps: int = Field(24, description="Frames per second of the mp4.")
    negative_prompt: str = Field("", description="Default negative prompt.")


class PresetCatalog(StrictModel):
    """configs/presets.yaml: presets plus the limits requests are checked against."""

    default_preset: str = Field("preview", description="Preset used when a request names none.")
    limits: GenerationLimits = Field(default_factory=GenerationLimits)
    presets: dict[str, Preset]

    @model_validator(mode="after")
    def _default_exists(self) -> PresetCatalog:
        if self.default_preset not in self.presets:
            raise ValueError(f"default_preset={self.default_preset!r} is not one of {sorted(self.presets)}")
        return self


def load_presets(path: str | Path = CONFIG_DIR / "presets.yaml") -> PresetCatalog:
    return PresetCatalog(**yaml.safe_load(resolve(path).read_text()))
