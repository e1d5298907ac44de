"""Quality tiers and deadline-aware admission, without Ray (autoscaling: test_autoscaling.py)."""

from __future__ import annotations

import math

import pytest

from serve_app.config import AdmissionConfig, ServiceArgs
from serve_app.errors import OverCapacity, ServiceUnavailable
from serve_app.estimates import StageTimeEstimator
from serve_app.params import GenerationParams
from serve_app.policy import eta
from serve_app.policy.admission import EXACT_TIER, Admission
from serve_app.policy.load import LoadMonitor, LoadSnapshot, work_ahead
from serve_app.policy.tiers import Tier, TierTable, apply_tier, changes
from serve_app.settings.speed import FastKnobs
from tests.helpers.jobs import make_job, with_status

TIERS = ServiceArgs().tier_table()


def params(steps: int = 25, frames: int = 17, **kw) -> GenerationParams:
    base = dict(
        prompt="a boat",
        negative_prompt="",
        width=64,
        height=64,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=5.0,
        fps=8,
        seed=1,
        preset="preview",
    )
    return GenerationParams(**{**base, **kw})


class LinearEstimator(StageTimeEstimator):
    """One second per 10 steps-x-frames unit: estimates a test can compute by hand."""

    def __init__(self) -> None:
        super().__init__(prior_step_s_per_ktoken=1.0, prior_decode_s_per_mpixel=1.0)

    def stage_estimates(self, p: GenerationParams) -> tuple[float, float, float]:
        return 0.0, p.num_inference_steps * p.num_frames / 100, 0.0


def admission(**config) -> Admission:
    return Admission(AdmissionConfig(**config), TIERS, LinearEstimator(), denoiser_max_replicas=2)


def snap(
    active: int = 0,
    work: float = 0.0,
    replicas: int = 1,
    gpu: float | None = None,
    decode: float = 0.0,
    encoders: int = 1,
    starting: int = 0,
) -> LoadSnapshot:
    return LoadSnapshot(
        replicas=replicas,
        active_jobs=active,
        denoise_ahead_s=work,
        gpu_utilization=gpu,
        decode_ahead_s=decode,
        encoder_replicas=encoders,
        starting=starting,
    )


class StagedEstimator(StageTimeEstimator):
    """Per job: 0.5 s prompt encoding, 1 s per 10 steps denoising, 2 s decode + mp4."""

    def __init__(self) -> None:
        super().__init__(prior_step_s_per_ktoken=1.0, prior_decode_s_per_mpixel=1.0)

    def stage_estimates(self, p: GenerationParams) -> tuple[float, float, float]:
        return 0.5, p.num_inference_steps / 10, 2.0


# --- tiers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "load, tier",
    [
        (0.0, "full"),
        (0.49, "full"),
        (0.5, "reduced"),
        (0.79, "reduced"),
        (0.8, "minimal"),
        (1.0, "minimal"),
        (3.0, "minimal"),
    ],
)
def test_tier_switches_at_the_configured_loads(load, tier):
    assert TIERS.tiers[TIERS.for_load(load)].name == tier


def test_tier_caps_lower_and_never_raise():
    reduced = Tier(name="reduced", max_load=0.8, max_steps=20, max_frames=13)
    assert apply_tier(params(25, 17), reduced) == params(20, 13)
    low = params(10, 9)
    assert apply_tier(low, reduced) is low
    assert changes(params(25, 17), params(20, 13)) == {
        "num_inference_steps": {"requested": 25, "used": 20},
        "num_frames": {"requested": 17, "used": 13},
    }


def test_tier_table_must_cover_every_load_in_order():
    with pytest.raises(ValueError, match="strictly increasing"):
        TierTable(tiers=[Tier(name="a", max_load=0.8), Tier(name="b", max_load=0.5), Tier(name="c", max_load=1)])
    with pytest.raises(ValueError, match=">= 1.0"):
        TierTable(tiers=[Tier(name="a", max_load=0.5)])
    with pytest.raises(ValueError, match="unique"):
        TierTable(tiers=[Tier(name="a", max_load=0.5), Tier(name="a", max_load=1)])


# --- load -------------------------------------------------------------------------------


def test_load_is_queue_depth_per_replica_nudged_by_gpu_use():
    a = admission(max_queue_per_replica=4, gpu_weight=0.2)
    assert a.load(snap(active=2, replicas=1)) == 0.5
    assert a.load(snap(active=2, replicas=2)) == 0.25
    assert a.load(snap(active=2, replicas=1, gpu=1.0)) == pytest.approx(0.8 * 0.5 + 0.2)
    assert a.load(snap(active=0, replicas=1, gpu=0.0)) == 0.0


