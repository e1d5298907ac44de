"""Reading, cancelling and deleting videos (following their events: streams.py).

With API keys on, a key sees its own videos only (admin keys see all); every
read of an unfinished job shows its live queue position and ETA. The store is
read on its own thread (jobs/store_thread.py), never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Literal

from serve_app.access.keys import Principal
from serve_app.api.protocol import VideoDeleted, VideoList, VideoObject
from serve_app.artifacts import ArtifactStore, Variant, check_variant, media_type
from serve_app.errors import Conflict, InvalidRequest, NotFound, VideoExpired, VideoNotReady
from serve_app.jobs.model import JobRecord, JobStore
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.store_thread import off_loop
from serve_app.policy.load import QueueEta


class VideoViews:
    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        runner: JobRunner,
        eta: QueueEta,
        cache: Any = None,
        content_url_ttl_s: int = 3600,
    ) -> None:
        self.store = store
        self.jobs = off_loop(store)
        self.artifacts = artifacts
        self.runner = runner  # cancels jobs it runs, and wakes event readers when it writes
        self.eta = eta
        self.cache = cache  # the ResultCache client (forget_source), or None
        self.content_url_ttl_s = content_url_ttl_s  # of the presigned URLs content redirects to

    async def public(self, job: JobRecord, active: list[JobRecord] | None = None) -> VideoObject:
        """The video object with live queue position and ETA while not finished."""
        position = None
        if job.video.status == "queued":
            position, active = await self.jobs.call(self._queue_reads, job, active)
        return self._present(job, position, active)

    def _queue_reads(self, job: JobRecord, active: list[JobRecord] | None) -> tuple[int, list[JobRecord]]:
        """A queued job's position, and the unfinished jobs unless given (blocking: one call)."""
        return self.store.queue_position(job), self.eta.active_jobs() if active is None else active

    def _present(self, job: JobRecord, position: int | None, active: list[JobRecord] | None) -> VideoObject:
        """The video object of `public`, from what it read."""
        video = job.video.model_copy()
        if job.video.status == "queued":
            video.queue_position = position
            video.eta_s = round(self.eta.of_job(job, active), 3)
        elif job.video.status == "in_progress":
            video.eta_s = round(self.eta.of_job(job), 3)
        return video

    async def _job_for(self, video_id: str, principal: Principal | None) -> JobRecord:
        """The job, if the caller may see it: with auth on, a key sees its own jobs (admin keys all).
        Someone else's job is a 404, not a 403: ids of other keys' jobs are not confirmed."""
        job = await self.jobs.get(video_id)
        if principal is None or not principal.authenticated or principal.admin or job.key_id == principal.id:
            return job
        raise NotFound(f"no video with id {video_id!r}", param="video_id")

    async def visible_job(self, video_id: str, principal: Principal | None = None) -> JobRecord:
        """The job if the caller may see it (404 otherwise): what a progress stream checks first."""
        return await self._job_for(video_id, principal)

    async def get_video(self, video_id: str, principal: Principal | None = None) -> VideoObject:
        job = await self._job_for(video_id, principal)
        if job.delete_requested:
            raise NotFound(f"no video with id {video_id!r}", param="video_id")
        return await self.public(job)

    def poll_after_ms(self, video: VideoObject) -> int:
        """For the OpenAI SDK's poll helper (openai-poll-after-ms)."""
        if video.eta_s is None:
            return 1000
        return int(min(2000, max(100, video.eta_s * 1000 / 10)))

    async def list_videos(
        self, after: str | None, limit: int, order: Literal["asc", "desc"], principal: Principal | None = None
    ) -> VideoList:
        if not 1 <= limit <= 100:
            raise InvalidRequest(f"limit={limit} is outside the allowed range [1, 100]", param="limit")
        # With auth on, a key lists its own videos: the store reads them off a per-key index,
        # so each page is a full page of them and `after` is one of them (another key's id
        # is a 404, as everywhere else). Admin keys and auth off list every video.
        own = principal is not None and principal.authenticated and not principal.admin
        key_id = principal.id if own and principal is not None else None
        try:
            visible, has_more, positions, active = await self.jobs.call(self._page, after, limit, order, key_id)
        except NotFound:
            raise NotFound(f"after={after!r} is not the id of a video", param="after") from None
        data = [self._present(j, positions.get(j.id), active) for j in visible]
        return VideoList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=has_more,
        )

    def _page(
        self, after: str | None, limit: int, order: Literal["asc", "desc"], key_id: str | None
    ) -> tuple[list[JobRecord], bool, dict[str, int], list[JobRecord] | None]:
        """(the page's visible jobs, has_more, the queued ones' positions, the unfinished jobs if
        any is queued): every read of a list, in one call on the store's thread (blocking)."""
        jobs, has_more = self.store.list(after, limit, order, key_id=key_id)
        # Videos being deleted (until their runner stops) are left out: a page may then hold
        # fewer than `limit`; `has_more` and the cursor stay exact.
        visible = [j for j in jobs if not j.delete_requested]
        queued = [j for j in visible if j.video.status == "queued"]
        # One read of the queue for the page, not one per queued video.
        active = self.eta.active_jobs() if queued else None
        return visible, has_more, {j.id: self.store.queue_position(j) for j in queued}, active

    async def content(self, video_id: str, variant: str, principal: Principal | None = None) -> tuple[Path | str, str]:
        """(a local file to stream, or a URL to redirect to; the media type) of a completed video's
        file. The artifact store is asked in a thread: an S3 request must not hold the event loop."""
        check_variant(variant)
        job = await self._job_for(video_id, principal)
        if job.video.status != "completed":
            raise VideoNotReady(
                f"video {video_id!r} is {job.video.status}; content exists only for completed videos",
                param="video_id",
                status=job.video.status,
            )
        now = time.time()
        if job.video.expires_at is not None and job.video.expires_at <= now:
            if job.artifact_id is None:
                await asyncio.to_thread(self.artifacts.delete, video_id)
            raise VideoExpired(f"video {video_id!r} expired at {job.video.expires_at}", param="video_id")
        files = job.artifact_id or video_id
        expires_s = self.content_url_ttl_s
        if job.video.expires_at is not None:
            # A link that outlived the video would serve it after its expires_at.
            expires_s = min(expires_s, max(1, int(job.video.expires_at - now)))
        return await asyncio.to_thread(self._locate, files, variant, expires_s), media_type(variant)

    def _locate(self, files: str, variant: Variant, expires_s: int) -> Path | str:
        """Blocking (S3: a HEAD request): run it off the event loop."""
        url = self.artifacts.redirect_url(files, variant, expires_s)
        if url is not None:
            return url
        path = self.artifacts.local_path(files, variant)
        assert path is not None, "a store without redirect URLs serves local files"
        return path

    async def cancel(self, video_id: str, principal: Principal | None = None) -> VideoObject:
        await self._job_for(video_id, principal)
        # The flag alone, set in the store in one step: a whole record saved from a copy
        # would undo what its runner (on any replica) wrote meanwhile, and be undone by it.
        job = await self.jobs.request_cancel(video_id)
        if job.terminal:
            raise Conflict(f"video {video_id!r} is already {job.video.status}; nothing to cancel", param="video_id")
        self.runner.cancel(video_id)  # at once when it runs here; otherwise its runner sees the flag
        return await self.public(job)

    async def delete(self, video_id: str, principal: Principal | None = None) -> VideoDeleted:
        await self._job_for(video_id, principal)
        job = await self.jobs.request_delete(video_id)  # flags only, as in cancel; a finished job is left as it is
        if not job.terminal:
            self.runner.cancel(video_id)  # its runner deletes the record when the loop has stopped
            return VideoDeleted(id=video_id)
        if job.artifact_id is None:  # a cached answer's files belong to the cache
            # In a thread: with S3 this is a request over the network.
            await asyncio.to_thread(self.artifacts.delete, video_id)
        await self.jobs.delete(video_id)
        return VideoDeleted(id=video_id)

    async def delete_with_cache_entry(self, video_id: str, principal: Principal | None = None) -> VideoDeleted:
        """DELETE /v1/videos/{id}: `delete`, then the cache entry the video filled, if it did:
        what a client deleted is not served on to anyone as a cached answer. Videos answered
        from that entry keep their own copies.

        After the record is gone, so a fill racing the delete is caught either here (the
        entry is there already) or by the fill itself (it finds the record gone)."""
        job = await self._job_for(video_id, principal)
        deleted = await self.delete(video_id, principal)
        if self.cache is not None and job.cache_key is not None and not job.video.cached:
            await self.cache.forget_source(job.cache_key, job.id)
        return deleted
