"""Two denoiser deployments, one rule (serve_app/routing.py): large jobs go to the multi-GPU
denoiser, the rest to the single-GPU one; ETAs, the load snapshot and admission each count a job
in its own deployment's queue, at its own deployment's speed. Ray-free."""

from __future__ import annotations

import pytest

from serve_app.config import AdmissionConfig, ServiceArgs
from serve_app.errors import OverCapacity
from serve_app.estimates import StageTimeEstimator
from serve_app.jobs.model import JobRecord
from serve_app.params import GenerationParams
from serve_app.policy import eta
from serve_app.policy.admission import Admission
from serve_app.policy.load import LoadMonitor, LoadSnapshot
from serve_app.routing import DenoiserRoutes
from serve_app.settings.speed import FastKnobs
from tests.helpers.jobs import job_id, with_status

TIERS = ServiceArgs().tier_table()
THRESHOLD = 100  # latent tokens
ROUTES = DenoiserRoutes(min_latent_tokens=THRESHOLD, speedup=4.0)


def params(width: int = 64, height: int = 64, frames: int = 5, steps: int = 10, **kw) -> GenerationParams:
    base = dict(
        prompt="a boat",
        negative_prompt="",
        width=width,
        height=height,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=5.0,
        fps=8,
        seed=1,
        preset="preview",
    )
    return GenerationParams(**{**base, **kw})


SMALL = params()  # 2 latent frames x 2 x 2 = 8 tokens
LARGE = params(width=256, height=256, frames=9)  # 3 x 8 x 8 = 192 tokens


def job(n: int, p: GenerationParams, created_at: float = 1.0) -> JobRecord:
    return JobRecord.new(job_id(n), "wan2.2-ti2v-tiny", p, created_at, 30.0)


class Lanes(StageTimeEstimator):
    """0.5 s encode, 1 s of denoising per 10 steps on one GPU (the multi-GPU one: / its speed-up), 2 s decode."""

    def __init__(self, routes: DenoiserRoutes = ROUTES) -> None:
        super().__init__(prior_step_s_per_ktoken=1.0, prior_decode_s_per_mpixel=1.0, routes=routes)

    def stage_estimates(self, p: GenerationParams) -> tuple[float, float, float]:
        return 0.5, p.num_inference_steps / 10 / self.routes.speedup_of(p), 2.0


# --- the rule ----------------------------------------------------------------------------


def test_large_exact_jobs_go_to_the_parallel_deployment_and_the_rest_stay():
    assert SMALL.latent_tokens < THRESHOLD <= LARGE.latent_tokens
    assert ROUTES.lane(LARGE) == "parallel" and ROUTES.lane(SMALL) == "single"
    # Exactly at the threshold counts as large.
    at = DenoiserRoutes(min_latent_tokens=LARGE.latent_tokens)
    assert at.parallel(LARGE) and not at.parallel(params(width=256, height=224, frames=9))
    # A fast tier's knobs exist on single-GPU replicas only: its jobs stay there, whatever their size.
    fast = LARGE.model_copy(update={"fast": FastKnobs(fp8=True)})
    assert fast.fast is not None and ROUTES.lane(fast) == "single"
    # No parallel deployment: everything is single, at single speed.
    assert DenoiserRoutes().lane(LARGE) == "single" and DenoiserRoutes().speedup_of(LARGE) == 1.0
    assert ROUTES.speedup_of(LARGE) == 4.0 and ROUTES.speedup_of(SMALL) == 1.0


def test_the_rule_comes_from_the_stage_settings():
    assert DenoiserRoutes.of(ServiceArgs().stages) == DenoiserRoutes()
    stages = ServiceArgs(stages={"parallel_denoiser": {"gpus": 4, "min_latent_tokens": 20000}}).stages
    # Default speed-up: 0.8 per GPU until measured.
    assert DenoiserRoutes.of(stages) == DenoiserRoutes(20000, pytest.approx(3.2))
    stages = ServiceArgs(stages={"parallel_denoiser": {"gpus": 2, "speedup": 1.9}}).stages
    assert DenoiserRoutes.of(stages).speedup == 1.9