def test_work_ahead_is_kept_per_stage_and_shrinks_with_progress():
    estimator = StagedEstimator()
    queued = make_job(1)  # 2 steps: 0.5 + 0.2 s on the denoise lane, 2 s on the decode lane
    running = with_status(make_job(2), "in_progress", progress=50)
    denoised = with_status(make_job(3), "in_progress", progress=99)  # its whole decode is still ahead
    done = with_status(make_job(4), "completed")
    count, work = work_ahead([queued, running, denoised, done], estimator)
    assert count == 3
    assert work.denoise_s == pytest.approx(0.7 + 0.1 + 0.002)
    assert work.decode_s == pytest.approx(3 * 2.0)


def test_stages_on_shared_hardware_add_up_and_on_separate_hardware_overlap():
    shared, separate = AdmissionConfig(), AdmissionConfig(stages_share_hardware=False)
    assert shared.stages_share_hardware  # the conservative default
    load = snap(active=3, work=6.0, replicas=2, decode=4.0, encoders=1)
    assert eta.queue_wait_s(load, shared) == pytest.approx(6.0 / 2 + 4.0)
    assert eta.queue_wait_s(load, separate) == pytest.approx(max(6.0 / 2, 4.0))
    own = eta.job_work(params(20), StagedEstimator())
    assert (own.denoise_s, own.decode_s) == pytest.approx((2.5, 2.0))
    assert eta.eta_s(own, load, shared) == pytest.approx(7.0 + 4.5)
    # A 10 s deadline: admitted on separate hardware, refused where decode and denoise contend.
    a = Admission(shared, TIERS, StagedEstimator(), denoiser_max_replicas=2)
    with pytest.raises(OverCapacity):
        a.decide(params(20), load, mode="async", exact=True, sync_budget_s=5, deadline_s=10)
    b = Admission(separate, TIERS, StagedEstimator(), denoiser_max_replicas=2)
    decision = b.decide(params(20), load, mode="async", exact=True, sync_budget_s=5, deadline_s=10)
    assert decision.eta_s == pytest.approx(4.0 + 4.5)


def test_load_monitor_keeps_the_last_replica_count_when_a_poll_fails():
    calls = iter([2, RuntimeError("controller busy"), None])

    def replicas():
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    monitor = LoadMonitor(
        active_jobs=lambda: [make_job(1)],
        estimator=LinearEstimator(),
        replicas=replicas,
        gpu_utilization=lambda: 0.25,
        refresh_s=1.0,
        initial_replicas=1,
    )
    assert monitor.snapshot().replicas == 1
    monitor.refresh()
    assert monitor.snapshot() == LoadSnapshot(2, 1, pytest.approx(0.1), 0.25, 0.0, 1, 0)
    monitor.refresh()
    monitor.refresh()
    assert monitor.snapshot().replicas == 2


def test_reservations_count_until_the_job_is_stored_and_identical_requests_share_one():
    stored: list = []
    monitor = LoadMonitor(
        active_jobs=lambda: list(stored),
        estimator=StagedEstimator(),
        replicas=lambda: 1,
        gpu_utilization=None,
        refresh_s=1.0,
        initial_replicas=1,
    )
    first, second, other = make_job(1, created_at=1.0), make_job(2, created_at=2.0), make_job(3, created_at=3.0)
    first.cache_key = "k"
    one = monitor.reserve("k", first)
    two = monitor.reserve("k", second)  # same cache key: one single-flight job
    three = monitor.reserve(other.id, other)
    snap_ = monitor.snapshot()
    assert (snap_.active_jobs, snap_.denoise_ahead_s, snap_.decode_ahead_s) == (2, pytest.approx(1.4), 4.0)
    # A job's ETA waits only for what is ahead of it.
    assert monitor.snapshot(before=other).active_jobs == 1
    stored.append(first)  # stored: counted once, as a job
    assert monitor.snapshot().active_jobs == 2
    one.release()
    one.release()  # twice is once
    two.release()
    three.release()
    assert monitor.reserved == 0 and monitor.snapshot().active_jobs == 1


# --- admission -------------------------------------------------------------------------


def test_idle_service_answers_synchronously_as_asked():
    decision = admission().decide(params(25, 17), snap(), mode="auto", exact=False, sync_budget_s=15, deadline_s=600)
    assert decision.sync and decision.tier == "full" and decision.params == params(25, 17)
    assert decision.eta_s == pytest.approx(25 * 17 / 100)


