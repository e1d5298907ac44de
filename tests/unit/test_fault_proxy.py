"""bench/fault_proxy.py: the soak's partitions and slow links do what they say."""

from __future__ import annotations

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bench.fault_proxy import FaultProxy
from tests.helpers.redis_server import RedisServer


def client(port: int, timeout_s: float) -> redis.Redis:
    # No retries: redis-py 8 retries a timed-out call 10 times by default.
    return redis.Redis(
        port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )


@pytest.fixture
def proxied_redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    proxy = FaultProxy("127.0.0.1", server.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
        server.stop()


def test_bytes_pass_then_a_blackhole_times_out_then_healing_delivers(proxied_redis):
    with client(proxied_redis.port, 0.5) as redis_client:
        assert redis_client.set("k", "v") and redis_client.get("k") == b"v"
        proxied_redis.blackhole()
        with pytest.raises(redis.TimeoutError):
            redis_client.get("k")
    with client(proxied_redis.port, 0.5) as fresh:
        with pytest.raises(redis.TimeoutError):
            fresh.ping()  # a connection made during the blackhole is accepted and hears nothing
    proxied_redis.heal()
    with client(proxied_redis.port, 5) as redis_client:
        assert redis_client.get("k") == b"v"


def test_a_slow_link_delays_each_request(proxied_redis):
    with client(proxied_redis.port, 5) as redis_client:
        redis_client.ping()
        proxied_redis.slow(0.3)
        started = time.monotonic()
        assert redis_client.ping()
        assert time.monotonic() - started >= 0.3
