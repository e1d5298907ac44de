"""What is particular to each job store backend.

SQLite: two processes sharing one file, and its columns and journal mode.
Redis: surviving a server restart, and a 503 when it is unreachable. And the
URL that picks one. What both must do alike is tests/unit/test_job_store.py.
"""

from __future__ import annotations

import sqlite3

import pytest

from serve_app.errors import NotFound
from serve_app.jobs.redis_store import RedisJobStore
from serve_app.jobs.sqlite_store import SQLiteJobStore
from serve_app.jobs.stores import open_job_store
from tests.helpers.job_stores import LEASE_S, race_claims
from tests.helpers.jobs import job_id, make_job, with_status
from tests.helpers.redis_server import RedisServer


def test_sqlite_two_connections_share_one_file(tmp_path):
    # Two stores on one file stand for two processes: no shared lock, only SQLite's.
    a = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    b = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    try:
        job = make_job(1, idempotency_key="k")
        a.create(job)
        assert b.get(job.id) == job
        assert b.create(make_job(2, idempotency_key="k")) == (job, False)
        claimed = b.claim(job.id, "runner-b", now=100.0, lease_s=LEASE_S)
        assert a.get(job.id) == claimed
        assert a.claim(job.id, "runner-a", now=101.0, lease_s=LEASE_S) is None
        assert b.append_event(job.id, {"n": 1}) == 1
        assert a.append_event(job.id, {"n": 2}) == 2
        assert b.events_after(job.id, 0) == [(1, {"n": 1}), (2, {"n": 2})]
        a.delete(job.id)
        with pytest.raises(NotFound):
            b.get(job.id)

        for n in range(3, 8):
            a.create(make_job(n))
            winners = race_claims([a, b], job_id(n))
            assert len(winners) == 1, winners
    finally:
        a.close()
        b.close()


def test_sqlite_columns_follow_the_record(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = SQLiteJobStore(path)
    try:
        store.create(make_job(1, created_at=1.5, idempotency_key="k"))
        store.claim(job_id(1), "runner-a", now=100.0, lease_s=LEASE_S)
        store.save(with_status(store.get(job_id(1)), "completed"))
        with sqlite3.connect(path) as conn:
            row = conn.execute(
                "SELECT created_at, status, owner, heartbeat_at, idempotency_key FROM jobs WHERE id = ?",
                (job_id(1),),
            ).fetchone()
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        conn.close()
        assert row == (1.5, "completed", "runner-a", 100.0, "k")
        assert mode == "wal"
    finally:
        store.close()


def test_redis_store_works_across_a_server_restart(tmp_path):
    # An AOF keeps the data; the restart empties Redis's script cache and
    # drops the client's connections, which the store must get over.
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    store = RedisJobStore(server.url)
    try:
        store.create(make_job(1))
        server.restart()
        assert store.get(job_id(1)).id == job_id(1)
        assert store.claim(job_id(1), "runner-a", now=100.0, lease_s=LEASE_S).owner == "runner-a"
        assert store.append_event(job_id(1), {"n": 1}) == 1
    finally:
        store.close()
        server.stop()


def test_open_job_store_picks_the_backend(tmp_path, redis_server):
    for url in (None, "", "sqlite"):
        store = open_job_store(url, tmp_path / "data")
        assert isinstance(store, SQLiteJobStore) and store.path == tmp_path / "data" / "jobs.sqlite3"
        store.close()
    store = open_job_store(f"sqlite://{tmp_path}/elsewhere/x.db", tmp_path / "data")
    assert isinstance(store, SQLiteJobStore) and store.path == tmp_path / "elsewhere" / "x.db"
    store.close()
    store = open_job_store(redis_server.url, tmp_path / "data")
    assert isinstance(store, RedisJobStore)
    store.close()

    with pytest.raises(ValueError, match="allowed forms") as excinfo:
        open_job_store("postgres://user:secret@db/jobs", tmp_path)
    assert "'postgres'" in str(excinfo.value) and "secret" not in str(excinfo.value)
    with pytest.raises(ValueError, match="absolute path"):
        open_job_store("sqlite://relative.db", tmp_path)


def test_an_unreachable_redis_is_a_503_not_a_500(tmp_path):
    from serve_app.errors import ServiceUnavailable
    from tests.helpers.redis_server import _free_port

    store = RedisJobStore(f"redis://127.0.0.1:{_free_port()}/0")  # nothing listens there
    with pytest.raises(ServiceUnavailable) as err:
        store.get(job_id(1))
    assert err.value.status_code == 503 and err.value.headers() == {"Retry-After": "2"}
    assert "job store (Redis) is unreachable" in err.value.message and "127.0.0.1" not in err.value.message
    store.close()