def test_load_picks_a_lower_tier_and_says_what_changed():
    # 2 of 4 slots busy: 50% load -> "reduced" (20 steps, 13 frames).
    decision = admission().decide(
        params(25, 17), snap(active=2, work=1.0), mode="auto", exact=False, sync_budget_s=15, deadline_s=600
    )
    assert decision.tier == "reduced"
    assert decision.params == params(20, 13)
    assert decision.params != params(25, 17)
    assert decision.eta_s == pytest.approx(1.0 + 20 * 13 / 100)
    # 4 of 5 slots: 80% -> "minimal", which also forces the cache on.
    heavy = admission(max_queue_per_replica=5).decide(
        params(25, 17), snap(active=4, work=1.0), mode="auto", exact=False, sync_budget_s=15, deadline_s=600
    )
    assert (heavy.tier, heavy.params, heavy.force_cache) == ("minimal", params(15, 9), True)


def test_exact_quality_is_never_degraded():
    decision = admission().decide(
        params(25, 17), snap(active=3, work=1.0), mode="auto", exact=True, sync_budget_s=15, deadline_s=600
    )
    assert decision.tier == EXACT_TIER and decision.params == params(25, 17)


def test_a_waiting_client_gets_a_lower_tier_that_fits_its_deadline():
    # Idle (tier full) but 20 s of work queued: 25x17 (4.25 s) misses a 23 s wait;
    # reduced (2.6 s) fits it.
    decision = admission(max_queue_per_replica=100).decide(
        params(25, 17), snap(active=1, work=20.0), mode="wait", exact=False, sync_budget_s=15, deadline_s=30, wait_s=23
    )
    assert decision.sync and decision.tier == "reduced"


def test_nothing_fits_is_429_with_retry_after_never_a_doomed_sync_request():
    with pytest.raises(OverCapacity) as err:
        admission(max_queue_per_replica=100).decide(
            params(25, 17),
            snap(active=1, work=40.0),
            mode="wait",
            exact=False,
            sync_budget_s=15,
            deadline_s=30,
            wait_s=30,
        )
    # Best tier: minimal, 40 + 1.35 s estimated against 30 s: retry in ~12 s.
    assert err.value.status_code == 429 and err.value.code == "over_capacity"
    assert err.value.headers() == {"Retry-After": str(math.ceil(40 + 1.35 - 30))}
    assert "within 30 s" in err.value.message


def test_exact_request_that_cannot_wait_is_refused():
    with pytest.raises(OverCapacity, match="exactly as asked"):
        admission(max_queue_per_replica=100).decide(
            params(25, 17),
            snap(active=1, work=28.0),
            mode="wait",
            exact=True,
            sync_budget_s=15,
            deadline_s=30,
            wait_s=30,
        )


def test_auto_mode_queues_a_long_request_as_a_job_at_the_loads_tier():
    decision = admission(max_queue_per_replica=100).decide(
        params(25, 17), snap(active=1, work=40.0), mode="auto", exact=False, sync_budget_s=15, deadline_s=600
    )
    assert not decision.sync and decision.tier == "full"


def test_full_queue_is_refused_whatever_the_request():
    with pytest.raises(OverCapacity, match="queue is full") as err:
        admission(max_queue_per_replica=2).decide(
            params(), snap(active=4, work=8.0, replicas=2), mode="async", exact=False, sync_budget_s=15, deadline_s=600
        )
    # 8 s of work over 4 jobs and 2 replicas: one slot frees in ~1 s.
    assert err.value.retry_after_s == 1


def test_cold_start_is_counted_and_no_replica_at_all_is_503():
    a = admission(cold_start_s=60)
    decision = a.decide(params(), snap(replicas=0), mode="auto", exact=False, sync_budget_s=15, deadline_s=600)
    assert not decision.sync and decision.eta_s == pytest.approx(60 + 4.25)
    none = Admission(AdmissionConfig(), TIERS, LinearEstimator(), denoiser_max_replicas=0)
    with pytest.raises(ServiceUnavailable):
        none.decide(params(), snap(replicas=0), mode="auto", exact=False, sync_budget_s=15, deadline_s=600)


@pytest.mark.parametrize(
    "work, serving, starting, wait",
    [
        (30.0, 1, 1, 30.0),  # done before the second replica has started: it does not help
        (100.0, 1, 1, 80.0),  # 60 s on one replica, then the remaining 40 s split over two
        (10.0, 0, 1, 70.0),  # nothing serves yet: the start, then the work
        (40.0, 2, 0, 20.0),
    ],
)
def test_a_starting_replica_takes_work_only_after_its_cold_start(work, serving, starting, wait):
    assert eta.lane_wait_s(work, serving, starting, start_s=60.0) == pytest.approx(wait)


