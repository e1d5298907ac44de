"""How a runner writes its job's record: only while it holds the job, only over what it read.

Other writers share the record while a job runs: a client's cancel or delete on
any gateway replica (flags the store sets in one atomic step), a replica that
took the job over after this one's lease went stale, and that replica's
terminal record. A runner that saved a whole copy read earlier would undo them:
the cancel lost, the deleted video back, a finished job made runnable again and
run twice. So every write here reads the record, changes it, and writes it with
`compare_and_save`, which refuses it if anything was written in between; then it
reads again and decides again on what is there now. And it writes only while
the record names this runner as its owner and is not terminal.

`update_owned` and `write_terminal` block (each is several store calls): code on the
event loop runs them on the store's thread, `off_loop(store).call(...)` (store_thread.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from serve_app.api.protocol import VideoError, VideoTimings
from serve_app.errors import NotFound, ServiceError
from serve_app.jobs.events import EventLog
from serve_app.jobs.listeners import JobListener
from serve_app.jobs.model import JobRecord, JobStore
from serve_app.jobs.store_thread import off_loop

log = logging.getLogger("ray.serve")

# What a change does to the record as read: True to write it, False to leave it.
Change = Callable[[JobRecord], bool]
TerminalWrite = Literal["written", "gone", "lost"]


def update_owned(store: JobStore, job_id: str, owner: str, change: Change) -> tuple[JobRecord | None, bool]:
    """Apply `change` to the job and write it if `owner` still holds it and nothing wrote it
    in between (else read and decide again). Returns (the record as last read, or None if it
    is gone; whether it was written). Not written: no longer ours (`owner` differs, or it is
    terminal), or `change` declined; the caller tells which from the record."""
    while True:
        try:
            job = store.get(job_id)
        except NotFound:
            return None, False
        if job.owner != owner or job.terminal or not change(job):
            return job, False
        try:
            if store.compare_and_save(job):
                return job, True
        except NotFound:
            return None, False


def write_terminal(
    store: JobStore, job_id: str, owner: str, finish: Callable[[JobRecord], None]
) -> tuple[TerminalWrite, JobRecord | None]:
    """Write the job's terminal record: `finish` applied to the record as stored, the owner
    cleared. "gone": the record no longer exists, or its client asked for it deleted and it
    was deleted here; "lost": another runner holds it or ended it, and nothing was written."""
    while True:
        try:
            job = store.get(job_id)
        except NotFound:
            return "gone", None
        if job.owner != owner or job.terminal:
            return "lost", job
        if job.delete_requested:
            store.delete(job_id)
            return "gone", job
        finish(job)
        job.owner = None
        if job.webhook_url:
            job.webhook_state = "pending"  # in the store before any delivery starts
        try:
            if store.compare_and_save(job):
                return "written", job
        except NotFound:
            return "gone", None


async def end_job(
    store: JobStore,
    owner: str,
    listeners: list[JobListener],
    events: EventLog,
    job_id: str,
    finish: Callable[[JobRecord], None],
    result: Any,
) -> bool:
    """Write the job's terminal record (`finish` applied to it), or delete it, as its client
    asked, with the listeners before and after (listeners.py). `result`: the stage graph's,
    or None for a failed job. False if `owner` no longer holds the job: nothing written, and
    no listener called after the record (its new runner writes the outcome and calls them)."""
    jobs = off_loop(store)
    try:
        job = await jobs.get(job_id)
    except NotFound:
        return True  # deleted while it ran: nothing to keep
    if job.owner != owner or job.terminal:
        return False
    finish(job)
    for listener in listeners:
        if result is not None:
            # Unguarded: an error means the result was not kept, and the runner fails the job.
            await listener.before_record(job, result)
            continue
        try:
            await listener.before_record(job, None)
        except Exception:
            name = type(listener).__name__
            log.exception("job %s: %s failed before its record", job.id, name, extra={"job_id": job.id})
    # Read again, and written only over what was read: a cancel, delete or takeover
    # while the listeners ran (storing the mp4 takes a while) is not undone.
    outcome, written = await jobs.call(_write_terminal_and_event, store, events, job_id, owner, finish)
    if outcome == "lost":
        return False
    gone = outcome == "gone"
    if written is not None and not gone:
        job = written
        events.notify(job.id)
    else:
        events.notify()
    for listener in listeners:
        try:
            await listener.after_record(job, result, gone)
        except Exception:
            name = type(listener).__name__
            log.exception("job %s: %s failed after its record", job.id, name, extra={"job_id": job.id})
    return True


def _write_terminal_and_event(
    store: JobStore, events: EventLog, job_id: str, owner: str, finish: Callable[[JobRecord], None]
) -> tuple[TerminalWrite, JobRecord | None]:
    """`write_terminal`, and the terminal event once it is written, in one call on the store's
    thread: no read of this replica comes between the two (an event feed that saw a terminal
    record with no terminal event after it would end its streams without that event)."""
    outcome, written = write_terminal(store, job_id, owner, finish)
    if outcome == "written" and written is not None:
        events.write(written.id, {"type": written.video.status, "video": written.video.model_dump()})
    return outcome, written


def hand_back(job: JobRecord) -> bool:
    """A change: the job goes back to the queue, for another replica to claim without
    waiting for the lease (shutdown)."""
    job.owner, job.heartbeat_at = None, None
    job.video.status, job.video.progress = "queued", 0
    return True


def completed(result, now: float, artifact_ttl_s: float) -> Callable[[JobRecord], None]:
    """What a completed run writes: `result` is the stage graph's."""

    def finish(job: JobRecord) -> None:
        job.video.status, job.video.progress = "completed", 100
        job.video.completed_at = int(now)
        job.video.expires_at = int(now + artifact_ttl_s)
        job.video.timings = VideoTimings(
            prompt_encode_s=round(result.prompt_encode_s, 4),
            denoise_s=round(result.denoise_s, 4),
            decode_s=round(result.video.decode_s, 4),
            encode_s=round(result.video.encode_s, 4),
            total_s=round(result.total_s, 4),
        )

    return finish


def failed(exc: ServiceError, now: float) -> Callable[[JobRecord], None]:
    """What a failed run writes: the error, and its JSON for synchronous answers."""

    def finish(job: JobRecord) -> None:
        job.video.status = "failed"
        job.video.error = VideoError(code=exc.code, message=exc.message)
        job.error_body, job.error_status = exc.to_dict(), exc.status_code
        job.video.completed_at = int(now)

    return finish