# --- estimates ---------------------------------------------------------------------------


def test_a_large_job_is_estimated_at_the_parallel_speed_and_learned_in_single_gpu_units():
    single = StageTimeEstimator(prior_step_s_per_ktoken=1.0, prior_decode_s_per_mpixel=1.0)
    split = StageTimeEstimator(prior_step_s_per_ktoken=1.0, prior_decode_s_per_mpixel=1.0, routes=ROUTES)
    assert split.stage_estimates(LARGE)[1] == pytest.approx(single.stage_estimates(LARGE)[1] / 4.0)
    assert split.stage_estimates(SMALL) == single.stage_estimates(SMALL)
    # Measured on the parallel replica: that shape's estimate is what was measured there...
    split.observe(LARGE, prompt_encode_s=0.1, denoise_s=3.0, decode_s=1.0)
    assert split.stage_estimates(LARGE)[1] == pytest.approx(3.0)
    # ...and a small shape not seen yet borrows the unit cost on the single-GPU scale (x4), not the parallel one.
    per_step_single = 3.0 * 4.0 / LARGE.num_inference_steps / (LARGE.latent_tokens / 1000 * 2)
    expected = SMALL.num_inference_steps * per_step_single * SMALL.latent_tokens / 1000 * 2
    assert split.stage_estimates(SMALL)[1] == pytest.approx(expected)


# --- ETAs --------------------------------------------------------------------------------


def test_job_work_goes_to_its_own_lane_whole():
    small, large = eta.job_work(SMALL, Lanes()), eta.job_work(LARGE, Lanes())
    assert (small.denoise_s, small.decode_s, small.parallel_s, small.parallel) == pytest.approx((1.5, 2.0, 0.0, False))
    # The ranks decode too: encode + denoise at the parallel speed + decode, all on the parallel lane.
    assert (large.denoise_s, large.decode_s, large.parallel) == (0.0, 0.0, True)
    assert large.parallel_s == pytest.approx(0.5 + 1.0 / 4.0 + 2.0)
    half = eta.job_work(LARGE, Lanes(), progress=50)
    assert half.parallel_s == pytest.approx(0.125 + 2.0)


def snap(**kw) -> LoadSnapshot:
    base = dict(replicas=1, active_jobs=0, denoise_ahead_s=0.0, parallel_replicas=1)
    return LoadSnapshot(**{**base, **kw})


def test_each_job_waits_only_for_its_own_deployments_queue():
    config = AdmissionConfig()
    # 40 s of previews queued on one single-GPU replica, 6 s of 720p work on two parallel replicas.
    load = snap(active_jobs=12, denoise_ahead_s=40.0, parallel_replicas=2, parallel_jobs=2, parallel_ahead_s=6.0)
    small, large = eta.job_work(SMALL, Lanes()), eta.job_work(LARGE, Lanes())
    assert eta.eta_s(small, load, config) == pytest.approx(40.0 + small.total_s)
    assert eta.eta_s(large, load, config) == pytest.approx(6.0 / 2 + large.total_s)
    # A parallel deployment scaled to zero costs a large job a cold start, not a small one.
    cold = snap(parallel_replicas=0)
    assert eta.eta_s(large, cold, config) == pytest.approx(config.cold_start_s + large.total_s)
    assert eta.eta_s(small, cold, config) == pytest.approx(small.total_s)
    # A parallel replica still starting takes the queue only after its cold start.
    starting = snap(parallel_replicas=1, parallel_starting=1, parallel_ahead_s=10.0, parallel_jobs=1)
    assert eta.queue_wait_s(starting, config, parallel=True) == pytest.approx(10.0 + config.cold_start_s)


