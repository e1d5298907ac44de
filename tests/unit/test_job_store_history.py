"""Both job stores' history indexes: lists per API key, and what the expiry sweep reads
(ended jobs, expired files, event logs to trim). Times are injected, never slept through.
Stores written before these indexes existed get them on open (SQLite) or first use (Redis)."""

from __future__ import annotations

import sqlite3

import pytest
import redis

from serve_app.errors import NotFound
from serve_app.jobs.redis_store import RedisJobStore
from serve_app.jobs.sqlite_store import SQLiteJobStore
from tests.helpers.job_stores import store_of_kind
from tests.helpers.jobs import job_id, make_job, with_status


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    yield from store_of_kind(request, tmp_path)


def ended(n: int, completed_at: int, expires_at: int | None = None, **changes):
    """A completed job (its own files expire at `expires_at`) that ended at `completed_at`."""
    return with_status(
        make_job(n, created_at=float(n), **changes),
        "completed",
        progress=100,
        completed_at=completed_at,
        expires_at=expires_at,
    )


def pages(store, key_id, limit, order="desc"):
    """Every page of `key_id`'s list, as lists of job numbers."""
    out, after = [], None
    while True:
        page, has_more = store.list(after, limit, order, key_id=key_id)
        out.append([int(j.id.split("_")[1], 16) for j in page])
        if not has_more:
            return out
        assert len(page) == limit  # only the last page may be short
        after = page[-1].id


def test_list_per_key_gives_full_pages_of_that_keys_jobs(store):
    # Alice's three jobs are the oldest; a newest page of any size holds only Bob's.
    for n in range(1, 4):
        store.create(make_job(n, created_at=float(n), key_id="alice"))
    for n in range(10, 40):
        store.create(make_job(n, created_at=float(n), key_id="bob"))
    store.create(make_job(50, created_at=50.0))  # auth off: no key

    assert pages(store, "alice", 2) == [[3, 2], [1]]
    assert pages(store, "alice", 2, "asc") == [[1, 2], [3]]
    assert pages(store, "alice", 3) == [[3, 2, 1]]
    assert pages(store, "bob", 25)[0] == list(range(39, 14, -1))
    assert pages(store, "carol", 5) == [[]]
    # Without a key: every job, as before.
    assert len(store.list(None, 100, "asc")[0]) == 34
    # A cursor from another key's list is not one of Alice's: 404, ids of others unconfirmed.
    with pytest.raises(NotFound):
        store.list(job_id(10), 2, "desc", key_id="alice")
    # Deleted jobs leave the key's list.
    store.delete(job_id(2))
    assert pages(store, "alice", 5) == [[3, 1]]


def test_ended_jobs_are_found_by_their_end_not_by_walking_every_job(store):
    store.create(ended(1, completed_at=100))
    store.create(ended(2, completed_at=300))
    failed = with_status(make_job(3, created_at=3.0), "failed", completed_at=200)
    store.create(failed)
    running = make_job(4, created_at=0.5, status="in_progress")  # old, but not ended: never due
    store.create(running)
    queued = make_job(5)
    store.create(queued)
    store.save(with_status(queued, "failed", completed_at=150))  # ends through a save

    assert [j.id for j in store.ended_before(250.0, 10)] == [job_id(1), job_id(5), job_id(3)]
    assert [j.id for j in store.ended_before(250.0, 2)] == [job_id(1), job_id(5)]
    assert store.ended_before(99.0, 10) == []
    assert job_id(4) not in [j.id for j in store.ended_before(1e12, 10)]
    store.delete(job_id(1))
    assert [j.id for j in store.ended_before(250.0, 10)] == [job_id(5), job_id(3)]


def test_a_terminal_job_without_completed_at_ends_at_its_creation(store):
    store.create(with_status(make_job(1, created_at=42.0), "failed"))
    assert store.ended_before(41.9, 10) == []
    assert [j.id for j in store.ended_before(42.0, 10)] == [job_id(1)]


def test_files_due_lists_own_expired_files_once(store):
    store.create(ended(1, completed_at=10, expires_at=100))
    store.create(ended(2, completed_at=10, expires_at=300))
    store.create(ended(3, completed_at=10, expires_at=50, artifact_id="cache_entry"))  # the cache's files
    store.create(with_status(make_job(4), "failed", completed_at=10, expires_at=50))  # no files to expire

    assert store.files_due(200.0, 10) == [job_id(1)]
    assert store.files_due(400.0, 1) == [job_id(1)]
    store.forget_files_due([job_id(1)])
    assert store.files_due(400.0, 10) == [job_id(2)]
    # The record is unchanged: only the work list forgot it.
    assert store.get(job_id(1)).video.expires_at == 100
    store.forget_files_due([])  # nothing to do


def test_a_job_that_completes_through_a_save_joins_the_files_index(store):
    job = make_job(1)
    store.create(job)
    assert store.files_due(1e12, 10) == []
    store.save(with_status(job, "completed", completed_at=10, expires_at=100))
    assert store.files_due(100.0, 10) == [job_id(1)]


