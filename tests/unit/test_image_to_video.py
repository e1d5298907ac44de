"""Image to video through the stages is `WanImageToVideoPipeline.__call__` (Wan2.2 5B configuration).

Tiny model, CPU, float32. The staged path: the video encoder fits and
VAE-encodes the first frame (`encode_image`), the denoiser holds latent frame 0
to it with per-token timesteps, the video encoder decodes. diffusers' pipeline
gets the same fitted picture, seed and settings with `expand_timesteps=True`
and no image encoder. Tolerances as in test_stages_match_pipeline.py
(frames, atol 1e-6) and test_optimized_path.py (the project's loop, latents,
atol 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.deadline import Deadline, StepGuard
from serve_app.images import fitted_image
from serve_app.params import GenerationParams
from serve_app.pipeline import stages
from serve_app.pipeline.batching import denoise_optimized, start_job, step_jobs
from serve_app.pipeline.checkpoint import LoopCheckpoints
from serve_app.pipeline.denoiser_runtime import DenoiserRuntime
from serve_app.pipeline.image_condition import encode_image, token_timesteps
from serve_app.pipeline.loading import load_pipeline
from serve_app.pipeline.step_batcher import StepBatcher
from serve_app.settings.speed import EXACT, SpeedOptions
from tests.helpers.images import png
from tests.helpers.params import tiny_job

FRAME_ATOL = 1e-6
EXACT_ATOL = 1e-4
BATCH_ATOL = 1e-4
MAX_PIXELS = 10**7


@pytest.fixture(scope="module")
def pipes(tiny_profile, data_dir):
    return {
        stage: load_pipeline(tiny_profile, data_dir, stage)
        for stage in ("all", "prompt_encoder", "denoiser", "video_encoder")
    }


@pytest.fixture(scope="module")
def image_pipeline(pipes):
    """Plain diffusers' image-to-video pipeline over the same components, in the 5B configuration."""
    from diffusers import WanImageToVideoPipeline

    everything = pipes["all"]
    return WanImageToVideoPipeline(
        tokenizer=everything.tokenizer,
        text_encoder=everything.text_encoder,
        vae=everything.vae,
        scheduler=everything.scheduler,
        transformer=everything.transformer,
        expand_timesteps=True,
    )


def _params(**overrides) -> GenerationParams:
    return tiny_job(
        **{"prompt": "a red fox running through snow, cinematic", "input_reference_sha256": "0" * 64, **overrides}
    )


def _upload(seed: int = 5) -> bytes:
    # Not the requested size nor its aspect: the fit (scale to cover, centre crop) runs too.
    return png(120, 90, seed)


def _embeddings(pipes, params, profile):
    return stages.encode_prompts(
        pipes["prompt_encoder"],
        params.prompt,
        params.negative_prompt,
        params.guidance_scale,
        profile.max_sequence_length,
    )


def _guard(params):
    return StepGuard(Deadline.after(600), params.num_inference_steps)


def _image_latents(pipes, params, upload):
    picture = fitted_image(upload, params.width, params.height, MAX_PIXELS)
    return encode_image(pipes["video_encoder"], picture, params.height, params.width)


def _staged_latents(pipes, params, profile, upload):
    condition = _image_latents(pipes, params, upload)
    embeddings = _embeddings(pipes, params, profile)
    guard = _guard(params)
    latents = stages.denoise(
        pipes["denoiser"],
        params,
        embeddings,
        guard,
        max_sequence_length=profile.max_sequence_length,
        image_latents=condition.numpy(),  # as it crosses from the video encoder
    )
    assert guard.steps_done == params.num_inference_steps
    return latents, condition