def test_the_snapshot_splits_the_queue_by_deployment_reservations_included():
    stored = [job(1, SMALL), with_status(job(2, LARGE), "in_progress", progress=50), job(3, LARGE)]
    monitor = LoadMonitor(
        active_jobs=lambda: list(stored),
        estimator=Lanes(),
        replicas=lambda: 2,
        gpu_utilization=None,
        refresh_s=1.0,
        initial_replicas=1,
        parallel_replicas=lambda: 1,
        initial_parallel_replicas=0,
    )
    assert monitor.snapshot().parallel_replicas == 0
    monitor.refresh()
    snapshot = monitor.snapshot()
    assert (snapshot.replicas, snapshot.parallel_replicas) == (2, 1)
    assert (snapshot.active_jobs, snapshot.parallel_jobs) == (3, 2)
    assert snapshot.denoise_ahead_s == pytest.approx(1.5) and snapshot.decode_ahead_s == pytest.approx(2.0)
    assert snapshot.parallel_ahead_s == pytest.approx((0.125 + 2.0) + (0.5 + 0.25 + 2.0))
    with monitor.reserve("k", job(4, LARGE, created_at=4.0)):
        held = monitor.snapshot()
        assert (held.active_jobs, held.parallel_jobs) == (4, 3)
        assert held.parallel_ahead_s == pytest.approx(snapshot.parallel_ahead_s + 2.75)
    # The ETA of the queued large job waits for the large job ahead of it only.
    ahead = monitor.snapshot(before=stored[2])
    assert (ahead.active_jobs, ahead.parallel_jobs) == (2, 1) and ahead.parallel_ahead_s == pytest.approx(2.125)


# --- admission ---------------------------------------------------------------------------


def admission(**config) -> Admission:
    return Admission(AdmissionConfig(**config), TIERS, Lanes(), denoiser_max_replicas=2, parallel_max_replicas=1)


def test_a_full_preview_queue_refuses_previews_but_not_720p_jobs_and_the_other_way_round():
    a = admission(max_queue_per_replica=2)
    decide = dict(mode="async", exact=True, sync_budget_s=0, deadline_s=600)
    previews_full = snap(active_jobs=2, denoise_ahead_s=3.0)
    with pytest.raises(OverCapacity, match=r"2 unfinished jobs for 1 denoiser replica"):
        a.decide(SMALL, previews_full, **decide)
    assert a.decide(LARGE, previews_full, **decide).eta_s == pytest.approx(eta.job_work(LARGE, Lanes()).total_s)
    large_full = snap(active_jobs=2, parallel_jobs=2, parallel_ahead_s=8.0)
    with pytest.raises(OverCapacity, match=r"2 unfinished jobs for 1 multi-GPU denoiser replica") as refused:
        a.decide(LARGE, large_full, **decide)
    # Retry-After: the parallel queue's wait per job, not the previews'.
    assert refused.value.retry_after_s == 8.0 / 2
    assert a.decide(SMALL, large_full, **decide).eta_s == pytest.approx(eta.job_work(SMALL, Lanes()).total_s)


def test_load_counts_both_deployments_capacity():
    a = admission(max_queue_per_replica=4, gpu_weight=0.0)
    # 4 jobs on 1 single-GPU + 1 parallel replica: half of the 8 the two hold.
    assert a.load(snap(active_jobs=4, parallel_jobs=2)) == 0.5
    # Without a parallel deployment the capacity is the single-GPU one's alone, as before.
    single = Admission(AdmissionConfig(max_queue_per_replica=4, gpu_weight=0.0), TIERS, Lanes(DenoiserRoutes()), 2)
    assert single.load(snap(active_jobs=4)) == 1.0


def test_a_720p_deadline_is_judged_at_the_parallel_speed():
    a = admission()
    decide = dict(mode="async", exact=True, sync_budget_s=0)
    long = params(width=256, height=256, frames=9, steps=100)  # 10 s on one GPU, 2.5 s on the parallel replica
    assert a.decide(long, snap(), deadline_s=6, **decide).eta_s == pytest.approx(0.5 + 2.5 + 2.0)
    single = Admission(AdmissionConfig(), TIERS, Lanes(DenoiserRoutes()), denoiser_max_replicas=2)
    with pytest.raises(OverCapacity):
        single.decide(long, snap(), deadline_s=6, **decide)
