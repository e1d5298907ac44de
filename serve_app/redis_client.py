"""The one way the service opens a Redis client: with connect and read timeouts.

Every store call is synchronous and most run on a gateway's event loop, so a
Redis that accepts connections but never answers (a partition, a failover in
progress) would hold the loop for as long as the client waits: 5 s per call on the
redis-py 8.1 default, without limit on older releases that set no timeout. With these timeouts such a call fails
within about a second, as `redis.TimeoutError`, which each store turns into its
"unreachable" 503 with Retry-After (redis_errors.py; the access limiter does
the same in its own `_call`), and the loop is free again for /healthz and
everyone else.

Defaults: 1 s to connect, 1 s per read. Every command the stores send is a
key lookup or a short Lua script that Redis answers in well under a
millisecond, so a second is a dead server, not a slow one. A deployment that
needs other values puts them in its store URL, whose query redis-py lets win
over the defaults here: `job_store: redis://host:6379/0?socket_timeout=3&socket_connect_timeout=2`
(the same for `cache_store` and `access.store`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

CONNECT_TIMEOUT_S = 1.0
SOCKET_TIMEOUT_S = 1.0


def open_redis(url: str, **kwargs: Any) -> redis.Redis:
    """`redis.Redis.from_url(url)` decoding replies to str, with the timeouts above
    unless `url`'s query names its own."""
    # Imported here: redis is an optional dependency, needed only by those who
    # configured a redis:// store.
    import redis

    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": SOCKET_TIMEOUT_S,
        **kwargs,
    }
    return redis.Redis.from_url(url, **options)
