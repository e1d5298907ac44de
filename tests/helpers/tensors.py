"""Comparing tensors from two paths of the same computation (GPU tests)."""

from __future__ import annotations

# Relative L2 bound for bf16 paths that only reorder arithmetic (fused kernels,
# another attention kernel, other GEMM shapes): measured ~0.03 through 30 DiT
# blocks and a sampler (tests/gpu/test_gpu_exact_path.py); a wrong path is at 0.3-1.4.
BF16_REL_TOL = 0.05


def relative_error(ours, reference) -> float:
    """||ours - reference|| / ||reference|| in float32."""
    return float((ours.float() - reference.float()).norm() / reference.float().norm())
