"""Ray Serve options of each deployment (`args.stages`): replicas, autoscaling, resources, grace.

The defaults that depend on other fields of `ServiceArgs` (a model stage's
grace covers the longest deadline) are filled in by
`ServiceArgs.deployment_options` in serve_app/config.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from serve_app.settings.base import StrictModel


class AutoscalingOptions(StrictModel):
    """Ray Serve autoscaling of one deployment (a subset of its autoscaling_config, validated here)."""

    policy: Literal["queue_depth", "ongoing_requests"] = Field(
        "ongoing_requests",
        description="'queue_depth': serve_app.policy.autoscaling.QueueDepthPolicy (denoise "
        "jobs waiting: this deployment's queued + running requests, plus accepted jobs no gateway has dispatched "
        "yet, which the gateways report; that part needs the app's autoscaling_policy in the serve config, see "
        "docs/operations.md); 'ongoing_requests': Ray's default policy on this deployment's own queued + running "
        "requests.",
    )
    min_replicas: int = Field(1, ge=0, description="Fewest replicas (0 allows scale to zero).")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time (default min_replicas).")
    target_ongoing_requests: float = Field(
        1.0, gt=0, description="Requests (for 'queue_depth': waiting jobs) per replica to aim for."
    )
    upscale_delay_s: float = Field(5.0, ge=0, description="How long load must stay high before adding replicas.")
    downscale_delay_s: float = Field(60.0, ge=0, description="How long load must stay low before removing replicas.")
    downscale_to_zero_delay_s: float | None = Field(
        None, ge=0, description="How long before the last replica goes (min_replicas 0); default downscale_delay_s."
    )
    look_back_period_s: float = Field(
        10.0,
        gt=0,
        description="Window the request counts are averaged over (Ray reports every 10 s by default; "
        "set RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S lower for faster reaction).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas={self.min_replicas} > max_replicas={self.max_replicas}")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError(
                f"initial_replicas={self.initial_replicas} is outside [{self.min_replicas}, {self.max_replicas}]"
            )
        return self

    def to_ray(self) -> dict[str, Any]:
        config = self.model_dump(exclude={"policy"}, exclude_none=True)
        if self.policy == "queue_depth":
            config["policy"] = {
                "policy_function": "serve_app.policy.autoscaling:QueueDepthPolicy",
                "policy_kwargs": {"jobs_per_replica": self.target_ongoing_requests},
            }
        return config


class StageOptions(StrictModel):
    """Ray Serve options of one deployment."""

    num_replicas: int | None = Field(1, ge=1, description="Fixed replica count; ignored when `autoscaling` is set.")
    autoscaling: AutoscalingOptions | None = Field(None, description="Autoscale instead of a fixed count.")
    max_ongoing_requests: int = Field(
        4, ge=1, description="Requests one replica runs at once; the rest queue at the router."
    )
    num_cpus: float = Field(0.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPU fraction per replica (e.g. 0.5 packs two on a card).")
    graceful_shutdown_timeout_s: float | None = Field(
        None,
        ge=0,
        description="How long a stopping replica may finish running requests (scale-down, redeploy, "
        "shutdown). Default: for the model stages max_deadline_s + 30 s, so scale-down never kills a running "
        "job; 20 s for the gateway and cache (a gateway hands its jobs back to the store).",
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources per replica, e.g. {head: 1} to pin a deployment "
        "to nodes that offer the resource `head`.",
    )
    gpu_memory_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Share of its card's memory a replica's torch allocator may use "
        "(torch.cuda.set_per_process_memory_fraction); default num_gpus, so neighbours on a shared card "
        "cannot run each other out of memory.",
    )

    @property
    def max_replicas(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling else (self.num_replicas or 1)

    @property
    def memory_fraction(self) -> float | None:
        """The allocator cap of a GPU replica (None: no cap, e.g. a whole card or the CPU)."""
        if self.gpu_memory_fraction is not None:
            return self.gpu_memory_fraction
        return self.num_gpus if 0 < self.num_gpus < 1 else None

    def to_deployment_options(self, default_grace_s: float = 20.0) -> dict[str, Any]:
        grace = self.graceful_shutdown_timeout_s
        opts: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {
                "num_cpus": self.num_cpus,
                "num_gpus": self.num_gpus,
                **({"resources": dict(self.resources)} if self.resources else {}),
            },
            "graceful_shutdown_timeout_s": default_grace_s if grace is None else grace,
        }
        if self.autoscaling is not None:
            opts["autoscaling_config"] = self.autoscaling.to_ray()
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


def _stage(**kw: Any) -> StageOptions:
    return StageOptions(**kw)


class StagesConfig(StrictModel):
    gateway: StageOptions = Field(default_factory=lambda: _stage(max_ongoing_requests=64))
    # One replica: its embedded index is a local file, and one writer keeps LRU
    # order and single-flight claims exact. With a Redis cache_store it may scale.
    result_cache: StageOptions = Field(default_factory=lambda: _stage(max_ongoing_requests=256))
    prompt_encoder: StageOptions = Field(default_factory=lambda: _stage(max_ongoing_requests=4))
    # One denoising loop per replica at a time: the scheduler is stateful and a
    # second loop would only halve the speed of both. The rest queue at the router,
    # which is the queue depth autoscaling watches.
    denoiser: StageOptions = Field(default_factory=lambda: _stage(max_ongoing_requests=1))
    video_encoder: StageOptions = Field(default_factory=lambda: _stage(max_ongoing_requests=2))

    def queue_depth_look_back_s(self) -> float | None:
        """The window of the stages that scale on queue depth (the longest), or None if none does.

        The gateways' waiting-job figure is averaged over it too, so both parts
        of the signal cover the same span.
        """
        windows = [
            stage.autoscaling.look_back_period_s
            for stage in (getattr(self, name) for name in type(self).model_fields)
            if stage.autoscaling is not None and stage.autoscaling.policy == "queue_depth"
        ]
        return max(windows, default=None)
