"""API keys, rate limits and job caps through the HTTP API (fake graph, in-process limiter)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serve_app.access.config import AccessConfig
from serve_app.access.guard import AccessGuard
from serve_app.access.keys import hash_secret
from tests.helpers.access import bearer
from tests.helpers.fakes import FakeGenerator
from tests.helpers.service import REQUEST, Service, api_client

ALICE = "wan_alice-secret-0123456789abcdef"
BOB = "wan_bob-secret-0123456789abcdef00"
ROOT = "wan_root-secret-0123456789abcdef0"
CAROL = "wan_carol-secret-0123456789abcdef"


@pytest.fixture
def svc(tmp_path):
    guard = AccessGuard(
        AccessConfig(
            api_keys=[
                {"id": "alice", "sha256": hash_secret(ALICE)},
                {"id": "bob", "sha256": hash_secret(BOB), "burst": 2, "max_concurrent_jobs": 1},
                {"id": "root", "sha256": hash_secret(ROOT), "admin": True},
                {"id": "carol", "sha256": hash_secret(CAROL), "max_concurrent_jobs": 1},
            ],
            api_keys_env="",
        ),
        {},
    )
    service = Service(tmp_path, access=guard)  # wired as the gateway is: a job's end frees its key's slot
    yield service
    service.store.close()


@pytest.fixture
def client(svc):
    with api_client(svc.gateway) as c:
        yield c


def test_requests_without_a_valid_key_are_401_json(client):
    for headers in ({}, {"Authorization": "Basic abc"}, bearer("wan_not-a-key-0123456789abcdef")):
        response = client.post("/v1/videos", json=REQUEST, headers=headers)
        assert response.status_code == 401, response.text
        error = response.json()["error"]
        assert error["code"] == "unauthorized" and error["param"] == "Authorization"
        assert "wan_not-a-key" not in response.text
    assert client.get("/v1/videos", headers={}).status_code == 401
    # Health and the web page stay open: probes and the key-entry page need no key.
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200


def test_a_key_sees_its_own_videos_only(client):
    mine = client.post("/v1/videos", json=REQUEST, headers=bearer(ALICE)).json()
    assert mine["status"] == "completed"
    assert client.get(f"/v1/videos/{mine['id']}", headers=bearer(ALICE)).status_code == 200
    theirs = client.get(f"/v1/videos/{mine['id']}", headers=bearer(BOB))
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
    assert client.get(f"/v1/videos/{mine['id']}/content", headers=bearer(BOB)).status_code == 404
    assert client.delete(f"/v1/videos/{mine['id']}", headers=bearer(BOB)).status_code == 404
    assert [v["id"] for v in client.get("/v1/videos", headers=bearer(ALICE)).json()["data"]] == [mine["id"]]
    assert client.get("/v1/videos", headers=bearer(BOB)).json()["data"] == []
    # An admin key sees everything.
    assert client.get(f"/v1/videos/{mine['id']}", headers=bearer(ROOT)).status_code == 200


def test_create_rate_is_a_token_bucket_per_key(client):
    codes = [
        client.post("/v1/videos", json={**REQUEST, "seed": n, "cache": False}, headers=bearer(BOB)).status_code
        for n in range(3)
    ]
    assert codes == [200, 200, 429]
    response = client.post("/v1/videos", json=REQUEST, headers=bearer(BOB))
    assert response.json()["error"]["code"] == "rate_limited" and int(response.headers["Retry-After"]) >= 1
    # Another key has its own bucket.
    assert client.post("/v1/videos", json=REQUEST, headers=bearer(ALICE)).status_code == 200


class HeldGenerator(FakeGenerator):
    """Runs only once released: jobs stay unfinished as long as a test needs."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    async def generate(self, params, deadline, on_progress=None, job_id=None):
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return await super().generate(params, deadline, on_progress)


def test_concurrent_job_cap_is_freed_when_the_job_ends(client, svc):
    held = HeldGenerator()
    svc.runner.generator = held
    first = client.post(
        "/v1/videos", json={**REQUEST, "cache": False}, headers={**bearer(CAROL), "Prefer": "respond-async"}
    )
    assert first.status_code == 202
    assert svc.gateway.guard.active_jobs("carol") == 1
    # Carol may hold one unfinished job: a second is refused, and leaves nothing behind.
    second = client.post(
        "/v1/videos", json={**REQUEST, "seed": 2, "cache": False}, headers={**bearer(CAROL), "Prefer": "respond-async"}
    )
    assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_concurrent_jobs"
    assert [v["id"] for v in client.get("/v1/videos", headers=bearer(CAROL)).json()["data"]] == [first.json()["id"]]
    held.release.set()
    deadline = time.monotonic() + 10
    while client.get(f"/v1/videos/{first.json()['id']}", headers=bearer(CAROL)).json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert svc.gateway.guard.active_jobs("carol") == 0
    third = client.post("/v1/videos", json={**REQUEST, "seed": 3, "cache": False}, headers=bearer(CAROL))
    assert third.status_code == 200


def test_admin_routes_need_an_admin_key(client):
    assert client.get("/v1/cache/stats", headers=bearer(ALICE)).status_code == 403
    assert client.get("/v1/cache/stats", headers=bearer(ROOT)).status_code == 200
    assert client.get("/v1/cache/stats").status_code == 401


def test_oversized_body_is_413(client):
    response = client.post(
        "/v1/videos", content=b"{" + b" " * 70_000 + b"}", headers={**bearer(ALICE), "content-type": "application/json"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_body_size_limit_is_exact_and_a_413_with_the_numbers():
    from serve_app.api.body import check_body_size as _check_body_size
    from serve_app.errors import RequestTooLarge

    _check_body_size(2048, 2048)
    _check_body_size(None, 2048)
    with pytest.raises(RequestTooLarge, match="body has 2049 bytes; at most 2048") as err:
        _check_body_size(2049, 2048)
    assert err.value.status_code == 413


def test_admin_access_takes_the_operator_key_or_an_admin_api_key(svc):
    from serve_app.access.guard import AdminAccess
    from serve_app.errors import Forbidden, Unauthorized

    with pytest.raises(Forbidden, match=r"\$WAN_SERVE_ADMIN_KEY"):
        AdminAccess("", "WAN_SERVE_ADMIN_KEY").check("Bearer anything")
    operator = AdminAccess("op-secret-0123456789", "WAN_SERVE_ADMIN_KEY")
    operator.check("Bearer op-secret-0123456789")
    for header in (None, "Bearer op-secret-wrong", "op-secret-0123456789", "Basic op-secret-0123456789"):
        with pytest.raises(Unauthorized):
            operator.check(header)
    # With API keys on, an admin key is an admin too, and any other key is a 403.
    both = AdminAccess("op-secret-0123456789", "WAN_SERVE_ADMIN_KEY", svc.gateway.guard)
    both.check("Bearer op-secret-0123456789")
    both.check(bearer(ROOT)["Authorization"])
    with pytest.raises(Forbidden):
        both.check(bearer(ALICE)["Authorization"])
