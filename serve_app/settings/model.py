"""Model profiles (configs/models/*.yaml): how a replica gets its `WanPipeline`, and its loader.

A profile names the model clients ask for, where the weights come from, the
dtypes and attention backend, and its `speed:` block (serve_app/settings/speed.py).
The tiny model's widths are here too, because they are part of the profile.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from serve_app.paths import MODEL_PROFILE_DIR, resolve
from serve_app.settings.base import StrictModel
from serve_app.settings.speed import SpeedOptions

DType = Literal["bfloat16", "float16", "float32"]

# Our names for attention backends -> diffusers' `AttentionBackendName` values.
# Hub-downloaded kernels are left out on purpose: serving hosts do not fetch code.
ATTENTION_BACKENDS: dict[str, str] = {
    "sdpa": "native",
    "sdpa-flash": "_native_flash",
    "sdpa-cudnn": "_native_cudnn",
    "sdpa-efficient": "_native_efficient",
    "xformers": "xformers",
    "flash": "flash",
    "flash3": "_flash_3",
    "sage": "sage",
}


class TinyModelSpec(StrictModel):
    """Widths of the locally built tiny model (the 5B's shapes, tiny widths)."""

    seed: int = Field(0, description="Seed for the random weights; same seed, same model.")
    text_dim: int = Field(32, ge=8, description="UMT5 d_model of the tiny text encoder.")
    text_layers: int = Field(2, ge=1, description="UMT5 layers of the tiny text encoder.")
    heads: int = Field(2, ge=1, description="DiT attention heads.")
    head_dim: int = Field(12, ge=4, description="DiT attention head width (must be divisible by 6 for 3-D RoPE).")
    layers: int = Field(2, ge=1, description="DiT blocks.")
    ffn_dim: int = Field(32, ge=4, description="DiT feed-forward width.")
    vae_base_dim: int = Field(12, ge=4, description="VAE encoder base width.")
    vae_decoder_base_dim: int = Field(16, ge=4, description="VAE decoder base width.")

    @field_validator("head_dim")
    @classmethod
    def _rope_divisible(cls, v: int) -> int:
        if v % 6:
            raise ValueError(f"head_dim={v} must be divisible by 6 (Wan's RoPE splits it over t, h, w)")
        return v


class ModelProfile(StrictModel):
    """One way of getting a `WanPipeline` (see configs/models/*.yaml)."""

    name: str = Field(description="Profile name, e.g. 'tiny'.")
    model_id: str = Field(description="The id clients send as `model` and see in answers.")
    source: Literal["tiny", "pretrained", "random"] = Field(
        description="'tiny': built locally and saved/loaded with save_pretrained/from_pretrained; "
        "'pretrained': diffusers weights from `path`; 'random': the 5B architecture with random weights."
    )
    path: str | None = Field(
        None,
        description="For 'pretrained': a local directory or hub id of Wan-AI/Wan2.2-TI2V-5B-Diffusers.",
    )
    revision: str = Field("main", description="Weights revision; part of the model's identity.")
    dtype: DType = Field("bfloat16", description="Dtype of the DiT and text encoder.")
    vae_dtype: DType = Field("float32", description="Dtype of the VAE decoder.")
    attention_backend: str = Field(
        "sdpa", description=f"Attention backend of the DiT, one of {sorted(ATTENTION_BACKENDS)}."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' takes CUDA when a GPU is visible to the replica, else the CPU."
    )
    max_sequence_length: int = Field(512, ge=16, le=512, description="Text tokens fed to the DiT.")
    flow_shift: float = Field(5.0, gt=0, description="UniPC flow shift (Wan2.2-TI2V-5B uses 5.0).")
    local_files_only: bool = Field(
        True, description="Never reach a hub at load time; a missing model is a clear error instead."
    )
    tiny: TinyModelSpec = Field(default_factory=TinyModelSpec, description="Widths for source 'tiny'.")
    speed: SpeedOptions = Field(
        default_factory=SpeedOptions,
        description="How replicas run the DiT and VAE fast: regional compile, "
        "warmed shape buckets, CUDA graphs, decode mode, FP8 copy, cross-request batching, and the fast-tier "
        "knobs (serve_app/pipeline/optimize.py).",
    )
    prior_step_s_per_ktoken: float = Field(
        0.035,
        gt=0,
        description="Estimate before any job is measured: seconds per denoising step per 1,000 "
        "latent tokens per guidance pass (H100-class for the 5B).",
    )
    prior_decode_s_per_mpixel: float = Field(
        0.1,
        gt=0,
        description="Estimate before any job is measured: seconds of VAE decode + mp4 encode per "
        "million output pixels (frames x height x width).",
    )

    @field_validator("attention_backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if v not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend={v!r} is not one of {sorted(ATTENTION_BACKENDS)}")
        return v

    @model_validator(mode="after")
    def _pretrained_needs_path(self) -> ModelProfile:
        if self.source == "pretrained" and not self.path:
            raise ValueError(f"profile {self.name!r}: source 'pretrained' needs `path` (local dir or hub id)")
        return self

    @property
    def identity(self) -> str:
        """Model id and revision: what distinguishes the pixels two profiles make."""
        return f"{self.model_id}@{self.revision}"


def load_model_profile(name_or_path: str, overrides: dict[str, Any] | None = None) -> ModelProfile:
    """A profile by name (configs/models/NAME.yaml) or by path to a YAML file."""
    candidate = MODEL_PROFILE_DIR / f"{name_or_path}.yaml"
    path = candidate if candidate.is_file() else resolve(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in MODEL_PROFILE_DIR.glob("*.yaml"))
        raise ValueError(f"model profile {name_or_path!r} not found; known profiles: {known}")
    data = yaml.safe_load(path.read_text()) or {}
    data.update(overrides or {})
    return ModelProfile(**data)
