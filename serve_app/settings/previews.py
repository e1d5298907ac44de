"""`args.previews`: the low-resolution frames sent in progress events while a video denoises."""

from __future__ import annotations

from pydantic import Field

from serve_app.settings.base import StrictModel


class PreviewOptions(StrictModel):
    """Low-resolution previews in progress events while a video denoises (serve_app/preview.py)."""

    enabled: bool = Field(
        True, description="Send previews (a cheap latent-to-RGB projection, no VAE decode) in progress events."
    )
    every_n_steps: int = Field(1, ge=1, description="A preview at most every this many denoising steps.")
    min_interval_s: float = Field(
        0.5, ge=0, description="Least seconds between two previews of one job (the last step's always goes)."
    )
    max_per_job: int = Field(
        20,
        ge=2,
        description="Most previews per job: the step stride grows to keep under it. Bounds what "
        "previews add to a job's event log (each is at most ~8 kB).",
    )
    frames: int = Field(4, ge=1, le=8, description="Latent frames shown side by side (first to last, evenly spaced).")
