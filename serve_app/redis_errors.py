"""Redis being down is "try again shortly" (503 + Retry-After), never a 500 with a stack trace.

`unavailable_as_503` wraps every public method of a Redis-backed store so a
connection or timeout error surfaces as `ServiceUnavailable`, naming the
store but not its URL (which may hold a password). Callers that loop (the
job runner's dispatcher and heartbeats) log it and keep going; when Redis
is back, the next call simply works (redis-py reconnects by itself).
"""

from __future__ import annotations

import functools
import inspect

from serve_app.errors import ServiceUnavailable

# A restarted Redis is usually back within seconds.
RETRY_AFTER_S = 2.0


def _is_unreachable(exc: BaseException) -> bool:
    # Imported here, not at module level: redis is an optional dependency, and
    # only a Redis-backed store (which has it) ever gets this far.
    import redis

    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError))


def unavailable_as_503(what: str):
    def decorate(cls):
        def wrap(method):
            @functools.wraps(method)
            def call(*args, **kwargs):
                try:
                    return method(*args, **kwargs)
                except Exception as exc:
                    if not _is_unreachable(exc):
                        raise
                    raise ServiceUnavailable(
                        f"the {what} (Redis) is unreachable: {type(exc).__name__}; retry shortly",
                        retry_after_s=RETRY_AFTER_S,
                    ) from None

            return call

        for name, member in list(vars(cls).items()):
            if not name.startswith("_") and inspect.isfunction(member) and name != "close":
                setattr(cls, name, wrap(member))
        return cls

    return decorate
