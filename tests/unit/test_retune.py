"""Live retuning without Ray: what each deployment's `reconfigure` changes, from the next request on.

The gateway as build_gateway makes it (fake graph, real store and limiter), retuned as its
deployment's `reconfigure` does it (serve_app/api/retune.py); the result cache and the model
stages by their own `reconfigure`; and the start of a replica, with Serve's replica context
and details stood in for, refusing a bad user_config before any model loads.
(Through Ray and `serve deploy`: tests/integration/test_live_retune.py.)
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

import deployments.base
import serve_app.deployment_view as deployment_view
from deployments.base import ModelStage
from deployments.result_cache import ResultCache
from serve_app import metrics
from serve_app.access.config import AccessConfig
from serve_app.access.guard import AccessGuard
from serve_app.access.keys import hash_secret
from serve_app.api.retune import retune_gateway
from serve_app.config import ServiceArgs
from serve_app.live import LiveConfigError, apply_user_config
from tests.helpers.access import FakeClock, bearer
from tests.helpers.serve_details import serve_details
from tests.helpers.service import REQUEST, Service, api_client

ALICE = "wan_alice-secret-0123456789abcdef"
CAPPED = [{"name": "capped", "max_load": 1.0, "max_steps": 2, "max_frames": 9}]


def retune(svc: Service, user_config: dict) -> None:
    """What the Gateway deployment's reconfigure does with a user_config."""
    retune_gateway(svc.gateway, apply_user_config(svc.args, "gateway", user_config), svc.args.tier_table())


@pytest.fixture
def svc(tmp_path):
    service = Service(tmp_path)
    yield service
    service.store.close()


def test_new_tiers_apply_to_the_next_request(svc):
    with api_client(svc.gateway) as client:
        fresh = {**REQUEST, "cache": False}  # the same request twice: not answered from the cache
        before = client.post("/v1/videos", json=fresh).json()
        assert (before["tier"], before["num_inference_steps"], before["num_frames"]) == ("full", 25, 17)
        retune(svc, {"admission": {"tiers": CAPPED}})
        after = client.post("/v1/videos", json=fresh).json()
        assert (after["tier"], after["num_inference_steps"], after["num_frames"]) == ("capped", 2, 9)
        assert client.get("/healthz").json()["load"]["tier"] == "capped"
    # The out-of-memory retry lowers to the new table's last tier too.
    lowered, tier = svc.runner.lower_memory(svc.generator.calls[0][0])
    assert (tier, lowered.num_inference_steps) == ("capped", 2)


def test_a_larger_queue_lowers_the_load_on_the_next_request(svc):
    svc.busy(2)  # 2 of 4 slots: load 0.5, the `reduced` tier
    fresh = {**REQUEST, "cache": False}
    with api_client(svc.gateway) as client:
        assert client.post("/v1/videos", json=fresh).json()["tier"] == "reduced"
        retune(svc, {"admission": {"max_queue_per_replica": 100}})
        assert client.post("/v1/videos", json=fresh).json()["tier"] == "full"
        assert client.get("/healthz").json()["load"]["load"] < 0.1


def test_a_user_config_without_tiers_keeps_the_table_read_at_start(svc, tmp_path):
    retune(svc, {"admission": {"tiers": CAPPED}})
    retune(svc, {"admission": {"max_queue_per_replica": 5}})
    assert [t.name for t in svc.gateway.admission.tiers.tiers] == ["full", "reduced", "minimal"]
    assert svc.gateway.admission.config.max_queue_per_replica == 5


def test_tiers_that_do_not_fit_the_presets_change_nothing(svc):
    odd = [{"name": "odd", "max_load": 1.0, "max_frames": 12}]
    with pytest.raises(LiveConfigError, match=r"'Gateway': admission.tiers: .*max_frames=12"):
        retune(svc, {"admission": {"tiers": odd, "max_queue_per_replica": 9}})
    assert svc.gateway.admission.config.max_queue_per_replica == 4
    assert [t.name for t in svc.gateway.admission.tiers.tiers] == ["full", "reduced", "minimal"]


