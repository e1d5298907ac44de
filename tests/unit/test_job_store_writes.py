"""Issue 15 item 7 in the stores: writes that cannot undo another client's write.

Two clients of one store stand for two gateway replicas (two SQLite connections on
one file, two Redis clients). A flag update changes only its flag, atomically; a
compare-and-save refuses a copy read before another write; and no write makes a
terminal record non-terminal. Both backends, against the same expectations.
"""

from __future__ import annotations

import threading

import pytest

from serve_app.errors import NotFound
from serve_app.jobs.model import RecordFinished
from serve_app.jobs.stores import open_job_store
from tests.helpers.job_stores import LEASE_S, open_shared_store
from tests.helpers.jobs import job_id, make_job, with_status


@pytest.fixture(params=["sqlite", "redis"])
def replicas(request, tmp_path):
    """Two clients of one store: replica A's and replica B's."""
    url = open_shared_store(request.param, tmp_path, request)
    a, b = open_job_store(url, tmp_path), open_job_store(url, tmp_path)
    yield a, b
    a.close()
    b.close()


def _running(store, n: int, owner: str = "replica-a"):
    store.create(make_job(n))
    job = store.claim(job_id(n), owner, now=100.0, lease_s=LEASE_S)
    assert job is not None
    return job


def test_a_copy_read_before_another_write_is_refused_and_the_next_read_keeps_both(replicas):
    a, b = replicas
    _running(a, 1)
    stale = a.get(job_id(1))
    b.request_cancel(job_id(1))  # lands between A's read and A's write
    stale.video.status, stale.video.progress = "in_progress", 50
    assert a.compare_and_save(stale) is False
    assert b.get(job_id(1)).cancel_requested and b.get(job_id(1)).video.progress == 0

    fresh = a.get(job_id(1))
    fresh.video.status, fresh.video.progress = "in_progress", 50
    assert a.compare_and_save(fresh) is True
    stored = b.get(job_id(1))
    assert (stored.cancel_requested, stored.video.progress, stored.revision) == (True, 50, fresh.revision)
    assert a.compare_and_save(fresh) is True  # `fresh` carries the revision it wrote
    with pytest.raises(NotFound):
        a.compare_and_save(make_job(404))


def test_every_write_moves_the_revision_on(replicas):
    a, b = replicas
    job = _running(a, 1)
    revisions = [job.revision]
    assert a.heartbeat(job.id, "replica-a", now=101.0)
    revisions.append(b.get(job.id).revision)
    revisions.append(b.request_cancel(job.id).revision)
    revisions.append(b.request_delete(job.id).revision)
    current = a.get(job.id)
    a.save(current)
    revisions.append(current.revision)
    assert revisions == sorted(set(revisions)) and revisions[0] > 0, revisions
    # A plain save of an old copy still moves it on: it never goes back to a value a
    # compare-and-save holder read, which would then let that holder's stale copy in.
    job.video.progress = 7
    a.save(job)
    assert b.get(job.id).revision == revisions[-1] + 1


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_a_non_terminal_write_never_replaces_a_terminal_record(replicas, status):
    a, b = replicas
    stale = _running(a, 1)
    done = b.get(job_id(1))
    done.video.status, done.owner = status, None
    b.save(done)

    stale.video.status = "in_progress"  # a runner's late step write, or a hand-back
    with pytest.raises(RecordFinished) as refused:
        a.save(stale)
    assert refused.value.param == "video_id" and status in refused.value.message
    assert a.compare_and_save(stale) is False
    current = a.get(job_id(1))
    current.video.status = "queued"
    with pytest.raises(RecordFinished):
        a.compare_and_save(current)  # even a copy read after it ended
    assert b.get(job_id(1)).status == status and b.claimable(1e9, LEASE_S, limit=10) == []
    current = a.get(job_id(1))
    current.webhook_state = "delivered"
    a.save(current)  # terminal over terminal is fine
    assert b.get(job_id(1)).webhook_state == "delivered"


def test_cancel_and_delete_set_their_flags_only(replicas):
    a, b = replicas
    _running(a, 1)
    progressed = a.get(job_id(1))
    progressed.video.status, progressed.video.progress = "in_progress", 40
    assert a.compare_and_save(progressed)

    cancelled = b.request_cancel(job_id(1))
    assert cancelled.cancel_requested and not cancelled.delete_requested
    assert cancelled.model_dump(exclude={"cancel_requested", "revision"}) == progressed.model_dump(
        exclude={"cancel_requested", "revision"}
    )
    assert a.get(job_id(1)) == cancelled
    again = b.request_cancel(job_id(1))
    assert again == cancelled  # nothing to change: nothing written

    deleted = b.request_delete(job_id(1))
    assert deleted.cancel_requested and deleted.delete_requested and deleted.video.progress == 40

    a.create(with_status(make_job(2), "completed"))
    finished = a.get(job_id(2))
    assert b.request_cancel(job_id(2)) == finished
    assert b.request_delete(job_id(2)) == finished  # a terminal record: its caller deletes it
    for request in (b.request_cancel, b.request_delete):
        with pytest.raises(NotFound):
            request(job_id(404))


def test_a_hung_up_creator_cancels_only_a_job_nobody_else_knows(replicas):
    a, b = replicas
    a.create(make_job(1))
    a.create(make_job(2, idempotency_key="retry-me"))
    a.create(make_job(3))

    assert b.cancel_abandoned(job_id(1)) is True
    assert a.get(job_id(1)).cancel_requested
    assert b.cancel_abandoned(job_id(1)) is False  # already cancelled
    assert a.attach(job_id(1)) is None  # nobody joins a cancelled job

    assert b.cancel_abandoned(job_id(2)) is False  # its retry would find it
    assert not a.get(job_id(2)).cancel_requested

    attached = a.attach(job_id(3))
    assert attached is not None and attached.attached
    assert a.attach(job_id(3)) == attached  # a second joiner writes nothing
    assert b.cancel_abandoned(job_id(3)) is False
    assert not a.get(job_id(3)).cancel_requested

    assert a.attach(job_id(404)) is None and b.cancel_abandoned(job_id(404)) is False
    a.create(with_status(make_job(4), "completed"))
    assert a.attach(job_id(4)) is None and b.cancel_abandoned(job_id(4)) is False


def test_no_update_is_lost_when_both_replicas_write_at_once(replicas):
    """Read-change-compare_and_save loops from threads on both clients, released together:
    every increment lands, which a plain read-then-save would not guarantee."""
    a, b = replicas
    _running(a, 1)
    threads, rounds = 6, 10
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def add_attempts(store) -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(rounds):
                while True:
                    job = store.get(job_id(1))
                    job.attempts += 1
                    if store.compare_and_save(job):
                        break
        except BaseException as exc:  # noqa: BLE001 - surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    workers = [threading.Thread(target=add_attempts, args=((a, b)[i % 2],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors, errors
    assert a.get(job_id(1)).attempts == 1 + threads * rounds
