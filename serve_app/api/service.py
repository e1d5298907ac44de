"""The logic behind the routes: validate, decide sync or async, keep jobs, answer.

Every request becomes a durable job first (so nothing accepted is lost);
then the request either waits for it (the estimate fits the sync budget, or
the client asked with `Prefer: wait=N`) or answers 202 at once
(`Prefer: respond-async`, or the estimate is too long).
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal, Protocol

from serve_app.api.protocol import (
    CreateVideoRequest,
    HealthResponse,
    StageHealth,
    VideoDeleted,
    VideoList,
    VideoObject,
)
from serve_app.artifacts import ArtifactStore, check_variant, media_type
from serve_app.config import ModelProfile, PresetCatalog, ServiceArgs
from serve_app.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServiceError,
    Unauthorized,
    VideoExpired,
    VideoNotReady,
)
from serve_app.estimates import StageTimeEstimator
from serve_app.jobs.model import TERMINAL, JobRecord, JobStore
from serve_app.jobs.runner import JobRunner
from serve_app import metrics
from serve_app.cache.index import CacheEntry, artifact_id_for
from serve_app.cache.keys import cache_key
from serve_app.params import GenerationParams, resolve_generation

# How long past a synchronous request's deadline the gateway waits for the
# job's own deadline error (which names the step reached) before answering.
SYNC_GRACE_S = 3.0
# How often SSE/WebSocket readers look at the store for events written by
# other replicas (local ones wake them at once).
EVENT_POLL_S = 0.25


class StageProbe(Protocol):
    async def describe_stages(self) -> dict[str, StageHealth]: ...


def new_video_id() -> str:
    return f"video_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Preference:
    """RFC 7240 `Prefer`: respond-async, or wait=N seconds."""

    respond_async: bool = False
    wait_s: float | None = None

    @classmethod
    def parse(cls, header: str | None) -> "Preference":
        if not header:
            return cls()
        respond_async, wait_s = False, None
        for token in re.split(r"[,;]", header):
            token = token.strip().lower()
            if token == "respond-async":
                respond_async = True
            elif token.startswith("wait="):
                try:
                    wait_s = float(token[5:])
                except ValueError:
                    raise InvalidRequest(f"Prefer: {token!r} is not wait=<seconds>", param="Prefer") from None
                if wait_s < 0:
                    raise InvalidRequest(f"Prefer: {token!r} must not be negative", param="Prefer")
        return cls(respond_async, wait_s)


@dataclass
class CreateOutcome:
    video: VideoObject
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)


class VideoService:
    def __init__(
        self,
        args: ServiceArgs,
        profile: ModelProfile,
        catalog: PresetCatalog,
        store: JobStore,
        artifacts: ArtifactStore,
        runner: JobRunner,
        estimator: StageTimeEstimator,
        probe: StageProbe | None = None,
        check_webhook: Any = None,
        cache: Any = None,
        cache_index: Any = None,
        admin_key: str = "",
    ) -> None:
        self.args = args
        self.profile = profile
        self.catalog = catalog
        self.store = store
        self.artifacts = artifacts
        self.runner = runner
        self.estimator = estimator
        self.probe = probe
        self.check_webhook = check_webhook
        self.cache = cache  # ResultCache client (claim, fill, admin) or None
        self.cache_index = cache_index  # read side of its index, for lookups
        self.admin_key = admin_key

    # --- checks -----------------------------------------------------------------------

    def _check_model(self, model: str | None) -> None:
        allowed = {self.profile.model_id, self.profile.name}
        if model is not None and model not in allowed:
            raise InvalidRequest(f"model={model!r} is not served here; use {self.profile.model_id!r}", param="model")

    def _deadline_s(self, requested: float | None, sync: bool) -> float:
        if requested is None:
            return self.args.default_deadline_s if sync else self.args.default_job_deadline_s
        if not 0 < requested <= self.args.max_deadline_s:
            raise InvalidRequest(
                f"deadline_s={requested} is outside the allowed range (0, {self.args.max_deadline_s}]",
                param="deadline_s",
            )
        return requested

    @property
    def denoiser_replicas(self) -> int:
        opts = self.args.stages.denoiser
        return opts.autoscaling.max_replicas if opts.autoscaling else (opts.num_replicas or 1)

    def eta_s(self, job: JobRecord) -> float:
        """Queue ahead x this job's estimate spread over the denoisers, plus its own."""
        own = self.estimator.estimate(job.params)
        ahead = self.store.queue_position(job)
        return own * (1 + ahead / self.denoiser_replicas)

    # --- create -----------------------------------------------------------------------

    async def create_video(
        self, request: CreateVideoRequest, prefer: Preference, idempotency_key: str | None = None
    ) -> CreateOutcome:
        self._check_model(request.model)
        use_cache = self.cache is not None and self.cache_index is not None and self.args.cache_enabled \
            and request.cache
        params = resolve_generation(
            request.model_dump(),
            self.catalog,
            cache_model=self.profile.identity if use_cache else None,
            casefold=self.args.cache_casefold,
        )
        if request.webhook_url is not None and self.check_webhook is not None:
            self.check_webhook(request.webhook_url)
        draft = self._new_job(params, request, deadline_s=1.0, idempotency_key=idempotency_key)
        if use_cache:
            key = cache_key(self.profile.identity, params.model_dump())
            draft.cache_key = draft.video.cache_key = key
            # Read straight from the index (a local file or Redis): a hop to the
            # ResultCache replica would cost more than the rest of a hit.
            hit = self.cache_index.get(key, time.time())
            metrics.cache_lookup(hit is not None)
            if hit is not None:
                return self._answer_from_cache(draft, hit)
            holder = await self.cache.claim(key, draft.id)
            if holder != draft.id:
                shared = self._running(holder)
                if shared is not None:
                    return await self._attach(shared, prefer)
        sync = self._wants_sync(prefer, draft)
        draft.deadline_s = self._deadline_s(request.deadline_s, sync)
        job, created = self.store.create(draft)
        if created:
            self.runner.submit(job.id)
        elif draft.cache_key is not None:
            # An idempotent retry of an earlier job: our draft never runs, so
            # its single-flight claim must not hold the key.
            await self.cache.release(draft.cache_key, draft.id)
        return await self._answer(self.store.get(job.id), prefer, sync=sync and created, owned=True)

    def _wants_sync(self, prefer: Preference, job: JobRecord) -> bool:
        if prefer.respond_async:
            return False
        if prefer.wait_s is not None:
            return True  # the client said how long it will wait; it gets the job as it stands then
        return self.eta_s(job) <= self.args.sync_budget_s

    async def _answer(self, job: JobRecord, prefer: Preference, sync: bool, owned: bool) -> CreateOutcome:
        """202 with the job now, or wait for it (up to its deadline, or what Prefer: wait allows)."""
        headers = {"Location": f"/v1/videos/{job.id}"}
        if prefer.respond_async:
            headers["Preference-Applied"] = "respond-async"
        elif prefer.wait_s is not None:
            headers["Preference-Applied"] = f"wait={prefer.wait_s:g}"
        if not sync:
            return CreateOutcome(self._public(job), 202, headers)
        wait_s = job.deadline_s + SYNC_GRACE_S
        if prefer.wait_s is not None:
            wait_s = min(wait_s, prefer.wait_s)
        return await self._wait_sync(job, headers, wait_s, owned)

    def _running(self, job_id: str) -> JobRecord | None:
        """The job holding a single-flight claim, if it is still on its way."""
        try:
            job = self.store.get(job_id)
        except NotFound:
            return None
        return None if job.terminal or job.delete_requested else job

    async def _attach(self, job: JobRecord, prefer: Preference) -> CreateOutcome:
        """An identical request is generating: answer with that same job (one generation,
        N answers, one id). Waits like a request of its own would."""
        return await self._answer(job, prefer, sync=self._wants_sync(prefer, job), owned=False)

    def _answer_from_cache(self, draft: JobRecord, hit: CacheEntry) -> CreateOutcome:
        """A new, completed video object whose files are the cache entry's."""
        now = time.time()
        draft.artifact_id = artifact_id_for(draft.cache_key)
        video = draft.video
        video.status, video.progress, video.cached = "completed", 100, True
        video.completed_at, video.expires_at = int(now), int(hit.expires_at)
        job, _ = self.store.create(draft)
        if job.id == draft.id:
            self.store.append_event(job.id, {"type": "completed", "video": job.video.model_dump()})
        return CreateOutcome(job.video, 200, {"Location": f"/v1/videos/{job.id}"})

    async def _wait_sync(
        self, job: JobRecord, headers: dict[str, str], wait_s: float, owned: bool = True
    ) -> CreateOutcome:
        try:
            done = await self.runner.wait(job.id, wait_s)
        except asyncio.CancelledError:
            # The client went away: nobody will ever learn this job's id, so
            # its work would be wasted. Stop it at the next step (unless other
            # identical requests share it).
            if owned:
                self.runner.cancel(job.id)
            raise
        if done.video.status == "completed":
            return CreateOutcome(done.video, 200, headers)
        if done.video.status == "failed":
            raise self._error_of(done)
        # Still running past the wait (the estimate was wrong): it stays a job.
        return CreateOutcome(self._public(done), 202, headers)

    @staticmethod
    def _error_of(job: JobRecord) -> ServiceError:
        """The failed job's own error, as it was raised in the graph."""
        body = dict((job.error_body or {}).get("error") or {})
        code = body.pop("code", "internal_error")
        message = body.pop("message", "generation failed")
        error_type = body.pop("type", "server_error")
        param = body.pop("param", None)
        body["video_id"] = job.id
        exc = ServiceError(message, param=param, **body)
        exc.status_code, exc.code, exc.error_type = job.error_status or 500, code, error_type
        return exc

    def _new_job(
        self, params: GenerationParams, request: CreateVideoRequest, deadline_s: float, idempotency_key: str | None
    ) -> JobRecord:
        now = time.time()
        video = VideoObject(
            id=new_video_id(),
            status="queued",
            model=self.profile.model_id,
            created_at=int(now),
            size=params.size,
            seconds=f"{params.seconds:.2f}",
            preset=params.preset,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            width=params.width,
            height=params.height,
            num_frames=params.num_frames,
            fps=params.fps,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            seed=params.seed,
        )
        return JobRecord(
            video=video,
            params=params,
            deadline_s=deadline_s,
            created_at=now,
            idempotency_key=idempotency_key,
            webhook_url=request.webhook_url,
        )

    # --- read -------------------------------------------------------------------------

    def _public(self, job: JobRecord) -> VideoObject:
        """The video object with live queue position and ETA while not finished."""
        video = job.video.model_copy()
        if job.video.status == "queued":
            video.queue_position = self.store.queue_position(job)
            video.eta_s = round(self.eta_s(job), 3)
        elif job.video.status == "in_progress":
            video.eta_s = round(self.estimator.estimate(job.params) * (100 - video.progress) / 100, 3)
        return video

    def get_video(self, video_id: str) -> VideoObject:
        job = self.store.get(video_id)
        if job.delete_requested:
            raise NotFound(f"no video with id {video_id!r}", param="video_id")
        return self._public(job)

    def poll_after_ms(self, video: VideoObject) -> int:
        """For the OpenAI SDK's poll helper (openai-poll-after-ms)."""
        if video.eta_s is None:
            return 1000
        return int(min(2000, max(100, video.eta_s * 1000 / 10)))

    def list_videos(self, after: str | None, limit: int, order: Literal["asc", "desc"]) -> VideoList:
        if not 1 <= limit <= 100:
            raise InvalidRequest(f"limit={limit} is outside the allowed range [1, 100]", param="limit")
        jobs, has_more = self.store.list(after, limit, order)
        data = [self._public(j) for j in jobs if not j.delete_requested]
        return VideoList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=has_more,
        )

    def content(self, video_id: str, variant: str):
        """(local path or bytes, media type) of a completed video's file."""
        check_variant(variant)
        job = self.store.get(video_id)
        if job.video.status != "completed":
            raise VideoNotReady(
                f"video {video_id!r} is {job.video.status}; content exists only for completed videos",
                param="video_id",
                status=job.video.status,
            )
        if job.video.expires_at is not None and job.video.expires_at <= time.time():
            if job.artifact_id is None:
                self.artifacts.delete(video_id)
            raise VideoExpired(f"video {video_id!r} expired at {job.video.expires_at}", param="video_id")
        files = job.artifact_id or video_id
        path = self.artifacts.local_path(files, variant)
        return (path if path is not None else self.artifacts.get(files, variant)), media_type(variant)

    # --- cancel and delete ------------------------------------------------------------

    def cancel(self, video_id: str) -> VideoObject:
        job = self.store.get(video_id)
        if job.terminal:
            raise Conflict(f"video {video_id!r} is already {job.video.status}; nothing to cancel", param="video_id")
        job.cancel_requested = True
        self.store.save(job)
        self.runner.cancel(video_id)  # at once when it runs here; otherwise its runner sees the flag
        return self._public(self.store.get(video_id))

    def delete(self, video_id: str) -> VideoDeleted:
        job = self.store.get(video_id)
        if job.terminal:
            if job.artifact_id is None:  # a cached answer's files belong to the cache
                self.artifacts.delete(video_id)
            self.store.delete(video_id)
            return VideoDeleted(id=video_id)
        job.cancel_requested = job.delete_requested = True
        self.store.save(job)
        self.runner.cancel(video_id)  # its runner deletes the record when the loop has stopped
        return VideoDeleted(id=video_id)

    # --- events -----------------------------------------------------------------------

    async def events(self, video_id: str, after_seq: int = 0) -> AsyncIterator[tuple[int, dict]]:
        """The job's events from `after_seq` on, live, ending with its terminal event."""
        self.store.get(video_id)  # 404 before the stream starts
        seq = after_seq
        while True:
            batch = self.store.events_after(video_id, seq)
            for seq, event in batch:
                yield seq, event
                if event.get("type") in TERMINAL:
                    return
            if not batch:
                try:
                    job = self.store.get(video_id)
                except NotFound:
                    return  # deleted while watched
                if job.terminal and not self.store.events_after(video_id, seq):
                    return
                await self.runner.wait_for_change(EVENT_POLL_S)

    # --- cache admin --------------------------------------------------------------------

    def check_admin(self, authorization: str | None) -> None:
        if not self.admin_key:
            raise Forbidden(f"admin routes are off: set ${self.args.admin_key_env} to enable them")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.admin_key.encode()):
            raise Unauthorized("admin routes need 'Authorization: Bearer <admin key>'", param="Authorization")

    def _need_cache(self) -> Any:
        if self.cache is None or not self.args.cache_enabled:
            raise Forbidden("the result cache is disabled (cache_enabled: false)")
        return self.cache

    async def cache_stats(self, authorization: str | None) -> dict:
        self.check_admin(authorization)
        return await self._need_cache().stats()

    async def cache_delete(self, key: str, authorization: str | None) -> dict:
        self.check_admin(authorization)
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise InvalidRequest(f"key={key!r} is not a cache key (64 hex digits)", param="key")
        if not await self._need_cache().delete(key):
            raise NotFound(f"no cache entry {key!r}", param="key")
        return {"key": key, "deleted": True}

    async def cache_purge(self, authorization: str | None) -> dict:
        self.check_admin(authorization)
        return {"purged": await self._need_cache().purge()}

    # --- health -----------------------------------------------------------------------

    async def health(self) -> HealthResponse:
        stages = await self.probe.describe_stages() if self.probe else {}
        return HealthResponse(
            status="ok" if all(s.ok for s in stages.values()) else "degraded",
            model=self.profile.identity,
            attention_backend=self.profile.attention_backend,
            default_deadline_s=self.args.default_deadline_s,
            stages=stages,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "presets": {k: v.model_dump() for k, v in self.catalog.presets.items()},
            "limits": self.catalog.limits.model_dump(),
            "default_preset": self.catalog.default_preset,
        }
