"""`build_gateway`: the whole HTTP gateway, made and wired in one place, without Ray.

The gateway deployment (deployments/gateway.py) hands it Ray Serve handles and
the stores its settings name; tests hand it fakes and temporary stores. Either
way the same objects are made and joined the same way:

    settings = GatewaySettings.load(ServiceArgs(...))     # files and secrets, read once
    gateway = build_gateway(settings, GatewayHandles(generator=...), GatewayStores.open(settings))
    gateway.start()        # a deployment: the job dispatcher and the load poll
    gateway.app            # the FastAPI app
    await gateway.close()  # running jobs back to the store, stores closed
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from serve_app.access.guard import AccessGuard, AdminAccess
from serve_app.access.keys import check_admin_key
from serve_app.api import admin, health, videos, web
from serve_app.api.admin import CacheAdmin
from serve_app.api.browser import BrowserGuard, allowed_hosts
from serve_app.api.create import VideoCreator
from serve_app.api.error_handlers import ERROR_RESPONSES, install_error_handlers
from serve_app.api.health import ServiceReport, StageProbe
from serve_app.api.streams import ProgressStreams
from serve_app.api.views import VideoViews
from serve_app.artifacts import ArtifactStore, open_artifact_store
from serve_app.cache.index import CacheIndex, open_cache_index
from serve_app.config import ModelProfile, PresetCatalog, ServiceArgs, StageOptions
from serve_app.estimates import StageTimeEstimator
from serve_app.handles import ResultCacheClient, VideoGenerator
from serve_app.jobs.event_feed import JobEventFeeds
from serve_app.jobs.listeners import WebhookDelivery
from serve_app.jobs.model import JobRecord, JobStore
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.store_thread import close_off_loop, off_loop
from serve_app.jobs.stores import open_job_store
from serve_app.jobs.webhook_outbox import WebhookOutbox, open_webhook_outbox
from serve_app.policy.admission import Admission
from serve_app.policy.load import LoadMonitor, QueueEta, ReplicaCount
from serve_app.policy.tiers import lowest_tier
from serve_app.reference_images import ReferenceImageStore, reference_images_for, sweeper
from serve_app.routing import DenoiserRoutes
from serve_app.settings.tiers import TierTable
from serve_app.webhooks import WebhookConfig, check_destination, deliver, longest_delivery_s, video_event

# Unfinished jobs read per admission decision or ETA; admission keeps the queue far
# below this (max_queue_per_replica per replica), so it only bounds the naive mode.
ACTIVE_JOBS_READ_LIMIT = 2000

ReplicaSource = Callable[[], ReplicaCount | int | None]


def webhook_config(args: ServiceArgs, env: Mapping[str, str] | None = None) -> WebhookConfig:
    secret = (os.environ if env is None else env).get(args.webhook_secret_env, "")
    # No secret, no webhooks: a webhook_url is then refused with a 400 rather
    # than the gateway refusing to start (make run sets no secret).
    return WebhookConfig(
        enabled=bool(secret),
        secret=secret,
        allowed_hosts=args.webhook_allowed_hosts,
        allow_http=args.webhook_allow_http,
        max_attempts=args.webhook_max_attempts,
        backoff_initial_s=args.webhook_backoff_initial_s,
        timeout_s=args.webhook_timeout_s,
    )


def new_replica_id() -> str:
    """Names this gateway replica: as the owner of the jobs it runs, and in Wan-Replica headers."""
    return f"gateway-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway reads once at start: its args, the files they name, its secrets."""

    args: ServiceArgs
    profile: ModelProfile
    catalog: PresetCatalog
    tiers: TierTable  # admission's tiers; the last one is the out-of-memory retry's
    webhooks: WebhookConfig
    admin_key: str = ""  # the operator's key for the admin routes ('': admin API keys only)
    replica_id: str = field(default_factory=new_replica_id)

    def __post_init__(self) -> None:
        # At start, naming the variable: a short admin key is refused before anything serves.
        check_admin_key(self.admin_key, self.args.admin_key_env)

    @classmethod
    def load(
        cls,
        args: ServiceArgs,
        env: Mapping[str, str] | None = None,
        *,
        profile: ModelProfile | None = None,
        replica_id: str | None = None,
    ) -> GatewaySettings:
        """`env` None reads os.environ; `profile` replaces the one `args` names (tests)."""
        env = os.environ if env is None else env
        profile = profile or args.model_profile()
        catalog = args.preset_catalog()
        # As ServiceArgs.tier_table() checks it, against the profile and presets read here
        # rather than read again (and against a profile that replaces the args' one).
        tiers = args.admission.tier_table()
        tiers.check(catalog.limits, profile.speed.optimized_loop, profile.speed)
        return cls(
            args=args,
            profile=profile,
            catalog=catalog,
            tiers=tiers,
            webhooks=webhook_config(args, env),
            admin_key=env.get(args.admin_key_env, ""),
            replica_id=replica_id or new_replica_id(),
        )


