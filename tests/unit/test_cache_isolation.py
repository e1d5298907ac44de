"""Issue 15, item 11: the result cache leaks nothing between tenants or past a delete.

- With API keys on, a key hits only entries its own requests filled (`cache_scope:
  per_key`, the default): before, key B learned from an instant `cached: true` that some
  tenant had generated a prompt it guessed. `cache_scope: shared` opts a deployment in.
- Deleting a video drops the entry it filled: before, its pixels were still served to
  anyone who asked again.
- A `cache: false` request that a tier forced onto the cache never fills it.
"""

from __future__ import annotations

import asyncio

import pytest

from deployments.result_cache import ResultCache
from serve_app.access.config import AccessConfig
from serve_app.access.guard import AccessGuard
from serve_app.access.keys import hash_secret
from serve_app.artifacts import LocalArtifactStore
from serve_app.cache.index import artifact_id_for
from serve_app.config import ServiceArgs
from serve_app.jobs.listeners import ResultCacheFill
from serve_app.jobs.stores import open_job_store
from tests.helpers.access import bearer
from tests.helpers.jobs import make_job, with_status
from tests.helpers.redis_server import emptied_db_url
from tests.helpers.service import REQUEST, Service, api_client

ALICE = "wan_alice-secret-0123456789abcdef"
BOB = "wan_bob-secret-0123456789abcdef00"
REDIS_DB = 8  # this module's own database of the session's redis-server (flushed per test)


@pytest.fixture(params=["sqlite", "redis"])
def cache_store(request) -> str:
    """'' (the embedded SQLite index) or a Redis URL, emptied for the test."""
    if request.param == "sqlite":
        return ""
    return emptied_db_url(request.getfixturevalue("redis_server"), REDIS_DB)


def _keyed_service(tmp_path, **service_args) -> Service:
    guard = AccessGuard(
        AccessConfig(
            api_keys=[{"id": "alice", "sha256": hash_secret(ALICE)}, {"id": "bob", "sha256": hash_secret(BOB)}],
            api_keys_env="",
        ),
        {},
    )
    return Service(tmp_path, access=guard, service_args=service_args)


# --- scope ------------------------------------------------------------------------------


def test_with_keys_on_a_key_never_hits_another_keys_entry(tmp_path, cache_store):
    svc = _keyed_service(tmp_path, cache_store=cache_store)
    try:
        with api_client(svc.gateway) as client:
            alice = client.post("/v1/videos", json=REQUEST, headers=bearer(ALICE)).json()
            bob = client.post("/v1/videos", json=REQUEST, headers=bearer(BOB)).json()
            assert not alice["cached"] and not bob["cached"]  # bob learns nothing of alice's prompt
            assert bob["cache_key"] != alice["cache_key"]
            # Each key still hits its own entry, and the same request makes the same video.
            assert client.post("/v1/videos", json=REQUEST, headers=bearer(BOB)).json()["cached"]
            assert client.post("/v1/videos", json=REQUEST, headers=bearer(ALICE)).json()["cached"]
            assert bob["seed"] == alice["seed"]
    finally:
        svc.store.close()
    assert len(svc.generator.calls) == 2


def test_a_derived_seed_is_the_same_in_every_scope(tmp_path):
    svc = _keyed_service(tmp_path)
    request = {k: v for k, v in REQUEST.items() if k != "seed"}
    try:
        with api_client(svc.gateway) as client:
            alice = client.post("/v1/videos", json=request, headers=bearer(ALICE)).json()
            bob = client.post("/v1/videos", json=request, headers=bearer(BOB)).json()
    finally:
        svc.store.close()
    assert alice["seed"] == bob["seed"] and alice["cache_key"] != bob["cache_key"]


def test_sharing_across_keys_is_opt_in(tmp_path, cache_store):
    svc = _keyed_service(tmp_path, cache_store=cache_store, cache_scope="shared")
    try:
        with api_client(svc.gateway) as client:
            alice = client.post("/v1/videos", json=REQUEST, headers=bearer(ALICE)).json()
            bob = client.post("/v1/videos", json=REQUEST, headers=bearer(BOB)).json()
    finally:
        svc.store.close()
    assert bob["cached"] and bob["cache_key"] == alice["cache_key"]
    assert len(svc.generator.calls) == 1


