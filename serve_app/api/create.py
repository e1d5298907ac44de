"""POST /v1/videos: from a request to a job and an answer, in one pass.

Every request becomes a durable job first (so nothing accepted is lost), unless
the result cache has its video; then the request either waits for it (the
estimate fits the sync budget, or the client asked with `Prefer: wait=N`) or
answers 202 at once (`Prefer: respond-async`, or the estimate is too long).
`VideoCreator.create_video` reads as its steps, each done once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from serve_app import metrics
from serve_app.access.guard import AccessGuard
from serve_app.access.keys import Principal
from serve_app.api.cached_answers import CachedAnswers
from serve_app.api.create_answer import CreateOutcome, Preference, errors_final, new_video_id, tier_header
from serve_app.api.image_input import image_bytes_of, open_checked
from serve_app.api.protocol import CreateVideoRequest
from serve_app.api.views import VideoViews
from serve_app.cache.index import CacheIndex
from serve_app.cache.keys import cacheable_form
from serve_app.config import ModelProfile, PresetCatalog, ServiceArgs
from serve_app.errors import InvalidRequest, NotFound, ServiceError
from serve_app.handles import CacheClaims
from serve_app.images import image_sha256
from serve_app.jobs.listeners import WebhookDelivery
from serve_app.jobs.model import JobRecord, JobStore
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.store_thread import off_loop
from serve_app.params import GenerationParams, resolve_generation
from serve_app.policy.admission import Admission, Deadlines, Decision, Mode, as_asked
from serve_app.policy.load import LoadMonitor, QueueEta
from serve_app.reference_images import ReferenceImageStore
from serve_app.settings.speed import FastKnobs

log = logging.getLogger("ray.serve")

# How long past a synchronous request's deadline the gateway waits for the
# job's own deadline error (which names the step reached) before answering.
SYNC_GRACE_S = 3.0
# The run deadline of a job answered from the cache: it never runs.
CACHED_RUN_S = 0.0


class VideoCreator(CachedAnswers):
    def __init__(
        self,
        args: ServiceArgs,
        profile: ModelProfile,
        catalog: PresetCatalog,
        store: JobStore,
        runner: JobRunner,
        views: VideoViews,
        load: LoadMonitor,
        eta: QueueEta,
        admission: Admission | None = None,
        cache: CacheClaims | None = None,
        cache_index: CacheIndex | None = None,
        guard: AccessGuard | None = None,
        check_webhook: Callable[[str], Any] | None = None,
        webhooks: WebhookDelivery | None = None,
        images: ReferenceImageStore | None = None,
    ) -> None:
        self.args = args
        self.profile = profile
        self.catalog = catalog
        self.store = store
        self.jobs = off_loop(store)  # the store's calls, off the event loop
        self.runner = runner
        self.views = views  # the public video object of a job (live queue position and ETA)
        self.load = load  # the queue admission reads, and where an admitted request holds its place
        self.eta = eta
        self.admission = admission  # deadline-aware admission and quality tiers (None: off)
        self.cache = cache  # ResultCache client (claim, release) or None
        self.cache_index = cache_index  # read side of its index, for lookups
        self.guard = guard  # API keys, rate limits, job caps (None: open, unlimited)
        self.check_webhook = check_webhook  # raises for a webhook_url that may not be called
        self.webhooks = webhooks  # sends the webhook of an answer from the cache (None: not sent)
        self.images = images  # uploaded first frames, for the job's runs (None: image input refused)

    async def create_video(
        self,
        request: CreateVideoRequest,
        prefer: Preference,
        idempotency_key: str | None = None,
        principal: Principal | None = None,
    ) -> CreateOutcome:
        """POST /v1/videos in one pass: every step below runs once."""
        self._check_model(request.model)
        if idempotency_key is not None and principal is not None and principal.authenticated:
            idempotency_key = f"{principal.id}:{idempotency_key}"  # one key's retries never find another's job

        # 1. Resolve: preset + overrides, checked (a 400 names the field); a missing seed is random.
        #    An image (image to video) is size-checked first, and opened once the rest is known good.
        image_input = self.args.image_input if self.images is not None else None
        image = image_bytes_of(request, image_input)
        fields = request.model_dump(exclude={"input_reference"})
        if image is not None:
            fields["input_reference_sha256"] = image_sha256(image)
        requested = resolve_generation(fields, self.catalog)
        if request.quality == "fast":
            requested = requested.model_copy(update={"fast": self._fast_knobs()})
        if request.webhook_url is not None and self.check_webhook is not None:
            # In a thread: the check resolves the host name, and getaddrinfo blocks for as
            # long as DNS takes (seconds, for a name whose servers do not answer).
            await asyncio.to_thread(self.check_webhook, request.webhook_url)
        if image is not None:
            await open_checked(image, image_input)

        # 2. Normalise for the cache: the form it keys and runs. Made whenever there is a
        #    cache, since a tier may force the cache on even for `cache: false`.
        scope = self._cache_scope(principal)
        cacheable = None
        if self._cache_on:
            cacheable = cacheable_form(
                requested,
                seed_given=request.seed is not None,
                model_identity=self.profile.identity,
                casefold=self.args.cache_casefold,
                max_seed=self.catalog.limits.max_seed,
            )
        asked = cacheable if cacheable is not None and request.cache else requested

        # 3. Look up: a finished video exactly as asked beats any admission decision.
        looked_up = None
        if asked is cacheable:
            looked_up = self._key(asked, scope)
            answer = await self._from_cache(
                looked_up, lambda: self._new_job(asked, request, CACHED_RUN_S, idempotency_key, principal)
            )
            if answer is not None:
                return answer

        # The image goes where every runner can read it, before any job may run (or be
        # taken over) with it; awaited here, since nothing may await from admission to the claim.
        if image is not None and self.images is not None:
            await asyncio.to_thread(self.images.put, asked.input_reference_sha256, image)

        # 4. Admit, once: sync or a job, the tier and what it runs, the deadline, the cache.
        #    The queue is read off the loop, on the store's thread, the last await before the
        #    claim: a create of this replica that stored its job before this read is in it,
        #    and one storing it after still holds its reservation when this decides (its
        #    create finishes after this read on that thread, so it resumes after this does).
        active = await self.eta.read_active()
        decision = self._admit(asked, cacheable, request, prefer, active)
        draft = self._new_job(asked, request, decision.deadline_s, idempotency_key, principal)
        if decision.tier is not None:
            draft.run_at_tier(decision.tier, decision.params)
        look_up_again = False
        if cacheable is not None and (request.cache or decision.force_cache):
            # A lower tier, or a cache the tier forced, is another entry, which may be there.
            already = looked_up is not None and decision.params is asked
            key = looked_up if already else self._key(decision.params, scope)
            look_up_again = not already
            draft.video.cache_key = key
            if request.cache:
                # Only what the client let into the cache fills it (and claims its key): a
                # tier that forced the cache on for `cache: false` may answer from it, never
                # put that client's video in it.
                draft.cache_key = key

        # 5. Claim. Nothing has awaited since the decision: reserving now makes admission and
        #    job creation one step for every create on this event loop. The reservation ends
        #    as soon as the job is stored (it counts there) or the request leaves this block
        #    any other way; past it, a sync request may wait for minutes.
        with self.load.reserve(draft.cache_key or draft.id, draft):
            if look_up_again and draft.video.cache_key is not None:
                # Inside the reservation: the lookup awaits, and creates decided meanwhile must see this one.
                answer = await self._from_cache(draft.video.cache_key, lambda: draft)
                if answer is not None:
                    return answer
            shared = await self._claim(draft)
            if shared is None:
                # 6. Persist (an idempotent retry finds its earlier job instead).
                job, created = await self.jobs.create(draft)
        if shared is not None:
            with errors_final(shared.id):
                return await self._attach(shared, prefer)
        if created:
            await self._hold_job_slot(job, principal, decision)
            metrics.admitted("sync" if decision.sync else "async", draft.video.tier or "none")
            await self.runner.submit(job.id)
        elif draft.cache_key is not None:
            # An idempotent retry of an earlier job: our draft never runs, so
            # its single-flight claim must not hold the key.
            await self.cache.release(draft.cache_key, draft.id)

        # 7. Answer: wait for the video, or a 202 with the job. From here a job exists, so
        #    every error is final (x-should-retry: false): a retry without our Idempotency-Key
        #    would start the same generation again.
        with errors_final(job.id):
            current = await self.jobs.get(job.id)
            # An idempotent retry answers as its first request would have: a finished job at
            # once (200, or its error), one still running waited for as a joining request is.
            sync = decision.sync if created else await self._retry_waits(prefer, current)
            outcome = await self._answer(current, prefer, sync=sync, owned=True)
        if decision.load is not None:
            outcome.headers["Wan-Load"] = f"{decision.load:.2f}"
        if outcome.video.tier:
            outcome.headers["Wan-Tier"] = tier_header(outcome.video)
        return outcome

    def _fast_knobs(self) -> FastKnobs:
        """What `quality: fast` runs: the profile's speed.fast (validated at load to be held)."""
        knobs = self.profile.speed.fast
        if knobs.exact:
            raise InvalidRequest(
                f"quality='fast' is not offered by model profile {self.profile.name!r} (its speed.fast sets no "
                "fast knobs); use 'auto' or 'exact'",
                param="quality",
            )
        return knobs

    def _check_model(self, model: str | None) -> None:
        allowed = {self.profile.model_id, self.profile.name}
        if model is not None and model not in allowed:
            raise InvalidRequest(f"model={model!r} is not served here; use {self.profile.model_id!r}", param="model")

    def _deadlines(self, requested: float | None) -> Deadlines:
        if requested is None:
            return Deadlines(sync_s=self.args.default_deadline_s, job_s=self.args.default_job_deadline_s)
        if not 0 < requested <= self.args.max_deadline_s:
            raise InvalidRequest(
                f"deadline_s={requested} is outside the allowed range (0, {self.args.max_deadline_s}]",
                param="deadline_s",
            )
        return Deadlines(sync_s=requested, job_s=requested)

    def _admit(
        self,
        asked: GenerationParams,
        cacheable: GenerationParams | None,
        request: CreateVideoRequest,
        prefer: Preference,
        active: list[JobRecord],
    ) -> Decision:
        """`active`: the unfinished jobs, read just before."""
        mode: Mode = "async" if prefer.respond_async else "wait" if prefer.wait_s is not None else "auto"
        deadlines = self._deadlines(request.deadline_s)
        if self.admission is None:
            return as_asked(
                asked,
                self.eta.of_request(asked, active),
                mode=mode,
                sync_budget_s=self.args.sync_budget_s,
                deadlines=deadlines,
            )
        try:
            decision = self.admission.decide(
                asked,
                self.load.snapshot(jobs=active),
                mode=mode,
                exact=request.quality == "exact",
                sync_budget_s=self.args.sync_budget_s,
                deadline_s=deadlines,
                wait_s=prefer.wait_s,
                cacheable=cacheable,
            )
        except ServiceError as exc:
            metrics.admitted("rejected", exc.code)
            raise
        metrics.load(decision.load)
        return decision

    async def _claim(self, draft: JobRecord) -> JobRecord | None:
        """Take the draft's cache key for its generation (single flight). Returns the job to
        join instead when an identical one holds the key and is still on its way."""
        if draft.cache_key is None:
            return None
        holder = await self.cache.claim(draft.cache_key, draft.id)
        if holder == draft.id:
            return None
        running = await self._running(holder)
        # With auth on, a job is visible to its own key only, so requests
        # of another key do not attach to it: theirs runs (or, once the
        # first finishes, is a cache hit).
        if running is None or running.key_id != draft.key_id:
            return None
        # Marked before this request learns the id, so its creator hanging up leaves it
        # running; None if it was cancelled or ended meanwhile: this request runs its own.
        return await self.jobs.attach(running.id)

    async def _hold_job_slot(self, job: JobRecord, principal: Principal | None, decision: Decision) -> None:
        """The key's cap on unfinished jobs, checked once the job (and its final id) exists:
        an idempotent retry then finds its job rather than a second slot. Over the cap, the
        job is taken back before anyone saw it."""
        if self.guard is None or principal is None:
            return
        try:
            self.guard.acquire_job(principal, job.id, retry_after_s=decision.eta_s)
        except ServiceError:
            await self.jobs.delete(job.id)
            if job.cache_key is not None:
                await self.cache.release(job.cache_key, job.id)
            raise

    async def _retry_waits(self, prefer: Preference, job: JobRecord) -> bool:
        """Whether an idempotent retry (same Idempotency-Key) waits for the job it found."""
        if prefer.respond_async:
            return False
        return job.terminal or await self._joins_sync(prefer, job)

    async def _joins_sync(self, prefer: Preference, job: JobRecord) -> bool:
        """Whether a request joining another's job waits for it: the sync budget decides."""
        if prefer.respond_async:
            return False
        if prefer.wait_s is not None:
            return True  # the client said how long it will wait; it gets the job as it stands then
        return await self.eta.of_stored_job(job) <= self.args.sync_budget_s

    async def _answer(self, job: JobRecord, prefer: Preference, sync: bool, owned: bool) -> CreateOutcome:
        """202 with the job now, or wait for it (up to its deadline, or what Prefer: wait allows)."""
        headers = {"Location": f"/v1/videos/{job.id}"}
        if prefer.respond_async:
            headers["Preference-Applied"] = "respond-async"
        elif prefer.wait_s is not None:
            headers["Preference-Applied"] = f"wait={prefer.wait_s:g}"
        if not sync:
            return CreateOutcome(await self.views.public(job), 202, headers)
        wait_s = job.deadline_s + SYNC_GRACE_S
        if prefer.wait_s is not None:
            wait_s = min(wait_s, prefer.wait_s)
        return await self._wait_sync(job, headers, wait_s, owned)

    async def _running(self, job_id: str) -> JobRecord | None:
        """The job holding a single-flight claim, if it is still on its way."""
        try:
            job = await self.jobs.get(job_id)
        except NotFound:
            return None
        return None if job.terminal or job.delete_requested else job

    async def _attach(self, job: JobRecord, prefer: Preference) -> CreateOutcome:
        """An identical request is generating: answer with that same job (one generation,
        N answers, one id). Waits like a request of its own would."""
        return await self._answer(job, prefer, sync=await self._joins_sync(prefer, job), owned=False)

    async def _wait_sync(
        self, job: JobRecord, headers: dict[str, str], wait_s: float, owned: bool = True
    ) -> CreateOutcome:
        try:
            done = await self.runner.wait(job.id, wait_s)
        except asyncio.CancelledError:
            # The client went away. If nobody else can learn this job's id, its work would
            # be wasted: stop it at the next step. But a retry with the request's
            # Idempotency-Key finds this job, and identical requests attached to it wait
            # for it: then it runs on. The store decides atomically with `attach`.
            if owned:
                # Shielded: a second cancel must not drop it half way (the store call runs
                # on regardless; the local runner's cancel would not).
                await asyncio.shield(self._cancel_abandoned(job.id))
            raise
        if done.video.status == "completed":
            return CreateOutcome(done.video, 200, headers)
        if done.video.status == "failed":
            raise self._error_of(done)
        # Still running past the wait (the estimate was wrong): it stays a job.
        return CreateOutcome(await self.views.public(done), 202, headers)

    async def _cancel_abandoned(self, job_id: str) -> None:
        try:
            if await self.jobs.cancel_abandoned(job_id):
                self.runner.cancel(job_id)  # at once when it runs here; otherwise its runner sees the flag
        except Exception:  # the request is being cancelled: a store error must not replace that
            log.warning("job %s: no cancel after a hang-up", job_id, extra={"job_id": job_id}, exc_info=True)

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
        exc.retryable = False  # the generation ran and ended so: asking again runs another
        return exc

    def _new_job(
        self,
        params: GenerationParams,
        request: CreateVideoRequest,
        deadline_s: float,
        idempotency_key: str | None,
        principal: Principal | None = None,
    ) -> JobRecord:
        # Owner key: its job slot is freed when the job ends, and only it sees the job.
        key_id = principal.id if principal is not None and (principal.authenticated or principal.limited) else None
        job = JobRecord.new(
            new_video_id(),
            self.profile.model_id,
            params,
            time.time(),
            deadline_s,
            idempotency_key=idempotency_key,
            webhook_url=request.webhook_url,
            key_id=key_id,
        )
        if request.seconds_echo is not None:
            job.video.seconds = request.seconds_echo  # OpenAI echoes `seconds` as sent
        job.video.remixed_from_video_id = request.remixed_from
        return job
