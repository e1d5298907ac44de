"""Frees what finished jobs leave behind, each on its own clock:

1. Files: a completed video's own files are deleted once `expires_at` passes.
   Content answers 410 from then on either way; the record stays, so the
   object still answers with its status.
2. Event logs: `events_keep_s` after a job ended, its log is trimmed to the
   terminal event (a stream that reconnects just after the end still replays
   the steps; the steps are worth nothing for longer, previews are large).
3. Records: `retention_s` after a job ended, the record goes with its
   idempotency key, its event log and any files it still has (`GET` then
   answers 404).

Each step reads one of the store's time-ordered indexes (the JobStore history
methods in model.py), SWEEP_BATCH entries per call and at most MAX_BATCHES per
step: a sweep costs what is due, never a walk over every job, and a backlog (the
first sweep after an upgrade, a long outage) is worked off over several
dispatcher ticks instead of in one long stall. Files are deleted without a
look first (deleting absent files is no error), and a job leaves the files
index once they are gone, so no job's files are asked about again and again.

Sweeps of several replicas may overlap; every step is idempotent, so the worst
is a file or record deleted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from serve_app.artifacts import ArtifactStore
from serve_app.jobs.model import JobStore

log = logging.getLogger("ray.serve")

# How often the runner's dispatcher sweeps. A sweep with nothing due is three
# indexed reads, so this only bounds how late a due step happens.
EXPIRY_SWEEP_S = 60.0

# Index entries read per store call during a sweep, and calls per step per sweep.
SWEEP_BATCH = 100
MAX_BATCHES = 10

# Defaults of ServiceArgs.job_retention_s and job_events_keep_s.
DEFAULT_RETENTION_S = 7 * 86400.0
DEFAULT_EVENTS_KEEP_S = 600.0


@dataclass
class Swept:
    """What one sweep did. `backlog`: some step stopped at MAX_BATCHES with more due."""

    files: int = 0  # jobs whose expired files were deleted
    logs: int = 0  # event logs trimmed to their terminal event
    records: int = 0  # job records deleted at the end of their retention
    backlog: bool = False


class ExpirySweeper:
    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        clock: Callable[[], float],
        interval_s: float = EXPIRY_SWEEP_S,
        retention_s: float = DEFAULT_RETENTION_S,
        events_keep_s: float = DEFAULT_EVENTS_KEEP_S,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.clock = clock
        self.interval_s = interval_s
        self.retention_s = retention_s
        self.events_keep_s = events_keep_s
        self._last_sweep = float("-inf")
        # More stores swept on the same cadence (uploaded images: serve_app/reference_images.py);
        # each returns how many files it removed. Appended after construction.
        self.also: list[Callable[[], int]] = []
        self._backlog = False

    def sweep_if_due(self) -> Swept | None:
        """Sweep if `interval_s` has passed since the last one began, or the last one left a
        backlog; what it did, or None when it was not due. A sweep that fails still counts
        as begun, so a broken store is not tried again on every dispatcher tick."""
        now = self.clock()
        if not self._backlog and now - self._last_sweep < self.interval_s:
            return None
        self._last_sweep, self._backlog = now, False
        swept = self.sweep()
        self._backlog = swept.backlog
        return swept

    def sweep(self) -> Swept:
        # More stores swept on the same cadence (uploaded images: serve_app/reference_images.py),
        # each on its own: one failing stops neither the others nor this.
        for extra in self.also:
            try:
                extra()
            except Exception:
                log.exception("expiry sweep of %s failed", getattr(extra, "__qualname__", extra))
        now, swept = self.clock(), Swept()
        swept.files, files_left = self._batches(lambda: self._delete_files(now))
        swept.logs, logs_left = self._batches(lambda: self._trim_logs(now - self.events_keep_s))
        swept.records, records_left = self._batches(lambda: self._delete_records(now - self.retention_s))
        swept.backlog = files_left or logs_left or records_left
        if swept.files or swept.logs or swept.records:
            log.info(
                "expiry sweep: files of %d videos, %d event logs trimmed, %d records past retention",
                swept.files,
                swept.logs,
                swept.records,
            )
        return swept

    @staticmethod
    def _batches(step: Callable[[], int]) -> tuple[int, bool]:
        """Run `step` (one batch; returns how many it handled) until a batch is not full or
        MAX_BATCHES ran; (total handled, whether the last batch was full)."""
        total = 0
        for _ in range(MAX_BATCHES):
            done = step()
            total += done
            if done < SWEEP_BATCH:
                return total, False
        return total, True

    def _delete_files(self, now: float) -> int:
        due = self.store.files_due(now, SWEEP_BATCH)
        for job_id in due:
            self.artifacts.delete(job_id)
        self.store.forget_files_due(due)
        return len(due)

    def _trim_logs(self, cutoff: float) -> int:
        due = self.store.logs_to_trim(cutoff, SWEEP_BATCH)
        self.store.trim_events(due)
        return len(due)

    def _delete_records(self, cutoff: float) -> int:
        jobs = self.store.ended_before(cutoff, SWEEP_BATCH)
        for job in jobs:
            # Files first: a crash between the two leaves a record the next sweep finds
            # again, never files no record points at. Cached answers' files are the cache's.
            if job.artifact_id is None:
                self.artifacts.delete(job.id)
            self.store.delete(job.id)
        return len(jobs)
