"""Ray Serve options of each deployment (`args.stages`): replicas, autoscaling, resources, grace.

The defaults that depend on other fields of `ServiceArgs` (a model stage's
grace covers the longest deadline) are filled in by
`ServiceArgs.deployment_options` in serve_app/config.py.

`parallel_denoiser` (`ParallelDenoiserOptions`) is the one optional stage: the
multi-GPU denoiser. One replica of `ParallelDenoiser` (deployments/parallel_denoiser.py)
spans `gpus` cards of one node: Ray Serve reserves a placement group for it
(bundle 0: the replica itself, CPU only; bundles 1..N: one rank each), STRICT_PACK
so every rank is on the replica's node. Requests whose latent tokens reach
`min_latent_tokens` go to it (serve_app/routing.py); smaller ones stay on the
single-GPU `Denoiser`. Unset (None, the default): no such deployment, and the
app is as it always was.
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


# What a rank's prior speed-up is per GPU before any job of a shape was measured:
# the goal of 3.2x on 4 H100s for 720p (bench/bench_parallel.py measures it).
DEFAULT_EFFICIENCY = 0.8


class ParallelDenoiserOptions(StageOptions):
    """Ray Serve options of the multi-GPU denoiser, and what its replica does with its ranks.

    The inherited `num_cpus` is the coordinator's (placement-group bundle 0); `num_gpus`
    must stay 0: the ranks hold the GPUs, each in its own bundle."""

    num_cpus: float = Field(
        1.0,
        gt=0,
        description="CPUs of the coordinating replica (its placement-group bundle 0, which Ray refuses empty).",
    )
    max_ongoing_requests: int = Field(
        1,
        ge=1,
        le=1,
        description="Requests one replica runs at once: 1, since its ranks run one denoising loop in lock-step "
        "(a second loop's collectives would interleave with the first's); the rest queue at the router, which "
        "is the queue depth its autoscaling watches.",
    )
    num_gpus: float = Field(
        0.0, ge=0, description="Stays 0: the coordinating replica holds no GPU; its ranks do (gpus, gpu_share)."
    )
    gpu_memory_fraction: float | None = Field(
        None, gt=0, le=1, description="Stays unset: each rank's allocator is capped to gpu_share."
    )
    gpus: int = Field(
        4,
        ge=1,
        le=64,
        description="Ranks (GPUs) per replica, each a placement-group bundle of `gpu_share` GPU and `rank_cpus` "
        "CPUs, all on one node (STRICT_PACK). 2, 4 or 8 on an H100 node.",
    )
    gpu_share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="GPU share of each rank's bundle. Above 0.5 no two ranks of a replica can share a card (Ray "
        "places a fractional bundle on one card), and the rest of each card is left to fractional single-GPU "
        "replicas (previews); each rank's allocator is capped to it. 0: CPU ranks with the gloo backend (tests, "
        "the tiny model).",
    )
    rank_cpus: float = Field(1.0, gt=0, description="CPUs of each rank's bundle (Ray sets its OMP_NUM_THREADS to it).")
    min_latent_tokens: int = Field(
        16384,
        ge=1,
        description="Requests whose latent tokens (latent frames x H/32 x W/32, GenerationParams.latent_tokens) are "
        "at least this go to this deployment; smaller ones to the single-GPU Denoiser. 720p x 121 frames is "
        "27,280 tokens, 480p x 81 frames 8,190, the preview preset 1,500.",
    )
    collective_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Longest wait of a rank in one collective (NCCL or gloo timeout): a dead or hung peer fails "
        "the job within this instead of hanging the replica. Above the longest single step plus the first "
        "compile of a new shape.",
    )
    ping_timeout_s: float = Field(
        5.0,
        gt=0,
        description="How long the health check waits for each rank's ping; a rank that does not answer "
        "(dead, or its process stuck) fails the check, and Ray Serve replaces the replica.",
    )
    cfg_parallel: bool = Field(
        True,
        description="Classifier-free guidance in parallel: the conditional pass on one half of the ranks, the "
        "unconditional on the other (Ulysses sequence parallel inside each half). False: both passes on every "
        "rank, Ulysses over all of them.",
    )
    speedup: float | None = Field(
        None,
        gt=0,
        description="How many times faster a replica denoises than one single-GPU Denoiser replica, for ETAs and "
        f"admission until jobs of a shape were measured here (then the measured times rule). Default "
        f"{DEFAULT_EFFICIENCY} x gpus; bench/bench_parallel.py measures it (speedup_vs_1gpu).",
    )
    progress_poll_s: float = Field(
        0.25,
        gt=0,
        description="How often the replica asks rank 0 for the step it reached, while a job runs (progress "
        "messages: at most one per poll, and not more often than progress_interval_s).",
    )

    @model_validator(mode="after")
    def _ranks_hold_the_gpus(self) -> ParallelDenoiserOptions:
        if self.num_gpus != 0:
            raise ValueError(
                f"num_gpus={self.num_gpus}: the parallel denoiser's replica coordinates on a CPU; its ranks hold "
                "the GPUs: set gpus (ranks) and gpu_share (per rank) instead"
            )
        if 0 < self.gpu_share <= 0.5 and self.gpus > 1:
            raise ValueError(
                f"gpu_share={self.gpu_share}: two ranks of one replica could then share a card (NCCL refuses two "
                "ranks on one device); give each rank more than half a card"
            )
        if self.gpu_memory_fraction is not None:
            raise ValueError(
                f"gpu_memory_fraction={self.gpu_memory_fraction}: each rank's allocator is capped to gpu_share"
            )
        return self

    @property
    def effective_speedup(self) -> float:
        return self.speedup if self.speedup is not None else DEFAULT_EFFICIENCY * self.gpus

    @property
    def rank_bundle(self) -> dict[str, float]:
        """One rank's placement-group bundle (no GPU key for CPU ranks: a zero resource is no resource)."""
        bundle = {"CPU": self.rank_cpus}
        if self.gpu_share > 0:
            bundle["GPU"] = self.gpu_share
        return bundle

    @property
    def placement_group_bundles(self) -> list[dict[str, float]]:
        """Bundle 0: the replica (its CPUs and custom resources, which Ray requires it to hold); then one per rank."""
        return [{"CPU": self.num_cpus, **self.resources}] + [self.rank_bundle for _ in range(self.gpus)]

    def to_deployment_options(self, default_grace_s: float = 20.0) -> dict[str, Any]:
        opts = super().to_deployment_options(default_grace_s)
        opts["placement_group_bundles"] = self.placement_group_bundles
        opts["placement_group_strategy"] = "STRICT_PACK"
        policy = opts.get("autoscaling_config", {}).get("policy")
        if policy is not None:
            # Queue depth of the jobs routed here only (serve_app/policy/autoscaling.py).
            policy["policy_kwargs"]["lane"] = "parallel"
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
    parallel_denoiser: ParallelDenoiserOptions | None = Field(
        None,
        description="The multi-GPU denoiser for large shapes (docs/gpu.md, Multi-GPU replicas); None: none, every "
        "request goes to the single-GPU denoiser.",
    )

    def deployed(self) -> list[str]:
        """The stages this app deploys, in args order: every one but an unset parallel_denoiser."""
        return [name for name in type(self).model_fields if getattr(self, name) is not None]

    def queue_depth_look_back_s(self) -> float | None:
        """The window of the stages that scale on queue depth (the longest), or None if none does.

        The gateways' waiting-job figure is averaged over it too, so both parts
        of the signal cover the same span.
        """
        windows = [
            stage.autoscaling.look_back_period_s
            for stage in (getattr(self, name) for name in self.deployed())
            if stage.autoscaling is not None and stage.autoscaling.policy == "queue_depth"
        ]
        return max(windows, default=None)
