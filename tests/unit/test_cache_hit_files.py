"""Issue 15, item 9: a video answered from the result cache keeps its content until its own
`expires_at`, whatever happens to the entry; files no entry points at are collected.

Before, a cache hit's record pointed at the entry's files (`artifact_id`), so an LRU
eviction or an admin purge made the hit's content 404 while the video still said
"completed" and named a later `expires_at`. Now a hit gets its own copy (a hard link in a
local folder, a server-side copy in S3).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from deployments import result_cache
from serve_app.access.config import AccessConfig
from serve_app.access.guard import AccessGuard
from serve_app.access.keys import hash_secret
from serve_app.cache.index import artifact_id_for
from tests.helpers.access import bearer
from tests.helpers.redis_server import emptied_db_url
from tests.helpers.service import REQUEST, Service, api_client

ALICE = "wan_alice-secret-0123456789abcdef"
OPS = "wan_ops-secret-0123456789abcdef000"
OTHER = {**REQUEST, "seed": 12}  # another entry
REDIS_DB = 7  # this module's own database of the session's redis-server (flushed per test)


@pytest.fixture(params=["sqlite", "redis"])
def cache_store(request) -> str:
    """'' (the embedded SQLite index) or a Redis URL, emptied for the test."""
    if request.param == "sqlite":
        return ""
    return emptied_db_url(request.getfixturevalue("redis_server"), REDIS_DB)


def _stats(svc: Service) -> dict:
    return asyncio.run(svc.cache.stats())


def _generated_then_hit(client, headers=None) -> tuple[dict, dict, bytes]:
    made = client.post("/v1/videos", json=REQUEST, headers=headers or {})
    hit = client.post("/v1/videos", json=REQUEST, headers=headers or {})
    assert made.status_code == 200 and not made.json()["cached"], made.text
    assert hit.status_code == 200 and hit.json()["cached"], hit.text
    content = client.get(f"/v1/videos/{hit.json()['id']}/content", headers=headers or {})
    assert content.status_code == 200
    return made.json(), hit.json(), content.content


def test_a_hit_still_downloads_after_its_entry_is_evicted(tmp_path, cache_store):
    svc = Service(tmp_path, service_args={"cache_store": cache_store})
    try:
        with api_client(svc.gateway) as client:
            _, hit, content = _generated_then_hit(client)
            # A cap smaller than any entry: the next fill evicts every entry, its own too.
            svc.cache.args = svc.cache.args.model_copy(update={"cache_max_bytes": 1})
            assert client.post("/v1/videos", json=OTHER).status_code == 200
            assert _stats(svc)["entries"] == 0 and _stats(svc)["evictions"] == 2
            assert not svc.gateway.stores.artifacts.exists(artifact_id_for(hit["cache_key"]), "video")
            again = client.get(f"/v1/videos/{hit['id']}/content")
            assert again.status_code == 200, again.text
            assert again.content == content
            assert hit["expires_at"] > time.time()
    finally:
        svc.store.close()


def test_a_hit_still_downloads_after_an_admin_purge(tmp_path, cache_store):
    guard = AccessGuard(
        AccessConfig(
            api_keys=[
                {"id": "alice", "sha256": hash_secret(ALICE)},
                {"id": "ops", "sha256": hash_secret(OPS), "admin": True},
            ],
            api_keys_env="",
        ),
        {},
    )
    svc = Service(tmp_path, access=guard, service_args={"cache_store": cache_store})
    try:
        with api_client(svc.gateway) as client:
            _, hit, content = _generated_then_hit(client, bearer(ALICE))
            purged = client.delete("/v1/cache", headers=bearer(OPS))
            assert purged.status_code == 200 and purged.json() == {"purged": 1}
            again = client.get(f"/v1/videos/{hit['id']}/content", headers=bearer(ALICE))
            assert again.status_code == 200, again.text
            assert again.content == content
    finally:
        svc.store.close()


def test_deleting_a_hit_deletes_its_copy_and_leaves_the_entry(tmp_path):
    svc = Service(tmp_path)
    artifacts = svc.gateway.stores.artifacts
    try:
        with api_client(svc.gateway) as client:
            _, hit, _ = _generated_then_hit(client)
            assert artifacts.exists(hit["id"], "video")
            assert client.delete(f"/v1/videos/{hit['id']}").status_code == 200
            assert not artifacts.exists(hit["id"], "video")  # its own files went with it
            assert artifacts.exists(artifact_id_for(hit["cache_key"]), "video")
            assert client.post("/v1/videos", json=REQUEST).json()["cached"]
    finally:
        svc.store.close()
    assert len(svc.generator.calls) == 1


def test_an_entry_whose_files_are_gone_is_a_miss_not_a_404(tmp_path):
    """The index read and the copy are two steps: an eviction between them leaves an
    entry without files for that instant. The request then generates; nothing 404s."""
    svc = Service(tmp_path)
    try:
        with api_client(svc.gateway) as client:
            made = client.post("/v1/videos", json=REQUEST).json()
            svc.gateway.stores.artifacts.delete(artifact_id_for(made["cache_key"]))
            again = client.post("/v1/videos", json=REQUEST)
            assert again.status_code == 200 and not again.json()["cached"], again.text
            assert client.get(f"/v1/videos/{again.json()['id']}/content").status_code == 200
            # Its fill put the files back: the next one is a hit again.
            assert client.post("/v1/videos", json=REQUEST).json()["cached"]
    finally:
        svc.store.close()
    assert len(svc.generator.calls) == 2


def _orphan_grace_passed() -> float:
    return time.time() + result_cache.ORPHAN_GRACE_S + 1


def test_files_an_eviction_failed_to_delete_are_collected(tmp_path, cache_store):
    svc = Service(tmp_path, service_args={"cache_store": cache_store})
    artifacts = svc.cache.artifacts
    real_delete, failed = artifacts.delete, []

    def flaky_delete(video_id):
        if not failed:
            failed.append(video_id)
            raise OSError("disk went read-only for a moment")
        real_delete(video_id)

    try:
        with api_client(svc.gateway) as client:
            made = client.post("/v1/videos", json=REQUEST).json()
            svc.cache.args = svc.cache.args.model_copy(update={"cache_max_bytes": 1})
            artifacts.delete = flaky_delete
            other = client.post("/v1/videos", json=OTHER).json()  # evicts both; the first delete fails
        orphan = artifact_id_for(made["cache_key"])
        assert failed == [orphan] and artifacts.exists(orphan, "video")
        assert not artifacts.exists(artifact_id_for(other["cache_key"]), "video")
        assert asyncio.run(svc.cache.collect_orphans()) == 0  # too young to tell from a fill in progress
        assert asyncio.run(svc.cache.collect_orphans(now=_orphan_grace_passed())) == 1
        assert not artifacts.exists(orphan, "video") and not artifacts.exists(orphan, "thumbnail")
        assert asyncio.run(svc.cache.collect_orphans(now=_orphan_grace_passed())) == 0  # untracked now
        assert _stats(svc)["orphans"] == 1
    finally:
        svc.store.close()


def test_files_of_a_fill_that_crashed_are_collected_and_live_entries_kept(tmp_path, cache_store):
    svc = Service(tmp_path, service_args={"cache_store": cache_store})
    artifacts = svc.cache.artifacts
    real_put = svc.cache.index.put

    def crash(entry):
        raise ConnectionError("index lost between the files and the entry")

    try:
        with api_client(svc.gateway) as client:
            kept = client.post("/v1/videos", json=OTHER).json()
            svc.cache.index.put = crash
            lost = client.post("/v1/videos", json=REQUEST).json()  # its fill fails after the files
            svc.cache.index.put = real_put
        orphan = artifact_id_for(lost["cache_key"])
        assert artifacts.exists(orphan, "video") and _stats(svc)["entries"] == 1
        assert asyncio.run(svc.cache.collect_orphans(now=_orphan_grace_passed())) == 1
        assert not artifacts.exists(orphan, "video")
        assert artifacts.exists(artifact_id_for(kept["cache_key"]), "video")  # a live entry's files stay
    finally:
        svc.store.close()


def test_a_fill_collects_orphans_when_due(tmp_path, monkeypatch):
    svc = Service(tmp_path)
    artifacts = svc.cache.artifacts
    orphan_key = "ab" * 32
    svc.cache.index.track_files(orphan_key, time.time() - 1)
    artifacts.put(artifact_id_for(orphan_key), "video", b"left by a crash")
    monkeypatch.setattr(result_cache, "ORPHAN_GRACE_S", 0.0)
    try:
        with api_client(svc.gateway) as client:
            made = client.post("/v1/videos", json=REQUEST).json()
        assert not artifacts.exists(artifact_id_for(orphan_key), "video")
        assert artifacts.exists(artifact_id_for(made["cache_key"]), "video")  # its own fill is no orphan
        assert _stats(svc)["orphans"] == 1
    finally:
        svc.store.close()