def test_trim_events_keeps_the_terminal_event_and_the_numbering(store):
    store.create(make_job(1))
    for event in ({"type": "queued"}, {"type": "progress", "step": 1}, {"type": "progress", "step": 2}):
        store.append_event(job_id(1), event)
    store.save(with_status(store.get(job_id(1)), "completed", completed_at=100))
    store.append_event(job_id(1), {"type": "completed"})
    store.create(make_job(2, created_at=2.0, status="in_progress"))
    store.append_event(job_id(2), {"type": "queued"})

    assert store.logs_to_trim(99.0, 10) == []
    assert store.logs_to_trim(100.0, 10) == [job_id(1)]  # not the running job
    store.trim_events([job_id(1)])

    assert store.events_after(job_id(1), 0) == [(4, {"type": "completed"})]
    assert store.events_after(job_id(1), 2) == [(4, {"type": "completed"})]  # a reader mid-way gets the end
    assert store.logs_to_trim(1e12, 10) == []
    assert store.events_after(job_id(2), 0) == [(1, {"type": "queued"})]
    store.trim_events([])  # nothing to do


def test_sqlite_file_from_before_the_history_columns_gets_them(tmp_path):
    # The jobs table as it was: no key, end or work-list columns, and records in it.
    path = tmp_path / "jobs.sqlite3"
    done = ended(1, completed_at=100, expires_at=500, key_id="alice")
    running = make_job(2, created_at=2.0, key_id="bob", idempotency_key="k")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, created_at REAL NOT NULL, status TEXT NOT NULL,"
            " owner TEXT, heartbeat_at REAL, idempotency_key TEXT UNIQUE, record TEXT NOT NULL)"
        )
        for job in (done, running):
            conn.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.created_at, job.status, None, None, job.idempotency_key, job.model_dump_json()),
            )
    conn.close()

    store = SQLiteJobStore(path)
    try:
        assert [j.id for j in store.list(None, 10, "desc", key_id="alice")[0]] == [job_id(1)]
        assert [j.id for j in store.ended_before(100.0, 10)] == [job_id(1)]
        assert store.files_due(500.0, 10) == [job_id(1)]
        assert store.logs_to_trim(100.0, 10) == [job_id(1)]
        assert store.get(job_id(2)) == running
        # A gateway of the previous version finishes job 2 meanwhile (its UPDATE knows
        # no history columns); setting user_version back to 0 fills them again on open.
        finished = with_status(running, "failed", completed_at=200)
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE jobs SET status = 'failed', record = ? WHERE id = ?", (finished.model_dump_json(), running.id)
            )
            conn.execute("PRAGMA user_version = 0")
        conn.close()
    finally:
        store.close()
    store = SQLiteJobStore(path)  # opening again: columns there, filled again
    try:
        assert [j.id for j in store.ended_before(200.0, 10)] == [job_id(1), job_id(2)]
    finally:
        store.close()


def test_redis_store_from_before_the_history_zsets_is_indexed_on_first_use(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    writer = RedisJobStore(redis_server.url, prefix="old")
    writer.create(ended(1, completed_at=100, expires_at=500, key_id="alice"))
    writer.create(make_job(2, created_at=2.0, key_id="alice"))
    writer.create(make_job(3, created_at=3.0))
    writer.close()
    # What a store written by the previous version holds: no history zsets, no schema mark.
    client.delete(*client.keys("old:bykey:*"), "old:ended", "old:filesdue", "old:trim", "old:schema")

    store = RedisJobStore(redis_server.url, prefix="old")
    try:
        assert [j.id for j in store.list(None, 10, "asc", key_id="alice")[0]] == [job_id(1), job_id(2)]
        assert [j.id for j in store.ended_before(100.0, 10)] == [job_id(1)]
        assert store.files_due(500.0, 10) == [job_id(1)]
        assert store.logs_to_trim(100.0, 10) == [job_id(1)]
        assert client.get("old:schema") == "2"
        # A gateway of the previous version writes a job after that (no history zsets);
        # deleting the schema mark has the next store to start index it too.
        late = make_job(4, created_at=4.0, key_id="alice")
        client.set(f"old:job:{late.id}", late.model_dump_json())
        client.zadd("old:jobs", {late.id: late.created_at})
        client.delete("old:schema")
    finally:
        store.close()
    store = RedisJobStore(redis_server.url, prefix="old")
    try:
        assert [j.id for j in store.list(None, 10, "asc", key_id="alice")[0]] == [job_id(1), job_id(2), job_id(4)]
    finally:
        store.close()
        client.close()


def test_redis_drops_ended_entries_whose_record_is_gone(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    store = RedisJobStore(redis_server.url, prefix="gone")
    try:
        store.create(ended(1, completed_at=100))
        store.create(ended(2, completed_at=200))
        client.delete(f"gone:job:{job_id(1)}")  # as a reindex racing a delete could leave it
        assert [j.id for j in store.ended_before(300.0, 10)] == [job_id(2)]
        assert client.zrange("gone:ended", 0, -1) == [job_id(2)]
    finally:
        store.close()
        client.close()