def test_without_keys_there_is_one_scope(tmp_path):
    svc = Service(tmp_path)  # access off: the per-key default has no keys to scope by
    try:
        with api_client(svc.gateway) as client:
            made = client.post("/v1/videos", json=REQUEST).json()
            assert client.post("/v1/videos", json=REQUEST).json()["cached"]
    finally:
        svc.store.close()
    assert not made["cached"] and len(svc.generator.calls) == 1


# --- deleting the source ----------------------------------------------------------------


def test_deleting_the_video_that_filled_an_entry_purges_it(tmp_path, cache_store):
    svc = Service(tmp_path, service_args={"cache_store": cache_store})
    artifacts = svc.gateway.stores.artifacts
    try:
        with api_client(svc.gateway) as client:
            source = client.post("/v1/videos", json=REQUEST).json()
            hit = client.post("/v1/videos", json=REQUEST).json()
            assert hit["cached"]
            assert client.delete(f"/v1/videos/{source['id']}").status_code == 200
            assert asyncio.run(svc.cache.stats())["entries"] == 0
            assert not artifacts.exists(artifact_id_for(source["cache_key"]), "video")
            again = client.post("/v1/videos", json=REQUEST).json()
            assert not again["cached"]  # generated anew, not the deleted video's pixels
            # A video answered from the entry before is its requester's, and stays whole.
            assert client.get(f"/v1/videos/{hit['id']}/content").status_code == 200
    finally:
        svc.store.close()
    assert len(svc.generator.calls) == 2


def test_deleting_a_video_leaves_an_entry_another_video_filled(tmp_path):
    svc = Service(tmp_path)
    try:
        with api_client(svc.gateway) as client:
            first = client.post("/v1/videos", json=REQUEST).json()
            asyncio.run(svc.cache.delete(first["cache_key"]))  # evicted, say
            second = client.post("/v1/videos", json=REQUEST).json()  # fills the entry again
            assert not second["cached"]
            assert client.delete(f"/v1/videos/{first['id']}").status_code == 200
            assert client.post("/v1/videos", json=REQUEST).json()["cached"]  # second's entry stays
    finally:
        svc.store.close()


def test_a_fill_that_races_the_delete_is_purged_by_the_fill(tmp_path, cache_store):
    """The delete's own purge looks before the fill has put the entry: the fill, finding
    its video gone, drops what it put. Hooked between the files and the entry's put."""
    args = ServiceArgs(data_dir=str(tmp_path), cache_store=cache_store)
    cache = ResultCache.func_or_class(args.model_dump())
    store = open_job_store("", tmp_path)
    artifacts = LocalArtifactStore(args.data_path / "videos")
    key = "cd" * 32
    job = with_status(make_job(1, cache_key=key), "completed")
    store.create(job)
    artifacts.put(job.id, "video", b"mp4")
    real_put = cache.index.put

    def delete_then_put(entry):
        # What DELETE /v1/videos/{id} does meanwhile: the record goes, then its purge
        # finds no entry yet.
        store.delete(job.id)
        assert cache.index.delete_if_source(key, job.id) is None
        real_put(entry)

    cache.index.put = delete_then_put
    try:
        asyncio.run(ResultCacheFill(cache, store).after_record(job, object(), gone=False))
        assert cache.index.get(key, 0.0) is None
        assert asyncio.run(cache.stats())["entries"] == 0
        assert not artifacts.exists(artifact_id_for(key), "video")
    finally:
        store.close()
        cache.index.close()


# --- a tier that forces the cache on ----------------------------------------------------


def test_cache_false_forced_on_by_a_tier_reads_the_cache_but_never_fills_it(tmp_path):
    svc = Service(tmp_path, max_queue_per_replica=5)
    svc.busy(4)  # 80%: minimal, cache forced
    unseeded = {k: v for k, v in REQUEST.items() if k != "seed"}
    opted_out = {**unseeded, "cache": False}
    try:
        with api_client(svc.gateway) as client:
            first = client.post("/v1/videos", json=opted_out).json()
            assert first["tier"] == "minimal" and not first["cached"] and first["status"] == "completed"
            assert asyncio.run(svc.cache.stats())["entries"] == 0  # its video stayed its own
            second = client.post("/v1/videos", json=opted_out).json()
            assert not second["cached"]
            # A request that allows the cache fills it; the opted-out one may then read it.
            allowed = client.post("/v1/videos", json=unseeded).json()
            assert allowed["tier"] == "minimal" and not allowed["cached"]
            third = client.post("/v1/videos", json=opted_out).json()
            assert third["cached"] and third["seed"] == first["seed"]
    finally:
        svc.store.close()
    assert len(svc.generator.calls) == 3
