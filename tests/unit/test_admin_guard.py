"""Issue 15 item 12, the admin half: the operator's admin key has at least 16 characters,
and the admin routes are rate-limited per client address, before the key is checked."""

from __future__ import annotations

import pytest

from serve_app.access.guard import AccessGuard, AdminAccess
from serve_app.api.gateway_app import GatewaySettings
from serve_app.config import ServiceArgs
from serve_app.errors import RateLimited, Unauthorized
from tests.helpers.access import ADMIN, FakeClock, keyed_config, unique_prefix
from tests.helpers.fakes import FakeGenerator
from tests.helpers.service import api_client, gateway_over

OPERATOR_KEY = "op-admin-key-0123456789"


@pytest.mark.parametrize("key, length", [("short-key", 9), ("x" * 15, 15), (" " + "k" * 20, 21)])
def test_a_short_admin_key_stops_the_gateway_at_start(key, length):
    with pytest.raises(ValueError) as refused:
        GatewaySettings.load(ServiceArgs(), {"WAN_SERVE_ADMIN_KEY": key})
    message = str(refused.value)
    assert f"$WAN_SERVE_ADMIN_KEY holds an admin key of {length} characters" in message
    assert "at least 16" in message and key.strip() not in message  # the length, never the key


def test_an_admin_key_of_16_characters_is_taken():
    assert GatewaySettings.load(ServiceArgs(), {"WAN_SERVE_ADMIN_KEY": "k" * 16}).admin_key == "k" * 16
    assert GatewaySettings.load(ServiceArgs(), {}).admin_key == ""  # none: admin routes off, no error


def test_admin_access_refuses_a_short_key_however_it_is_made():
    with pytest.raises(ValueError, match="10 characters"):
        AdminAccess("0123456789", "WAN_SERVE_ADMIN_KEY")


def test_admin_routes_answer_429_once_an_address_spent_its_burst(tmp_path):
    # Wired as build_gateway does it: the bucket's size from the guard's access config.
    guard = AccessGuard(keyed_config(admin_burst=3, admin_rate_per_s=0.01), {})
    gateway = gateway_over(tmp_path, FakeGenerator(), access=guard)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with api_client(gateway) as client:
        # Guesses spend tokens as calls do: three wrong keys, then even the right one waits.
        for _ in range(3):
            guess = {"Authorization": "Bearer wan_guess-0123456789abcdef"}
            assert client.get("/v1/cache/stats", headers=guess).status_code == 401
        response = client.get("/v1/cache/stats", headers=admin)
        assert response.status_code == 429, response.text
        error = response.json()["error"]
        assert (error["code"], error["limit_kind"]) == ("rate_limited", "admin")
        assert "admin requests from 'testclient'" in error["message"] and "burst 3" in error["message"]
        assert int(response.headers["Retry-After"]) >= 1
        for method, path in (("DELETE", "/v1/cache"), ("DELETE", "/v1/cache/" + "0" * 64)):
            assert client.request(method, path, headers=admin).status_code == 429
        # Other routes are not the admin bucket's business.
        assert client.get("/healthz").status_code == 200
    gateway.stores.jobs.close()


def test_the_admin_bucket_is_per_address_and_refills():
    clock = FakeClock()
    access = AdminAccess(
        OPERATOR_KEY, "WAN_SERVE_ADMIN_KEY", config=keyed_config(admin_burst=2, admin_rate_per_s=0.5), clock=clock
    )
    right = f"Bearer {OPERATOR_KEY}"
    access.check(right, "10.0.0.1")
    with pytest.raises(Unauthorized):
        access.check("Bearer wrong-0123456789abcdef", "10.0.0.1")
    with pytest.raises(RateLimited) as limited:
        access.check(right, "10.0.0.1")
    assert limited.value.retry_after_s == 2  # one token at 0.5/s
    access.check(right, "10.0.0.2")  # another address has its own bucket
    clock.advance(2.0)
    access.check(right, "10.0.0.1")


def test_the_admin_bucket_is_shared_by_gateways_through_redis(redis_server):
    # Two gateway replicas over one limiter store: a guesser cannot spread over replicas.
    config = keyed_config(store=redis_server.url, store_prefix=unique_prefix(), admin_burst=2, admin_rate_per_s=0.001)
    guards = [AccessGuard(config, {}) for _ in range(2)]
    try:
        first, second = (AdminAccess(OPERATOR_KEY, "WAN_SERVE_ADMIN_KEY", guard) for guard in guards)
        first.check(f"Bearer {ADMIN}", "10.0.0.9")  # an admin API key works as well
        second.check(f"Bearer {OPERATOR_KEY}", "10.0.0.9")
        with pytest.raises(RateLimited):
            first.check(f"Bearer {OPERATOR_KEY}", "10.0.0.9")
    finally:
        for guard in guards:
            guard.close()


@pytest.mark.parametrize("field, value", [("admin_rate_per_s", 0), ("admin_burst", 0)])
def test_admin_limits_must_be_positive(field, value):
    with pytest.raises(ValueError, match=field):
        keyed_config(**{field: value})
