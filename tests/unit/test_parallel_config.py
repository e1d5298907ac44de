"""The multi-GPU denoiser's stage (`args.stages.parallel_denoiser`): its settings, the Ray Serve
options build_app derives from them (a placement group per replica), the serve-config check
and packing, and its autoscaling on the jobs routed to it. Ray-free (Ray's own schemas and
policies run as plain functions)."""

from __future__ import annotations

import pytest
import yaml
from ray.serve.config import AutoscalingConfig, AutoscalingContext
from ray.serve.schema import DeploymentSchema

from serve_app.app import stage_options
from serve_app.config import ParallelDenoiserOptions, ServiceArgs
from serve_app.jobs.model import JobRecord
from serve_app.jobs.sqlite_store import SQLiteJobStore
from serve_app.live import DEPLOYMENT_NAMES
from serve_app.params import GenerationParams
from serve_app.paths import PROJECT_ROOT
from serve_app.policy.autoscaling import (
    QUEUE_DEPTH_POLICY,
    UNCLAIMED_JOBS,
    UNCLAIMED_PARALLEL_JOBS,
    QueueDepthPolicy,
    application_policy,
    unclaimed_jobs_report,
)
from serve_app.routing import DenoiserRoutes
from serve_app.serve_config import check_app, gpu_placement
from tests.helpers.jobs import job_id, make_job

PARALLEL = {"gpus": 4, "gpu_share": 0.6, "rank_cpus": 2, "num_cpus": 1, "min_latent_tokens": 16384}


def preset_params(preset) -> GenerationParams:
    fields = ("width", "height", "num_frames", "num_inference_steps", "guidance_scale", "fps")
    return GenerationParams(
        prompt="p", negative_prompt="", seed=0, preset="x", **{name: getattr(preset, name) for name in fields}
    )


def app(raw_args: dict, entries: list[dict] | None = None) -> dict:
    return {"name": "video", "import_path": "serve_app.app:build_app", "args": raw_args, "deployments": entries or []}


# --- settings ---------------------------------------------------------------------------


def test_off_by_default_and_the_app_then_deploys_what_it_always_did():
    args = ServiceArgs()
    assert args.stages.parallel_denoiser is None
    assert args.stages.deployed() == ["gateway", "result_cache", "prompt_encoder", "denoiser", "video_encoder"]
    with pytest.raises(ValueError, match="stages.parallel_denoiser is not set"):
        args.deployment_options("parallel_denoiser")
    on = ServiceArgs(stages={"parallel_denoiser": PARALLEL})
    assert on.stages.deployed()[-1] == "parallel_denoiser"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"num_gpus": 0.5}, "num_gpus=0.5: the parallel denoiser's replica coordinates on a CPU"),
        ({"gpu_share": 0.5}, "gpu_share=0.5: two ranks of one replica could then share a card"),
        ({"gpu_memory_fraction": 0.5}, "capped to gpu_share"),
        ({"max_ongoing_requests": 2}, "max_ongoing_requests"),
        ({"num_cpus": 0}, "num_cpus"),
        ({"gpus": 0}, "gpus"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_field(bad, message):
    with pytest.raises(ValueError, match=message):
        ParallelDenoiserOptions(**{**PARALLEL, **bad})


def test_every_setting_is_described():
    missing = [name for name, field in ParallelDenoiserOptions.model_fields.items() if not field.description]
    assert not missing, missing


def test_one_rank_or_cpu_ranks_may_take_any_share():
    assert ParallelDenoiserOptions(gpus=1, gpu_share=0.3).rank_bundle == {"CPU": 1.0, "GPU": 0.3}
    assert ParallelDenoiserOptions(gpus=2, gpu_share=0).rank_bundle == {"CPU": 1.0}  # gloo ranks: no GPU key


# --- Ray Serve options ---------------------------------------------------------------------


def test_build_app_asks_for_a_strict_pack_placement_group_with_a_cpu_bundle_and_one_per_rank():
    args = ServiceArgs(stages={"parallel_denoiser": {**PARALLEL, "resources": {"gpu_node": 1}}})
    options = stage_options(args, "parallel_denoiser", args.tier_table())
    assert options["placement_group_strategy"] == "STRICT_PACK"
    assert options["placement_group_bundles"] == [{"CPU": 1.0, "gpu_node": 1}] + [{"CPU": 2.0, "GPU": 0.6}] * 4
    # The replica itself: CPU only, and exactly what bundle 0 holds (Ray requires it to fit there).
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"gpu_node": 1}}
    assert options["max_ongoing_requests"] == 1
    # A model stage: its grace covers the longest deadline, and Ray health-checks it.
    assert options["graceful_shutdown_timeout_s"] == args.max_deadline_s + 30
    assert options["health_check_period_s"] == args.health.check_period_s
    assert set(options["user_config"]) == {"progress_interval_s", "health"}
    # Ray's own schema takes them.
    DeploymentSchema.model_validate({"name": "ParallelDenoiser", **options})


