"""The result cache in front of the graph, over HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from ray._common.test_utils import wait_for_condition

from serve_app.video import decode_mp4
from tests.helpers.app import ADMIN_KEY

pytestmark = pytest.mark.integration

SMALL = {"width": 64, "height": 64, "num_frames": 9, "num_inference_steps": 3, "fps": 8}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _completed(denoiser_stats) -> int:
    return denoiser_stats()["outcomes"].get("completed", 0)


def test_repeat_is_a_hit_with_the_same_pixels(client, denoiser_stats):
    body = {"prompt": "Happy birthday, balloons", **SMALL}  # no seed: derived from the request
    first = client.post("/v1/videos", json=body).json()
    runs = _completed(denoiser_stats)
    second = client.post("/v1/videos", json={**body, "prompt": "  Happy   birthday,  balloons "})
    assert second.status_code == 200
    hit = second.json()
    assert hit["cached"] is True and first["cached"] is False
    assert hit["id"] != first["id"] and hit["seed"] == first["seed"] and hit["cache_key"] == first["cache_key"]
    assert _completed(denoiser_stats) == runs  # nothing was generated for the hit
    a = decode_mp4(client.get(f"/v1/videos/{first['id']}/content").content)
    b = decode_mp4(client.get(f"/v1/videos/{hit['id']}/content").content)
    np.testing.assert_array_equal(a, b)  # the very same file
    # Deleting the first answer does not break the cached one.
    client.delete(f"/v1/videos/{first['id']}")
    assert client.get(f"/v1/videos/{hit['id']}/content").status_code == 200


def test_hit_is_synchronous_even_when_async_was_asked(client):
    body = {"prompt": "a cached sunset", **SMALL}
    client.post("/v1/videos", json=body)
    resp = client.post("/v1/videos", json=body, headers={"Prefer": "respond-async"})
    assert resp.status_code == 200 and resp.json()["cached"] is True


def test_cache_false_generates_again(client, denoiser_stats):
    body = {"prompt": "never cached", "seed": 3, **SMALL}
    client.post("/v1/videos", json=body)
    runs = _completed(denoiser_stats)
    again = client.post("/v1/videos", json={**body, "cache": False}).json()
    assert again["cached"] is False and _completed(denoiser_stats) == runs + 1


def test_identical_concurrent_requests_share_one_generation(serve_url, client, denoiser_stats):
    body = {"prompt": "one generation for all", **{**SMALL, "num_inference_steps": 30}}
    runs = _completed(denoiser_stats)

    def post(_):
        return httpx.post(f"{serve_url}/v1/videos", json=body, headers={"Prefer": "respond-async"}, timeout=60).json()

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, range(4)))
    ids = {a["id"] for a in answers}
    assert len(ids) == 1, answers  # one job, one id, four answers
    (video_id,) = ids
    wait_for_condition(lambda: client.get(f"/v1/videos/{video_id}").json()["status"] == "completed", timeout=60)
    assert _completed(denoiser_stats) == runs + 1


def test_new_settings_reuse_the_prompt_embeddings(client, encoder_stats):
    body = {"prompt": "embeddings are reused", **SMALL}
    client.post("/v1/videos", json={**body, "seed": 1})
    before = encoder_stats()
    client.post("/v1/videos", json={**body, "seed": 2, "num_inference_steps": 2})
    after = encoder_stats()
    # Both texts (the prompt and the default negative prompt) came from the cache.
    assert after["embedding_hits"] == before["embedding_hits"] + 2
    assert after["embedding_misses"] == before["embedding_misses"]


def test_a_new_prompt_encodes_only_itself(client, encoder_stats):
    """The default negative prompt is kept per text: a new prompt costs one encoder pass, not two."""
    client.post("/v1/videos", json={"prompt": "the negative prompt gets encoded here", "seed": 3, **SMALL})
    before = encoder_stats()
    client.post("/v1/videos", json={"prompt": "a prompt never seen before", "seed": 3, **SMALL})
    after = encoder_stats()
    assert after["embedding_misses"] == before["embedding_misses"] + 1
    assert after["embedding_hits"] == before["embedding_hits"] + 1


def test_admin_stats_delete_and_purge(client):
    video = client.post("/v1/videos", json={"prompt": "admin target", **SMALL}).json()
    assert client.get("/v1/cache/stats").status_code == 401
    assert client.get("/v1/cache/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
    stats = client.get("/v1/cache/stats", headers=ADMIN).json()
    assert stats["entries"] >= 1 and stats["fills"] >= 1 and stats["bytes"] > 0
    deleted = client.delete(f"/v1/cache/{video['cache_key']}", headers=ADMIN)
    assert deleted.json() == {"key": video["cache_key"], "deleted": True}
    assert client.delete(f"/v1/cache/{video['cache_key']}", headers=ADMIN).status_code == 404
    again = client.post("/v1/videos", json={"prompt": "admin target", **SMALL}).json()
    assert again["cached"] is False  # the entry was gone: generated anew
    purged = client.delete("/v1/cache", headers=ADMIN).json()
    assert purged["purged"] >= 1
    assert client.get("/v1/cache/stats", headers=ADMIN).json()["entries"] == 0
