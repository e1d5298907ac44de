"""Where cache entries are indexed: an embedded SQLite file, or Redis.

Entries point at files in the artifact store (under `artifact_id`, derived
from the key); the index holds the metadata, the LRU order and the sizes.
Both backends bound the total size (least recently used go first) and
expire entries after their TTL; what they drop is returned so the caller
deletes the files. They also hold the single-flight claims: which job is
generating a key right now.

Files are tracked apart from entries: a key is tracked before its files are
written and untracked once they are deleted, so files that a crash or a
failed delete left without an entry are found (`orphaned_files`) and
collected, never leaked.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from serve_app.redis_client import open_redis
from serve_app.redis_errors import unavailable_as_503
from serve_app.settings.redis import RedisClientOptions


def artifact_id_for(key: str) -> str:
    """Cached files live under an id of our own format, derived from the key."""
    return f"video_{key[:32]}"


class CacheEntry(BaseModel):
    key: str
    video: dict  # the VideoObject the entry was filled from
    size_bytes: int
    created_at: float
    expires_at: float
    last_access: float

    @property
    def artifact_id(self) -> str:
        return artifact_id_for(self.key)


class CacheIndex(Protocol):
    def get(self, key: str, now: float) -> CacheEntry | None:
        """The live entry (touching its LRU position), or None."""

    def put(self, entry: CacheEntry) -> None: ...

    def delete(self, key: str) -> CacheEntry | None: ...

    def purge(self) -> list[CacheEntry]: ...

    def evict(self, now: float, max_bytes: int) -> list[str]:
        """Drop expired entries, then least recently used ones until the total fits
        `max_bytes`; returns the dropped keys."""

    def claim_inflight(self, key: str, job_id: str, ttl_s: float, now: float) -> str:
        """Register `job_id` as generating `key` unless a live claim exists; returns
        the job id that holds the key (ours when we got it)."""

    def release_inflight(self, key: str, job_id: str) -> None: ...

    def delete_if_source(self, key: str, source_id: str) -> CacheEntry | None:
        """Drop the entry of `key` only if video `source_id` filled it (a later fill by
        another video is not that video's); returns the dropped entry."""

    def track_files(self, key: str, now: float) -> None:
        """Note that `key`'s files are about to be written (before the first byte)."""

    def untrack_files(self, keys: list[str]) -> None:
        """Their files are deleted."""

    def orphaned_files(self, tracked_before: float) -> list[str]:
        """Tracked keys without an entry, tracked before `tracked_before` (fills in progress
        are younger): their files are nobody's."""

    def stats(self) -> dict: ...

    def close(self) -> None: ...


class SQLiteCacheIndex:
    """Embedded default: one file, survives restarts, one writer at a time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL under WAL: commits skip the fsync (a power cut may lose the last
        # LRU touches, never corrupt the file). Every hit writes its touch, and
        # an fsync per hit was most of a hit's time in the gateway.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS entries(
                key TEXT PRIMARY KEY, video TEXT NOT NULL, size_bytes INTEGER NOT NULL,
                created_at REAL NOT NULL, expires_at REAL NOT NULL, last_access REAL NOT NULL);
            CREATE INDEX IF NOT EXISTS entries_lru ON entries(last_access);
            CREATE TABLE IF NOT EXISTS inflight(key TEXT PRIMARY KEY, job_id TEXT NOT NULL, expires_at REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS files(key TEXT PRIMARY KEY, tracked_at REAL NOT NULL);
            -- Entries filled before files were tracked: theirs are tracked from now on.
            INSERT OR IGNORE INTO files SELECT key, created_at FROM entries;
            """
        )

    @staticmethod
    def _entry(row) -> CacheEntry:
        key, video, size, created, expires, access = row
        return CacheEntry(
            key=key,
            video=json.loads(video),
            size_bytes=size,
            created_at=created,
            expires_at=expires,
            last_access=access,
        )

    def get(self, key: str, now: float) -> CacheEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT key, video, size_bytes, created_at, expires_at, last_access FROM entries "
                "WHERE key = ? AND expires_at > ?",
                (key, now),
            ).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE entries SET last_access = ? WHERE key = ?", (now, key))
        return self._entry(row)

    def put(self, entry: CacheEntry) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                (
                    entry.key,
                    json.dumps(entry.video),
                    entry.size_bytes,
                    entry.created_at,
                    entry.expires_at,
                    entry.last_access,
                ),
            )

    def delete(self, key: str) -> CacheEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT key, video, size_bytes, created_at, expires_at, last_access FROM entries WHERE key = ?", (key,)
            ).fetchone()
            self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
        return None if row is None else self._entry(row)

    def purge(self) -> list[CacheEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, video, size_bytes, created_at, expires_at, last_access FROM entries"
            ).fetchall()
            self._db.execute("DELETE FROM entries")
        return [self._entry(r) for r in rows]

    def evict(self, now: float, max_bytes: int) -> list[str]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dropped = [k for (k,) in self._db.execute("SELECT key FROM entries WHERE expires_at <= ?", (now,))]
                self._db.execute("DELETE FROM entries WHERE expires_at <= ?", (now,))
                (total,) = self._db.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM entries").fetchone()
                for key, size in self._db.execute(
                    "SELECT key, size_bytes FROM entries ORDER BY last_access ASC"
                ).fetchall():
                    if total <= max_bytes:
                        break
                    self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
                    dropped.append(key)
                    total -= size
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return dropped

    def claim_inflight(self, key: str, job_id: str, ttl_s: float, now: float) -> str:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT job_id FROM inflight WHERE key = ? AND expires_at > ?", (key, now)
                ).fetchone()
                if row is None:
                    self._db.execute("INSERT OR REPLACE INTO inflight VALUES (?, ?, ?)", (key, job_id, now + ttl_s))
                    holder = job_id
                else:
                    holder = row[0]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return holder

    def release_inflight(self, key: str, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM inflight WHERE key = ? AND job_id = ?", (key, job_id))

    def delete_if_source(self, key: str, source_id: str) -> CacheEntry | None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT key, video, size_bytes, created_at, expires_at, last_access FROM entries WHERE key = ?",
                    (key,),
                ).fetchone()
                entry = None if row is None else self._entry(row)
                if entry is not None and entry.video.get("id") == source_id:
                    self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
                else:
                    entry = None
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return entry

    def track_files(self, key: str, now: float) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?)", (key, now))

    def untrack_files(self, keys: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM files WHERE key = ?", [(k,) for k in keys])

    def orphaned_files(self, tracked_before: float) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key FROM files WHERE tracked_at < ? AND key NOT IN (SELECT key FROM entries)",
                (tracked_before,),
            ).fetchall()
        return [k for (k,) in rows]

    def stats(self) -> dict:
        with self._lock:
            entries, total = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM entries").fetchone()
        return {"entries": entries, "bytes": total}

    def close(self) -> None:
        self._db.close()


