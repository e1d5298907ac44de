"""A Redis that accepts connections and never answers (a partition, a failover in
progress) costs a request about a second, never a hang (issue 15, item 3): every
Redis client the service opens has connect and read timeouts and no retries
(serve_app/redis_client.py, `args.redis`), so each store's "unreachable" 503
fires in time, and the gateway still answers /healthz.

Each call runs in a thread, timed, and is waited for (up to GIVE_UP_S) before
anything is asserted, so a slow call fails with its time and the test tears
down cleanly; a true hang fails after GIVE_UP_S instead of holding the suite.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from deployments.result_cache import ResultCache
from serve_app.access.guard import AccessGuard
from serve_app.access.stores import open_limits
from serve_app.cache.index import open_cache_index
from serve_app.config import AccessConfig, RedisClientOptions, ServiceArgs
from serve_app.errors import ServiceUnavailable
from serve_app.jobs.stores import open_job_store
from serve_app.redis_client import open_redis
from tests.helpers import timed
from tests.helpers.blackhole import Blackhole
from tests.helpers.fakes import FakeGenerator
from tests.helpers.jobs import job_id
from tests.helpers.service import REQUEST, TEST_TIMINGS, api_client, gateway_over

# Issue 15, item 3: a 503 within 2 s.
BUDGET_S = 2.0
# Waiting this long proves a hang without holding the suite for good (redis-py
# 8.1's default waits 5 s per read; releases before 6 wait without limit).
GIVE_UP_S = 30.0
DEFAULTS = RedisClientOptions()


def _within(outcome: timed.Timed, budget_s: float, what: str) -> None:
    assert outcome.elapsed_s is not None and outcome.elapsed_s < budget_s, (
        f"{what} took {outcome.elapsed_s:.2f} s against a blackholed Redis; the budget is {budget_s} s"
    )


# One call per Redis client the service opens, each opened by the factory the service
# uses, with default options; each store names itself in its 503.
STORES: dict[str, tuple[Callable[[str, Any], Any], Callable[[Any], Any], str]] = {
    "job store": (
        lambda url, tmp: open_job_store(url, tmp),
        lambda s: s.get(job_id(1)),
        "job store (Redis) is unreachable",
    ),
    "cache index": (
        lambda url, tmp: open_cache_index(url, tmp),
        lambda s: s.get("k", time.time()),
        "cache index (Redis) is unreachable",
    ),
    "access limiter": (
        lambda url, tmp: open_limits(url).rate,
        lambda s: s.hit("key", "create", 1.0, 2),
        "rate-limit store (access.store) is unreachable",
    ),
}


@pytest.mark.parametrize("name", list(STORES))
def test_a_blackholed_redis_is_a_503_within_the_budget(name, tmp_path):
    open_store, call, says = STORES[name]
    with Blackhole() as hole:
        store = open_store(hole.url, tmp_path)
        try:
            outcome = timed.start(lambda: call(store)).finish(GIVE_UP_S, name)
        finally:
            store.close()
        connections = hole.connections
    _within(outcome, BUDGET_S, name)
    assert isinstance(outcome.error, ServiceUnavailable), outcome.error
    assert outcome.error.status_code == 503 and "Retry-After" in outcome.error.headers()
    assert says in outcome.error.message and str(hole.port) not in outcome.error.message
    # It did connect (the read is what timed out), once: no retry doubled the wait.
    assert connections == 1


def test_args_redis_sets_every_clients_timeouts_and_a_url_query_wins(tmp_path):
    args = ServiceArgs(data_dir=str(tmp_path), redis={"socket_timeout_s": 0.25, "connect_timeout_s": 0.5})
    with Blackhole() as hole:
        clients = {
            "job store": open_job_store(hole.url, tmp_path, args.redis),
            "cache index": open_cache_index(hole.url, tmp_path, args.redis),
            "access limiter": AccessGuard(AccessConfig(store=hole.url), env={}, redis=args.redis).limiters.rate,
        }
        calls = {
            "job store": lambda: clients["job store"].get(job_id(1)),
            "cache index": lambda: clients["cache index"].get("k", time.time()),
            "access limiter": lambda: clients["access limiter"].hit("key", "create", 1.0, 2),
        }
        for name, call in calls.items():
            outcome = timed.start(call).finish(GIVE_UP_S, name)
            assert isinstance(outcome.error, ServiceUnavailable), (name, outcome.error)
            # 0.25 s, not the 1 s default: the setting is what the client uses.
            _within(outcome, 0.9, f"{name} with socket_timeout_s=0.25")
        for store in clients.values():
            store.close()

    client = open_redis("redis://127.0.0.1:1/0", args.redis)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.25, 0.5)
    assert kwargs["retry"].get_retries() == 0
    client.close()
    # redis-py lets a URL's query win over keyword arguments: one store can differ.
    client = open_redis("redis://127.0.0.1:1/0?socket_timeout=7.5&socket_connect_timeout=3", args.redis)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (7.5, 3)
    client.close()
    assert 0 < DEFAULTS.connect_timeout_s < BUDGET_S and 0 < DEFAULTS.socket_timeout_s < BUDGET_S


def test_gateway_answers_503_and_healthz_while_its_job_store_is_blackholed(tmp_path):
    with Blackhole() as hole:
        args = ServiceArgs(data_dir=str(tmp_path), job_store=hole.url, **TEST_TIMINGS)
        # Admission on, as deployed: /healthz then reports the load, read from the job store.
        gateway = gateway_over(tmp_path, FakeGenerator(), args=args, admission=True)
        with api_client(gateway) as client:
            # /healthz is asked while the create's store call sits on the blackhole.
            create = timed.start(lambda: client.post("/v1/videos", json=REQUEST))
            reached = hole.accepted.wait(timeout=GIVE_UP_S)
            health = timed.start(lambda: client.get("/healthz"))
            health.finish(GIVE_UP_S, "GET /healthz")
            create.finish(GIVE_UP_S, "POST /v1/videos")
        gateway.stores.jobs.close()
    assert reached, "the create never reached the job store"
    print(f"POST /v1/videos: {create.elapsed_s:.2f} s; GET /healthz: {health.elapsed_s:.2f} s")
    _within(create, BUDGET_S, "POST /v1/videos")
    response = create.value
    assert create.error is None and response.status_code == 503, response.text
    assert "job store (Redis) is unreachable" in response.text and "Retry-After" in response.headers
    # /healthz does not wait for the create's call (on the job store's thread, off the event
    # loop), only for its own read of the load, in a thread: one timeout, and an answer.
    _within(health, BUDGET_S, "GET /healthz")
    assert health.error is None, health.error
    body = health.value.json()
    assert health.value.status_code == 503 and body["status"] == "degraded", health.value.text
    assert body["load"]["error"] == "service_unavailable" and "job store" in body["load"]["message"]


def test_gateway_answers_healthz_at_once_while_its_cache_index_is_blackholed(tmp_path):
    with Blackhole() as hole:
        args = ServiceArgs(data_dir=str(tmp_path), cache_store=hole.url, **TEST_TIMINGS)
        cache = ResultCache.func_or_class(args.model_dump())
        gateway = gateway_over(tmp_path, FakeGenerator(), args=args, cache=cache)
        with api_client(gateway) as client:
            create = timed.start(lambda: client.post("/v1/videos", json=REQUEST))
            reached = hole.accepted.wait(timeout=GIVE_UP_S)
            health = timed.start(lambda: client.get("/healthz")).finish(GIVE_UP_S, "GET /healthz")
            # The lookup waits in a thread, so the event loop answered meanwhile.
            create_still_waiting = create.running
            create.finish(GIVE_UP_S, "POST /v1/videos")
        gateway.stores.jobs.close()
        cache.index.close()
    assert reached, "the create never reached the cache index"
    print(f"POST /v1/videos: {create.elapsed_s:.2f} s; GET /healthz: {health.elapsed_s:.2f} s")
    assert health.error is None and health.value.status_code == 200, health.value.text
    assert create_still_waiting, f"/healthz ({health.elapsed_s:.2f} s) waited for the create's cache lookup"
    _within(create, BUDGET_S, "POST /v1/videos")
    assert create.error is None and create.value.status_code == 503, create.value.text
    assert "cache index (Redis) is unreachable" in create.value.text
