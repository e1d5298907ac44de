"""The Redis limiter: the server's clock, limits shared by replicas, and a 503 when Redis is unreachable."""

from __future__ import annotations

import pytest
import redis

from serve_app.access.config import AccessConfig
from serve_app.access.guard import AccessGuard
from serve_app.access.redis_limits import RedisLimiter
from serve_app.errors import ConcurrencyLimited, RateLimited, ServiceUnavailable
from tests.helpers.access import ADMIN, keyed_config, unique_prefix
from tests.helpers.redis_server import _free_port


@pytest.fixture
def prefix():
    return unique_prefix()


def _shift_redis_time(redis_url: str, key: str, seconds: float) -> None:
    """Make `seconds` pass for one bucket or job set by moving its stored times back."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        if client.type(key) == "hash":
            client.hset(key, "ts", repr(float(client.hget(key, "ts")) - seconds))
        else:
            for member, score in client.zrange(key, 0, -1, withscores=True):
                client.zadd(key, {member: score - seconds})
    finally:
        client.close()


def _server_time(redis_url: str) -> float:
    client = redis.Redis.from_url(redis_url)
    try:
        seconds, micros = client.time()
        return seconds + micros / 1e6
    finally:
        client.close()


def test_redis_state_is_stamped_with_server_time(redis_server, prefix):
    limiter = RedisLimiter(redis_server.url, prefix=prefix)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        limiter.hit("k", "create", 1.0, 2)
        limiter.acquire("k", "j1", 1, 30)
        now = _server_time(redis_server.url)
        assert float(client.hget(f"{prefix}:bucket:create:k", "ts")) == pytest.approx(now, abs=5)
        assert client.zscore(f"{prefix}:jobs:k", "j1") == pytest.approx(now + 30, abs=5)
    finally:
        client.close()
        limiter.close()


def test_redis_bucket_refills_by_server_time(redis_server, prefix):
    limiter = RedisLimiter(redis_server.url, prefix=prefix)
    try:
        for _ in range(2):
            limiter.hit("k", "create", 0.01, 2)
        with pytest.raises(RateLimited) as err:
            limiter.hit("k", "create", 0.01, 2)
        assert err.value.retry_after_s == 100  # just under 100 s, rounded up
        # State stamped in the future (a failover to a Redis whose clock is behind):
        # no refill and no drain, the wait stays what it was.
        _shift_redis_time(redis_server.url, f"{prefix}:bucket:create:k", -50)
        with pytest.raises(RateLimited) as err:
            limiter.hit("k", "create", 0.01, 2)
        assert err.value.retry_after_s == 100
        _shift_redis_time(redis_server.url, f"{prefix}:bucket:create:k", 50)
        _shift_redis_time(redis_server.url, f"{prefix}:bucket:create:k", 100)
        assert limiter.hit("k", "create", 0.01, 2) == pytest.approx(0, abs=0.01)
        # A long quiet spell fills the bucket to `burst`, not beyond.
        _shift_redis_time(redis_server.url, f"{prefix}:bucket:create:k", 10_000)
        assert [limiter.hit("k", "create", 0.01, 2) for _ in range(2)] == pytest.approx([1, 0], abs=0.01)
        with pytest.raises(RateLimited):
            limiter.hit("k", "create", 0.01, 2)
        # The bucket expires once it would be full again (a missing one reads as full).
        client = redis.Redis.from_url(redis_server.url)
        assert 199_000 < client.pttl(f"{prefix}:bucket:create:k") <= 201_000
        client.close()
    finally:
        limiter.close()


def test_redis_job_lease_expires_by_server_time(redis_server, prefix):
    limiter = RedisLimiter(redis_server.url, prefix=prefix)
    try:
        limiter.acquire("k", "crashed", 1, 30)
        with pytest.raises(ConcurrencyLimited):
            limiter.acquire("k", "next", 1, 30)
        _shift_redis_time(redis_server.url, f"{prefix}:jobs:k", 31)
        assert limiter.active("k") == 0
        assert limiter.touch("k", "crashed", 30) is False
        assert limiter.acquire("k", "next", 1, 30) == 1
    finally:
        limiter.close()


def test_limits_hold_across_two_replicas_sharing_redis(redis_server, prefix):
    config = keyed_config(store=redis_server.url, store_prefix=prefix, max_concurrent_jobs=3, burst=5, rate_per_s=0.001)
    replica_a, replica_b = AccessGuard(config, {}), AccessGuard(config, {})
    try:
        ops_a = replica_a.authenticate(f"Bearer {ADMIN}")
        ops_b = replica_b.authenticate(f"Bearer {ADMIN}")
        for _ in range(3):
            replica_a.check_rate(ops_a)
        for _ in range(2):
            replica_b.check_rate(ops_b)
        for guard, principal in ((replica_a, ops_a), (replica_b, ops_b)):
            with pytest.raises(RateLimited):
                guard.check_rate(principal)

        replica_a.acquire_job(ops_a, "j1")
        replica_a.acquire_job(ops_a, "j2")
        replica_b.acquire_job(ops_b, "j3")
        replica_b.acquire_job(ops_b, "j1")  # the same job seen on the other replica: no new slot
        for guard, principal in ((replica_a, ops_a), (replica_b, ops_b)):
            with pytest.raises(ConcurrencyLimited):
                guard.acquire_job(principal, "j4")
        # j1 finishes on replica b; replica a sees the freed slot.
        assert replica_b.release_job("ops", "j1") is True
        replica_a.acquire_job(ops_a, "j4")
        assert replica_b.active_jobs("ops") == 3
    finally:
        replica_a.close()
        replica_b.close()


def test_an_unreachable_redis_is_a_503_and_release_does_not_raise(caplog):
    config = AccessConfig(store=f"redis://127.0.0.1:{_free_port()}/0", api_keys_env="", limit_anonymous=True)
    guard = AccessGuard(config, {})
    try:
        principal = guard.authenticate(None)
        with pytest.raises(ServiceUnavailable) as err:
            guard.check_rate(principal)
        assert err.value.status_code == 503 and "access.store" in err.value.message
        assert err.value.headers() == {"Retry-After": "5"}
        assert guard.release_job("anonymous", "j1") is False
        assert "could not release job slot of j1" in caplog.text
    finally:
        guard.close()
