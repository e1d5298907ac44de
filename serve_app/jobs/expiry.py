"""Frees the storage of expired videos.

Content of a video past `expires_at` is refused at once either way (410); the
sweep only deletes its files. The job records stay, so the object still
answers with its status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from serve_app.artifacts import ArtifactStore
from serve_app.jobs.model import JobStore

log = logging.getLogger("ray.serve")

# How often the runner's dispatcher sweeps. Each sweep reads every job record
# (issue 15 asks for an expiry index), so it stays rare.
EXPIRY_SWEEP_S = 300.0

# Records read per store call during a sweep.
SWEEP_PAGE = 100


class ExpirySweeper:
    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        clock: Callable[[], float],
        interval_s: float = EXPIRY_SWEEP_S,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.clock = clock
        self.interval_s = interval_s
        self._last_sweep = float("-inf")
        # More stores swept on the same cadence (uploaded images: serve_app/reference_images.py);
        # each returns how many files it removed. Appended after construction.
        self.also: list[Callable[[], int]] = []

    def sweep_if_due(self) -> int | None:
        """Sweep if `interval_s` has passed since the last one began; how many videos' files
        were deleted, or None when it was not due. A sweep that fails still counts as
        begun, so a broken store is not walked again on every dispatcher tick."""
        now = self.clock()
        if now - self._last_sweep < self.interval_s:
            return None
        self._last_sweep = now
        return self.sweep()

    def sweep(self) -> int:
        """Delete the files of completed videos past `expires_at`; how many videos' files were deleted.
        The `also` sweeps run first, each on its own: one failing stops neither the others nor this."""
        for extra in self.also:
            try:
                extra()
            except Exception:
                log.exception("expiry sweep of %s failed", getattr(extra, "__qualname__", extra))
        now, swept, after = self.clock(), 0, None
        while True:
            page, has_more = self.store.list(after, SWEEP_PAGE, "asc")
            for job in page:
                if job.artifact_id is not None:
                    continue  # the cache owns those files and expires them itself
                expires = job.video.expires_at
                if job.video.status == "completed" and expires is not None and expires <= now:
                    if self.artifacts.exists(job.id, "video") or self.artifacts.exists(job.id, "thumbnail"):
                        self.artifacts.delete(job.id)
                        swept += 1
            if not has_more or not page:
                return swept
            after = page[-1].id
