"""The /v1/cache admin routes: the result cache's stats, one entry's removal, a purge.
Who may call them is checked before any of them runs (`AdminAccess`, serve_app/access)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request

from serve_app.api.callers import ADMIN
from serve_app.errors import Forbidden, InvalidRequest, NotFound
from serve_app.handles import CacheAdministration

router = APIRouter()


class CacheAdmin:
    def __init__(self, cache: CacheAdministration | None, enabled: bool) -> None:
        self.cache = cache  # the ResultCache client, or None
        self.enabled = enabled  # `cache_enabled`

    def _need_cache(self) -> CacheAdministration:
        if self.cache is None or not self.enabled:
            raise Forbidden("the result cache is disabled (cache_enabled: false)")
        return self.cache

    async def stats(self) -> dict:
        return await self._need_cache().stats()

    async def delete(self, key: str) -> dict:
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise InvalidRequest(f"key={key!r} is not a cache key (64 hex digits)", param="key")
        if not await self._need_cache().delete(key):
            raise NotFound(f"no cache entry {key!r}", param="key")
        return {"key": key, "deleted": True}

    async def purge(self) -> dict:
        return {"purged": await self._need_cache().purge()}


def _cache_admin(request: Request) -> CacheAdmin:
    return request.app.state.cache_admin


@router.get("/v1/cache/stats", summary="Result cache: entries, bytes, fills, evictions (admin)", dependencies=[ADMIN])
async def cache_stats(request: Request) -> dict:
    return await _cache_admin(request).stats()


@router.delete("/v1/cache/{key}", summary="Drop one cache entry by its key (admin)", dependencies=[ADMIN])
async def cache_delete(request: Request, key: str) -> dict:
    return await _cache_admin(request).delete(key)


@router.delete("/v1/cache", summary="Purge the whole result cache (admin)", dependencies=[ADMIN])
async def cache_purge(request: Request) -> dict:
    return await _cache_admin(request).purge()
