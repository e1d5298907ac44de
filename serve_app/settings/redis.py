"""`RedisClientOptions`: how long a Redis call may wait before it counts as failed (`args.redis`).

Every Redis client the service opens (job store, cache index, rate limiter)
takes these. Why the defaults are what they are:

- Every command the stores send is a key lookup or a short Lua script, which a
  healthy Redis answers in well under a millisecond, and a few milliseconds
  even while it fsyncs its append-only file. A second is a dead or partitioned
  server, not a slow one.
- A blackholed Redis (a partition, a failover in progress: connections open,
  nothing answers) must cost a request its 503 within 2 s (issue 15). One call
  waits at most `connect_timeout_s` (no connection yet, SYNs unanswered) or
  `socket_timeout_s` (connected, no reply). With 1 s each, the 503 comes after
  about a second and leaves the other second for the rest of the request.
- Store calls still run on the gateway's event loop (the job store's do), so
  every second a call may wait is a second nothing else on that gateway runs.
- No retries: a retry after a timeout would double the wait of every call to a
  dead server. A pooled connection the server closed (a restart) is replaced
  before use, not retried after a failure.
"""

from __future__ import annotations

from pydantic import Field

from serve_app.settings.base import StrictModel


class RedisClientOptions(StrictModel):
    """Timeouts of every Redis client the service opens (job store, cache index, rate limiter)."""

    socket_timeout_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Seconds a Redis call waits for its reply before it fails as 'unreachable' (a 503 with "
        "Retry-After). Our commands take well under a millisecond; 1 s keeps a blackholed Redis within the "
        "2 s a request may take to get its 503. A store URL's '?socket_timeout=N' wins for that store.",
    )
    connect_timeout_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Seconds opening a connection to Redis may take (a partition drops the SYNs) before the "
        "call fails as 'unreachable'. A store URL's '?socket_connect_timeout=N' wins for that store.",
    )