def test_a_scale_up_in_progress_does_not_admit_what_one_replica_cannot_finish():
    """Seen on two H100s: the second denoiser was STARTING (about a minute), admission
    counted it as capacity at once, and 20 s requests it accepted failed their deadline."""
    a = admission(cold_start_s=60, max_queue_per_replica=16)
    ahead = snap(active=8, work=16.0, replicas=2, starting=1)  # 16 s queued, one replica serving
    with pytest.raises(OverCapacity):
        a.decide(params(steps=25, frames=17), ahead, mode="auto", exact=True, sync_budget_s=15, deadline_s=20)
    # Had the second replica been serving, the same request would fit (8 s wait + 4.25 s).
    fits = a.decide(
        params(steps=25, frames=17),
        snap(active=8, work=16.0, replicas=2),
        mode="auto",
        exact=True,
        sync_budget_s=15,
        deadline_s=20,
    )
    assert fits.eta_s == pytest.approx(8 + 4.25)


def test_load_monitor_reads_serving_and_starting_replicas():
    from serve_app.policy.load import ReplicaCount

    monitor = LoadMonitor(
        active_jobs=lambda: [],
        estimator=LinearEstimator(),
        replicas=lambda: ReplicaCount(1, 1),
        gpu_utilization=None,
        refresh_s=1.0,
        initial_replicas=1,
        encoder_replicas=lambda: ReplicaCount(1, 1),
    )
    monitor.refresh()
    view = monitor.snapshot()
    assert (view.replicas, view.starting, view.encoder_replicas) == (2, 1, 1)


def test_admission_off_accepts_everything_as_asked():
    a = admission(enabled=False, max_queue_per_replica=1)
    decision = a.decide(
        params(25, 17),
        snap(active=50, work=500.0),
        mode="wait",
        exact=False,
        sync_budget_s=15,
        deadline_s=30,
        wait_s=30,
    )
    assert decision.sync and decision.params == params(25, 17) and decision.tier == EXACT_TIER


def test_a_short_wait_that_no_tier_meets_still_gets_its_job_if_the_deadline_fits():
    # RFC 7240: wait=N asks for an answer within N s, not a refusal: the job runs
    # at the load's tier (full here), and the client gets a 202 after 0.5 s.
    decision = admission().decide(
        params(25, 17), snap(), mode="wait", exact=False, sync_budget_s=15, deadline_s=30, wait_s=0.5
    )
    assert decision.sync and decision.tier == "full" and decision.params == params(25, 17)


def test_a_tier_can_turn_on_fast_knobs_and_they_change_the_cache_key():
    from serve_app.cache.keys import cache_key

    fast = Tier(name="fast", max_load=1.0, max_steps=15, fast={"step_cache_threshold": 0.3})
    used = apply_tier(params(25, 17), fast)
    assert used.fast == FastKnobs(step_cache_threshold=0.3) and used.num_inference_steps == 15
    same_without = used.model_copy(update={"fast": None})
    assert cache_key("m@1", used.model_dump()) != cache_key("m@1", same_without.model_dump())
    # A table with fast knobs needs a model whose loop has them.
    table = TierTable(tiers=[fast])
    table.check(ServiceArgs().preset_catalog().limits, optimized_loop=True)
    with pytest.raises(ValueError, match="optimized_loop"):
        table.check(ServiceArgs().preset_catalog().limits, optimized_loop=False)
    with pytest.raises(ValueError):
        TierTable(tiers=[Tier(name="x", max_load=1.0, fast={"step_cache": 2})]).check(
            ServiceArgs().preset_catalog().limits
        )


def test_the_graph_passes_a_tiers_fast_knobs_to_the_denoiser():
    import asyncio

    from serve_app.deadline import Deadline
    from serve_app.graph import StageGraph

    seen = {}

    class Call:
        def __init__(self, name, result=None):
            self.name, self.result = name, result

        def options(self, **_):
            return self

        def remote(self, *args):
            seen[self.name] = args
            if self.name == "denoise":
                raise RuntimeError("stop here")
            return self.result

        def cancel(self):
            pass

    class Stage:
        def __init__(self, **methods):
            self.__dict__.update(methods)

        def options(self, **_):
            return self

    graph = StageGraph(Stage(encode=Call("encode", Call("embeddings"))), Stage(denoise=Call("denoise")), Stage())
    fast = params().model_copy(update={"fast": FastKnobs(step_cache_threshold=0.3)})
    with pytest.raises(RuntimeError, match="stop here"):
        asyncio.run(graph.generate(fast, Deadline.after(5)))
    assert seen["denoise"][3] == FastKnobs(step_cache_threshold=0.3)


@pytest.mark.parametrize("knobs", [{}, {"fp8": False}, {"step_cache_threshold": None}])
def test_fast_knobs_that_change_nothing_are_no_fast_knobs(knobs):
    # One spelling of the exact path: such a tier neither caps nor marks the request fast.
    tier = Tier(name="t", max_load=1.0, fast=knobs)
    assert tier.fast is None and not tier.caps
    exact = params()
    assert apply_tier(exact, tier) is exact
    assert GenerationParams(**{**exact.model_dump(), "fast": knobs}).fast is None