def _plain_diffusers_frames(image_pipeline, params, profile, upload):
    import torch

    out = image_pipeline(
        image=fitted_image(upload, params.width, params.height, MAX_PIXELS),
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        height=params.height,
        width=params.width,
        num_frames=params.num_frames,
        num_inference_steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        generator=torch.Generator().manual_seed(params.seed),
        output_type="np",
        max_sequence_length=profile.max_sequence_length,
    )
    return out.frames[0]


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # guidance on: two passes per step
        {"guidance_scale": 1.0, "negative_prompt": ""},  # guidance off
        {"num_frames": 13, "width": 64, "height": 128, "seed": 7},  # portrait: the fit crops the sides
    ],
    ids=["guidance", "no-guidance", "portrait-13-frames"],
)
def test_staged_image_to_video_equals_plain_wan_image_to_video_pipeline(pipes, image_pipeline, tiny_profile, overrides):
    params = _params(**overrides)
    upload = _upload()
    latents, condition = _staged_latents(pipes, params, tiny_profile, upload)
    staged = stages.decode_latents(pipes["video_encoder"], latents)
    plain = _plain_diffusers_frames(image_pipeline, params, tiny_profile, upload)
    assert staged.shape == plain.shape == (params.num_frames, params.height, params.width, 3)
    np.testing.assert_allclose(staged, plain, rtol=0, atol=FRAME_ATOL)
    # Latent frame 0 is the encoded image, exactly: the loop never denoises it.
    assert np.array_equal(latents[:, :, :1].numpy(), condition.numpy())


def test_the_image_changes_the_video(pipes, tiny_profile):
    # Guards the equality above against an image that is ignored on both sides.
    params = _params()
    a, _ = _staged_latents(pipes, params, tiny_profile, _upload(seed=1))
    b, _ = _staged_latents(pipes, params, tiny_profile, _upload(seed=2))
    assert float((a[:, :, 1:] - b[:, :, 1:]).abs().max()) > 1e-3  # later frames follow the first


def test_per_token_timesteps_are_zero_on_the_first_latent_frame_only(pipes):
    import torch

    params = _params(num_frames=9)
    job = start_job(
        pipes["denoiser"], params, _embeddings_zero(pipes, params), _guard(params), image_latents=_zeros(params)
    )
    t = job.timesteps[0]
    patch = pipes["denoiser"].transformer.config.patch_size
    per_token = token_timesteps(job.mask, t, patch)
    frames, h, w = job.latents.shape[2], job.latents.shape[3] // patch[1], job.latents.shape[4] // patch[2]
    assert per_token.shape == (frames * h * w,)
    assert torch.all(per_token[: h * w] == 0) and torch.all(per_token[h * w :] == t)


@pytest.mark.parametrize("cfg_batch", [True, False], ids=["cfg-batch", "two-passes"])
def test_the_projects_loop_equals_the_plain_pipeline_with_an_image(pipes, tiny_profile, cfg_batch):
    params = _params()
    upload = _upload()
    plain, condition = _staged_latents(pipes, params, tiny_profile, upload)
    runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions(cfg_batch=cfg_batch))
    ours = denoise_optimized(
        runtime, params, _embeddings(pipes, params, tiny_profile), _guard(params), image_latents=condition.numpy()
    )
    np.testing.assert_allclose(ours.numpy(), plain.numpy(), rtol=0, atol=EXACT_ATOL)
    assert np.array_equal(ours[:, :, :1].numpy(), condition.numpy())
    assert float(plain.abs().max()) > 0.1  # a real signal


def test_batched_image_jobs_equal_each_alone_and_never_share_a_forward_with_text_jobs(pipes, tiny_profile):
    runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions())
    batcher = StepBatcher(runtime, max_requests=4, max_tokens=10**6)
    image_a, image_b = _params(seed=1), _params(seed=2, guidance_scale=3.0)
    text = _params(seed=3, input_reference_sha256=None)
    conditions = {id(p): _image_latents(pipes, p, _upload(seed)) for p, seed in ((image_a, 1), (image_b, 2))}
    loops = []
    futures = [
        batcher.submit(
            p,
            _embeddings(pipes, p, tiny_profile),
            _guard(p),
            None,
            EXACT,
            loops.append,
            image_latents=None if p is text else conditions[id(p)].numpy(),
        )
        for p in (image_a, image_b, text)
    ]
    loops[0]()  # the model thread's loop, run here
    results = [f.result(timeout=0) for f in futures]
    # Two image jobs stepped together, the text job in its own group: 2 forwards per step.
    assert batcher.max_batch_seen == 2
    assert batcher.forwards == 2 * image_a.num_inference_steps
    for p, batched in zip((image_a, image_b), results):
        alone = denoise_optimized(
            runtime,
            p,
            _embeddings(pipes, p, tiny_profile),
            _guard(p),
            image_latents=conditions[id(p)].numpy(),
        )
        np.testing.assert_allclose(batched.numpy(), alone.numpy(), rtol=0, atol=BATCH_ATOL)
        assert np.array_equal(batched[:, :, :1].numpy(), conditions[id(p)].numpy())


