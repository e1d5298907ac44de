"""Which denoiser deployment a job runs on: the multi-GPU one for large shapes, else the single-GPU one.

One rule, read by every part that must agree on it: the graph sends a job's
denoising there (serve_app/graph.py), the ETA model counts its work in that
deployment's queue (serve_app/policy/eta.py), admission checks that queue,
and the gateways report each deployment's waiting jobs to its autoscaling
(serve_app/policy/autoscaling.py). A job goes to the `ParallelDenoiser` when
the app deploys one (`args.stages.parallel_denoiser`) and its latent tokens
(`GenerationParams.latent_tokens`: what a step's cost grows with) reach
`min_latent_tokens`, on the exact path: a fast tier's knobs (FP8, step cache)
exist on single-GPU replicas only, so its jobs stay there whatever their size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from serve_app.params import GenerationParams
from serve_app.settings.stages import StagesConfig

Lane = Literal["single", "parallel"]


@dataclass(frozen=True)
class DenoiserRoutes:
    """The routing rule. The default (no parallel deployment) sends every job to the single-GPU denoiser."""

    min_latent_tokens: int | None = None  # None: no parallel deployment
    speedup: float = 1.0  # the parallel replica's prior speed against one single-GPU replica

    @classmethod
    def of(cls, stages: StagesConfig) -> DenoiserRoutes:
        parallel = stages.parallel_denoiser
        if parallel is None:
            return cls()
        return cls(parallel.min_latent_tokens, parallel.effective_speedup)

    @property
    def enabled(self) -> bool:
        return self.min_latent_tokens is not None

    def lane(self, params: GenerationParams) -> Lane:
        if self.min_latent_tokens is None or params.fast is not None:
            return "single"
        if params.latent_tokens >= self.min_latent_tokens:
            return "parallel"
        return "single"

    def parallel(self, params: GenerationParams) -> bool:
        return self.lane(params) == "parallel"

    def speedup_of(self, params: GenerationParams) -> float:
        """How much faster than one single-GPU replica the job's own deployment denoises it (prior)."""
        return self.speedup if self.parallel(params) else 1.0
