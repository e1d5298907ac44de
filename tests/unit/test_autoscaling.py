"""The denoiser's autoscaling on queue depth, without a cluster: the policy and its wiring.

The gateways report the jobs waiting for a dispatcher; the application-level
policy adds them to the denoiser's own requests and leaves every other
deployment to Ray's default policy (serve_app/policy/autoscaling.py).
"""

from __future__ import annotations

import pytest
import yaml
from ray.serve.autoscaling_policy import (
    _apply_app_level_autoscaling_config,
    replica_queue_length_autoscaling_policy,
)
from ray.serve.config import AutoscalingConfig, AutoscalingContext
from ray.serve.schema import ServeDeploySchema

from serve_app.app import gateway_options
from serve_app.config import ServiceArgs
from serve_app.jobs.sqlite_store import SQLiteJobStore
from serve_app.paths import PROJECT_ROOT
from serve_app.policy.autoscaling import (
    APPLICATION_POLICY,
    QUEUE_DEPTH_POLICY,
    UNCLAIMED_JOBS,
    QueueDepthPolicy,
    application_policy,
    desired_replicas,
    reported_unclaimed,
    scales_on_queue_depth,
    unclaimed_jobs_report,
    waiting_jobs,
)
from tests.helpers.jobs import make_job

QUEUE_DEPTH = {"policy_function": QUEUE_DEPTH_POLICY, "policy_kwargs": {"jobs_per_replica": 2.0}}


def context(
    name: str,
    requests: float = 0.0,
    *,
    unclaimed: dict | None = None,
    policy: dict | None = None,
    replicas: int = 1,
    min_replicas: int = 0,
    max_replicas: int = 4,
) -> AutoscalingContext:
    config = AutoscalingConfig(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_ongoing_requests=1,
        upscale_delay_s=0,
        downscale_delay_s=0,
        **({"policy": policy} if policy else {}),
    )
    return AutoscalingContext(
        deployment_id=name,
        deployment_name=name,
        app_name="video",
        current_num_replicas=replicas,
        target_num_replicas=replicas,
        running_replicas=[],
        total_num_requests=requests,
        total_queued_requests=0.0,
        aggregated_metrics={UNCLAIMED_JOBS: unclaimed} if unclaimed else {},
        raw_metrics={},
        capacity_adjusted_min_replicas=min_replicas,
        capacity_adjusted_max_replicas=max_replicas,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=0.0,
        config=config,
    )


def app(*contexts: AutoscalingContext) -> dict[str, AutoscalingContext]:
    return {ctx.deployment_name: ctx for ctx in contexts}


# --- the pure parts -------------------------------------------------------------------


def test_queue_depth_counts_requests_and_jobs_no_gateway_dispatched():
    policy = QueueDepthPolicy(jobs_per_replica=2)
    assert policy.decide(0, 0)[0] == 0
    assert policy.decide(1, 0)[0] == 1
    assert policy.decide(4, 0)[0] == 2
    desired, state = policy.decide(3, 2)
    assert desired == 3 and state == {"waiting_jobs": 5.0, "unclaimed_jobs": 2.0, "desired": 3}


def test_waiting_jobs_and_desired_replicas_edges():
    assert waiting_jobs(1.5, 0) == 1.5
    assert desired_replicas(0.0, 1.0) == 0
    assert desired_replicas(2.0, 1.0) == 2
    assert desired_replicas(2.1, 1.0) == 3
    with pytest.raises(ValueError, match="jobs_per_replica=0"):
        QueueDepthPolicy(jobs_per_replica=0)


def test_gateway_replicas_sharing_one_store_count_once():
    gateways = context("Gateway", unclaimed={"g1": 2.0, "g2": 2.0, "g3": 1.0})
    assert reported_unclaimed([gateways, context("Denoiser", 5)]) == 2.0
    # No gateway reports (none autoscales, or its store failed): the requests still count.
    assert reported_unclaimed([context("Denoiser", 5)]) == 0.0


def test_queue_depth_deployments_are_known_by_their_own_config():
    assert scales_on_queue_depth(context("Denoiser", policy=QUEUE_DEPTH))
    dotted = {**QUEUE_DEPTH, "policy_function": QUEUE_DEPTH_POLICY.replace(":", ".")}
    assert scales_on_queue_depth(context("Denoiser", policy=dotted))
    assert not scales_on_queue_depth(context("VideoEncoder"))


# --- the application-level policy ------------------------------------------------------