@pytest.fixture
def keyed(tmp_path):
    clock = FakeClock()
    config = AccessConfig(
        api_keys=[{"id": "alice", "sha256": hash_secret(ALICE)}], api_keys_env="", burst=2, rate_per_s=0.001
    )
    service = Service(tmp_path, access=AccessGuard(config, {}, clock=clock))
    service.args = service.args.model_copy(update={"access": config})
    yield service, clock
    service.store.close()


def test_new_rate_limits_apply_to_the_next_request(keyed):
    svc, clock = keyed
    with api_client(svc.gateway) as client:
        for _ in range(2):
            assert client.post("/v1/videos", json=REQUEST, headers=bearer(ALICE)).status_code == 200
        refused = client.post("/v1/videos", json=REQUEST, headers=bearer(ALICE))
        assert refused.status_code == 429 and "burst 2" in refused.json()["error"]["message"]
        retune(svc, {"access": {"rate_per_s": 1000, "burst": 2}})
        clock.advance(0.01)  # 10 tokens at the new rate, 0.00001 at the old one
        assert client.post("/v1/videos", json=REQUEST, headers=bearer(ALICE)).status_code == 200
        assert client.get("/healthz").json()["access"]["defaults"]["rate_per_s"] == 1000
        # A key's own limit, changed live too. A user_config replaces the one before it whole:
        # what this one leaves out (rate_per_s) is args' again.
        retune(svc, {"access": {"api_keys": [{"id": "alice", "sha256": hash_secret(ALICE), "burst": 1}]}})
        clock.advance(10)
        assert client.post("/v1/videos", json=REQUEST, headers=bearer(ALICE)).status_code == 200
        refused = client.post("/v1/videos", json=REQUEST, headers=bearer(ALICE))
        assert refused.status_code == 429 and "burst 1" in refused.json()["error"]["message"]
        assert client.get("/healthz").json()["access"]["defaults"]["rate_per_s"] == 0.001


def test_admin_limits_change_live_too(keyed):
    svc, _ = keyed
    retune(svc, {"access": {"admin_burst": 3}})
    assert svc.gateway.app.state.admin_access.config.admin_burst == 3


def test_keys_that_would_turn_auth_off_are_refused_and_nothing_changes(keyed):
    svc, _ = keyed
    with pytest.raises(LiveConfigError, match="turn auth off"):
        retune(svc, {"access": {"api_keys": [], "burst": 7}})
    assert svc.gateway.guard.config.burst == 2 and svc.gateway.guard.auth_enabled


def test_the_result_cache_takes_a_new_ttl_and_size(tmp_path):
    args = ServiceArgs(data_dir=str(tmp_path), cache_ttl_s=100)
    cache = ResultCache.func_or_class(args.model_dump())
    asyncio.run(cache.reconfigure({"cache_ttl_s": 5, "cache_max_bytes": 1000}))
    assert (cache.args.cache_ttl_s, cache.args.cache_max_bytes) == (5, 1000)
    # Not a live field of the cache: refused, the settings stay.
    with pytest.raises(LiveConfigError, match="'ResultCache' sets admission"):
        asyncio.run(cache.reconfigure({"cache_ttl_s": 7, "admission": {}}))
    assert cache.args.cache_ttl_s == 5


class TinyVideoEncoder(ModelStage):
    stage = "video_encoder"


@pytest.fixture
def no_metrics(monkeypatch):
    # The constructors turn metrics on for their process; this one has no Ray to report to.
    monkeypatch.setattr(metrics, "enable", lambda: None)


def test_a_model_stage_takes_new_health_thresholds(data_dir, no_metrics):
    stage = TinyVideoEncoder({"data_dir": str(data_dir), "compile_cache_dir": "off", "warmup": False})
    try:
        asyncio.run(stage.reconfigure({"health": {"stall_s": 7, "stall_s_by_stage": {"video_encoder": 9}}}))
        assert stage._worker.health.options.stall_limit("video_encoder") == 9
        with pytest.raises(LiveConfigError, match="health.memory_strikes"):
            asyncio.run(stage.reconfigure({"health": {"memory_strikes": 0}}))
        assert stage._worker.health.options.stall_s == 7
    finally:
        stage.close()


