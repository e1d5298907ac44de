"""Typed configuration: model profiles, generation limits, presets, stage options.

One `ServiceArgs` model feeds the `args:` block of `serve_config.yaml`; every
field has a description, and validators quote the offending values.

The blocks other parts of the service own (speed, health, access, faults,
tiers, limits) are defined in serve_app/settings/ and composed here. Like
them, this module imports only settings and `serve_app.paths`: every layer
above may import it, so it must not import any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, field_validator, model_validator

from serve_app.paths import CONFIG_DIR, MODEL_PROFILE_DIR, resolve
from serve_app.settings.access import AccessConfig
from serve_app.settings.base import StrictModel
from serve_app.settings.faults import FaultInjection
from serve_app.settings.health import HealthOptions
from serve_app.settings.limits import GenerationLimits
from serve_app.settings.speed import SpeedOptions
from serve_app.settings.tiers import TierTable, load_tiers

DType = Literal["bfloat16", "float16", "float32"]

# Our names for attention backends -> diffusers' `AttentionBackendName` values.
# Hub-downloaded kernels are left out on purpose: serving hosts do not fetch code.
ATTENTION_BACKENDS: dict[str, str] = {
    "sdpa": "native",
    "sdpa-flash": "_native_flash",
    "sdpa-cudnn": "_native_cudnn",
    "sdpa-efficient": "_native_efficient",
    "xformers": "xformers",
    "flash": "flash",
    "flash3": "_flash_3",
    "sage": "sage",
}


class TinyModelSpec(StrictModel):
    """Widths of the locally built tiny model (the 5B's shapes, tiny widths)."""

    seed: int = Field(0, description="Seed for the random weights; same seed, same model.")
    text_dim: int = Field(32, ge=8, description="UMT5 d_model of the tiny text encoder.")
    text_layers: int = Field(2, ge=1, description="UMT5 layers of the tiny text encoder.")
    heads: int = Field(2, ge=1, description="DiT attention heads.")
    head_dim: int = Field(12, ge=4, description="DiT attention head width (must be divisible by 6 for 3-D RoPE).")
    layers: int = Field(2, ge=1, description="DiT blocks.")
    ffn_dim: int = Field(32, ge=4, description="DiT feed-forward width.")
    vae_base_dim: int = Field(12, ge=4, description="VAE encoder base width.")
    vae_decoder_base_dim: int = Field(16, ge=4, description="VAE decoder base width.")

    @field_validator("head_dim")
    @classmethod
    def _rope_divisible(cls, v: int) -> int:
        if v % 6:
            raise ValueError(f"head_dim={v} must be divisible by 6 (Wan's RoPE splits it over t, h, w)")
        return v


class ModelProfile(StrictModel):
    """One way of getting a `WanPipeline` (see configs/models/*.yaml)."""

    name: str = Field(description="Profile name, e.g. 'tiny'.")
    model_id: str = Field(description="The id clients send as `model` and see in answers.")
    source: Literal["tiny", "pretrained", "random"] = Field(
        description="'tiny': built locally and saved/loaded with save_pretrained/from_pretrained; "
        "'pretrained': diffusers weights from `path`; 'random': the 5B architecture with random weights."
    )
    path: str | None = Field(
        None,
        description="For 'pretrained': a local directory or hub id of Wan-AI/Wan2.2-TI2V-5B-Diffusers.",
    )
    revision: str = Field("main", description="Weights revision; part of the model's identity.")
    dtype: DType = Field("bfloat16", description="Dtype of the DiT and text encoder.")
    vae_dtype: DType = Field("float32", description="Dtype of the VAE decoder.")
    attention_backend: str = Field(
        "sdpa", description=f"Attention backend of the DiT, one of {sorted(ATTENTION_BACKENDS)}."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' takes CUDA when a GPU is visible to the replica, else the CPU."
    )
    max_sequence_length: int = Field(512, ge=16, le=512, description="Text tokens fed to the DiT.")
    flow_shift: float = Field(5.0, gt=0, description="UniPC flow shift (Wan2.2-TI2V-5B uses 5.0).")
    local_files_only: bool = Field(
        True, description="Never reach a hub at load time; a missing model is a clear error instead."
    )
    tiny: TinyModelSpec = Field(default_factory=TinyModelSpec, description="Widths for source 'tiny'.")
    speed: SpeedOptions = Field(
        default_factory=SpeedOptions, description="How replicas run the DiT and VAE fast: regional compile, "
        "warmed shape buckets, CUDA graphs, decode mode, FP8 copy, cross-request batching, and the fast-tier "
        "knobs (serve_app/pipeline/optimize.py).",
    )
    prior_step_s_per_ktoken: float = Field(
        0.035, gt=0, description="Estimate before any job is measured: seconds per denoising step per 1,000 "
        "latent tokens per guidance pass (H100-class for the 5B)."
    )
    prior_decode_s_per_mpixel: float = Field(
        0.1, gt=0, description="Estimate before any job is measured: seconds of VAE decode + mp4 encode per "
        "million output pixels (frames x height x width)."
    )

    @field_validator("attention_backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if v not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend={v!r} is not one of {sorted(ATTENTION_BACKENDS)}")
        return v

    @model_validator(mode="after")
    def _pretrained_needs_path(self) -> "ModelProfile":
        if self.source == "pretrained" and not self.path:
            raise ValueError(f"profile {self.name!r}: source 'pretrained' needs `path` (local dir or hub id)")
        return self

    @property
    def identity(self) -> str:
        """Model id and revision: what distinguishes the pixels two profiles make."""
        return f"{self.model_id}@{self.revision}"


def load_model_profile(name_or_path: str, overrides: dict[str, Any] | None = None) -> ModelProfile:
    """A profile by name (configs/models/NAME.yaml) or by path to a YAML file."""
    candidate = MODEL_PROFILE_DIR / f"{name_or_path}.yaml"
    path = candidate if candidate.is_file() else resolve(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in MODEL_PROFILE_DIR.glob("*.yaml"))
        raise ValueError(f"model profile {name_or_path!r} not found; known profiles: {known}")
    data = yaml.safe_load(path.read_text()) or {}
    data.update(overrides or {})
    return ModelProfile(**data)


class Preset(StrictModel):
    """A named set of generation settings; any field may be overridden per request."""

    description: str = Field("", description="What the preset is for.")
    width: int = Field(description="Width in pixels.")
    height: int = Field(description="Height in pixels.")
    num_frames: int = Field(description="Frames (4k+1).")
    num_inference_steps: int = Field(description="Denoising steps.")
    guidance_scale: float = Field(description="Classifier-free guidance scale.")
    fps: int = Field(24, description="Frames per second of the mp4.")
    negative_prompt: str = Field("", description="Default negative prompt.")


class PresetCatalog(StrictModel):
    """configs/presets.yaml: presets plus the limits requests are checked against."""

    default_preset: str = Field("preview", description="Preset used when a request names none.")
    limits: GenerationLimits = Field(default_factory=GenerationLimits)
    presets: dict[str, Preset]

    @model_validator(mode="after")
    def _default_exists(self) -> "PresetCatalog":
        if self.default_preset not in self.presets:
            raise ValueError(
                f"default_preset={self.default_preset!r} is not one of {sorted(self.presets)}"
            )
        return self


def load_presets(path: str | Path = CONFIG_DIR / "presets.yaml") -> PresetCatalog:
    return PresetCatalog(**yaml.safe_load(resolve(path).read_text()))


class AutoscalingOptions(StrictModel):
    """Ray Serve autoscaling of one deployment (a subset of its autoscaling_config, validated here)."""

    policy: Literal["queue_depth", "ongoing_requests"] = Field(
        "ongoing_requests", description="'queue_depth': serve_app.policy.autoscaling.QueueDepthPolicy (denoise "
        "jobs waiting, including accepted jobs no gateway has dispatched yet); 'ongoing_requests': Ray's default "
        "policy on this deployment's own queued + running requests."
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
        10.0, gt=0, description="Window the request counts are averaged over (Ray reports every 10 s by default; "
        "set RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S lower for faster reaction)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingOptions":
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

    num_replicas: int | None = Field(
        1, ge=1, description="Fixed replica count; ignored when `autoscaling` is set."
    )
    autoscaling: AutoscalingOptions | None = Field(None, description="Autoscale instead of a fixed count.")
    max_ongoing_requests: int = Field(
        4, ge=1, description="Requests one replica runs at once; the rest queue at the router."
    )
    num_cpus: float = Field(0.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPU fraction per replica (e.g. 0.5 packs two on a card).")
    graceful_shutdown_timeout_s: float | None = Field(
        None, ge=0, description="How long a stopping replica may finish running requests (scale-down, redeploy, "
        "shutdown). Default: for the model stages max_deadline_s + 30 s, so scale-down never kills a running "
        "job; 20 s for the gateway and cache (a gateway hands its jobs back to the store)."
    )
    resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources per replica, e.g. {head: 1} to pin a deployment "
        "to nodes that offer the resource `head`."
    )
    gpu_memory_fraction: float | None = Field(
        None, gt=0, le=1, description="Share of its card's memory a replica's torch allocator may use "
        "(torch.cuda.set_per_process_memory_fraction); default num_gpus, so neighbours on a shared card "
        "cannot run each other out of memory."
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
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                                  **({"resources": dict(self.resources)} if self.resources else {})},
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


class AdmissionConfig(StrictModel):
    """How the gateway admits work under load (serve_app/policy/admission.py)."""

    enabled: bool = Field(
        True, description="Admission control and quality tiers. Off: every request is queued as asked (FIFO), "
        "whatever the load (the 'naive' configuration of bench/bench_load.py)."
    )
    tiers_file: str = Field("configs/tiers.yaml", description="The degradation table.")
    max_queue_per_replica: int = Field(
        4, ge=1, description="Unfinished jobs per running denoiser replica at 100% load; more get a 429."
    )
    gpu_weight: float = Field(
        0.2, ge=0, le=1, description="Share of GPU utilisation in the load (the rest is queue depth); "
        "ignored without a GPU."
    )
    cold_start_s: float = Field(
        60.0, ge=0, description="Seconds a denoiser replica takes to start (load and warm up; 55-65 s for the 5B "
        "on an H100). Added to estimates while the denoiser is scaled to zero, and the time before a starting "
        "replica (scale-up, replacement) takes any of the queue."
    )
    # True by default: both shipped configs put every stage on one box (CPU) or
    # one card (fractional GPUs), where stages contend. Wrongly true costs some
    # goodput (a few 429s too many); wrongly false admits videos that then miss
    # their deadlines, which is what admission exists to prevent.
    stages_share_hardware: bool = Field(
        True, description="Whether the denoiser and the video encoder run on the same hardware (one CPU box, "
        "or fractions of one GPU). True: each job ahead costs the sum of its denoise and decode time. False "
        "(separate cards or nodes): one job decodes while the next denoises, and the slower of the two "
        "queues sets the wait."
    )
    refresh_s: float = Field(1.0, gt=0, description="How often a gateway re-reads replica count and GPU use.")
    min_retry_after_s: float = Field(1.0, gt=0, description="Smallest Retry-After of a 429.")


# Model stages hold running jobs: their default grace covers the longest deadline.
MODEL_STAGE_GRACE_MARGIN_S = 30.0


class PreviewOptions(StrictModel):
    """Low-resolution previews in progress events while a video denoises (serve_app/preview.py)."""

    enabled: bool = Field(
        True, description="Send previews (a cheap latent-to-RGB projection, no VAE decode) in progress events."
    )
    every_n_steps: int = Field(1, ge=1, description="A preview at most every this many denoising steps.")
    min_interval_s: float = Field(
        0.5, ge=0, description="Least seconds between two previews of one job (the last step's always goes)."
    )
    max_per_job: int = Field(
        20, ge=2, description="Most previews per job: the step stride grows to keep under it. Bounds what "
        "previews add to a job's event log (each is at most ~8 kB)."
    )
    frames: int = Field(
        4, ge=1, le=8, description="Latent frames shown side by side (first to last, evenly spaced)."
    )


class ServiceArgs(StrictModel):
    """The `args:` block of serve_config.yaml."""

    # Startup errors must not print what was pasted into a field: a secret in
    # `sha256`, a password in a store URL.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    model: str = Field("tiny", description="Model profile name (configs/models/NAME.yaml) or path to one.")
    model_overrides: dict[str, Any] = Field(
        default_factory=dict, description="Profile fields to override, e.g. {dtype: float16}."
    )
    presets_file: str = Field("configs/presets.yaml", description="Presets and limits file.")
    data_dir: str = Field("data", description="Where videos and the tiny model are kept.")
    default_deadline_s: float = Field(30.0, gt=0, description="Deadline of a request that names none.")
    max_deadline_s: float = Field(600.0, gt=0, description="Largest deadline a request may ask for.")
    warmup: bool = Field(True, description="Run one tiny generation per stage at replica start.")
    progress_interval_s: float = Field(
        0.0, ge=0, description="Least seconds between two progress messages of the denoiser; 0 sends every step."
    )
    previews: PreviewOptions = Field(
        default_factory=PreviewOptions, description="Previews of the video while it denoises."
    )
    checkpoint_every_s: float = Field(
        30.0, ge=0, description="Save a denoising job's loop state this often (seconds of loop time), so a rerun "
        "after its denoiser replica died resumes at the last saved step instead of step 0; 0 turns it off. A "
        "720p checkpoint is ~85 MB (latents and the sampler's last outputs). Exact-path jobs of the single-request "
        "loop only (not with batching.enabled or a step cache).",
    )
    checkpoint_dir: str = Field(
        "", description="Where checkpoints are written ('' = <data_dir>/checkpoints). With denoisers on several "
        "nodes it must be shared storage, or a rerun on another node starts at step 0.",
    )
    compile_cache_dir: str = Field(
        "", description="Where torch.compile keeps its caches (inductor's FX graph and AOTAutograd caches, "
        "Triton kernels), so a restarted, replaced or autoscaled replica loads compiled code instead of compiling "
        "again ('' = <data_dir>/compile-cache, 'off' = torch's default in /tmp, lost with the machine). Share it "
        "between nodes of one GPU and software version to warm new nodes too. TORCHINDUCTOR_CACHE_DIR and "
        "TRITON_CACHE_DIR, when set in a replica's environment, win.",
    )
    checkpoint_ttl_s: float = Field(
        86400.0, gt=0, description="Checkpoints not written for this long are removed (jobs that ended elsewhere).",
    )
    sync_budget_s: float = Field(
        15.0, ge=0, description="A request whose estimated finish is within this many seconds is answered "
        "synchronously (200 with the finished video); later ones become jobs (202, status queued)."
    )
    default_job_deadline_s: float = Field(
        600.0, gt=0, description="Deadline of one run of an asynchronous job that names none."
    )
    job_store: str = Field(
        "", description="Where jobs are kept: '' (SQLite file in data_dir), 'sqlite:///path.db', or "
        "'redis://host:port/db' (shared by several gateway replicas or nodes)."
    )
    artifact_store: str = Field(
        "", description="Where videos and thumbnails are kept: '' (data_dir/videos), 'file:///dir', or "
        "'s3://bucket/prefix' (endpoint from AWS_ENDPOINT_URL)."
    )
    artifact_ttl_s: float = Field(86400.0, gt=0, description="Seconds a finished video's files are kept (expires_at).")
    job_max_attempts: int = Field(
        3, ge=1, description="Runs a job may start (restarts and takeovers included) before it fails."
    )
    job_lease_s: float = Field(
        15.0, gt=0, description="A running job whose runner has not proved alive for this long is taken over "
        "by another gateway replica (after a crash or restart)."
    )
    dispatch_interval_s: float = Field(
        1.0, gt=0, description="How often a gateway looks for orphaned jobs and expired files."
    )
    cache_enabled: bool = Field(True, description="Serve repeated requests from the result cache.")
    cache_store: str = Field(
        "", description="Cache index: '' (SQLite file in data_dir) or 'redis://host:port/db'. Cached files go "
        "to the artifact store."
    )
    cache_ttl_s: float = Field(86400.0, gt=0, description="Seconds a cached video is served (one day).")
    cache_max_bytes: int = Field(
        10 * 1024**3, gt=0, description="Total size of cached files; least recently used entries go first."
    )
    cache_casefold: bool = Field(
        False, description="Treat prompts that differ only in letter case as the same (and generate "
        "with the case-folded prompt)."
    )
    cache_inflight_ttl_s: float = Field(
        900.0, gt=0, description="How long a single-flight claim holds if its job never reports back."
    )
    embedding_cache_size: int = Field(
        64, ge=0, description="Texts (prompts and negative prompts) whose embeddings each prompt-encoder replica "
        "keeps (LRU; 0 turns it off)."
    )
    admin_key_env: str = Field(
        "WAN_SERVE_ADMIN_KEY", description="Environment variable holding the admin key (cache purge); unset "
        "disables admin routes."
    )
    webhook_secret_env: str = Field(
        "WAN_SERVE_WEBHOOK_SECRET", description="Environment variable holding the webhook signing secret."
    )
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list, description="Hosts, '*.suffix' patterns or IP/CIDRs webhooks may be sent to; "
        "empty refuses every webhook_url."
    )
    webhook_allow_http: bool = Field(False, description="Allow http:// webhook URLs (https only otherwise).")
    webhook_max_attempts: int = Field(5, ge=1, description="Deliveries tried per webhook before giving up.")
    webhook_backoff_initial_s: float = Field(1.0, gt=0, description="First retry delay; doubles per attempt.")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Seconds one webhook delivery may take.")
    admission: AdmissionConfig = Field(
        default_factory=AdmissionConfig, description="Admission control and quality tiers under load."
    )
    access: AccessConfig = Field(
        default_factory=AccessConfig, description="API keys, rate limits, concurrent-job caps, body size "
        "(docs/access.md)."
    )
    stages: StagesConfig = Field(default_factory=StagesConfig, description="Per-deployment Ray Serve options.")
    health: HealthOptions = Field(
        default_factory=HealthOptions, description="When a model replica fails Ray's health check and is replaced "
        "(CUDA errors, GPU memory that stays up, stuck calls)."
    )
    faults: FaultInjection = Field(
        default_factory=FaultInjection, description="Test-only fault injection into the model stages; all off by "
        "default. Never set in production."
    )

    @model_validator(mode="after")
    def _deadline_order(self) -> "ServiceArgs":
        if self.default_deadline_s > self.max_deadline_s:
            raise ValueError(
                f"default_deadline_s={self.default_deadline_s} > max_deadline_s={self.max_deadline_s}"
            )
        return self

    def deployment_options(self, stage: str) -> dict[str, Any]:
        """Ray Serve options of one deployment, with defaults that depend on other fields."""
        options: StageOptions = getattr(self.stages, stage)
        model_stage = stage in ("prompt_encoder", "denoiser", "video_encoder")
        grace = self.max_deadline_s + MODEL_STAGE_GRACE_MARGIN_S if model_stage else 20.0
        ray_options = options.to_deployment_options(default_grace_s=grace)
        if model_stage:  # they implement check_health (deployments/base.py)
            ray_options.update(self.health.deployment_options())
        return ray_options

    def model_profile(self) -> ModelProfile:
        return load_model_profile(self.model, self.model_overrides)

    def preset_catalog(self) -> PresetCatalog:
        return load_presets(self.presets_file)

    def tier_table(self) -> TierTable:
        """The degradation table, checked against the presets' limits."""
        table = load_tiers(self.admission.tiers_file)
        table.check(self.preset_catalog().limits, self.model_profile().speed.optimized_loop)
        return table

    @property
    def data_path(self) -> Path:
        return resolve(self.data_dir)

    @property
    def checkpoint_path(self) -> Path:
        return resolve(self.checkpoint_dir) if self.checkpoint_dir else self.data_path / "checkpoints"

    @property
    def compile_cache_path(self) -> Path | None:
        if self.compile_cache_dir == "off":
            return None
        return resolve(self.compile_cache_dir) if self.compile_cache_dir else self.data_path / "compile-cache"
