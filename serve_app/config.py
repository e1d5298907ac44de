"""`ServiceArgs`: the `args:` block of `serve_config.yaml`, composed from the settings.

One `ServiceArgs` model feeds the `args:` block of `serve_config.yaml`; every
field has a description, and validators quote the offending values.

The blocks it is made of (model profiles, presets, stages, admission,
previews, speed, health, access, faults, tiers, limits) are defined in
serve_app/settings/ and re-exported here, so `from serve_app.config import
ModelProfile` keeps working wherever it is written. Like them, this module
imports only settings and `serve_app.paths`: every layer above may import it,
so it must not import any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from serve_app.paths import resolve_data
from serve_app.settings.access import AccessConfig
from serve_app.settings.admission import AdmissionConfig
from serve_app.settings.base import StrictModel
from serve_app.settings.faults import FaultInjection
from serve_app.settings.health import HealthOptions
from serve_app.settings.image_input import ImageInputOptions
from serve_app.settings.limits import GenerationLimits
from serve_app.settings.model import ATTENTION_BACKENDS, DType, ModelProfile, TinyModelSpec, load_model_profile
from serve_app.settings.presets import Preset, PresetCatalog, load_presets
from serve_app.settings.previews import PreviewOptions
from serve_app.settings.redis import RedisClientOptions
from serve_app.settings.speed import SpeedOptions
from serve_app.settings.stages import AutoscalingOptions, ParallelDenoiserOptions, StageOptions, StagesConfig
from serve_app.settings.streams import StreamOptions
from serve_app.settings.tiers import TierTable, load_tiers

# Names importers take from here; the schemas themselves live in serve_app/settings/.
__all__ = [
    "ATTENTION_BACKENDS",
    "AccessConfig",
    "AdmissionConfig",
    "AutoscalingOptions",
    "DType",
    "FaultInjection",
    "GenerationLimits",
    "HealthOptions",
    "ImageInputOptions",
    "MODEL_STAGE_GRACE_MARGIN_S",
    "ModelProfile",
    "ParallelDenoiserOptions",
    "Preset",
    "PresetCatalog",
    "PreviewOptions",
    "RedisClientOptions",
    "ServiceArgs",
    "SpeedOptions",
    "StageOptions",
    "StagesConfig",
    "StreamOptions",
    "StrictModel",
    "TierTable",
    "TinyModelSpec",
    "load_model_profile",
    "load_presets",
    "load_tiers",
]

# Model stages hold running jobs: their default grace covers the longest deadline.
MODEL_STAGE_GRACE_MARGIN_S = 30.0
# The deployments that hold running jobs and implement check_health.
MODEL_STAGES = ("prompt_encoder", "denoiser", "video_encoder", "parallel_denoiser")


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
    data_dir: str = Field(
        "",
        description="Where jobs, videos, caches and the tiny model are kept. '' = the default: "
        "$WAN_VIDEO_DATA_DIR if set, else <checkout>/data in a source checkout, else $XDG_DATA_HOME/wan-video "
        "(~/.local/share/wan-video) for an installed package. A relative path is taken from the checkout root, or "
        "from that user data directory; never from the working directory (Ray replicas run elsewhere).",
    )
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
        30.0,
        ge=0,
        description="Save a denoising job's loop state this often (seconds of loop time), so a rerun "
        "after its denoiser replica died resumes at the last saved step instead of step 0; 0 turns it off. A "
        "720p checkpoint is ~85 MB (latents and the sampler's last outputs). Exact-path jobs of the single-request "
        "loop only (not with batching.enabled or a step cache).",
    )
    checkpoint_dir: str = Field(
        "",
        description="Where checkpoints are written ('' = <data_dir>/checkpoints). With denoisers on several "
        "nodes it must be shared storage, or a rerun on another node starts at step 0.",
    )
    compile_cache_dir: str = Field(
        "",
        description="Where torch.compile keeps its caches (inductor's FX graph and AOTAutograd caches, "
        "Triton kernels), so a restarted, replaced or autoscaled replica loads compiled code instead of compiling "
        "again ('' = <data_dir>/compile-cache, 'off' = torch's default in /tmp, lost with the machine). Share it "
        "between nodes of one GPU and software version to warm new nodes too. TORCHINDUCTOR_CACHE_DIR and "
        "TRITON_CACHE_DIR, when set in a replica's environment, win.",
    )
    checkpoint_ttl_s: float = Field(
        86400.0,
        gt=0,
        description="Checkpoints not written for this long are removed (jobs that ended elsewhere).",
    )
    sync_budget_s: float = Field(
        15.0,
        ge=0,
        description="A request whose estimated finish is within this many seconds is answered "
        "synchronously (200 with the finished video); later ones become jobs (202, status queued).",
    )
    default_job_deadline_s: float = Field(
        600.0, gt=0, description="Deadline of one run of an asynchronous job that names none."
    )
    job_store: str = Field(
        "",
        description="Where jobs are kept: '' (SQLite file in data_dir), 'sqlite:///path.db', or "
        "'redis://host:port/db' (shared by several gateway replicas or nodes).",
    )
    artifact_store: str = Field(
        "",
        description="Where videos and thumbnails are kept: '' (data_dir/videos), 'file:///dir', or "
        "'s3://bucket/prefix' (endpoint from AWS_ENDPOINT_URL).",
    )
    artifact_ttl_s: float = Field(86400.0, gt=0, description="Seconds a finished video's files are kept (expires_at).")
    artifact_url_ttl_s: int = Field(
        3600,
        ge=1,
        le=7 * 24 * 3600,
        description="With an s3:// artifact_store, GET .../content answers 307 to a presigned URL of the file, "
        "valid this many seconds (never past the video's expires_at; S3 allows at most 7 days). Long enough for "
        "a player that re-requests ranges while it plays, short enough that a leaked link soon stops working.",
    )
    job_retention_s: float = Field(
        7 * 86400.0,
        gt=0,
        description="Seconds a job's record is kept after the job ended (completed or failed); then the record, "
        "its idempotency key, its events and any files left are deleted, and the video answers 404. Default 7 "
        "days. Files go at expires_at (artifact_ttl_s) when that comes first.",
    )
    job_events_keep_s: float = Field(
        600.0,
        ge=0,
        description="Seconds a finished job's full event log (steps, previews, retries) is kept, so a stream that "
        "reconnects soon after the end replays it; then the log is trimmed to its terminal event.",
    )
    job_max_attempts: int = Field(
        3, ge=1, description="Runs a job may start (restarts and takeovers included) before it fails."
    )
    job_lease_s: float = Field(
        15.0,
        gt=0,
        description="A running job whose runner has not proved alive for this long is taken over "
        "by another gateway replica (after a crash or restart).",
    )
    dispatch_interval_s: float = Field(
        1.0, gt=0, description="How often a gateway looks for orphaned jobs and expired files."
    )
    cache_enabled: bool = Field(True, description="Serve repeated requests from the result cache.")
    cache_store: str = Field(
        "",
        description="Cache index: '' (SQLite file in data_dir) or 'redis://host:port/db'. Cached files go "
        "to the artifact store.",
    )
    cache_ttl_s: float = Field(86400.0, gt=0, description="Seconds a cached video is served (one day).")
    cache_max_bytes: int = Field(
        10 * 1024**3, gt=0, description="Total size of cached files; least recently used entries go first."
    )
    cache_casefold: bool = Field(
        False,
        description="Treat prompts that differ only in letter case as the same (and generate "
        "with the case-folded prompt).",
    )
    cache_inflight_ttl_s: float = Field(
        900.0, gt=0, description="How long a single-flight claim holds if its job never reports back."
    )
    cache_scope: Literal["per_key", "shared"] = Field(
        "per_key",
        description="With API keys on, whose cache entries a request may hit: 'per_key' (each key its own) "
        "or 'shared' (every key's, for more hits; a key then learns, from an instant `cached: true`, that "
        "another tenant generated a prompt it guessed). Without keys there is one scope either way.",
    )
    embedding_cache_size: int = Field(
        64,
        ge=0,
        description="Texts (prompts and negative prompts) whose embeddings each prompt-encoder replica "
        "keeps (LRU; 0 turns it off).",
    )
    admin_key_env: str = Field(
        "WAN_SERVE_ADMIN_KEY",
        description="Environment variable holding the admin key (cache purge); unset disables admin routes.",
    )
    webhook_secret_env: str = Field(
        "WAN_SERVE_WEBHOOK_SECRET", description="Environment variable holding the webhook signing secret."
    )
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts, '*.suffix' patterns or IP/CIDRs webhooks may be sent to; empty refuses every webhook_url.",
    )
    webhook_allow_http: bool = Field(False, description="Allow http:// webhook URLs (https only otherwise).")
    webhook_max_attempts: int = Field(5, ge=1, description="Deliveries tried per webhook before giving up.")
    webhook_backoff_initial_s: float = Field(1.0, gt=0, description="First retry delay; doubles per attempt.")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Seconds one webhook delivery may take.")
    webhook_resume_interval_s: float = Field(
        30.0,
        gt=0,
        description="How often each gateway looks for webhooks another gateway left unsent (it died while "
        "they were pending) and sends them; also once at start.",
    )
    admission: AdmissionConfig = Field(
        default_factory=AdmissionConfig, description="Admission control and quality tiers under load."
    )
    access: AccessConfig = Field(
        default_factory=AccessConfig,
        description="API keys, rate limits, concurrent-job caps, body size (docs/access.md).",
    )
    streams: StreamOptions = Field(
        default_factory=StreamOptions,
        description="Progress streams (SSE and WebSocket): caps per key and per replica, lifetime, keep-alive "
        "(docs/api.md, Progress streams).",
    )
    stages: StagesConfig = Field(
        default_factory=StagesConfig,
        description="Per-deployment Ray Serve options. A serve config's `deployments:` entry may set them instead, "
        "one place per option (docs/operations.md, Live retuning).",
    )
    image_input: ImageInputOptions = Field(
        default_factory=ImageInputOptions,
        description="Image-to-video: size and pixel limits of `input_reference`, and how long uploads are kept.",
    )
    health: HealthOptions = Field(
        default_factory=HealthOptions,
        description="When a model replica fails Ray's health check and is replaced "
        "(CUDA errors, GPU memory that stays up, stuck calls).",
    )
    redis: RedisClientOptions = Field(
        default_factory=RedisClientOptions,
        description="Timeouts of every Redis client (job_store, cache_store, access.store when they are redis://): "
        "a Redis that does not answer is a 503 within about a second, not a hung gateway.",
    )
    faults: FaultInjection = Field(
        default_factory=FaultInjection,
        description="Test-only fault injection into the model stages; all off by default. Never set in production.",
    )

    @model_validator(mode="after")
    def _deadline_order(self) -> ServiceArgs:
        if self.default_deadline_s > self.max_deadline_s:
            raise ValueError(f"default_deadline_s={self.default_deadline_s} > max_deadline_s={self.max_deadline_s}")
        return self

    def deployment_options(self, stage: str) -> dict[str, Any]:
        """Ray Serve options of one deployment, with defaults that depend on other fields."""
        options: StageOptions | None = getattr(self.stages, stage)
        if options is None:
            raise ValueError(f"stages.{stage} is not set: this app deploys no such deployment")
        model_stage = stage in MODEL_STAGES
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
        table = self.admission.tier_table()
        table.check(self.preset_catalog().limits, self.model_profile().speed.optimized_loop, self.model_profile().speed)
        return table

    @property
    def data_path(self) -> Path:
        return resolve_data(self.data_dir)

    @property
    def checkpoint_path(self) -> Path:
        return resolve_data(self.checkpoint_dir) if self.checkpoint_dir else self.data_path / "checkpoints"

    @property
    def compile_cache_path(self) -> Path | None:
        if self.compile_cache_dir == "off":
            return None
        return resolve_data(self.compile_cache_dir) if self.compile_cache_dir else self.data_path / "compile-cache"
