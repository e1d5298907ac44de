"""Ray Serve autoscaling for the denoiser: replicas follow the queue of denoise work.

Wired per deployment through `StageOptions.autoscaling` (policy
'queue_depth'), which becomes

    autoscaling_config:
      policy: {policy_function: serve_app.policy.autoscaling:QueueDepthPolicy,
               policy_kwargs: {jobs_per_replica: 1}}

and, once per application, in the serve config (serve_config.yaml,
configs/serve_gpu_2x.yaml):

    applications:
      - name: video
        autoscaling_policy: {policy_function: serve_app.policy.autoscaling:application_policy}

The signal is the denoise work waiting, in jobs:

- requests at the denoiser: queued at every caller's handle plus running
  (Ray's `total_num_requests`, averaged over `look_back_period_s`): jobs a
  gateway has dispatched;
- plus jobs in the store that no gateway holds (`unclaimed_jobs`): accepted
  jobs waiting for a dispatcher, e.g. after a gateway restart. The gateways
  report it (`Gateway.record_autoscaling_stats`), since they hold the job
  store; a denoiser replica may run on a node that cannot see it (SQLite),
  and with min_replicas 0 there may be no denoiser replica to ask at all.

A deployment-level policy sees only its own deployment's metrics, so the
figure reaches the denoiser's decision through Ray's application-level
policy (`application_policy`), which sees every autoscaling deployment of
the app. It then decides for all of them, so deployments that do not scale
on queue depth get Ray's default policy, as they would without it. Ray
collects custom metrics, and shows a deployment to that policy, only when
the deployment has an autoscaling_config: a gateway with a fixed count gets
one whose bounds pin that count (serve_app/app.py).

With a multi-GPU denoiser (serve_app/routing.py), each denoiser deployment
scales on its own queue: Ray's request counts are per deployment already,
and the gateways report the undispatched jobs per deployment
(`unclaimed_jobs` for the single-GPU denoiser, `unclaimed_parallel_jobs` for
the jobs that route to the multi-GPU one). The policy's `lane` kwarg
('single' or 'parallel', set by the stage's options) says which figure is its.

Desired replicas = ceil(signal / jobs_per_replica). Ray then applies
min/max replicas (min 0 allows scale to zero; a job waiting then starts one
at once), upscale/downscale delays and smoothing. A replica being removed
finishes its running job first (`graceful_shutdown_timeout_s`, checked to
cover the longest deadline, see serve_app/config.py).

Ray 2.60 takes an application-level policy only from a config file
(`serve run` / `serve deploy`), not from `serve.run(app)` in Python. Without
it `QueueDepthPolicy` runs alone on the denoiser's own requests: dispatched
jobs count, undispatched ones do not (it logs a warning once).

Ray pickles this module by value into its controller: it imports only Ray
and the standard library, so the controller needs no project code.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

log = logging.getLogger("ray.serve")

# Names of the custom metrics the gateways report (deployments/gateway.py): undispatched jobs
# routed to the single-GPU denoiser, and to the multi-GPU one.
UNCLAIMED_JOBS = "unclaimed_jobs"
UNCLAIMED_PARALLEL_JOBS = "unclaimed_parallel_jobs"
METRIC_OF_LANE = {"single": UNCLAIMED_JOBS, "parallel": UNCLAIMED_PARALLEL_JOBS}
# Import paths as the serve configs name them.
QUEUE_DEPTH_POLICY = "serve_app.policy.autoscaling:QueueDepthPolicy"
APPLICATION_POLICY = "serve_app.policy.autoscaling:application_policy"
# Enough to ask for every replica there can be; counting further changes nothing.
UNCLAIMED_LIMIT = 1000


def waiting_jobs(total_num_requests: float, unclaimed: float) -> float:
    """Requests at the denoiser plus jobs no gateway has dispatched yet."""
    return float(total_num_requests) + float(unclaimed)


def desired_replicas(waiting: float, jobs_per_replica: float) -> int:
    return math.ceil(waiting / jobs_per_replica - 1e-9) if waiting > 0 else 0


def reported_unclaimed(contexts: Iterable[AutoscalingContext], metric: str = UNCLAIMED_JOBS) -> float:
    """The `metric` figure (`unclaimed_jobs` by default), from whichever replicas report it (the gateways).

    Every gateway replica counts the same shared store: the largest report
    counts, once, not their sum.
    """
    figures = [value for ctx in contexts for value in ((ctx.aggregated_metrics or {}).get(metric) or {}).values()]
    return max(figures, default=0.0)


def scales_on_queue_depth(ctx: AutoscalingContext) -> bool:
    """Whether the deployment's own autoscaling_config names QueueDepthPolicy."""
    policy = getattr(ctx.config, "policy", None)
    if policy is None or not isinstance(policy.policy_function, str):
        return False
    # Ray keeps a string path as given ('module:name') and writes a callable's as 'module.name'.
    return policy.policy_function.replace(":", ".") == QUEUE_DEPTH_POLICY.replace(":", ".")


