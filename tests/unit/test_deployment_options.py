"""Scaling and resources have one source (serve_app/deploy_options.py): a serve config's
`deployments:` entry may set what args leave to defaults, and the app then goes by it; set in
both places to different values, or set where Ray ignores it, it is refused.

Two ways in, checked against each other: the replica's (Serve's details, made here by Ray's own
merge: tests/helpers/serve_details.py) and `python -m serve_app.serve_config check`'s.
"""

from __future__ import annotations

import pytest
import yaml

from serve_app.config import ServiceArgs
from serve_app.deploy_options import agreement
from serve_app.live import DEPLOYMENT_NAMES
from serve_app.paths import PROJECT_ROOT
from serve_app.serve_config import check_app, folded_args, main
from tests.helpers.serve_details import serve_details

SHIPPED = [PROJECT_ROOT / "serve_config.yaml", *sorted((PROJECT_ROOT / "configs").glob("serve_*.yaml"))]
QUEUE_DEPTH = {"policy": "queue_depth", "min_replicas": 1, "max_replicas": 2, "upscale_delay_s": 2}


def payload_args(raw: dict) -> ServiceArgs:
    """ServiceArgs as a replica rebuilds them from build_app's payload (what args set, only)."""
    return ServiceArgs(**ServiceArgs.model_validate(raw).model_dump(exclude_unset=True))


def at_start(raw_args: dict, entries: list[dict], stage: str):
    """What `stage`'s replica finds at start: its effective options against its args."""
    args = payload_args(raw_args)
    return agreement(args, stage, serve_details(args, entries)[DEPLOYMENT_NAMES[stage]])


def app(raw_args: dict, entries: list[dict]) -> dict:
    return {"name": "video", "import_path": "serve_app.app:build_app", "args": raw_args, "deployments": entries}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_starts_and_both_ways_see_the_same_stages(path):
    [config] = yaml.safe_load(path.read_text())["applications"]
    static = check_app(config)
    assert not static.problems, static.problems
    for stage in payload_args(config["args"]).stages.deployed():
        found = at_start(config["args"], config.get("deployments", []), stage)
        assert not found.conflicts, (stage, found.conflicts)
        assert found.view == static.stages[stage], stage


def test_without_deployments_entries_nothing_changes():
    args = payload_args({"stages": {"denoiser": {"num_gpus": 0.5, "autoscaling": QUEUE_DEPTH}}})
    details = serve_details(args)
    for stage in args.stages.deployed():
        found = agreement(args, stage, details[DEPLOYMENT_NAMES[stage]])
        assert (found.conflicts, found.adopted) == ([], []), stage
        assert found.view == getattr(args.stages, stage)


def test_an_option_args_leave_to_default_is_adopted_and_the_app_goes_by_it():
    entries = [{"name": "Denoiser", "ray_actor_options": {"num_cpus": 4, "num_gpus": 0.5}, "max_ongoing_requests": 2}]
    found = at_start({}, entries, "denoiser")
    assert found.conflicts == []
    assert {a.split("=")[0] for a in found.adopted} == {
        "ray_actor_options.num_cpus",
        "ray_actor_options.num_gpus",
        "max_ongoing_requests",
    }
    # The allocator cap and the packing check follow the effective share.
    assert found.view.num_gpus == 0.5 and found.view.memory_fraction == 0.5 and found.view.max_ongoing_requests == 2


def test_an_option_set_in_both_places_differently_is_refused_naming_both():
    entries = [{"name": "Denoiser", "ray_actor_options": {"num_cpus": 4, "num_gpus": 0.8}}]
    found = at_start({"stages": {"denoiser": {"num_gpus": 0.5}}}, entries, "denoiser")
    assert found.conflicts == [
        "ray_actor_options.num_gpus=0.8 under `deployments:` but args.stages.denoiser.num_gpus=0.5"
    ]
    with pytest.raises(ValueError, match="deployment 'Denoiser': scaling and resources have one source"):
        found.raise_on_conflict()


def test_the_same_value_in_both_places_is_no_conflict():
    entries = [{"name": "Denoiser", "ray_actor_options": {"num_cpus": 4, "num_gpus": 0.5}}]
    found = at_start({"stages": {"denoiser": {"num_gpus": 0.5, "num_cpus": 4}}}, entries, "denoiser")
    assert (found.conflicts, found.adopted) == ([], [])


def test_ray_actor_options_replace_the_apps_whole_so_a_dropped_cpu_count_is_caught():
    # Ray reserves 1 CPU when an entry's ray_actor_options name none: args' 4 would be lost.
    entries = [{"name": "Denoiser", "ray_actor_options": {"num_gpus": 0.5}}]
    found = at_start({"stages": {"denoiser": {"num_cpus": 4}}}, entries, "denoiser")
    assert found.conflicts == [
        "ray_actor_options.num_cpus=1.0 under `deployments:` but args.stages.denoiser.num_cpus=4.0"
    ]