def test_an_image_job_resumed_from_a_checkpoint_equals_one_never_stopped(pipes, tiny_profile, tmp_path):
    params = _params(num_inference_steps=5)
    condition = _image_latents(pipes, params, _upload()).numpy()
    embeddings = _embeddings(pipes, params, tiny_profile)
    runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions())
    whole = denoise_optimized(runtime, params, embeddings, _guard(params), image_latents=condition)

    # A first run saves at step 2 and "dies" (the file stays); the rerun resumes there.
    checkpoints = LoopCheckpoints(tmp_path, "job", "request", every_s=3600)
    job = start_job(pipes["denoiser"], params, embeddings, _guard(params), image_latents=condition)
    for _ in range(2):
        step_jobs(runtime.transformer, [job], runtime=runtime)
    checkpoints.save(job)
    resumed_checkpoints = LoopCheckpoints(tmp_path, "job", "request", every_s=3600)
    resumed = denoise_optimized(
        runtime, params, embeddings, _guard(params), image_latents=condition, checkpoints=resumed_checkpoints
    )
    assert resumed_checkpoints.resumed_from == 2
    np.testing.assert_allclose(resumed.numpy(), whole.numpy(), rtol=0, atol=EXACT_ATOL)


def test_previews_of_an_image_job_show_the_image_as_frame_zero(pipes, tiny_profile):
    params = _params()
    condition = _image_latents(pipes, params, _upload())
    estimates = []
    runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions())
    denoise_optimized(
        runtime,
        params,
        _embeddings(pipes, params, tiny_profile),
        _guard(params),
        on_latents=lambda step, total, estimate: estimates.append(estimate()),
        image_latents=condition.numpy(),
    )
    assert len(estimates) == params.num_inference_steps
    for estimate in estimates:
        assert np.array_equal(estimate[:, :, :1].numpy(), condition.numpy())
    # ... and so does the plain path's.
    plain_estimates = []
    stages.denoise(
        pipes["denoiser"],
        params,
        _embeddings(pipes, params, tiny_profile),
        _guard(params),
        max_sequence_length=tiny_profile.max_sequence_length,
        on_latents=lambda step, total, estimate: plain_estimates.append(estimate()),
        image_latents=condition.numpy(),
    )
    assert len(plain_estimates) == params.num_inference_steps
    assert all(np.array_equal(e[:, :, :1].numpy(), condition.numpy()) for e in plain_estimates)


def test_an_image_latent_of_another_size_is_refused(pipes):
    params = _params(width=96, height=64)
    wrong = np.zeros((1, 48, 1, 8, 8), dtype=np.float32)  # 128x128's, not 96x64's
    with pytest.raises(ValueError, match=r"image latent has shape \(1, 48, 1, 8, 8\)"):
        start_job(pipes["denoiser"], params, _embeddings_zero(pipes, params), _guard(params), image_latents=wrong)


def _zeros(params):
    return np.zeros((1, 48, 1, params.height // 16, params.width // 16), dtype=np.float32)


def _embeddings_zero(pipes, params):
    import torch

    dim = pipes["denoiser"].transformer.config.text_dim
    zeros = torch.zeros(1, 8, dim)
    return stages.PromptEmbeddings(zeros, zeros)


@pytest.mark.parametrize("optimized", [True, False], ids=["projects-loop", "plain-pipeline"])
def test_an_image_job_stops_at_its_guard(pipes, tiny_profile, optimized):
    from serve_app.errors import RequestCancelled

    params = _params()
    guard = _guard(params)

    def cancel_after_two(step, total):
        if step == 2:
            guard.cancel()

    condition = _zeros(params)
    embeddings = _embeddings(pipes, params, tiny_profile)
    with pytest.raises(RequestCancelled):
        if optimized:
            runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions())
            denoise_optimized(runtime, params, embeddings, guard, on_step=cancel_after_two, image_latents=condition)
        else:
            stages.denoise(
                pipes["denoiser"],
                params,
                embeddings,
                guard,
                on_step=cancel_after_two,
                max_sequence_length=tiny_profile.max_sequence_length,
                image_latents=condition,
            )
    assert guard.steps_done == 2


def test_runtime_warm_up_can_warm_the_image_graph(pipes):
    runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions())
    runtime.warm_up([(64, 96, 9)], text_len=512, steps=1, guidance=(5.0,), image=True)
    assert sorted(runtime.warmup_s) == ["96x64x9 image"]
