"""The one place that wires the graph.

    serve run serve_config.yaml          # import_path: serve_app.app:build_app

Gateway (ingress) -> PromptEncoder -> Denoiser -> VideoEncoder, each with its
own Ray Serve options (and, when `args.stages.parallel_denoiser` is set, a
multi-GPU ParallelDenoiser beside the Denoiser for large shapes, which decodes
its videos itself: serve_app/routing.py) from `ServiceArgs.stages` (serve_app/deploy_options.py)
and its live settings as its `user_config` (serve_app/live.py). A serve
config's `deployments:` entries go over both; the serve config adds the
application-level autoscaling policy (serve_app/policy/autoscaling.py).
"""

# No `from __future__ import annotations` here: Ray Serve reads the builder's
# parameter annotation at run time to validate `args` into `ServiceArgs`.
from typing import Any

from ray.serve import Application

from serve_app.config import ServiceArgs, TierTable
from serve_app.deploy_options import builder_options, gateway_options
from serve_app.live import live_section

__all__ = ["build_app", "gateway_options", "stage_options"]


def build_app(args: ServiceArgs) -> Application:
    if not isinstance(args, ServiceArgs):  # called directly with a dict
        args = ServiceArgs.model_validate(args)
    from deployments.denoiser import Denoiser
    from deployments.gateway import Gateway
    from deployments.prompt_encoder import PromptEncoder
    from deployments.result_cache import ResultCache
    from deployments.video_encoder import VideoEncoder

    # Fail here, in `serve run`, on a bad profile or presets file, rather than
    # in four replicas' logs.
    args.model_profile()
    tiers = args.tier_table()
    # What args set, only: each replica rebuilds the same ServiceArgs from it and can
    # still tell a value args set from a default, which a serve config's `deployments:`
    # entry may set instead (serve_app/deploy_options.py).
    payload = args.model_dump(exclude_unset=True)

    def options(stage: str) -> dict[str, Any]:
        return stage_options(args, stage, tiers)

    prompt_encoder = PromptEncoder.options(**options("prompt_encoder")).bind(payload)
    denoiser = Denoiser.options(**options("denoiser")).bind(payload)
    video_encoder = VideoEncoder.options(**options("video_encoder")).bind(payload)
    result_cache = ResultCache.options(**options("result_cache")).bind(payload)
    bound = [prompt_encoder, denoiser, video_encoder, result_cache]
    if args.stages.parallel_denoiser is not None:
        from deployments.parallel_denoiser import ParallelDenoiser

        # Bound only when configured: without it the app is exactly as it was.
        bound.append(ParallelDenoiser.options(**options("parallel_denoiser")).bind(payload))
    return Gateway.options(**options("gateway")).bind(payload, *bound)


def stage_options(args: ServiceArgs, stage: str, tiers: TierTable | None = None) -> dict[str, Any]:
    """A deployment's `.options()`: its Ray Serve options and, as its user_config, its live
    settings as args set them. The gateway's carries the tier table written out (`tiers`,
    read from the tiers file here), so what a gateway runs with shows in `serve status`."""
    user_config = live_section(args, stage)
    if stage == "gateway" and tiers is not None:
        user_config["admission"]["tiers"] = tiers.model_dump(mode="json")["tiers"]
    return {**builder_options(args, stage), "user_config": user_config}
