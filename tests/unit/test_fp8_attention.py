"""FP8 self-attention (serve_app/pipeline/fp8_attention.py), on CPU.

The cuDNN kernel needs a Hopper card (tests/gpu/test_gpu_fp8_attention.py checks
it against `reference_fp8_sdpa`). Here: the processor is WanAttnProcessor's
arithmetic with only the attention call swapped, the FP8 arithmetic stays close
to exact attention, and the weight-sharing copy shares weights but not processors.
"""

from __future__ import annotations

import pytest
import torch

from serve_app.pipeline.fp8_attention import (
    E4M3_MAX,
    Fp8SelfAttnProcessor,
    bf16_sdpa,
    fp8_sdpa,
    quantize_e4m3,
    reference_fp8_sdpa,
    register_cudnn_op,
    sharing_weights,
    use_fp8_self_attention,
)
from serve_app.pipeline.loading import load_pipeline


@pytest.fixture(scope="module")
def transformer(tiny_profile, data_dir):
    return load_pipeline(tiny_profile, data_dir, "denoiser").transformer.float()


def dit_inputs(transformer, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(2, transformer.config.in_channels, 3, 8, 8, generator=generator),
        "timestep": torch.tensor([500, 500]),
        "encoder_hidden_states": torch.randn(2, 16, transformer.config.text_dim, generator=generator),
        "return_dict": False,
    }


def test_processor_with_exact_attention_is_the_diffusers_forward(transformer):
    """Swap only the attention call back to exact SDPA: the DiT's output is diffusers' own."""
    copy = sharing_weights(transformer)
    assert use_fp8_self_attention(copy, attention=bf16_sdpa) == len(transformer.blocks)
    with torch.no_grad():
        expected = transformer(**dit_inputs(transformer))[0]
        got = copy(**dit_inputs(transformer))[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_fp8_processor_is_close_to_exact_but_not_equal(transformer):
    copy = sharing_weights(transformer)
    use_fp8_self_attention(copy, attention=lambda q, k, v: fp8_sdpa(q, k, v, kernel=reference_fp8_sdpa))
    with torch.no_grad():
        expected = transformer(**dit_inputs(transformer))[0]
        got = copy(**dit_inputs(transformer))[0]
    cos = torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0)
    assert not torch.equal(got, expected)  # FP8 really ran
    assert cos > 0.99


def test_short_sequences_attend_exactly(transformer):
    """Under min_tokens (speed.fp8_attention_min_tokens) the FP8 variant is the exact DiT."""
    copy = sharing_weights(transformer)
    tokens = 3 * 4 * 4  # dit_inputs: 3 latent frames of 8x8, patches of 2x2
    use_fp8_self_attention(copy, lambda q, k, v: fp8_sdpa(q, k, v, kernel=reference_fp8_sdpa), tokens + 1)
    with torch.no_grad():
        expected = transformer(**dit_inputs(transformer))[0]
        got = copy(**dit_inputs(transformer))[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_sharing_weights_shares_tensors_not_processors(transformer):
    copy = sharing_weights(transformer)
    use_fp8_self_attention(copy, attention=bf16_sdpa)
    assert copy.blocks[0].attn1.to_q.weight is transformer.blocks[0].attn1.to_q.weight
    assert isinstance(copy.blocks[0].attn1.processor, Fp8SelfAttnProcessor)
    assert not isinstance(transformer.blocks[0].attn1.processor, Fp8SelfAttnProcessor)
    # Cross-attention keeps diffusers' processor in the copy too.
    assert not isinstance(copy.blocks[0].attn2.processor, Fp8SelfAttnProcessor)


def test_processor_refuses_cross_attention(transformer):
    block = transformer.blocks[0]
    hidden = torch.randn(1, 4, transformer.config.num_attention_heads * transformer.config.attention_head_dim)
    with pytest.raises(ValueError, match="self-attention only"):
        Fp8SelfAttnProcessor(bf16_sdpa)(block.attn2, hidden, encoder_hidden_states=hidden)


def test_quantize_uses_the_whole_e4m3_range():
    x = torch.randn(2, 64, 3, 16) * 7
    x8, descale = quantize_e4m3(x)
    assert x8.dtype == torch.float8_e4m3fn
    assert x8.float().abs().max().item() == E4M3_MAX
    rel = ((x8.float() * descale.flatten() - x).norm() / x.norm()).item()
    assert rel < 0.05  # 3 mantissa bits: ~2-3% RMS error


@pytest.mark.parametrize("tokens", [7, 50])
def test_fp8_sdpa_tracks_exact_attention(tokens):
    generator = torch.Generator().manual_seed(tokens)
    q, k, v = (torch.randn(2, tokens, 4, 32, generator=generator) for _ in range(3))
    approx = fp8_sdpa(q, k, v, kernel=reference_fp8_sdpa)
    exact = bf16_sdpa(q, k, v)
    cos = torch.nn.functional.cosine_similarity(approx.flatten(), exact.flatten(), dim=0)
    assert approx.shape == exact.shape and approx.dtype == q.dtype
    assert cos > 0.995


def test_output_scale_from_value_never_overflows():
    """|O| <= amax(V): O quantized with V's scale stays inside e4m3 even when one key takes all."""
    q = torch.zeros(1, 3, 1, 8)
    k = torch.zeros(1, 3, 1, 8)
    k[0, 1, 0, 0], q[0, :, 0, 0] = 100.0, 100.0  # every query attends to key 1 only
    v = torch.randn(1, 3, 1, 8)
    v[0, 1] = v[0, 1].sign() * 3.0  # key 1's value is the largest magnitude there is
    out = fp8_sdpa(q, k, v, kernel=reference_fp8_sdpa)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :, 0], v[0, 1, 0].expand(3, 8), rtol=0.07, atol=0.0)