def test_the_denoiser_sends_progress_at_the_new_interval_from_the_next_request(data_dir, no_metrics):
    import torch

    from deployments.denoiser import Denoiser
    from serve_app.deadline import Deadline
    from serve_app.messages import StepProgress
    from serve_app.params import GenerationParams
    from serve_app.pipeline.stages import PromptEmbeddings

    args = ServiceArgs(data_dir=str(data_dir), warmup=False, compile_cache_dir="off", previews={"enabled": False})
    denoiser = Denoiser.func_or_class(args.model_dump())
    zeros = torch.zeros(1, denoiser.profile.max_sequence_length, denoiser.pipe.transformer.config.text_dim)
    params = GenerationParams(
        prompt="p", negative_prompt="", width=64, height=64, num_frames=5, num_inference_steps=4,
        guidance_scale=1.0, fps=8, seed=0, preset="test",
    )  # fmt: skip

    async def progress_messages() -> int:
        stream = denoiser.denoise(params, PromptEmbeddings(zeros, zeros), Deadline.after(120))
        return sum([isinstance(m, StepProgress) async for m in stream])

    try:
        assert asyncio.run(progress_messages()) == 4  # interval 0: every step
        asyncio.run(denoiser.reconfigure({"progress_interval_s": 3600}))
        assert asyncio.run(progress_messages()) == 2  # the first step, then only the last one
    finally:
        denoiser.close()


def fake_replica(monkeypatch, user_config, details=None):
    """Stand in for Serve inside a replica: its context (the user_config it starts with) and
    its details (the options its deployment runs with)."""
    context = SimpleNamespace(app_name="app", _deployment_config=SimpleNamespace(user_config=user_config))
    monkeypatch.setattr(deployment_view, "_replica_context", lambda: context)
    monkeypatch.setattr(deployment_view, "serve_deployment_options", lambda app: details)


def test_a_bad_user_config_fails_the_replica_before_its_model_loads(monkeypatch, data_dir, no_metrics):
    def load_pipeline(*_a, **_k):
        raise AssertionError("the model was loaded before the user_config was checked")

    monkeypatch.setattr(deployments.base, "load_pipeline", load_pipeline)
    fake_replica(monkeypatch, {"health": {"stall_s": -1}})
    with pytest.raises(LiveConfigError, match="'VideoEncoder' is invalid: health.stall_s"):
        TinyVideoEncoder({"data_dir": str(data_dir)})


def test_options_set_twice_fail_the_replica_before_its_model_loads(monkeypatch, data_dir, no_metrics):
    monkeypatch.setattr(deployments.base, "load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    payload = {"data_dir": str(data_dir), "stages": {"video_encoder": {"num_gpus": 0.3}}}
    entry = {"name": "VideoEncoder", "ray_actor_options": {"num_cpus": 0, "num_gpus": 0.5}}
    fake_replica(monkeypatch, None, serve_details(ServiceArgs(**payload), [entry]))
    with pytest.raises(ValueError, match=r"num_gpus=0.5 under `deployments:` but args.stages.video_encoder.num_gpus"):
        TinyVideoEncoder(payload)


def test_a_replica_starts_with_its_user_config_over_args(monkeypatch, data_dir, no_metrics):
    fake_replica(monkeypatch, {"health": {"stall_s": 11}}, serve_details(ServiceArgs()))
    stage = TinyVideoEncoder({"data_dir": str(data_dir), "compile_cache_dir": "off", "warmup": False})
    try:
        assert stage.args.health.stall_s == 11 and stage.base_args.health.stall_s == 300
        assert stage._worker.health.options.stall_s == 11
    finally:
        stage.close()