@dataclass
class GatewayHandles:
    """What the gateway calls outside itself: Ray Serve handles in the deployment, fakes in tests
    (their Protocols: serve_app/handles.py)."""

    generator: VideoGenerator  # runs one job through the stages (serve_app.graph.StageGraph)
    cache: ResultCacheClient | None = None  # claims, fills and admin (None: no result cache)
    probe: StageProbe | None = None  # the stages' health for /healthz (None: no stages to report)
    # Replica counts and GPU use for admission, polled in the background once started;
    # None: the configured counts, never refreshed.
    denoiser_replicas: ReplicaSource | None = None
    encoder_replicas: ReplicaSource | None = None
    parallel_replicas: ReplicaSource | None = None  # the multi-GPU denoiser's, where the app deploys one
    gpu_utilization: Callable[[], float | None] | None = None


@dataclass
class GatewayStores:
    """What the gateway keeps, shared with the other gateway replicas through its backends."""

    jobs: JobStore
    artifacts: ArtifactStore
    cache_index: CacheIndex | None = None  # the result cache's index, read for lookups (None: no cache)
    access: AccessGuard | None = None  # API keys and the limiter store (None: open, unlimited)
    # Webhooks still owed, beside the jobs (None: build_gateway opens it as `job_store` says).
    webhook_outbox: WebhookOutbox | None = None
    # Uploaded first-frame images (image to video); None: the artifacts' backend's, made by build_gateway.
    images: ReferenceImageStore | None = None

    @classmethod
    def open(cls, settings: GatewaySettings) -> GatewayStores:
        args = settings.args
        artifacts = open_artifact_store(args.artifact_store, args.data_path)
        return cls(
            jobs=open_job_store(args.job_store, args.data_path, args.redis),
            artifacts=artifacts,
            cache_index=open_cache_index(args.cache_store, args.data_path, args.redis),
            access=AccessGuard(args.access, redis=args.redis),
            webhook_outbox=open_webhook_outbox(args.job_store, args.data_path, args.redis),
            images=reference_images_for(artifacts),
        )

    def close(self) -> None:
        close_off_loop(self.jobs)  # the calls already handed to the store's thread run first
        self.jobs.close()
        if self.webhook_outbox is not None:
            self.webhook_outbox.close()
        if self.access is not None:
            self.access.close()


