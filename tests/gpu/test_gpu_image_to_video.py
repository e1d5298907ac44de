"""On a GPU: image to video through the project's loop gives plain diffusers' answer (5B architecture,
random weights, bf16), as tests/gpu/test_gpu_exact_path.py checks for text to video.

Plain `WanImageToVideoPipeline.__call__` (the plain path, `stages.denoise` with
an image latent: eager, two guidance passes) against the project's loop
(regional compile with symbolic shapes, guidance as one batch-2 forward, per-token
timesteps through the compiled blocks), and the same with batching two image jobs
into one forward. Same weights, seed, embeddings and image latent; 640x480x9, 6
steps. Tolerance: BF16_REL_TOL on the relative L2 error of the final latents.
The control is the same request without its image: the measure must tell it apart.
Latent frame 0 must equal the image latent exactly on every path. Measured on an
H100 (torch 2.11, diffusers 0.42.1): optimised 0.0253, batched 0.0253, control 0.80.
"""

from __future__ import annotations

import pytest

from tests.helpers.tensors import BF16_REL_TOL, relative_error

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from serve_app.config import load_model_profile
    from serve_app.pipeline.loading import load_pipeline

    profile = load_model_profile("wan2.2-ti2v-5b-random")
    pipe = load_pipeline(profile, tmp_path_factory.mktemp("data"), "denoiser")
    gen = torch.Generator().manual_seed(0)
    # Unit-variance stand-ins for UMT5 output and for a normalised VAE latent of the image.
    pe = torch.randn(1, profile.max_sequence_length, 4096, generator=gen).to(torch.bfloat16)
    npe = torch.randn(1, profile.max_sequence_length, 4096, generator=gen).to(torch.bfloat16)
    image = torch.randn(1, 48, 1, 480 // 16, 640 // 16, generator=gen)
    return profile, pipe, pe, npe, image


def _params(**kw):
    from serve_app.params import GenerationParams

    base = dict(
        prompt="p",
        negative_prompt="",
        width=640,
        height=480,
        num_frames=9,
        num_inference_steps=6,
        guidance_scale=5.0,
        fps=24,
        seed=42,
        preset="test",
        input_reference_sha256="0" * 64,
    )
    base.update(kw)
    return GenerationParams(**base)


def _guard(params):
    from serve_app.deadline import Deadline, StepGuard

    return StepGuard(Deadline.after(600), params.num_inference_steps)


def test_the_projects_loop_with_an_image_matches_plain_wan_image_to_video(setup):
    from serve_app.pipeline.batching import denoise_optimized
    from serve_app.pipeline.denoiser_runtime import DenoiserRuntime
    from serve_app.pipeline.loading import set_attention_backend
    from serve_app.pipeline.optimize import uncompile_blocks
    from serve_app.pipeline.stages import PromptEmbeddings, denoise
    from serve_app.pipeline.step_batcher import StepBatcher
    from serve_app.settings.speed import EXACT, SpeedOptions

    profile, pipe, pe, npe, image = setup
    emb = PromptEmbeddings(pe, npe)
    params = _params()

    def plain(p, image_latents):
        return denoise(
            pipe, p, emb, _guard(p), max_sequence_length=profile.max_sequence_length, image_latents=image_latents
        )

    reference = plain(params, image)
    without_image = plain(params.model_copy(update={"input_reference_sha256": None}), None)
    assert torch.equal(reference[:, :, :1], image)

    try:
        set_attention_backend(pipe.transformer, "sdpa-cudnn")
    except Exception:  # noqa: BLE001 - no cuDNN attention here: the default kernel is still the optimised path's
        set_attention_backend(pipe.transformer, "sdpa")
    runtime = DenoiserRuntime(pipe, SpeedOptions(compile="default", compile_dynamic=True, cfg_batch=True))
    try:
        ours = denoise_optimized(runtime, params, emb, _guard(params), image_latents=image)
        # Two image jobs in one forward (batch 4 with guidance), the second another seed.
        batcher = StepBatcher(runtime, max_requests=4, max_tokens=10**6)
        loops: list = []
        futures = [
            batcher.submit(p, emb, _guard(p), None, EXACT, loops.append, image_latents=image)
            for p in (params, _params(seed=43))
        ]
        loops[0]()
        batched = futures[0].result(timeout=0)
    finally:
        uncompile_blocks(pipe.transformer)
    assert batcher.max_batch_seen == 2
    errors = {
        "optimised": relative_error(ours, reference),
        "batched": relative_error(batched, reference),
        "control (no image)": relative_error(without_image, reference),
    }
    print("relative L2 error vs plain WanImageToVideoPipeline:", {k: round(v, 4) for k, v in errors.items()})
    assert errors["control (no image)"] > 0.1  # the measure can tell the image's effect apart
    assert errors["optimised"] < BF16_REL_TOL and errors["batched"] < BF16_REL_TOL
    for latents in (ours, batched):
        assert torch.equal(latents[:, :, :1], image)
