"""The one way the service opens a Redis client: with connect and read timeouts, no retries.

Without timeouts a Redis that accepts connections and never answers (a
partition, a failover in progress) holds each call for as long as the client
waits: 5 s on redis-py 8's default, without limit on releases before 6 (which
pyproject allows). Store calls run on a gateway's event loop, so that wait
stalls every request of the replica, and `unavailable_as_503` (redis_errors.py)
fires late or never. With `RedisClientOptions` (settings/redis.py says why 1 s)
the call fails as `redis.TimeoutError` and the store answers its 503.

None of the service's commands block on the server (no BLPOP, XREAD BLOCK or
pub/sub: event logs are read with XRANGE, polled), so one read timeout fits
every command. A command that waits on the server by design would need a
client of its own with a longer timeout than its block.

A store URL may carry its own `?socket_timeout=N&socket_connect_timeout=N`:
redis-py lets the URL's query win over the keywords given here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serve_app.settings.redis import RedisClientOptions

if TYPE_CHECKING:
    import redis


def open_redis(url: str, options: RedisClientOptions | None = None) -> redis.Redis:
    """`redis.Redis.from_url(url)` decoding replies to str, with `options`' timeouts and no retries."""
    # Imported here: redis is an optional dependency, needed only by those who
    # configured a redis:// store.
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options = options or RedisClientOptions()
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": options.socket_timeout_s,
        "socket_connect_timeout": options.connect_timeout_s,
        # Pinned rather than left to redis-py, whose defaults changed across
        # releases (Redis() itself retries 10 times in 8.x): a retry multiplies
        # the wait on a dead server, and the budget above has room for one.
        "retry": Retry(NoBackoff(), 0),
    }
    return redis.Redis.from_url(url, **kwargs)