@dataclass
class GatewayApp:
    """The built gateway: its FastAPI app and the parts behind it."""

    app: FastAPI
    creator: VideoCreator  # POST /v1/videos
    views: VideoViews  # reading, cancelling and deleting videos
    streams: ProgressStreams  # their SSE and WebSocket event streams
    report: ServiceReport  # /healthz and /v1/presets
    runner: JobRunner
    load: LoadMonitor
    admission: Admission | None
    estimator: StageTimeEstimator
    settings: GatewaySettings
    stores: GatewayStores
    webhooks: WebhookDelivery | None = None  # sends webhooks, this gateway's and those left unsent

    @property
    def guard(self) -> AccessGuard | None:
        return self.stores.access

    def start(self) -> None:
        """Background work of a serving replica: jobs and webhooks left behind by a previous
        gateway are picked up from here on, and replica counts and GPU use are polled."""
        self.runner.start()
        self.load.start()
        if self.webhooks is not None:
            self.webhooks.start()

    async def close(self) -> None:
        """Scale-down, redeploy, shutdown: running jobs go back to the store, so another
        replica (or the next start) resumes them at once."""
        self.load.stop()
        self.streams.feeds.close()
        await self.runner.shutdown()
        self.stores.close()


def initial_replicas(options: StageOptions) -> int:
    """Replicas a stage starts with: its fixed count, or its autoscaling floor."""
    if options.autoscaling is None:
        return options.max_replicas
    return options.autoscaling.initial_replicas or options.autoscaling.min_replicas


