"""`GenerationLimits`: the bounds every request is checked against (`limits:` of configs/presets.yaml).

Its own module, below `serve_app.config`, because the tier table is checked
against it too (serve_app/settings/tiers.py).
"""

from __future__ import annotations

from pydantic import Field

from serve_app.settings.base import StrictModel


class GenerationLimits(StrictModel):
    """Bounds on every generation field; requests outside them get a 400."""

    min_side: int = Field(64, ge=32, description="Smallest height or width, pixels.")
    max_side: int = Field(1280, ge=32, description="Largest height or width, pixels.")
    side_multiple: int = Field(
        32, description="Height and width must be multiples of this (VAE 16x times DiT patch 2)."
    )
    max_pixels: int = Field(1280 * 720, description="Largest height x width.")
    min_frames: int = Field(5, ge=1, description="Fewest frames.")
    max_frames: int = Field(121, ge=1, description="Most frames.")
    frames_modulus: int = Field(4, description="Frames must be k * frames_modulus + 1 (VAE temporal factor).")
    min_steps: int = Field(1, ge=1, description="Fewest denoising steps.")
    max_steps: int = Field(100, ge=1, description="Most denoising steps.")
    min_guidance: float = Field(0.0, ge=0, description="Lowest guidance scale (<= 1 turns guidance off).")
    max_guidance: float = Field(20.0, description="Highest guidance scale.")
    min_fps: int = Field(1, ge=1, description="Lowest frames per second of the mp4.")
    max_fps: int = Field(60, ge=1, description="Highest frames per second of the mp4.")
    max_prompt_chars: int = Field(
        2000, ge=1, description="Longest prompt or negative prompt, characters, as sent and after Unicode NFKC."
    )
    max_seed: int = Field(2**32 - 1, description="Largest seed.")
