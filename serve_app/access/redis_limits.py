"""Rate limits and job caps in Redis: shared by every gateway replica.

Keys (P = `access.store_prefix`):

- `P:bucket:{kind}:{key id}`  hash {tokens, ts}: the key's token bucket of that kind
                               ('create' or 'read'); expires once it would be full
                               again, since a missing bucket reads as a full one
- `P:jobs:{key id}`           zset, member job id, score lease expiry (seconds):
                               the key's unfinished jobs; expires with its last lease

Every decision is one Lua script, which Redis runs as one step: two gateways
cannot both see 3 of 4 slots taken and both admit. Time is Redis' own (`TIME`
inside the script), never a gateway's, so replicas with skewed clocks still
agree on refills and lease expiry. Scripts that call TIME and then write need
effect replication, the default since Redis 5 (the only mode since 7).
register_script re-loads a script after a Redis restart (NOSCRIPT) by itself.

Lua numbers returned to Redis are cut to integers, so fractional results
(tokens left, seconds to wait) come back as strings.

A Redis that cannot be reached answers 503 (`ServiceUnavailable`, Retry-After)
rather than letting requests through unchecked: the store is only configured
where limits must hold across replicas, and the job store is normally on the
same Redis, so nothing could be served anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import redis

from serve_app.access.limits import (
    DEFAULT_CONCURRENCY_RETRY_AFTER_S,
    BucketKind,
    check_kind,
    concurrency_limited,
    rate_limited,
)
from serve_app.errors import ServiceUnavailable
from serve_app.redis_client import open_redis
from serve_app.settings.redis import RedisClientOptions

T = TypeVar("T")
UNREACHABLE_RETRY_AFTER_S = 5.0

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: bucket
# ARGV: rate_per_s, burst
# -> {1, tokens left} taken, {0, seconds until one token} empty
_HIT = (
    _NOW
    + """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
-- After a failover to a Redis whose clock is behind, now < ts: no refill (and no negative one).
if now > ts then
  tokens = tokens + (now - ts) * rate
  ts = now
end
-- Also shrinks a bucket whose burst was lowered since it filled.
if tokens > burst then tokens = burst end
local allowed, value
if tokens >= 1 then
  tokens = tokens - 1
  allowed, value = 1, tokens
else
  allowed, value = 0, (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.6f', ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, string.format('%.17g', value)}
"""
)

# Drops expired leases, then keeps the zset alive as long as its longest lease.
_PRUNE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""
_EXPIRE = """
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(last[2]) - now) * 1000) + 1000)
end
"""

# KEYS: jobs zset
# ARGV: job_id, limit, lease_s
# -> {1, count} holds a slot (new, or already held: lease renewed), {0, count} at the limit
_ACQUIRE = (
    _NOW
    + _PRUNE
    + """
local count = redis.call('ZCARD', KEYS[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if count >= tonumber(ARGV[2]) then return {0, count} end
  count = count + 1
end
redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[3])), ARGV[1])
"""
    + _EXPIRE
    + """
return {1, count}
"""
)

# KEYS: jobs zset
# ARGV: job_id, lease_s
# -> 1 renewed, 0 holds no slot (released, expired, or never acquired: not re-added, as
#    that could go over the limit)
_TOUCH = (
    _NOW
    + _PRUNE
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[2])), ARGV[1])
"""
    + _EXPIRE
    + """
return 1
"""
)

# KEYS: jobs zset
# ARGV: job_id
# -> 1 released, 0 held no live slot (the same answer as the in-process backend)
_RELEASE = (
    _NOW
    + _PRUNE
    + """
return redis.call('ZREM', KEYS[1], ARGV[1])
"""
)

# KEYS: jobs zset -> live slots (read-only: counts past `now` without pruning)
_ACTIVE = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], string.format('(%.6f', now), '+inf')
"""
)


class RedisLimiter:
    """Both protocols (`RateLimiter`, `JobLimiter`) on one Redis client."""

    backend = "redis"

    def __init__(self, url: str, prefix: str = "wanserve:access", *, options: RedisClientOptions | None = None) -> None:
        self.prefix = prefix
        # Short timeouts (redis_client.py): a hung Redis must fail a request fast, not hold the gateway.
        self._redis = open_redis(url, options)
        self._hit = self._redis.register_script(_HIT)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._touch = self._redis.register_script(_TOUCH)
        self._release = self._redis.register_script(_RELEASE)
        self._active = self._redis.register_script(_ACTIVE)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The URL is not quoted: it may hold a password.
            raise ServiceUnavailable(
                f"the rate-limit store (access.store) is unreachable ({type(exc).__name__}); try again shortly",
                retry_after_s=UNREACHABLE_RETRY_AFTER_S,
            ) from exc

    def hit(self, key_id: str, kind: BucketKind, rate_per_s: float, burst: int) -> float:
        check_kind(kind)
        allowed, value = self._call(
            lambda: self._hit(keys=[self._key("bucket", kind, key_id)], args=[repr(float(rate_per_s)), int(burst)])
        )
        if int(allowed) == 1:
            return float(value)
        raise rate_limited(key_id, kind, rate_per_s, burst, float(value))

    def acquire(
        self,
        key_id: str,
        job_id: str,
        limit: int,
        lease_s: float,
        retry_after_s: float = DEFAULT_CONCURRENCY_RETRY_AFTER_S,
    ) -> int:
        admitted, count = self._call(
            lambda: self._acquire(keys=[self._key("jobs", key_id)], args=[job_id, int(limit), repr(float(lease_s))])
        )
        if int(admitted) == 1:
            return int(count)
        raise concurrency_limited(key_id, int(count), limit, retry_after_s)

    def touch(self, key_id: str, job_id: str, lease_s: float) -> bool:
        return (
            self._call(lambda: self._touch(keys=[self._key("jobs", key_id)], args=[job_id, repr(float(lease_s))])) == 1
        )

    def release(self, key_id: str, job_id: str) -> bool:
        return self._call(lambda: self._release(keys=[self._key("jobs", key_id)], args=[job_id])) == 1

    def active(self, key_id: str) -> int:
        return int(self._call(lambda: self._active(keys=[self._key("jobs", key_id)])))

    def close(self) -> None:
        self._redis.close()
