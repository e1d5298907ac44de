"""Both job store backends against one set of expectations.

Redis runs as a real server (tests/helpers/redis_server.py), since what is
tested is largely what Redis guarantees: scripts run as one step, zsets order
equal scores by member. Times are injected (`now`), never slept through.
What is particular to one backend is tests/unit/test_job_store_backends.py.
"""

from __future__ import annotations

import pytest

from serve_app.api.protocol import VideoError, VideoTimings
from serve_app.errors import NotFound
from serve_app.jobs import redis_store
from tests.helpers.job_stores import LEASE_S, race_claims, store_of_kind
from tests.helpers.jobs import job_id, make_job, with_status


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    yield from store_of_kind(request, tmp_path)


def test_create_get_save_round_trip(store):
    job = make_job(
        1,
        created_at=1_700_000_000.123456,
        owner="runner-a",
        heartbeat_at=1_700_000_001.5,
        attempts=2,
        idempotency_key="key-1",
        webhook_url="https://example.invalid/hook",
        webhook_state="pending",
    )
    assert store.create(job) == (job, True)
    assert store.get(job.id) == job

    done = job.model_copy(
        update={
            "video": job.video.model_copy(
                update={
                    "status": "failed",
                    "progress": 50,
                    "completed_at": 1_700_000_009,
                    "error": VideoError(code="deadline_exceeded", message="late"),
                    "timings": VideoTimings(denoise_s=1.25, total_s=2.5),
                }
            ),
            "owner": None,
            "heartbeat_at": None,
            "cancel_requested": True,
            "webhook_attempts": 3,
            "webhook_state": "failed",
        }
    )
    store.save(done)
    assert store.get(job.id) == done


def test_unknown_ids(store):
    with pytest.raises(NotFound):
        store.get(job_id(404))
    # save only overwrites: a runner finishing a deleted job must not revive it.
    with pytest.raises(NotFound):
        store.save(make_job(404))
    with pytest.raises(NotFound):
        store.append_event(job_id(404), {"progress": 1})
    assert store.events_after(job_id(404), 0) == []
    assert store.claim(job_id(404), "runner-a", now=1.0, lease_s=LEASE_S) is None
    assert store.heartbeat(job_id(404), "runner-a", now=1.0) is False
    store.delete(job_id(404))  # ignored


def test_create_with_a_taken_id_is_an_error(store):
    store.create(make_job(1))
    with pytest.raises(ValueError, match="already exists"):
        store.create(make_job(1, created_at=2.0))
    assert store.get(job_id(1)).created_at == 1.0


def test_idempotency_key_returns_the_first_job(store):
    first = make_job(1, idempotency_key="same")
    assert store.create(first) == (first, True)
    again, created = store.create(make_job(2, created_at=2.0, idempotency_key="same"))
    assert (again, created) == (first, False)
    with pytest.raises(NotFound):
        store.get(job_id(2))
    other = make_job(3, idempotency_key="other")
    assert store.create(other) == (other, True)
    assert [j.id for j in store.list(None, 10, "asc")[0]] == [job_id(1), job_id(3)]


# Equal created_at values in between, inserted out of order, ids not in insertion order.
TIES = [(5, 2.0), (1, 3.0), (9, 2.0), (2, 1.0), (7, 2.0), (3, 2.0), (8, 1_700_000_000.25)]