def build_gateway(
    settings: GatewaySettings,
    handles: GatewayHandles,
    stores: GatewayStores,
    *,
    admission: bool = True,
    estimator: StageTimeEstimator | None = None,
) -> GatewayApp:
    """The gateway over `handles` and `stores`.

    `admission` False runs without admission at all: every request is taken as asked,
    synchronously when its ETA fits the sync budget (route tests; `admission.enabled:
    false` in the args still decides, at the exact tier). `estimator`: the learned stage
    times to start from (default: the profile's priors)."""
    args, profile = settings.args, settings.profile
    # Which denoiser deployment each job runs on, for its ETA and its queue (serve_app/routing.py).
    routes = DenoiserRoutes.of(args.stages)
    estimator = estimator or StageTimeEstimator(
        profile.prior_step_s_per_ktoken, profile.prior_decode_s_per_mpixel, routes=routes
    )
    parallel_stage = args.stages.parallel_denoiser
    if stores.images is None:
        stores.images = reference_images_for(stores.artifacts)
    guard = stores.access
    load = LoadMonitor(
        active_jobs=lambda: stores.jobs.active(ACTIVE_JOBS_READ_LIMIT),
        estimator=estimator,
        replicas=handles.denoiser_replicas or _no_poll,
        gpu_utilization=handles.gpu_utilization,
        refresh_s=args.admission.refresh_s,
        initial_replicas=initial_replicas(args.stages.denoiser),
        encoder_replicas=handles.encoder_replicas,
        initial_encoder_replicas=initial_replicas(args.stages.video_encoder),
        parallel_replicas=handles.parallel_replicas,
        initial_parallel_replicas=initial_replicas(parallel_stage) if parallel_stage is not None else 0,
        # On the job store's own thread, which orders it with this replica's creates (api/create.py).
        read_off_loop=off_loop(stores.jobs).call,
    )
    eta = QueueEta(load, args.admission)

    def free_job_slot(job: JobRecord) -> None:
        if guard is not None and job.key_id is not None:
            guard.release_job(job.key_id, job.id)

    async def send_webhook(job: JobRecord) -> Any:
        # OpenAI's event envelope (video.completed / video.failed), which its SDK unwraps.
        return await deliver(job.webhook_url, video_event(job.video.model_dump()), settings.webhooks)

    if stores.webhook_outbox is None:
        stores.webhook_outbox = open_webhook_outbox(args.job_store, args.data_path)
    webhooks = WebhookDelivery(
        stores.jobs,
        send_webhook,
        stores.webhook_outbox,
        # Held for twice the longest delivery (and DNS's share): overrunning it means a second sending.
        claim_s=2 * longest_delivery_s(settings.webhooks) + 30.0,
        resume_every_s=args.webhook_resume_interval_s,
    )
    runner = JobRunner(
        store=stores.jobs,
        artifacts=stores.artifacts,
        generator=handles.generator,
        estimator=estimator,
        owner=settings.replica_id,
        lease_s=args.job_lease_s,
        dispatch_interval_s=args.dispatch_interval_s,
        artifact_ttl_s=args.artifact_ttl_s,
        job_retention_s=args.job_retention_s,
        events_keep_s=args.job_events_keep_s,
        cache=handles.cache,
        max_attempts=args.job_max_attempts,
        on_finished=free_job_slot,
        lower_memory=lowest_tier(settings.tiers),
        eta=eta.of_stored_job,  # queued events show the ETA admission decided on
    )
    runner.listeners.append(webhooks)  # after the result cache's fill: the order does not matter to either
    if stores.images is not None:
        runner.expiry.also.append(sweeper(stores.images, args.image_input.keep_s))
    policy = (
        Admission(
            args.admission,
            settings.tiers,
            estimator,
            args.stages.denoiser.max_replicas,
            parallel_max_replicas=parallel_stage.max_replicas if parallel_stage is not None else 0,
        )
        if admission
        else None
    )
    views = VideoViews(
        stores.jobs, stores.artifacts, runner, eta, cache=handles.cache, content_url_ttl_s=args.artifact_url_ttl_s
    )
    # One store poller per watched job, woken by the runner's events for that job.
    feeds = JobEventFeeds(stores.jobs, args.streams.poll_interval_s)
    runner.watch_events(feeds.notify)
    streams = ProgressStreams(views, feeds, args.streams)
    creator = VideoCreator(
        args=args,
        profile=profile,
        catalog=settings.catalog,
        store=stores.jobs,
        runner=runner,
        views=views,
        load=load,
        eta=eta,
        admission=policy,
        cache=handles.cache,
        cache_index=stores.cache_index,
        guard=guard,
        check_webhook=lambda url: check_destination(url, settings.webhooks),
        webhooks=webhooks,
        images=stores.images,
    )
    # The guard's own config where there is one (the deployment opens it from args.access).
    access_config = guard.config if guard is not None else args.access
    report = ServiceReport(profile, settings.catalog, args.default_deadline_s, handles.probe, guard, policy, load)
    app = create_app(
        creator=creator,
        views=views,
        streams=streams,
        report=report,
        cache_admin=CacheAdmin(handles.cache, args.cache_enabled),
        admin_access=AdminAccess(settings.admin_key, args.admin_key_env, guard, config=access_config),
        guard=guard,
        replica=settings.replica_id,
        max_body_bytes=args.access.max_body_bytes,
        image_input=args.image_input if stores.images is not None else None,
    )
    # Outermost: a request by an untrusted Host or a foreign web page is refused before any route.
    auth_on = guard is not None and guard.auth_enabled
    app.add_middleware(
        BrowserGuard, hosts=allowed_hosts(access_config, auth_on), trusted_origins=access_config.trusted_origins
    )
    return GatewayApp(
        app=app,
        creator=creator,
        views=views,
        streams=streams,
        report=report,
        runner=runner,
        load=load,
        admission=policy,
        estimator=estimator,
        settings=settings,
        stores=stores,
        webhooks=webhooks,
    )


def create_app(**state: Any) -> FastAPI:
    """The FastAPI app: the routers, the error shape, and in `app.state` what the
    handlers call (creator, views, streams, report, cache_admin, admin_access, guard, replica,
    max_body_bytes, image_input)."""
    app = FastAPI(
        title="Wan2.2 text-to-video",
        version="0.1.0",
        description="Text-to-video generation (Wan2.2-TI2V-5B) on Ray Serve, OpenAI-style /v1/videos.",
        responses=ERROR_RESPONSES,
    )
    for name, value in state.items():
        setattr(app.state, name, value)
    install_error_handlers(app)
    app.include_router(videos.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.include_router(web.router)
    web.mount_static(app)
    return app


def _no_poll() -> None:
    """A replica count that is never known better than the configured one."""
    return None