# Releases a single-flight claim only if it is still ours (a newer claim after
# our TTL ran out must not be dropped by our late release).
_RELEASE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# Drops an entry only if the given video filled it, in one step (a fill between a
# read and a delete must not be dropped for another video's deletion).
_DELETE_IF_SOURCE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local video = cjson.decode(raw)['video']
if type(video) ~= 'table' or video['id'] ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return raw
"""


@unavailable_as_503("cache index")
class RedisCacheIndex:
    """Shared by several gateway nodes. Entries expire through Redis TTLs
    (SET EX); an LRU sorted set and a size hash bound the total."""

    def __init__(self, url: str, prefix: str = "wanserve:cache", *, options: RedisClientOptions | None = None) -> None:
        # Timeouts (redis_client.py): a blackholed Redis is a 503, not a hung caller.
        self._r = open_redis(url, options)
        self._p = prefix
        self._release = self._r.register_script(_RELEASE_IF_OURS)
        self._delete_if_source = self._r.register_script(_DELETE_IF_SOURCE)

    def _k(self, *parts: str) -> str:
        return ":".join((self._p, *parts))

    def get(self, key: str, now: float) -> CacheEntry | None:
        # One round trip: the LRU touch rides with the read (XX: it never adds a
        # key that is not in the LRU set already, so a miss leaves no trace).
        pipe = self._r.pipeline(transaction=False)
        pipe.get(self._k("entry", key))
        pipe.zadd(self._k("lru"), {key: now}, xx=True)
        raw, _ = pipe.execute()
        if raw is None:
            return None
        entry = CacheEntry.model_validate_json(raw)
        if entry.expires_at <= now:
            return None
        entry.last_access = now
        return entry

    def put(self, entry: CacheEntry) -> None:
        ttl_ms = max(1, int((entry.expires_at - time.time()) * 1000))
        pipe = self._r.pipeline()
        pipe.set(self._k("entry", entry.key), entry.model_dump_json(), px=ttl_ms)
        pipe.zadd(self._k("lru"), {entry.key: entry.last_access})
        pipe.hset(self._k("size"), entry.key, entry.size_bytes)
        pipe.execute()

    def _drop(self, keys: list[str]) -> None:
        if keys:
            pipe = self._r.pipeline()
            pipe.delete(*[self._k("entry", k) for k in keys])
            pipe.zrem(self._k("lru"), *keys)
            pipe.hdel(self._k("size"), *keys)
            pipe.execute()

    def delete(self, key: str) -> CacheEntry | None:
        raw = self._r.get(self._k("entry", key))
        self._drop([key])
        return None if raw is None else CacheEntry.model_validate_json(raw)

    def purge(self) -> list[CacheEntry]:
        keys = self._r.zrange(self._k("lru"), 0, -1)
        raws = self._r.mget([self._k("entry", k) for k in keys]) if keys else []
        self._drop(keys)
        return [CacheEntry.model_validate_json(raw) for raw in raws if raw is not None]

    def evict(self, now: float, max_bytes: int) -> list[str]:
        keys = self._r.zrange(self._k("lru"), 0, -1)  # least recently used first
        if not keys:
            return []
        alive = self._r.mget([self._k("entry", k) for k in keys])
        sizes = dict(zip(keys, (int(s or 0) for s in self._r.hmget(self._k("size"), keys))))
        # Gone through their Redis TTL (or due by their own expiry, which the
        # TTL may not have reached yet): their LRU slots and files remain.
        live = {
            k for k, raw in zip(keys, alive) if raw is not None and CacheEntry.model_validate_json(raw).expires_at > now
        }
        dropped = [k for k in keys if k not in live]
        total = sum(sizes[k] for k in live)
        for key in keys:
            if total <= max_bytes:
                break
            if key in live:
                dropped.append(key)
                total -= sizes[key]
        self._drop(dropped)
        return dropped

    def claim_inflight(self, key: str, job_id: str, ttl_s: float, now: float) -> str:
        name = self._k("inflight", key)
        if self._r.set(name, job_id, nx=True, px=max(1, int(ttl_s * 1000))):
            return job_id
        holder = self._r.get(name)
        # Expired between the two calls: try once more rather than loop.
        if holder is None and self._r.set(name, job_id, nx=True, px=max(1, int(ttl_s * 1000))):
            return job_id
        return holder or job_id

    def release_inflight(self, key: str, job_id: str) -> None:
        self._release(keys=[self._k("inflight", key)], args=[job_id])

    def delete_if_source(self, key: str, source_id: str) -> CacheEntry | None:
        raw = self._delete_if_source(
            keys=[self._k("entry", key), self._k("lru"), self._k("size")], args=[source_id, key]
        )
        return None if raw is None else CacheEntry.model_validate_json(raw)

    def track_files(self, key: str, now: float) -> None:
        self._r.hset(self._k("files"), key, now)

    def untrack_files(self, keys: list[str]) -> None:
        if keys:
            self._r.hdel(self._k("files"), *keys)

    def orphaned_files(self, tracked_before: float) -> list[str]:
        tracked = [k for k, at in self._r.hgetall(self._k("files")).items() if float(at) < tracked_before]
        if not tracked:
            return []
        pipe = self._r.pipeline(transaction=False)
        for key in tracked:
            pipe.exists(self._k("entry", key))
        # An entry gone through its Redis TTL counts as gone: its files are nobody's.
        return [k for k, alive in zip(tracked, pipe.execute()) if not alive]

    def stats(self) -> dict:
        sizes = [int(v) for v in self._r.hvals(self._k("size"))]
        return {"entries": len(sizes), "bytes": sum(sizes)}

    def close(self) -> None:
        self._r.close()


def open_cache_index(url: str | None, data_dir: Path, redis: RedisClientOptions | None = None) -> CacheIndex:
    """'' -> SQLite in data_dir; 'redis://...' -> Redis (with `redis`' timeouts)."""
    if not url:
        return SQLiteCacheIndex(data_dir / "cache.sqlite3")
    if url.startswith(("redis://", "rediss://")):
        return RedisCacheIndex(url, options=redis)
    raise ValueError(f"cache_store={url.split(':', 1)[0]!r}: is not '' (embedded SQLite) or redis://host:port/db")
