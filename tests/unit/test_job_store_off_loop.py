"""Job-store calls never hold the gateway's event loop (issue 15, item 4: SQLite).

Another process holding the SQLite file's write lock (another gateway replica on the
host, mid-write) makes every write of this one wait, up to the store's busy timeout
(10 s). Here a second connection takes that lock and keeps it while a client cancels
or creates a video; meanwhile another client asks for /healthz, which reads no job.
Its answer must come while the write still waits, and the write must go through once
the lock is let go. A gateway making the call on its event loop answers nothing at all
until the write gives up ("database is locked", a 500), which the tests report.

Deterministic: the write's store call signals when it starts (the lock is held then, so
it cannot finish before the test lets go); no sleeps, and every wait has a bound.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import httpx
import pytest

from serve_app.jobs.sqlite_store import SQLiteJobStore
from tests.helpers.fakes import FakeGenerator
from tests.helpers.jobs import make_job
from tests.helpers.service import REQUEST, gateway_over

# How long a scenario may take before it counts as hung (a bound, never a synchronisation).
HUNG_S = 30


@pytest.fixture
def gateway(tmp_path):
    gateway = gateway_over(tmp_path, FakeGenerator())
    yield gateway
    gateway.stores.close()


def _signal_on(store, method: str, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """An event set (on `loop`) each time `store.<method>` is entered, from whatever thread."""
    entered = asyncio.Event()
    inner = getattr(store, method)

    def signalling(*args, **kwargs):
        loop.call_soon_threadsafe(entered.set)
        return inner(*args, **kwargs)

    setattr(store, method, signalling)
    return entered


def _lock_holder(store: SQLiteJobStore) -> sqlite3.Connection:
    """Another process's connection to the store's file, as a second gateway replica has."""
    return sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)


async def _while_locked(gateway, method: str, send) -> tuple[httpx.Response, bool, httpx.Response]:
    """`send(client)` (a request whose store call is `method`) while another connection holds
    the write lock; /healthz asked meanwhile. (health's answer, whether the request was still
    waiting then, the request's answer once the lock was let go)."""
    store = gateway.stores.jobs
    entered = _signal_on(store, method, asyncio.get_running_loop())
    holder = _lock_holder(store)
    # A failing call is its 500 answer here, as a client sees it (not raised into the test).
    transport = httpx.ASGITransport(app=gateway.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        holder.execute("BEGIN IMMEDIATE")
        try:
            request = asyncio.ensure_future(send(client))
            await asyncio.wait_for(entered.wait(), HUNG_S)  # its store call has started, and waits
            health = await asyncio.wait_for(client.get("/healthz"), HUNG_S)
            still_waiting = not request.done()
        finally:
            holder.execute("COMMIT")
            holder.close()
        answer = await asyncio.wait_for(request, HUNG_S)
    return health, still_waiting, answer


def test_a_cancel_waiting_for_the_sqlite_lock_does_not_hold_the_event_loop(gateway):
    job = make_job(1, owner="elsewhere", heartbeat_at=9e18)  # queued, run by nobody here
    gateway.stores.jobs.create(job)

    health, still_waiting, answer = asyncio.run(
        _while_locked(gateway, "request_cancel", lambda client: client.post(f"/v1/videos/{job.id}/cancel"))
    )

    assert health.status_code == 200, health.text
    assert still_waiting, (
        "/healthz answered only after the cancel's store call had finished: "
        f"it held the event loop (the cancel answered {answer.status_code}: {answer.text[:200]})"
    )
    assert answer.status_code == 200, answer.text
    assert gateway.stores.jobs.get(job.id).cancel_requested


def test_a_create_waiting_for_the_sqlite_lock_does_not_hold_the_event_loop(gateway):
    health, still_waiting, answer = asyncio.run(
        _while_locked(
            gateway,
            "create",
            lambda client: client.post("/v1/videos", json=REQUEST, headers={"Prefer": "respond-async"}),
        )
    )

    assert health.status_code == 200, health.text
    assert still_waiting, (
        "/healthz answered only after the create's store call had finished: "
        f"it held the event loop (the create answered {answer.status_code}: {answer.text[:200]})"
    )
    assert answer.status_code == 202, answer.text
    assert gateway.stores.jobs.get(answer.json()["id"]).params.prompt == REQUEST["prompt"]


def test_calls_run_in_the_order_made_and_their_callers_resume_in_it(tmp_path):
    """What the service relies on (jobs/store_thread.py): store calls from the loop run first
    in, first out on the store's thread, and their callers resume in that order."""
    from serve_app.jobs.store_thread import off_loop

    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    calls = off_loop(store)
    assert off_loop(store) is calls  # one thread per store, whoever asks
    gate = threading.Event()
    ran: list[int] = []
    resumed: list[int] = []

    async def scenario() -> None:
        holding = asyncio.ensure_future(calls.call(gate.wait, HUNG_S))  # the thread is busy
        asked = asyncio.Event()

        async def caller(n: int) -> None:
            if n == 4:
                asked.set()  # its call is made in this same step, before the test resumes
            await calls.call(ran.append, n)
            resumed.append(n)

        callers = [asyncio.ensure_future(caller(n)) for n in range(5)]
        await asyncio.wait_for(asked.wait(), HUNG_S)
        assert ran == []  # all five queued behind the held call
        gate.set()
        await asyncio.wait_for(asyncio.gather(holding, *callers), HUNG_S)

    try:
        asyncio.run(scenario())
    finally:
        off_loop(store).close()
        store.close()
    assert ran == [0, 1, 2, 3, 4]
    assert resumed == [0, 1, 2, 3, 4]
