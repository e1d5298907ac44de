"""The one place that wires the graph.

    serve run serve_config.yaml          # import_path: serve_app.app:build_app

Gateway (ingress) -> PromptEncoder -> Denoiser -> VideoEncoder, each with its
own Ray Serve options from `ServiceArgs.stages`. The serve config adds the
application-level autoscaling policy (serve_app/policy/autoscaling.py).
"""

# No `from __future__ import annotations` here: Ray Serve reads the builder's
# parameter annotation at run time to validate `args` into `ServiceArgs`.
from ray.serve import Application

from serve_app.config import ServiceArgs


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
    args.tier_table()
    payload = args.model_dump()
    options = args.deployment_options
    prompt_encoder = PromptEncoder.options(**options("prompt_encoder")).bind(payload)
    denoiser = Denoiser.options(**options("denoiser")).bind(payload)
    video_encoder = VideoEncoder.options(**options("video_encoder")).bind(payload)
    result_cache = ResultCache.options(**options("result_cache")).bind(payload)
    return Gateway.options(**gateway_options(args)).bind(payload, prompt_encoder, denoiser, video_encoder, result_cache)


def gateway_options(args: ServiceArgs) -> dict:
    """The gateway's Ray Serve options.

    When a stage scales on queue depth, the gateways report the jobs waiting
    for a dispatcher (serve_app/policy/autoscaling.py). Ray asks a replica
    for such figures, and shows them to the application-level policy, only
    if its deployment has an autoscaling_config: a gateway with a fixed count
    gets one whose bounds pin that count.
    """
    options = args.deployment_options("gateway")
    look_back_s = args.stages.queue_depth_look_back_s()
    if look_back_s is not None and "autoscaling_config" not in options:
        count = options.pop("num_replicas")
        options["autoscaling_config"] = {
            "min_replicas": count,
            "max_replicas": count,
            "look_back_period_s": look_back_s,
        }
    return options
