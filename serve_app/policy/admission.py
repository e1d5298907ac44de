"""Deadline-aware admission: decide at submit, never time out later.

For every request the gateway estimates when it would finish (the ETA model
of `eta.py`, the same one its queued event and GET show later): the work
already queued (per stage, from the job store and this gateway's
reservations) spread over the replicas of each stage, plus the request's own
stage times for its shape (`StageTimeEstimator`, learned from measured jobs).
Then, in order:

1. The queue is full (every replica has `max_queue_per_replica` unfinished
   jobs): 429 `over_capacity` with Retry-After, whatever the request.
2. Load picks the starting tier (configs/tiers.yaml); `quality: exact`
   always starts, and stays, at the request's own settings.
3. The request's mode decides what "fits":
   - `wait` (Prefer: wait=N: the client waits up to N s for the video): the
     first tier, from the load's down, that finishes within min(N,
     deadline); if none does, the first that fits the deadline (the client
     then gets a 202 after N s and the job goes on, RFC 7240);
   - `auto` (no preference): synchronous when the estimate at the load's
     tier fits the sync budget, else a job (202) at the first tier, from the
     load's down, that fits the job deadline;
   - `async` (Prefer: respond-async): a job, likewise.
4. No tier fits the deadline: 429 `over_capacity`, Retry-After the
   estimated wait until one would. With no denoiser replica and no way to
   start one: 503.

The answer reports the tier and the settings used, so a degraded video is
never passed off as the one asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from serve_app.config import AdmissionConfig
from serve_app.errors import OverCapacity, ServiceUnavailable
from serve_app.estimates import StageTimeEstimator
from serve_app.params import GenerationParams
from serve_app.policy import eta
from serve_app.policy.load import LoadSnapshot
from serve_app.policy.tiers import apply_tier
from serve_app.settings.tiers import Tier, TierTable

Mode = Literal["auto", "wait", "async"]

# Reported as the tier of a request that opted out of degradation.
EXACT_TIER = "exact"


@dataclass(frozen=True)
class Decision:
    params: GenerationParams  # what will run
    sync: bool  # answer with the video (200) rather than a job (202)
    eta_s: float  # estimated seconds until the video is ready
    load: float  # 0-1
    tier: str  # name reported to the client
    force_cache: bool = False  # the tier answers from/fills the cache even for `cache: false`


class Admission:
    def __init__(
        self, config: AdmissionConfig, tiers: TierTable, estimator: StageTimeEstimator, denoiser_max_replicas: int
    ) -> None:
        self.config = config
        self.tiers = tiers
        self.estimator = estimator
        self.denoiser_max_replicas = denoiser_max_replicas

    def capacity(self, snap: LoadSnapshot) -> int:
        """Unfinished jobs the service holds at 100% load."""
        return max(snap.replicas, 1) * self.config.max_queue_per_replica

    def load(self, snap: LoadSnapshot) -> float:
        queue = min(1.0, snap.active_jobs / self.capacity(snap))
        if snap.gpu_utilization is None:
            return queue
        weight = self.config.gpu_weight
        return (1 - weight) * queue + weight * min(1.0, max(0.0, snap.gpu_utilization))

    def eta_s(self, params: GenerationParams, snap: LoadSnapshot) -> float:
        """Seconds until this request's video would be ready if admitted now."""
        return eta.eta_s(eta.job_work(params, self.estimator), snap, self.config)

    def _option(self, params: GenerationParams, tier: Tier | None, snap: LoadSnapshot, load: float) -> Decision:
        """What admitting `params` at `tier` (None: exactly as asked) would give, synchronously."""
        used = params if tier is None else apply_tier(params, tier)
        return Decision(used, True, self.eta_s(used, snap), load, EXACT_TIER if tier is None else tier.name,
                        tier is not None and tier.cache == "forced")

    def _retry_after(self, wait_s: float) -> float:
        return max(self.config.min_retry_after_s, wait_s)

    def decide(
        self,
        params: GenerationParams,
        snap: LoadSnapshot,
        *,
        mode: Mode,
        exact: bool,
        sync_budget_s: float,
        deadline_s: float,
        wait_s: float | None = None,
    ) -> Decision:
        load = self.load(snap)
        if snap.replicas == 0 and self.denoiser_max_replicas == 0:
            raise ServiceUnavailable("no denoiser replica can run", retry_after_s=self.config.cold_start_s)
        if not self.config.enabled:
            return Decision(params, mode != "async" and (mode == "wait" or self.eta_s(params, snap) <= sync_budget_s),
                            self.eta_s(params, snap), load, EXACT_TIER)

        if snap.active_jobs >= self.capacity(snap):
            # Time for the queue to drain one slot: the wait ahead, per job.
            per_job = eta.queue_wait_s(snap, self.config) / max(snap.active_jobs, 1)
            excess = snap.active_jobs - self.capacity(snap) + 1
            raise OverCapacity(
                f"the queue is full ({snap.active_jobs} unfinished jobs for {max(snap.replicas, 1)} denoiser "
                f"replica(s)); retry later",
                retry_after_s=self._retry_after(per_job * excess),
                load=round(load, 3),
            )
        start = self.tiers.for_load(load)
        tiers: list[Tier | None] = [None] if exact else list(self.tiers.tiers[start:])
        options = [self._option(params, tier, snap, load) for tier in tiers]
        best_eta = min(option.eta_s for option in options)
        if mode == "auto" and options[0].eta_s <= sync_budget_s:
            return options[0]
        if mode == "wait":
            # The client waits up to `wait_s` for the video: the first tier that
            # delivers within that wins, even a lower one.
            within = min(wait_s if wait_s is not None else deadline_s, deadline_s)
            for option in options:
                if option.eta_s <= within:
                    return option
        # Otherwise the job must at least fit its deadline (a waiting client
        # then gets a 202 when its wait ends, and the job goes on).
        for option in options:
            if option.eta_s <= deadline_s:
                return replace(option, sync=mode == "wait")
        limit = deadline_s
        what = "exactly as asked" if exact else "at any quality tier"
        raise OverCapacity(
            f"cannot finish {what} within {limit:g} s now (estimated {best_eta:.1f} s at load {load:.0%}); "
            "retry later" + ("" if exact else ", or allow a longer deadline"),
            retry_after_s=self._retry_after(best_eta - limit),
            load=round(load, 3),
            estimated_s=round(best_eta, 3),
        )