def test_cudnn_op_traces_as_one_opaque_call():
    """The kernel is a custom op with a fake implementation, so the compiled block traces
    through fp8_sdpa without running cuDNN (and without a graph break at the call)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    register_cudnn_op()
    register_cudnn_op()  # a second call is a no-op
    q, k, v = (torch.randn(2, 6, 4, 16, dtype=torch.bfloat16) for _ in range(3))
    graph = make_fx(lambda q, k, v: fp8_sdpa(q, k, v), tracing_mode="fake")(q, k, v)
    calls = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    assert calls.count(torch.ops.wan_serve.cudnn_fp8_sdpa.default) == 1
    (out,) = [n for n in graph.graph.nodes if n.op == "output"][0].args
    out = out[0] if isinstance(out, (list, tuple)) else out
    assert out.meta["val"].shape == q.shape and out.meta["val"].dtype == torch.bfloat16


def test_a_replica_that_cannot_run_the_kernel_fails_its_start_saying_why(tiny_profile, data_dir):
    from serve_app.errors import ModelLoadError
    from serve_app.pipeline.denoiser_runtime import DenoiserRuntime
    from serve_app.settings.speed import SpeedOptions

    pipe = load_pipeline(tiny_profile, data_dir, "denoiser")
    with pytest.raises(ModelLoadError, match="FP8 attention cannot run here: no CUDA device"):
        DenoiserRuntime(pipe, SpeedOptions(fp8_attention=True))


def test_the_runtime_holds_an_fp8_attention_variant_sharing_the_weights(tiny_profile, data_dir):
    from serve_app.pipeline.denoiser_runtime import DenoiserRuntime
    from serve_app.settings.speed import EXACT, FastKnobs, SpeedOptions

    pipe = load_pipeline(tiny_profile, data_dir, "denoiser")
    runtime = DenoiserRuntime(pipe, SpeedOptions(fp8_attention=True, fp8_attention_kernel="reference"))
    variant = runtime.transformer_for(FastKnobs(fp8_attention=True))
    assert runtime.transformer_for(EXACT) is pipe.transformer and variant is not pipe.transformer
    assert variant.blocks[0].ffn.net[2].weight is pipe.transformer.blocks[0].ffn.net[2].weight
    assert runtime.fast_knob_sets() == [FastKnobs(fp8_attention=True)]
    assert runtime.describe()["fp8_attention_available"] is True
    with pytest.raises(RuntimeError, match="speed.fp8_weights=False"):
        runtime.transformer_for(FastKnobs(fp8=True, fp8_attention=True))
