"""A job's event log as this replica writes it, and waking the readers on this replica.

Every event goes to the store's per-job log, which SSE and WebSocket readers on
any replica poll. Readers on the replica that wrote it are woken at once
instead, so a local stream shows each step as it happens. The write runs on the
store's thread (store_thread.py), the wake-up on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from serve_app.errors import NotFound
from serve_app.jobs.model import JobStore
from serve_app.jobs.store_thread import off_loop
from serve_app.messages import StepProgress

# Previews go into progress events (the job record never holds one). The
# denoiser already bounds their count per job (PreviewOptions.max_per_job) and
# their size (~8 kB); this cap keeps the event log bounded whatever a stage sends.
MAX_PREVIEW_CHARS = 16_384


def progress_event(progress: StepProgress, percent: int, elapsed_s: float) -> dict:
    """The `progress` event of one denoising step. Its ETA extrapolates this run's
    steps so far (`elapsed_s` since the run began), the best guess once steps arrive."""
    remaining_steps = progress.total_steps - progress.step
    eta = elapsed_s / progress.step * remaining_steps if progress.step else None
    event = {
        "type": "progress",
        "status": "in_progress",
        "step": progress.step,
        "total_steps": progress.total_steps,
        "progress": percent,
        "eta_s": None if eta is None else round(eta, 3),
    }
    preview = progress.preview
    if preview and len(preview) <= MAX_PREVIEW_CHARS and preview.startswith("data:image/"):
        event["preview"] = preview
    return event


class EventLog:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.jobs = off_loop(store)
        # Set (and replaced) on every event written here. An Event, not a
        # Condition: a waiter cancelled mid-wait (a client hanging up) must not
        # leave a lock behind.
        self._changed = asyncio.Event()
        # Called with the job's id on every event written here (None: any job may have
        # changed), so a reader of one job is woken by that job alone (jobs/event_feed.py).
        self.listeners: list[Callable[[str | None], None]] = []

    async def append(self, job_id: str, event: dict) -> None:
        await self.jobs.call(self.write, job_id, event)
        self.notify(job_id)

    def write(self, job_id: str, event: dict) -> None:
        """The store's half of `append` (blocking: on the store's thread, where a composite
        write calls it; the caller then calls `notify` on the loop)."""
        try:
            self.store.append_event(job_id, event)
        except NotFound:
            pass  # deleted: nobody can read its events any more

    def notify(self, job_id: str | None = None) -> None:
        """Wake every local waiter; each then reads the store for what changed."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for listener in self.listeners:
            listener(job_id)

    async def wait_for_change(self, timeout: float) -> None:
        """Until this replica writes an event, or `timeout` seconds."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass
