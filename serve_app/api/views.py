"""Reading, cancelling and deleting videos (following their events: streams.py).

With API keys on, a key sees its own videos only (admin keys see all); every
read of an unfinished job shows its live queue position and ETA.
"""

from __future__ import annotations

import time
from typing import Literal

from serve_app.access.keys import Principal
from serve_app.api.protocol import VideoDeleted, VideoList, VideoObject
from serve_app.artifacts import ArtifactStore, check_variant, media_type
from serve_app.errors import Conflict, InvalidRequest, NotFound, VideoExpired, VideoNotReady
from serve_app.jobs.model import JobRecord, JobStore
from serve_app.jobs.runner import JobRunner
from serve_app.policy.load import QueueEta


class VideoViews:
    def __init__(self, store: JobStore, artifacts: ArtifactStore, runner: JobRunner, eta: QueueEta) -> None:
        self.store = store
        self.artifacts = artifacts
        self.runner = runner  # cancels jobs it runs, and wakes event readers when it writes
        self.eta = eta

    def public(self, job: JobRecord, active: list[JobRecord] | None = None) -> VideoObject:
        """The video object with live queue position and ETA while not finished."""
        video = job.video.model_copy()
        if job.video.status == "queued":
            video.queue_position = self.store.queue_position(job)
            video.eta_s = round(self.eta.of_job(job, active), 3)
        elif job.video.status == "in_progress":
            video.eta_s = round(self.eta.of_job(job), 3)
        return video

    def _job_for(self, video_id: str, principal: Principal | None) -> JobRecord:
        """The job, if the caller may see it: with auth on, a key sees its own jobs (admin keys all).
        Someone else's job is a 404, not a 403: ids of other keys' jobs are not confirmed."""
        job = self.store.get(video_id)
        if principal is None or not principal.authenticated or principal.admin or job.key_id == principal.id:
            return job
        raise NotFound(f"no video with id {video_id!r}", param="video_id")

    def visible_job(self, video_id: str, principal: Principal | None = None) -> JobRecord:
        """The job if the caller may see it (404 otherwise): what a progress stream checks first."""
        return self._job_for(video_id, principal)

    def get_video(self, video_id: str, principal: Principal | None = None) -> VideoObject:
        job = self._job_for(video_id, principal)
        if job.delete_requested:
            raise NotFound(f"no video with id {video_id!r}", param="video_id")
        return self.public(job)

    def poll_after_ms(self, video: VideoObject) -> int:
        """For the OpenAI SDK's poll helper (openai-poll-after-ms)."""
        if video.eta_s is None:
            return 1000
        return int(min(2000, max(100, video.eta_s * 1000 / 10)))

    def list_videos(
        self, after: str | None, limit: int, order: Literal["asc", "desc"], principal: Principal | None = None
    ) -> VideoList:
        if not 1 <= limit <= 100:
            raise InvalidRequest(f"limit={limit} is outside the allowed range [1, 100]", param="limit")
        try:
            jobs, has_more = self.store.list(after, limit, order)
        except NotFound:
            raise NotFound(f"after={after!r} is not the id of a video", param="after") from None
        visible = [j for j in jobs if not j.delete_requested]
        if principal is not None and principal.authenticated and not principal.admin:
            # Filtered after the page is read: with several keys a page may hold
            # fewer than `limit` videos; `has_more` and the cursor stay exact.
            visible = [j for j in visible if j.key_id == principal.id]
        # One read of the queue for the page, not one per queued video.
        active = self.eta.active_jobs() if any(j.video.status == "queued" for j in visible) else None
        data = [self.public(j, active) for j in visible]
        return VideoList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=has_more,
        )

    def content(self, video_id: str, variant: str, principal: Principal | None = None):
        """(local path or bytes, media type) of a completed video's file."""
        check_variant(variant)
        job = self._job_for(video_id, principal)
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

    def cancel(self, video_id: str, principal: Principal | None = None) -> VideoObject:
        job = self._job_for(video_id, principal)
        if job.terminal:
            raise Conflict(f"video {video_id!r} is already {job.video.status}; nothing to cancel", param="video_id")
        job.cancel_requested = True
        self.store.save(job)
        self.runner.cancel(video_id)  # at once when it runs here; otherwise its runner sees the flag
        return self.public(self.store.get(video_id))

    def delete(self, video_id: str, principal: Principal | None = None) -> VideoDeleted:
        job = self._job_for(video_id, principal)
        if job.terminal:
            if job.artifact_id is None:  # a cached answer's files belong to the cache
                self.artifacts.delete(video_id)
            self.store.delete(video_id)
            return VideoDeleted(id=video_id)
        job.cancel_requested = job.delete_requested = True
        self.store.save(job)
        self.runner.cancel(video_id)  # its runner deletes the record when the loop has stopped
        return VideoDeleted(id=video_id)
