"""Deadline-aware admission: decide at submit, never time out later.

For every request the gateway estimates when it would finish (the ETA model
of `eta.py`, the same one its queued event and GET show later): the work
already queued (per stage, from the job store and this gateway's
reservations) spread over the replicas of each stage, plus the request's own
stage times for its shape (`StageTimeEstimator`, learned from measured jobs).
Then, in order:

1. The queue is full (every replica has `max_queue_per_replica` unfinished
   jobs): 429 `over_capacity` with Retry-After, whatever the request. With a
   multi-GPU denoiser, each denoiser deployment has its own queue: a request
   is refused when the one it routes to is full (serve_app/routing.py).
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
never passed off as the one asked for. The decision also says how long one
run may take (`deadline_s`) and whether its tier forces the result cache on,
so the gateway admits each request once and acts on that one decision.
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
class Deadlines:
    """Seconds one run of a request may take, by how it is answered: the request's own
    `deadline_s` either way when it names one, else the configured default of each."""

    sync_s: float  # answered with the video (200)
    job_s: float  # answered with a job (202)

    def to_fit(self, mode: Mode) -> float:
        """The deadline a request must fit to be taken: a waiting client's run is a
        synchronous one; any other request may still become a job."""
        return self.sync_s if mode == "wait" else self.job_s

    def of_run(self, sync: bool) -> float:
        return self.sync_s if sync else self.job_s


@dataclass(frozen=True)
class Decision:
    params: GenerationParams  # what will run
    sync: bool  # answer with the video (200) rather than a job (202)
    eta_s: float  # estimated seconds until the video is ready
    deadline_s: float  # seconds one run of it may take
    load: float | None  # 0-1; None where the service runs without admission
    tier: str | None  # name reported to the client; None without admission
    force_cache: bool = False  # the tier answers from the cache even for `cache: false` (never fills it then)


def as_asked(
    params: GenerationParams, eta_s: float, *, mode: Mode, sync_budget_s: float, deadlines: Deadlines
) -> Decision:
    """The decision of a service that runs without admission (the route tests): every
    request is taken exactly as asked, synchronously when the client waits for it or
    its ETA fits the sync budget; no tier, no load."""
    sync = mode == "wait" or (mode == "auto" and eta_s <= sync_budget_s)
    return Decision(params, sync, eta_s, deadlines.of_run(sync), load=None, tier=None)


class Admission:
    def __init__(
        self,
        config: AdmissionConfig,
        tiers: TierTable,
        estimator: StageTimeEstimator,
        denoiser_max_replicas: int,
        parallel_max_replicas: int = 0,
    ) -> None:
        self.config = config
        self.tiers = tiers
        self.estimator = estimator
        self.denoiser_max_replicas = denoiser_max_replicas
        self.parallel_max_replicas = parallel_max_replicas  # the multi-GPU denoiser's (0: none)

    def _lane(self, snap: LoadSnapshot, parallel: bool) -> tuple[int, int, int]:
        """(unfinished jobs, replicas running or starting, most replicas) of one denoiser deployment."""
        if parallel:
            return snap.parallel_jobs, snap.parallel_replicas, self.parallel_max_replicas
        return snap.active_jobs - snap.parallel_jobs, snap.replicas, self.denoiser_max_replicas

    def lane_capacity(self, snap: LoadSnapshot, parallel: bool = False) -> int:
        """Unfinished jobs one denoiser deployment holds at 100% load."""
        return max(self._lane(snap, parallel)[1], 1) * self.config.max_queue_per_replica

    def capacity(self, snap: LoadSnapshot) -> int:
        """Unfinished jobs the service holds at 100% load (both denoiser deployments, where there are two)."""
        both = self.estimator.routes.enabled
        return self.lane_capacity(snap) + (self.lane_capacity(snap, parallel=True) if both else 0)

    def load(self, snap: LoadSnapshot) -> float:
        queue = min(1.0, snap.active_jobs / self.capacity(snap))
        if snap.gpu_utilization is None:
            return queue
        weight = self.config.gpu_weight
        return (1 - weight) * queue + weight * min(1.0, max(0.0, snap.gpu_utilization))

    def eta_s(self, params: GenerationParams, snap: LoadSnapshot) -> float:
        """Seconds until this request's video would be ready if admitted now."""
        return eta.eta_s(eta.job_work(params, self.estimator), snap, self.config)

    def _option(
        self,
        params: GenerationParams,
        cacheable: GenerationParams | None,
        tier: Tier | None,
        snap: LoadSnapshot,
        load: float,
        deadlines: Deadlines,
    ) -> Decision:
        """What admitting the request at `tier` (None: exactly as asked) would give, synchronously.
        A tier that forces the cache runs the request's `cacheable` form, when there is one."""
        forced = tier is not None and tier.cache == "forced"
        base = cacheable if forced and cacheable is not None else params
        used = base if tier is None else apply_tier(base, tier)
        return Decision(
            used,
            True,
            self.eta_s(used, snap),
            deadlines.of_run(True),
            load,
            EXACT_TIER if tier is None else tier.name,
            forced,
        )

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
        deadline_s: float | Deadlines,
        wait_s: float | None = None,
        cacheable: GenerationParams | None = None,
    ) -> Decision:
        """Admit `params` (or refuse them with a 429/503).

        `deadline_s`: one deadline however the request is answered, or the pair of
        defaults (synchronous, job) of a request that names none. `cacheable`: the
        request's form for the result cache (normalised prompts, derived seed), which
        runs instead of `params` where its tier forces the cache; None without a cache.
        """
        deadlines = deadline_s if isinstance(deadline_s, Deadlines) else Deadlines(deadline_s, deadline_s)
        load = self.load(snap)
        parallel = self.estimator.routes.parallel(params)
        jobs, replicas, most = self._lane(snap, parallel)
        if replicas == 0 and most == 0:
            raise ServiceUnavailable("no denoiser replica can run", retry_after_s=self.config.cold_start_s)
        if not self.config.enabled:
            eta_s = self.eta_s(params, snap)
            sync = mode != "async" and (mode == "wait" or eta_s <= sync_budget_s)
            return Decision(params, sync, eta_s, deadlines.of_run(sync), load, EXACT_TIER)

        capacity = self.lane_capacity(snap, parallel)
        if jobs >= capacity:
            # Time for the queue to drain one slot: the wait ahead, per job.
            per_job = eta.queue_wait_s(snap, self.config, parallel) / max(jobs, 1)
            excess = jobs - capacity + 1
            which = "multi-GPU denoiser" if parallel else "denoiser"
            raise OverCapacity(
                f"the queue is full ({jobs} unfinished jobs for {max(replicas, 1)} {which} replica(s)); retry later",
                retry_after_s=self._retry_after(per_job * excess),
                load=round(load, 3),
            )
        start = self.tiers.for_load(load)
        tiers: list[Tier | None] = [None] if exact else list(self.tiers.tiers[start:])
        options = [self._option(params, cacheable, tier, snap, load, deadlines) for tier in tiers]
        best_eta = min(option.eta_s for option in options)
        if mode == "auto" and options[0].eta_s <= sync_budget_s:
            return options[0]
        limit = deadlines.to_fit(mode)
        if mode == "wait":
            # The client waits up to `wait_s` for the video: the first tier that
            # delivers within that wins, even a lower one.
            within = min(wait_s if wait_s is not None else limit, limit)
            for option in options:
                if option.eta_s <= within:
                    return option
        # Otherwise the job must at least fit its deadline (a waiting client
        # then gets a 202 when its wait ends, and the job goes on).
        for option in options:
            if option.eta_s <= limit:
                sync = mode == "wait"
                return replace(option, sync=sync, deadline_s=deadlines.of_run(sync))
        what = "exactly as asked" if exact else "at any quality tier"
        raise OverCapacity(
            f"cannot finish {what} within {limit:g} s now (estimated {best_eta:.1f} s at load {load:.0%}); "
            "retry later" + ("" if exact else ", or allow a longer deadline"),
            retry_after_s=self._retry_after(best_eta - limit),
            load=round(load, 3),
            estimated_s=round(best_eta, 3),
        )
