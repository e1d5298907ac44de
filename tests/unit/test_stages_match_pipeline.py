"""The staged graph is the same computation as `WanPipeline.__call__`.

Tiny model, CPU, float32: the three stages called in turn must give the
frames plain diffusers gives for the same seed and settings. Tolerance:
atol 1e-6 on frames in [0, 1] (in practice they are bit-identical; the margin
only absorbs BLAS scheduling differences between runs).
"""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.deadline import Deadline, StepGuard
from serve_app.params import GenerationParams
from serve_app.pipeline import stages
from serve_app.pipeline.loading import load_pipeline
from tests.helpers.params import tiny_job

FRAME_ATOL = 1e-6


@pytest.fixture(scope="module")
def pipes(tiny_profile, data_dir):
    return {
        stage: load_pipeline(tiny_profile, data_dir, stage)
        for stage in ("all", "prompt_encoder", "denoiser", "video_encoder")
    }


def _params(**overrides) -> GenerationParams:
    return tiny_job(**{"prompt": "a red fox running through snow, cinematic", **overrides})


def _staged_frames(pipes, params, profile):
    embeddings = stages.encode_prompts(
        pipes["prompt_encoder"],
        params.prompt,
        params.negative_prompt,
        params.guidance_scale,
        profile.max_sequence_length,
    )
    guard = StepGuard(Deadline.after(600), params.num_inference_steps)
    latents = stages.denoise(
        pipes["denoiser"], params, embeddings, guard, max_sequence_length=profile.max_sequence_length
    )
    assert guard.steps_done == params.num_inference_steps
    return stages.decode_latents(pipes["video_encoder"], latents)


def _plain_diffusers_frames(pipe, params):
    import torch

    out = pipe(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        height=params.height,
        width=params.width,
        num_frames=params.num_frames,
        num_inference_steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        generator=torch.Generator().manual_seed(params.seed),
        output_type="np",
    )
    return out.frames[0]


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # guidance on: two passes per step, negative prompt used
        {"guidance_scale": 1.0, "negative_prompt": ""},  # guidance off: no negative embeddings at all
        {"num_frames": 13, "width": 64, "height": 128, "seed": 7},
    ],
    ids=["guidance", "no-guidance", "portrait-13-frames"],
)
def test_staged_graph_equals_plain_wan_pipeline(pipes, tiny_profile, overrides):
    params = _params(**overrides)
    staged = _staged_frames(pipes, params, tiny_profile)
    plain = _plain_diffusers_frames(pipes["all"], params)
    assert staged.shape == (params.num_frames, params.height, params.width, 3)
    assert staged.shape == plain.shape
    np.testing.assert_allclose(staged, plain, rtol=0, atol=FRAME_ATOL)


def test_different_seeds_give_different_frames(pipes, tiny_profile):
    # Guards the equality test above against comparing two constant outputs.
    a = _staged_frames(pipes, _params(seed=1), tiny_profile)
    b = _staged_frames(pipes, _params(seed=2), tiny_profile)
    assert np.abs(a - b).max() > 1e-3


def test_stage_pipelines_hold_only_their_components(pipes):
    assert pipes["prompt_encoder"].transformer is None and pipes["prompt_encoder"].vae is None
    assert pipes["denoiser"].text_encoder is None and pipes["denoiser"].vae is None
    assert pipes["video_encoder"].text_encoder is None and pipes["video_encoder"].transformer is None
    # Without a VAE the pipeline would assume Wan2.1's 8x; the 5B layout is 16x.
    assert pipes["denoiser"].vae_scale_factor_spatial == 16