def test_the_denoiser_scales_on_the_gateways_figure_and_the_others_as_ray_would():
    contexts = app(
        context("Gateway", unclaimed={"g1": 3.0, "g2": 3.0}, min_replicas=2, max_replicas=2, replicas=2),
        context("Denoiser", 1, policy=QUEUE_DEPTH),
        context("VideoEncoder", 4, replicas=2),
    )
    decisions, states = application_policy(contexts)
    # (1 request + 3 undispatched jobs) / 2 jobs per replica.
    assert decisions["Denoiser"] == 2 and states["Denoiser"]["waiting_jobs"] == 4.0
    for name in ("Gateway", "VideoEncoder"):
        assert (decisions[name], states[name]) == replica_queue_length_autoscaling_policy(contexts[name])
    assert decisions["VideoEncoder"] == 4


def test_with_no_denoiser_replica_a_waiting_job_starts_one_at_once():
    # Through Ray's own wrapper (delays, scaling factors): nothing has reached the
    # denoiser, which has no replica to report anything; the gateway's figure starts one.
    policy = _apply_app_level_autoscaling_config(application_policy)
    denoiser = {"policy": QUEUE_DEPTH, "replicas": 0, "max_replicas": 2}
    decisions, _ = policy(app(context("Gateway", unclaimed={"g1": 1.0}), context("Denoiser", 0, **denoiser)))
    assert decisions["Denoiser"] == 1
    decisions, _ = policy(app(context("Gateway", unclaimed={"g1": 0.0}), context("Denoiser", 0, **denoiser)))
    assert decisions["Denoiser"] == 0


def test_alone_the_denoisers_policy_counts_its_own_requests():
    # Deployed without the application-level policy (serve.run from Python): no
    # gateway figure reaches it, and it says so once in the controller's log.
    policy = QueueDepthPolicy(jobs_per_replica=1)
    assert policy(context("Denoiser", 3, unclaimed={"r1": 5.0}, policy=QUEUE_DEPTH))[0] == 3


# --- what a gateway reports ------------------------------------------------------------


def test_a_gateway_reports_the_jobs_nobody_holds(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    for n in range(3):
        store.create(make_job(n, created_at=100.0 + n))
    store.claim(make_job(0).id, "gateway-a", now=200.0, lease_s=10.0)
    assert unclaimed_jobs_report(store, now=205.0, lease_s=10.0) == {UNCLAIMED_JOBS: 2.0}
    # A lease gone stale is waiting for a dispatcher again.
    assert unclaimed_jobs_report(store, now=215.0, lease_s=10.0) == {UNCLAIMED_JOBS: 3.0}
    store.close()


def test_a_store_error_reports_nothing_rather_than_zero():
    class Broken:
        def claimable(self, now, lease_s, limit):
            raise ConnectionError("redis restarting")

    assert unclaimed_jobs_report(Broken(), now=0.0, lease_s=1.0) == {}


# --- wiring ------------------------------------------------------------------------------


def queue_depth_args(**gateway) -> ServiceArgs:
    return ServiceArgs(
        stages={
            "gateway": gateway,
            "denoiser": {
                "max_ongoing_requests": 1,
                "autoscaling": {"policy": "queue_depth", "min_replicas": 0, "max_replicas": 2, "look_back_period_s": 3},
            },
        }
    )


def test_a_fixed_count_gateway_gets_bounds_that_pin_it_when_the_denoiser_scales_on_queue_depth():
    options = gateway_options(queue_depth_args(num_replicas=2))
    assert "num_replicas" not in options
    config = AutoscalingConfig(**options["autoscaling_config"])
    assert (config.min_replicas, config.max_replicas, config.look_back_period_s) == (2, 2, 3)
    assert config.policy.is_default_policy_function()


def test_other_gateways_keep_their_options():
    assert gateway_options(ServiceArgs()) == ServiceArgs().deployment_options("gateway")
    autoscaled = queue_depth_args(autoscaling={"min_replicas": 1, "max_replicas": 3})
    assert gateway_options(autoscaled) == autoscaled.deployment_options("gateway")


SERVE_CONFIGS = [PROJECT_ROOT / "serve_config.yaml", *sorted((PROJECT_ROOT / "configs").glob("serve_*.yaml"))]


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_every_config_with_a_queue_depth_stage_names_the_application_policy(path):
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for application in config.applications:
        args = ServiceArgs.model_validate(application.args)
        if args.stages.queue_depth_look_back_s() is not None:
            assert application.autoscaling_policy == {"policy_function": APPLICATION_POLICY}, path.name
