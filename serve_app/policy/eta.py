"""The one ETA model: admission, the queued event and the API's `eta_s` all use it.

A job is ready after (cold start, while the denoiser is scaled to zero)
+ the wait for the work ahead of it + its own stage times. Work is kept per
lane, because the lanes drain at different rates:

- the denoise lane: prompt encoding + denoising, over the denoiser replicas;
- the decode lane: VAE decode + mp4, over the video-encoder replicas. Jobs
  that finished denoising are still ahead here until their mp4 is stored;
- the parallel lane, when the app deploys a multi-GPU denoiser: the jobs
  routed to it (serve_app/routing.py), whole (prompt encoding, denoising and
  the decode its ranks do themselves), over its replicas. A job waits only
  for the work of its own deployment: a 720p job never queues behind
  previews, nor a preview behind a 720p job.

Whether the lanes add up or overlap depends on the hardware
(`AdmissionConfig.stages_share_hardware`). Three formulas used to disagree
(admission, queued events, GET), so a client could be admitted on one ETA
and shown another; they now all end in `eta_s` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from serve_app.config import AdmissionConfig
from serve_app.estimates import StageTimeEstimator
from serve_app.params import GenerationParams

if TYPE_CHECKING:  # load.py imports this module
    from serve_app.policy.load import LoadSnapshot


@dataclass(frozen=True)
class StageWork:
    """Seconds still to do on each lane."""

    denoise_s: float = 0.0  # prompt encoding + denoising
    decode_s: float = 0.0  # VAE decode + mp4
    parallel_s: float = 0.0  # all of a job routed to the multi-GPU denoiser (it decodes too)
    parallel: bool = False  # one job's work: it is routed to the multi-GPU denoiser (a sum's: any is)

    @property
    def total_s(self) -> float:
        return self.denoise_s + self.decode_s + self.parallel_s

    def __add__(self, other: StageWork) -> StageWork:
        return StageWork(
            self.denoise_s + other.denoise_s,
            self.decode_s + other.decode_s,
            self.parallel_s + other.parallel_s,
            self.parallel or other.parallel,
        )


def job_work(params: GenerationParams, estimator: StageTimeEstimator, progress: int = 0) -> StageWork:
    """What a job (at `progress` percent) still needs on each lane.

    Progress counts denoising steps only: the prompt was encoded before the
    first step, and decoding starts after the last, so a job at 99% still has
    its whole decode ahead. Prompt encoding rides on the denoise lane: it runs
    right before denoising and is small next to it.
    """
    encode, denoise, decode = estimator.stage_estimates(params)
    ahead = (encode if progress <= 0 else 0.0) + denoise * (1 - progress / 100)
    if estimator.routes.parallel(params):
        return StageWork(parallel_s=ahead + decode, parallel=True)
    return StageWork(ahead, decode)


def lane_wait_s(work_s: float, serving: int, starting: int, start_s: float) -> float:
    """Seconds until `work_s` of queued work is done by `serving` replicas from now
    and `starting` ones from `start_s` on (their cold start).

    A starting replica shortens the wait only for work that outlasts its start:
    with one serving and one starting at 60 s, 30 s of work still takes 30 s,
    and 100 s of work takes 80 s (the second replica does the last 20).
    """
    if starting <= 0 or (serving > 0 and work_s / serving <= start_s):
        return work_s / max(serving, 1)
    return (work_s + starting * start_s) / (serving + starting)


def queue_wait_s(snap: LoadSnapshot, config: AdmissionConfig, parallel: bool = False) -> float:
    """Seconds until the work ahead (`snap`) no longer holds a new job up; `parallel`: a job
    routed to the multi-GPU denoiser, which waits for that deployment's work only."""
    if parallel:
        return lane_wait_s(
            snap.parallel_ahead_s,
            snap.parallel_replicas - snap.parallel_starting,
            snap.parallel_starting,
            config.cold_start_s,
        )
    serving = snap.replicas - snap.starting
    denoise = lane_wait_s(snap.denoise_ahead_s, serving, snap.starting, config.cold_start_s)
    decode = snap.decode_ahead_s / max(snap.encoder_replicas, 1)
    if config.stages_share_hardware:
        # One card or one CPU box: a decode steals the cycles a denoise needs,
        # so each job ahead costs the sum of its stages.
        return denoise + decode
    # Separate hardware: one job decodes while the next denoises; the slower
    # lane sets the pace.
    return max(denoise, decode)


def eta_s(own: StageWork, snap: LoadSnapshot, config: AdmissionConfig) -> float:
    """Seconds until a job needing `own` is ready, behind the work in `snap`."""
    # Scaled to zero with none starting: one must start for this job. (Replicas already
    # starting have their cold start counted in the denoise lane's wait.)
    replicas = snap.parallel_replicas if own.parallel else snap.replicas
    start = config.cold_start_s if replicas == 0 else 0.0
    return start + queue_wait_s(snap, config, own.parallel) + own.total_s
