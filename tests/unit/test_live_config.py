"""Live settings (serve_app/live.py): each deployment's user_config is its own section of the
args, merged over them and validated by ServiceArgs itself; and build_app hands each
deployment that section (serve_app/app.py)."""

from __future__ import annotations

import json

import pytest

from serve_app.app import stage_options
from serve_app.config import ServiceArgs
from serve_app.live import DEPLOYMENT_NAMES, LIVE_FIELDS, LiveConfigError, apply_user_config, live_section

ARGS = ServiceArgs(
    admission={"max_queue_per_replica": 16, "cold_start_s": 10},
    access={"rate_per_s": 5, "store": ""},
    cache_ttl_s=60,
    progress_interval_s=0.5,
    health={"stall_s": 100, "check_period_s": 3},
)


def test_each_deployment_gets_only_the_section_it_reads():
    sections = {stage: set(live_section(ARGS, stage)) for stage in DEPLOYMENT_NAMES}
    assert sections == {
        "gateway": {"admission", "access"},
        "result_cache": {"cache_ttl_s", "cache_max_bytes", "cache_inflight_ttl_s"},
        "prompt_encoder": {"health"},
        "denoiser": {"progress_interval_s", "health"},
        "video_encoder": {"health"},
        "parallel_denoiser": {"progress_interval_s", "health"},
    }
    gateway = live_section(ARGS, "gateway")
    # What the app fixes when it is built stays out: the tier file, the limiter store, hosts.
    assert "tiers_file" not in gateway["admission"] and "store" not in gateway["access"]
    assert "allowed_hosts" not in gateway["access"] and "max_body_bytes" not in gateway["access"]
    # Ray's own health-check options are not a user_config's.
    assert "check_period_s" not in live_section(ARGS, "denoiser")["health"]
    assert gateway["admission"]["max_queue_per_replica"] == 16 and gateway["access"]["rate_per_s"] == 5


def test_the_section_is_what_args_set_and_json_ready():
    for stage in DEPLOYMENT_NAMES:
        section = live_section(ARGS, stage)
        assert json.loads(json.dumps(section)) == section  # Ray requires a JSON-serializable user_config
        # Applied to the args it came from, it changes nothing.
        assert apply_user_config(ARGS, stage, section) == ARGS


def test_build_app_gives_each_deployment_its_section_and_its_ray_options():
    tiers = ARGS.tier_table()
    denoiser = stage_options(ARGS, "denoiser", tiers)
    assert denoiser["user_config"] == live_section(ARGS, "denoiser")
    assert denoiser["max_ongoing_requests"] == 1 and denoiser["health_check_period_s"] == 3
    gateway = stage_options(ARGS, "gateway", tiers)["user_config"]
    # The gateway's carries the tier table written out: what it runs with shows in `serve status`.
    assert [t["name"] for t in gateway["admission"]["tiers"]] == ["full", "reduced", "minimal"]
    assert apply_user_config(ARGS, "gateway", gateway).admission.tier_table() == tiers


def test_a_user_config_goes_over_args_field_by_field():
    live = apply_user_config(
        ARGS,
        "gateway",
        {"admission": {"max_queue_per_replica": 8}, "access": {"burst": 3}},
    )
    # What it sets wins; what it leaves keeps args' value, not the default.
    assert live.admission.max_queue_per_replica == 8 and live.admission.cold_start_s == 10
    assert live.access.burst == 3 and live.access.rate_per_s == 5
    # Nothing else moved.
    assert live.model_dump(exclude={"admission", "access"}) == ARGS.model_dump(exclude={"admission", "access"})


def test_tiers_go_inline_and_replace_the_table_whole():
    tiers = [{"name": "capped", "max_load": 1.0, "max_steps": 2}]
    live = apply_user_config(ARGS, "gateway", {"admission": {"tiers": tiers}})
    assert [(t.name, t.max_steps) for t in live.admission.tier_table().tiers] == [("capped", 2)]


def test_none_leaves_args_as_they_are():
    assert apply_user_config(ARGS, "denoiser", None) is ARGS


@pytest.mark.parametrize(
    "stage, user_config, named",
    [
        ("gateway", {"admission": {"tiers_file": "other.yaml"}}, "admission.tiers_file"),
        ("gateway", {"access": {"store": "redis://x:6379/0"}}, "access.store"),
        ("gateway", {"cache_ttl_s": 5}, "cache_ttl_s"),
        ("denoiser", {"health": {"check_period_s": 1}}, "health.check_period_s"),
        ("result_cache", {"model": "wan2.2-ti2v-5b"}, "model"),
        ("prompt_encoder", {"progress_interval_s": 1}, "progress_interval_s"),
    ],
)
def test_fields_a_deployment_does_not_take_live_are_refused_by_name(stage, user_config, named):
    with pytest.raises(LiveConfigError, match=rf"{DEPLOYMENT_NAMES[stage]}.*sets {named}, which") as caught:
        apply_user_config(ARGS, stage, user_config)
    assert "Live fields here:" in str(caught.value)


@pytest.mark.parametrize(
    "stage, user_config, named",
    [
        ("gateway", {"admission": {"max_queue_per_replica": 0}}, "admission.max_queue_per_replica"),
        ("gateway", {"admission": {"mystery": 1}}, "admission.mystery"),
        ("gateway", {"access": {"burst": "lots"}}, "access.burst"),
        ("gateway", {"admission": {"tiers": [{"name": "a", "max_load": 0.5}]}}, "admission.tiers"),
        ("result_cache", {"cache_ttl_s": -1}, "cache_ttl_s"),
        ("denoiser", {"health": {"stall_s_by_stage": {"denoiser": 0}}}, "health.stall_s_by_stage"),
    ],
)
def test_bad_values_fail_with_the_field_named_never_kept(stage, user_config, named):
    with pytest.raises(LiveConfigError, match=rf"user_config of deployment '{DEPLOYMENT_NAMES[stage]}'") as caught:
        apply_user_config(ARGS, stage, user_config)
    assert named in str(caught.value)


def test_values_are_not_quoted_back():
    # An access section may hold what someone pasted into it; errors name the field only.
    with pytest.raises(LiveConfigError) as caught:
        apply_user_config(ARGS, "gateway", {"access": {"api_keys": [{"id": "a", "sha256": "wan_SECRET-value"}]}})
    assert "SECRET" not in str(caught.value) and "access.api_keys.0.sha256" in str(caught.value)


def test_a_section_must_be_a_mapping_and_so_must_the_user_config():
    with pytest.raises(LiveConfigError, match="admission must be a mapping"):
        apply_user_config(ARGS, "gateway", {"admission": 3})
    with pytest.raises(LiveConfigError, match="must be a mapping of field: value, got list"):
        apply_user_config(ARGS, "gateway", [1])


def test_every_live_field_is_a_field_of_the_args():
    for stage, fields in LIVE_FIELDS.items():
        for name, section in fields.items():
            assert name in ServiceArgs.model_fields, (stage, name)
            if section is not None:
                inner = ServiceArgs.model_fields[name].annotation
                assert section <= set(inner.model_fields), (stage, name, section - set(inner.model_fields))
