"""Ray Serve autoscaling for the denoiser: replicas follow the queue of denoise work.

Wired per deployment through `StageOptions.autoscaling` (policy
'queue_depth'), which becomes

    autoscaling_config:
      policy: {policy_function: serve_app.policy.autoscaling:QueueDepthPolicy,
               policy_kwargs: {jobs_per_replica: 1}}

The signal is the denoise work waiting, in jobs:

- requests at the denoiser: queued at every caller's handle plus running
  (Ray's `total_num_requests`, averaged over `look_back_period_s`): jobs a
  gateway has dispatched;
- plus jobs in the store that no gateway holds (`unclaimed_jobs`, reported
  by each denoiser replica through `record_autoscaling_stats`): jobs that
  are accepted but wait for a dispatcher, e.g. after a gateway restart.

Desired replicas = ceil(signal / jobs_per_replica). Ray then applies
min/max replicas (min 0 allows scale to zero, and a request arriving then
starts one at once), upscale/downscale delays and smoothing. A replica
being removed finishes its running job first (`graceful_shutdown_timeout_s`,
checked to cover the longest deadline, see serve_app/config.py).
"""

from __future__ import annotations

import math
from typing import Any

# Name of the custom metric the denoiser reports (deployments/denoiser.py).
UNCLAIMED_JOBS = "unclaimed_jobs"


def waiting_jobs(total_num_requests: float, aggregated_metrics: dict[str, dict[Any, float]] | None) -> float:
    """Requests at the denoiser plus jobs no gateway has dispatched yet."""
    per_replica = (aggregated_metrics or {}).get(UNCLAIMED_JOBS) or {}
    # Every replica counts the same shared store: take the largest, not the sum.
    unclaimed = max(per_replica.values(), default=0.0)
    return float(total_num_requests) + float(unclaimed)


def desired_replicas(waiting: float, jobs_per_replica: float) -> int:
    return math.ceil(waiting / jobs_per_replica - 1e-9) if waiting > 0 else 0


class QueueDepthPolicy:
    """A Ray Serve custom autoscaling policy (class form: Ray builds it with policy_kwargs)."""

    def __init__(self, jobs_per_replica: float = 1.0) -> None:
        if jobs_per_replica <= 0:
            raise ValueError(f"jobs_per_replica={jobs_per_replica} must be > 0")
        self.jobs_per_replica = jobs_per_replica

    def __call__(self, ctx) -> tuple[int, dict[str, Any]]:
        waiting = waiting_jobs(ctx.total_num_requests, ctx.aggregated_metrics)
        desired = desired_replicas(waiting, self.jobs_per_replica)
        # Kept in the policy state so operators (and tests) can see the signal.
        return desired, {"waiting_jobs": waiting, "desired": desired}


class UnclaimedJobs:
    """The `unclaimed_jobs` figure a denoiser replica reports: accepted jobs no gateway holds.

    Opened lazily in the replica (only a deployment that scales on queue depth
    asks), on the same job store the gateways write.
    """

    # Enough to ask for every replica there can be; counting further changes nothing.
    LIMIT = 1000

    def __init__(self, job_store: str, data_dir, lease_s: float) -> None:
        self._url, self._data_dir, self._lease_s = job_store, data_dir, lease_s
        self._store = None

    def count(self) -> int:
        import time

        from serve_app.jobs.stores import open_job_store

        if self._store is None:
            self._store = open_job_store(self._url, self._data_dir)
        return len(self._store.claimable(time.time(), self._lease_s, self.LIMIT))
