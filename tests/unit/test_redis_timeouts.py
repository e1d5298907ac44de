"""A Redis that accepts connections and never answers (a partition, a failover
in progress) costs a request about a second, never a hang: every Redis client
the service opens has connect and read timeouts (serve_app/redis_client.py), so
each store's "unreachable" 503 fires in time, and the gateway's event loop is
free again soon enough to answer /healthz.

Each call runs in a thread, timed, and is waited for (up to GIVE_UP_S) before
anything is asserted, so a slow call fails with its time and the test tears
down cleanly; a true hang fails after GIVE_UP_S instead of holding the suite.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from serve_app.access.redis_limits import RedisLimiter
from serve_app.cache.index import RedisCacheIndex
from serve_app.config import ServiceArgs
from serve_app.errors import ServiceUnavailable
from serve_app.jobs.redis_store import RedisJobStore
from tests.helpers.blackhole import Blackhole
from tests.helpers.fakes import FakeGenerator
from tests.helpers.jobs import job_id
from tests.helpers.service import REQUEST, TEST_TIMINGS, api_client, gateway_over

# Issue 15, item 3: a 503 within 2 s.
BUDGET_S = 2.0
# Waiting this long proves a hang without holding the suite for good (redis-py
# 8.1's default waits 5 s per read; older releases may wait without limit).
GIVE_UP_S = 30.0


class _Outcome:
    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.elapsed_s: float | None = None


def _start(fn: Callable[[], Any]) -> tuple[threading.Thread, _Outcome]:
    """`fn()` in a thread, timed."""
    outcome = _Outcome()

    def target() -> None:
        start = time.monotonic()
        try:
            outcome.value = fn()
        except Exception as exc:  # noqa: BLE001 -- handed to the test, which checks it
            outcome.error = exc
        finally:
            outcome.elapsed_s = time.monotonic() - start

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def _finish(thread: threading.Thread, outcome: _Outcome, what: str) -> _Outcome:
    thread.join(timeout=GIVE_UP_S)
    assert not thread.is_alive(), f"{what}: still waiting on the blackholed Redis after {GIVE_UP_S} s"
    return outcome


def _within_budget(outcome: _Outcome, what: str) -> None:
    assert outcome.elapsed_s is not None and outcome.elapsed_s < BUDGET_S, (
        f"{what} took {outcome.elapsed_s:.2f} s against a blackholed Redis; the budget is {BUDGET_S} s"
    )


# One call per Redis client the service opens; each store names itself in its 503.
STORES: dict[str, tuple[Callable[[str], Any], Callable[[Any], Any], str]] = {
    "job store": (lambda url: RedisJobStore(url), lambda s: s.get(job_id(1)), "job store (Redis) is unreachable"),
    "cache index": (lambda url: RedisCacheIndex(url), lambda s: s.get("k", time.time()), "cache index (Redis)"),
    "access limiter": (
        lambda url: RedisLimiter(url),
        lambda s: s.hit("key", "create", 1.0, 2),
        "rate-limit store (access.store) is unreachable",
    ),
}


@pytest.mark.parametrize("name", list(STORES))
def test_a_blackholed_redis_is_a_503_within_the_budget(name):
    open_store, call, says = STORES[name]
    with Blackhole() as hole:
        store = open_store(hole.url)
        try:
            outcome = _finish(*_start(lambda: call(store)), name)
        finally:
            store.close()
    _within_budget(outcome, name)
    assert isinstance(outcome.error, ServiceUnavailable), outcome.error
    assert outcome.error.status_code == 503 and "Retry-After" in outcome.error.headers()
    assert says in outcome.error.message and str(hole.port) not in outcome.error.message
    assert hole.accepted.is_set()  # it did connect: the read is what timed out


def test_a_url_query_overrides_the_timeouts():
    # redis-py lets a URL's query win over keyword arguments: that is how a
    # deployment sets its own (job_store: redis://host/0?socket_timeout=5).
    from serve_app.redis_client import CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S, open_redis

    client = open_redis("redis://127.0.0.1:1/0")
    assert client.connection_pool.connection_kwargs["socket_timeout"] == SOCKET_TIMEOUT_S
    assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == CONNECT_TIMEOUT_S
    client.close()
    client = open_redis("redis://127.0.0.1:1/0?socket_timeout=7.5&socket_connect_timeout=3")
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 7.5
    assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == 3
    client.close()
    assert 0 < CONNECT_TIMEOUT_S < BUDGET_S and 0 < SOCKET_TIMEOUT_S < BUDGET_S


def test_gateway_answers_503_and_healthz_while_its_job_store_is_blackholed(tmp_path):
    with Blackhole() as hole:
        args = ServiceArgs(data_dir=str(tmp_path), job_store=hole.url, **TEST_TIMINGS)
        gateway = gateway_over(tmp_path, FakeGenerator(), args=args)
        with api_client(gateway) as client:
            # /healthz is asked while the create's store call sits on the blackhole.
            create = _start(lambda: client.post("/v1/videos", json=REQUEST))
            reached = hole.accepted.wait(timeout=GIVE_UP_S)
            health = _start(lambda: client.get("/healthz"))
            # Both finish before the client closes, however long they take.
            _finish(*health, "GET /healthz")
            created = _finish(*create, "POST /v1/videos")
        gateway.stores.jobs.close()
    assert reached, "the create never reached the job store"
    print(f"POST /v1/videos: {created.elapsed_s:.2f} s; GET /healthz: {health[1].elapsed_s:.2f} s")
    _within_budget(created, "POST /v1/videos")
    _within_budget(health[1], "GET /healthz")
    assert health[1].error is None and health[1].value.json()["status"], health[1].value.text
    response = created.value
    assert created.error is None and response.status_code == 503, response.text
    assert "job store (Redis) is unreachable" in response.text and "Retry-After" in response.headers
