"""On a Hopper GPU: FP8 self-attention (cuDNN's FP8 SDPA) is the arithmetic it claims, and
the fast path stays close to the exact one (5B architecture, random weights, bf16).

1. The kernel against `reference_fp8_sdpa` (the same quantized inputs, fp32 scores): only
   where P is rounded differs (per key tile vs per row), so they agree closely.
2. The project's loop, compiled as a replica runs it, with fast knob fp8_attention
   against the exact path: same weights, seed and embeddings, 832x480x81 (8,190 tokens,
   over speed.fp8_attention_min_tokens), 4 steps. The control is another seed: the
   measure must tell FP8 rounding from a different video.
"""

from __future__ import annotations

import math

import pytest

from tests.helpers.tensors import relative_error

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _cos(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


@pytest.fixture(scope="module")
def supported():
    from serve_app.pipeline.fp8_attention import fp8_attention_supported

    ok, why = fp8_attention_supported()
    if not ok:
        pytest.skip(why)


def test_cudnn_fp8_sdpa_is_the_reference_arithmetic(supported):
    from serve_app.pipeline.fp8_attention import fp8_sdpa, quantize_e4m3, reference_fp8_sdpa, register_cudnn_op

    register_cudnn_op()
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 1500, 24, 128, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    (q8, dq), (k8, dk), (v8, dv) = quantize_e4m3(q), quantize_e4m3(k), quantize_e4m3(v)
    scale = 1 / math.sqrt(128)
    kernel = torch.ops.wan_serve.cudnn_fp8_sdpa(q8, k8, v8, dq, dk, dv, 1 / dv, scale).float() * dv.flatten()
    reference = reference_fp8_sdpa(q8, k8, v8, dq, dk, dv, 1 / dv, scale).float() * dv.flatten()
    exact = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    ).transpose(1, 2)
    measured = {
        "kernel vs reference cos": _cos(kernel, reference),
        "kernel vs exact cos": _cos(fp8_sdpa(q, k, v), exact),
    }
    print(measured)  # H100, cuDNN 9.19: 0.9994 and 0.9982 (bench/results/attention-*.json)
    assert measured["kernel vs reference cos"] > 0.998
    assert measured["kernel vs exact cos"] > 0.995


def test_the_fast_loop_stays_close_to_the_exact_one(supported, tmp_path_factory):
    from serve_app.config import load_model_profile
    from serve_app.deadline import Deadline, StepGuard
    from serve_app.params import GenerationParams
    from serve_app.pipeline.batching import denoise_optimized
    from serve_app.pipeline.denoiser_runtime import DenoiserRuntime
    from serve_app.pipeline.loading import load_pipeline
    from serve_app.pipeline.optimize import uncompile_blocks
    from serve_app.pipeline.stages import PromptEmbeddings
    from serve_app.settings.speed import EXACT, FastKnobs, SpeedOptions

    profile = load_model_profile("wan2.2-ti2v-5b-random")
    pipe = load_pipeline(profile, tmp_path_factory.mktemp("data"), "denoiser")
    gen = torch.Generator().manual_seed(0)
    pe, npe = (torch.randn(1, profile.max_sequence_length, 4096, generator=gen).to(torch.bfloat16) for _ in range(2))
    emb = PromptEmbeddings(pe, npe)
    params = GenerationParams(
        prompt="p",
        negative_prompt="",
        width=832,
        height=480,
        num_frames=81,
        num_inference_steps=4,
        guidance_scale=5.0,
        fps=24,
        seed=42,
        preset="test",
    )
    speed = SpeedOptions(compile="default", compile_dynamic=True, cfg_batch=True, fp8_attention=True)
    runtime = DenoiserRuntime(pipe, speed)

    def run(p, knobs):
        return denoise_optimized(runtime, p, emb, StepGuard(Deadline.after(600), p.num_inference_steps), knobs=knobs)

    try:
        exact = run(params, EXACT)
        fast = run(params, FastKnobs(fp8_attention=True))
        other_seed = run(params.model_copy(update={"seed": 43}), EXACT)
    finally:
        for module in runtime.variants.values():
            uncompile_blocks(module)
    measured = {
        "fast vs exact": relative_error(fast, exact),
        "control (other seed)": relative_error(other_seed, exact),
        "fast vs exact cos": _cos(fast, exact),
    }
    print("final latents:", {k: round(v, 5) for k, v in measured.items()})
    assert not torch.equal(fast, exact)  # the FP8 variant really ran
    assert measured["control (other seed)"] > 0.5
    assert measured["fast vs exact"] < 0.05 and measured["fast vs exact cos"] > 0.999
