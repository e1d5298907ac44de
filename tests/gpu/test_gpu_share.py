"""A fractional-GPU replica's allocator cap is real: past its share it gets the OOM, not its neighbour."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

from serve_app.gpu_share import cap_gpu_memory  # noqa: E402


def test_cap_on_plain_cuda_device_name_limits_allocations():
    total = torch.cuda.get_device_properties(0).total_memory
    try:
        assert cap_gpu_memory(0.1, "cuda") == 0.1  # "cuda" without an index, as replicas name it
        small = torch.empty(int(total * 0.05), dtype=torch.uint8, device="cuda")
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.empty(int(total * 0.08), dtype=torch.uint8, device="cuda")
        del small
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    assert cap_gpu_memory(None, "cuda") is None and cap_gpu_memory(0.5, "cpu") is None