def test_queue_depth_autoscaling_of_the_parallel_stage_counts_its_own_jobs():
    auto = {"policy": "queue_depth", "min_replicas": 0, "max_replicas": 2}
    args = ServiceArgs(
        stages={"parallel_denoiser": {**PARALLEL, "autoscaling": auto}, "denoiser": {"autoscaling": auto}}
    )
    parallel = args.deployment_options("parallel_denoiser")["autoscaling_config"]["policy"]
    single = args.deployment_options("denoiser")["autoscaling_config"]["policy"]
    assert parallel["policy_kwargs"] == {"jobs_per_replica": 1.0, "lane": "parallel"}
    assert single["policy_kwargs"] == {"jobs_per_replica": 1.0}  # as before: the single lane by default


def context(name: str, requests: float, metrics: dict, policy: dict) -> AutoscalingContext:
    config = AutoscalingConfig(min_replicas=0, max_replicas=8, upscale_delay_s=0, downscale_delay_s=0, policy=policy)
    return AutoscalingContext(
        deployment_id=name,
        deployment_name=name,
        app_name="video",
        current_num_replicas=1,
        target_num_replicas=1,
        running_replicas=[],
        total_num_requests=requests,
        total_queued_requests=0.0,
        aggregated_metrics=metrics,
        raw_metrics={},
        capacity_adjusted_min_replicas=0,
        capacity_adjusted_max_replicas=8,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=0.0,
        config=config,
    )


def test_each_denoiser_deployment_scales_on_its_own_waiting_jobs():
    single = {"policy_function": QUEUE_DEPTH_POLICY, "policy_kwargs": {"jobs_per_replica": 1.0}}
    parallel = {"policy_function": QUEUE_DEPTH_POLICY, "policy_kwargs": {"jobs_per_replica": 1.0, "lane": "parallel"}}
    reported = {UNCLAIMED_JOBS: {"g1": 5.0}, UNCLAIMED_PARALLEL_JOBS: {"g1": 2.0}}
    contexts = {
        "Gateway": context("Gateway", 0, reported, single),
        "Denoiser": context("Denoiser", 1, {}, single),
        "ParallelDenoiser": context("ParallelDenoiser", 1, {}, parallel),
    }
    decisions, states = application_policy(contexts)
    assert (decisions["Denoiser"], states["Denoiser"]["unclaimed_jobs"]) == (6, 5.0)
    assert (decisions["ParallelDenoiser"], states["ParallelDenoiser"]["unclaimed_jobs"]) == (3, 2.0)
    with pytest.raises(ValueError, match="lane='both'"):
        QueueDepthPolicy(lane="both")


