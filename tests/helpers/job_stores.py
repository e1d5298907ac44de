"""Job store tests' shared pieces: the lease they claim with, a race of claims released
together, a store two replicas share, a client whose calls run test hooks, and a fresh
store of either backend."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from serve_app.jobs.model import JobRecord

LEASE_S = 10.0


def race_claims(stores, job_id_: str, threads: int = 8) -> list[str]:
    """Claim from `threads` threads released together; the owners that won."""
    barrier = threading.Barrier(threads)
    results: list[JobRecord | None] = [None] * threads
    errors: list[BaseException] = []

    def claim(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = stores[i % len(stores)].claim(job_id_, f"runner-{i}", now=100.0, lease_s=LEASE_S)
        except BaseException as exc:  # noqa: BLE001 - surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    workers = [threading.Thread(target=claim, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not errors, errors
    return [r.owner for r in results if r is not None]


def open_shared_store(kind: str, tmp_path: Path, request) -> str:
    """The `job_store` URL of a store that several clients (replicas) share: a SQLite file
    in `tmp_path`, or the session's Redis, emptied (`request`: the pytest fixture request)."""
    if kind == "sqlite":
        return f"sqlite://{tmp_path / 'shared-jobs.sqlite3'}"
    server = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url)
    client.flushdb()
    client.close()
    return server.url


class HookedStore:
    """A job store client whose calls run test hooks, for interleaving two replicas exactly.

    `after_get(job)`, once armed, runs once, right after the next `get` read the record:
    between a caller's read and its write, where another replica's write lands in a race.
    `after_write(job)` runs after every `save` or `compare_and_save`, whatever it returned.
    Everything else goes straight to `inner`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.after_get: Callable[[JobRecord], None] | None = None
        self.after_write: Callable[[JobRecord], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, job_id: str) -> JobRecord:
        job = self.inner.get(job_id)
        hook, self.after_get = self.after_get, None
        if hook is not None:
            hook(job)
        return job

    def save(self, job: JobRecord) -> None:
        try:
            self.inner.save(job)
        finally:
            self._wrote(job)

    def compare_and_save(self, job: JobRecord) -> bool:
        try:
            return self.inner.compare_and_save(job)
        finally:
            self._wrote(job)

    def _wrote(self, job: JobRecord) -> None:
        if self.after_write is not None:
            self.after_write(job)


def store_of_kind(request, tmp_path):
    """A fresh job store of the kind `request.param` names ('sqlite' or 'redis', the session's
    real redis-server, emptied first): the body of a parametrised `store` fixture
    (`yield from store_of_kind(request, tmp_path)`)."""
    from serve_app.jobs.redis_store import RedisJobStore
    from serve_app.jobs.sqlite_store import SQLiteJobStore

    if request.param == "sqlite":
        job_store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    else:
        server = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.url)
        client.flushdb()
        client.close()
        job_store = RedisJobStore(server.url, prefix="test")
    yield job_store
    job_store.close()
