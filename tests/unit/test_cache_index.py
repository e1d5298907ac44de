"""Cache index backends (embedded SQLite, real Redis): TTL, LRU, single-flight."""

from __future__ import annotations

import time

import pytest

from serve_app.cache.index import CacheEntry, RedisCacheIndex, SQLiteCacheIndex, artifact_id_for, open_cache_index

# Real time: Redis expires keys by its own clock, so entries must be "now"-based.
NOW = time.time()


@pytest.fixture(params=["sqlite", "redis"])
def index(request, tmp_path):
    if request.param == "sqlite":
        idx = SQLiteCacheIndex(tmp_path / "cache.sqlite3")
    else:
        server = request.getfixturevalue("redis_server")
        idx = RedisCacheIndex(server.url, prefix=f"test:{tmp_path.name}")
    yield idx
    idx.close()


SOURCE = f"video_{'0' * 32}"


def entry(key: str, size: int = 100, now: float = NOW, ttl: float = 3600, source: str = SOURCE) -> CacheEntry:
    return CacheEntry(
        key=key,
        video={"id": source},
        size_bytes=size,
        created_at=now,
        expires_at=now + ttl,
        last_access=now,
    )


def key(n: int) -> str:
    return f"{n:064x}"


def test_put_get_round_trip(index):
    index.put(entry(key(1)))
    got = index.get(key(1), NOW + 1)
    assert got is not None and got.key == key(1) and got.size_bytes == 100
    assert got.artifact_id == artifact_id_for(key(1)) == f"video_{key(1)[:32]}"
    assert index.get(key(2), NOW) is None


def test_expired_entries_are_not_served_and_are_evicted(index):
    # Redis TTLs run on its own clock, so the entry expires "now" by both clocks.
    import time

    now = time.time()
    index.put(entry(key(1), now=now - 10, ttl=5))
    index.put(entry(key(2), now=now, ttl=3600))
    assert index.get(key(1), now) is None
    assert index.evict(now, max_bytes=10**9) == [key(1)]
    assert index.stats()["entries"] == 1


def test_lru_eviction_keeps_the_total_under_the_cap(index):
    import time

    now = time.time()
    for n in range(1, 5):
        index.put(entry(key(n), size=100, now=now + n))
    index.get(key(1), now + 10)  # the oldest becomes the most recently used
    dropped = index.evict(now + 11, max_bytes=250)
    assert dropped == [key(2), key(3)]
    assert index.stats() == {"entries": 2, "bytes": 200}
    assert index.get(key(1), now + 12) is not None and index.get(key(4), now + 12) is not None


def test_delete_and_purge(index):
    for n in range(3):
        index.put(entry(key(n)))
    assert index.delete(key(0)).key == key(0)
    assert index.delete(key(0)) is None
    assert sorted(e.key for e in index.purge()) == [key(1), key(2)]
    assert index.stats()["entries"] == 0


def test_single_flight_claims(index):
    import time

    now = time.time()
    assert index.claim_inflight(key(1), "video_a", ttl_s=60, now=now) == "video_a"
    assert index.claim_inflight(key(1), "video_b", ttl_s=60, now=now) == "video_a"
    index.release_inflight(key(1), "video_b")  # not the holder: no effect
    assert index.claim_inflight(key(1), "video_c", ttl_s=60, now=now) == "video_a"
    index.release_inflight(key(1), "video_a")
    assert index.claim_inflight(key(1), "video_c", ttl_s=60, now=now) == "video_c"


def test_delete_if_source_drops_only_the_entry_that_video_filled(index):
    """Issue 15 item 11: deleting a video purges the entry it filled, not a later fill's."""
    other = f"video_{'1' * 32}"
    index.put(entry(key(1), source=SOURCE))
    index.put(entry(key(2), source=other))
    assert index.delete_if_source(key(2), SOURCE) is None  # refilled by another video since
    assert index.delete_if_source(key(3), SOURCE) is None  # no entry at all
    dropped = index.delete_if_source(key(1), SOURCE)
    assert dropped is not None and dropped.key == key(1)
    assert index.get(key(1), NOW) is None and index.get(key(2), NOW) is not None
    assert index.stats() == {"entries": 1, "bytes": 100}  # LRU and sizes forget it too
    assert index.evict(NOW, max_bytes=10**9) == []


def test_orphaned_files_are_tracked_keys_without_an_entry(index):
    """Issue 15 item 9: files a crash or a failed delete left behind are found."""
    now = time.time()
    index.track_files(key(1), now - 100)  # filled: not an orphan
    index.put(entry(key(1), now=now))
    index.track_files(key(2), now - 100)  # files written, no entry (a fill that crashed)
    index.track_files(key(3), now - 100)  # an entry dropped whose files were never deleted
    index.put(entry(key(3), now=now))
    index.delete(key(3))
    index.track_files(key(4), now)  # a fill in progress: too young to judge
    assert sorted(index.orphaned_files(now - 10)) == [key(2), key(3)]
    index.untrack_files([key(2), key(3)])
    assert index.orphaned_files(now - 10) == []
    index.delete(key(1))
    assert index.orphaned_files(now - 10) == [key(1)]


def test_sqlite_tracks_the_files_of_entries_made_before_tracking(tmp_path):
    idx = SQLiteCacheIndex(tmp_path / "c.db")
    idx.put(entry(key(1), now=NOW - 100))
    idx._db.execute("DELETE FROM files")  # as an index from before file tracking
    idx.close()
    reopened = SQLiteCacheIndex(tmp_path / "c.db")
    reopened.delete(key(1))
    assert reopened.orphaned_files(NOW) == [key(1)]


def test_sqlite_claims_run_out(tmp_path):
    idx = SQLiteCacheIndex(tmp_path / "c.db")
    assert idx.claim_inflight(key(1), "video_a", ttl_s=5, now=NOW) == "video_a"
    assert idx.claim_inflight(key(1), "video_b", ttl_s=5, now=NOW + 6) == "video_b"


def test_sqlite_index_survives_reopening(tmp_path):
    SQLiteCacheIndex(tmp_path / "c.db").put(entry(key(1)))
    assert SQLiteCacheIndex(tmp_path / "c.db").get(key(1), NOW) is not None


def test_open_cache_index(tmp_path, redis_server):
    assert isinstance(open_cache_index("", tmp_path), SQLiteCacheIndex)
    assert isinstance(open_cache_index(redis_server.url, tmp_path), RedisCacheIndex)
    with pytest.raises(ValueError, match="redis"):
        open_cache_index("memcached://x", tmp_path)
