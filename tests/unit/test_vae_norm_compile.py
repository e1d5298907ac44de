"""The VAE's fused norms compile a bounded set of graphs, whatever size a request decodes.

A GPU replica's warm-up decode once died with dynamo's "recompile limit
exceeded": with duck shaping, a square warm-up frame compiled graphs that
guard height == width, and every other aspect ratio, frame count or chunk
compiled again. These tests decode with the shipped VAE settings (fused norms,
channels-last weights) on the tiny model's VAE, which has the 5B VAE's
structure (norms of several channel counts, a time axis of 1 and more).
"""

from __future__ import annotations

import pytest

from serve_app.pipeline import stages
from serve_app.pipeline.loading import load_pipeline
from serve_app.pipeline.optimize import VAE_NORM_RECOMPILE_LIMIT, prepare_vae
from serve_app.settings.speed import SpeedOptions


@pytest.fixture
def fused_vae(tiny_profile, data_dir):
    import torch

    torch._dynamo.reset()
    pipe = load_pipeline(tiny_profile, data_dir, "video_encoder")
    prepare_vae(pipe.vae, SpeedOptions(vae_fused_norms=True, vae_channels_last=True))
    yield pipe
    torch._dynamo.reset()


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _decode(pipe, frames: int, height: int, width: int) -> None:
    import torch

    z = pipe.vae.config.z_dim
    latents = torch.randn(1, z, frames, height, width, generator=torch.Generator().manual_seed(0))
    for _ in stages.iter_decoded_frames(pipe, latents):
        pass


def test_new_sizes_after_warm_up_compile_nothing(fused_vae):
    import torch
    from torch._dynamo.utils import counters

    counters.clear()
    # The replica's first warm-up decode: a small square frame.
    _decode(fused_vae, 2, 4, 4)
    warmed = _graphs()
    assert 0 < warmed <= VAE_NORM_RECOMPILE_LIMIT <= torch._dynamo.config.recompile_limit
    # Sizes no warm-up saw: portrait, odd sides, another frame count, 1 latent frame.
    for frames, height, width in [(4, 6, 3), (2, 5, 7), (1, 3, 5), (5, 2, 2)]:
        _decode(fused_vae, frames, height, width)
    assert _graphs() == warmed