class QueueDepthPolicy:
    """A Ray Serve custom autoscaling policy (class form: Ray builds it with policy_kwargs).

    On its own (no application-level policy) it sees only the denoiser's
    requests; `application_policy` calls `decide` with the gateways' figure.
    """

    def __init__(self, jobs_per_replica: float = 1.0, lane: str = "single") -> None:
        if jobs_per_replica <= 0:
            raise ValueError(f"jobs_per_replica={jobs_per_replica} must be > 0")
        if lane not in METRIC_OF_LANE:
            raise ValueError(f"lane={lane!r} must be one of {sorted(METRIC_OF_LANE)}")
        self.jobs_per_replica = jobs_per_replica
        self.lane = lane  # whose undispatched jobs count: the single-GPU denoiser's or the multi-GPU one's
        self._warned = False

    def decide(self, total_num_requests: float, unclaimed: float) -> tuple[int, dict[str, Any]]:
        waiting = waiting_jobs(total_num_requests, unclaimed)
        desired = desired_replicas(waiting, self.jobs_per_replica)
        # Kept in the policy state so operators (and tests) can see the signal.
        return desired, {"waiting_jobs": waiting, "unclaimed_jobs": float(unclaimed), "desired": desired}

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        if not self._warned:
            self._warned = True
            log.warning(
                "%s scales on its own requests only: jobs no gateway has dispatched are not counted. "
                "Deploy from a serve config with autoscaling_policy: {policy_function: %s} to count them.",
                ctx.deployment_name,
                APPLICATION_POLICY,
            )
        return self.decide(ctx.total_num_requests, 0.0)


def application_policy(
    contexts: dict[Any, AutoscalingContext],
) -> tuple[dict[Any, float], dict[Any, dict[str, Any]]]:
    """Ray Serve's application-level policy: one decision per autoscaling deployment.

    Queue-depth deployments (the denoiser) count the gateways' `unclaimed_jobs`
    besides their own requests; every other deployment gets Ray's default
    policy, as it would without an application-level policy. Ray applies each
    deployment's bounds, delays and scaling factors afterwards, as it does for
    deployment-level policies.
    """
    decisions: dict[Any, float] = {}
    states: dict[Any, dict[str, Any]] = {}
    for deployment_id, ctx in contexts.items():
        if scales_on_queue_depth(ctx):
            assert ctx.config is not None  # scales_on_queue_depth read its policy
            policy = QueueDepthPolicy(**ctx.config.policy.policy_kwargs)
            unclaimed = reported_unclaimed(contexts.values(), METRIC_OF_LANE[policy.lane])
            decisions[deployment_id], states[deployment_id] = policy.decide(ctx.total_num_requests, unclaimed)
        else:
            decisions[deployment_id], states[deployment_id] = replica_queue_length_autoscaling_policy(ctx)
    return decisions, states


def unclaimed_jobs_report(
    store: Any, now: float, lease_s: float, routed_parallel: Callable[[Any], bool] | None = None
) -> dict[str, float]:
    """What a gateway replica reports to Ray: accepted jobs no gateway holds, in `store`; with
    `routed_parallel` (a job's params -> whether it goes to the multi-GPU denoiser), split by
    the denoiser deployment they will wait for."""
    try:
        unclaimed = store.claimable(now, lease_s, UNCLAIMED_LIMIT)
        if routed_parallel is None:
            return {UNCLAIMED_JOBS: float(len(unclaimed))}
        ids = set(unclaimed)
        parallel = sum(1 for job in store.active(UNCLAIMED_LIMIT) if job.id in ids and routed_parallel(job.params))
        return {UNCLAIMED_JOBS: float(len(ids) - parallel), UNCLAIMED_PARALLEL_JOBS: float(parallel)}
    except Exception:
        log.warning("could not count unclaimed jobs for autoscaling", exc_info=True)
        return {}
