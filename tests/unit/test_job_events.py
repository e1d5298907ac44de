"""The runner's event log alone: progress events, and waking readers on this replica."""

from __future__ import annotations

import asyncio

from serve_app.jobs.events import MAX_PREVIEW_CHARS, EventLog, progress_event
from serve_app.jobs.sqlite_store import SQLiteJobStore
from serve_app.messages import StepProgress
from tests.helpers.jobs import make_job


def test_a_progress_event_extrapolates_the_steps_so_far():
    event = progress_event(StepProgress(step=2, total_steps=10), percent=20, elapsed_s=1.0)
    assert event == {
        "type": "progress",
        "status": "in_progress",
        "step": 2,
        "total_steps": 10,
        "progress": 20,
        "eta_s": 4.0,
    }


def test_a_progress_event_carries_only_a_bounded_image_preview():
    small = "data:image/jpeg;base64,AAAA"
    assert progress_event(StepProgress(step=1, total_steps=2, preview=small), 50, 0.1)["preview"] == small
    huge = "data:image/jpeg;base64," + "A" * MAX_PREVIEW_CHARS
    for preview in (huge, "javascript:alert(1)"):
        assert "preview" not in progress_event(StepProgress(step=1, total_steps=2, preview=preview), 50, 0.1)


def test_an_event_wakes_local_waiters_and_a_deleted_job_s_event_is_dropped(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.db")
    job = make_job(1)
    store.create(job)

    async def scenario():
        events = EventLog(store)
        waiter = asyncio.get_running_loop().create_task(events.wait_for_change(timeout=30))
        await asyncio.sleep(0)  # let the waiter start waiting
        await events.append(job.id, {"type": "queued"})
        await asyncio.wait_for(waiter, timeout=5)  # woken, long before its own 30 s
        await events.append("video_" + "0" * 32, {"type": "queued"})  # unknown (deleted): no error

    try:
        asyncio.run(scenario())
        assert [e for _, e in store.events_after(job.id, 0)] == [{"type": "queued"}]
    finally:
        store.close()
