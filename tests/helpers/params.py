"""The small job the tiny-model tests run: 96x64, 9 frames, guided, a fixed seed."""

from __future__ import annotations

from typing import Any

from serve_app.params import GenerationParams


def tiny_job(**overrides: Any) -> GenerationParams:
    """Four guided steps of a 96x64x9 video; `overrides` replace any field."""
    base: dict[str, Any] = dict(
        prompt="a red fox running through snow",
        negative_prompt="blurry",
        width=96,
        height=64,
        num_frames=9,
        num_inference_steps=4,
        guidance_scale=5.0,
        fps=8,
        seed=1234,
        preset="test",
    )
    base.update(overrides)
    return GenerationParams(**base)
