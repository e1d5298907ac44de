"""`quality: fast` over HTTP, end to end without Ray: the real gateway and stage classes
(tests/helpers/local_graph.py), the tiny model with a profile that holds the FP8-attention
variant of the DiT. The kernel is `reference_fp8_sdpa` (cuDNN's FP8 SDPA needs a Hopper
card; tests/gpu covers it): the same quantize / attend / dequantize arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest

from serve_app import metrics
from serve_app.cache.keys import cache_key
from serve_app.config import ServiceArgs
from serve_app.graph import StageGraph
from serve_app.messages import DenoisedLatents
from serve_app.pipeline.fp8_attention import Fp8SelfAttnProcessor
from tests.helpers.local_graph import LocalHandle, local_stages, shut_down
from tests.helpers.service import TEST_TIMINGS, api_client, gateway_over

FIELDS = {"prompt": "a red fox", "size": "96x64", "num_frames": 9, "fps": 8, "num_inference_steps": 3, "seed": 5}
FP8_ATTENTION = {
    "speed": {
        "fp8_attention": True,
        "fp8_attention_kernel": "reference",
        "fp8_attention_min_tokens": 0,
        "fast": {"fp8_attention": True},
    }
}


@pytest.fixture(scope="module")
def stages(data_dir):
    args = ServiceArgs(
        data_dir=str(data_dir),
        warmup=False,
        compile_cache_dir="off",
        previews={"enabled": False},
        model_overrides=FP8_ATTENTION,
    )
    built = local_stages(args.model_dump())
    metrics._enabled = False  # the constructors turn Ray's metrics on; no Ray here
    yield built
    shut_down(built)


@pytest.fixture
def service(tmp_path, stages):
    args = ServiceArgs(data_dir=str(tmp_path), model_overrides=FP8_ATTENTION, **TEST_TIMINGS)
    handles = {name: LocalHandle(stage) for name, stage in stages.items()}
    graph = StageGraph(handles["prompt_encoder"], handles["denoiser"], handles["video_encoder"])
    gateway = gateway_over(tmp_path, graph, args=args)
    yield gateway, handles, stages["denoiser"]
    gateway.stores.jobs.close()


class AttentionCalls:
    """Counts the FP8 processor's calls (it is shared by every block of the variant)."""

    def __init__(self, denoiser) -> None:
        self.processor = denoiser.runtime.variants[(False, True)].blocks[0].attn1.processor
        assert isinstance(self.processor, Fp8SelfAttnProcessor)
        self.calls = 0
        self._attention = self.processor.attention

    def __enter__(self):
        def counted(*args):
            self.calls += 1
            return self._attention(*args)

        self.processor.attention = counted
        return self

    def __exit__(self, *exc):
        self.processor.attention = self._attention


def _latents(handles) -> np.ndarray:
    [denoised] = [m for m in handles["denoiser"].calls["denoise"] if isinstance(m, DenoisedLatents)]
    handles["denoiser"].calls["denoise"].clear()
    return denoised.latents


def test_fast_runs_the_fp8_variant_and_says_so(service):
    gateway, handles, denoiser = service
    blocks = len(denoiser.runtime.transformer.blocks)
    with api_client(gateway) as client:
        with AttentionCalls(denoiser) as counted:
            exact = client.post("/v1/videos", json={**FIELDS, "quality": "exact"})
        assert exact.status_code == 200, exact.text
        assert counted.calls == 0 and exact.json()["fast"] is None
        exact_latents = _latents(handles)

        with AttentionCalls(denoiser) as counted:
            fast = client.post("/v1/videos", json={**FIELDS, "quality": "fast"})
        assert fast.status_code == 200, fast.text
        video = fast.json()
        assert video["status"] == "completed"
        assert video["fast"] == {"step_cache_threshold": None, "fp8": False, "fp8_attention": True}
        # Guidance runs as one batch-2 forward per step: one attention call per block and step.
        assert counted.calls == FIELDS["num_inference_steps"] * blocks
        fast_latents = _latents(handles)

    # FP8 changed the result, a little: the same seed's latents, close but not equal.
    assert not np.array_equal(fast_latents, exact_latents)
    a, b = exact_latents.ravel().astype(np.float64), fast_latents.ravel().astype(np.float64)
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99
    # ... and they are another video: another result-cache key.
    jobs = gateway.stores.jobs
    fast_params, exact_params = jobs.get(video["id"]).params, jobs.get(exact.json()["id"]).params
    assert fast_params.model_dump(exclude={"fast"}) == exact_params.model_dump(exclude={"fast"})
    identity = gateway.creator.profile.identity
    assert cache_key(identity, fast_params.model_dump()) != cache_key(identity, exact_params.model_dump())


def test_fast_is_refused_by_a_profile_without_fast_knobs(tmp_path):
    gateway = gateway_over(tmp_path, generator=None)
    with api_client(gateway) as client:
        response = client.post("/v1/videos", json={**FIELDS, "quality": "fast"})
    gateway.stores.jobs.close()
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["param"] == "quality" and "speed.fast" in error["message"]
