"""The webhook outbox: which jobs still owe their webhook, and which gateway is sending each.

A delivery with retries takes minutes, and the gateway doing it may die meanwhile.
So a gateway writes an entry here *before* the job's terminal record says
`webhook_state="pending"`, and removes it once the record says how delivery went.
Every gateway periodically looks for entries nobody is working on and sends them
(serve_app/jobs/listeners.py, `WebhookDelivery`).

An entry is a job id and `busy_until`: the time until which one gateway holds it.
`claim` takes an entry only if that time has passed, in one atomic step (a SQLite
write transaction, a Redis Lua script), so two gateways never both take it. The
holder is whoever wrote last; a gateway that dies leaves its claim to run out, and
one that shuts down releases it (`release`) so another takes it at once. The
claim's length covers a whole delivery with every retry; if one overruns it,
another gateway sends again, under the same `webhook-id`, which receivers
deduplicate on (serve_app/webhooks/delivery.py, `message_id`).

Times are the gateways' own clocks (epoch seconds); claims last minutes, so
clock skew of seconds between gateways does not matter.

The outbox lives beside the job store: a table in its SQLite file, or a sorted
set in its Redis (member: job id, score: busy_until).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

from serve_app.jobs.sqlite_store import open_sqlite
from serve_app.jobs.stores import ALLOWED_FORMS, DEFAULT_SQLITE_NAME
from serve_app.redis_client import open_redis
from serve_app.redis_errors import unavailable_as_503
from serve_app.settings.redis import RedisClientOptions


class WebhookOutbox(Protocol):
    def owe(self, job_id: str, busy_until: float) -> None:
        """Record that the job owes its webhook, held by the caller until `busy_until`."""

    def due(self, now: float, limit: int) -> list[str]:
        """Job ids whose entry nobody holds at `now`, longest-free first (a hint; `claim` decides)."""

    def claim(self, job_id: str, now: float, busy_until: float) -> bool:
        """Hold the entry until `busy_until` if nobody holds it at `now`; False if someone
        does or there is no entry."""

    def release(self, job_id: str) -> None:
        """Stop holding the entry (its sender stopped before the end): due at once."""

    def settle(self, job_id: str) -> None:
        """Remove the entry: the webhook was sent, gave up, or is not owed any more."""

    def close(self) -> None: ...


class SQLiteWebhookOutbox:
    """A table in the job store's SQLite file, on a connection of its own."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # Statements run as they come (no implicit transactions); each one is atomic by itself.
        self._conn = open_sqlite(self.path)
        with self._lock:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS webhook_outbox (job_id TEXT PRIMARY KEY, busy_until REAL NOT NULL)"
            )
            self._conn.execute("CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (busy_until)")

    def owe(self, job_id: str, busy_until: float) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO webhook_outbox (job_id, busy_until) VALUES (?, ?)"
                " ON CONFLICT (job_id) DO UPDATE SET busy_until = excluded.busy_until",
                (job_id, busy_until),
            )

    def due(self, now: float, limit: int) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT job_id FROM webhook_outbox WHERE busy_until <= ? ORDER BY busy_until, job_id LIMIT ?",
                (now, limit),
            ).fetchall()
        return [row[0] for row in rows]

    def claim(self, job_id: str, now: float, busy_until: float) -> bool:
        # One UPDATE whose WHERE is the test: SQLite runs it under the file's write lock,
        # so of two gateways (processes or threads) only the first changes the row.
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE webhook_outbox SET busy_until = ? WHERE job_id = ? AND busy_until <= ?",
                (busy_until, job_id, now),
            )
        return cursor.rowcount == 1

    def release(self, job_id: str) -> None:
        with self._lock:
            self._conn.execute("UPDATE webhook_outbox SET busy_until = 0 WHERE job_id = ?", (job_id,))

    def settle(self, job_id: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM webhook_outbox WHERE job_id = ?", (job_id,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# KEYS: the outbox zset. ARGV: job id, now, busy_until. -> 1 claimed, 0 held or no entry
_CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"""


# A Redis that cannot be reached answers 503, as the job store beside it does.
@unavailable_as_503("webhook outbox")
class RedisWebhookOutbox:
    """A sorted set `P:webhooks` in the job store's Redis: member job id, score busy_until."""

    def __init__(self, url: str, prefix: str = "wanserve", *, options: RedisClientOptions | None = None) -> None:
        # Timeouts (redis_client.py): a blackholed Redis is a 503, not a hung event loop.
        self._redis = open_redis(url, options)
        self._key = f"{prefix}:webhooks"
        self._claim = self._redis.register_script(_CLAIM)

    def owe(self, job_id: str, busy_until: float) -> None:
        self._redis.zadd(self._key, {job_id: busy_until})

    def due(self, now: float, limit: int) -> list[str]:
        return list(self._redis.zrangebyscore(self._key, "-inf", repr(now), start=0, num=limit))

    def claim(self, job_id: str, now: float, busy_until: float) -> bool:
        return self._claim(keys=[self._key], args=[job_id, repr(now), repr(busy_until)]) == 1

    def release(self, job_id: str) -> None:
        # XX: only an entry that is still there (settled meanwhile: nothing to release).
        self._redis.zadd(self._key, {job_id: 0}, xx=True)

    def settle(self, job_id: str) -> None:
        self._redis.zrem(self._key, job_id)

    def close(self) -> None:
        self._redis.close()


def open_webhook_outbox(url: str | None, data_dir: Path, redis: RedisClientOptions | None = None) -> WebhookOutbox:
    """The outbox beside the job store that `url` (the `job_store` setting) names."""
    if not url or url == "sqlite":
        return SQLiteWebhookOutbox(Path(data_dir) / DEFAULT_SQLITE_NAME)
    if url.startswith("sqlite://") and url[len("sqlite://") :].startswith("/"):
        return SQLiteWebhookOutbox(Path(url[len("sqlite://") :]))
    if url.startswith(("redis://", "rediss://")):
        return RedisWebhookOutbox(url, options=redis)
    # Only the scheme is quoted: the rest of a URL may hold a password.
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise ValueError(f"job store url scheme {scheme!r} is not one of: {ALLOWED_FORMS}")
