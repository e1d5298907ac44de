"""Picking the limiter backend from a URL (the `access.store` setting).

Apart from limits.py because the Redis backend builds on limits.py's helpers:
the factory that knows both sits above them, as serve_app/jobs/stores.py does
for the job stores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from serve_app.access.limits import InProcessJobLimiter, InProcessRateLimiter, JobLimiter, RateLimiter
from serve_app.settings.redis import RedisClientOptions

ALLOWED_STORES = "'' (in-process) or 'redis://host:port/db' / 'rediss://...' (shared by gateway replicas)"


@dataclass
class Limiters:
    """The two limiters of one backend, opened together (the Redis pair shares one client)."""

    rate: RateLimiter
    jobs: JobLimiter
    backend: str

    def close(self) -> None:
        self.rate.close()
        if self.jobs is not self.rate:
            self.jobs.close()


def open_limits(
    url: str | None,
    *,
    prefix: str = "wanserve:access",
    clock: Callable[[], float] = time.monotonic,
    redis: RedisClientOptions | None = None,
) -> Limiters:
    """'' -> in-process (`clock` applies), 'redis://' or 'rediss://' -> Redis (server time, `redis`' timeouts)."""
    if not url:
        return Limiters(InProcessRateLimiter(clock), InProcessJobLimiter(clock), "in-process")
    if url.startswith(("redis://", "rediss://")):
        # redis is an optional extra: import it only for those who asked for it.
        try:
            from serve_app.access.redis_limits import RedisLimiter
        except ImportError as exc:
            raise ImportError("access.store redis:// needs the redis client: pip install 'wan-serve[redis]'") from exc
        limiter = RedisLimiter(url, prefix=prefix, options=redis)
        return Limiters(limiter, limiter, "redis")
    # Only the scheme is quoted: the rest of a URL may hold a password.
    scheme = url.split("://", 1)[0] if "://" in url else "(none)"
    raise ValueError(f"access.store: scheme {scheme!r} is unknown; allowed: {ALLOWED_STORES}")
