"""Picking a job store backend from a URL (the `job_store` setting)."""

from __future__ import annotations

from pathlib import Path

from serve_app.jobs.model import JobStore
from serve_app.jobs.sqlite_store import SQLiteJobStore
from serve_app.settings.redis import RedisClientOptions

DEFAULT_SQLITE_NAME = "jobs.sqlite3"
ALLOWED_FORMS = (
    "unset or '' or 'sqlite' (SQLite in the data directory), "
    "'sqlite:///absolute/path.db', 'redis://host:port/db' or 'rediss://...'"
)


def open_job_store(url: str | None, data_dir: Path, redis: RedisClientOptions | None = None) -> JobStore:
    """The store `url` names; a Redis one with `redis`' timeouts (default: RedisClientOptions())."""
    if not url or url == "sqlite":
        return SQLiteJobStore(Path(data_dir) / DEFAULT_SQLITE_NAME)
    if url.startswith("sqlite://"):
        # Three slashes and an absolute path: a relative one would depend on
        # the working directory of whichever process opens the store.
        path = url[len("sqlite://") :]
        if not path.startswith("/"):
            raise ValueError(f"job store url {url!r} has no absolute path; allowed forms: {ALLOWED_FORMS}")
        return SQLiteJobStore(Path(path))
    if url.startswith(("redis://", "rediss://")):
        # redis is an optional extra: import it only for those who asked for it.
        try:
            from serve_app.jobs.redis_store import RedisJobStore
        except ImportError as exc:
            raise ImportError("a redis:// job store needs the redis client: pip install 'wan-serve[redis]'") from exc
        return RedisJobStore(url, options=redis)
    # Only the scheme is quoted: the rest of a URL may hold a password.
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise ValueError(f"job store url scheme {scheme!r} is unknown; allowed forms: {ALLOWED_FORMS}")
