"""Out-of-memory recovery with real CUDA allocations: memory returns to its baseline.

The unit tests (tests/unit/test_model_worker.py) prove the mechanics with
OutOfMemoryErrors constructed on the CPU; here the GPU really runs out, under
a per-process memory cap, and torch's allocator is the judge. The second test
decodes with the real 5B VAE architecture (random weights) and shows why the
VAE's feature cache must be cleared after an out-of-memory.
"""

from __future__ import annotations

import asyncio
import gc

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

from serve_app.errors import GpuOutOfMemory  # noqa: E402
from tests.helpers.model_worker import FakePipe, make_worker  # noqa: E402

GIB = 1024**3


@pytest.fixture
def capped():
    """Cap this process's allocator at `extra` bytes above what it holds now."""
    # Other GPU tests in this process may leave cyclic garbage holding tensors.
    gc.collect()
    total = torch.cuda.get_device_properties(0).total_memory

    def cap(extra: int) -> None:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_allocated() + extra) / total)

    yield cap
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


def run(coro):
    return asyncio.run(coro)


def test_oom_frees_the_call_runs_the_fallback_and_memory_is_back_at_baseline(capped):
    weights = torch.ones(GIB // 4, device="cuda")  # 1 GiB "model", resident like weights
    worker = make_worker(device="cuda:0", health={"memory_tolerance_mib": 0, "memory_strikes": 1})
    capped(4 * GIB)

    def greedy(chunk_bytes: int):
        held = []  # tensors in a local list: exactly what a traceback would pin
        while True:
            held.append(torch.empty(chunk_bytes, dtype=torch.uint8, device="cuda"))

    def frugal(chunk_bytes: int):
        return float(torch.ones(chunk_bytes // 4, device="cuda").sum())

    async def scenario():
        assert await worker.run(frugal, 1024) == 256.0  # a first call: the baseline is taken before it
        baseline = worker.health.baseline_bytes
        assert baseline == torch.cuda.memory_allocated()
        result = await worker.run(greedy, 256 * 1024**2, fallback=frugal)
        assert result == 64 * 1024**2
        assert torch.cuda.memory_allocated() == baseline
        with pytest.raises(GpuOutOfMemory) as info:
            await worker.run(greedy, 256 * 1024**2)
        assert torch.cuda.memory_allocated() == baseline
        assert "Tried to allocate 256.00 MiB" in info.value.message
        # The replica goes on serving, and its health check finds nothing wrong.
        assert await worker.run(frugal, 1024) == 256.0
        worker.check_health()
        worker.check_health()
        return baseline

    baseline = run(scenario())
    assert worker.oom_counts == {"recovered": 1, "failed": 1}
    assert worker.last_peak_bytes is not None and worker.last_peak_bytes >= baseline
    del weights


def test_oom_mid_vae_decode_leaves_the_feature_cache_unless_cleared(capped):
    diffusers = pytest.importorskip("diffusers")
    from serve_app.pipeline.architecture import VAE_5B

    vae = diffusers.AutoencoderKLWan(**VAE_5B).to("cuda", torch.bfloat16).eval()
    # 61 frames at 704x1280: the cap below lets the decode get well into its
    # frames (filling the causal-conv cache) before it runs out.
    latents = torch.randn(1, 48, 16, 44, 80, device="cuda", dtype=torch.bfloat16)

    def decode(z):
        with torch.inference_mode():
            return vae.decode(z, return_dict=False)[0].shape

    def decode_small(z):
        with torch.inference_mode():
            return vae.decode(z[:, :, :2, :4, :4], return_dict=False)[0].shape

    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()
    capped(6 * GIB)

    # Control: the same OOM handled without clearing the VAE's cache.
    try:
        decode(latents)
    except torch.cuda.OutOfMemoryError:
        pass
    else:
        pytest.fail("the capped decode did not run out of memory; lower the cap")
    gc.collect()
    torch.cuda.empty_cache()
    left_behind = torch.cuda.memory_allocated() - baseline
    assert left_behind > 0, "expected the interrupted decode to keep its feature cache"
    vae.clear_cache()
    assert torch.cuda.memory_allocated() == baseline

    worker = make_worker(
        FakePipe(vae=vae, scheduler=object()), device="cuda:0", health={"memory_tolerance_mib": 0, "memory_strikes": 1}
    )

    async def scenario():
        worker.check_health()  # the baseline
        shape = await worker.run(decode, latents, fallback=decode_small)
        assert tuple(shape) == (1, 3, 5, 64, 64)
        assert torch.cuda.memory_allocated() == baseline
        worker.check_health()
        worker.check_health()

    run(scenario())
    assert worker.oom_counts == {"recovered": 1}
    print(f"interrupted decode left {left_behind / 2**20:.0f} MiB in the VAE's cache without clear_cache()")


def test_nvml_figures_are_this_cards():
    pynvml = pytest.importorskip("pynvml")
    from serve_app import metrics

    torch.cuda.init()
    handle = metrics._nvml_handle(0)
    info = pynvml.nvmlDeviceGetMemoryInfo(handle)
    assert abs(info.total - torch.cuda.get_device_properties(0).total_memory) < 1 * GIB
    metrics.report_gpu("cuda:0", peak_bytes=123)  # metrics off: must not raise
