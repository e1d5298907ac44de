"""bench/gpu_e2e.py's multi-GPU step off the card: when it runs, what it waits for, how it is judged.

The request itself needs a served ParallelDenoiser (the lead runs gpu_e2e with
configs/serve_gpu_4x.yaml on a 4-GPU host); what is checked here is the logic
around it: the goal per GPU count, the /healthz reading that says a multi-GPU
replica serves, the routing arithmetic, the pre-flight GPU fit, and how the
step enters gpu_e2e's goals.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import yaml

from bench import e2e_parallel
from serve_app.paths import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT))


def app_of(config: str) -> dict:
    return yaml.safe_load((PROJECT_ROOT / config).read_text())["applications"][0]


def test_the_goal_is_the_issues_for_four_and_eight_gpus_and_none_otherwise():
    assert e2e_parallel.goal_verdict(29.9, 4) == {"goal_s": 30.0, "met": True}
    assert e2e_parallel.goal_verdict(30.0, 4) == {"goal_s": 30.0, "met": True}
    assert e2e_parallel.goal_verdict(30.1, 4) == {"goal_s": 30.0, "met": False}
    assert e2e_parallel.goal_verdict(17.0, 8) == {"goal_s": 18.0, "met": True}
    assert e2e_parallel.goal_verdict(25.0, 8) == {"goal_s": 18.0, "met": False}
    assert e2e_parallel.goal_verdict(50.0, 2) == {"goal_s": None, "met": None}
    assert e2e_parallel.goal_verdict(None, 4) == {"goal_s": 30.0, "met": None}


def test_720p_is_the_issues_token_count_and_routes_past_the_default_threshold():
    assert e2e_parallel.latent_tokens(1280, 704, 121) == 27_280
    assert e2e_parallel.latent_tokens(832, 480, 81) == 8_190  # gpu_e2e's other requests stay single-GPU
    assert e2e_parallel.latent_tokens(640, 480, 17) == 1_500


def test_a_parallel_replica_is_ready_once_healthz_counts_one():
    assert not e2e_parallel.parallel_ready({})
    assert not e2e_parallel.parallel_ready({"load": {"parallel_denoiser": {"replicas": 0}}, "stages": {}})
    assert e2e_parallel.parallel_ready({"load": {"parallel_denoiser": {"replicas": 1}}})
    # Or its stage, when the load report is off (no admission) or unreadable (job store down)
    assert e2e_parallel.parallel_ready({"load": None, "stages": {"parallel_denoiser": {"ok": True, "replica": {}}}})
    assert not e2e_parallel.parallel_ready({"load": {"error": "store"}, "stages": {"parallel_denoiser": {"ok": False}}})
    assert not e2e_parallel.parallel_ready({"stages": {"parallel_denoiser": {"ok": True, "replica": None}}})


def test_options_come_from_the_configs_stage_and_are_none_without_it():
    from serve_app.serve_config import folded_args

    assert e2e_parallel.parallel_options(folded_args(app_of("configs/serve_gpu_2x.yaml"))) is None
    options = SimpleNamespace(gpus=4, gpu_share=0.8, min_latent_tokens=16384, autoscaling=None, num_replicas=1)
    assert e2e_parallel.parallel_options(SimpleNamespace(stages=SimpleNamespace(parallel_denoiser=options))) is options
    assert e2e_parallel.describe(options) == {"gpus": 4, "gpu_share": 0.8, "min_latent_tokens": 16384, "replicas": 1}
    options.autoscaling = SimpleNamespace(min_replicas=1, max_replicas=2)
    assert e2e_parallel.describe(options)["replicas"] == "1-2"


def test_a_config_that_does_not_fit_the_hosts_gpus_is_refused_before_serve_run():
    two = app_of("configs/serve_gpu_2x.yaml")
    assert e2e_parallel.gpu_fit_problem(two, 2) is None
    problem = e2e_parallel.gpu_fit_problem(two, 1)
    assert problem is not None and "do not fit the 1 GPU(s)" in problem and "--gpus 1" in problem
    # The CPU config asks for no GPU: it runs on a host without one
    assert e2e_parallel.gpu_fit_problem(app_of("serve_config.yaml"), 0) is None


def _result(gpus: int, **measured) -> dict:
    return {"parallel_denoiser": {"gpus": gpus}, **measured}


def test_gpu_e2e_goals_carry_the_720p_step_only_with_a_parallel_config():
    from bench.gpu_e2e import goals

    assert "parallel_720p_ok" not in goals({}) and "parallel_720p_in_goal" not in goals({})
    met = goals(_result(4, parallel_720p={"ok": True}, parallel_720p_s=27.5))
    assert met["parallel_720p_ok"] is True and met["parallel_720p_in_goal"] is True
    late = goals(_result(4, parallel_720p={"ok": True}, parallel_720p_s=31.0))
    assert late["parallel_720p_ok"] is True and late["parallel_720p_in_goal"] is False
    broken = goals(_result(4, parallel_720p={"ok": False, "error": "no ParallelDenoiser replica"}))
    assert broken["parallel_720p_ok"] is False and broken["parallel_720p_in_goal"] is False
    never = goals(_result(8))  # the run broke before the step: missed, not absent
    assert never["parallel_720p_ok"] is False and never["parallel_720p_in_goal"] is False
    two = goals(_result(2, parallel_720p={"ok": True}, parallel_720p_s=50.0))
    assert two["parallel_720p_ok"] is True and "parallel_720p_in_goal" not in two  # no goal for 2 GPUs