def test_an_autoscaling_config_under_deployments_replaces_the_apps_and_ray_fills_the_rest():
    # args set upscale_delay_s; the entry's autoscaling_config leaves it out, and Ray's 30 s default runs.
    entries = [{"name": "Denoiser", "autoscaling_config": {"min_replicas": 1, "max_replicas": 4}}]
    found = at_start({"stages": {"denoiser": {"autoscaling": QUEUE_DEPTH}}}, entries, "denoiser")
    joined = "; ".join(found.conflicts)
    assert "autoscaling_config.upscale_delay_s=30.0 under `deployments:` but args.stages.denoiser.autoscaling" in joined
    # ... and it drops the app's queue_depth policy, which the app wires itself.
    assert "the autoscaling policy is 'ongoing_requests' under `deployments:` but 'queue_depth' in args" in joined


def test_autoscaling_added_under_deployments_to_a_default_count_is_adopted():
    entries = [{"name": "VideoEncoder", "autoscaling_config": {"min_replicas": 1, "max_replicas": 3}}]
    found = at_start({}, entries, "video_encoder")
    assert found.conflicts == []
    assert found.view.autoscaling.max_replicas == 3 and found.view.max_replicas == 3
    # A fixed count written in args is a second source for the same thing.
    found = at_start({"stages": {"video_encoder": {"num_replicas": 1}}}, entries, "video_encoder")
    assert any("args.stages.video_encoder.num_replicas=1" in c for c in found.conflicts)


def test_a_replica_count_that_ray_would_ignore_is_refused():
    # The denoiser scales on queue depth, so the app pins the gateways with autoscaling bounds:
    # a num_replicas in the Gateway's entry would be ignored by Ray, silently.
    check = check_app(
        app({"stages": {"denoiser": {"autoscaling": QUEUE_DEPTH}}}, [{"name": "Gateway", "num_replicas": 3}])
    )
    assert any("num_replicas=3, which Ray ignores" in p for p in check.problems), check.problems


def test_the_queue_depth_policy_is_only_chosen_in_args():
    policy = {"policy_function": "serve_app.policy.autoscaling:QueueDepthPolicy"}
    entries = [{"name": "Denoiser", "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "policy": policy}}]
    found = at_start({}, entries, "denoiser")
    assert any("the app wires queue_depth itself" in c for c in found.conflicts)


def test_the_check_reports_bad_entries_and_user_configs():
    check = check_app(
        app(
            {},
            [
                {"name": "Denoisr", "num_replicas": 2},
                {"name": "Gateway", "user_config": {"admission": {"max_queue_per_replica": 0}}},
                {"name": "ResultCache", "user_config": {"progress_interval_s": 1}},
                {"name": "PromptEncoder", "num_replicas": 1, "autoscaling_config": {"max_replicas": 2}},
            ],
        )
    )
    problems = "\n".join(check.problems)
    assert "'Denoisr' is no deployment of this app" in problems
    assert "'Gateway' is invalid: admission.max_queue_per_replica" in problems
    assert "'ResultCache' sets progress_interval_s, which this deployment does not take live" in problems
    assert "deployments: PromptEncoder:" in problems  # Ray's own schema: count and autoscaling together


def test_the_check_reports_tiers_that_do_not_fit_the_presets():
    tiers = [{"name": "odd", "max_load": 1.0, "max_frames": 12}]
    check = check_app(app({}, [{"name": "Gateway", "user_config": {"admission": {"tiers": tiers}}}]))
    assert any("max_frames=12" in p for p in check.problems), check.problems


def test_the_cli_exits_1_on_a_problem_and_0_on_the_shipped_configs(tmp_path, capsys):
    assert main(["check", str(PROJECT_ROOT / "configs" / "serve_gpu.yaml"), "--gpus", "1"]) == 0
    assert "fits 1 card(s)" in capsys.readouterr().out
    config = yaml.safe_load((PROJECT_ROOT / "configs" / "serve_gpu.yaml").read_text())
    assert main(["check", str(PROJECT_ROOT / "configs" / "serve_gpu_2x.yaml"), "--gpus", "1"]) == 1
    assert "do not fit 1 card(s)" in capsys.readouterr().out
    config["applications"][0]["deployments"][0]["user_config"] = {"access": {"store": "redis://x"}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    assert main(["check", str(bad)]) == 1
    assert "access.store, which this deployment does not take live" in capsys.readouterr().out


def test_folded_args_are_what_an_in_process_deploy_of_the_config_needs():
    [config] = yaml.safe_load((PROJECT_ROOT / "configs" / "serve_gpu.yaml").read_text())["applications"]
    args = folded_args(config)
    assert args.stages.denoiser.num_gpus == 0.5 and args.stages.denoiser.num_cpus == 4
    assert args.admission.max_queue_per_replica == 16 and args.model == "wan2.2-ti2v-5b-random"
    # One `health` in args for the three model stages: a user_config that sets it for one only
    # cannot be folded.
    [cpu] = yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())["applications"]
    cpu["deployments"].append({"name": "Denoiser", "user_config": {"health": {"stall_s": 9}}})
    with pytest.raises(ValueError, match="set `health` differently"):
        folded_args(cpu)
