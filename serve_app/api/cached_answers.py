"""The result cache's side of POST /v1/videos: whose entries a request may use, and a hit
turned into an answer (a completed video with its own copy of the entry's files).

A mixin of `VideoCreator` (create.py), which holds what it reads: `args`, `profile`,
`cache` (the ResultCache client), `cache_index` (its index, read here directly),
`store`, `views` (for the artifact store) and `webhooks`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from serve_app import metrics
from serve_app.access.keys import Principal
from serve_app.api.create_answer import CreateOutcome
from serve_app.cache.index import CacheEntry
from serve_app.cache.keys import cache_key
from serve_app.jobs.model import JobRecord
from serve_app.params import GenerationParams

if TYPE_CHECKING:
    from serve_app.api.views import VideoViews
    from serve_app.cache.index import CacheIndex
    from serve_app.config import ModelProfile, ServiceArgs
    from serve_app.handles import CacheClaims
    from serve_app.jobs.listeners import WebhookDelivery
    from serve_app.jobs.model import JobStore
    from serve_app.jobs.store_thread import StoreThread


class CachedAnswers:
    args: ServiceArgs
    profile: ModelProfile
    cache: CacheClaims | None
    cache_index: CacheIndex | None
    store: JobStore
    jobs: StoreThread  # the store's calls, off the event loop
    views: VideoViews
    webhooks: WebhookDelivery | None

    @property
    def _cache_on(self) -> bool:
        return self.cache is not None and self.cache_index is not None and self.args.cache_enabled

    def _cache_scope(self, principal: Principal | None) -> str | None:
        """Whose entries a request may hit and fill: with API keys on, its key's own, unless the
        deployment shares them (`cache_scope: shared`). A shared cache tells a key, by a
        `cached: true` answered at once, that another tenant has asked for a prompt."""
        if principal is None or not principal.authenticated or self.args.cache_scope == "shared":
            return None
        return principal.id

    def _key(self, params: GenerationParams, scope: str | None) -> str:
        return cache_key(self.profile.identity, params.model_dump(), scope=scope)

    async def _from_cache(self, key: str, draft: Callable[[], JobRecord]) -> CreateOutcome | None:
        """The answer from the entry of `key`, or None on a miss. A hit becomes the video
        `draft()` with its own copy of the entry's files; an entry whose files are gone
        (evicted or purged since the read) is a miss."""
        # Read straight from the index (a local file or Redis): a hop to the
        # ResultCache replica would cost more than the rest of a hit. Both in a thread:
        # a Redis that does not answer holds the read up to its timeout (args.redis),
        # and an S3 copy is two requests.
        hit = await asyncio.to_thread(self.cache_index.get, key, time.time())
        job = None
        if hit is not None:
            job = draft()
            if not await asyncio.to_thread(self._copy_files, hit, job.id):
                hit = None
        metrics.cache_lookup(hit is not None)
        if hit is None or job is None:
            return None
        return await self._answer_from_cache(job, key)

    def _copy_files(self, hit: CacheEntry, video_id: str) -> bool:
        """The entry's files under `video_id` (a hard link, or a copy inside the bucket): the
        video's own, so evicting or purging the entry leaves them whole until `expires_at`."""
        artifacts = self.views.artifacts
        if "video" in artifacts.copy(hit.artifact_id, video_id):
            return True
        artifacts.delete(video_id)  # a thumbnail alone is no answer
        return False

    async def _answer_from_cache(self, draft: JobRecord, key: str) -> CreateOutcome:
        """A new, completed video object; its files (copied already) are its own, kept as
        long as any video's (`artifact_ttl_s`) and deleted with it."""
        now = time.time()
        draft.cache_key = draft.video.cache_key = key
        video = draft.video
        video.status, video.progress, video.cached = "completed", 100, True
        video.completed_at, video.expires_at = int(now), int(now + self.args.artifact_ttl_s)
        owes_webhook = draft.webhook_url is not None and self.webhooks is not None
        if owes_webhook:
            draft.webhook_state = "pending"
        job, created = await self.jobs.call(self._store_cached_answer, draft, owes_webhook)
        if job.id != draft.id:
            # An idempotent retry found its video: the copy is nobody's (in a thread: S3 is a request).
            await asyncio.to_thread(self.views.artifacts.delete, draft.id)
        if owes_webhook and job.id == draft.id:
            self.webhooks.send_now(job.id)
        if created:
            metrics.admitted("cached", job.video.tier or "none")
        return CreateOutcome(job.video, 200, {"Location": f"/v1/videos/{job.id}"})

    def _store_cached_answer(self, draft: JobRecord, owes_webhook: bool) -> tuple[JobRecord, bool]:
        """The answer's record with its completed event, and its webhook owed (blocking: in one
        call on the store's thread). (the job, created): an idempotent retry finds its earlier one."""
        if owes_webhook:
            # Owed as a run's webhook is: the outbox entry first, then a record saying so.
            self.webhooks.owe(draft.id)
        job, created = self.store.create(draft)
        if job.id == draft.id:
            self.store.append_event(job.id, {"type": "completed", "video": job.video.model_dump()})
        elif owes_webhook:
            self.webhooks.forget(draft.id)  # an idempotent retry found its earlier job, and its webhook
        return job, created
