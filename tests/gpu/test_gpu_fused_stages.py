"""On a GPU: the compiled text encoder and the VAE's fused norms give eager's answer (5B random, bf16).

The shipped GPU profiles turn both on (`speed.text_encoder_compile`,
`speed.vae_fused_norms`). Tolerance: relative L2 error below BF16_REL_TOL, the
bound tests/gpu/test_gpu_exact_path.py states for reordered bf16 arithmetic;
the fused norm computes in float32 like the eager one, so the difference is
the rounding of the casts around it. A wrong wiring (a norm or an activation
skipped) is off by order 1.
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
def profile():
    from serve_app.config import load_model_profile

    return load_model_profile("wan2.2-ti2v-5b-random")


def test_compiled_text_encoder_matches_eager(profile, tmp_path):
    from serve_app.pipeline import stages
    from serve_app.pipeline.loading import load_pipeline
    from serve_app.pipeline.optimize import compile_text_encoder

    pipe = load_pipeline(profile, tmp_path, "prompt_encoder")
    texts = ["a red fox running through fresh snow, golden hour", ""]
    eager = [stages.encode_text(pipe, t, profile.max_sequence_length) for t in texts]
    try:
        compile_text_encoder(pipe.text_encoder)
        compiled = [stages.encode_text(pipe, t, profile.max_sequence_length) for t in texts]
    finally:
        torch._dynamo.reset()
    for ours, theirs in zip(compiled, eager):
        assert ours.shape == theirs.shape
        assert torch.isfinite(theirs.float()).all()
        assert relative_error(ours, theirs) < BF16_REL_TOL
    assert relative_error(eager[0], eager[1]) > 0.3  # two texts really differ


def test_fused_vae_norms_decode_like_eager(profile, tmp_path):
    from serve_app.pipeline import stages
    from serve_app.pipeline.loading import load_pipeline
    from serve_app.pipeline.optimize import fuse_vae_norms

    pipe = load_pipeline(profile, tmp_path, "video_encoder")
    z = torch.randn(1, pipe.vae.config.z_dim, 3, 30, 40, generator=torch.Generator().manual_seed(0))
    eager = torch.cat([c.float() for c in stages.iter_decoded_frames(pipe, z)])
    try:
        assert fuse_vae_norms(pipe.vae) > 0
        fused = torch.cat([c.float() for c in stages.iter_decoded_frames(pipe, z)])
        other = torch.cat([c.float() for c in stages.iter_decoded_frames(pipe, z * 0.5)])
    finally:
        torch._dynamo.reset()
    assert fused.shape == eager.shape == (9, 480, 640, 3)
    assert relative_error(fused, eager) < BF16_REL_TOL
    assert relative_error(other, eager) > 5 * relative_error(fused, eager)  # other latents are told apart