def test_a_gateway_reports_the_undispatched_jobs_of_each_deployment(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    large = make_job(0).params.model_copy(update={"width": 256, "height": 256, "num_frames": 9})
    for n in range(3):
        store.create(make_job(n + 1, created_at=100.0 + n))
    for n in range(2):
        store.create(JobRecord.new(job_id(10 + n), "wan2.2-ti2v-tiny", large, 110.0 + n, 30.0))
    store.claim(job_id(10), "gateway-a", now=200.0, lease_s=10.0)
    routes = DenoiserRoutes(min_latent_tokens=100)
    report = unclaimed_jobs_report(store, now=205.0, lease_s=10.0, routed_parallel=routes.parallel)
    assert report == {UNCLAIMED_JOBS: 3.0, UNCLAIMED_PARALLEL_JOBS: 1.0}
    # Without a parallel deployment the figure is the whole, as before.
    assert unclaimed_jobs_report(store, now=205.0, lease_s=10.0) == {UNCLAIMED_JOBS: 4.0}
    store.close()


# --- the serve-config check ------------------------------------------------------------------


def test_a_parallel_entry_without_the_stage_and_a_placement_group_set_under_deployments_are_refused():
    check = check_app(app({}, [{"name": "ParallelDenoiser", "num_replicas": 2}]))
    assert any("'ParallelDenoiser' is not deployed: set args.stages.parallel_denoiser" in p for p in check.problems)
    entry = {"name": "ParallelDenoiser", "placement_group_bundles": [{"CPU": 1}, {"GPU": 1}]}
    check = check_app(app({"stages": {"parallel_denoiser": PARALLEL}}, [entry]))
    assert any("placement_group_bundles=" in p and "set gpus, gpu_share" in p for p in check.problems), check.problems
    # The stage and its entry in agreement: no problem, and the check's view is the stage's.
    check = check_app(app({"stages": {"parallel_denoiser": PARALLEL}}, [{"name": "ParallelDenoiser"}]))
    assert not check.problems and check.stages["parallel_denoiser"] == ParallelDenoiserOptions(**PARALLEL)
    assert DEPLOYMENT_NAMES["parallel_denoiser"] == "ParallelDenoiser"


def test_the_packing_puts_each_replicas_ranks_on_cards_of_their_own_first():
    args = ServiceArgs(stages={"parallel_denoiser": {**PARALLEL, "gpu_share": 0.55, "num_replicas": 1}})
    stages = {name: getattr(args.stages, name) for name in args.stages.deployed()}
    stages["denoiser"] = stages["denoiser"].model_copy(update={"num_gpus": 0.45})
    stages["video_encoder"] = stages["video_encoder"].model_copy(update={"num_gpus": 0.25})
    stages["prompt_encoder"] = stages["prompt_encoder"].model_copy(update={"num_gpus": 0.2})
    placed = gpu_placement(stages, 4)
    assert placed is not None and [card.count("parallel_denoiser") for card in placed] == [1, 1, 1, 1]
    # Three cards cannot hold four ranks, whatever room is left on them.
    assert gpu_placement(stages, 3) is None
    # A single-GPU replica too large for what the ranks leave does not fit either.
    stages["denoiser"] = stages["denoiser"].model_copy(update={"num_gpus": 0.5})
    assert gpu_placement(stages, 4) is None


@pytest.mark.parametrize(
    "name, cards", [("serve_gpu_2x_parallel.yaml", 2), ("serve_gpu_4x.yaml", 4), ("serve_gpu_8x.yaml", 8)]
)
def test_the_multi_gpu_configs_route_720p_to_their_ranks_and_give_each_rank_a_card(name, cards):
    [config] = yaml.safe_load((PROJECT_ROOT / "configs" / name).read_text())["applications"]
    check = check_app(config)
    assert not check.problems, check.problems
    parallel = check.stages["parallel_denoiser"]
    assert isinstance(parallel, ParallelDenoiserOptions) and parallel.gpu_share > 0.5
    placed = gpu_placement(check.stages, cards)
    assert placed is not None
    assert [card.count("parallel_denoiser") for card in placed] == [1] * cards  # every card: one rank
    assert all(card.count("denoiser") <= 1 for card in placed), placed
    catalog = check.args.preset_catalog()
    routes = DenoiserRoutes(parallel.min_latent_tokens)
    lanes = {name: routes.lane(preset_params(catalog.presets[name])) for name in ("preview", "standard", "official")}
    assert lanes == {"preview": "single", "standard": "single", "official": "parallel"}
    assert gpu_placement(check.stages, cards - 1) is None
