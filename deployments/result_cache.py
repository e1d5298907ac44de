"""ResultCache: finished videos by canonical key, and single-flight claims.

In front of the graph: it owns the cache index's writes (fills, evictions,
purges) and the single-flight claims. Gateways read the index directly for
lookups, so a hit costs one index read and no extra hop. A fill copies the
job's files to the entry's own id in the artifact store, and a hit copies the
entry's files to the new video's id (serve_app/api/create.py): evicting or
purging an entry never breaks a video answered from it.

An entry goes when the video that filled it is deleted (`forget_source`): its
pixels are not served on. Files that a crash or a failed delete left without
an entry are collected (`collect_orphans`, also run by fills every
GC_INTERVAL_S).

Every index and artifact call runs in a thread (`asyncio.to_thread`): they are
blocking (SQLite, Redis, S3 copies of whole mp4s), and the methods are async,
so on the replica's event loop one slow fill would hold every gateway's claim.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from typing import Any

from ray import serve

from serve_app.artifacts import open_artifact_store
from serve_app.cache.index import CacheEntry, artifact_id_for, open_cache_index
from serve_app.deployment_view import start_args
from serve_app.errors import NotFound
from serve_app.live import apply_user_config

log = logging.getLogger("ray.serve")

# A fill writes its files within this long after tracking them: younger tracked
# keys without an entry are fills in progress, not orphans.
ORPHAN_GRACE_S = 600.0
# How often fills look for orphaned files (and the first fill after a start does).
GC_INTERVAL_S = 600.0


@serve.deployment
class ResultCache:
    def __init__(self, args: dict[str, Any]) -> None:
        from ray.serve import metrics

        start = start_args(args, "result_cache")
        self.base_args, self.args = start.base, start.args
        self.index = open_cache_index(self.args.cache_store, self.args.data_path, self.args.redis)
        self.artifacts = open_artifact_store(self.args.artifact_store, self.args.data_path)
        self.counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()  # counted from the calls' threads
        self._metrics = {
            name: metrics.Counter(f"wan_cache_{name}_total", description=f"Result cache {name}.")
            for name in ("fills", "evictions", "orphans")
        }
        self._next_gc = 0.0

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve calls this after the constructor, and on every deploy that changes only this
        deployment's user_config: the TTL of new entries, the size bound (applied at the next
        fill's eviction) and the claims' TTL change, the index stays (serve_app/live.py)."""
        self.args = apply_user_config(self.base_args, "result_cache", user_config)
        log.info("result cache settings applied from its user_config: %s", ", ".join(sorted(user_config or {})))

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            with self._counts_lock:
                self.counts[name] += n
            self._metrics[name].inc(n)

    async def claim(self, key: str, job_id: str) -> str:
        return await asyncio.to_thread(
            self.index.claim_inflight, key, job_id, self.args.cache_inflight_ttl_s, time.time()
        )

    async def release(self, key: str, job_id: str) -> None:
        await asyncio.to_thread(self.index.release_inflight, key, job_id)

    async def fill(self, key: str, video: dict, source_id: str) -> bool:
        """Store a completed job's result under `key`; releases its claim."""
        return await asyncio.to_thread(self._fill, key, video, source_id)

    def _fill(self, key: str, video: dict, source_id: str) -> bool:
        try:
            target = artifact_id_for(key)
            now = time.time()
            # Before the first byte: files a crash leaves from here on are found by the GC.
            self.index.track_files(key, now)
            size = 0
            for variant in ("video", "thumbnail"):
                try:
                    data = self.artifacts.get(source_id, variant)
                except NotFound:
                    continue
                self.artifacts.put(target, variant, data)
                size += len(data)
            if size == 0:
                return False  # the job's files are gone (deleted meanwhile): nothing to serve
            self.index.put(
                CacheEntry(
                    key=key,
                    video=video,
                    size_bytes=size,
                    created_at=now,
                    expires_at=now + self.args.cache_ttl_s,
                    last_access=now,
                )
            )
            self._count("fills")
            self._drop(self.index.evict(now, self.args.cache_max_bytes), "evictions")
            self._collect_orphans_if_due(now)
            return True
        finally:
            self.index.release_inflight(key, video["id"])

    def _drop(self, keys: list[str], counter: str | None = None) -> None:
        for key in keys:
            try:
                self.artifacts.delete(artifact_id_for(key))
            except Exception:
                # Still tracked: the GC deletes them later. The rest are dropped now.
                log.warning("cache files of %s not deleted; left to the orphan GC", key[:16], exc_info=True)
                continue
            self.index.untrack_files([key])
        if counter:
            self._count(counter, len(keys))

    def _collect_orphans(self, now: float) -> int:
        self._next_gc = now + GC_INTERVAL_S
        orphans = self.index.orphaned_files(now - ORPHAN_GRACE_S)
        self._drop(orphans, "orphans")
        return len(orphans)

    def _collect_orphans_if_due(self, now: float) -> None:
        if now < self._next_gc:
            return
        try:
            self._collect_orphans(now)
        except Exception:
            # The fill itself succeeded; the next one tries again.
            log.warning("orphaned cache files not collected", exc_info=True)

    async def collect_orphans(self, now: float | None = None) -> int:
        """Delete files that no entry points at (tracked longer than ORPHAN_GRACE_S before
        `now`); how many keys' files went."""
        return await asyncio.to_thread(self._collect_orphans, time.time() if now is None else now)

    async def forget_source(self, key: str, source_id: str) -> bool:
        """Drop the entry of `key` if video `source_id` filled it: that video was deleted,
        and what its owner deleted is not served on from the cache."""
        return await asyncio.to_thread(self._forget_source, key, source_id)

    def _forget_source(self, key: str, source_id: str) -> bool:
        entry = self.index.delete_if_source(key, source_id)
        if entry is not None:
            self._drop([key])
        return entry is not None

    async def delete(self, key: str) -> bool:
        return await asyncio.to_thread(self._delete, key)

    def _delete(self, key: str) -> bool:
        entry = self.index.delete(key)
        if entry is not None:
            self._drop([key])
        return entry is not None

    async def purge(self) -> int:
        return await asyncio.to_thread(self._purge)

    def _purge(self) -> int:
        entries = self.index.purge()
        self._drop([e.key for e in entries])
        return len(entries)

    async def stats(self) -> dict:
        # Hits and misses are counted where lookups happen (gateways, metrics
        # wan_cache_{hits,misses}_total); fills and evictions happen here.
        index_stats = await asyncio.to_thread(self.index.stats)
        with self._counts_lock:
            return {**index_stats, **{k: self.counts[k] for k in ("fills", "evictions", "orphans")}}