def page_through(store, order, limit):
    ids, after, pages = [], None, 0
    while True:
        page, has_more = store.list(after, limit, order)
        assert len(page) <= limit
        ids += [j.id for j in page]
        pages += 1
        if not has_more:
            return ids, pages
        assert len(page) == limit
        after = page[-1].id


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 100])
def test_list_pages_in_created_at_then_id_order(store, limit):
    for n, created_at in TIES:
        store.create(make_job(n, created_at=created_at))
    expected = [job_id(n) for n, created_at in sorted(TIES, key=lambda t: (t[1], job_id(t[0])))]
    pages_needed = max(1, -(-len(TIES) // limit))

    assert page_through(store, "asc", limit) == (expected, pages_needed)
    assert page_through(store, "desc", limit) == (expected[::-1], pages_needed)


def test_list_edges(store):
    assert store.list(None, 5, "asc") == ([], False)
    for n in range(3):
        store.create(make_job(n, created_at=float(n)))
    page, has_more = store.list(None, 3, "asc")
    assert len(page) == 3 and has_more is False  # an exact fit has no more
    assert store.list(job_id(2), 5, "asc") == ([], False)
    assert store.list(job_id(0), 5, "desc") == ([], False)
    assert store.list(None, 0, "desc") == ([], True)
    with pytest.raises(NotFound):
        store.list(job_id(404), 5, "asc")
    with pytest.raises(ValueError):
        store.list(None, 5, "sideways")


def test_delete_removes_job_events_and_idempotency_key(store):
    store.create(make_job(1, idempotency_key="k"))
    store.create(make_job(2, created_at=2.0))
    store.append_event(job_id(1), {"progress": 10})
    store.append_event(job_id(1), {"progress": 20})

    store.delete(job_id(1))

    with pytest.raises(NotFound):
        store.get(job_id(1))
    assert store.events_after(job_id(1), 0) == []
    assert [j.id for j in store.list(None, 10, "asc")[0]] == [job_id(2)]
    assert store.claimable(now=100.0, lease_s=LEASE_S, limit=10) == [job_id(2)]
    assert store.queue_position(store.get(job_id(2))) == 0
    with pytest.raises(NotFound):
        store.append_event(job_id(1), {"progress": 30})
    # The key is free again, and a job made again under the old id starts a new event log.
    reborn = make_job(1, created_at=3.0, idempotency_key="k")
    assert store.create(reborn) == (reborn, True)
    assert store.append_event(job_id(1), {"progress": 1}) == 1


def test_claim_once_while_the_heartbeat_is_fresh(store):
    store.create(make_job(1))
    claimed = store.claim(job_id(1), "runner-a", now=100.0, lease_s=LEASE_S)
    assert (claimed.owner, claimed.heartbeat_at, claimed.attempts) == ("runner-a", 100.0, 1)
    assert store.get(job_id(1)) == claimed

    assert store.claim(job_id(1), "runner-b", now=105.0, lease_s=LEASE_S) is None
    # Exactly lease_s old is not yet stale; the holder itself cannot claim twice either.
    assert store.claim(job_id(1), "runner-b", now=110.0, lease_s=LEASE_S) is None
    assert store.claim(job_id(1), "runner-a", now=105.0, lease_s=LEASE_S) is None
    assert store.get(job_id(1)) == claimed


def test_stale_heartbeat_lets_another_owner_claim(store):
    store.create(make_job(1))
    store.claim(job_id(1), "runner-a", now=100.0, lease_s=LEASE_S)
    taken = store.claim(job_id(1), "runner-b", now=110.5, lease_s=LEASE_S)
    assert (taken.owner, taken.heartbeat_at, taken.attempts) == ("runner-b", 110.5, 2)
    assert store.heartbeat(job_id(1), "runner-a", now=111.0) is False
    assert store.get(job_id(1)).owner == "runner-b"


def test_owner_without_heartbeat_is_stale(store):
    store.create(make_job(1, owner="runner-a"))
    assert store.claim(job_id(1), "runner-b", now=1.0, lease_s=LEASE_S).owner == "runner-b"


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_terminal_jobs_are_never_claimed(store, status):
    store.create(make_job(1, status=status))
    store.create(make_job(2, status=status, owner="gone", heartbeat_at=0.0))
    assert store.claim(job_id(1), "runner-a", now=1000.0, lease_s=LEASE_S) is None
    assert store.claim(job_id(2), "runner-a", now=1000.0, lease_s=LEASE_S) is None
    assert store.claimable(now=1000.0, lease_s=LEASE_S, limit=10) == []


def test_heartbeat(store):
    store.create(make_job(1))
    store.claim(job_id(1), "runner-a", now=100.0, lease_s=LEASE_S)
    assert store.heartbeat(job_id(1), "runner-a", now=108.0) is True
    assert store.get(job_id(1)).heartbeat_at == 108.0
    assert store.heartbeat(job_id(1), "runner-b", now=109.0) is False
    assert store.get(job_id(1)).heartbeat_at == 108.0
    # The refreshed lease holds past the first one's end.
    assert store.claim(job_id(1), "runner-b", now=115.0, lease_s=LEASE_S) is None


def test_claimable_lists_free_and_stale_jobs_oldest_first(store):
    now = 100.0
    store.create(make_job(1, created_at=5.0))  # free
    store.create(make_job(2, created_at=2.0, owner="a", heartbeat_at=now - 1))  # fresh
    store.create(make_job(3, created_at=3.0, owner="a", heartbeat_at=now - 11))  # stale
    store.create(make_job(4, created_at=1.0, status="completed"))
    store.create(make_job(5, created_at=0.5, status="failed", owner="a", heartbeat_at=0.0))
    store.create(make_job(6, created_at=4.0, status="in_progress", owner="b", heartbeat_at=now - 50))  # stale
    store.create(make_job(7, created_at=4.0))  # free, ties with 6

    assert store.claimable(now, LEASE_S, limit=10) == [job_id(3), job_id(6), job_id(7), job_id(1)]
    assert store.claimable(now, LEASE_S, limit=2) == [job_id(3), job_id(6)]

    store.save(with_status(store.get(job_id(3)), "completed"))
    store.claim(job_id(7), "c", now=now, lease_s=LEASE_S)
    assert store.claimable(now, LEASE_S, limit=10) == [job_id(6), job_id(1)]


def test_claimable_walks_past_many_unclaimable_jobs(store, monkeypatch):
    # Redis reads the active jobs in batches; make the batches small enough to cross.
    monkeypatch.setattr(redis_store, "_SCAN_BATCH", 2)
    for n in range(5):
        store.create(make_job(n, created_at=float(n), owner="a", heartbeat_at=100.0))
    store.create(make_job(10, created_at=10.0))
    store.create(make_job(11, created_at=11.0))
    assert store.claimable(now=100.0, lease_s=LEASE_S, limit=1) == [job_id(10)]
    assert store.claimable(now=100.0, lease_s=LEASE_S, limit=5) == [job_id(10), job_id(11)]


def test_queue_position_counts_earlier_queued_jobs(store):
    store.create(make_job(1, created_at=1.0))
    store.create(make_job(2, created_at=2.0, status="in_progress"))
    store.create(make_job(3, created_at=0.5, status="completed"))
    store.create(make_job(5, created_at=3.0))
    store.create(make_job(4, created_at=3.0))  # same instant as 5, smaller id: ahead of it
    store.create(make_job(6, created_at=9.0))
    position = {n: store.queue_position(store.get(job_id(n))) for n in (1, 2, 3, 4, 5, 6)}
    assert position == {1: 0, 2: 1, 3: 0, 4: 1, 5: 2, 6: 3}

    store.save(with_status(store.get(job_id(1)), "in_progress"))
    assert store.queue_position(store.get(job_id(5))) == 1
    store.save(with_status(store.get(job_id(1)), "queued"))
    assert store.queue_position(store.get(job_id(5))) == 2


def test_active_lists_unfinished_jobs_oldest_first(store):
    store.create(make_job(1, created_at=5.0))
    store.create(make_job(2, created_at=2.0, status="in_progress"))
    store.create(make_job(3, created_at=1.0, status="completed"))
    store.create(make_job(4, created_at=3.0, status="failed"))
    store.create(make_job(5, created_at=4.0))
    assert [j.id for j in store.active(limit=10)] == [job_id(2), job_id(5), job_id(1)]
    assert [j.id for j in store.active(limit=2)] == [job_id(2), job_id(5)]

    store.save(with_status(store.get(job_id(5)), "completed"))
    store.delete(job_id(2))
    assert [j.id for j in store.active(limit=10)] == [job_id(1)]


def test_events_are_numbered_and_read_from_a_point(store):
    store.create(make_job(1))
    store.create(make_job(2))
    events = [{"type": "progress", "progress": p, "nested": {"step": p // 10}} for p in (10, 20, 30)]
    assert [store.append_event(job_id(1), e) for e in events] == [1, 2, 3]
    assert store.append_event(job_id(2), {"type": "queued"}) == 1  # each job counts on its own

    assert store.events_after(job_id(1), 0) == [(1, events[0]), (2, events[1]), (3, events[2])]
    assert store.events_after(job_id(1), 1) == [(2, events[1]), (3, events[2])]
    assert store.events_after(job_id(1), 3) == []
    assert store.events_after(job_id(1), 0, limit=2) == [(1, events[0]), (2, events[1])]
    assert store.events_after(job_id(2), 0) == [(1, {"type": "queued"})]


def test_concurrent_claims_have_one_winner(store):
    for n in range(5):
        store.create(make_job(n))
        winners = race_claims([store], job_id(n))
        assert len(winners) == 1, winners
        stored = store.get(job_id(n))
        assert (stored.owner, stored.attempts) == (winners[0], 1)
