"""GET /v1/videos with API keys on, over both job stores: a key pages through its own videos,
however many newer videos other keys have. Main filtered each page after reading it, so a
newest page full of another key's jobs answered `data: []`, `has_more: true` and no cursor."""

from __future__ import annotations

import pytest
import redis

from serve_app.access.config import AccessConfig
from serve_app.access.guard import AccessGuard
from serve_app.access.keys import hash_secret
from serve_app.config import ServiceArgs
from tests.helpers.access import bearer
from tests.helpers.fakes import FakeGenerator
from tests.helpers.jobs import make_job, with_status
from tests.helpers.service import TEST_TIMINGS, api_client, gateway_over

ALICE = "wan_alice-secret-0123456789abcdef"
BOB = "wan_bob-secret-0123456789abcdef00"
ROOT = "wan_root-secret-0123456789abcdef0"


@pytest.fixture(params=["sqlite", "redis"])
def gateway(request, tmp_path):
    job_store = ""
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.url)
        client.flushdb()
        client.close()
        job_store = server.url
    guard = AccessGuard(
        AccessConfig(
            api_keys=[
                {"id": "alice", "sha256": hash_secret(ALICE)},
                {"id": "bob", "sha256": hash_secret(BOB)},
                {"id": "root", "sha256": hash_secret(ROOT), "admin": True},
            ],
            api_keys_env="",
        ),
        {},
    )
    args = ServiceArgs(data_dir=str(tmp_path), job_store=job_store, **TEST_TIMINGS)
    gateway = gateway_over(tmp_path, FakeGenerator(), args=args, access=guard)
    yield gateway
    gateway.stores.close()


def _finished(n: int, key_id: str):
    return with_status(make_job(n, created_at=float(n), key_id=key_id), "completed", progress=100, completed_at=n)


def _pages(client, secret: str, limit: int) -> list[dict]:
    pages, after = [], None
    while True:
        params = {"limit": limit, **({"after": after} if after else {})}
        page = client.get("/v1/videos", params=params, headers=bearer(secret)).json()
        pages.append(page)
        if not page["has_more"]:
            return pages
        assert page["last_id"] is not None, page  # more, and a cursor to get it
        after = page["last_id"]


def test_a_key_pages_through_its_own_videos_past_a_page_of_anothers(gateway):
    store = gateway.stores.jobs
    alice = [_finished(n, "alice") for n in range(1, 6)]  # the oldest five
    for job in alice:
        store.create(job)
    for n in range(100, 130):  # thirty newer ones of Bob's: more than a page
        store.create(_finished(n, "bob"))

    with api_client(gateway) as client:
        pages = _pages(client, ALICE, 2)
        assert [[v["id"] for v in p["data"]] for p in pages] == [
            [alice[4].id, alice[3].id],
            [alice[2].id, alice[1].id],
            [alice[0].id],
        ]
        assert [p["has_more"] for p in pages] == [True, True, False]
        assert pages[0]["first_id"] == alice[4].id and pages[0]["last_id"] == alice[3].id
        # Bob's newest 20 are his first page; his ids are no cursor for Alice.
        bob = client.get("/v1/videos", params={"limit": 20}, headers=bearer(BOB)).json()
        assert (
            len(bob["data"]) == 20
            and bob["has_more"]
            and {v["id"] for v in bob["data"]}.isdisjoint({j.id for j in alice})
        )
        theirs = client.get("/v1/videos", params={"after": bob["last_id"]}, headers=bearer(ALICE))
        assert theirs.status_code == 404 and theirs.json()["error"]["param"] == "after"
        # The admin key lists everyone's.
        everyone = client.get("/v1/videos", params={"limit": 100}, headers=bearer(ROOT)).json()
        assert len(everyone["data"]) == 35 and not everyone["has_more"]
