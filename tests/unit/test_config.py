"""Config models: the shipped profiles load, bad values are refused with the values quoted."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from serve_app.config import (
    ATTENTION_BACKENDS,
    AutoscalingOptions,
    ModelProfile,
    ServiceArgs,
    StageOptions,
    TinyModelSpec,
    load_model_profile,
)
from serve_app.paths import MODEL_PROFILE_DIR, PROJECT_ROOT

PROFILES = {
    "tiny": ("wan2.2-ti2v-tiny", "tiny", "cpu"),
    "wan2.2-ti2v-5b": ("wan2.2-ti2v-5b", "pretrained", "auto"),
    "wan2.2-ti2v-5b-random": ("wan2.2-ti2v-5b-random", "random", "auto"),
}


def test_every_profile_file_is_covered():
    assert sorted(p.stem for p in MODEL_PROFILE_DIR.glob("*.yaml")) == sorted(PROFILES)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_loads(name):
    profile = load_model_profile(name)
    assert profile.name == name
    assert (profile.model_id, profile.source, profile.device) == PROFILES[name]
    assert profile.attention_backend in ATTENTION_BACKENDS
    assert profile.identity == f"{profile.model_id}@{profile.revision}"


def test_profile_by_path_and_with_overrides():
    path = str(MODEL_PROFILE_DIR / "tiny.yaml")
    profile = load_model_profile(path, {"dtype": "bfloat16"})
    assert profile.name == "tiny" and profile.dtype == "bfloat16"


def test_pretrained_profile_points_at_the_official_weights():
    assert load_model_profile("wan2.2-ti2v-5b").path == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ValueError) as info:
        load_model_profile("wan9")
    message = str(info.value)
    assert "'wan9'" in message
    assert all(name in message for name in PROFILES)


def test_directory_is_not_a_profile():
    with pytest.raises(ValueError, match="not found"):
        load_model_profile("configs")


def test_bad_attention_backend():
    with pytest.raises(ValidationError) as info:
        load_model_profile("tiny", {"attention_backend": "flashy"})
    message = str(info.value)
    assert "attention_backend='flashy'" in message
    assert "sdpa" in message and "xformers" in message


def test_pretrained_needs_path():
    with pytest.raises(ValidationError) as info:
        ModelProfile(name="mine", model_id="m", source="pretrained")
    assert "'mine'" in str(info.value) and "path" in str(info.value)


def test_unknown_profile_field_is_refused():
    with pytest.raises(ValidationError, match="dtypo"):
        load_model_profile("tiny", {"dtypo": "float16"})


def test_head_dim_must_split_over_three_rope_axes():
    with pytest.raises(ValidationError, match="head_dim=16 must be divisible by 6"):
        TinyModelSpec(head_dim=16)
    assert TinyModelSpec(head_dim=18).head_dim == 18


def test_min_replicas_above_max():
    with pytest.raises(ValidationError, match="min_replicas=3 > max_replicas=2"):
        AutoscalingOptions(min_replicas=3, max_replicas=2)


def test_default_deadline_above_max():
    with pytest.raises(ValidationError, match=r"default_deadline_s=700\.0 > max_deadline_s=600\.0"):
        ServiceArgs(default_deadline_s=700, max_deadline_s=600)


def test_fixed_replicas_deployment_options():
    opts = StageOptions(num_replicas=3, max_ongoing_requests=2, num_gpus=0.5).to_deployment_options()
    assert opts == {
        "max_ongoing_requests": 2,
        "ray_actor_options": {"num_cpus": 0.0, "num_gpus": 0.5},
        "graceful_shutdown_timeout_s": 20.0,
        "num_replicas": 3,
    }


def test_autoscaling_deployment_options_drop_num_replicas():
    # Ray Serve refuses a fixed num_replicas next to an autoscaling_config.
    auto = AutoscalingOptions(min_replicas=0, max_replicas=4, target_ongoing_requests=2)
    opts = StageOptions(num_replicas=3, autoscaling=auto).to_deployment_options()
    assert "num_replicas" not in opts
    assert opts["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 4,
        "target_ongoing_requests": 2.0,
        "upscale_delay_s": 5.0,
        "downscale_delay_s": 60.0,
        "look_back_period_s": 10.0,
    }


def test_queue_depth_policy_is_wired_as_a_ray_custom_policy():
    from ray.serve.config import AutoscalingConfig

    from serve_app.policy.autoscaling import QueueDepthPolicy

    auto = AutoscalingOptions(
        policy="queue_depth", min_replicas=0, max_replicas=3, target_ongoing_requests=2, downscale_to_zero_delay_s=30
    )
    ray_config = AutoscalingConfig(**StageOptions(autoscaling=auto).to_deployment_options()["autoscaling_config"])
    policy = ray_config.policy.get_policy()
    assert policy is QueueDepthPolicy
    assert ray_config.policy.policy_kwargs == {"jobs_per_replica": 2.0}
    assert ray_config.downscale_to_zero_delay_s == 30


def test_model_stages_get_a_grace_that_covers_the_longest_deadline():
    args = ServiceArgs(max_deadline_s=300, default_deadline_s=30)
    for stage in ("prompt_encoder", "denoiser", "video_encoder"):
        assert args.deployment_options(stage)["graceful_shutdown_timeout_s"] == 330
    assert args.deployment_options("gateway")["graceful_shutdown_timeout_s"] == 20
    explicit = ServiceArgs(stages={"denoiser": {"graceful_shutdown_timeout_s": 5}})
    assert explicit.deployment_options("denoiser")["graceful_shutdown_timeout_s"] == 5


def test_gpu_memory_fraction_defaults_to_the_gpu_share():
    assert StageOptions(num_gpus=0.5).memory_fraction == 0.5
    assert StageOptions(num_gpus=1).memory_fraction is None  # a whole card: no cap
    assert StageOptions(num_gpus=0).memory_fraction is None
    assert StageOptions(num_gpus=0.5, gpu_memory_fraction=0.45).memory_fraction == 0.45


def test_tier_table_is_checked_against_the_limits(tmp_path):
    bad = tmp_path / "tiers.yaml"
    bad.write_text("tiers: [{name: a, max_load: 1.0, max_frames: 12}]\n")
    with pytest.raises(ValueError, match="max_frames=12"):
        ServiceArgs(admission={"tiers_file": str(bad)}).tier_table()
    assert [t.name for t in ServiceArgs().tier_table().tiers] == ["full", "reduced", "minimal"]


def test_service_args_parse_serve_config_exactly():
    config = yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())
    raw = config["applications"][0]["args"]
    args = ServiceArgs.model_validate(raw)
    # Every key in the file lands in a field, with the same value.
    assert args.model_dump(exclude_unset=True) == raw
    assert args.stages.denoiser.to_deployment_options()["max_ongoing_requests"] == 1
    assert args.model_profile().name == "tiny"
    assert sorted(args.preset_catalog().presets) == ["official", "preview", "standard"]


def test_service_args_refuse_unknown_keys():
    with pytest.raises(ValidationError, match="deadline"):
        ServiceArgs.model_validate({"deadline": 5})
